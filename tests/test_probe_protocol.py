"""The study's probe protocol: live drop path while heads train, and its head and feature details.

Each test pins one behaviour of the BioVFM evaluation (its Lightning module, builder and DINOv2
block) that the workbook reproduces by default.
"""
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from biovfm_lib import runs
from biovfm_lib.data.medmnist import load_task
from biovfm_lib.models.checkpoints import LoadedEncoder, export_backbone
from biovfm_lib.models.factory import create_vit, vit_spec
from biovfm_lib.models.stochastic_depth import (
    SubsetDropPath,
    install_drop_path,
    study_drop_path,
    study_drop_path_rate,
)
from biovfm_lib.params import ParamError, ProbeParams
from biovfm_lib.probe import features
from biovfm_lib.probe.features import (
    FeatureCache,
    autocast_for,
    backbone_training,
    encode,
    extract_features,
    file_identity,
)
from biovfm_lib.probe.linear import feature_batches, fit_linear_heads, linear_head
from biovfm_lib.probe.pipeline import (
    augmented_batches,
    build_encoder,
    cached_features,
    head_bias,
    prepare_data,
    run_probe,
)

CPU = torch.device("cpu")


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def encoder(fmt: str, model: nn.Module | None = None, **meta) -> LoadedEncoder:
    model = model if model is not None else create_vit("nano", img_size=28)
    return LoadedEncoder(model.eval(), fmt, vit_spec("nano", img_size=28), "", "", meta)


def export(tmp_path, algorithm: str, size: str = "nano", seed: int = 0):
    torch.manual_seed(seed)
    spec = vit_spec(size, 4, img_size=28)
    model = spec.create().eval()
    weights, _ = export_backbone(model, spec, tmp_path / f"{algorithm}-{size}",
                                 algorithm=algorithm, size=size)
    return model, weights


def probe_params(tmp_path, **kw) -> ProbeParams:
    base = {"data_root": str(tmp_path / "data"), "data": "synthetic", "size": 28,
            "encoder": "nano", "tasks": ["breastmnist"], "epochs": 2, "bootstrap": 0,
            "device": "cpu", "cache_dir": str(tmp_path / "cache"), "protocol": "official"}
    return ProbeParams.validate_mapping({**base, **kw})


# ----------------------------------------------------------------------------- item 6
@pytest.mark.parametrize("b,p,keep", [(10, 0.3, 7), (128, 0.3, 89), (128, 0.4, 76),
                                      (3, 0.4, 1), (1, 0.3, 1)])
def test_subset_drop_path_gives_the_residual_to_exactly_the_subset(b, p, keep):
    drop = SubsetDropPath(p).train()
    residual = torch.ones(b, 5, 4)
    for seed in range(20):  # a per-sample coin flip would vary the count; the subset never does
        torch.manual_seed(seed)
        out = drop(residual)
        kept = out.flatten(1).ne(0).all(1)
        assert kept.sum().item() == keep and out.flatten(1).ne(0).any(1).eq(kept).all()
        assert torch.allclose(out[kept], torch.full_like(out[kept], b / keep))
    assert torch.equal(drop.eval()(residual), residual)


def test_installed_drop_path_is_dinov2s_subset_residual():
    """A block in train mode equals adding residuals computed on the subset only."""
    torch.manual_seed(0)
    model = create_vit("nano", img_size=28, init_values=0.5)
    assert install_drop_path(model, 0.3) == 4
    block = model.blocks[1].train()
    x = torch.randn(10, 50, 96)

    def reference(x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        keep = max(int(b * 0.7), 1)
        for norm, branch, scale in ((block.norm1, block.attn, block.ls1),
                                    (block.norm2, block.mlp, block.ls2)):
            rows = torch.randperm(b)[:keep]
            x = x.index_add(0, rows, scale(branch(norm(x[rows]))), alpha=b / keep)
        return x

    with torch.no_grad():
        torch.manual_seed(7)
        ours = block(x)
        torch.manual_seed(7)
        theirs = reference(x)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert relative_l2(ours, block.eval()(x)) > 0.01  # and it is not the eval-mode block


def test_drop_path_rates_follow_the_studys_builds():
    assert study_drop_path_rate(encoder("dinov2")) == 0.3
    with torch.device("meta"):
        huge = vit_spec("huge").create()
    assert study_drop_path_rate(encoder("dinov2", huge)) == 0.4
    assert study_drop_path_rate(encoder("biovfm", algorithm="dinov2")) == 0.3
    for enc in (encoder("mae"), encoder("biovfm", algorithm="mae"), encoder("random"),
                encoder("timm")):
        assert study_drop_path_rate(enc) == 0.0
    # DINOv2's block uses the subset mechanics only above 0.1, a per-sample DropPath below
    assert isinstance(study_drop_path(0.3), SubsetDropPath)
    assert isinstance(study_drop_path(0.1), DropPath)
    assert isinstance(study_drop_path(0.0), nn.Identity)


def test_installing_drop_path_keeps_eval_features_and_weights():
    torch.manual_seed(0)
    model = create_vit("nano", img_size=28).eval()
    x = torch.randn(4, 3, 28, 28)
    before, state = encode(model, x), {k: v.clone() for k, v in model.state_dict().items()}
    install_drop_path(model, 0.3)
    assert torch.equal(encode(model, x), before)
    assert model.state_dict().keys() == state.keys()
    with pytest.raises(ValueError, match="no blocks"):
        install_drop_path(nn.Linear(3, 3), 0.3)


def test_train_mode_features_of_a_dinov2_backbone_differ_from_eval_mode(tmp_path):
    """The study's heads see train-mode features: live stochastic depth at 0.3 in 12 blocks."""
    source, weights = export(tmp_path, "dinov2", size="small")
    p = probe_params(tmp_path, checkpoint=str(weights))
    enc, _ = build_encoder(p)
    model = enc.model
    assert study_drop_path_rate(enc) == 0.3
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    y = torch.arange(16)
    study = augmented_batches(model, images, y, p, CPU)
    clean = augmented_batches(model, images, y, p.model_copy(update={"backbone_mode": "eval"}),
                              CPU)
    torch.manual_seed(0)  # the same augmented images (drawn before the batch is encoded)
    (f_study, y_study), = study(1)
    torch.manual_seed(0)
    (f_eval, y_eval), = clean(1)
    assert torch.equal(y_study, y_eval)
    rel = relative_l2(f_study, f_eval)
    print(f"relative L2, train vs eval features (random-init ViT-S, p=0.3): {rel:.3f}")
    assert rel > 0.3
    assert not model.training  # back in eval mode for validation and test features
    # the frozen backbone: weights unchanged, no gradients anywhere
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert all(not t.requires_grad and t.grad is None for t in model.parameters())


def test_an_mae_backbone_in_train_mode_is_its_eval_mode(tmp_path):
    """MAE builds have no drop path in the study, so its train mode changes nothing."""
    _, weights = export(tmp_path, "mae")
    p = probe_params(tmp_path, checkpoint=str(weights))
    model = build_encoder(p)[0].model
    x = torch.randn(8, 3, 28, 28)
    with backbone_training(model, True):
        train = encode(model, x)
    assert torch.allclose(train, encode(model, x), atol=1e-6)


def test_official_study_run_records_its_mode_and_leaves_the_backbone_alone(tmp_path):
    source, weights = export(tmp_path, "dinov2")
    p = probe_params(tmp_path, checkpoint=str(weights))
    report = run_probe(p, runs.open_run("03_probe", p))
    df = report.results
    assert df.backbone_mode.eq("study").all() and df.train_drop_path.eq(0.3).all()
    assert df.precision.eq("fp32").all()
    for k, v in source.state_dict().items():
        assert torch.equal(report.encoder.model.state_dict()[k], v), k
    cached = probe_params(tmp_path, checkpoint=str(weights), protocol="cached")
    df = run_probe(cached, runs.open_run("03_probe", cached)).results
    assert df.backbone_mode.eq("eval").all() and df.train_drop_path.eq(0.0).all()


# ----------------------------------------------------------------------------- item 7
class Tokens(nn.Module):
    """A stand-in backbone whose last block outputs the given tokens."""

    def forward_intermediates(self, x, **_):
        return [x]


def test_pooled_layer_norm_uses_the_studys_eps():
    tokens = 1e-3 * torch.randn(6, 4, 32, generator=torch.Generator().manual_seed(0))
    pooled = tokens.mean(1)  # variance ~2.5e-7: eps 1e-6 and 1e-5 normalise very differently
    ours = encode(Tokens(), tokens)
    assert torch.allclose(ours, nn.LayerNorm(32, eps=1e-6)(pooled), atol=1e-5)
    assert (ours - F.layer_norm(pooled, (32,), eps=1e-5)).abs().max() > 0.1


def test_head_batch_norm_eps_and_init():
    torch.manual_seed(0)
    bn, linear = linear_head(768, 100)
    assert not bn.affine and bn.eps == 1e-6
    x = 1e-3 * torch.randn(256, 768)
    var = x.var(0, unbiased=False)
    out = bn.train()(x)
    assert torch.allclose(out, (x - x.mean(0)) / (var + 1e-6).sqrt(), atol=1e-4)
    assert out.std() > 0.6  # eps 1e-5 would shrink it to ~0.3
    assert abs(linear.weight.std().item() - 0.01) < 3e-4  # nn.Linear's default is ~0.021
    assert torch.equal(linear.bias, torch.zeros(100))
    bound = 768 ** -0.5  # the study's DINOv2 head keeps nn.Linear's uniform bias
    bias = linear_head(768, 1000, bias="uniform")[1].bias
    assert bias.abs().max() <= bound and abs(bias.std().item() - bound / 3 ** 0.5) < 2e-3
    assert head_bias(encoder("dinov2")) == "uniform"
    assert head_bias(encoder("biovfm", algorithm="dinov2")) == "uniform"
    assert head_bias(encoder("mae")) == head_bias(encoder("random")) == "zero"


def test_training_batches_drop_the_last_partial_one_but_never_all(tmp_path):
    model = create_vit("nano", img_size=28).eval()
    p = probe_params(tmp_path, backbone_mode="eval", batch_size=4)
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    official = augmented_batches(model, images, torch.arange(10), p, CPU)
    assert [len(yb) for _, yb in official(1)] == [4, 4]
    small = augmented_batches(model, images[:3], torch.arange(3), p, CPU)
    assert [len(yb) for _, yb in small(1)] == [3]  # smaller than a batch: keep it
    x, y = torch.randn(3, 8), torch.arange(3)
    assert [len(yb) for _, yb in feature_batches(x, y, 4, 0)(1)] == [3]
    with pytest.raises(ValueError, match="no training batch"):  # one sample cannot train BN
        fit_linear_heads(feature_batches(x[:1], y[:1], 4, 0), x, y, 3, False, [0.01], 1)


def test_precision_and_backbone_mode_are_validated():
    p = ProbeParams()
    assert (p.precision, p.backbone_mode) == ("auto", "study")
    assert ProbeParams.validate_mapping({"precision": "fp32"}).precision == "fp32"
    for key, value in (("precision", "fp16"), ("backbone_mode", "train")):
        with pytest.raises(ParamError, match=key):
            ProbeParams.validate_mapping({key: value})


def test_bf16_on_cpu_is_honoured_and_changes_features():
    torch.manual_seed(0)
    model = create_vit("nano", img_size=28).eval()
    with autocast_for(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with autocast_for(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    imgs = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    fp32 = extract_features(model, imgs, CPU, precision="fp32")
    bf16 = extract_features(model, imgs, CPU, precision="bf16")
    assert 1e-3 < np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32) < 0.1


def test_the_cache_keys_on_precision_and_never_serves_an_older_definition(tmp_path,
                                                                           monkeypatch):
    p = probe_params(tmp_path, protocol="cached", precision="fp32")
    data = load_task("breastmnist", prepare_data(p), 28)
    enc, identity = build_encoder(p)
    cache = FeatureCache(tmp_path / "cache")
    # an entry as the cache keyed it before precision and the feature version (LayerNorm eps
    # 1e-5) were part of the key
    old = {"encoder": identity, "data": file_identity(data.file), "flag": data.flag,
           "split": "val", "size": 28, "features": "mean_patch"}
    cache.root.mkdir(parents=True)
    stale = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()
    np.save(cache.path(stale[:32]), np.zeros((len(data.images["val"]), 96), np.float32))
    fp32 = cached_features(enc, identity, data, "val", p, CPU, cache)
    assert np.abs(fp32).sum() > 0
    bf16 = cached_features(enc, identity, data, "val", p.model_copy(update={"precision": "bf16"}),
                           CPU, cache)
    assert not np.array_equal(fp32, bf16) and len(list(cache.root.glob("*.npy"))) == 3
    key = cache.key(split="val")
    monkeypatch.setattr(features, "FEATURE_VERSION", features.FEATURE_VERSION + 1)
    assert cache.key(split="val") != key

"""Issue 11, items 6, 9, 10 and 11: the official codes' mechanics, each pinned against a formula
written here from its description (not from the library's code path).

- 6: position tables at another grid: DINOv2's ``interpolate_pos_encoding`` (bicubic with
  scale factor ``(n + 0.1) / M``, no antialias; register models offset 0 with antialias), at
  run time and when an official DINOv2 checkpoint is loaded at another size; MAE's
  ``interpolate_pos_embed`` (bicubic to the size, no antialias, class entry kept) at load time.
- 9: MAE's weight decay on every tensor but 1-d ones and biases (``add_weight_decay`` with an
  empty skip list), class and mask tokens included.
- 10: MAE ViT-L/16 at the published global batch 4096 and lr, warm-up of 40 data epochs in
  iterations, also in a run that ``max_steps`` cuts.
- 11: the head count read from ``args.model`` or given as ``num_heads``; a width that is no
  official ViT's and records nothing is refused.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from biovfm_lib.models.checkpoints import export_backbone, load_encoder
from biovfm_lib.models.factory import VitSpec
from biovfm_lib.models.pos_embed import (
    DINOV2_INTERPOLATION,
    DINOV2_REGISTER_INTERPOLATION,
    interpolate_pos_embed_dinov2,
    interpolate_pos_embed_mae,
    use_dinov2_pos_interpolation,
)
from biovfm_lib.params import PretrainParams
from biovfm_lib.ssl.mae import MAE, MAEConfig
from biovfm_lib.ssl.vit import MaskedViT
from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.loop import build_method, schedule_notes
from biovfm_lib.train.report import read_log

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- the formula
def cubic(x: float, a: float = -0.75) -> float:
    """The cubic convolution kernel (Keys, a = -0.75: PyTorch's bicubic)."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0


def bicubic_matrix(src: int, dst: int, scale: float) -> np.ndarray:
    """(dst, src) weights of a bicubic resampling, corners not aligned: output ``i`` samples
    input coordinate ``(i + 0.5) / scale - 0.5``, taps beyond the border repeat its last row."""
    w = np.zeros((dst, src))
    for i in range(dst):
        x = (i + 0.5) / scale - 0.5
        base = math.floor(x)
        for tap in range(base - 1, base + 3):
            w[i, min(max(tap, 0), src - 1)] += cubic(x - tap)
    return w


def resampled(table: torch.Tensor, n: int, scale: float, prefix: int = 1) -> torch.Tensor:
    """``table`` (1, prefix + M*M, D) on an n x n grid with sampling scale ``scale``."""
    m = math.isqrt(table.shape[1] - prefix)
    grid = table[0, prefix:].double().numpy().reshape(m, m, -1)
    w = bicubic_matrix(m, n, scale)
    out = np.einsum("im,mkd,jk->ijd", w, grid, w).reshape(1, n * n, -1)
    return torch.cat([table[:, :prefix].double(), torch.from_numpy(out)], dim=1).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def smooth_table(m: int, dim: int = 32, prefix: int = 1, seed: int = 0) -> torch.Tensor:
    """A position table as training leaves one: smooth over the grid (random low frequencies)
    plus a little noise, and a class entry."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, m), torch.linspace(0, 1, m), indexing="ij")
    freq, phase = torch.rand(dim, 2, generator=g) * 6, torch.rand(dim, generator=g) * 6.3
    grid = torch.sin(freq[:, :1, None] * yy * 3 + freq[:, 1:, None] * xx * 3 + phase[:, None, None])
    grid = grid.permute(1, 2, 0).reshape(1, m * m, dim)
    grid = grid + 0.05 * torch.randn(grid.shape, generator=g)
    return torch.cat([torch.randn(1, prefix, dim, generator=g), grid], dim=1)


# ============================================================================ item 6
@pytest.mark.parametrize("img, patch, crop", [(224, 16, 96), (224, 14, 98)],
                         ids=["96/16", "98/14"])
def test_dinov2_table_is_the_offset_formula(img, patch, crop):
    m, n = img // patch, crop // patch  # 14 -> 6, 16 -> 7
    table = smooth_table(m)
    out = interpolate_pos_embed_dinov2(table, (n, n))
    expected = resampled(table, n, scale=(n + 0.1) / m)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:, :1], table[:, :1])  # the class entry as it was
    # a size-based resampling (timm's, lightly's) samples elsewhere: several percent apart
    by_size = resampled(table, n, scale=n / m)
    assert rel(by_size, expected) > 0.01
    assert interpolate_pos_embed_dinov2(table, (m, m)) is table  # own grid: the table itself


def test_register_rule_is_size_based_with_antialias():
    """The register releases' settings (offset 0, antialias): an output size, antialiased,
    which is timm's ``resample_abs_pos_embed`` exactly."""
    from timm.layers import resample_abs_pos_embed

    table = smooth_table(37)
    out = interpolate_pos_embed_dinov2(table, (16, 16), settings=DINOV2_REGISTER_INTERPOLATION)
    torch.testing.assert_close(out, resample_abs_pos_embed(table, (16, 16), num_prefix_tokens=1))


def tiny_vit(name: str = "vit_small_patch14_dinov2", img: int = 56, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    vit = timm.create_model(name, img_size=img, embed_dim=192, depth=2, num_heads=3,
                            num_classes=0, **kw).eval()
    with torch.no_grad():
        vit.pos_embed.copy_(smooth_table(img // 14, 192, prefix=vit.pos_embed.shape[1]
                                         - (img // 14) ** 2))
    return vit


def test_runtime_rule_on_timm_vit_and_masked_wrapper():
    vit = use_dinov2_pos_interpolation(tiny_vit(dynamic_img_size=True))  # 4 x 4 table
    x = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(1))  # 3 x 3 grid
    with torch.no_grad():
        tokens = vit.patch_embed(x).flatten(1, 2)
        expected = torch.cat([vit.cls_token.expand(2, -1, -1), tokens], 1) + resampled(
            vit.pos_embed, 3, scale=3.1 / 4)
        torch.testing.assert_close(vit._pos_embed(vit.patch_embed(x)), expected,
                                   atol=1e-5, rtol=1e-5)
        features = vit.forward_features(x)
        # lightly's wrapper (DINOv2's training path) adds the same table
        torch.testing.assert_close(MaskedViT(vit, weight_initialization="skip",
                                             pos_embed_initialization="skip").encode(x), features)
        # a deep copy (a teacher) keeps the rule, bound to its own weights
        twin = copy.deepcopy(vit)
        with torch.no_grad():
            twin.pos_embed.mul_(2)
        assert twin._pos_embed.__self__ is twin
        assert not torch.allclose(twin.forward_features(x), features)
        # at its own size the model is timm's
        plain = tiny_vit(dynamic_img_size=True)
        full = torch.randn(1, 3, 56, 56)
        torch.testing.assert_close(vit.forward_features(full), plain.forward_features(full))
    with pytest.raises(ValueError, match="dynamic_img_size"):
        use_dinov2_pos_interpolation(tiny_vit())


def dinov2_release(vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm weights in DINOv2's release names (registers: a class slot back in pos_embed, zero
    here so the class token round-trips exactly; tests/test_checkpoints.py folds a random one)."""
    sd = dict(vit.state_dict())
    if "reg_token" in sd:
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([torch.zeros_like(sd["cls_token"]), sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return sd


@pytest.mark.parametrize("reg", [False, True], ids=["plain", "reg4"])
def test_dinov2_release_at_another_size_computes_the_official_features(tmp_path, reg):
    """Loaded at 42 px, a release made at 56 px gives what the official model gives at 42 px:
    the table resampled by its rule (offset 0.1; registers: offset 0 with antialias)."""
    name = f"vit_small_patch14{'_reg4' if reg else ''}_dinov2"
    source = tiny_vit(name)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(dinov2_release(source), path)
    official = use_dinov2_pos_interpolation(
        tiny_vit(name, dynamic_img_size=True),
        DINOV2_REGISTER_INTERPOLATION if reg else DINOV2_INTERPOLATION)
    x = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(2))
    enc = load_encoder(path, img_size=42)
    with torch.no_grad():
        torch.testing.assert_close(enc.model.forward_features(x), official.forward_features(x),
                                   atol=1e-5, rtol=1e-5)


def test_mae_checkpoint_and_export_resample_by_mae_rule(tmp_path):
    """MAE's interpolate_pos_embed (the BioVFM evaluation's for every checkpoint): bicubic
    to the output size without antialias, here shrinking 7 x 7 to 5 x 5."""
    spec = VitSpec("vit_base_patch16_224", {"img_size": 28, "patch_size": 4, "embed_dim": 192,
                                            "depth": 1, "num_heads": 3, "num_classes": 0})
    torch.manual_seed(0)
    source = spec.create().eval()
    with torch.no_grad():
        source.pos_embed.copy_(smooth_table(7, 192))
    expected = resampled(source.pos_embed.detach(), 5, scale=5 / 7)
    torch.testing.assert_close(interpolate_pos_embed_mae(source.pos_embed.detach(), (5, 5)),
                               expected, atol=1e-5, rtol=1e-5)
    mae = tmp_path / "checkpoint-799.pth"
    torch.save({"model": source.state_dict(),
                "args": argparse.Namespace(model="mae_vit_tiny_patch16")}, mae)
    weights, _ = export_backbone(source, spec, tmp_path / "backbone")
    for path in (mae, weights):
        table = load_encoder(path, img_size=20).model.pos_embed.detach()
        torch.testing.assert_close(table, expected, atol=1e-5, rtol=1e-5)


# ============================================================================ item 9
def test_mae_decays_class_and_mask_tokens():
    torch.manual_seed(0)
    method = MAE(MAEConfig.for_size("nano", img_size=32, decoder_dim=64, decoder_depth=1,
                                    decoder_heads=2), total_steps=10)
    names = {id(p): n for n, p in method.named_parameters()}
    decayed = sorted(names[id(p)] for g in method.param_groups() if g["wd_scale"] == 1
                     for p in g["params"])
    # add_weight_decay(model, wd, skip_list=()): no decay for 1-d tensors and ".bias" names
    official = sorted(n for n, p in method.named_parameters()
                      if p.requires_grad and not (p.ndim == 1 or n.endswith(".bias")))
    assert decayed == official
    assert {"backbone.vit.cls_token", "decoder.mask_token"} <= set(decayed)
    # frozen sin-cos tables and the encoder's unused mask token are in no group at all
    grouped = {id(p) for g in method.param_groups() for p in g["params"]}
    vit = method.backbone.vit
    assert not {id(vit.pos_embed), id(method.decoder.pos_embed),
                id(method.backbone.mask_token)} & grouped
    # decay_embeddings=False: the embeddings exempt as well (timm's no_weight_decay habit)
    exempt = MAE(dataclasses.replace(method.cfg, decay_embeddings=False), 10)
    exempt_names = {id(p): n for n, p in exempt.named_parameters()}
    kept = {exempt_names[id(p)] for g in exempt.param_groups() if g["wd_scale"] == 1
            for p in g["params"]}
    assert kept == set(official) - {"backbone.vit.cls_token", "decoder.mask_token"}


# ============================================================================ item 10
def test_mae_vitl16_file_reaches_the_published_batch_and_lr():
    raw = yaml.safe_load((ROOT / "params/pretrain/mae_vitl16.yaml").read_text())
    p = PretrainParams.validate_mapping(raw)
    global_batch = p.batch_size * p.nproc * p.nnodes
    assert global_batch == 4096 and p.epochs == 800 and p.encoder == "large"
    cfg = MAEConfig.for_size("large", batch_size=global_batch, epoch_length=100)
    assert cfg.base_lr == 1.5e-4 and cfg.warmup_epochs == 40 and cfg.weight_decay == 0.05
    with torch.device("meta"):
        method = MAE(cfg, total_steps=800 * 100)
    assert method.lr(4000) == pytest.approx(1.5e-4 * 4096 / 256)  # 2.4e-3 after the warm-up


def official_mae_lr(step: int, per_epoch: int, lr: float, warmup: float = 40,
                    epochs: float = 800, min_lr: float = 0.0) -> float:
    """util/lr_sched.adjust_learning_rate at epoch = iteration / iterations per epoch."""
    epoch = step / per_epoch
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup)
                                                       / (epochs - warmup)))


def test_mae_warmup_is_40_data_epochs_also_in_a_cut_run():
    cfg = MAEConfig.for_size("nano", batch_size=512, epoch_length=25)
    peak = 1.5e-4 * 512 / 256
    full, cut = MAE(cfg, total_steps=800 * 25), MAE(cfg, total_steps=300)
    for step in (0, 1, 137, 999, 1000, 5000, 19_999):
        assert full.lr(step) == pytest.approx(official_mae_lr(step, 25, peak), abs=1e-12)
    for method in (full, cut):
        assert method.phases() == {"lr warm-up": 1000}
        assert method.lr(150) == pytest.approx(peak * 150 / 1000)
    assert schedule_notes(full) == []
    (note,) = schedule_notes(cut)
    assert "300 steps" in note and "lr warm-up (1000 steps)" in note
    # epoch_length 0: the warm-up is the recipe's share of the run (40 / 800)
    assert MAE(MAEConfig.for_size("nano", epoch_length=0), total_steps=300).phases() == \
        {"lr warm-up": 15}


def train_config(**kw) -> TrainConfig:
    return TrainConfig(**{"algorithm": "mae", "size": "nano", "method": {}, "sources": [],
                          "subset": {}, "img_size": 28, "local_size": 0, "n_local": 0,
                          "epochs": 800, "max_steps": 0, "batch_size": 8, "seed": 0,
                          "precision": "fp32", "strategy": "ddp",
                          "activation_checkpointing": False, "compile": False,
                          "num_workers": 0, "checkpoint_every": 1, "log_every": 1,
                          "out_dir": "", **kw})


def test_loop_gives_mae_its_data_epoch():
    method, _ = build_method(train_config(), 64, total_steps=50, steps_per_pass=37)
    assert method.cfg.epoch_length == 37 and method.phases() == {"lr warm-up": 40 * 37}
    share, _ = build_method(train_config(method={"epoch_length": 0}), 64, 50, steps_per_pass=37)
    assert share.phases() == {"lr warm-up": round(50 * 40 / 800)}


@pytest.mark.slow
def test_cut_mae_run_logs_the_absolute_warmup(tmp_path):
    from biovfm_lib.train import launch

    p = PretrainParams.validate_mapping({
        "algorithm": "mae", "encoder": "nano", "patch_size": 4, "data": "synthetic",
        "data_root": str(tmp_path / "synth"), "data_size": 28, "synthetic_scale": 0.01,
        "img_size": 28, "epochs": 800, "max_steps": 3, "batch_size": 8, "num_workers": 0,
        "checkpoint_every": 10, "log_every": 1, "nproc": 1, "out_root": str(tmp_path / "out")})
    result = launch(p, live=False)
    log = read_log(result.log)
    per_epoch = round(log.step.iloc[-1] / log.epoch.iloc[-1])
    peak = 1.5e-4 * 8 / 256
    for step, lr in zip(log.step, log.lr, strict=True):  # the lr of the step just taken
        assert lr == pytest.approx(peak * (step - 1) / (40 * per_epoch))
    assert f"lr warm-up ({40 * per_epoch} steps)" in (result.train_dir / "launch.log").read_text()


# ============================================================================ item 11
def odd_heads_mae(tmp_path, heads: int, width: int = 256, **args) -> tuple:
    """An MAE checkpoint whose heads are not 64 wide (width / heads)."""
    spec = VitSpec("vit_base_patch16_224", {"img_size": 28, "patch_size": 4, "embed_dim": width,
                                            "depth": 1, "num_heads": heads, "num_classes": 0})
    torch.manual_seed(0)
    source = spec.create().eval()
    with torch.no_grad():
        for prm in source.parameters():
            prm.normal_(0, 0.2)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": source.state_dict(), **({"args": argparse.Namespace(**args)}
                                                  if args else {})}, path)
    return source, path


def features(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(torch.randn(2, 3, 28, 28,
                                                  generator=torch.Generator().manual_seed(3)))


def test_head_count_from_args_model(tmp_path):
    # ViT-H/14's heads are 80 wide: args.model names it, so 16 heads, not 1280 / 64 = 20
    source, path = odd_heads_mae(tmp_path, heads=16, width=1280, model="mae_vit_huge_patch14")
    enc = load_encoder(path, img_size=28)
    assert enc.spec.timm_kwargs["num_heads"] == 16
    torch.testing.assert_close(features(enc.model), features(source))


def test_head_count_from_num_heads_or_refused(tmp_path):
    source, path = odd_heads_mae(tmp_path, heads=8)  # 256 wide, 32-wide heads
    with pytest.raises(ValueError, match=r"(?s)records no architecture.*256.*num_heads=4.*"
                                         r"set num_heads"):
        load_encoder(path, img_size=28)
    enc = load_encoder(path, img_size=28, num_heads=8)
    assert enc.spec.timm_kwargs["num_heads"] == 8
    torch.testing.assert_close(features(enc.model), features(source))
    with pytest.raises(ValueError, match="does not divide"):
        load_encoder(path, img_size=28, num_heads=7)


def test_a_record_that_contradicts_the_weights_or_num_heads_is_refused(tmp_path):
    _, path = odd_heads_mae(tmp_path, heads=8, model="mae_vit_large_patch16")
    with pytest.raises(ValueError, match=r"'mae_vit_large_patch16' is 1024 wide.*256"):
        load_encoder(path, img_size=28)
    assert load_encoder(path, img_size=28, num_heads=8).spec.timm_kwargs["num_heads"] == 8
    _, path = odd_heads_mae(tmp_path, heads=16, width=1280, model="mae_vit_huge_patch14")
    with pytest.raises(ValueError, match="has 16 heads"):
        load_encoder(path, img_size=28, num_heads=20)


def test_sidecar_heads_are_authoritative(tmp_path):
    spec = VitSpec("vit_base_patch16_224", {"img_size": 28, "patch_size": 4, "embed_dim": 256,
                                            "depth": 1, "num_heads": 8, "num_classes": 0})
    source = spec.create().eval()
    weights, _ = export_backbone(source, spec, tmp_path / "backbone")
    assert load_encoder(weights, img_size=28).model.blocks[0].attn.num_heads == 8
    with pytest.raises(ValueError, match="sidecar's architecture has 8 heads"):
        load_encoder(weights, img_size=28, num_heads=4)


def test_probe_params_pass_num_heads(tmp_path):
    from biovfm_lib.params import ProbeParams
    from biovfm_lib.probe.pipeline import build_encoder

    source, path = odd_heads_mae(tmp_path, heads=8)
    p = ProbeParams.validate_mapping({"checkpoint": str(path), "size": 28, "num_heads": 8,
                                      "protocol": "cached"})
    enc, identity = build_encoder(p)
    assert identity["spec"].timm_kwargs["num_heads"] == 8
    torch.testing.assert_close(features(enc.model), features(source))

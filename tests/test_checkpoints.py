"""Checkpoint export/import: every official key layout, rebuilt from a tiny source model.

Each test writes a small model's weights in a format's own key names and checks that the
imported encoder computes the source's features exactly at the checkpoint's image size, and
still runs (with resampled position embeddings) at another size.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re

import pytest
import safetensors.torch
import timm
import torch

from biovfm_lib.models.checkpoints import detect_format, export_backbone, load_encoder
from biovfm_lib.models.factory import VitSpec, vit_spec

SIZE, OTHER_SIZE, PATCH, DIM = 28, 20, 4, 192  # 7x7 tokens at SIZE, 5x5 at OTHER_SIZE
# ViT-T's width and heads (a state dict does not record the head count; the loader takes an
# official width's; tests/test_study_pretrain_mechanics.py covers other widths)
SMALL = {"img_size": SIZE, "patch_size": PATCH, "embed_dim": DIM, "depth": 4,
         "num_heads": DIM // 64, "num_classes": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (timm zero-inits biases, 1e-5 layer scales), in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def images(size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_same_features(enc, source: torch.nn.Module, size: int = SIZE) -> None:
    x = images(size)
    assert not enc.model.training
    enc.spec.create().load_state_dict(enc.model.state_dict())  # the spec rebuilds the model
    with torch.no_grad():
        torch.testing.assert_close(enc.model.forward_features(x), source.forward_features(x))
        pooled = source.forward_head(source.forward_features(x), pre_logits=True)
        torch.testing.assert_close(enc.model(x), pooled)


def assert_runs_resampled(path, fmt: str, n_prefix: int, **kwargs) -> None:
    enc = load_encoder(path, fmt, img_size=OTHER_SIZE, **kwargs)
    grid = OTHER_SIZE // enc.model.patch_embed.patch_size[0]
    assert enc.model.pos_embed.shape[1] == n_prefix + grid * grid
    with torch.no_grad():
        out = enc.model(images(OTHER_SIZE))
    assert out.shape == (2, enc.model.embed_dim) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- DINOv2
def dinov2_source(reg: bool, swiglu: bool = False) -> torch.nn.Module:
    name = f"vit_{'giant' if swiglu else 'small'}_patch14{'_reg4' if reg else ''}_dinov2"
    return randomised(timm.create_model(name, **SMALL))


def dinov2_release(model: torch.nn.Module, swiglu: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in DINOv2's own names: the inverse of timm's ``_convert_dinov2``."""
    sd = dict(model.state_dict())
    if "reg_token" in sd:  # DINOv2 keeps a CLS slot in pos_embed, and adds it to the CLS token
        cls_pos = torch.randn(1, 1, DIM)
        sd["register_tokens"] = sd.pop("reg_token")
        sd["cls_token"] = sd["cls_token"] - cls_pos
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, DIM)
    if swiglu:
        sd = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v
              for k, v in sd.items()}
    return sd


def dinov2_training(release: dict[str, torch.Tensor], chunks: int = 2) -> dict:
    """A training checkpoint: FSDP-chunked teacher with heads, plus a different student."""
    per_chunk = SMALL["depth"] // chunks

    def chunked(k: str) -> str:
        m = re.match(r"blocks\.(\d+)\.(.*)", k)
        return f"blocks.{int(m[1]) // per_chunk}.{m[1]}.{m[2]}" if m else k

    teacher = {f"backbone.{chunked(k)}": v for k, v in release.items()}
    teacher |= {"dino_head.mlp.0.weight": torch.randn(32, DIM),
                "dino_head.last_layer.weight_g": torch.randn(64, 1),
                "ibot_head.mlp.0.weight": torch.randn(32, DIM)}
    student = {k: torch.randn_like(v) for k, v in teacher.items()}
    return {"teacher": teacher, "student": student, "iteration": 1250,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}}


@pytest.mark.parametrize("reg", [False, True], ids=["plain", "reg4"])
def test_dinov2_release_weights(tmp_path, reg):
    source = dinov2_source(reg)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(dinov2_release(source), path)
    assert detect_format(path) == "dinov2"
    enc = load_encoder(path, img_size=SIZE)
    assert enc.format == "dinov2" and enc.meta == {} and enc.source == str(path)
    assert enc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert enc.spec.timm_kwargs["reg_tokens"] == (4 if reg else 0)
    assert_same_features(enc, source)
    assert_runs_resampled(path, "dinov2", n_prefix=0 if reg else 1)


def test_dinov2_giant_swiglu(tmp_path):
    source = dinov2_source(reg=True, swiglu=True)
    path = tmp_path / "dinov2_vitg14_reg4_pretrain.pth"
    torch.save(dinov2_release(source, swiglu=True), path)
    enc = load_encoder(path, "dinov2", img_size=SIZE)
    assert enc.spec.timm_name == "vit_giant_patch14_reg4_dinov2"
    assert_same_features(enc, source)


@pytest.mark.parametrize("reg", [False, True], ids=["plain", "reg4"])
def test_dinov2_training_checkpoint_uses_chunked_teacher(tmp_path, reg):
    source = dinov2_source(reg)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(dinov2_training(dinov2_release(source)), path)
    assert detect_format(path) == "dinov2"
    enc = load_encoder(path, img_size=SIZE)
    assert enc.spec.timm_kwargs["depth"] == SMALL["depth"]
    assert_same_features(enc, source)
    assert_runs_resampled(path, "dinov2", n_prefix=0 if reg else 1)


def test_dinov2_missing_weight_is_an_error(tmp_path):
    release = dinov2_release(dinov2_source(reg=False))
    del release["blocks.1.attn.qkv.bias"]
    path = tmp_path / "broken.pth"
    torch.save(release, path)
    with pytest.raises(ValueError, match=r"(?s)broken\.pth.*blocks\.1\.attn\.qkv\.bias"):
        load_encoder(path)


# ----------------------------------------------------------------------------- MAE
MAE_SPEC = VitSpec("vit_base_patch16_224", dict(SMALL, depth=2))


def mae_decoder(dim: int = 64) -> dict[str, torch.Tensor]:
    n_tokens = 1 + (SIZE // PATCH) ** 2
    return {"mask_token": torch.zeros(1, 1, DIM),
            "decoder_embed.weight": torch.randn(dim, DIM), "decoder_embed.bias": torch.zeros(dim),
            "decoder_pos_embed": torch.randn(1, n_tokens, dim),
            "decoder_blocks.0.norm1.weight": torch.ones(dim),
            "decoder_norm.weight": torch.ones(dim),
            "decoder_pred.weight": torch.randn(PATCH * PATCH * 3, dim)}


def test_mae_pretrain_checkpoint(tmp_path):
    source = randomised(MAE_SPEC.create())
    path = tmp_path / "checkpoint-399.pth"
    ckpt = {"model": source.state_dict() | mae_decoder(), "epoch": 399,
            "args": argparse.Namespace(model="mae_vit_tiny_patch16", mask_ratio=0.75)}
    torch.save(ckpt, path)
    assert detect_format(path) == "mae"
    enc = load_encoder(path, img_size=SIZE)
    assert enc.format == "mae" and enc.spec.timm_name == "vit_base_patch16_224"
    assert_same_features(enc, source)
    assert_runs_resampled(path, "mae", n_prefix=1)


def test_mae_finetuned_checkpoint_keeps_fc_norm_drops_head(tmp_path):
    source = randomised(MAE_SPEC.create(global_pool="avg"))  # MAE's global_pool: fc_norm, no norm
    path = tmp_path / "mae_finetuned_vit_base.pth"
    head = {"head.weight": torch.randn(10, DIM), "head.bias": torch.zeros(10)}
    torch.save({"model": source.state_dict() | head}, path)
    enc = load_encoder(path, img_size=SIZE)
    assert enc.spec.timm_kwargs["global_pool"] == "avg"
    assert_same_features(enc, source)


# ----------------------------------------------------------------------------- timm
@pytest.mark.parametrize("layout", ["safetensors_with_head", "pth", "pth_training"])
def test_timm_state_dict(tmp_path, layout):
    source = randomised(timm.create_model("vit_tiny_patch16_224",
                                          num_classes=1000 if "head" in layout else 0))
    path = tmp_path / f"vit_tiny.{layout.split('_')[0]}"
    if layout == "safetensors_with_head":
        safetensors.torch.save_file(source.state_dict(), path)
    elif layout == "pth":
        torch.save(source.state_dict(), path)
    else:  # what timm's train.py saves
        torch.save({"epoch": 9, "arch": "vit_tiny_patch16_224", "state_dict": source.state_dict(),
                    "args": argparse.Namespace(model="vit_tiny_patch16_224")}, path)
    assert detect_format(path) == "timm"
    enc = load_encoder(path, timm_name="vit_tiny_patch16_224", img_size=224)
    assert enc.format == "timm" and enc.model.num_classes == 0
    assert_same_features(enc, source, size=224)
    enc = load_encoder(path, timm_name="vit_tiny_patch16_224", img_size=112)
    assert enc.model.pos_embed.shape[1] == 1 + 7 * 7
    assert enc.model(images(112)).shape == (2, 192)


def test_timm_needs_a_fitting_name(tmp_path):
    path = tmp_path / "nano.pth"
    torch.save(randomised(vit_spec("nano", img_size=SIZE).create()).state_dict(), path)
    with pytest.raises(ValueError, match=r"nano\.pth.*timm_name"):
        load_encoder(path)
    with pytest.raises(ValueError, match="not a timm architecture"):
        load_encoder(path, timm_name="vit_no_such_model")
    with pytest.raises(ValueError, match=r"nano\.pth.*do not fit timm 'vit_tiny_patch16_224'"):
        load_encoder(path, timm_name="vit_tiny_patch16_224", img_size=SIZE)


# ----------------------------------------------------------------------------- biovfm
def exported(tmp_path, spec: VitSpec | None = None, **meta):
    spec = spec or vit_spec("nano", img_size=SIZE, init_values=1e-5, reg_tokens=4,
                            no_embed_class=True)
    source = randomised(spec.create())
    return source, spec, export_backbone(source, spec, tmp_path / "run7" / "backbone", **meta)


def test_export_sidecar_and_plain_timm_reload(tmp_path):
    source, spec, (weights, sidecar) = exported(
        tmp_path, algorithm="dinov2", subset="all", images_seen=1_000_000, size="nano")
    assert (weights.name, sidecar.name) == ("backbone.safetensors", "backbone.json")
    record = json.loads(sidecar.read_text())
    assert record == {
        "format": "biovfm-backbone", "version": 1, "timm_name": spec.timm_name,
        "timm_kwargs": spec.timm_kwargs, "n_params": sum(p.numel() for p in source.parameters()),
        "algorithm": "dinov2", "subset": "all", "images_seen": 1_000_000, "size": "nano"}
    plain = timm.create_model(record["timm_name"], **record["timm_kwargs"]).eval()
    plain.load_state_dict(safetensors.torch.load_file(weights))  # strict, without this package
    with torch.no_grad():
        torch.testing.assert_close(plain(images()), source(images()))
    assert not list(weights.parent.glob(".*"))  # no temporaries left behind


def test_biovfm_import(tmp_path):
    source, _, (weights, sidecar) = exported(tmp_path, size="nano")
    assert detect_format(weights) == "biovfm"
    enc = load_encoder(sidecar, img_size=SIZE)  # the sidecar stands for its weights
    assert enc.format == "biovfm" and enc.source == str(weights) and enc.meta["size"] == "nano"
    assert enc.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert_same_features(enc, source)
    assert_runs_resampled(weights, "biovfm", n_prefix=0)


def test_biovfm_import_drops_an_exported_head(tmp_path):
    nano = vit_spec("nano", img_size=SIZE)
    headed = VitSpec(nano.timm_name, {**nano.timm_kwargs, "num_classes": 5})
    source, _, (weights, _) = exported(tmp_path, headed)
    enc = load_encoder(weights, img_size=SIZE)
    assert enc.spec.timm_kwargs["num_classes"] == 0
    assert_same_features(enc, source)


def test_export_refuses_to_overwrite(tmp_path):
    _, spec, (weights, sidecar) = exported(tmp_path)
    before = weights.read_bytes(), sidecar.read_bytes()
    with pytest.raises(FileExistsError, match="backbone.safetensors"):
        export_backbone(randomised(spec.create(), seed=1), spec, weights.with_suffix(""))
    assert (weights.read_bytes(), sidecar.read_bytes()) == before


def test_export_checks_spec_and_metadata(tmp_path):
    model = vit_spec("nano", img_size=SIZE).create()
    with pytest.raises(ValueError, match="do not fit"):
        export_backbone(model, vit_spec("tiny", img_size=SIZE), tmp_path / "a")
    with pytest.raises(ValueError, match="reserved"):
        export_backbone(model, vit_spec("nano", img_size=SIZE), tmp_path / "b", n_params=1)
    assert not list(tmp_path.iterdir())


def test_biovfm_sidecar_mismatch_is_an_error(tmp_path):
    _, _, (weights, sidecar) = exported(tmp_path)
    record = json.loads(sidecar.read_text())
    record["timm_kwargs"]["depth"] = 2
    sidecar.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"backbone\.safetensors: .* \d+ unexpected \(blocks\.2"):
        load_encoder(weights, img_size=SIZE)


# ----------------------------------------------------------------------------- detection
def test_detect_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        detect_format(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_encoder(tmp_path / "nowhere.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"weights": "elsewhere"}, odd)
    with pytest.raises(ValueError, match=r"odd\.pth.*cannot tell"):
        detect_format(odd)
    listed = tmp_path / "listed.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match=r"listed\.pth.*not a state dict"):
        detect_format(listed)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth.*weights-only"):
        detect_format(garbage)


def test_load_encoder_argument_errors(tmp_path):
    path = tmp_path / "dinov2.pth"
    torch.save(dinov2_release(dinov2_source(reg=False)), path)
    with pytest.raises(ValueError, match=r"dinov2\.pth.*unknown checkpoint format 'ibot'"):
        load_encoder(path, "ibot")
    with pytest.raises(ValueError, match=r"dinov2 checkpoint.*timm_name"):
        load_encoder(path, timm_name="vit_small_patch14_dinov2")

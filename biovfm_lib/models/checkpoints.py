"""Export and import of ViT backbones, so the probe can evaluate any checkpoint.

Formats (``CHECKPOINT_FORMATS``):

- ``biovfm``: ours. ``<stem>.safetensors`` holds the backbone state dict and ``<stem>.json``
  the timm spec plus free metadata, so ``timm.create_model(timm_name, **timm_kwargs)`` and a
  strict ``load_state_dict`` rebuild it without this package.
- ``dinov2``: official DINOv2 release weights (``dinov2_vit*14[_reg4]_pretrain.pth``) or a
  training checkpoint's ``teacher``, FSDP block chunks included.
- ``mae``: official MAE checkpoints (``{"model": ...}``), pretraining or fine-tuning; only the
  encoder is kept.
- ``timm``: a timm state dict for an architecture the caller names.

Foreign layouts are converted with timm's own ``checkpoint_filter_fn`` and every load is
strict, so a weight that does not fit fails loudly instead of being silently dropped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import get_pretrained_cfg_value, load_state_dict
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from biovfm_lib.models.factory import VitSpec
from biovfm_lib.runs import atomic_write_bytes

CHECKPOINT_FORMATS = ("biovfm", "dinov2", "mae", "timm")
SIDECAR_FORMAT = "biovfm-backbone"
SIDECAR_VERSION = 1
_SIDECAR_KEYS = ("format", "version", "timm_name", "timm_kwargs", "n_params")
# Training scripts (MAE's, timm's) pickle their argparse.Namespace beside the weights.
_SAFE_GLOBALS = [argparse.Namespace]

# timm names of the official architectures by embedding width; other widths borrow a family's
# name, and every size is passed as a keyword override anyway.
_DINOV2_SIZES = {384: "small", 768: "base", 1024: "large"}
_MAE_NAMES = {768: "vit_base_patch16_224", 1024: "vit_large_patch16_224",
              1280: "vit_huge_patch14_224"}


@dataclass(frozen=True)
class LoadedEncoder:
    """A frozen encoder with what identifies it, so features can be cached and attributed."""

    model: torch.nn.Module  # headless (num_classes=0), eval mode
    format: str
    spec: VitSpec  # timm_name + timm_kwargs of the returned model
    source: str  # the checkpoint path
    sha256: str  # content hash of the checkpoint file (feature caches key on it)
    meta: dict  # sidecar metadata for biovfm, {} otherwise


# ----------------------------------------------------------------------------- export
def export_backbone(model: nn.Module, spec: VitSpec, stem: str | Path,
                    **meta: Any) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` and its ``<stem>.json`` sidecar; return both paths.

    The weights are checked against ``spec`` first (on the meta device, so it costs no memory),
    because a backbone that does not rebuild from its own sidecar is only found out when a probe
    needs it. Both files are written atomically and never overwrite; the sidecar goes last, so a
    sidecar always has complete weights beside it.
    """
    stem = Path(stem)
    weights = stem.with_name(f"{stem.name}.safetensors")
    sidecar = stem.with_name(f"{stem.name}.json")
    for path in (weights, sidecar):
        if path.exists():
            raise FileExistsError(f"refusing to overwrite {path}")
    if clash := sorted(set(meta) & set(_SIDECAR_KEYS)):
        raise ValueError(f"metadata keys {clash} are reserved for the sidecar itself")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with torch.device("meta"):
        reference = spec.create()
    _load_strict(reference, state, weights, spec, assign=True)
    record = {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "timm_name": spec.timm_name,
        "timm_kwargs": spec.timm_kwargs, "n_params": sum(p.numel() for p in model.parameters()),
        **meta,
    }
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"  # fails before any file exists
    atomic_write_bytes(weights, safetensors.torch.save(state, metadata={"format": "pt"}))
    atomic_write_bytes(sidecar, text.encode())
    return weights, sidecar


# ----------------------------------------------------------------------------- detection
def detect_format(path: str | Path) -> str:
    """The format of a checkpoint, from its files and key layout (see ``CHECKPOINT_FORMATS``).

    A plain state dict is reported as ``timm``; loading it then needs the architecture's name,
    which no state dict records.
    """
    path = _checkpoint_path(path)
    if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
        return "biovfm"
    ckpt = _read(path)
    if not isinstance(ckpt, Mapping):
        raise TypeError(f"{path}: holds a {type(ckpt).__name__}, not a state dict")
    if "teacher" in ckpt:
        return "dinov2"
    if "model" in ckpt or any(k.startswith("decoder_") for k in ckpt):
        return "mae"
    # DINOv2's own parameter names; layer scale alone (ls1.gamma) is no evidence, since timm's
    # layer-scale ViTs (DeiT-III, its DINOv2 ports) share that key.
    if "mask_token" in ckpt or "register_tokens" in ckpt:
        return "dinov2"
    if "state_dict" in ckpt or (ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())):
        return "timm"
    raise ValueError(
        f"{path}: cannot tell the checkpoint format from its keys {sorted(ckpt)[:8]}; "
        f"pass fmt= one of {CHECKPOINT_FORMATS}")


# ----------------------------------------------------------------------------- loading
def load_encoder(path: str | Path, fmt: str = "auto", img_size: int = 224,
                 timm_name: str = "") -> LoadedEncoder:
    """A headless encoder in eval mode at ``img_size``, from a checkpoint in any known format.

    Position embeddings are resampled when the checkpoint was trained at another size. Every
    weight must land: missing or unexpected keys after conversion raise, naming the file.
    ``timm_name`` names the architecture of a ``timm`` checkpoint and applies to nothing else.
    """
    path = _checkpoint_path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in CHECKPOINT_FORMATS:
        raise ValueError(f"{path}: unknown checkpoint format {fmt!r}; "
                         f"choose 'auto' or one of {CHECKPOINT_FORMATS}")
    if timm_name and fmt != "timm":
        raise ValueError(f"{path} is a {fmt} checkpoint: timm_name={timm_name!r} applies "
                         "only to the timm format (dinov2/mae architectures are inferred)")
    meta: dict = {}
    if fmt == "biovfm":
        model, spec, meta = _load_biovfm(path, img_size)
    elif fmt == "timm":
        model, spec = _load_timm(path, img_size, timm_name)
    else:
        model, spec = _load_converted(path, fmt, img_size)
    return LoadedEncoder(model.eval(), fmt, spec, str(path), _sha256(path), meta)


def _load_biovfm(path: Path, img_size: int) -> tuple[nn.Module, VitSpec, dict]:
    record = json.loads(path.with_suffix(".json").read_text())
    if record.get("format") != SIDECAR_FORMAT or record.get("version", 0) > SIDECAR_VERSION:
        raise ValueError(f"{path.with_suffix('.json')}: not a {SIDECAR_FORMAT} sidecar of "
                         f"version <= {SIDECAR_VERSION} (format={record.get('format')!r}, "
                         f"version={record.get('version')!r})")
    # Build with the recorded head so the load stays strict, then drop it: a fine-tuned export
    # probes like a headless one.
    spec = VitSpec(record["timm_name"], {**record["timm_kwargs"], "img_size": img_size})
    model = spec.create()
    state = safetensors.torch.load_file(path)
    if "pos_embed" in state:
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=model.patch_embed.grid_size,
            num_prefix_tokens=0 if model.no_embed_class else model.num_prefix_tokens)
    _load_strict(model, state, path, spec)
    model.reset_classifier(0)
    return model, VitSpec(spec.timm_name, {**spec.timm_kwargs, "num_classes": 0}), record


def _load_timm(path: Path, img_size: int, timm_name: str) -> tuple[nn.Module, VitSpec]:
    if not timm_name:
        raise ValueError(f"{path}: a timm checkpoint records no architecture; pass timm_name=")
    if not timm.is_model(timm_name):
        raise ValueError(f"{path}: {timm_name!r} is not a timm architecture")
    # timm loads strictly only when the model's class count equals the pretrained config's, so
    # match the file's head here and drop it afterwards.
    head = f"{get_pretrained_cfg_value(timm_name, 'classifier')}.weight"
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            state = load_state_dict(str(path))  # timm's reader: the dict its loader will see
            num_classes = state[head].shape[0] if head in state else 0
            model = timm.create_model(
                timm_name, pretrained=True, num_classes=num_classes, img_size=img_size,
                pretrained_cfg_overlay={"file": str(path), "num_classes": num_classes})
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit timm {timm_name!r}: {e}") from e
    model.reset_classifier(0)
    return model, VitSpec(timm_name, {"img_size": img_size, "num_classes": 0})


def _load_converted(path: Path, fmt: str, img_size: int) -> tuple[nn.Module, VitSpec]:
    ckpt = _read(path)
    state, spec = (_dinov2_backbone if fmt == "dinov2" else _mae_encoder)(ckpt, path, img_size)
    model = spec.create()
    # timm's converter renames DINOv2 keys (registers, SwiGLU) and resamples pos_embed.
    _load_strict(model, checkpoint_filter_fn(state, model), path, spec)
    return model, spec


def _dinov2_backbone(ckpt: Mapping, path: Path, img_size: int
                     ) -> tuple[dict[str, torch.Tensor], VitSpec]:
    """The backbone in release key names, and the timm spec that holds it."""
    if "teacher" in ckpt:  # training checkpoint: the EMA teacher is the model DINOv2 evaluates
        ckpt = {k.removeprefix("backbone."): v for k, v in ckpt["teacher"].items()
                if k.startswith("backbone.")}
    # FSDP BlockChunk: blocks.<chunk>.<global index>.*, earlier indices padded with Identity.
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in ckpt.items()}
    kwargs = _vit_kwargs(state, path, img_size)
    n_reg = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    swiglu = "blocks.0.mlp.w12.weight" in state  # ViT-g; timm's giant names carry SwiGLUPacked
    size = "giant" if swiglu else _DINOV2_SIZES.get(kwargs["embed_dim"], "small")
    name = f"vit_{size}_patch14{'_reg4' if n_reg else ''}_dinov2"
    return state, VitSpec(name, {**kwargs, "reg_tokens": n_reg})


def _mae_encoder(ckpt: Mapping, path: Path, img_size: int
                 ) -> tuple[dict[str, torch.Tensor], VitSpec]:
    """The encoder without decoder, mask token and head, and the timm spec that holds it."""
    state = {k: v for k, v in ckpt.get("model", ckpt).items()
             if not k.startswith(("decoder_", "head.")) and k != "mask_token"}
    kwargs = _vit_kwargs(state, path, img_size)
    if "fc_norm.weight" in state:  # fine-tuned with global pooling: MAE swaps norm for fc_norm
        kwargs["global_pool"] = "avg"
    return state, VitSpec(_MAE_NAMES.get(kwargs["embed_dim"], "vit_base_patch16_224"), kwargs)


def _vit_kwargs(state: Mapping[str, torch.Tensor], path: Path, img_size: int) -> dict[str, Any]:
    """timm ``VisionTransformer`` sizes recovered from a state dict in DINOv2/MAE key names."""
    fc1 = "blocks.0.mlp.w12.weight" if "blocks.0.mlp.w12.weight" in state \
        else "blocks.0.mlp.fc1.weight"
    if missing := [k for k in ("cls_token", "patch_embed.proj.weight", fc1) if k not in state]:
        raise ValueError(f"{path}: not a ViT in the expected key layout (no {missing})")
    embed_dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"]
    return {
        "img_size": img_size, "patch_size": patch.shape[-1], "in_chans": patch.shape[1],
        "embed_dim": embed_dim, "num_heads": _num_heads(embed_dim),
        "depth": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        "mlp_ratio": _mlp_ratio(state[fc1].shape[0], embed_dim),
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None,  # any: weights replace it
        "num_classes": 0,
    }


def _num_heads(embed_dim: int) -> int:
    # Weights do not record the head count. Every DINOv2 and MAE release uses 64-dim heads,
    # except ViT-H/14 (1280 = 16 heads x 80).
    return 16 if embed_dim == 1280 else max(1, embed_dim // 64)


def _mlp_ratio(hidden: int, embed_dim: int) -> float:
    # timm sizes the MLP as int(embed_dim * mlp_ratio); step up one ulp where that rounds down.
    ratio = hidden / embed_dim
    return ratio if int(embed_dim * ratio) == hidden else math.nextafter(ratio, math.inf)


# ----------------------------------------------------------------------------- helpers
def _checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix == ".json":  # a biovfm sidecar stands for its weights
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise ValueError(f"{path}: not readable as a weights-only torch checkpoint: {e}") from e


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path,
                 spec: VitSpec, assign: bool = False) -> None:
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {spec.timm_name} {spec.timm_kwargs}: "
                         f"{e}") from e


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()

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

At a size other than the checkpoint's, the position table is resampled as the code that made
it would: an official DINOv2 checkpoint with DINOv2's interpolation (offset 0.1, or offset 0
with antialiasing for register models), an MAE checkpoint and this project's exports with
MAE's ``interpolate_pos_embed``, which the BioVFM evaluation applies to every checkpoint it
loads (``models.pos_embed``). A state dict does not record the head count: it is read from
the sidecar or an MAE checkpoint's ``args.model``, else taken from ``num_heads``, else from
the official ViT of that width; any other width is refused rather than guessed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg_value, load_state_dict
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from biovfm_lib.models.factory import VitSpec, mlp_ratio
from biovfm_lib.models.pos_embed import (
    DINOV2_INTERPOLATION,
    DINOV2_REGISTER_INTERPOLATION,
    interpolate_pos_embed_dinov2,
    interpolate_pos_embed_mae,
)
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
# (width, heads) of the official ViTs: MAE's and DINOv2's releases, the study's ViT-T/S (its
# evaluation's models_vit and DINOv2 builder) and DINOv2's giant2. Heads are 64 wide except
# ViT-H's (1280 = 16 x 80).
_OFFICIAL_HEADS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12), "large": (1024, 16),
                   "huge": (1280, 16), "giant2": (1536, 24)}
_HEADS_BY_WIDTH = dict(_OFFICIAL_HEADS.values())
# What this workbook's training checkpoints (checkpoints/last.pt) hold besides weights.
_TRAINING_KEYS = ("model", "optimizer", "rng")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message is one line naming the file and the problem
    (and the fix, where there is one)."""


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


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
    return "biovfm" if _is_export(path) else _format_of(_read(path), path)


def _is_export(path: Path) -> bool:
    return path.suffix == ".safetensors" and path.with_suffix(".json").is_file()


def _format_of(ckpt: Any, path: Path) -> str:
    """The format a checkpoint's contents are in (``detect_format`` without the reading)."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: holds a {type(ckpt).__name__}, not a state dict")
    if all(k in ckpt for k in _TRAINING_KEYS):
        export = path.parent.parent / "export" / "backbone.safetensors"
        raise CheckpointError(f"{path} is a training checkpoint (weights, optimizer and RNG "
                              f"state of a run that can resume); probe its exported backbone "
                              f"instead: {export}")
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
    raise CheckpointError(
        f"{path}: cannot tell the checkpoint format from its keys {sorted(ckpt)[:8]}; "
        f"pass fmt= one of {CHECKPOINT_FORMATS}")


# ----------------------------------------------------------------------------- loading
def load_encoder(path: str | Path, fmt: str = "auto", img_size: int = 224,
                 timm_name: str = "", num_heads: int = 0) -> LoadedEncoder:
    """A headless encoder in eval mode at ``img_size``, from a checkpoint in any known format.

    Position embeddings are resampled when the checkpoint was trained at another size, by the
    rule of the code that made it (see the module docstring). Every weight must land: missing
    or unexpected keys after conversion raise, naming the file. ``timm_name`` names the
    architecture of a ``timm`` checkpoint and applies to nothing else. ``num_heads`` (0: read
    or inferred) sets the head count, which weights cannot reveal: a wrong one loads strictly
    and computes other features; it must agree with the checkpoint's record where one exists.
    """
    path = _checkpoint_path(path)
    if fmt not in (*CHECKPOINT_FORMATS, "auto"):
        raise CheckpointError(f"{path}: unknown checkpoint format {fmt!r}; "
                              f"choose 'auto' or one of {CHECKPOINT_FORMATS}")
    ckpt = None if _is_export(path) else _read(path)  # read once, for detection and loading
    detected = "biovfm" if ckpt is None else _format_of(ckpt, path)
    if fmt == "auto":
        fmt = detected
    elif fmt != detected:  # a forced format would convert keys of another layout
        raise CheckpointError(f"{path} is a {detected} checkpoint, not {fmt}: set the "
                              f"checkpoint format to auto (or {detected})")
    if timm_name and fmt != "timm":
        raise CheckpointError(f"{path} is a {fmt} checkpoint: timm_name={timm_name!r} "
                              "applies only to the timm format (dinov2/mae architectures are "
                              "inferred)")
    if num_heads < 0:
        raise CheckpointError(f"{path}: num_heads must be >= 0 (0: from the checkpoint), "
                              f"got {num_heads}")
    meta: dict = {}
    if fmt == "biovfm":
        model, spec, meta = _load_biovfm(path, img_size, num_heads)
    elif fmt == "timm":
        model, spec = _load_timm(path, img_size, timm_name, num_heads)
    else:
        model, spec = _load_converted(ckpt, path, fmt, img_size, num_heads)
    _check_finite(model, path)
    return LoadedEncoder(model.eval(), fmt, spec, str(path), _sha256(path), meta)


def _check_finite(model: nn.Module, path: Path) -> None:
    """NaN or infinite weights load without complaint and turn every feature into NaN, which
    fails far downstream (in a metric) without naming the checkpoint."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the "
                              "checkpoint is corrupt or its training diverged")


def read_sidecar(path: Path) -> dict[str, Any]:
    """An export's sidecar, checked: a mapping of this format and a known version, naming a
    timm architecture. Anything else is a one-line error naming the sidecar."""
    sidecar = path.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{sidecar}: unreadable sidecar ({_first_line(e)}); re-export the "
                              "backbone, or restore the file") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{sidecar}: the sidecar holds a {type(record).__name__}, not a "
                              "mapping")
    if record.get("format") != SIDECAR_FORMAT or not isinstance(record.get("version"), int) \
            or record["version"] > SIDECAR_VERSION:
        raise CheckpointError(f"{sidecar}: not a {SIDECAR_FORMAT} sidecar of version <= "
                              f"{SIDECAR_VERSION} (format={record.get('format')!r}, version="
                              f"{record.get('version')!r}); a newer workbook may have written it")
    name, kwargs = record.get("timm_name"), record.get("timm_kwargs")
    if not isinstance(name, str) or not timm.is_model(name) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{sidecar}: timm_name {name!r} and timm_kwargs {kwargs!r} do not "
                              "name a timm architecture")
    return record


def _load_biovfm(path: Path, img_size: int, num_heads: int) -> tuple[nn.Module, VitSpec, dict]:
    record = read_sidecar(path)
    # Build with the recorded head so the load stays strict, then drop it: a fine-tuned export
    # probes like a headless one.
    spec = VitSpec(record["timm_name"], {**record["timm_kwargs"], "img_size": img_size})
    model = spec.create()
    if num_heads and num_heads != model.blocks[0].attn.num_heads:
        raise CheckpointError(f"{path}: num_heads={num_heads}, but the sidecar's architecture has "
                         f"{model.blocks[0].attn.num_heads} heads; leave num_heads at 0")
    state = _read(path)
    if "pos_embed" in state:
        state["pos_embed"] = interpolate_pos_embed_mae(
            state["pos_embed"], tuple(model.patch_embed.grid_size),
            num_prefix_tokens=0 if model.no_embed_class else model.num_prefix_tokens)
    _load_strict(model, state, path, spec)
    model.reset_classifier(0)
    return model, VitSpec(spec.timm_name, {**spec.timm_kwargs, "num_classes": 0}), record


def _load_timm(path: Path, img_size: int, timm_name: str, num_heads: int
               ) -> tuple[nn.Module, VitSpec]:
    # load_encoder has read the file once already, so an unreadable one never gets here
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        state = load_state_dict(str(path))  # timm's reader: the dict its loader will see
    if not any(k.startswith("patch_embed.") for k in state):
        raise CheckpointError(f"{path}: holds no ViT (no patch embedding; keys such as "
                              f"{sorted(state)[:3]}): this looks like a CNN, and the probe "
                              "takes vision transformers")
    if not timm_name:
        beside = (f"its sidecar {path.with_suffix('.json').name} is missing (an export's "
                  "sidecar names its architecture); restore it, or " if path.suffix ==
                  ".safetensors" else "")
        raise CheckpointError(f"{path}: a plain state dict records no architecture; {beside}"
                              "pass timm_name")
    if not timm.is_model(timm_name):
        raise CheckpointError(f"{path}: {timm_name!r} is not a timm architecture")
    # timm loads strictly only when the model's class count equals the pretrained config's, so
    # match the file's head here and drop it afterwards.
    head = f"{get_pretrained_cfg_value(timm_name, 'classifier')}.weight"
    num_classes = state[head].shape[0] if head in state else 0
    heads = {"num_heads": num_heads} if num_heads else {}
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            model = timm.create_model(
                timm_name, pretrained=True, num_classes=num_classes, img_size=img_size,
                pretrained_cfg_overlay={"file": str(path), "num_classes": num_classes},
                **heads)
    except TypeError as e:  # only ViTs take img_size
        raise CheckpointError(f"{path}: timm {timm_name!r} is not a vision transformer "
                              f"({_first_line(e)}); the probe takes ViTs") from None
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit timm {timm_name!r}: "
                              f"{_load_error_summary(e)}") from None
    model.reset_classifier(0)
    return model, VitSpec(timm_name, {"img_size": img_size, "num_classes": 0, **heads})


def _load_converted(ckpt: Mapping, path: Path, fmt: str, img_size: int, num_heads: int
                    ) -> tuple[nn.Module, VitSpec]:
    convert = _dinov2_backbone if fmt == "dinov2" else _mae_encoder
    state, spec = convert(ckpt, path, img_size, num_heads)
    model = spec.create()
    # Both release layouts hold one class-token entry, then the square grid. Resampled here by
    # the official rule, the table fits, and timm's converter (which renames DINOv2's register
    # and SwiGLU keys) leaves it as it is.
    grid = tuple(model.patch_embed.grid_size)
    if fmt == "dinov2":
        rule = DINOV2_REGISTER_INTERPOLATION if "register_tokens" in state \
            else DINOV2_INTERPOLATION
        state["pos_embed"] = interpolate_pos_embed_dinov2(state["pos_embed"], grid, 1, rule)
    else:
        state["pos_embed"] = interpolate_pos_embed_mae(state["pos_embed"], grid, 1)
    _load_strict(model, checkpoint_filter_fn(state, model), path, spec)
    return model, spec


def _dinov2_backbone(ckpt: Mapping, path: Path, img_size: int, num_heads: int
                     ) -> tuple[dict[str, torch.Tensor], VitSpec]:
    """The backbone in release key names, and the timm spec that holds it."""
    if "teacher" in ckpt:  # training checkpoint: the EMA teacher is the model DINOv2 evaluates
        if not isinstance(ckpt["teacher"], Mapping):
            raise CheckpointError(f"{path}: its 'teacher' holds a "
                                  f"{type(ckpt['teacher']).__name__}, not a state dict")
        ckpt = {k.removeprefix("backbone."): v for k, v in ckpt["teacher"].items()
                if k.startswith("backbone.")}
    # FSDP BlockChunk: blocks.<chunk>.<global index>.*, earlier indices padded with Identity.
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in ckpt.items()}
    # neither a release nor a teacher checkpoint records the architecture
    kwargs = _vit_kwargs(state, path, img_size, num_heads)
    n_reg = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    swiglu = "blocks.0.mlp.w12.weight" in state  # ViT-g; timm's giant names carry SwiGLUPacked
    size = "giant" if swiglu else _DINOV2_SIZES.get(kwargs["embed_dim"], "small")
    name = f"vit_{size}_patch14{'_reg4' if n_reg else ''}_dinov2"
    return state, VitSpec(name, {**kwargs, "reg_tokens": n_reg})


def _mae_encoder(ckpt: Mapping, path: Path, img_size: int, num_heads: int
                 ) -> tuple[dict[str, torch.Tensor], VitSpec]:
    """The encoder without decoder, mask token and head, and the timm spec that holds it."""
    weights = ckpt.get("model", ckpt)
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path}: its 'model' holds a {type(weights).__name__}, not a "
                              "state dict")
    state = {k: v for k, v in weights.items()
             if not k.startswith(("decoder_", "head.")) and k != "mask_token"}
    kwargs = _vit_kwargs(state, path, img_size, num_heads, _mae_recorded_arch(ckpt))
    if "fc_norm.weight" in state:  # fine-tuned with global pooling: MAE swaps norm for fc_norm
        kwargs["global_pool"] = "avg"
    return state, VitSpec(_MAE_NAMES.get(kwargs["embed_dim"], "vit_base_patch16_224"), kwargs)


def _mae_recorded_arch(ckpt: Mapping) -> str:
    """The model name MAE's scripts record in ``args.model`` (pretraining:
    ``mae_vit_large_patch16``; fine-tuning: ``vit_large_patch16``), or ''."""
    args = ckpt.get("args")
    model = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    return model if isinstance(model, str) else ""


def _vit_kwargs(state: Mapping[str, torch.Tensor], path: Path, img_size: int,
                num_heads: int = 0, recorded: str = "") -> dict[str, Any]:
    """timm ``VisionTransformer`` sizes recovered from a state dict in DINOv2/MAE key names
    (the head count from ``num_heads``, the ``recorded`` model name, or the width)."""
    fc1 = "blocks.0.mlp.w12.weight" if "blocks.0.mlp.w12.weight" in state \
        else "blocks.0.mlp.fc1.weight"
    if missing := [k for k in ("cls_token", "patch_embed.proj.weight", fc1) if k not in state]:
        raise CheckpointError(f"{path}: not a ViT in the expected key layout (no {missing})")
    embed_dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"]
    return {
        "img_size": img_size, "patch_size": patch.shape[-1], "in_chans": patch.shape[1],
        "embed_dim": embed_dim, "num_heads": _num_heads(embed_dim, path, num_heads, recorded),
        "depth": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        "mlp_ratio": mlp_ratio(state[fc1].shape[0], embed_dim),
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None,  # any: weights replace it
        "num_classes": 0,
    }


def _num_heads(embed_dim: int, path: Path, num_heads: int = 0, recorded: str = "") -> int:
    """The head count, which weights do not reveal (every count that divides the width loads).

    In order: ``num_heads``; the architecture a ``recorded`` model name (MAE's ``args.model``)
    stands for, which must have this width; the official ViT of this width. Anything else is
    an error naming the old 64-wide guess, since loading on a guess gives wrong features.
    """
    if num_heads and embed_dim % num_heads:
        raise CheckpointError(f"{path}: num_heads={num_heads} does not divide the width "
                              f"{embed_dim}")
    match = re.search(r"vit_(tiny|small|base|large|huge|giant2)_patch\d+", recorded)
    if match:
        width, heads = _OFFICIAL_HEADS[match[1]]
        if width != embed_dim and not num_heads:
            raise CheckpointError(f"{path}: args.model {recorded!r} is {width} wide, the "
                                  f"weights {embed_dim}; set num_heads to load them anyway")
        if width == embed_dim and num_heads not in (0, heads):
            raise CheckpointError(f"{path}: num_heads={num_heads}, but args.model "
                                  f"{recorded!r} has {heads} heads")
        if not num_heads:
            return heads
    if num_heads:
        return num_heads
    if embed_dim in _HEADS_BY_WIDTH:
        return _HEADS_BY_WIDTH[embed_dim]
    record = f"args.model {recorded!r} is no official ViT" if recorded else "no architecture"
    raise CheckpointError(f"{path}: the checkpoint records {record} and its width {embed_dim} "
                          f"is no official ViT's ({sorted(_HEADS_BY_WIDTH)}); the guess of "
                          f"64-wide heads would be num_heads={max(1, embed_dim // 64)}, which "
                          "may be wrong: set num_heads (ProbeParams num_heads) to the "
                          "architecture's head count")


# ----------------------------------------------------------------------------- helpers
def _checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix == ".json":  # a biovfm sidecar stands for its weights
        path = path.with_suffix(".safetensors")
    if path.is_dir():
        inside = [p for p in (path / "backbone.safetensors", path / "export" /
                              "backbone.safetensors") if p.is_file()]
        hint = f"; did you mean {inside[0]}?" if inside else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _read(path: Path) -> Any:
    """The checkpoint's contents; a file that is empty, truncated or no checkpoint is one line
    (torch and safetensors raise anything from KeyError to EOFError, naming no file)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path)
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader failure means the same to a user
        kind = "safetensors" if path.suffix == ".safetensors" else "weights-only torch"
        raise CheckpointError(f"{path}: not readable as a {kind} checkpoint: truncated, "
                              f"corrupt or not a checkpoint ({type(e).__name__}: "
                              f"{_first_line(e)})") from None


def _load_error_summary(err: RuntimeError) -> str:
    """torch's many-line load_state_dict error as one line: counts and the first keys."""
    text = str(err)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)")):
        if found := re.search(pattern, text):
            keys = re.findall(r'"([^"]+)"', found[1])
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}"
                         f"{', ...' if len(keys) > 3 else ''})")
    if shapes := re.findall(r"size mismatch for ([^:]+):", text):
        parts.append(f"{len(shapes)} of another shape ({', '.join(shapes[:3])}"
                     f"{', ...' if len(shapes) > 3 else ''})")
    return "; ".join(parts) or _first_line(err)


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path,
                 spec: VitSpec, assign: bool = False) -> None:
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {spec.timm_name}: "
                              f"{_load_error_summary(e)}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()

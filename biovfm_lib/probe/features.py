"""Frozen-encoder features, and an on-disk cache of them.

Features follow the official BioVFM probe: the mean of the last block's patch tokens (no CLS,
no register tokens), before the model's own final norm, through the study's fresh
``LayerNorm(eps=1e-6)`` (weight 1, bias 0, frozen: a LayerNorm without affine parameters). The
``cls`` option uses the CLS token after the model's final norm instead, and ``last4_avgpool``
is DINOv2's linear-evaluation feature (``dinov2/eval/linear.py``): the CLS tokens of the last 4
blocks and the mean of the last block's patch tokens, every token through the final norm.
Any block's features come from the same code (:func:`encode_layers`), so several blocks cost
one forward pass and the last block's are the same numbers whether asked for alone or not.
Precision ``auto`` extracts under bf16 autocast on GPU and in fp32 on CPU; the study extracted
in fp32 everywhere (``fp32``). ``bf16`` is allowed on CPU too: slow there, but it shows what
bf16 does to the features on a machine without a GPU.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from biovfm_lib.data.transforms import to_model_input
from biovfm_lib.models.pooling import mean_patch
from biovfm_lib.params import InputFit
from biovfm_lib.runs import atomic_write_bytes, atomic_write_json

FeatureKind = Literal["mean_patch", "cls", "last4_avgpool"]
Precision = Literal["auto", "bf16", "fp32"]

# Bumped whenever the features of the same encoder and images change, so a cache never serves
# an older definition: 2 = pooled LayerNorm eps 1e-6 (the study's) instead of torch's 1e-5.
FEATURE_VERSION = 2
LAST_N_BLOCKS = 4  # the blocks whose CLS tokens DINOv2's linear evaluation concatenates


def feature_precision(precision: Precision, device: torch.device) -> Literal["bf16", "fp32"]:
    """What ``auto`` means on ``device``, so caches key on the arithmetic actually used."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(device: torch.device, precision: Precision = "auto"
                 ) -> AbstractContextManager[Any]:
    """bf16 autocast where ``precision`` resolves to bf16 on ``device``; a no-op for fp32."""
    if feature_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def backbone_training(model: torch.nn.Module, train: bool) -> Iterator[torch.nn.Module]:
    """Run ``model`` in train (live drop path) or eval mode for one block, then restore it.

    The study's heads train on features of a backbone left in train mode; restoring the mode
    afterwards keeps validation and test extraction in eval mode whatever happened before.
    """
    was_training = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(was_training)


def block_count(model: torch.nn.Module) -> int:
    """The number of transformer blocks of a timm ViT; block indices run from 0."""
    return len(model.blocks)


def blocks_read(layer: int, kind: FeatureKind) -> list[int]:
    """The blocks whose outputs the ``kind`` feature of block ``layer`` is made of."""
    if kind != "last4_avgpool":
        return [layer]
    if 0 <= layer < LAST_N_BLOCKS - 1:
        raise ValueError(f"features 'last4_avgpool' needs {LAST_N_BLOCKS} blocks up to block "
                         f"{layer}, which has only {layer + 1}")
    return list(range(layer - LAST_N_BLOCKS + 1, layer + 1))


@torch.no_grad()
def encode_layers(model: torch.nn.Module, x: torch.Tensor, layers: Sequence[int],
                  kind: FeatureKind = "mean_patch") -> dict[int, torch.Tensor]:
    """Features of blocks ``layers`` of a normalised image batch, from one forward pass.

    Negative indices count from the last block, as in timm (-1: the last); one call takes
    either kind, since timm returns the blocks in network order."""
    if kind != "mean_patch" and getattr(model, "cls_token", None) is None:
        raise ValueError(f"features={kind!r} needs a model with a CLS token")
    taken = sorted({b for layer in layers for b in blocks_read(layer, kind)})
    if taken[0] < 0 <= taken[-1]:
        raise ValueError(f"block indices {list(layers)}: all from the first block or all "
                         "from the last, not both")
    outputs = model.forward_intermediates(
        x, indices=taken, norm=False, output_fmt="NLC", intermediates_only=True,
        return_prefix_tokens=True, stop_early=True)
    # per block: (patch tokens, prefix tokens); a model without prefix tokens returns patches
    tokens = {b: out if isinstance(out, tuple) else (out, None) for b, out in zip(taken, outputs)}
    return {layer: _pooled(model, tokens, layer, kind) for layer in layers}


def _pooled(model: torch.nn.Module, tokens: dict[int, tuple[torch.Tensor, Any]], layer: int,
            kind: FeatureKind) -> torch.Tensor:
    patches, prefix = tokens[layer]
    if kind == "mean_patch":  # the study's: before the final norm, then a fresh LayerNorm
        return mean_patch(patches)
    if kind == "cls":
        return model.norm(prefix[:, 0]).float()
    cls = [model.norm(tokens[b][1][:, 0]) for b in blocks_read(layer, kind)]
    return torch.cat([*cls, model.norm(patches).mean(dim=1)], dim=-1).float()


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor, kind: FeatureKind = "mean_patch"
           ) -> torch.Tensor:
    """Features of a normalised image batch from a frozen timm ViT (its last block's)."""
    return encode_layers(model, x, [-1], kind)[-1]


@torch.no_grad()
def extract_layer_features(model: torch.nn.Module, images: np.ndarray, device: torch.device,
                           layers: Sequence[int], kind: FeatureKind = "mean_patch",
                           batch_size: int = 256, desc: str = "features",
                           precision: Precision = "auto", input_size: int = 0,
                           input_fit: InputFit = "pad") -> dict[int, np.ndarray]:
    """Per block, features of uint8 MedMNIST images, in order, as float32 (N, D), in eval
    mode: every block from the same forward pass of each batch. ``input_size`` brings the
    images to the encoder's side (:func:`biovfm_lib.data.transforms.fit_to_input`)."""
    model.eval()
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False,
                      mininterval=2.0):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        x = to_model_input(batch.to(device, non_blocking=True), input_size, input_fit)
        with autocast_for(device, precision):
            for layer, feats in encode_layers(model, x, layers, kind).items():
                out[layer].append(feats.cpu())
    return {layer: torch.cat(parts).numpy().astype(np.float32, copy=False)
            for layer, parts in out.items()}


def extract_features(model: torch.nn.Module, images: np.ndarray, device: torch.device,
                     kind: FeatureKind = "mean_patch", batch_size: int = 256,
                     desc: str = "features", precision: Precision = "auto",
                     input_size: int = 0, input_fit: InputFit = "pad") -> np.ndarray:
    """Features of uint8 MedMNIST images, in order, as float32 (N, D), in eval mode."""
    return extract_layer_features(model, images, device, [-1], kind, batch_size, desc,
                                  precision, input_size, input_fit)[-1]


def file_identity(path: Path) -> dict[str, Any]:
    """A cheap identity for a data file: resolved path, size and modification time."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class FeatureCache:
    """Features on disk, one ``.npy`` per (encoder, dataset file, split, image size, kind).

    The key is a hash of everything that determines the features, plus ``FEATURE_VERSION``, so
    a changed checkpoint, data file or feature definition can never be served stale features;
    entries are written atomically. Each entry's JSON sidecar holds what it was made from and
    the SHA-256, shape and row count of its ``.npy``: a file truncated, zeroed or replaced
    behind the cache's back would otherwise be served as features (or fail on every rerun), so
    :meth:`get` verifies an entry and treats a bad one as a miss, with a warning naming it.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, **parts: Any) -> str:
        blob = json.dumps({**parts, "feature_version": FEATURE_VERSION}, sort_keys=True,
                          default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str, rows: int | None = None) -> np.ndarray | None:
        """The entry's features, or None when absent or unusable; ``rows`` is the number of
        images the caller is about to encode, so an entry of another length is never used."""
        path = self.path(key)
        if not path.is_file():
            return None
        array, problem = self._verified(path, rows)
        if problem:
            warnings.warn(f"feature cache entry {path} is unusable ({problem}); discarding it "
                          "and recomputing the features", stacklevel=2)
            return None
        return array

    def _verified(self, path: Path, rows: int | None) -> tuple[np.ndarray | None, str]:
        """The entry's array and "" when it matches its sidecar (and ``rows``), else None and
        what is wrong."""
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            return None, "no checksum: its sidecar is missing, unreadable or predates checksums"
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
            return None, (f"checksum mismatch: {len(blob)} bytes on disk, {meta.get('bytes')} "
                          "written; truncated or changed since")
        try:
            array = np.load(io.BytesIO(blob), allow_pickle=False)
        except ValueError as err:
            return None, f"not a readable .npy ({err})"
        if list(array.shape) != meta.get("shape"):
            return None, f"shape {array.shape}, its sidecar says {meta.get('shape')}"
        if rows is not None and len(array) != rows:
            return None, f"{len(array)} rows, expected {rows}, one per image of the split"
        return array, ""

    def put(self, key: str, array: np.ndarray, **meta: Any) -> Path:
        """Store ``array`` with ``meta`` (what it was made from) and what :meth:`get` checks."""
        buf = io.BytesIO()
        np.save(buf, array)
        blob = buf.getvalue()
        path = self.path(key)
        atomic_write_bytes(path, blob, overwrite=True)
        atomic_write_json(path.with_suffix(".json"), {
            **meta, "key": key, "feature_version": FEATURE_VERSION, "rows": len(array),
            "shape": list(array.shape), "dtype": str(array.dtype), "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest()}, overwrite=True)
        return path

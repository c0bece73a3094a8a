"""Frozen-encoder features, and an on-disk cache of them.

Features follow the official BioVFM probe: the mean of the last block's patch tokens (no CLS,
no register tokens), before the model's own final norm, through a LayerNorm without affine
parameters. The ``cls`` option uses the CLS token after the model's final norm instead.
Extraction runs under bf16 autocast on GPU and fp32 on CPU.
"""
from __future__ import annotations

import hashlib
import io
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from biovfm_lib.data.transforms import to_model_input
from biovfm_lib.runs import atomic_write_bytes, atomic_write_json

FeatureKind = Literal["mean_patch", "cls"]


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU probes stay in fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor, kind: FeatureKind = "mean_patch"
           ) -> torch.Tensor:
    """Features of a normalised image batch from a frozen timm ViT."""
    if kind == "cls":
        if getattr(model, "cls_token", None) is None:
            raise ValueError("features='cls' needs a model with a CLS token")
        return model.forward_features(x)[:, 0].float()
    (last,) = model.forward_intermediates(
        x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True)
    pooled = last.float().mean(dim=1)
    return F.layer_norm(pooled, pooled.shape[-1:])


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: np.ndarray, device: torch.device,
                     kind: FeatureKind = "mean_patch", batch_size: int = 256,
                     desc: str = "features") -> np.ndarray:
    """Features of uint8 MedMNIST images, in order, as float32 (N, D)."""
    model.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False,
                      mininterval=2.0):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        x = to_model_input(batch.to(device, non_blocking=True))
        with autocast_for(device):
            out.append(encode(model, x, kind).cpu())
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def file_identity(path: Path) -> dict[str, Any]:
    """A cheap identity for a data file: resolved path, size and modification time."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class FeatureCache:
    """Features on disk, one ``.npy`` per (encoder, dataset file, split, image size, kind).

    The key is a hash of everything that determines the features, so a changed checkpoint or
    data file can never be served stale features; entries are written atomically.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, **parts: Any) -> str:
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        return np.load(path) if path.is_file() else None

    def put(self, key: str, array: np.ndarray, **meta: Any) -> Path:
        buf = io.BytesIO()
        np.save(buf, array)
        path = self.path(key)
        atomic_write_bytes(path, buf.getvalue(), overwrite=True)
        atomic_write_json(path.with_suffix(".json"), meta, overwrite=True)
        return path

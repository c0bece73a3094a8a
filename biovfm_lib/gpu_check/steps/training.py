"""Real pretraining runs for the strategies and resume steps: torchrun through the
workbook's own launcher, on synthetic MedMNIST-format images (28 px files, cropped up to the
model's input size by the recipe's own augmentation)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from safetensors.torch import load_file

from biovfm_lib.data.synthetic import write_synthetic
from biovfm_lib.gpu_check.context import StepContext
from biovfm_lib.params import PretrainParams
from biovfm_lib.runs import resolve
from biovfm_lib.train.report import read_log

# a size's input: nano at 28 px (its 4 px patches), ViT-S at the study's 224 px
SHAPES = {"nano": {"img_size": 28, "local_size": 12, "n_local": 2},
          "small": {"img_size": 224, "local_size": 0, "n_local": 8}}


def prepare_data() -> Path:
    """Write the training images once, before runs that would otherwise all write them at
    the same time (each launch makes the synthetic files it is missing)."""
    root = resolve("outputs/data/synthetic")
    write_synthetic(root, size=28, scale=0.02)
    return root


def train_params(ctx: StepContext, name: str, size: str, **overrides: Any) -> PretrainParams:
    """One DINOv2 run of ``size`` in the step's folder, one process (NCCL on a GPU, gloo on
    a CPU), logging every step."""
    return PretrainParams.validate_mapping({
        "algorithm": "dinov2", "encoder": size, **SHAPES[size], "data": "synthetic",
        "data_root": str(prepare_data()), "data_size": 28,
        "synthetic_scale": 0.02, "epochs": 1, "batch_size": 8 if ctx.smoke else 32,
        "num_workers": 0 if not ctx.cuda else 4, "log_every": 1, "nproc": 1,
        "out_root": str(ctx.work / "runs"), "name": name, **overrides})


def losses(log: Path) -> np.ndarray:
    """The loss of every logged training step (other records, such as a monitor's, have none)."""
    return read_log(log).loss.dropna().to_numpy(dtype=np.float64)


def max_relative(a: np.ndarray, b: np.ndarray) -> float:
    """Largest ``|a - b| / |a|`` over the steps (the curves must have the same length)."""
    if a.shape != b.shape:
        raise ValueError(f"loss curves of {len(a)} and {len(b)} steps")
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))


def load_in_timm(export: Path) -> tuple[str, int]:
    """Rebuild an exported backbone with plain timm (strict load) and run it once."""
    sidecar = json.loads(export.with_suffix(".json").read_text())
    model = timm.create_model(sidecar["timm_name"], **sidecar["timm_kwargs"]).eval()
    model.load_state_dict(load_file(export))
    size = sidecar["timm_kwargs"]["img_size"]
    with torch.no_grad():
        features = model(torch.randn(2, 3, size, size))
    if not torch.isfinite(features).all():
        raise ValueError(f"{export}: the timm model's features are not finite")
    return sidecar["timm_name"], int(features.shape[1])

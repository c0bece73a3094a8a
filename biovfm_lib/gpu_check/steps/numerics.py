"""Step 6, numerics: bf16 autocast against fp32, DINOv2 and MAE, from the same seed.

Both precisions start from the same weights and train on the same batches with the loop's
own ``prepare_model`` and ``train_step``; their loss curves must agree within bf16's
rounding, and the collapse monitors the loop watches (every ``*_std`` of
``collapse_stats``) must stay above the loop's own threshold in both.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biovfm_lib.gpu_check.context import StepContext
from biovfm_lib.gpu_check.steps.training import max_relative
from biovfm_lib.params import PretrainParams
from biovfm_lib.train.bench import synthetic_samples
from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.distributed import DistEnv, prepare_model
from biovfm_lib.train.loop import COLLAPSE_MIN_STD, build_method, train_step

STEPS, SMOKE_STEPS = 30, 8
TOLERANCE = 2e-2  # largest relative loss difference, bf16 vs fp32, at any step
N_BATCHES = 4  # distinct batches, cycled


def config(algorithm: str, size: str, batch: int, steps: int, smoke: bool) -> TrainConfig:
    """The study recipe of ``algorithm`` at ``size`` (nano at 28 px for a smoke run)."""
    shape = {"img_size": 28, "local_size": 12, "n_local": 2} if smoke else {
        "img_size": 224, "local_size": 0, "n_local": 8}
    p = PretrainParams.validate_mapping({"algorithm": algorithm, "encoder": size,
                                         "batch_size": batch, **shape})
    return TrainConfig(algorithm=algorithm, size=size, method={}, sources=[], subset={},
                       epochs=1, max_steps=steps, batch_size=batch, seed=0, precision="auto",
                       strategy="ddp", activation_checkpointing=False, compile=False,
                       num_workers=0, checkpoint_every=steps, log_every=1, out_dir="",
                       recipe="study", params=p.as_dict(), **shape)


def curve(cfg: TrainConfig, device: torch.device, bf16: bool, batches: list[dict] | None
          ) -> tuple[list[float], dict[str, list[float]], list[dict]]:
    """Losses and collapse monitors of ``cfg.max_steps`` steps from seed 0 (and the batches,
    made on the first call)."""
    torch.manual_seed(0)
    method, _ = build_method(cfg, cfg.batch_size, cfg.max_steps)
    if batches is None:
        batches = [{k: v.to(device) for k, v in
                    method.collate(synthetic_samples(method, cfg.batch_size)).items()}
                   for _ in range(N_BATCHES)]
    model = prepare_model(method, "ddp", DistEnv(0, 0, 1, device), False, False, bf16)
    opt = torch.optim.AdamW(method.param_groups(), lr=0.0, betas=method.betas,
                            fused=device.type == "cuda")
    torch.manual_seed(1)
    out, monitors = [], {}
    for step in range(cfg.max_steps):
        result, _ = train_step(model, method, opt, batches[step % N_BATCHES], step, bf16)
        out.append(float(result["loss"].detach()))
        for k, v in method.collapse_stats(result).items():
            monitors.setdefault(k, []).append(v)
    return out, monitors, batches


def numerics(ctx: StepContext) -> None:
    device = torch.device(ctx.device)
    size, batch = ("nano", 8) if ctx.smoke else ("small", 32)
    steps = SMOKE_STEPS if ctx.smoke else STEPS
    ctx.put(size=size, batch_size=batch, steps=steps, relative_tolerance=TOLERANCE,
            collapse_min_std=COLLAPSE_MIN_STD, device=str(device))
    for algorithm in ("dinov2", "mae"):
        cfg = config(algorithm, size, batch, steps, ctx.smoke)
        fp32, monitors_fp32, batches = curve(cfg, device, False, None)
        bf16, monitors_bf16, _ = curve(cfg, device, True, batches)
        difference = max_relative(np.asarray(fp32), np.asarray(bf16))
        lowest = {f"{k} ({name})": min(v) for name, monitors in
                  (("fp32", monitors_fp32), ("bf16", monitors_bf16))
                  for k, v in monitors.items() if k.endswith("_std")}
        quiet = all(v >= COLLAPSE_MIN_STD for v in lowest.values())
        finite = bool(np.isfinite(fp32).all() and np.isfinite(bf16).all())
        figures: dict[str, Any] = {
            "fp32_losses": [round(x, 6) for x in fp32], "bf16_losses": [round(x, 6) for x in bf16],
            "max_relative_difference": difference, "lowest_std_monitors": lowest,
            "monitors_last": {k: round(v[-1], 5) for k, v in monitors_bf16.items()},
            "collapse_quiet": quiet}
        ctx.put(**{algorithm: figures})
        name = "DINOv2" if algorithm == "dinov2" else "MAE"
        ctx.check(f"{name} ViT-{size} bf16 vs fp32 on {device.type}, {steps} steps: largest "
                  "relative loss difference", float(f"{difference:.3g}"),
                  f"<= {TOLERANCE:g}, all finite", finite and difference <= TOLERANCE)
        ctx.check(f"{name} ViT-{size} collapse monitors (*_std, both precisions)",
                  ", ".join(f"{k} {v:.3g}" for k, v in lowest.items())
                  or "none active yet (DINOv2's starts after its lr warm-up)",
                  f">= {COLLAPSE_MIN_STD:g}", quiet)

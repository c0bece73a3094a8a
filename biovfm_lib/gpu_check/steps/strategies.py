"""Step 5, strategies: DDP and FSDP (``fully_shard``) through torchrun, 20 real steps each
(8 in a smoke run).

On one process both strategies compute the same updates, so their loss curves must agree: to
float rounding in fp32 (a CPU, gloo), and within bf16's rounding under autocast (a GPU,
NCCL), where FSDP's mixed-precision policy also casts the parameters while DDP's autocast
keeps norms in fp32. Each export must load in plain timm. The runs go side by side.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from biovfm_lib.gpu_check.context import StepContext
from biovfm_lib.gpu_check.steps.training import load_in_timm, losses, max_relative, train_params
from biovfm_lib.train.launch import launch

STEPS, SMOKE_STEPS = 20, 8
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}  # largest relative loss difference, any step


def strategies(ctx: StepContext) -> None:
    sizes = ["nano"] if ctx.smoke else ["nano", "small"]
    precision = "bf16" if ctx.cuda else "fp32"
    tolerance = TOLERANCE[precision]
    steps = SMOKE_STEPS if ctx.smoke else STEPS
    runs = {(size, strategy): train_params(ctx, f"{size}-{strategy}", size, strategy=strategy,
                                           max_steps=steps, checkpoint_every=steps)
            for size in sizes for strategy in ("ddp", "fsdp")}
    ctx.put(steps=steps, precision=precision, backend="nccl" if ctx.cuda else "gloo",
            algorithm="dinov2", relative_tolerance=tolerance)
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {key: pool.submit(launch, p, False) for key, p in runs.items()}
        done = {key: future.result() for key, future in futures.items()}
    for size in sizes:
        ddp, fsdp = (losses(done[size, s].log) for s in ("ddp", "fsdp"))
        finite = bool(np.isfinite(ddp).all() and np.isfinite(fsdp).all())
        difference = max_relative(ddp, fsdp)
        timm_name, dim = load_in_timm(done[size, "fsdp"].export)
        load_in_timm(done[size, "ddp"].export)
        ctx.put(**{size: {"ddp_losses": ddp.round(6).tolist(),
                          "fsdp_losses": fsdp.round(6).tolist(), "finite": finite,
                          "max_relative_difference": difference,
                          "export_timm": f"{timm_name} ({dim} features)"}})
        ctx.check(f"DDP vs FSDP, ViT-{size}, {steps} steps: largest relative loss difference",
                  float(f"{difference:.3g}"), f"<= {tolerance:g}, all finite",
                  finite and difference <= tolerance)
        ctx.check(f"ViT-{size} exports (DDP, FSDP) load in plain timm", timm_name, "strict load",
                  True)

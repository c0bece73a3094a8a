"""Step 8, resume: a run killed after its checkpoint, resumed by the same command, ends where
the uninterrupted run ends.

The kill is a scheduler's: SIGKILL to torchrun and its rank at once, after the step that
follows the checkpoint is logged. On a CPU the resumed run's final loss and exported weights
are bit-identical to the uninterrupted run's; on a GPU some kernels (atomics in backward
reductions) are not deterministic, so the final loss is held to a stated tolerance and
bit-identity is reported beside it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from biovfm_lib.gpu_check.context import StepContext
from biovfm_lib.gpu_check.steps.training import losses, train_params
from biovfm_lib.params import PretrainParams
from biovfm_lib.train.launch import (
    LAUNCHER_PID,
    launch,
    prepare,
    stop_process_tree,
    torchrun_command,
)

GPU_TOLERANCE = 1e-2  # relative difference of the final loss where kernels are not deterministic


def logged_step(log: Path) -> int:
    if not log.exists():
        return 0
    return max((json.loads(line)["step"] for line in log.read_text().splitlines() if line),
               default=0)


def kill_after(p: PretrainParams, step: int, timeout_s: float) -> int:
    """Start the run under torchrun, SIGKILL the whole job once ``step`` is logged; returns
    the last step logged before the kill."""
    cfg, config = prepare(p)
    proc = subprocess.Popen(torchrun_command(config, 1), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, LAUNCHER_PID: str(os.getpid())})
    log, deadline = cfg.dir / "log.jsonl", time.monotonic() + timeout_s
    try:
        while logged_step(log) < step:
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended (exit {proc.returncode}) before step "
                                   f"{step}, where it was to be killed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"step {step} not logged within {timeout_s:.0f} s")
            time.sleep(0.02)
    except BaseException:
        stop_process_tree(proc.pid)
        raise
    job = psutil.Process(proc.pid)
    for process in [*job.children(recursive=True), job]:
        process.send_signal(signal.SIGKILL)
    proc.wait()
    if (cfg.dir / "export").exists():
        raise RuntimeError("the run finished before the kill reached it")
    return logged_step(log)


def resume(ctx: StepContext) -> None:
    size = "nano" if ctx.smoke else "small"
    total, every = (6, 2) if ctx.smoke else (40, 10)
    shared = {"max_steps": total, "checkpoint_every": every}
    whole = train_params(ctx, f"{size}-whole", size, **shared)
    cut = train_params(ctx, f"{size}-killed", size, **shared)
    with ThreadPoolExecutor(2) as pool:  # side by side: they share nothing but the device
        uninterrupted = pool.submit(launch, whole, False)
        killed_at = kill_after(cut, every + 1, timeout_s=300)
        a = uninterrupted.result()
    b = launch(cut, False)
    resumed_from = "resuming from step" in (b.train_dir / "launch.log").read_text()
    loss_a, loss_b = losses(a.log)[-1], losses(b.log)[-1]
    weights_a, weights_b = load_file(a.export), load_file(b.export)
    identical = loss_a == loss_b and all(torch.equal(weights_a[k], weights_b[k])
                                         for k in weights_a)
    relative = abs(loss_b - loss_a) / abs(loss_a)
    deterministic = not ctx.cuda
    ctx.put(size=size, steps=total, checkpoint_every=every, killed_after_step=killed_at,
            resumed=resumed_from, steps_logged=len(losses(b.log)),
            final_loss_uninterrupted=loss_a, final_loss_resumed=loss_b,
            bit_identical=identical, relative_difference=relative,
            rule="bit-identical" if deterministic else f"relative <= {GPU_TOLERANCE:g}")
    ctx.check(f"ViT-{size} killed after step {killed_at}, resumed: final loss vs uninterrupted",
              float(f"{relative:.3g}"),
              "bit-identical" if deterministic else f"<= {GPU_TOLERANCE:g} relative",
              resumed_from and len(losses(b.log)) == total
              and (identical if deterministic else relative <= GPU_TOLERANCE))

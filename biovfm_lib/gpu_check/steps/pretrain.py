"""Steps 3 and 4, pretrain-throughput and huge-fits: one GPU, synthetic tensors.

Both call :func:`biovfm_lib.train.bench.bench_pretrain`, which runs the training loop's own
``build_method``, ``prepare_model`` and ``train_step`` (bf16 autocast, fused AdamW, per-block
``torch.compile``, activation checkpointing), so what is measured is what a run executes.
MFU = images/s x the method's analytic model FLOPs per image / the table's dense bf16 peak;
the formulas are recorded with the figures.
"""
from __future__ import annotations

import gc
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from biovfm_lib.gpu_check.context import NEEDS_CUDA, Skipped, StepContext
from biovfm_lib.ssl import MAE, DINOv2
from biovfm_lib.train.bench import bench_pretrain

MFU_TARGETS = {"mae": 0.50, "dinov2": 0.40}  # DESIGN.md's speed targets, ViT-L on one H100
HUGE_BATCHES = (64, 32, 16, 8)  # tried largest first: the first that fits is the answer
_KEPT = ("batch_size", "patch_size", "crops", "precision", "step_s", "images_per_s",
         "model_tflops_per_s", "mfu", "peak_memory_gib")


def mfu_formulas() -> dict[str, str]:
    """What "model FLOPs" means for each algorithm, in the methods' own words."""
    def doc(method: type) -> str:
        return " ".join((inspect.getdoc(method.flops_per_sample) or "").split())
    return {"mfu": "images/s x model FLOPs per image / dense bf16 peak of the table entry",
            "mae": doc(MAE), "dinov2": doc(DINOv2)}


def release_memory() -> None:
    """Give back what a finished (or out-of-memory) configuration held on the GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _shape(smoke: bool) -> dict[str, int]:
    return {"img_size": 28, "local_size": 12, "n_local": 2} if smoke else {"img_size": 224}


def pretrain_throughput(ctx: StepContext) -> None:
    size = "nano" if ctx.smoke else "large"
    batches = {"mae": 8, "dinov2": 8} if ctx.smoke else {"mae": 256, "dinov2": 64}
    steps, warmup = (3, 1) if ctx.smoke else (10, 5)
    ctx.put(size=size, timed_steps=steps, warmup_steps=warmup, **mfu_formulas())
    compiled = ctx.needs_cuda("compile: true (inductor on CPU takes minutes per block)")
    failures = []
    for compile_blocks in (False, True) if compiled else (False,):  # eager figures first
        for algorithm in ("mae", "dinov2"):
            key = f"{algorithm}_{size}_{'compile' if compile_blocks else 'eager'}"
            try:
                result = bench_pretrain(algorithm, size, batches[algorithm], steps, warmup,
                                        **_shape(ctx.smoke), compile_blocks=compile_blocks,
                                        device=ctx.device, recipe="study")
            except Exception as err:  # noqa: BLE001 - the other configurations still run
                failures.append(f"{key}: {type(err).__name__}: {err}".splitlines()[0])
                ctx.put(**{key: {"error": failures[-1]}})
                continue
            finally:
                release_memory()
            ctx.put(**{key: {k: result[k] for k in _KEPT}})
            target = MFU_TARGETS[algorithm]
            mfu = result["mfu"]
            ctx.check(f"{algorithm.upper() if algorithm == 'mae' else 'DINOv2'} ViT-{size} "
                      f"MFU, batch {result['batch_size']}, "
                      f"{'compile' if compile_blocks else 'eager'}",
                      None if mfu is None else round(100 * mfu, 1), f">= {target:.0%}",
                      None if mfu is None or ctx.smoke else mfu >= target, "%")
    if failures:
        raise RuntimeError("; ".join(failures))


def largest_fitting(batches: Sequence[int], attempt: Callable[[int], dict[str, Any]]
                    ) -> tuple[int | None, dict[str, Any] | None, list[int]]:
    """The first of ``batches`` (largest first) whose ``attempt`` does not run out of device
    memory, its result, and the batches that did not fit."""
    too_big = []
    for batch in batches:
        try:
            return batch, attempt(batch), too_big
        except torch.OutOfMemoryError:
            too_big.append(batch)
        release_memory()  # outside the handler: the exception's frames are gone by now
    return None, None, too_big


def huge_fits(ctx: StepContext) -> None:
    if not ctx.cuda:  # the figure is GPU memory; a CPU has none to run out of
        raise Skipped(NEEDS_CUDA)
    size = "nano" if ctx.smoke else "huge"
    ctx.put(size=size, batches_tried=list(HUGE_BATCHES),
            gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    for algorithm in ("mae", "dinov2"):
        for checkpointing in (False, True):
            key = f"{algorithm}_{size}_{'ac' if checkpointing else 'no_ac'}"

            def attempt(batch: int, algorithm: str = algorithm,
                        checkpointing: bool = checkpointing) -> dict[str, Any]:
                return bench_pretrain(algorithm, size, batch, steps=2, warmup=1,
                                      **_shape(ctx.smoke),
                                      activation_checkpointing=checkpointing,
                                      device=ctx.device, recipe="study")
            batch, result, too_big = largest_fitting(HUGE_BATCHES, attempt)
            release_memory()
            ctx.put(**{key: {"largest_batch": batch, "did_not_fit": too_big,
                             **({k: result[k] for k in _KEPT} if result else {})}})
            ctx.check(f"ViT-{size} {algorithm}, activation checkpointing "
                      f"{'on' if checkpointing else 'off'}: largest batch (peak memory)",
                      f"{batch} ({result['peak_memory_gib']} GiB)" if result else None,
                      f"fits at one of {list(HUGE_BATCHES)}", batch is not None)

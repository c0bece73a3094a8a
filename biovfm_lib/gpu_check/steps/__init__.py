"""The check's steps, in the order they run, with their time limits (a GPU run's, a CPU
smoke run's). Each limit is the most its step may take; the budget can cut it shorter."""
from __future__ import annotations

from biovfm_lib.gpu_check.runner import StepSpec

# A smoke run's limits leave room for a shared CPU: they catch hangs, not slowness.
_STEPS = [  # name, module, limit on a GPU (s), limit of a smoke run (s), needs CUDA
    ("env", "env", 60, 60, False),
    ("probe", "probe", 180, 90, False),
    ("pretrain-throughput", "pretrain", 240, 90, False),
    ("huge-fits", "pretrain", 150, 60, True),  # its figure is GPU memory
    ("strategies", "strategies", 150, 120, False),
    ("numerics", "numerics", 90, 90, False),
    ("augment", "augment", 60, 60, False),
    ("resume", "resume", 150, 120, False),
]
STEP_NAMES = [name for name, *_ in _STEPS]


def step_specs(smoke: bool, only: list[str] | None = None) -> list[StepSpec]:
    """The steps to run (``only``: those, still in the check's order)."""
    unknown = sorted(set(only or []) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; choose from {STEP_NAMES}")
    return [StepSpec(name, f"{__name__}.{module}:{name.replace('-', '_')}",
                     smoke_s if smoke else gpu_s, needs_cuda)
            for name, module, gpu_s, smoke_s, needs_cuda in _STEPS if not only or name in only]

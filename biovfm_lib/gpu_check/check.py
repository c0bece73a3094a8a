"""``biovfm bench gpu``: run the steps, print a line per step, write the record."""
from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from biovfm_lib.gpu_check.record import VERDICTS, format_value, summary, write_record
from biovfm_lib.gpu_check.runner import SKIPPED, StepResult, run_steps
from biovfm_lib.gpu_check.steps import step_specs
from biovfm_lib.runs import now, resolve


def resolve_device(device: str, smoke: bool) -> str:
    """``auto``: the GPU if there is one. A full-size check on a CPU would only run out its
    budget, so it is refused with the command that does run there."""
    import torch

    cuda = torch.cuda.is_available()
    chosen = ("cuda" if cuda else "cpu") if device == "auto" else device
    if chosen == "cuda" and not cuda:
        raise ValueError("--device cuda: no CUDA device is visible")
    if chosen == "cpu" and not smoke:
        raise ValueError("the full-size check needs a GPU; on a CPU run "
                         "`biovfm bench gpu --device cpu --smoke`")
    return chosen


def _report(result: StepResult) -> None:
    says = result.reason if result.status == SKIPPED else result.error
    print(f"{result.name:<20} {result.status:<8} {result.seconds:6.1f} s  {says}", flush=True)
    for c in result.checks:
        print(f"    {c['figure']}: {format_value(c)}"
              + (f" (target {c['target']}: {VERDICTS[c['pass']]})" if c["target"] else ""),
              flush=True)


def gpu_check(out: str = "", budget_s: float = 420.0, only: Sequence[str] = (),
              device: str = "auto", smoke: bool = False) -> int:
    """Run the check into ``out`` (default ``outputs/bench/gpu-<UTC time>``); exit status 1
    if any step failed, timed out or was killed (a skipped step is not a failure)."""
    started, start = now(), time.monotonic()  # the budget counts from here, set-up included
    specs = step_specs(smoke, list(only))
    chosen = resolve_device(device, smoke)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = resolve(out or f"outputs/bench/gpu-{stamp}")
    folder.mkdir(parents=True, exist_ok=True)
    if chosen == "cpu":  # nano models on shared cores, side by side: threads cost 5x, not save
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"GPU check on {chosen}{' (smoke)' if smoke else ''}: {len(specs)} steps, "
          f"budget {budget_s:.0f} s, into {folder}", flush=True)
    results = run_steps(specs, Path(folder), budget_s - (time.monotonic() - start), chosen,
                        smoke, report=_report)
    env = next((r.figures for r in results if r.name == "env"), {})
    meta = {"command": sys.argv, "device": chosen, "smoke": smoke, "budget_s": budget_s,
            "only": list(only), "started": started, "ended": now(),
            "wall_s": round(time.monotonic() - start, 1), "gpu": env.get("gpu")}
    json_path, md_path = write_record(Path(folder), meta, results)
    print(f"{summary(results)}\nrecord: {md_path}\n        {json_path}", flush=True)
    return 1 if any(r.failed for r in results) else 0

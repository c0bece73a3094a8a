"""The step runner: each step in its own subprocess, its own time limit, inside one budget.

A step is any ``module:function`` taking a :class:`~biovfm_lib.gpu_check.context.StepContext`;
``python -m biovfm_lib.gpu_check.step`` runs it and writes its figures to a JSON file as it
goes, so a step that dies half-way still leaves what it measured. The runner never trusts a
step to end: a step past its limit has its whole process tree stopped (torchrun ranks
included), a step killed by a signal (the kernel's OOM killer, a segfault) is recorded as
such, and a step that cannot start in what is left of the budget is recorded as not run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biovfm_lib.gpu_check.context import NEEDS_CUDA
from biovfm_lib.train.launch import stop_process_tree

OK, FAILED, TIMEOUT, KILLED, SKIPPED, NOT_RUN = (
    "ok", "failed", "timeout", "killed", "skipped", "not run")
FAILURES = (FAILED, TIMEOUT, KILLED)
TAIL_LINES = 20
RESERVE_S = 3.0  # kept back from every step's limit: stopping it and writing the record
MIN_START_S = 5.0  # a step is not started with less of the budget left than this
_EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt|Stopped)\b")


@dataclass(frozen=True)
class StepSpec:
    name: str
    target: str  # "package.module:function"
    limit_s: float
    needs_cuda: bool = False  # skipped without starting where the device is not a GPU


@dataclass
class StepResult:
    name: str
    status: str
    seconds: float = 0.0
    limit_s: float = 0.0
    reason: str = ""  # why it was skipped or not run
    error: str = ""  # the line that says why it failed
    tail: list[str] = field(default_factory=list)  # its last lines of output
    log: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in FAILURES


def step_command(spec: StepSpec, result: Path, work: Path, device: str, smoke: bool
                 ) -> list[str]:
    """The subprocess that runs one step."""
    return [sys.executable, "-m", "biovfm_lib.gpu_check.step", spec.target,
            "--result", str(result), "--work", str(work), "--device", device,
            *(["--smoke"] if smoke else [])]


def run_steps(specs: Sequence[StepSpec], out: Path, budget_s: float, device: str = "cpu",
              smoke: bool = False, report: Callable[[StepResult], None] | None = None
              ) -> list[StepResult]:
    """Run ``specs`` in order within ``budget_s`` seconds; every step gets a result."""
    deadline = time.monotonic() + budget_s
    results = []
    for spec in specs:
        left = deadline - time.monotonic() - RESERVE_S
        if spec.needs_cuda and device != "cuda":
            result = StepResult(spec.name, SKIPPED, limit_s=spec.limit_s, reason=NEEDS_CUDA)
        elif left < MIN_START_S:
            result = StepResult(spec.name, NOT_RUN, limit_s=spec.limit_s,
                                reason="not run: budget spent")
        else:
            result = run_step(spec, out, min(spec.limit_s, left), device, smoke)
        results.append(result)
        if report:
            report(result)
    return results


def run_step(spec: StepSpec, out: Path, limit_s: float, device: str = "cpu",
             smoke: bool = False) -> StepResult:
    """One step in its own session: ok, skipped, failed, timeout or killed, with its output's
    last lines and whatever figures it wrote before it ended."""
    work = out / "steps" / spec.name
    if work.exists():  # a rerun into the same folder: its runs must not find the last ones'
        shutil.rmtree(work)
    work.mkdir(parents=True)
    result_file, log = work / "result.json", work / "step.log"
    cmd = step_command(spec, result_file, work, device, smoke)
    start = time.monotonic()
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ,
                                                             "PYTHONUNBUFFERED": "1"})
        code: int | None = None
        try:
            code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            pass
        finally:  # past its limit, or the check itself interrupted: nothing of it stays
            if proc.poll() is None:
                stop_process_tree(proc.pid, timeout=2.0)
                proc.wait()
    seconds = time.monotonic() - start
    written = _read_result(result_file)
    tail = _tail(log)
    result = StepResult(spec.name, OK, round(seconds, 1), round(limit_s, 1), tail=tail,
                        log=str(log), figures=written.get("figures", {}),
                        checks=written.get("checks", []), notes=written.get("notes", []))
    if code is None:
        result.status, result.error = TIMEOUT, f"exceeded its limit of {limit_s:.0f} s"
    elif code < 0:
        result.status = KILLED
        result.error = f"killed by {signal.Signals(-code).name}"
    elif code != 0:
        result.status = FAILED
        result.error = written.get("error") or _error_line(tail) or f"exit status {code}"
    elif written.get("skipped"):
        result.status, result.reason = SKIPPED, written["skipped"]
    if result.status in (OK, SKIPPED):
        result.tail = []  # the figures say it; the log stays on disk
    return result


def _read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # never written, or the step died mid-way (atomic writes)
        return {}


def _tail(path: Path) -> list[str]:
    with path.open(errors="replace") as f:
        lines = deque((line.rsplit("\r", 1)[-1].rstrip() for line in f), maxlen=TAIL_LINES)
    return [line for line in lines if line]


def _error_line(tail: list[str]) -> str:
    """The last exception line of the output, else its last line."""
    errors = [line for line in tail if _EXCEPTION_LINE.match(line)]
    return (errors or tail or [""])[-1]

"""Running a grid: every point's notebooks through ``execution.execute``, then the analysis once.

A point's steps run in order and stop at the first failure; a failed point is recorded with
its error and log tail and the grid goes on to the next. Finished steps are skipped, so a
killed grid resumes where it stopped; ``force`` reruns everything. Points run in this process,
or side by side in fresh worker processes (``jobs`` on CPU, or one per GPU set), each worker
writing its own point's record. The analysis reruns only when the set of completed point
runs (or its own parameters) changed since it last completed.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from biovfm_lib import execution, runs
from biovfm_lib.execution import RunResult
from biovfm_lib.grid.spec import Grid, GridError, Point, Step
from biovfm_lib.grid.state import GridState, counts, headline, log_tail

Execute = Callable[..., RunResult]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class GridSummary:
    grid: Grid
    table: pd.DataFrame  # status.parquet as written at the end
    seconds: float
    scope: frozenset[str]  # the points and analysis steps this command ran (or skipped)
    index: Path | None = None  # outputs/index.html

    @property
    def failed(self) -> pd.DataFrame:
        """What failed among what this command was asked to run (a Slurm job running one
        point must not fail because another point did)."""
        return self.table[(self.table.status == "failed") & self.table.id.isin(self.scope)]

    @property
    def exit_code(self) -> int:
        return 1 if len(self.failed) else 0

    def text(self) -> str:
        c = counts(self.table)
        total = int((self.table.kind == "point").sum())
        analysis = self.table[self.table.kind == "analysis"]
        lines = [f"grid {self.grid.name}: {c['completed']}/{total} points completed, "
                 f"{c['failed']} failed, {c['running']} running, {c['pending']} pending "
                 f"({_duration(self.seconds)})"
                 + ("; analysis: " + ", ".join(f"{r.id} {r.status}" for r in
                                               analysis.itertuples()) if len(analysis) else "")]
        for row in self.failed.itertuples():
            where = f" [{row.step}]" if row.step else ""
            lines.append(f"FAILED {row.id}{where}: {headline(row.error)}"
                         + (f"\n       log: {runs.outputs_root() / row.log}" if row.log else ""))
        lines.append(f"status: {runs.outputs_root() / 'grids' / self.grid.name / 'status.parquet'}")
        if self.index:
            lines.append(f"index: {self.index}")
        return "\n".join(lines)


def run_grid(grid: Grid, *, force: bool = False, jobs: int = 1,
             gpu_sets: Sequence[str] = (), only: Sequence[str] = (), points: bool = True,
             echo: Echo = print, execute: Execute | None = None) -> GridSummary:
    """Run the grid's points (all, or ``only`` these ids/slugs, then no analysis; or none
    with ``points=False``), then its analysis, and rebuild the index page. The summary's
    ``exit_code`` is 1 if anything failed."""
    from biovfm_lib.reports import build_index

    start = time.time()
    state = GridState(grid)
    todo = [grid.point(k) for k in only] if only else list(grid.points)
    slots = _slots(jobs, gpu_sets)
    state.write_status()
    if points:
        if slots == [None]:
            for point in todo:
                try:
                    run_point(grid, point, force, start, echo, execute)
                except Exception:  # noqa: BLE001 - a broken point must not stop the grid
                    _record_crash(state, point, traceback.format_exc(), echo, start)
        else:
            _run_parallel(grid, todo, force, start, slots, execute)
    if not only:
        run_analysis(grid, force, start, echo, execute)
    table = state.write_status()
    scope = {p.id for p in todo} if points else set()
    scope |= set() if only else {s.name for s in grid.analysis}
    return GridSummary(grid, table, time.time() - start, frozenset(scope), build_index())


def run_point(grid: Grid, point: Point, force: bool, start: float, echo: Echo = print,
              execute: Execute | None = None) -> dict[str, Any] | None:
    """Run one point's steps (skipping finished ones) under its lock; return its record."""
    state = GridState(grid)
    names = point.step_names
    with state.lock(point.id) as mine:
        if not mine:
            _announce(state, start, echo, f"{point.slug}: running in another process, skipped")
            return state.point(point.id)
        old = state.point(point.id)
        if not force and state.point_completed(old, names):
            _announce(state, start, echo, f"{point.slug}: already completed, skipped")
            return old
        record = {"id": point.id, "slug": point.slug, "grid": grid.name, "axes": point.axes,
                  "status": "running", "step": None, "started": runs.now(), "ended": None,
                  "elapsed_s": None, "error": None, "log_tail": None,
                  "slurm_job": os.environ.get("SLURM_JOB_ID"),  # so --slurm can wait on it
                  "steps": {} if force else dict((old or {}).get("steps", {}))}
        state.save_point(record)
        state.log(point.id, f"point {point.id} started ({'forced' if force else 'resume'})")
        _announce(state, start, echo, f"{point.slug}: started")
        t0 = time.time()
        invalid = point.validate()
        if invalid:  # nothing runs, so a typo in one point costs nothing
            record.update(error=f"ParamError: {invalid}", log_tail=log_tail(invalid))
            state.log(point.id, f"invalid parameters:\n{invalid}")
        for step in [] if invalid else point.steps:
            if not force and state.run_completed(record["steps"].get(step.name)):
                state.log(point.id, f"{step.name}: already completed, skipped")
                continue
            record["step"] = step.name
            state.save_point(record)
            _announce(state, start, echo, f"{point.slug}: {step.name} ({step.notebook}) ...")
            result = run_step(state, step, point.id, execute)
            record["steps"][step.name] = result
            if result["status"] != "completed":
                record.update(error=result["error"], log_tail=result["log_tail"])
                break
        failed = record["error"] is not None
        record.update(status="failed" if failed else "completed", ended=runs.now(),
                      elapsed_s=round(time.time() - t0, 1),
                      step=record["step"] if failed else None)
        state.save_point(record)
        state.log(point.id, f"point {record['status']} in {record['elapsed_s']} s")
        _announce(state, start, echo, f"{point.slug}: {record['status']} "
                  f"({_duration(record['elapsed_s'])})")
        return record


def run_step(state: GridState, step: Step, owner: str, execute: Execute | None = None
             ) -> dict[str, Any]:
    """One notebook run, recorded as a dict; exceptions become a failed step, not a crash."""
    execute = execute or execution.execute
    notebook, file, params = step.execute_args()
    started, t0 = runs.now(), time.time()
    record = {"name": step.name, "notebook": notebook, "started": started, "run_id": None,
              "run_dir": None, "status": "failed", "error": None, "log_tail": None}
    state.log(owner, f"{step.name}: {notebook} -f {file} {json.dumps(params, default=str)}")
    try:
        result = execute(notebook, file, params)
    except Exception as exc:  # noqa: BLE001 - e.g. a missing notebook: nothing ran
        trace = traceback.format_exc()
        record.update(error=f"{type(exc).__name__}: {exc}", log_tail=log_tail(trace))
        state.log(owner, f"{step.name}: failed before running\n{trace}")
    else:
        runs.update_record(result.run_dir, grid={"name": state.grid.name, "point": owner,
                                                 "step": step.name})
        error_file = result.run_dir / "error.txt"
        detail = error_file.read_text() if error_file.is_file() else result.error or ""
        record.update(run_id=result.run_dir.name, status=result.status, error=result.error,
                      run_dir=str(result.run_dir.relative_to(state.outputs)),
                      log_tail=log_tail(detail) if result.error else None)
        state.log(owner, f"{step.name}: {result.status}, run {record['run_dir']}"
                  + (f"\n{detail}" if result.error else ""))
    record.update(ended=runs.now(), elapsed_s=round(time.time() - t0, 1))
    return record


def run_analysis(grid: Grid, force: bool, start: float, echo: Echo = print,
                 execute: Execute | None = None) -> None:
    """Run the analysis notebooks over the grid's completed points, unless nothing changed
    since they last completed (same completed runs, same analysis parameters)."""
    state = GridState(grid)
    with state.lock("analysis") as mine:
        if not mine:
            echo("analysis: running in another process, skipped")
            return
        for step, fingerprint, n_done, up_to_date in analysis_plan(state):
            if not n_done:
                state.save_analysis({"id": step.name, "status": "skipped",
                                     "error": None, "note": "no completed point to analyse"})
                _announce(state, start, echo, f"{step.name}: no completed point, skipped")
                continue
            if up_to_date and not force:
                _announce(state, start, echo, f"{step.name}: up to date, skipped")
                continue
            state.save_analysis({"id": step.name, "status": "running", "started": runs.now()})
            _announce(state, start, echo, f"{step.name} ...")
            record = run_step(state, step, "analysis", execute)
            state.save_analysis({**record, "id": step.name, "fingerprint": fingerprint})
            _announce(state, start, echo, f"{step.name}: {record['status']} "
                      f"({_duration(record['elapsed_s'])})")


def analysis_plan(state: GridState) -> list[tuple[Step, str, int, bool]]:
    """Each analysis step with its fingerprint (the completed points' run ids and the step's
    own parameters), the number of completed points, and whether its last run is current."""
    grid = state.grid
    done = [r for p in grid.points
            if state.point_completed(r := state.point(p.id), p.step_names)]
    runs_by_step = {n: [r["steps"][n]["run_id"] for r in done if n in r["steps"]]
                    for n in grid.step_names}
    plan = []
    for step in grid.analysis_steps(runs_by_step):
        key = json.dumps([runs_by_step, step.notebook, step.values()], sort_keys=True,
                         default=str)
        fingerprint = hashlib.sha1(key.encode()).hexdigest()[:12]
        old = state.analysis(step.name) or {}
        current = old.get("fingerprint") == fingerprint and state.run_completed(old)
        plan.append((step, fingerprint, len(done), current))
    return plan


# --------------------------------------------------------------------------- parallel
def _slots(jobs: int, gpu_sets: Sequence[str]) -> list[str | None]:
    """Where points may run at once: ``[None]`` is this process; GPU sets run one point each."""
    if jobs < 1:
        raise GridError(f"--jobs must be >= 1, got {jobs}")
    if gpu_sets:
        return list(gpu_sets)
    if jobs > 1:
        import torch

        if torch.cuda.device_count():
            raise GridError("--jobs runs points side by side on CPU; on a GPU machine give "
                            "--gpus SET [SET ...] (e.g. --gpus 0,1 2,3): one point per set")
    return [None] * jobs


def _run_parallel(grid: Grid, points: list[Point], force: bool, start: float,
                  slots: list[str | None], execute: Execute | None) -> None:
    """Each point in a fresh spawned process (its own environment, e.g. its GPU set), at most
    one per slot; a worker that dies is recorded as its point's failure."""
    ctx = mp.get_context("spawn")
    state = GridState(grid)
    waiting, free = list(points), list(slots)
    running: dict[Any, tuple[Any, Point, str | None]] = {}
    try:
        while waiting or running:
            while waiting and free:
                slot, point = free.pop(0), waiting.pop(0)
                proc = ctx.Process(target=_worker, name=f"grid-{point.slug}", args=(
                    grid, point, force, start, _slot_env(slot, len(slots)), execute))
                proc.start()
                running[proc.sentinel] = (proc, point, slot)
            for sentinel in mp.connection.wait(list(running)):
                proc, point, slot = running.pop(sentinel)
                proc.join()
                free.append(slot)
                if proc.exitcode != 0:
                    _record_crash(state, point, f"worker process exited with {proc.exitcode}",
                                  print, start)
    finally:
        for proc, _, _ in running.values():
            proc.terminate()


def _worker(grid: Grid, point: Point, force: bool, start: float, env: dict[str, str],
            execute: Execute | None) -> None:
    os.environ.update(env)  # before anything starts a kernel, so the kernels inherit it
    run_point(grid, point, force, start, print, execute)


def _slot_env(slot: str | None, n_slots: int) -> dict[str, str]:
    if slot is not None:
        return {"CUDA_VISIBLE_DEVICES": slot}
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n_slots))}


def _record_crash(state: GridState, point: Point, error: str, echo: Echo, start: float) -> None:
    """Mark a point failed when the code running it died (not a notebook failure)."""
    with state.lock(point.id) as mine:
        record = state.point(point.id) or {"id": point.id, "slug": point.slug,
                                           "grid": state.grid.name, "axes": point.axes,
                                           "steps": {}, "started": runs.now()}
        if not mine or record.get("status") in ("completed", "failed"):
            return
        record.update(status="failed", ended=runs.now(), error=f"grid runner crashed: {error}",
                      log_tail=log_tail(error))
        state.save_point(record)
        state.log(point.id, f"grid runner crashed:\n{error}")
    _announce(state, start, echo, f"{point.slug}: crashed")


def _announce(state: GridState, start: float, echo: Echo, event: str) -> None:
    """Rebuild the status table and print one progress line."""
    c = counts(state.write_status())
    echo(f"[{_duration(time.time() - start):>9}] {c['completed']} done, {c['failed']} failed, "
         f"{c['running']} running, {c['pending']} pending | {event}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"

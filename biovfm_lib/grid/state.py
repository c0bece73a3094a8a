"""A grid's state on disk, under ``outputs/grids/<grid>/``.

One JSON record per point (``points/<id>.json``) and per analysis step (``analysis/<name>.json``)
is the truth; each is written atomically by the one process running that point, so parallel
workers and Slurm jobs never share a file. A point is locked (``flock``) while it runs, so two
grid commands never run it twice, and a killed run's lock dies with it. ``status.parquet`` is
a view rebuilt from the records after every change (under a lock, written atomically) for the
progress view and the index page. ``logs/<id>.log`` keeps each point's events and errors.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from biovfm_lib import runs
from biovfm_lib.grid.spec import STATUS_COLUMNS, Grid

LOG_TAIL_LINES = 30
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b")


class GridState:
    def __init__(self, grid: Grid, outputs: Path | None = None):
        self.grid = grid
        self.outputs = outputs or runs.outputs_root()
        self.dir = self.outputs / "grids" / grid.name

    # ------------------------------------------------------------------ records
    def point(self, point_id: str) -> dict[str, Any] | None:
        return _read_json(self.dir / "points" / f"{point_id}.json")

    def save_point(self, record: dict[str, Any]) -> None:
        runs.atomic_write_json(self.dir / "points" / f"{record['id']}.json", record,
                               overwrite=True)

    def analysis(self, name: str) -> dict[str, Any] | None:
        return _read_json(self.dir / "analysis" / f"{name}.json")

    def save_analysis(self, record: dict[str, Any]) -> None:
        runs.atomic_write_json(self.dir / "analysis" / f"{record['id']}.json", record,
                               overwrite=True)

    def run_completed(self, step: dict[str, Any] | None) -> bool:
        """A step counts as done only if its run folder still says so (a deleted or
        half-written run is done again)."""
        if not step or step.get("status") != "completed" or not step.get("run_dir"):
            return False
        record = _read_json(self.outputs / step["run_dir"] / runs.RECORD)
        return bool(record) and record.get("status") == "completed"

    def point_completed(self, record: dict[str, Any] | None, steps: list[str]) -> bool:
        return bool(record) and record.get("status") == "completed" and all(
            self.run_completed(record.get("steps", {}).get(s)) for s in steps)

    # ------------------------------------------------------------------ locks and logs
    @contextlib.contextmanager
    def lock(self, name: str, wait: bool = False) -> Iterator[bool]:
        """Hold ``locks/<name>.lock``; yields False if another process holds it (no wait)."""
        path = self.dir / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def log_path(self, point_id: str) -> Path:
        return self.dir / "logs" / f"{point_id}.log"

    def log(self, point_id: str, text: str) -> None:
        path = self.log_path(point_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{runs.now()} {text.rstrip()}\n")

    # ------------------------------------------------------------------ status view
    def status_table(self) -> pd.DataFrame:
        """One row per point of the grid file (pending if never started) and per analysis
        step, with one column per axis."""
        rows = []
        for point in self.grid.points:
            rec = self.point(point.id) or {}
            rows.append(_row(self, "point", point.id, point.slug, point.axes, rec,
                             self.log_path(point.id)))
        for step in self.grid.analysis:
            rec = self.analysis(step.name) or {}
            rows.append(_row(self, "analysis", step.name, step.name, {}, rec,
                             self.log_path("analysis")))
        return _normalise(pd.DataFrame(rows, columns=[*STATUS_COLUMNS, *self.grid.axes]))

    def write_status(self) -> pd.DataFrame:
        """Rebuild ``status.parquet`` (and ``grid.json``, what the index page reads)."""
        with self.lock("status", wait=True):
            df = self.status_table()
            runs.write_table(df, self.dir / "status.parquet", overwrite=True)
            info = {"name": self.grid.name, "file": str(self.grid.path),
                    "description": self.grid.description, "axes": self.grid.axes,
                    "updated": runs.now()}
            runs.atomic_write_json(self.dir / "grid.json", info, overwrite=True)
        return df


def read_status(path: Path) -> pd.DataFrame:
    """A ``status.parquet`` with missing text as ``None`` (parquet and pandas would give NaN)."""
    return _normalise(pd.read_parquet(path))


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype(object).where(df.notna(), None)
    return df.astype({"elapsed_s": float})


def headline(error: str | None) -> str:
    """What went wrong, in one line: the last ``SomeError: ...`` line of a traceback (the
    notebook's own error, not papermill's wrapper) with the indented lines that follow it
    (a parameter error's keys), else the first line."""
    lines = [ln.rstrip() for ln in _ANSI.sub("", error or "").splitlines() if ln.strip()]
    named = [i for i, ln in enumerate(lines) if _ERROR_LINE.match(ln)]
    if not named:
        return lines[0][:300] if lines else ""
    first = named[-1]
    detail = [ln.strip() for ln in itertools.takewhile(lambda ln: ln.startswith(" "),
                                                       lines[first + 1:first + 6])]
    return " ".join([lines[first], *detail])[:300]


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of an error log, without terminal colour codes."""
    return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Points by status: completed, failed, running, pending (never started or submitted)."""
    status = df[df.kind == "point"].status.replace({"submitted": "pending",
                                                    "interrupted": "pending"})
    return {s: int((status == s).sum()) for s in ("completed", "failed", "running", "pending")}


def _row(state: GridState, kind: str, key: str, slug: str, axes: dict[str, str],
         rec: dict[str, Any], log: Path | None) -> dict[str, Any]:
    status = rec.get("status", "pending")
    if status == "running" and kind == "point":
        with state.lock(key) as free:  # a running record whose lock is free was killed
            status = "interrupted" if free else status
    steps = rec.get("steps", {}) if kind == "point" else {key: rec} if rec else {}
    started, ended = rec.get("started"), rec.get("ended")
    elapsed = rec.get("elapsed_s")
    if status == "running" and started:
        elapsed = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(started)
                   ).total_seconds()
    return {"grid": state.grid.name, "kind": kind, "id": key, "slug": slug,
            "axes": json.dumps(axes), "status": status, "step": rec.get("step"),
            "run_ids": json.dumps({k: v.get("run_id") for k, v in steps.items()
                                   if v.get("run_id")}),
            "started": started, "ended": ended,
            "elapsed_s": float(elapsed) if elapsed is not None else float("nan"),
            "error": rec.get("error"),
            "log": str(log.relative_to(state.outputs)) if log and log.is_file() else None,
            **axes}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None

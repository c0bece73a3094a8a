"""Grid points as Slurm jobs: one ``sbatch`` per pending point, and the analysis as a job
that starts once they have all ended (``afterany``: a failed point must not block it).

Each job runs ``biovfm grid FILE --points ID`` on its node, so the point records, locks and
status table work exactly as on one machine (the outputs folder must be shared).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from biovfm_lib import runs
from biovfm_lib.grid.runner import Echo
from biovfm_lib.grid.spec import Grid, GridError
from biovfm_lib.grid.state import GridState


def sbatch_options(options: dict[str, Any]) -> list[str]:
    """``{partition: gpu, gres: "gpu:8", exclusive: true}`` -> ``--partition=gpu ...``."""
    args = []
    for key, value in options.items():
        if value is True:
            args.append(f"--{key}")
        elif value not in (False, None):
            args.append(f"--{key}={value}")
    return args


def submit(grid: Grid, force: bool = False, only: Sequence[str] = (), sbatch: str = "sbatch",
           echo: Echo = print, dry_run: bool = False) -> list[str]:
    """Submit every point that is neither completed, running nor already submitted (unless
    ``force``), then the analysis; return the job ids (none on a dry run)."""
    state = GridState(grid)
    points = [grid.point(k) for k in only] if only else list(grid.points)
    base = [sbatch, "--parsable", f"--chdir={runs.project_root()}",
            *sbatch_options(grid.slurm)]
    cli = [sys.executable, "-m", "biovfm_lib.cli", "grid", str(grid.path.resolve())]
    jobs, waiting = [], []
    for point in points:
        record = state.point(point.id) or {}
        if not force and (state.point_completed(record, point.step_names)
                          or record.get("status") in ("running", "submitted")):
            echo(f"{point.slug}: {record['status']}, not submitted")
            if record.get("status") != "completed" and record.get("slurm_job"):
                waiting.append(str(record["slurm_job"]))
            continue
        log = state.log_path(point.id).with_suffix(".slurm.log")
        cmd = [*base, f"--job-name={grid.name}-{point.slug}", f"--output={log}",
               "--wrap", shlex.join([*cli, "--points", point.id, *(["--force"] * force)])]
        job = _sbatch(cmd, echo, dry_run)
        if job:
            log.parent.mkdir(parents=True, exist_ok=True)
            state.save_point({**record, "id": point.id, "slug": point.slug, "grid": grid.name,
                              "axes": point.axes, "status": "submitted", "slurm_job": job,
                              "steps": record.get("steps", {}), "error": None})
            jobs.append(job)
    if grid.analysis and not only:
        after = [f"--dependency=afterany:{':'.join(waiting + jobs)}"] if waiting + jobs else []
        cmd = [*base, *after, f"--job-name={grid.name}-analysis",
               f"--output={state.dir / 'logs' / 'analysis.slurm.log'}",
               "--wrap", shlex.join([*cli, "--analysis-only", *(["--force"] * force)])]
        job = _sbatch(cmd, echo, dry_run)
        jobs += [job] if job else []
    if not dry_run:
        state.write_status()
    return jobs


def _sbatch(cmd: list[str], echo: Echo, dry_run: bool) -> str | None:
    echo(("would run: " if dry_run else "") + shlex.join(cmd))
    if dry_run:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    except FileNotFoundError:
        raise GridError(f"{cmd[0]} not found: --slurm needs Slurm's sbatch on PATH") from None
    except subprocess.CalledProcessError as err:
        raise GridError(f"sbatch failed ({err.returncode}): {err.stderr.strip()}") from None
    job = out.stdout.strip().split(";")[0]
    echo(f"submitted job {job}")
    return job

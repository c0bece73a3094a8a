"""What a grid command would do, without running anything (``biovfm grid FILE --dry-run``)."""
from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

from biovfm_lib.grid.runner import analysis_plan
from biovfm_lib.grid.spec import Grid, Step
from biovfm_lib.grid.state import GridState


def describe(grid: Grid, force: bool = False, only: Sequence[str] = ()) -> str:
    """Every point with what would run (or be skipped, or fail validation), then the analysis.
    Parameters are validated here too, so a dry run catches a bad value before any compute."""
    state = GridState(grid)
    points = [grid.point(k) for k in only] if only else list(grid.points)
    axes = " x ".join(f"{a} ({len(v)})" for a, v in grid.axes.items())
    lines = [f"grid {grid.name} ({grid.path}): {len(grid.points)} points over {axes}",
             f"state: {state.dir}"]
    if grid.description:
        lines.insert(1, grid.description)
    to_run = 0
    for point in points:
        record = state.point(point.id) or {}
        invalid = point.validate()
        if invalid:
            verdict = "INVALID"
        elif not force and state.point_completed(record, point.step_names):
            verdict = "skip"
        else:
            verdict, to_run = "run", to_run + 1
        labels = ", ".join(f"{a}={v}" for a, v in point.axes.items())
        lines.append(f"  {verdict:<8}{point.id}  ({labels})")
        for step in point.steps:
            done = not force and state.run_completed(record.get("steps", {}).get(step.name))
            lines.append(f"      {'done' if done else 'run ':<5} {step.name}: {_command(step)}")
        lines += [f"      ! {line}" for line in (invalid or "").splitlines()]
    if only:
        lines.append("analysis: not run with --points")
    for template, (step, _, n_done, current) in zip(grid.analysis, analysis_plan(state)):
        verdict = ("up to date, skip" if current and not force and not to_run
                   else f"run after the points (over {n_done} completed so far)")
        lines.append(f"  analysis {step.name}: {verdict}\n      {_command(template)}")
    return "\n".join(lines)


def _command(step: Step) -> str:
    """The equivalent ``biovfm run`` command line, ready to paste."""
    args = ["biovfm", "run", step.notebook, *(["-f", step.file] if step.file else [])]
    for key, value in step.params.items():
        args += ["-p", key, value if isinstance(value, str) else json.dumps(value)]
    return shlex.join(args)

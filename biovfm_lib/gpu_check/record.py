"""The check's record: ``gpu-check.json`` (every figure, every step's status) and
``gpu-check.md``, a page a person reads in a minute: figures beside their targets, then each
step's status, then the last lines of whatever failed."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biovfm_lib.gpu_check.runner import FAILURES, OK, SKIPPED, StepResult
from biovfm_lib.runs import atomic_write_bytes, atomic_write_json

VERDICTS = {True: "pass", False: "falls short", None: "—"}


def summary(results: Sequence[StepResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (OK, SKIPPED)}
    failed = [f"{r.name} ({r.status})" for r in results if r.failed]
    not_run = [r.name for r in results if r.status not in (OK, SKIPPED, *FAILURES)]
    parts = [f"{counts[OK]} of {len(results)} steps ok", f"{counts[SKIPPED]} skipped"]
    if failed:
        parts.append("failed: " + ", ".join(failed))
    if not_run:
        parts.append("not run: " + ", ".join(not_run))
    return "; ".join(parts)


def format_value(check: dict[str, Any]) -> str:
    value = check["value"]
    if value is None:
        return "not measured"
    unit = check.get("unit") or ""
    return f"{value}{unit if unit == '%' else ' ' + unit if unit else ''}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(meta: dict[str, Any], results: Sequence[StepResult]) -> str:
    where = meta.get("gpu") or meta["device"]
    scale = "smoke (nano sizes)" if meta["smoke"] else "full"
    when = (f"{meta['started']}, {scale} on {meta['device']}, {meta['wall_s']:.0f} s of a "
            f"{meta['budget_s']:.0f} s budget. **{summary(results)}.**")
    lines = [f"# GPU check: {where}", "", when, "",
             "| figure | value | target | verdict |", "|---|---|---|---|"]
    for r in results:
        for c in r.checks:
            lines.append(f"| {_cell(c['figure'])} | {_cell(format_value(c))} | "
                         f"{_cell(c['target'] or '—')} | {VERDICTS[c['pass']]} |")
    lines += ["", "| step | status | seconds (limit) | says |", "|---|---|---|---|"]
    for r in results:
        says = "; ".join(x for x in [r.reason and f"skipped: {r.reason}"
                                     if r.status == SKIPPED else r.reason, r.error, *r.notes]
                         if x)
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} ({r.limit_s:.0f}) | "
                     f"{_cell(says)} |")
    for r in results:
        if r.failed:
            lines += ["", f"## {r.name}: {r.status}", "", r.error, "", "```", *r.tail, "```",
                      f"whole log: `{r.log}`"]
    return "\n".join(lines) + "\n"


def write_record(out: Path, meta: dict[str, Any], results: Sequence[StepResult]
                 ) -> tuple[Path, Path]:
    """Write both files; a rerun into the same folder replaces them (its steps did rerun)."""
    record = {**meta, "summary": summary(results),
              "failed": [r.name for r in results if r.failed],
              "steps": [dataclasses.asdict(r) for r in results]}
    json_path = atomic_write_json(out / "gpu-check.json", record, overwrite=True)
    md_path = atomic_write_bytes(out / "gpu-check.md", markdown(meta, results).encode(),
                                 overwrite=True)
    return json_path, md_path

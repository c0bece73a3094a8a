"""Running a notebook headless: validate, execute with papermill, record, render.

This sits above the run layer (:mod:`biovfm_lib.runs`: folders, records, atomic writes) and the
report layer (:mod:`biovfm_lib.reports`), and uses both; neither imports it, so rendering a
report never reaches back into how runs are made.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biovfm_lib.params import load_yaml, params_for
from biovfm_lib.preflight import check_inputs
from biovfm_lib.reports import render_notebook
from biovfm_lib.runs import (
    KERNEL_NAME,
    atomic_write_bytes,
    create_run_dir,
    hold_folder,
    notebook_path,
    now,
    project_root,
    start_record,
    update_record,
)

# The kernel's own warnings (that a local kernel talks over unencrypted loopback TCP, on every
# start) would repeat in every grid log; its errors still show.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str
    notebook: Path
    html: Path | None
    error: str | None = None


def execute(notebook: str | Path, params_file: str | Path | None = None,
            overrides: Mapping[str, Any] | None = None, kernel_name: str = KERNEL_NAME,
            progress: bool = False) -> RunResult:
    """Run a notebook headless with papermill into a new run folder and record the outcome.

    Parameters are validated before a kernel starts, so a bad file loses no compute. A failing
    notebook keeps its partial output, is rendered to HTML too, and is marked ``failed``.
    """
    import papermill as pm

    src = notebook_path(notebook)
    name = src.stem
    values = {**(load_yaml(params_file) if params_file else {}), **(overrides or {})}
    params = params_for(name).validate_mapping(values).as_dict()
    check_inputs(name, params)  # a missing corpus or checkpoint: one line, nothing written

    ensure_kernel(kernel_name)
    run_dir = create_run_dir(name, params)
    start_record(run_dir, name, params, launcher="biovfm run")
    if params_file:
        atomic_write_bytes(run_dir / "params.yaml", Path(params_file).read_bytes())
    out_nb = run_dir / src.name
    error = None
    try:
        with hold_folder(run_dir, "run folder"):
            pm.execute_notebook(
                str(src), str(out_nb), parameters={**params, "run_dir": str(run_dir)},
                cwd=str(project_root()), kernel_name=kernel_name, progress_bar=progress,
                request_save_on_cell_execute=True, extra_arguments=KERNEL_ARGUMENTS,
            )
    except Exception as exc:  # noqa: BLE001 - any failure (cell error, dead kernel) fails the run
        error = error_line(exc)
        (run_dir / "error.txt").write_text(traceback.format_exc())
    html = render_html(out_nb) if out_nb.is_file() else None
    status = "failed" if error else "completed"
    update_record(run_dir, status=status, ended=now(), error=error)
    return RunResult(run_dir, status, out_nb, html, error)


def error_line(exc: BaseException) -> str:
    """The one line a failed run reports: the notebook's own exception, not papermill's
    wrapper with the cell's source and traceback (those go to ``error.txt``)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        value = (str(exc.evalue).strip().splitlines() or [""])[0]
        return f"{exc.ename}: {value} (cell {exc.exec_count})"
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def render_html(notebook_file: Path) -> Path:
    """Render an executed notebook to a standalone HTML report beside it (provenance header,
    code folded, figures inline: see :mod:`biovfm_lib.reports`)."""
    body = render_notebook(notebook_file)
    return atomic_write_bytes(notebook_file.with_suffix(".html"), body.encode(), overwrite=True)


def ensure_kernel(name: str = KERNEL_NAME) -> None:
    """Register this environment's Python as the notebooks' kernel if it is not yet known."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(kernel_name=name, display_name="BioVFM (.venv)", prefix=sys.prefix)

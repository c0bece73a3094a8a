"""Reports: executed notebooks as HTML, and ``outputs/index.html`` over all runs and grids.

A notebook report opens with what a reader needs to trust it: the data it used (real
MedMNIST or synthetic, and for pretraining the corpus subset), the git commit and the
parameters; code cells are folded so the story and figures read first. The index page lists
every run and grid with its status and links each report; it is a static file with relative
links and no script, so it opens from disk, from a copied outputs folder, or a file share.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import yaml

from biovfm_lib import runs
from biovfm_lib.analysis.inputs import main_probe
from biovfm_lib.grid.state import headline, read_status

_FOLDED_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block body_header -%}
{{ super() }}
{{ resources.biovfm_header }}
{%- endblock body_header -%}
{% block input_group -%}
<details class="biovfm-code"><summary>code</summary>
{{ super() }}
</details>
{%- endblock input_group %}
"""
_REPORT_CSS = """<style>
.biovfm-provenance {font: 13px/1.5 sans-serif; border: 1px solid #ccc; border-radius: 4px;
  padding: 8px 12px; margin: 12px 0; background: #f7f7f7}
.biovfm-provenance pre {max-height: 24em; overflow: auto}
details.biovfm-code > summary {font: 12px sans-serif; color: #777; cursor: pointer;
  padding: 2px 0 2px 8px}
</style>"""


# --------------------------------------------------------------------------- notebook reports
def render_notebook(notebook_file: Path) -> str:
    """The HTML report of an executed notebook: provenance header (from the ``run.json``
    beside it, if any), folded code cells, outputs and figures inline."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook_file, as_version=4)
    exporter = HTMLExporter(extra_loaders=[DictLoader({"biovfm.html.j2": _FOLDED_TEMPLATE})],
                            template_file="biovfm.html.j2")
    record_file = Path(notebook_file).parent / runs.RECORD
    header = provenance_html(runs.read_record(record_file.parent)) if record_file.is_file() \
        else ""
    body, _ = exporter.from_notebook_node(nb, resources={"biovfm_header": _REPORT_CSS + header})
    return body


def provenance_html(record: dict[str, Any]) -> str:
    """What data, which code, which parameters: the lines every report starts with."""
    params = record.get("parameters", {})
    git = record.get("git") or {}
    commit = git.get("commit") or "unknown (not a git checkout)"
    if git.get("dirty"):
        commit += " with uncommitted changes"
    try:
        data = data_description(record)
    except Exception as err:  # noqa: BLE001 - a malformed sidecar must not cost the report
        data = f"not described ({_reason(err)})"
    items = [("run", f"{record.get('notebook', '?')} / {record.get('run_id', '?')}"),
             ("data", data), ("git commit", commit),
             ("started", record.get("started") or "-"),
             ("device", _device(record.get("device") or {}))]
    rows = "".join(f"<div><b>{html.escape(k)}:</b> {html.escape(str(v))}</div>" for k, v in items)
    text = yaml.safe_dump(params, sort_keys=True, default_flow_style=None)
    return (f'<section class="biovfm-provenance">{rows}<details><summary>parameters'
            f'</summary><pre>{html.escape(text)}</pre></details></section>')


SYNTHETIC_NOTE = ("Synthetic data: these numbers show that the pipeline works end to end; "
                  "they are not findings about medical images.")


def data_description(record: dict[str, Any]) -> str:
    """Real or synthetic (as the run recorded it), and which subset or checkpoint it used."""
    params = record.get("parameters", {})
    if record.get("notebook") == "04_scaling":
        return _scaling_data(params)
    source = record.get("data_source")
    if record.get("notebook") == "01_curation":
        kind = {"synthetic": "raw sources, all SYNTHETIC", "mixed": "raw sources, some SYNTHETIC",
                "real": "raw sources of real images"}.get(source, "raw sources")
        return f"{kind} from {params.get('sources')} into the corpus {params.get('out')}"
    if params.get("data") in ("corpus", "folder"):  # pretraining images, not MedMNIST
        kind = "curated corpus" if params["data"] == "corpus" else "image folder"
        kind = {"synthetic": f"SYNTHETIC {kind}", "mixed": f"{kind}, partly SYNTHETIC",
                "real": f"{kind} of real images"}.get(source, f"{kind} (source not recorded)")
    else:
        kind = {"synthetic": "SYNTHETIC MedMNIST-format data", "real": "real MedMNIST",
                "none": "no images (counts from medmnist.INFO)"}.get(
            source, "data source not recorded")
    where = params.get("data_root") if source != "none" else None
    text = kind + (f" at {where}" if where else "")
    if record.get("notebook") == "02_pretrain":
        subset = (f"{params['data_count']} images" if params.get("data_count")
                  else f"fraction {params.get('data_fraction', 1.0):g}")
        modalities = ", ".join(params.get("modalities") or []) or "all modalities"
        named = f"named subset {params['corpus_subset']!r}, " if params.get("corpus_subset") \
            else ""
        text += f"; corpus subset: {named}{subset}, {modalities}"
    if params.get("checkpoint"):
        side = _sidecar(params["checkpoint"])
        subset = side.get("data_subset") if isinstance(side.get("data_subset"), dict) else {}
        text += f"; encoder {params['checkpoint']}" + (
            f" ({side.get('algorithm')} {side.get('size')}, pretrained on "
            f"{_subset_text(subset)}, {side.get('images_seen')} images seen)" if side else "")
    return text


def _scaling_data(params: dict[str, Any]) -> str:
    """A scaling run's data are its probe runs' data (and the study's published numbers)."""
    parts = []
    if params.get("source") in ("both", "reference"):
        parts.append("the study's published AUCs")
    if params.get("source") in ("both", "runs"):
        ids = params.get("run_ids") or []
        kinds = set()
        for run_id in ids:
            path = runs.outputs_root() / "runs" / "03_probe" / run_id
            if (path / runs.RECORD).is_file():
                kinds.add(runs.read_record(path).get("data_source") or "unrecorded")
        kinds_text = " and ".join(k.upper() if k == "synthetic" else k for k in sorted(kinds))
        parts.append(f"{len(ids)} probe runs" + (f" on {kinds_text} data" if kinds else "")
                     if ids else "every completed probe run of an exported checkpoint")
    return " + ".join(parts) or "none"


# --------------------------------------------------------------------------- the index page
@dataclass(frozen=True)
class RunInfo:
    notebook: str
    run_id: str
    dir: Path
    record: dict[str, Any]
    mean_auc: float | None

    @property
    def status(self) -> str:
        return runs.effective_status(self.record)

    @property
    def html(self) -> Path | None:
        path = self.dir / f"{self.notebook}.html"
        return path if path.is_file() else None


def collect_runs(problems: list[tuple[Path, str]] | None = None) -> list[RunInfo]:
    """Every readable run folder, newest first within each notebook; a folder whose record or
    results cannot be read is left out and, if ``problems`` is given, listed there with why."""
    outputs = runs.outputs_root()
    found = []
    for record_file in sorted((outputs / "runs").glob(f"*/*/{runs.RECORD}")):
        run_dir = record_file.parent
        try:
            record = json.loads(record_file.read_text())
            if not isinstance(record, dict):
                raise TypeError(f"{runs.RECORD} holds a {type(record).__name__}, not a record")
            info = RunInfo(run_dir.parent.name, run_dir.name, run_dir, record,
                           _mean_auc(run_dir / "results.parquet"))
        except Exception as err:  # noqa: BLE001 - one run's files must never break the page
            if problems is not None:
                problems.append((run_dir, _reason(err)))
            continue
        found.append(info)
    return sorted(found, key=lambda r: (r.notebook, r.run_id), reverse=True)


def _reason(err: BaseException) -> str:
    return headline(f"{type(err).__name__}: {err}")


def build_index() -> Path:
    """Write ``outputs/index.html`` and return its path."""
    outputs = runs.outputs_root()
    problems: list[tuple[Path, str]] = []
    all_runs = collect_runs(problems)
    by_id = {r.run_id: r for r in all_runs}
    grids = _grids(outputs, problems)
    title = (f"<h1>BioVFM workbook: runs and grids</h1><p class=meta>"
             f"{html.escape(str(outputs))} · generated {runs.now()} · {len(all_runs)} runs, "
             f"{len(grids)} grids</p>")
    parts = [_head(), title, _key_figures(all_runs, outputs), "<h2>Grids</h2>"]
    parts += [_grid_section(name, info, table, by_id, outputs) for name, info, table in grids] \
        or ["<p>No grid has run yet (<code>biovfm grid params/grids/smoke.yaml</code>).</p>"]
    parts.append("<h2>Runs</h2>")
    notebooks = sorted({r.notebook for r in all_runs})
    parts += [_runs_section(nb, [r for r in all_runs if r.notebook == nb], outputs, problems)
              for nb in notebooks] or ["<p>No notebook has run yet.</p>"]
    parts.append(_problems_section(problems, outputs))
    parts.append("</body></html>\n")
    return runs.atomic_write_bytes(outputs / "index.html", "\n".join(parts).encode(),
                                   overwrite=True)


def _grids(outputs: Path, problems: list[tuple[Path, str]]
           ) -> list[tuple[str, dict, pd.DataFrame]]:
    grids = []
    for status in sorted((outputs / "grids").glob("*/status.parquet")):
        info_file = status.parent / "grid.json"
        try:
            info = json.loads(info_file.read_text()) if info_file.is_file() else {}
            if not isinstance(info, dict):
                raise TypeError(f"grid.json holds a {type(info).__name__}, not a mapping")
            grids.append((status.parent.name, info, read_status(status)))
        except Exception as err:  # noqa: BLE001 - one grid's files must never break the page
            problems.append((status.parent, _reason(err)))
    return grids


def _problems_section(problems: list[tuple[Path, str]], outputs: Path) -> str:
    """The folders the page could not read, so a skipped run is never silently missing."""
    if not problems:
        return ""
    rows = "".join(f"<tr><td><code>{html.escape(_rel(path, outputs))}</code></td>"
                   f"<td class=err>{html.escape(reason)}</td></tr>" for path, reason in problems)
    return (f"<h2>Not shown ({len(problems)})</h2><p>These folders could not be read; the "
            f"rest of the page is complete.</p><table><tr><th>folder</th><th>why</th></tr>"
            f"{rows}</table>")


def _key_figures(all_runs: list[RunInfo], outputs: Path) -> str:
    scaling = [r for r in all_runs if r.notebook == "04_scaling" and r.status == "completed"]
    probes = [r for r in all_runs if r.notebook == "03_probe" and r.mean_auc is not None
              and r.status == "completed"]
    out = ["<h2>Key figures</h2>"]
    if scaling:
        out.append(f"<p>The scaling figure of the newest completed 04_scaling run, "
                   f"{_run_link(scaling[0], outputs)}:</p>" + _figures(scaling[0], outputs))
        if "SYNTHETIC" in data_description(scaling[0].record):
            out.append(f"<p class=err>{SYNTHETIC_NOTE}</p>")
    else:
        out.append("<p>No completed 04_scaling run yet.</p>")
    if probes:
        rows = "".join(f"<tr><td>{_run_link(r, outputs)}</td><td>{html.escape(_point_of(r))}"
                       f"</td><td>{_auc_bar(r.mean_auc)}</td></tr>" for r in probes[:40])
        out.append("<h3>Mean test AUC per probe run</h3><table><tr><th>run</th><th>grid point"
                   f"</th><th>mean AUC over tasks</th></tr>{rows}</table>")
    return "\n".join(out)


def _grid_section(name: str, info: dict, table: pd.DataFrame, by_id: dict[str, RunInfo],
                  outputs: Path) -> str:
    points = table[table.kind == "point"]
    tally = points.status.value_counts().to_dict()
    badges = " ".join(_badge(s, f"{s} {n}") for s, n in sorted(tally.items()))
    axes = list(info.get("axes", {}))
    head = "".join(f"<th>{html.escape(a)}</th>" for a in axes)
    rows, scaling = [], None
    for row in table.itertuples(index=False):
        step_runs = json.loads(row.run_ids or "{}")
        found = [by_id[rid] for rid in step_runs.values() if rid in by_id]
        links = " ".join(_run_link(r, outputs, r.notebook) for r in found) or "-"
        auc = next((r.mean_auc for r in found if r.mean_auc is not None), None)
        scaling = next((r for r in found if r.notebook == "04_scaling"
                        and r.status == "completed"), scaling)
        values = "".join(f"<td>{html.escape(str(getattr(row, a, '') or ''))}</td>" for a in axes)
        label = row.slug if row.kind == "point" else f"analysis: {row.id}"
        error = html.escape(headline(row.error))
        log = f' <a href="{_rel(outputs / row.log, outputs)}">log</a>' if row.log else ""
        rows.append(f'<tr><td title="{html.escape(row.id)}">{html.escape(label)}</td>{values}'
                    f"<td>{_badge(row.status)}</td><td>{_seconds(row.elapsed_s)}</td>"
                    f"<td>{links}</td><td>{_auc_bar(auc)}</td><td class=err>{error}{log}</td></tr>")
    figure = (f"<p>Scaling figure of this grid's analysis ({_run_link(scaling, outputs)}):</p>"
              + _figures(scaling, outputs)) if scaling else ""
    return (f"<h3 id=\"grid-{html.escape(name)}\">{html.escape(name)}</h3>"
            f"<p>{html.escape(info.get('description', ''))}<br><span class=meta>"
            f"{html.escape(info.get('file', ''))} · updated {html.escape(info.get('updated', '?'))}"
            f"</span></p><p>{badges}</p><table><tr><th>point</th>{head}<th>status</th>"
            f"<th>time</th><th>reports</th><th>mean AUC</th><th>error</th></tr>"
            f"{''.join(rows)}</table>{figure}")


def _runs_section(notebook: str, items: list[RunInfo], outputs: Path,
                  problems: list[tuple[Path, str]]) -> str:
    rows = []
    for r in items:
        try:
            rows.append(_run_row(r, outputs))
        except Exception as err:  # noqa: BLE001 - a bad sidecar or record field: skip the row
            problems.append((r.dir, _reason(err)))
    return (f"<h3>{html.escape(notebook)} ({len(items)})</h3><table><tr><th>run</th>"
            "<th>status</th><th>started</th><th>time</th><th>data</th><th>commit</th>"
            "<th>grid</th><th>mean AUC</th><th>error</th><th>parameters</th></tr>"
            + "".join(rows) + "</table>")


def _run_row(r: RunInfo, outputs: Path) -> str:
    rec = r.record
    git = rec.get("git") or {}
    commit = (git.get("commit") or "?")[:10] + (" (dirty)" if git.get("dirty") else "")
    grid = rec.get("grid") or {}
    where = (f'<a href="#grid-{html.escape(grid["name"])}">{html.escape(grid["name"])}</a> '
             f"{html.escape(grid.get('point', ''))}") if grid.get("name") else ""
    error = html.escape(headline(rec.get("error")))
    params = yaml.safe_dump(rec.get("parameters", {}), sort_keys=True)
    return (f"<tr><td>{_run_link(r, outputs)}</td><td>{_badge(r.status)}</td>"
            f"<td>{html.escape(rec.get('started') or '')}</td>"
            f"<td>{_seconds(_elapsed(rec))}</td>"
            f"<td>{html.escape(data_description(rec))}</td><td><code>{html.escape(commit)}"
            f"</code></td><td>{where}</td><td>{_auc_bar(r.mean_auc)}</td>"
            f"<td class=err>{error}</td><td><details><summary>show</summary><pre>"
            f"{html.escape(params)}</pre></details></td></tr>")


# --------------------------------------------------------------------------- helpers
def _head() -> str:
    return """<!doctype html><html><head><meta charset="utf-8">
<title>BioVFM workbook</title><style>
body {font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222}
table {border-collapse: collapse; margin: 8px 0 20px} td, th {border-bottom: 1px solid #ddd;
  padding: 3px 8px; text-align: left; vertical-align: top} th {background: #f3f3f3}
.meta {color: #777} .err {color: #a00; max-width: 40em; white-space: pre-wrap; font-size: 12px}
pre {font-size: 11px; margin: 0}
.badge {padding: 1px 6px; border-radius: 8px; color: #fff; font-size: 12px; background: #888}
.completed {background: #2a7d2a} .failed {background: #c0392b} .running {background: #d68910}
.interrupted, .killed {background: #a04000} .submitted {background: #2471a3}
.bar {display: inline-block; height: 10px; background: #2471a3; vertical-align: middle}
img.fig {max-width: 720px; border: 1px solid #ddd; margin: 4px}
</style></head><body>"""


def _badge(status: str, text: str | None = None) -> str:
    return f'<span class="badge {html.escape(status)}">{html.escape(text or status)}</span>'


def _run_link(run: RunInfo, outputs: Path, text: str | None = None) -> str:
    label = html.escape(text or run.run_id)
    if run.html is None:
        return f'<span title="no HTML report">{label}</span>'
    return f'<a href="{_rel(run.html, outputs)}">{label}</a>'


def _figures(run: RunInfo, outputs: Path) -> str:
    """A scaling run's key figures: the mean over tasks against model size, and against
    resolution where it probed one checkpoint at several (params/grids/resolution.yaml)."""
    figures = [f for kind in ("mean", "resolution")
               for f in sorted((run.dir / "figures").glob(f"{kind}_*.png"))]
    return "".join(f'<a href="{_rel(f, outputs)}"><img class=fig src="{_rel(f, outputs)}" '
                   f'alt="{html.escape(f.stem)}"></a>' for f in figures) or "<p>(no figure)</p>"


def _rel(path: Path, outputs: Path) -> str:
    return quote(Path(os.path.relpath(path, outputs)).as_posix())


def _auc_bar(auc: float | None) -> str:
    if auc is None or pd.isna(auc):
        return ""
    return f'<span class=bar style="width:{max(0.0, auc) * 120:.0f}px"></span> {auc:.3f}'


def _mean_auc(results: Path) -> float | None:
    """Mean test AUC over tasks (the study's headline number) of a probe results table."""
    if not results.is_file():
        return None
    df = pd.read_parquet(results)
    if not {"split", "metric", "value"} <= set(df.columns):
        return None
    auc = df[(df.split == "test") & (df.metric == "auc") & main_probe(df)].value
    return float(auc.mean()) if len(auc) else None


def _elapsed(record: dict[str, Any]) -> float | None:
    try:
        start = dt.datetime.fromisoformat(record["started"])
        end = dt.datetime.fromisoformat(record["ended"])
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def _seconds(value: float | None) -> str:
    if value is None or pd.isna(value):
        return ""
    value = round(value)
    return f"{value // 60} min {value % 60:02d} s" if value >= 60 else f"{value} s"


def _point_of(run: RunInfo) -> str:
    grid = run.record.get("grid") or {}
    return f"{grid['name']}: {grid.get('point', '')}" if grid.get("name") else ""


def _sidecar(checkpoint: str) -> dict[str, Any]:
    """A checkpoint's sidecar as far as a report needs it; {} when it cannot be read or is not
    a mapping (the probe that used it checked it; a report only describes it)."""
    path = runs.resolve(checkpoint).with_suffix(".json")
    try:
        side = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return side if isinstance(side, dict) else {}


def _subset_text(subset: dict[str, Any]) -> str:
    size = f"{subset['count']} images" if subset.get("count") else \
        f"fraction {subset.get('fraction', 1.0):g}"
    return f"{size}, " + (", ".join(subset.get("modalities") or []) or "all modalities")


def _device(device: dict[str, Any]) -> str:
    gpus = device.get("gpus")
    return ", ".join(gpus) if gpus else f"CPU ({device.get('cpu_count', '?')} cores)"

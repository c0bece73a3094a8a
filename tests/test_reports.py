"""Reports: the notebook HTML header and folding, and the index page over runs and grids."""
import base64
import re
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pandas as pd
import pytest
import yaml

from biovfm_lib import cli, execution, runs
from biovfm_lib.grid import load_grid
from biovfm_lib.grid.state import GridState
from biovfm_lib.reports import data_description

# a 1x1 PNG: what a figure output carries, inline in the report
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhg"
                       "GAWjR9awAAAABJRU5ErkJggg==")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_run(notebook: str, status: str, html: bool = True, **fields) -> Path:
    """A run folder as execution.execute leaves it (record, report), without running a kernel."""
    params = fields.pop("parameters", {})
    run_dir = runs.create_run_dir(notebook, {**params, **fields})
    runs.atomic_write_json(run_dir / runs.RECORD, {
        "run_id": run_dir.name, "notebook": notebook, "status": status, "parameters": params,
        "git": {"commit": COMMIT, "dirty": False}, "started": "2026-01-01T10:00:00+00:00",
        "ended": "2026-01-01T10:01:05+00:00", "error": None, **fields})
    if html:
        (run_dir / f"{notebook}.html").write_text("<html>report</html>")
    return run_dir


def links(text: str) -> list[str]:
    return [unquote(x) for x in re.findall(r'(?:href|src)="([^"#][^"]*)"', text)]


def test_index_lists_runs_and_grids_with_working_relative_links(tmp_path, isolated_outputs,
                                                                capsys):
    probe = make_run("03_probe", "completed", data_source="synthetic",
                     parameters={"data_root": "outputs/data/synthetic", "epochs": 5})
    runs.write_table(pd.DataFrame({
        "task": ["a", "b", "a", "b"], "split": ["test", "test", "val", "val"],
        "metric": ["auc"] * 4, "value": [0.7, 0.8, 0.1, 0.1]}), probe / "results.parquet")
    failed = make_run("02_pretrain", "failed", parameters={"data_fraction": 0.1},
                      error="PapermillExecutionError: \n-----\nValueError: boom in cell 4")
    scaling = make_run("04_scaling", "completed",
                       parameters={"source": "runs", "run_ids": [probe.name]})
    (scaling / "figures").mkdir()
    (scaling / "figures" / "mean_auc.png").write_bytes(PNG)
    (scaling / "figures" / "resolution_auc.png").write_bytes(PNG)
    (scaling / "figures" / "tasks_auc.png").write_bytes(PNG)  # not a key figure
    running = make_run("05_task_properties", "running", html=False)

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump({
        "description": "two points",
        "steps": {"probe": {"notebook": "03_probe"}},
        "axes": {"seed": {"s1": {"probe": {"epochs": 1}}, "s2": {"probe": {"epochs": 2}}}}}))
    grid = load_grid(grid_file)
    state = GridState(grid)
    ok, bad = grid.points
    state.save_point({"id": ok.id, "slug": ok.slug, "status": "completed", "elapsed_s": 65.0,
                      "steps": {"probe": {"run_id": probe.name, "status": "completed"}}})
    state.save_point({"id": bad.id, "slug": bad.slug, "status": "failed", "step": "probe",
                      "error": "ParamError: invalid parameters for ProbeParams:\n  seed: bad",
                      "steps": {}})
    state.write_status()

    assert cli.main(["report"]) == 0
    index = isolated_outputs / "index.html"
    assert str(index) in capsys.readouterr().out
    text = index.read_text()
    found = links(text)
    assert found and all((isolated_outputs / link).is_file() for link in found)
    assert not [link for link in found if link.startswith("/")]
    assert f"runs/03_probe/{probe.name}/03_probe.html" in found
    figures = list(dict.fromkeys(link for link in found if "/figures/" in link))
    assert figures[:2] == [f"runs/04_scaling/{scaling.name}/figures/{kind}_auc.png"
                           for kind in ("mean", "resolution")]
    assert not [link for link in found if link.endswith("tasks_auc.png")]
    assert not [link for link in found if running.name in link]  # no report, no dead link
    rows = {r: row for row in re.findall(r"<tr>.*?</tr>", text, re.DOTALL)
            for r in (probe.name, failed.name, running.name, ok.slug, bad.slug)
            if f">{r}<" in row}
    assert 'badge failed' in rows[failed.name] and "ValueError: boom in cell 4" in rows[failed.name]
    assert "corpus subset: fraction 0.1" in rows[failed.name]
    assert "0.750" in rows[probe.name] and "SYNTHETIC" in rows[probe.name]  # test split only
    assert COMMIT[:10] in rows[probe.name] and "1 min 05 s" in rows[probe.name]
    assert 'badge running' in rows[running.name]
    assert 'badge completed' in rows[ok.slug] and "0.750" in rows[ok.slug]
    assert 'badge failed' in rows[bad.slug] and "seed: bad" in rows[bad.slug]
    assert "completed 1" in text and "failed 1" in text and "two points" in text
    assert "1 probe runs on SYNTHETIC data" in text  # the scaling run's data, from its inputs


def test_report_header_states_data_commit_parameters_and_folds_code(isolated_outputs):
    run_dir = make_run("02_pretrain", "running", html=False, data_source="synthetic", parameters={
        "data_root": "outputs/data/synthetic", "data_fraction": 0.1,
        "modalities": ["ultrasound"], "max_steps": 4})
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("answer = 6 * 7\nprint(answer)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="42\n"),
        nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PNG).decode(),
                                                     "text/plain": "<Figure>"})])
    nb.cells = [nbformat.v4.new_markdown_cell("# The story"), code]
    path = run_dir / "02_pretrain.ipynb"
    nbformat.write(nb, path)

    text = execution.render_html(path).read_text()
    assert text.count('<details class="biovfm-code">') == 1
    folded = text[text.index('<details class="biovfm-code">'):]
    folded = folded[:folded.index("</details>")]
    assert "answer" in folded and "The story" not in folded and "42" not in folded
    after = text[text.index('<details class="biovfm-code">'):]
    assert "data:image/png;base64," in after.split("</details>", 1)[1]  # figure inline, shown
    header = text[text.index('class="biovfm-provenance"'):]
    header = header[:header.index("</section>")]
    assert "SYNTHETIC MedMNIST-format data at outputs/data/synthetic" in header
    assert "corpus subset: fraction 0.1, ultrasound" in header
    assert COMMIT in header and "max_steps: 4" in header


@pytest.mark.parametrize("record,expected", [
    ({"notebook": "02_pretrain", "data_source": "mixed", "parameters": {
        "data": "corpus", "data_root": "outputs/corpus/demo", "corpus_subset": "f0.1"}},
     ("curated corpus, partly SYNTHETIC at outputs/corpus/demo; corpus subset: named subset "
      "'f0.1', fraction 1, all modalities")),
    ({"notebook": "03_probe", "data_source": "real", "parameters": {
        "data": "medmnist", "data_root": "outputs/data/medmnist"}},
     "real MedMNIST at outputs/data/medmnist"),
    ({"notebook": "03_probe", "status": "failed", "parameters": {}}, "data source not recorded"),
    ({"notebook": "04_scaling", "parameters": {"source": "reference"}},
     "the study's published AUCs"),
])
def test_data_description_says_real_or_synthetic_and_which_subset(record, expected):
    assert data_description(record) == expected


def test_mean_auc_on_the_index_counts_the_main_probe_only(isolated_outputs):
    from biovfm_lib.reports import build_index

    probe = make_run("03_probe", "completed", data_source="synthetic")
    runs.write_table(pd.DataFrame({  # a kNN row and a 1-shot row must not move the headline
        "task": ["a", "b", "a", "a"], "split": ["test"] * 4, "metric": ["auc"] * 4,
        "value": [0.7, 0.9, 0.2, 0.1], "probe": ["linear", "linear", "knn", "linear"],
        "main": [True, True, False, False]}), probe / "results.parquet")
    rows = [r for r in re.findall(r"<tr>.*?</tr>", build_index().read_text(), re.DOTALL)
            if probe.name in r]
    assert rows and all("0.800" in r and "0.475" not in r for r in rows)  # 0.475: all rows

"""Notebooks: stored clean, and run headless through the real `biovfm run` + papermill."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import timm
from safetensors.torch import load_file

from biovfm_lib.params import PARAMS_BY_NOTEBOOK, RUNNER_KEYS
from biovfm_lib.probe.metrics import METRICS
from biovfm_lib.runs import KERNEL_NAME

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BIOVFM = Path(sys.executable).with_name("biovfm")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == KERNEL_NAME
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "one parameters cell, the first code cell"
    raw = json.loads(path.read_text())["cells"]  # nbformat.read fills missing ids in silence
    ids = [c.get("id") for c in raw]
    assert all(ids) and len(set(ids)) == len(ids), "every cell needs its own id (nbformat 4.5)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_literals_matching_the_params_class(path):
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), f"only assignments: {ast.unparse(node)}"
        names[node.targets[0].id] = ast.literal_eval(node.value)
    fields = PARAMS_BY_NOTEBOOK[path.stem].model_fields
    assert set(names) == set(fields) | set(RUNNER_KEYS)
    defaults = PARAMS_BY_NOTEBOOK[path.stem]().as_dict()
    assert {k: v for k, v in names.items() if k in fields} == defaults


def run_cli(*args, outputs):
    env = {**os.environ, "BIOVFM_OUTPUTS": str(outputs)}
    return subprocess.run([str(BIOVFM), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def run_notebook(notebook: str, params: str, outputs: Path, *overrides: str) -> Path:
    """Run a notebook through the CLI, expect success, return its (only) run folder."""
    proc = run_cli("run", notebook, "-f", params, *overrides, "-q", outputs=outputs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (outputs / "runs" / notebook).iterdir()
    return run_dir


@pytest.mark.slow
def test_probe_notebook_smoke_run(isolated_outputs):
    data = isolated_outputs / "synthetic"
    run_dir = run_notebook("03_probe", "params/probe/smoke.yaml", isolated_outputs,
                           "-p", "data_root", str(data))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["data_source"] == "synthetic"
    assert record["launcher"] == "biovfm run" and record["ended"]
    df = pd.read_parquet(run_dir / "results.parquet")
    test = df[df.split == "test"]
    assert len(test) == 12 * len(METRICS) and test.task.nunique() == 12
    assert test.value.notna().all() and test.ci_low.notna().all()
    auc = test[test.metric == "auc"].value
    assert auc.between(0, 1).all() and auc.mean() > 0.55  # learnable data, not chance
    html = (run_dir / "03_probe.html").read_text()
    assert "SYNTHETIC" in html and "run folder" in html
    assert {p.name for p in (run_dir / "figures").iterdir()} >= {
        "metrics_test.png", "metrics_test.svg", "training_curves.png"}
    assert len(list((run_dir / "predictions").glob("*.npz"))) == 12


@pytest.mark.slow
def test_probe_notebook_beyond_smoke_run(isolated_outputs):
    """kNN, label efficiency, seeds and a probe per block, all on in one smoke run."""
    run_dir = run_notebook("03_probe", "params/probe/smoke_beyond.yaml", isolated_outputs,
                           "-p", "data_root", str(isolated_outputs / "synthetic"))
    df = pd.read_parquet(run_dir / "results.parquet")
    test = df[(df.split == "test") & (df.metric == "auc")]
    main = test[test["main"]]
    assert len(main) == 3 and main.protocol.eq("cached").all() and main.layer.eq(3).all()
    assert set(test.probe) == {"linear", "knn"} and set(test.layer) == {0, 1, 2, 3}
    assert sorted(test[test.probe == "linear"].run_seed.unique()) == [0, 1, 2]
    assert set(test.label_setting) == {"all", "f0.05", "f0.2", "1-shot", "5-shot"}
    assert set(test.label_draw) == {0, 1} and test.value.between(0, 1).all()
    knn = test[(test.probe == "knn") & (test.label_setting == "all")]
    assert len(knn) == 3 * 4 and knn.best_k.isin([5, 10]).all() and knn.ci_low.notna().all()
    html = (run_dir / "03_probe.html").read_text()
    assert "mean +- sd over seeds" in html and "knn (cached)" in html
    assert {"label_efficiency.png", "metric_by_layer.png", "metrics_test.png"} <= {
        p.name for p in (run_dir / "figures").iterdir()}


@pytest.mark.slow
def test_failing_run_keeps_its_notebook_and_is_marked_failed(isolated_outputs, tmp_path):
    not_weights = tmp_path / "notes.pth"  # exists, so only the kernel finds it is no checkpoint
    not_weights.write_text("hello\n")
    proc = run_cli("run", "03_probe", "-f", "params/probe/smoke.yaml", "-p", "checkpoint",
                   str(not_weights), "-q", outputs=isolated_outputs)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: CheckpointError: {not_weights}")
    (run_dir,) = (isolated_outputs / "runs" / "03_probe").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "CheckpointError" in record["error"]
    nb = nbformat.read(run_dir / "03_probe.ipynb", as_version=4)
    assert any(o.get("ename") == "CheckpointError" for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)
    assert (run_dir / "03_probe.html").is_file() and (run_dir / "error.txt").is_file()


def test_bad_parameter_is_rejected_before_a_kernel_starts(isolated_outputs):
    proc = run_cli("run", "03_probe", "-f", "params/probe/smoke.yaml", "-p", "epochs", "0",
                   outputs=isolated_outputs)
    assert proc.returncode == 2 and "epochs" in proc.stderr
    assert not (isolated_outputs / "runs").exists()


@pytest.mark.slow
def test_demo_chain_curates_pretrains_and_probes(isolated_outputs):
    """01 -> 02 -> 03: the corpus pretraining reads is the one curation wrote, and the probe
    finds the exported backbone (tests/test_grid.py runs 02 -> 03 -> 04 -> 05 as a grid)."""
    synth = run_cli("data", "synth", "--root", "outputs/data/synthetic", "--size", "28",
                    "--scale", "0.02", outputs=isolated_outputs)
    assert synth.returncode == 0, synth.stderr[-2000:]
    curation_dir = run_notebook("01_curation", "params/curation/demo.yaml", isolated_outputs)
    corpus = isolated_outputs / "corpus" / "demo"
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    summary = json.loads((curation_dir / "corpus.json").read_text())
    assert summary["images"] == len(manifest) > 2000
    assert summary["subsets"]["ultrasound"]["images"] == (manifest.modality == "ultrasound").sum()
    assert {"mr", "fundus", "microscopy", "x-ray"} <= set(manifest.modality)  # real + synthetic
    assert {"study_composition.png", "survival.png", "rejects.png", "samples_by_modality.png",
            "subsets.png"} <= {p.name for p in (curation_dir / "figures").iterdir()}
    assert pd.read_parquet(corpus / "rejects.parquet").reason.eq("not_an_image").any()
    assert json.loads((curation_dir / "run.json").read_text())["data_source"] == "mixed"
    assert "some SYNTHETIC" in (curation_dir / "01_curation.html").read_text()

    run_dir = run_notebook("02_pretrain", "params/pretrain/smoke.yaml", isolated_outputs)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["data_source"] == "mixed"
    train_dir = Path(record["train_dir"])
    assert train_dir == isolated_outputs / "pretrain" / "smoke-dinov2-nano"
    log = pd.read_json(train_dir / "log.jsonl", lines=True)
    assert log.step.tolist() == list(range(2, 21, 2)) and log.loss.notna().all()
    sidecar = json.loads((train_dir / "export" / "backbone.json").read_text())
    model = timm.create_model(sidecar["timm_name"], **sidecar["timm_kwargs"])
    model.load_state_dict(load_file(record["export"]))  # strict
    assert "curated corpus" in (run_dir / "02_pretrain.html").read_text()
    assert {"views.png", "training.png"} <= {p.name for p in (run_dir / "figures").iterdir()}

    probe_dir = run_notebook("03_probe", "params/probe/smoke_pretrained.yaml", isolated_outputs,
                             "-p", "tasks", "[dermamnist, breastmnist]")
    df = pd.read_parquet(probe_dir / "results.parquet")
    assert df.checkpoint.eq(record["export"]).all() and df.encoder.eq("nano").all()
    assert len(df) == 2 * len(METRICS) * 2


SLOPE_COLUMNS = ["source", "algorithm", "task", "metric", "axis", "fit", "slope", "se",
                 "ci_low", "ci_high", "p_value", "n_points"]


@pytest.mark.slow
def test_scaling_notebook_on_the_reference_table(isolated_outputs):
    run_dir = run_notebook("04_scaling", "params/scaling/reference.yaml", isolated_outputs)
    slopes = pd.read_parquet(run_dir / "slopes.parquet")
    assert list(slopes.columns[:len(SLOPE_COLUMNS)]) == SLOPE_COLUMNS
    power = slopes[slopes.fit == "power_law"]
    assert len(power) == 2 * 13 and power.slope.notna().all() and power.n_points.eq(4).all()
    assert set(slopes.source) == {"reference"}
    assert (run_dir / "slope_differences.parquet").is_file()
    assert {"mean_auc.png", "tasks_auc.png", "slopes_auc.png"} <= {
        p.name for p in (run_dir / "figures").iterdir()}

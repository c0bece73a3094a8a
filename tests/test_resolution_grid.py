"""The resolution grids: one checkpoint probed at every MedMNIST+ size, MedMNIST+'s way."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from biovfm_lib import execution, runs
from biovfm_lib.grid import load_grid
from biovfm_lib.grid.runner import run_grid
from biovfm_lib.params import MEDMNIST_SIZES, load_yaml

ROOT = Path(__file__).resolve().parents[1]
GRIDS = ROOT / "params" / "grids"
SMOKE_PRETRAIN = ROOT / "params" / "pretrain" / "resolution_smoke.yaml"


@pytest.mark.parametrize("name", ["resolution", "resolution_smoke"])
def test_a_resolution_grid_probes_one_checkpoint_at_every_size(name):
    grid = load_grid(GRIDS / f"{name}.yaml")
    assert sorted(int(r) for r in grid.axes["resolution"]) == list(MEDMNIST_SIZES)
    probes = {(p.axes["model"], int(p.axes["resolution"])): p.steps[-1].values()
              for p in grid.points}
    assert len(probes) == len(grid.points) == 8
    assert all(p.step_names == ["probe"] and p.validate() is None for p in grid.points)
    pretrained = {v["checkpoint"] for (model, _), v in probes.items() if model != "random"}
    assert len(pretrained) == 1 and "" not in pretrained  # one checkpoint at every size
    for (model, size), values in probes.items():
        assert values["size"] == size and values["input_size"] == 224
        assert values["input_fit"] == "pad"  # MedMNIST+'s protocol
        assert (values["checkpoint"] == "") == (model == "random")
    assert all(s.validate() is None for s in grid.analysis_steps({"probe": []}))


def test_the_smoke_checkpoint_is_what_its_pretraining_exports():
    grid = load_grid(GRIDS / "resolution_smoke.yaml")
    pretrain = load_yaml(SMOKE_PRETRAIN)
    probe = grid.points[0].steps[-1].values()
    assert probe["checkpoint"] == (f"outputs/pretrain/{pretrain['name']}/export/"
                                   "backbone.safetensors")
    assert pretrain["img_size"] == probe["input_size"]  # pretrained at the probe's input
    assert pretrain["tasks"] == probe["tasks"] and pretrain["data_root"] == probe["data_root"]
    floor = next(p for p in grid.points if p.axes["model"] == "random").steps[-1].values()
    assert (floor["encoder"], floor["patch_size"]) == (pretrain["encoder"],
                                                        pretrain["patch_size"])


@pytest.mark.slow
def test_the_smoke_resolution_grid_runs_and_04_draws_metric_against_resolution(
        tmp_path, isolated_outputs):
    """Its pretraining (shortened), then the grid at two resolutions and two tasks, as a user
    runs them: 04 finds one checkpoint at two sizes and fits nothing across them."""
    tasks = ["dermamnist", "bloodmnist"]
    made = execution.execute("02_pretrain", SMOKE_PRETRAIN, {"max_steps": 2, "tasks": tasks,
                                                             "batch_size": 16})
    assert made.status == "completed", made.error
    spec = yaml.safe_load((GRIDS / "resolution_smoke.yaml").read_text())
    spec["steps"]["probe"]["params"].update(tasks=tasks, epochs=3, bootstrap=0)
    spec["axes"]["resolution"] = {k: v for k, v in spec["axes"]["resolution"].items()
                                  if k in (64, 28)}
    spec["analysis"][0]["params"].update(n_boot=0)
    path = tmp_path / "resolution_smoke.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    summary = run_grid(load_grid(path), echo=lambda _: None)
    assert summary.exit_code == 0, summary.text()

    results = runs.collect_results("results")
    probes = results[results.notebook == "03_probe"]
    assert set(zip(probes.img_size, probes.input_size, probes.input_fit)) == {
        (28, 224, "pad"), (64, 224, "pad")}
    (scaling_dir,) = (isolated_outputs / "runs" / "04_scaling").iterdir()
    curve = pd.read_parquet(scaling_dir / "resolution.parquet")
    assert sorted(set(curve.img_size)) == [28, 64] and set(curve.task) == set(tasks)
    slopes = pd.read_parquet(scaling_dir / "resolution_slopes.parquet")
    assert set(slopes.axis) == {"resolution"} and slopes.slope.notna().any()
    assert (scaling_dir / "figures" / "resolution_auc.png").is_file()
    sizes = pd.read_parquet(scaling_dir / "slopes.parquet")
    assert sizes.query("axis == 'model_size'").slope.isna().all()  # one size: no size slope

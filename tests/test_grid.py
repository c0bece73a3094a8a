"""Grids: grid files, point ids, the runner's bookkeeping, and the smoke grid end to end."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pandas as pd
import pytest
import yaml

from biovfm_lib import cli, execution, runs
from biovfm_lib.grid import GridError, load_grid
from biovfm_lib.grid.plan import describe
from biovfm_lib.grid.runner import _slot_env, _slots, run_grid
from biovfm_lib.grid.slurm import submit
from biovfm_lib.grid.state import GridState, headline, read_status
from biovfm_lib.params import load_yaml

ROOT = Path(__file__).resolve().parents[1]
BIOVFM = Path(sys.executable).with_name("biovfm")


# --------------------------------------------------------------------------- grid files
def test_smoke_grid_is_a_miniature_of_the_study():
    grid = load_grid(ROOT / "params" / "grids" / "smoke.yaml")
    combos = {tuple(p.axes.values()) for p in grid.points}
    sizes = grid.axes["size"]
    assert len(sizes) >= 3  # a model-size slope with a CI (a residual df)
    assert {("mae", s, "all") for s in sizes} <= combos
    assert len({s for a, s, d in combos if a == "dinov2" and d == "all"}) >= 2
    assert {("mae", "femto", d) for d in ("half", "quarter")} <= combos  # nested fractions
    assert {("random", s, "all") for s in sizes} <= combos  # the floor at every size
    curated = load_yaml(ROOT / "params" / "curation" / "demo.yaml")["subsets"]
    assert curated["half"] == {"fraction": 0.5} and curated["quarter"] == {"fraction": 0.25}
    for point in grid.points:
        probe = point.steps[-1].values()
        assert probe["encoder"] == point.axes["size"] and point.validate() is None
        if point.axes["algorithm"] == "random":
            assert point.step_names == ["probe"] and probe["checkpoint"] == ""
            continue
        pretrain = point.steps[0].values()
        assert point.id.startswith(point.slug + "-") and len(point.id) == len(point.slug) + 9
        assert pretrain["name"] == point.id and pretrain["encoder"] == point.axes["size"]
        assert pretrain["algorithm"] == point.axes["algorithm"]
        assert pretrain["corpus_subset"] == ("" if point.axes["data"] == "all"
                                             else point.axes["data"])
        assert probe["checkpoint"] == f"outputs/pretrain/{point.id}/export/backbone.safetensors"
    assert [s.name for s in grid.analysis][:2] == ["04_scaling", "05_task_properties"]
    scaling = grid.analysis_steps({"probe": ["r1", "r2"]})[0]
    assert scaling.values()["run_ids"] == ["r1", "r2"] and scaling.values()["n_boot"] > 0


def test_shipped_grids_are_valid_and_paper_covers_the_study():
    paper = load_grid(ROOT / "params" / "grids" / "paper.yaml")
    assert paper.axes["size"] == ["tiny", "small", "base", "large", "huge"]
    assert set(paper.axes["algorithm"]) == {"dinov2", "mae"}
    combos = {tuple(p.axes.values()) for p in paper.points}
    assert len(combos) == len(paper.points) == 20  # sweeps overlap at base/all: run once
    assert {("dinov2", s, "all") for s in paper.axes["size"]} <= combos
    assert {("mae", "base", sub) for sub in paper.axes["subset"]} <= combos
    curated = load_yaml(ROOT / "params" / "curation" / "biovfm21m.yaml")["subsets"]
    named = {p.steps[0].values()["corpus_subset"] for p in paper.points} - {""}
    assert named <= set(curated)  # every subset the grid names is one the corpus defines
    for name in ("paper", "gpu_small", "smoke"):
        grid = load_grid(ROOT / "params" / "grids" / f"{name}.yaml")
        assert all(p.validate() is None for p in grid.points), name
        assert all(s.validate() is None for s in grid.analysis_steps({"probe": []})), name


def write_grid(path: Path, **changes) -> Path:
    """A small grid file (two points, probe after pretrain, one analysis step)."""
    grid = {
        "steps": {"pretrain": {"notebook": "02_pretrain",
                               "params": {"name": "{point}", "data": "synthetic"}},
                  "probe": {"notebook": "03_probe", "params": {
                      "checkpoint": "outputs/pretrain/{point}/export/backbone.safetensors"}}},
        "axes": {"algorithm": {"dinov2": {"pretrain": {"algorithm": "dinov2"}},
                               "mae": {"pretrain": {"algorithm": "mae"},
                                       "probe": {"seed": 13}}}},
        "analysis": [{"notebook": "04_scaling", "params": {"run_ids": "{runs:probe}"}}],
    }
    for key, value in changes.items():
        grid[key] = value
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_point_ids_follow_parameters_not_formatting(tmp_path):
    ids = [p.id for p in load_grid(write_grid(tmp_path / "g.yaml")).points]
    assert ids == [p.id for p in load_grid(write_grid(tmp_path / "g.yaml")).points]
    text = (tmp_path / "g.yaml").read_text()
    flow = yaml.safe_dump(yaml.safe_load(text), default_flow_style=True, sort_keys=True)
    (tmp_path / "reformatted.yaml").write_text("# same grid, other layout and key order\n" + flow)
    assert [p.id for p in load_grid(tmp_path / "reformatted.yaml").points] == ids
    steps = yaml.safe_load(text)["steps"]
    steps["probe"]["params"]["epochs"] = 7
    changed = [p.id for p in load_grid(write_grid(tmp_path / "g.yaml", steps=steps)).points]
    assert changed[0] != ids[0] and changed[1] != ids[1]
    assert [i.rsplit("-", 1)[0] for i in changed] == ["dinov2", "mae"]


@pytest.mark.parametrize("change,fragment", [
    ({"stepz": {}}, "stepz: unknown key"),
    ({"steps": {"pretrain": {"notebook": "02_pretrain", "fil": "x.yaml"}}}, "steps.pretrain.fil"),
    ({"steps": {"pretrain": {"notebook": "02_pretrain", "file": "params/nope.yaml"}}},
     "steps.pretrain.file: parameter file not found"),
    ({"steps": {"pretrain": {"notebook": "99_nope"}}}, "steps.pretrain.notebook"),
    ({"axes": {"algorithm": {"dinov2": {"probing": {}}}}}, "axes.algorithm.dinov2.probing"),
    ({"axes": {"algorithm": {"dinov2": {"pretrain": {"name": "{pont}"}}}}}, "{pont}"),
    ({"axes": {"a": {"x": {"pretrain": {"seed": 1}}}, "b": {"y": {"pretrain": {"seed": 2}}}}},
     "axes a and b both set pretrain.seed"),
    ({"sweeps": [{"algorithm": ["dino"]}]}, "sweeps[0].algorithm: unknown value"),
    ({"analysis": [{"notebook": "04_scaling", "params": {"run_ids": "{runs:probing}"}}]},
     "{runs:probing} names no step"),
    ({"axes": {"status": {"x": {}}}}, "axes.status"),
])
def test_grid_errors_name_the_key(tmp_path, change, fragment):
    with pytest.raises(GridError) as err:
        load_grid(write_grid(tmp_path / "bad.yaml", **change))
    assert fragment in str(err.value) and "bad.yaml" in str(err.value)


def test_dry_run_lists_points_commands_and_bad_values_and_writes_nothing(
        tmp_path, isolated_outputs, capsys):
    axes = {"algorithm": {"dinov2": {"pretrain": {"algorithm": "dinov2"}},
                          "mae": {"pretrain": {"algorithm": "mae", "max_steps": -1}}}}
    path = write_grid(tmp_path / "g.yaml", axes=axes)
    assert cli.main(["grid", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    dinov2, mae = load_grid(path).points
    assert f"run     {dinov2.id}" in out and f"INVALID {mae.id}" in out
    assert "max_steps" in out and "biovfm run 02_pretrain -p name " + dinov2.id in out
    assert "analysis 04_scaling: run after the points" in out
    assert not isolated_outputs.exists()


# --------------------------------------------------------------------------- the runner
def fake_execute(notebook, params_file=None, overrides=None, **_):
    """Stands in for execution.execute: a real run folder and record, no kernel. The probe of a
    point with seed 13 fails the way a notebook does (error.txt, failed record)."""
    params = {**(load_yaml(params_file) if params_file else {}), **(overrides or {})}
    run_dir = runs.create_run_dir(notebook, params)
    error = None
    if notebook == "03_probe" and params.get("seed") == 13:
        error = "PapermillExecutionError: \nValueError: probe exploded"
        (run_dir / "error.txt").write_text("Traceback (most recent call last):\n"
                                           "  File nb, cell 4\nValueError: probe exploded\n")
    status = "failed" if error else "completed"
    runs.atomic_write_json(run_dir / runs.RECORD, {
        "run_id": run_dir.name, "notebook": notebook, "status": status, "parameters": params,
        "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": runs.now(), "ended": runs.now(), "error": error})
    (run_dir / f"{notebook}.html").write_text("<html>report</html>")
    return execution.RunResult(run_dir, status, run_dir / f"{notebook}.ipynb", None, error)


def point_runs(state, point):
    return {k: v["run_id"] for k, v in state.point(point.id)["steps"].items()}


def test_runner_records_failures_resumes_and_reruns_analysis_only_on_change(
        tmp_path, isolated_outputs):
    grid = load_grid(write_grid(tmp_path / "g.yaml"))
    dinov2, mae = grid.points
    state = GridState(grid)
    lines = []
    summary = run_grid(grid, gpu_sets=["0,1", "2"], execute=fake_execute, echo=lines.append)
    assert summary.exit_code == 1
    assert list(summary.failed.id) == [mae.id] and summary.failed.step.tolist() == ["probe"]
    assert f"FAILED {mae.id} [probe]: ValueError: probe exploded" in summary.text()
    record = state.point(mae.id)
    assert record["status"] == "failed" and "probe exploded" in record["log_tail"]
    assert "ValueError: probe exploded" in state.log_path(mae.id).read_text()
    ran = {}
    for point in (dinov2, mae):
        steps = state.point(point.id)["steps"].values()
        ran[point.slug] = {(r["pid"], r["gpus"]) for r in
                           (runs.read_record(isolated_outputs / s["run_dir"]) for s in steps)}
    (dinov2_worker,), (mae_worker,) = ran["dinov2"], ran["mae"]  # one process per point
    assert {dinov2_worker[1], mae_worker[1]} == {"0,1", "2"}  # each pinned to its GPU set
    assert dinov2_worker[0] != mae_worker[0]  # two worker processes, neither this one
    assert os.getpid() not in (dinov2_worker[0], mae_worker[0])
    table = read_status(state.dir / "status.parquet")
    assert table.set_index("id").status.to_dict() == {
        dinov2.id: "completed", mae.id: "failed", "04_scaling": "completed"}
    assert table.set_index("id").algorithm.to_dict()[mae.id] == "mae"
    scaling = runs.read_record(isolated_outputs / state.analysis("04_scaling")["run_dir"])
    assert scaling["parameters"]["run_ids"] == [point_runs(state, dinov2)["probe"]]
    assert runs.read_record(isolated_outputs / state.point(dinov2.id)["steps"]["probe"][
        "run_dir"])["grid"] == {"name": grid.name, "point": dinov2.id, "step": "probe"}

    before = {p.id: point_runs(state, p) for p in grid.points}
    analysis_run = state.analysis("04_scaling")["run_id"]
    again = run_grid(grid, execute=fake_execute, echo=lines.append)
    assert again.exit_code == 1
    assert point_runs(state, dinov2) == before[dinov2.id]  # finished: skipped
    assert point_runs(state, mae)["pretrain"] == before[mae.id]["pretrain"]  # step kept
    assert point_runs(state, mae)["probe"] != before[mae.id]["probe"]  # failed step retried
    assert state.analysis("04_scaling")["run_id"] == analysis_run  # same completed points

    one = run_grid(grid, only=[dinov2.slug], execute=fake_execute, echo=lines.append)
    assert one.exit_code == 0  # as a Slurm job runs it: another point's failure is not its own

    forced = run_grid(grid, force=True, execute=fake_execute, echo=lines.append)
    assert point_runs(state, dinov2)["pretrain"] != before[dinov2.id]["pretrain"]
    assert state.analysis("04_scaling")["run_id"] != analysis_run
    assert forced.exit_code == 1 and (isolated_outputs / "index.html").is_file()
    assert any("already completed, skipped" in line for line in lines)


def baseline_axes() -> dict:
    """Two algorithms and a random initialisation that leaves pretraining out."""
    return {"algorithm": {"dinov2": {"pretrain": {"algorithm": "dinov2"}},
                          "random": {"pretrain": "skip", "probe": {"checkpoint": ""}}},
            "size": {"nano": {"pretrain": {"encoder": "nano"}, "probe": {"encoder": "nano"}}}}


def test_a_point_may_skip_a_step_and_still_feed_the_analysis(tmp_path, isolated_outputs):
    grid = load_grid(write_grid(tmp_path / "g.yaml", axes=baseline_axes()))
    dinov2, baseline = grid.points
    assert baseline.slug == "random-nano" and baseline.step_names == ["probe"]
    assert baseline.steps[0].values() == {"checkpoint": "", "encoder": "nano"}
    assert dinov2.step_names == ["pretrain", "probe"] and baseline.validate() is None
    state = GridState(grid)
    assert run_grid(grid, execute=fake_execute, echo=lambda _: None).exit_code == 0
    assert set(state.point(baseline.id)["steps"]) == {"probe"}
    scaling = runs.read_record(isolated_outputs / state.analysis("04_scaling")["run_dir"])
    assert scaling["parameters"]["run_ids"] == [point_runs(state, p)["probe"]
                                                for p in grid.points]
    lines = []
    run_grid(grid, execute=fake_execute, echo=lines.append)  # completed with its one step
    assert any(f"{baseline.slug}: already completed, skipped" in line for line in lines)
    assert "random-nano-" in describe(grid) and "skip" in describe(grid)


@pytest.mark.parametrize("sets,fragment", [
    ({"pretrain": "skipp"}, "axes.algorithm.random.pretrain: 'skipp'"),
    ({"pretrain": "skip", "probe": "skip"}, "point random-nano: its axis values skip every"),
])
def test_a_bad_skip_names_the_key(tmp_path, sets, fragment):
    axes = baseline_axes()
    axes["algorithm"]["random"] = sets
    with pytest.raises(GridError, match=re.escape(fragment)):
        load_grid(write_grid(tmp_path / "bad.yaml", axes=axes))


def test_cpu_jobs_share_the_cores_and_gpus_need_gpu_sets(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert _slots(1, []) == [None] and _slots(3, ["0", "1"]) == ["0", "1"]
    assert _slots(2, []) == [None, None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(GridError, match="--gpus"):  # points side by side on shared GPUs
        _slots(2, [])
    assert _slot_env(None, 2) == {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}
    assert _slot_env("2,3", 2) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    with pytest.raises(GridError, match="jobs"):
        _slots(0, [])


def test_headline_finds_the_notebook_error_under_papermills_wrapper():
    error = ("PapermillExecutionError: \n-----\nException encountered at \"In [4]\":\n"
             "ValueError                                Traceback (most recent call last)\n"
             "Cell In[4], line 5\n----> 5 prepare(P)\n\nValueError: holds a run with other "
             "parameters\n")
    assert headline(error) == "ValueError: holds a run with other parameters"
    params = "ParamError: invalid parameters for PretrainParams:\n  max_steps: must be >= 0"
    assert headline(params) == ("ParamError: invalid parameters for PretrainParams: "
                                "max_steps: must be >= 0")


def test_slurm_submits_each_pending_point_and_a_dependent_analysis(tmp_path, isolated_outputs):
    calls = tmp_path / "calls.jsonl"
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\nimport json, sys\n"  # records argv, prints an id
                      f"with open({str(calls)!r}, 'a') as f:\n"
                      "    f.write(json.dumps(sys.argv) + '\\n')\n"
                      f"print(sum(1 for _ in open({str(calls)!r})) + 100)\n")
    sbatch.chmod(0o755)
    grid = load_grid(write_grid(tmp_path / "g.yaml", slurm={"partition": "gpu",
                                                           "exclusive": True}))
    jobs = submit(grid, sbatch=str(sbatch), echo=lambda _: None)
    assert jobs == ["101", "102", "103"]
    argv = [json.loads(line) for line in calls.read_text().splitlines()]
    for point, args in zip(grid.points, argv):
        assert "--partition=gpu" in args and "--exclusive" in args
        assert args[-1].endswith(f"grid {grid.path} --points {point.id}")
    assert "--dependency=afterany:101:102" in argv[2] and argv[2][-1].endswith("--analysis-only")
    state = GridState(grid)
    assert {state.point(p.id)["status"] for p in grid.points} == {"submitted"}
    # again: queued points are not submitted twice, and the analysis still waits for them
    assert submit(grid, sbatch=str(sbatch), echo=lambda _: None) == ["104"]
    assert "--dependency=afterany:101:102" in json.loads(calls.read_text().splitlines()[3])


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def smoke_grid(tmp_path_factory):
    """The shipped smoke grid, made cheaper and given points that fail validation, run as a
    user would: killed once its first point finished, then resumed."""
    root = tmp_path_factory.mktemp("smoke-grid")
    outputs = root / "outputs"
    spec = yaml.safe_load((ROOT / "params" / "grids" / "smoke.yaml").read_text())
    spec["steps"]["pretrain"]["params"].update(  # no curation here: 01 is tested on its own
        max_steps=4, data="synthetic", data_root="outputs/data/synthetic", data_size=28,
        tasks=["breastmnist", "dermamnist", "pneumoniamnist"], batch_size=16)
    spec["steps"]["probe"]["params"].update(epochs=5, bootstrap=20, ci_rule="percentile",
                                            tasks=["breastmnist", "dermamnist",
                                                   "pneumoniamnist"])
    spec["axes"]["size"]["broken"] = {"pretrain": {"encoder": "nano", "max_steps": -1}}
    spec["sweeps"] = [{"algorithm": ["dinov2", "mae"], "size": ["nano", "broken"],
                       "data": "all"}, {"algorithm": "random", "size": "nano", "data": "all"}]
    analysis = {a["notebook"]: a for a in spec["analysis"]}
    analysis["04_scaling"]["params"].update(source="runs", n_boot=20)  # reference: elsewhere
    analysis["05_task_properties"]["params"].update(sample=20, n_boot=20)
    path = root / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "BIOVFM_OUTPUTS": str(outputs)}
    status = outputs / "grids" / "smoke" / "status.parquet"

    with (root / "first.log").open("w") as log:
        proc = subprocess.Popen([str(BIOVFM), "grid", str(path)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, killed_at = time.time() + 400, None
        while proc.poll() is None and time.time() < deadline:
            if status.is_file() and (read_status(status).status == "completed").any():
                killed_at = read_status(status)
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait()

    resumed = subprocess.run([str(BIOVFM), "grid", str(path)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900, check=False)
    return SimpleNamespace(outputs=outputs, grid=load_grid(path), killed_at=killed_at,
                           resumed=resumed, after=read_status(status),
                           log=(root / "first.log").read_text())


def run_record(outputs: Path, notebook: str, run_id: str) -> dict:
    return runs.read_record(outputs / "runs" / notebook / run_id)


@pytest.mark.slow
def test_smoke_grid_runs_every_point_then_the_analysis(smoke_grid):
    g = smoke_grid
    assert g.resumed.returncode == 1, g.resumed.stdout[-3000:] + g.resumed.stderr[-3000:]
    statuses = g.after.set_index("id").status.to_dict()
    good = [p for p in g.grid.points if p.axes["size"] == "nano"
            and p.axes["algorithm"] != "random"]
    broken = [p for p in g.grid.points if p.axes["size"] == "broken"]
    (floor,) = [p for p in g.grid.points if p.axes["algorithm"] == "random"]
    assert {statuses[p.id] for p in [*good, floor]} == {"completed"}
    assert {statuses[p.id] for p in broken} == {"failed"}
    assert statuses["04_scaling"] == statuses["05_task_properties"] == "completed"
    for point in broken:  # reported with the bad key, and nothing ran for it
        assert f"FAILED {point.id}" in g.resumed.stdout
        assert json.loads(g.after.set_index("id").run_ids[point.id]) == {}
    assert "max_steps" in g.resumed.stdout and "3/5 points completed, 2 failed" in g.resumed.stdout
    probe_ids = []
    for point in good:
        ids = json.loads(g.after.set_index("id").run_ids[point.id])
        pretrain = run_record(g.outputs, "02_pretrain", ids["pretrain"])
        probe = run_record(g.outputs, "03_probe", ids["probe"])
        assert pretrain["status"] == probe["status"] == "completed"
        assert pretrain["parameters"]["algorithm"] == point.axes["algorithm"]
        assert Path(pretrain["train_dir"]) == g.outputs / "pretrain" / point.id
        assert probe["parameters"]["checkpoint"] == (
            f"outputs/pretrain/{point.id}/export/backbone.safetensors")
        assert (g.outputs / "pretrain" / point.id / "export" / "backbone.safetensors").is_file()
        results = pd.read_parquet(g.outputs / "runs" / "03_probe" / ids["probe"] /
                                  "results.parquet")
        assert results.checkpoint.eq(pretrain["export"]).all()
        probe_ids.append(ids["probe"])
    floor_ids = json.loads(g.after.set_index("id").run_ids[floor.id])
    assert list(floor_ids) == ["probe"]  # no pretraining, a probe of the random init
    assert run_record(g.outputs, "03_probe", floor_ids["probe"])["parameters"]["checkpoint"] == ""
    scaling_id = json.loads(g.after.set_index("id").run_ids["04_scaling"])["04_scaling"]
    scaling = run_record(g.outputs, "04_scaling", scaling_id)
    assert sorted(scaling["parameters"]["run_ids"]) == sorted([*probe_ids, floor_ids["probe"]])
    scaling_dir = g.outputs / "runs" / "04_scaling" / scaling_id
    random_init = pd.read_parquet(scaling_dir / "random_init.parquet")
    assert set(random_init["size"]) == {"nano"} and set(random_init.run_id) == {
        floor_ids["probe"]} and len(random_init) == 3 * len(set(random_init.metric))
    slopes = pd.read_parquet(scaling_dir / "slopes.parquet")
    from_runs = slopes[slopes.source == "runs"]
    assert set(from_runs.algorithm) == {"dinov2", "mae"}
    assert set(from_runs.axis) == {"model_size", "data_size:nano"}  # found via the sidecars
    assert from_runs.slope.isna().all() and from_runs.note.str.contains("distinct x").all()

    properties_id = json.loads(g.after.set_index("id").run_ids["05_task_properties"])[
        "05_task_properties"]
    properties_dir = g.outputs / "runs" / "05_task_properties" / properties_id
    props = pd.read_parquet(properties_dir / "task_properties.parquet")
    assert list(props.columns) == ["task", "n_train", "n_classes", "task_type", "dbi_features",
                                   "dbi_pixels", "compress_gzip", "compress_png", "entropy",
                                   "n_samples"]
    assert len(props) == 5 and props.drop(columns=["task", "task_type"]).notna().all().all()
    corr = pd.read_parquet(properties_dir / "correlations.parquet")
    assert list(corr.columns[:8]) == ["algorithm", "property", "method", "r", "p_value",
                                      "p_adjusted", "ci_low", "ci_high"]
    assert set(corr.algorithm) == {"dinov2", "mae"} and corr.r.between(-1, 1).all()
    assert run_record(g.outputs, "05_task_properties", properties_id)["data_source"] == \
        "synthetic"
    assert "SYNTHETIC" in (properties_dir / "05_task_properties.html").read_text()


@pytest.mark.slow
def test_killed_grid_resumes_only_the_missing_points(smoke_grid):
    g = smoke_grid
    assert g.killed_at is not None, g.log[-3000:]
    done_then = g.killed_at[(g.killed_at.kind == "point") & (g.killed_at.status == "completed")]
    assert list(done_then.slug) == ["dinov2-nano-all"]  # killed mid-way: mae not yet done
    first = json.loads(done_then.run_ids.iloc[0])
    assert json.loads(g.after.set_index("id").run_ids[done_then.id.iloc[0]]) == first
    tagged = [r for r in (g.outputs / "runs" / "02_pretrain").iterdir()
              if runs.read_record(r).get("grid", {}).get("point") == done_then.id.iloc[0]]
    assert [r.name for r in tagged] == [first["pretrain"]]  # ran once, never again


def local_links(html_text: str) -> list[str]:
    return [link for link in re.findall(r'(?:href|src)="([^"]+)"', html_text)
            if not link.startswith("#")]


@pytest.mark.slow
def test_index_page_links_every_report_and_shows_the_failed_points(smoke_grid):
    g = smoke_grid
    text = (g.outputs / "index.html").read_text()
    links = local_links(text)
    assert links and not [link for link in links if not (g.outputs / unquote(link)).is_file()]
    assert not [link for link in links if link.startswith(("/", "file:", "http"))]
    table = g.after.set_index("id")
    notebooks = {s.name: s.notebook for s in [*g.grid.points[0].steps, *g.grid.analysis]}
    for key, row in table.iterrows():
        for step, run_id in json.loads(row.run_ids).items():
            notebook = notebooks[step]
            assert f"runs/{notebook}/{run_id}/{notebook}.html" in links, key
    scaling_id = json.loads(table.run_ids["04_scaling"])["04_scaling"]
    assert f"runs/04_scaling/{scaling_id}/figures/mean_auc.png" in links
    assert "they are not findings about medical images" in text  # beside the synthetic figure
    rows = re.findall(r"<tr>.*?</tr>", text, re.DOTALL)
    for point in g.grid.points:
        (row,) = [r for r in rows if f">{point.slug}</td>" in r]
        if point.axes["size"] == "broken":
            assert 'class="badge failed"' in row and "max_steps" in row
        else:
            assert 'class="badge completed"' in row and re.search(r"0\.\d{3}", row)  # mean AUC
    probe_id = json.loads(table.run_ids[g.grid.points[0].id])["probe"]
    report = (g.outputs / "runs" / "03_probe" / probe_id / "03_probe.html").read_text()
    assert 'class="biovfm-code"' in report and "data:image/png;base64," in report
    header = report[report.index('class="biovfm-provenance"'):][:3000]
    commit = run_record(g.outputs, "03_probe", probe_id)["git"]["commit"]
    assert "SYNTHETIC" in header and (commit or "unknown") in header and "epochs: 5" in header

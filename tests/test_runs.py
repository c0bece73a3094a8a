import json

import pandas as pd
import pytest

from biovfm_lib import execution, runs
from biovfm_lib.params import ProbeParams


def test_atomic_write_refuses_to_overwrite_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "x.bin"
    runs.atomic_write_bytes(path, b"one")
    with pytest.raises(FileExistsError):
        runs.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"one"
    runs.atomic_write_bytes(path, b"three", overwrite=True)
    assert path.read_bytes() == b"three"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]


def test_write_table_roundtrip_and_no_overwrite(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = runs.write_table(df, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    with pytest.raises(FileExistsError):
        runs.write_table(df, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_run_folders_are_exclusive(isolated_outputs):
    a = runs.create_run_dir("03_probe", {"x": 1})
    b = runs.create_run_dir("03_probe", {"x": 1})
    assert a != b and a.parent == b.parent == isolated_outputs / "runs" / "03_probe"


def test_record_has_provenance_and_updates_merge(isolated_outputs):
    p = ProbeParams.validate_mapping({"epochs": 3})
    run = runs.open_run("03_probe", p)
    rec = runs.read_record(run)
    assert rec["status"] == "running" and rec["parameters"]["epochs"] == 3
    assert set(rec["git"]) == {"commit", "dirty"}
    assert rec["packages"]["torch"] and rec["packages"]["timm"]
    assert "cuda" in rec["device"] and rec["started"]
    runs.update_record(run, data_source="synthetic")
    runs.update_record(run, status="completed")
    rec = json.loads((run / "run.json").read_text())
    assert rec["data_source"] == "synthetic" and rec["status"] == "completed"
    assert runs.open_run("03_probe", p, str(run)) == run
    with pytest.raises(FileNotFoundError, match="run.json"):
        runs.open_run("03_probe", p, str(isolated_outputs / "nowhere"))


def test_collect_results_concatenates_completed_runs(isolated_outputs):
    p = ProbeParams()
    for i, status in enumerate(["completed", "completed", "failed"]):
        run = runs.open_run("03_probe", p)
        runs.write_table(pd.DataFrame({"task": ["t"], "value": [float(i)]}),
                         run / "results.parquet")
        runs.update_record(run, status=status)
    df = runs.collect_results("results")
    assert sorted(df.value) == [0.0, 1.0] and set(df.status) == {"completed"}
    assert list(df.columns[:3]) == ["run_id", "notebook", "status"]
    assert len(runs.collect_results("results", status=None)) == 3
    assert runs.collect_results("nothing").empty


def test_bad_parameters_fail_before_any_run_folder(isolated_outputs):
    with pytest.raises(Exception, match="epochs"):
        execution.execute("03_probe", overrides={"epochs": 0})
    assert not (isolated_outputs / "runs").exists()


def test_unknown_notebook_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="03_probe"):
        runs.notebook_path("99_missing")


def test_outputs_paths_follow_the_outputs_root(isolated_outputs):
    assert runs.resolve("outputs/data/synthetic") == isolated_outputs / "data" / "synthetic"
    assert runs.resolve("params/probe") == runs.project_root() / "params" / "probe"
    assert runs.resolve("/abs/x") == runs.resolve("/abs/x").resolve()


def test_the_run_layer_imports_nothing_above_it() -> None:
    """runs is the bottom of the run/report/execution stack: it may use parameters, never
    reports, grids or execution (which import it)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(runs.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module and node.module.startswith("biovfm_lib")}
    imported |= {f"biovfm_lib.{alias.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module == "biovfm_lib"
                 for alias in node.names}
    assert imported <= {"biovfm_lib.params", "biovfm_lib.yaml_io"}, imported

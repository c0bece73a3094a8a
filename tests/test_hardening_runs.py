"""Run records that cannot lie: a killed run shows as killed, and no run's folder can break
the index page or a grid's summary."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from biovfm_lib import cli, runs
from biovfm_lib.reports import build_index, collect_runs
from tests.test_reports import make_run


def _start_and_kill_a_run(outputs: Path) -> Path:
    """A real process opens a run (as a notebook does) and is SIGKILLed mid-run."""
    code = ("from biovfm_lib import runs\n"
            "d = runs.create_run_dir('03_probe', {})\n"
            "runs.start_record(d, '03_probe', {}, launcher='test')\n"
            "print(d, flush=True)\n"
            "import time; time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "BIOVFM_OUTPUTS": str(outputs)})
    run_dir = Path(proc.stdout.readline().strip())
    assert runs.effective_status(runs.read_record(run_dir)) == "running"  # alive: running
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return run_dir


def test_a_killed_run_shows_as_killed_in_the_index_and_the_listing(isolated_outputs, capsys):
    run_dir = _start_and_kill_a_run(isolated_outputs)
    record = runs.read_record(run_dir)
    assert record["status"] == "running" and record["process"]["pid"] > 0  # as it was left
    assert runs.effective_status(record) == "killed"
    page = build_index().read_text()
    assert 'class="badge killed">killed<' in page
    assert cli.main(["runs"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if run_dir.name in x)
    assert " killed " in line


def test_a_run_elsewhere_or_alive_is_not_called_killed() -> None:
    me = runs.this_process()
    assert runs.effective_status({"status": "running", "process": me}) == "running"
    other = {**me, "host": me["host"] + "-elsewhere"}
    assert runs.effective_status({"status": "running", "process": other}) == "running"
    reused = {**me, "pid_started": me["pid_started"] - 3600}  # same pid, another process
    assert runs.effective_status({"status": "running", "process": reused}) == "killed"
    assert runs.effective_status({"status": "completed", "process": reused}) == "completed"


def test_no_run_folder_can_break_the_index(isolated_outputs, tmp_path) -> None:
    """A probe whose checkpoint sidecar is a JSON list (it made `biovfm report` crash), a
    record that is not a mapping, a record that is not JSON and a results table that is not
    parquet: the page is written, lists the good run and names every bad folder."""
    good = make_run("03_probe", "completed", data_source="synthetic",
                    parameters={"data_root": "outputs/data/synthetic"})
    side = tmp_path / "ckpt.json"
    side.write_text("[1, 2, 3]")
    listed = make_run("03_probe", "completed", data_source="synthetic",
                      parameters={"checkpoint": str(tmp_path / "ckpt.safetensors")})
    bad_field = make_run("02_pretrain", "completed",
                         parameters={"data": "corpus", "data_fraction": "half"})
    not_a_record = make_run("03_probe", "completed")
    (not_a_record / runs.RECORD).write_text("[]")
    not_json = make_run("03_probe", "completed")
    (not_json / runs.RECORD).write_text("{truncated")
    bad_results = make_run("03_probe", "completed")
    (bad_results / "results.parquet").write_bytes(b"not parquet")

    page = build_index().read_text()
    for ok in (good, listed):
        assert ok.name in page
    not_shown = page.split("<h2>Not shown")[1]
    for bad in (bad_field, not_a_record, not_json, bad_results):
        assert bad.name in not_shown
    problems: list = []
    assert {r.run_id for r in collect_runs(problems)} >= {good.name, listed.name}
    assert {p.name for p, _ in problems} == {not_a_record.name, not_json.name, bad_results.name}


def test_the_index_survives_a_broken_grid_folder(isolated_outputs) -> None:
    make_run("03_probe", "completed")
    broken = isolated_outputs / "grids" / "g"
    broken.mkdir(parents=True)
    pd.DataFrame({"x": [1]}).to_parquet(broken / "status.parquet")
    (broken / "grid.json").write_text(json.dumps([1]))
    page = build_index().read_text()
    assert "grids/g" in page.split("<h2>Not shown")[1]


def test_a_held_folder_is_refused_at_once_naming_its_holder(tmp_path) -> None:


    folder = tmp_path / "train"
    code = ("import sys, time\nfrom pathlib import Path\nfrom biovfm_lib import runs\n"
            "with runs.hold_folder(Path(sys.argv[1]), 'training folder'):\n"
            "    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    busy = rf"training folder {folder} is in use by pid {proc.pid} on .+ since 20"
    with pytest.raises(runs.FolderBusy, match=busy), runs.hold_folder(folder, "training folder"):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    took_over = rf"taking over the lock of pid {proc.pid}"
    with pytest.warns(UserWarning, match=took_over) as caught, runs.hold_folder(folder):
        holder = json.loads((folder / runs.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and len(caught) == 1
    assert (folder / runs.LOCK_FILE).read_text() == ""  # released cleanly: nothing to take over


@pytest.mark.slow
def test_a_headless_run_prints_no_kernel_warning_and_its_report_no_paths(tmp_path) -> None:
    """The kernel's 'running over TCP without encryption' line repeated in every grid log, and
    cells ending in save_figure showed ``Out[]: [PosixPath(...)]`` in every report."""
    done = subprocess.run(
        [sys.executable, "-m", "biovfm_lib.cli", "run", "04_scaling", "-f",
         "params/scaling/reference.yaml", "-q"], check=False, capture_output=True, text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "BIOVFM_OUTPUTS": str(tmp_path / "outputs")})
    assert done.returncode == 0, done.stderr
    assert "without encryption" not in done.stdout + done.stderr
    (report,) = (tmp_path / "outputs" / "runs" / "04_scaling").glob("*/04_scaling.html")
    assert "PosixPath" not in report.read_text()

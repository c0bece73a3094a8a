"""The pretraining engine for real: torchrun processes, real SSL steps, kill and resume."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import timm
import torch
from safetensors.torch import load_file

from biovfm_lib.models.checkpoints import load_encoder
from biovfm_lib.params import PretrainParams
from biovfm_lib.train.config import resolve_config, run_name
from biovfm_lib.train.launch import (
    LAUNCHER_PID,
    LaunchError,
    launch,
    prepare,
    slurm_script,
    torchrun_command,
)
from biovfm_lib.train.loop import JsonLog
from biovfm_lib.train.meter import ThroughputMeter, peak_flops
from biovfm_lib.train.report import read_log

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


def smoke(synth, out, **kw) -> PretrainParams:
    base = {"data_root": str(synth), "data": "synthetic", "data_size": 28, "synthetic_scale": 0.01,
                "encoder": "nano", "patch_size": 4, "img_size": 28, "local_size": 12, "n_local": 2, "epochs": 1,
                "max_steps": 4, "batch_size": 8, "num_workers": 0, "checkpoint_every": 2, "log_every": 1,
                "nproc": 1, "out_root": str(out)}
    return PretrainParams.validate_mapping({**base, **kw})


@pytest.mark.parametrize("algorithm", ["dinov2", "mae"])
def test_two_ranks_train_in_lockstep(synth, tmp_path, algorithm):
    result = launch(smoke(synth, tmp_path, algorithm=algorithm, nproc=2), live=False)
    log = read_log(result.log)
    assert log.step.tolist() == [1, 2, 3, 4] and log.loss.notna().all()
    assert (log.replica_divergence == 0).all()  # DDP replicas bit-identical, teacher included
    assert torch.isfinite(torch.tensor(log.grad_norm.values)).all()
    assert "--nproc-per-node=2" in result.command


def test_fsdp_two_ranks_train_and_export(synth, tmp_path):
    result = launch(smoke(synth, tmp_path, strategy="fsdp", nproc=2, max_steps=2), live=False)
    enc = load_encoder(result.export)
    assert enc.format == "biovfm" and enc.meta["algorithm"] == "dinov2"
    assert read_log(result.log).replica_divergence.isna().all()  # sharded: no replicas


def _final(result) -> tuple[float, dict]:
    return read_log(result.log).loss.iloc[-1], load_file(result.export)


def test_killed_run_resumes_to_the_same_result(synth, tmp_path):
    params = {"max_steps": 10, "checkpoint_every": 3}
    loss_a, weights_a = _final(launch(smoke(synth, tmp_path / "a", **params), live=False))

    p = smoke(synth, tmp_path / "b", **params)
    cfg, config = prepare(p)
    proc = subprocess.Popen(torchrun_command(config, 1), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = cfg.dir / "log.jsonl"
    deadline = time.monotonic() + 300
    # step 4 is logged after the checkpoint of step 3 is on disk
    while not (log.exists() and any(json.loads(x)["step"] >= 4
                                    for x in log.read_text().splitlines() if x)):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.2)
    job = psutil.Process(proc.pid)
    for process in [*job.children(recursive=True), job]:  # the whole job, as a scheduler would
        process.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cfg.dir / "export").exists()

    resumed = launch(p, live=False)  # the same command again
    assert "resuming from step" in (cfg.dir / "launch.log").read_text()
    loss_b, weights_b = _final(resumed)
    assert read_log(resumed.log).step.tolist() == list(range(1, 11))
    assert loss_b == loss_a
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_rank_stops_when_its_launcher_dies():
    """A killed kernel or grid must not leave ranks training into a folder that a rerun is
    about to resume (a quiet rank would not even notice its closed output pipe)."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    script = ("import time\n"
              "from biovfm_lib.train.__main__ import stop_with_launcher\n"
              "stop_with_launcher(poll_s=0.05)\nprint('watching', flush=True)\ntime.sleep(600)")
    rank = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, LAUNCHER_PID: str(launcher.pid)})
    assert rank.stdout.readline().strip() == "watching"
    time.sleep(0.5)
    assert rank.poll() is None  # the launcher lives: the rank goes on
    launcher.kill()
    launcher.wait()
    assert rank.wait(timeout=30) == -signal.SIGTERM


def test_export_rebuilds_with_plain_timm(synth, tmp_path):
    result = launch(smoke(synth, tmp_path, algorithm="mae", max_steps=2), live=False)
    sidecar = json.loads(result.export.with_suffix(".json").read_text())
    model = timm.create_model(sidecar["timm_name"], **sidecar["timm_kwargs"])
    model.load_state_dict(load_file(result.export))  # strict
    assert sidecar["algorithm"] == "mae" and sidecar["images_seen"] == 2 * 8
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, model.num_features)
    # finished runs are not trained again
    again = launch(smoke(synth, tmp_path, algorithm="mae", max_steps=2), live=False)
    assert again.export == result.export and len(read_log(again.log)) == 2


def test_what_every_rank_would_fail_on_is_refused_before_launch(synth, tmp_path):
    """A subset smaller than one global batch and a bad ``method`` value used to pass
    validation and end as torchrun's ChildFailedError; now nothing starts or is written."""
    small = smoke(synth, tmp_path, tasks=["breastmnist"], batch_size=64)
    with pytest.raises(ValueError, match=r"has \d+ images, fewer than one global batch of 64 "
                                         r"\(64 per process x 1 processes\)"):
        launch(small, live=False)
    bad_method = smoke(synth, tmp_path, method={"centering": "bogus"})
    with pytest.raises(ValueError, match=r"^method: .*centering"):
        launch(bad_method, live=False)
    assert not any(tmp_path.iterdir())  # no training folder, no config.yaml


def test_a_rank_failure_reports_the_ranks_own_exception_first(synth, tmp_path):
    p = smoke(synth, tmp_path, method={"head_hidden_dim": -1})  # fails building the head
    with pytest.raises(LaunchError) as info:
        launch(p, live=False)
    first = str(info.value).splitlines()[0]
    assert first.startswith("RuntimeError: ") and "negative dimension" in first
    assert "ChildFailedError" not in first and "launch.log" in first


def test_a_second_launch_of_a_running_folder_stops_at_once(synth, tmp_path):
    from biovfm_lib.runs import FolderBusy

    p = smoke(synth, tmp_path, max_steps=400, checkpoint_every=1000)
    code = ("import sys, json\nfrom biovfm_lib.params import PretrainParams\n"
            "from biovfm_lib.train.launch import launch\n"
            "launch(PretrainParams.validate_mapping(json.loads(sys.argv[1])), live=False)\n")
    first = subprocess.Popen([sys.executable, "-c", code, json.dumps(p.as_dict())],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        lock = resolve_config(p).dir / ".lock"
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        start = time.time()
        with pytest.raises(FolderBusy, match=rf"in use by pid {first.pid} on "):
            launch(p, live=False)
        assert time.time() - start < 30  # at once, not after its compute
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)


def test_run_names_key_on_what_is_learned(synth, tmp_path):
    p = smoke(synth, tmp_path)
    assert run_name(p) == run_name(smoke(synth, tmp_path / "x", num_workers=3, log_every=5))
    assert run_name(p) != run_name(smoke(synth, tmp_path, method={"base_lr": 0.1}))
    assert run_name(p).startswith("dinov2-nano-f1-")
    assert resolve_config(smoke(synth, tmp_path, encoder="large")).strategy == "fsdp"
    assert resolve_config(p).strategy == "ddp"


def test_a_named_folder_refuses_a_run_with_other_parameters(synth, tmp_path):
    prepare(smoke(synth, tmp_path, name="mine"))
    prepare(smoke(synth, tmp_path, name="mine", num_workers=2))  # execution only: fine
    with pytest.raises(ValueError, match=r"max_steps: 4 -> 9"):
        prepare(smoke(synth, tmp_path, name="mine", max_steps=9))


def test_slurm_script_runs_torchrun_on_every_node(synth, tmp_path):
    p = smoke(synth, tmp_path, nnodes=2, nproc=8, launcher="slurm",
              slurm={"partition": "gpu", "time": "48:00:00"})
    cfg = resolve_config(p)
    script = slurm_script(p, cfg, cfg.dir / "config.yaml")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=48:00:00" in script
    assert "srun " in script and "--nnodes=2" in script and "--nproc-per-node=8" in script
    assert '--rdzv-endpoint="$MASTER_ADDR:29500"' in script and "--rdzv-backend=c10d" in script


def test_log_drops_lines_past_the_resumed_step(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    JsonLog(path, resume_step=3).write({"step": 4})
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_meter_reports_mfu_only_against_a_known_peak():
    meter = ThroughputMeter(flops_per_sample=1e9, world_size=2, device=torch.device("cpu"))
    meter.update(10)
    out = meter.read()
    assert out["images_per_s"] > 0 and out["mfu"] is None
    assert peak_flops(torch.device("cpu")) is None

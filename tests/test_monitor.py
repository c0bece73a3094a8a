"""The online kNN monitor: the probe's features, honest scores, and no trace on training."""
import json
import random
import signal
import subprocess
import time
import zipfile

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

from biovfm_lib.data.medmnist import load_task, sample_split
from biovfm_lib.params import ParamError, PretrainParams
from biovfm_lib.train.config import monitor_settings, resolve_config, run_name
from biovfm_lib.train.distributed import DistEnv
from biovfm_lib.train.launch import launch, prepare, torchrun_command
from biovfm_lib.train.loop import build_method
from biovfm_lib.train.monitor import OnlineMonitor, knn_metrics, pooled_features
from biovfm_lib.train.report import monitor_share, plot_log, read_log, read_monitor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = ["pathmnist", "chestmnist", "breastmnist"]  # multi-class, multi-label, binary
CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


def smoke(synth, out, **kw) -> PretrainParams:
    base = {"data_root": str(synth), "data": "synthetic", "data_size": 28,
            "synthetic_scale": 0.01, "tasks": TASKS, "encoder": "nano", "patch_size": 4,
            "img_size": 28, "local_size": 12, "n_local": 2, "epochs": 1, "max_steps": 4,
            "batch_size": 8, "num_workers": 0, "checkpoint_every": 2, "log_every": 1,
            "nproc": 1, "out_root": str(out), "monitor_samples": [40, 20], "monitor_k": 5}
    return PretrainParams.validate_mapping({**base, **kw})


def test_features_are_the_probes():
    """Re-expressed below the probe (train must not import it); the two must not drift."""
    from biovfm_lib.models.factory import create_vit
    from biovfm_lib.probe.features import encode

    vit = create_vit("nano", 4, img_size=28).eval()
    x = torch.randn(5, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(pooled_features(vit, x), encode(vit, x, "mean_patch"))


def test_knn_metrics_by_hand():
    from sklearn.metrics import roc_auc_score

    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    labels = np.array([[0], [1], [2], [2]])
    acc, auc = knn_metrics(scores, labels, multilabel=False)
    # argmax 0, 1, 0, 2: 3 of 4; ovr AUCs: class 0 1.0, class 1 1.0, class 2 0.75
    assert acc == 0.75 and auc == pytest.approx((1 + 1 + 0.75) / 3)
    assert auc == pytest.approx(roc_auc_score(labels[:, 0], scores, multi_class="ovr"))
    binary = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    acc, auc = knn_metrics(binary, np.array([[0], [0], [1]]), multilabel=False)
    assert acc == pytest.approx(2 / 3) and auc == 1.0  # the binary AUC of the positive column
    multi = np.array([[0.8, 0.1], [0.2, 0.9], [0.6, 0.4]])
    acc, auc = knn_metrics(multi, np.array([[1, 0], [0, 1], [0, 0]]), multilabel=True)
    # threshold 0.5: (1,0) (0,1) (1,0) against the truth: 5 of 6 entries; AUCs 1.0 and 1.0
    assert acc == pytest.approx(5 / 6) and auc == 1.0
    _, auc = knn_metrics(multi, np.array([[1, 0], [1, 0], [1, 0]]), multilabel=True)
    assert auc is None  # neither label holds both values


def test_samples_read_only_the_drawn_rows_stored_or_compressed(synth, tmp_path):
    resolve_config(smoke(synth, tmp_path / "out"))  # writes the synthetic files
    data = load_task("pathmnist", synth, 28)
    n = len(data.labels["train"])
    rows = np.sort(np.random.default_rng(7).choice(n, 30, replace=False))
    images, labels = sample_split("pathmnist", synth, 28, "train", 30, seed=7)
    assert np.array_equal(images, data.images["train"][rows])
    assert np.array_equal(labels, data.labels["train"][rows])
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "biovfm_synthetic.json").write_bytes((synth / "biovfm_synthetic.json").read_bytes())
    with zipfile.ZipFile(synth / "pathmnist.npz") as src, \
            zipfile.ZipFile(packed / "pathmnist.npz", "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    again, _ = sample_split("pathmnist", packed, 28, "train", 30, seed=7)
    assert np.array_equal(again, images)
    everything, _ = sample_split("pathmnist", synth, 28, "val", 10 ** 6, seed=0)
    assert np.array_equal(everything, data.images["val"])  # a split smaller than n: all of it


def test_monitor_draws_no_random_numbers_and_leaves_the_model_alone(synth, tmp_path):
    p = smoke(synth, tmp_path, monitor_every=2)
    cfg = resolve_config(p)
    method, _ = build_method(cfg, 8, 4)
    method.train()
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    monitor = OnlineMonitor(method, cfg.monitor, CPU, bf16=False, img_size=28, seed=0)
    first, second = monitor(0), monitor(0)
    assert (torch.equal(before[0], torch.get_rng_state())
            and np.array_equal(before[1], np.random.get_state()[1])
            and before[2] == random.getstate())
    assert method.training and method.teacher.training  # the live modules' mode is untouched
    assert first["monitor"] == second["monitor"]  # fixed samples, same weights: same scores
    assert set(first["monitor"]) == set(TASKS) and first["monitor_s"] > 0
    for scores in first["monitor"].values():
        assert 0 <= scores["knn_acc"] <= 1 and 0 <= scores["knn_auc"] <= 1
    with torch.no_grad():  # new teacher weights: the copy follows them
        gen = torch.Generator().manual_seed(1)
        for param in method.teacher.backbone.vit.parameters():
            param.add_(torch.randn(param.shape, generator=gen))
    assert monitor(0)["monitor"] != first["monitor"]


def test_bad_monitor_parameters_name_the_key(synth, tmp_path):
    for bad, key in [({"monitor_samples": [100]}, "monitor_samples"),
                     ({"monitor_tasks": ["mnist"]}, "monitor_tasks"),
                     ({"monitor_data_size": 32}, "monitor_data_size"),
                     ({"monitor_k": 50}, "monitor_k")]:
        with pytest.raises(ParamError, match=key):
            smoke(synth, tmp_path, **bad)


def test_monitor_settings_resolve_and_do_not_name_the_run(synth, tmp_path):
    on = smoke(synth, tmp_path, monitor_every=5)
    assert run_name(on) == run_name(smoke(synth, tmp_path))  # it changes nothing learned
    assert resolve_config(on).monitor == {"tasks": TASKS[:3], "root": str(synth), "size": 28,
                                          "n_train": 40, "n_query": 20, "k": 5}
    corpus = PretrainParams.validate_mapping({"data": "corpus", "monitor_every": 5})
    assert monitor_settings(corpus)["root"].endswith("outputs/data/medmnist")
    assert monitor_settings(corpus)["tasks"] == ["pathmnist", "chestmnist", "dermamnist"]


def test_missing_monitor_data_stops_the_launch_in_one_line(synth, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    p = smoke(synth, out, monitor_every=2, monitor_data_root=str(empty))
    with pytest.raises(ValueError, match=r"^monitor \(monitor_every: 2\): MedMNIST file .*"
                                         r"pathmnist\.npz not found.*monitor_every: 0$"):
        launch(p, live=False)
    other = smoke(synth, out, monitor_every=2, monitor_tasks=["dermamnist"])  # never written
    with pytest.raises(ValueError, match=r"dermamnist\.npz not found") as info:
        launch(other, live=False)
    assert "\n" not in str(info.value)
    few = smoke(synth, out, monitor_every=2, monitor_k=40)  # breastmnist: fewer train images
    with pytest.raises(ValueError, match=r"^monitor_k: 40 neighbours, but .*breastmnist\.npz "
                                         r"holds \d+ train images"):
        launch(few, live=False)
    assert not out.exists()  # refused before anything was written


def _kill_after(p: PretrainParams, step: int) -> None:
    """Start a run and kill its whole job once ``step`` is logged (as a scheduler would)."""
    cfg, config = prepare(p)
    proc = subprocess.Popen(torchrun_command(config, 1), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = cfg.dir / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and any(json.loads(x)["step"] >= step
                                    for x in log.read_text().splitlines() if x)):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.2)
    job = psutil.Process(proc.pid)
    for process in [*job.children(recursive=True), job]:
        process.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cfg.dir / "export").exists()


@pytest.mark.slow
def test_monitor_changes_nothing_and_a_monitored_run_resumes_bit_identically(synth, tmp_path):
    steps = {"max_steps": 8, "checkpoint_every": 3}
    plain = launch(smoke(synth, tmp_path / "plain", **steps), live=False)
    watched = launch(smoke(synth, tmp_path / "watched", monitor_every=2, **steps), live=False)
    p = smoke(synth, tmp_path / "resumed", monitor_every=2, **steps)
    _kill_after(p, 4)  # step 4 is logged after the checkpoint of step 3 is on disk
    resumed = launch(p, live=False)
    assert "resuming from step 3" in (resumed.train_dir / "launch.log").read_text()

    weights = [load_file(r.export) for r in (plain, watched, resumed)]
    assert all(w.keys() == weights[0].keys() for w in weights)
    assert all(torch.equal(w[k], weights[0][k]) for w in weights[1:] for k in w)
    losses = [read_log(r.log).loss.tolist() for r in (plain, watched, resumed)]
    assert losses[0] == losses[1] == losses[2] and len(losses[0]) == 8

    a, b = read_monitor(watched.log), read_monitor(resumed.log)
    assert sorted(set(a.step)) == [0, 2, 4, 6, 8] and set(a.task) == set(TASKS)
    cols = ["step", "task", "knn_acc", "knn_auc"]
    assert a[cols].equals(b[cols])  # the same backbone at each step: the same scores
    assert "online kNN monitor: pathmnist, chestmnist, breastmnist" in \
        (watched.train_dir / "launch.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_monitor_on_rank_0_from_the_full_weights(synth, tmp_path, strategy):
    """Under FSDP every rank joins the gather; at step 0 the weights are the seed's, so rank
    0's scores must equal a single process's: a partial or misordered gather would not."""
    two = launch(smoke(synth, tmp_path / "two", strategy=strategy, nproc=2, max_steps=2,
                       monitor_every=1), live=False)
    one = launch(smoke(synth, tmp_path / "one", max_steps=1, monitor_every=1), live=False)
    a, b = read_monitor(two.log), read_monitor(one.log)
    assert a.step.tolist() == [s for s in (0, 1, 2) for _ in TASKS]  # one record a step
    cols = ["task", "knn_acc", "knn_auc"]
    assert a[a.step == 0][cols].reset_index(drop=True).equals(
        b[b.step == 0][cols].reset_index(drop=True))


def test_curves_show_the_monitor_beside_the_loss(tmp_path):
    path = tmp_path / "log.jsonl"
    records = [{"step": 0, "monitor": {"pathmnist": {"knn_acc": 0.2, "knn_auc": 0.5}},
                "monitor_s": 2.0, "time": 102.0}]
    for step in (1, 2):
        records.append({"step": step, "loss": 3.0 - step, "lr": 0.1, "images_per_s": 5.0,
                        "mfu": None, "time": 102.0 + 4 * step})
        records.append({"step": step, "monitor": {"pathmnist": {"knn_acc": 0.2 + step / 10,
                                                                "knn_auc": None}},
                        "monitor_s": 1.0, "time": 103.0 + 4 * step})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    log, monitor = read_log(path), read_monitor(path)
    assert log.step.tolist() == [1, 2] and log.loss.notna().all()
    assert monitor.step.tolist() == [0, 1, 2] and monitor.knn_auc.isna().tolist()[1:] == [1, 1]
    assert monitor_share(log, monitor) == pytest.approx(4.0 / (111.0 - 100.0))
    axes = plot_log(log, monitor).axes
    assert len(axes) == 4 and axes[1].get_title().startswith("online kNN")
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records if "loss" in r))
    assert read_monitor(plain).empty
    assert len(plot_log(read_log(plain), read_monitor(plain)).axes) == 3

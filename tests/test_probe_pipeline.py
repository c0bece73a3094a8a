"""The probe end to end on synthetic MedMNIST-format data (real medmnist loading code)."""
import numpy as np
import pandas as pd
import pytest
import torch
from medmnist.evaluator import getAUC

from biovfm_lib import runs
from biovfm_lib.models.checkpoints import export_backbone
from biovfm_lib.params import ProbeParams
from biovfm_lib.probe.metrics import METRICS
from biovfm_lib.probe.pipeline import RESULT_COLUMNS, build_encoder, run_probe
from biovfm_lib.probe.scoring import absence_note
from biovfm_lib.probe.thresholds import choose_thresholds

TASKS = ["dermamnist", "chestmnist", "breastmnist"]  # multi-class, multi-label, binary


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


def params(data_root, cache, **kw):
    base = {"data_root": str(data_root), "data": "synthetic", "size": 28, "encoder": "nano",
                "tasks": TASKS, "epochs": 4, "lrs": [0.01, 0.001], "bootstrap": 50, "device": "cpu",
                "cache_dir": str(cache), "protocol": "cached"}
    return ProbeParams.validate_mapping({**base, **kw})


def probe(p):
    return run_probe(p, runs.open_run("03_probe", p))


def test_results_table_is_complete_and_consistent(data_root, tmp_path):
    p = params(data_root, tmp_path / "cache")
    report = probe(p)
    df = report.results
    assert list(df.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(df) == len(TASKS) * len(METRICS) * 2 and report.data_source == "synthetic"
    assert set(df.metric) == set(METRICS) and set(df.split) == {"val", "test"}
    assert df.encoder.eq("nano").all() and df.checkpoint.eq("").all()
    bounded = df[df.metric != "mcc"]
    assert bounded.value.between(0, 1).all() and df.value.between(-1, 1).all()
    assert (df.ci_low <= df.value + 1e-12).all() and (df.value <= df.ci_high + 1e-12).all()
    # the stored predictions reproduce the table's AUC through medmnist's own evaluator
    run_dir = next((runs.outputs_root() / "runs" / "03_probe").iterdir())
    stored = pd.read_parquet(run_dir / "results.parquet")
    for flag, task_type in [("dermamnist", "multi-class"), ("chestmnist",
                            "multi-label, binary-class"), ("breastmnist", "binary-class")]:
        pred = np.load(run_dir / "predictions" / f"{flag}.npz")
        auc = stored.query("task == @flag and split == 'test' and metric == 'auc'").value.item()
        assert auc == pytest.approx(getAUC(pred["test_labels"], pred["test_scores"], task_type))
    assert len(np.load(run_dir / "predictions" / "chestmnist.npz")["thresholds"]) == 14
    # study-exact by default: its threshold search, its interval rule and the replicate mean
    assert df.threshold_rule.eq("study").all() and df.ci_rule.eq("study").all()
    pred = np.load(run_dir / "predictions" / "breastmnist.npz")
    np.testing.assert_array_equal(pred["thresholds"], choose_thresholds(
        pred["val_labels"], pred["val_scores"], "binary-class", rule="study"))
    assert (df.boot_mean.between(df.ci_low, df.ci_high)).all()
    assert (df.boot_mean == df.boot_mean.round(4)).all() and df.note.eq("").all()
    hist = pd.read_parquet(run_dir / "history.parquet")
    assert len(hist) == len(TASKS) * 4 * 2


def test_cached_features_are_reused_and_results_reproduce(data_root, tmp_path):
    p = params(data_root, tmp_path / "cache", tasks=["dermamnist"])
    first = probe(p).results
    files = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("*.npy")}
    assert len(files) == 3  # train, val, test
    second = probe(p).results
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("*.npy")} == files
    pd.testing.assert_frame_equal(first, second)


def test_official_protocol_augments_training_images(data_root, tmp_path):
    p = params(data_root, tmp_path / "cache", tasks=["breastmnist"], protocol="official",
               epochs=2, lrs=[0.01], batch_size=32)
    report = probe(p)
    assert len(report.results) == len(METRICS) * 2 and report.results.protocol.eq("official").all()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # val and test only


def test_an_exported_checkpoint_probes_like_the_model_it_came_from(data_root, tmp_path):
    p_random = params(data_root, tmp_path / "c1", tasks=["dermamnist"], seed=3)
    enc, _ = build_encoder(p_random)
    weights, _ = export_backbone(enc.model, enc.spec, tmp_path / "ckpt" / "nano",
                                 algorithm="random", size="nano")
    p_ckpt = params(data_root, tmp_path / "c2", tasks=["dermamnist"], seed=3,
                    checkpoint=str(weights))
    a, b = probe(p_random).results, probe(p_ckpt).results
    assert b.checkpoint.eq(str(weights)).all() and b.encoder.eq("nano").all()
    np.testing.assert_allclose(a.value, b.value, atol=1e-6)


def test_missing_real_files_fail_before_any_compute(tmp_path):
    p = ProbeParams.validate_mapping({"data_root": str(tmp_path / "empty"), "size": 28,
                                          "encoder": "nano", "device": "cpu"})
    run = runs.open_run("03_probe", p)
    with pytest.raises(FileNotFoundError, match="pathmnist.npz"):
        run_probe(p, run)
    assert not (run / "results.parquet").exists()


def test_random_encoders_are_reproducible_from_the_seed():
    p = ProbeParams.validate_mapping({"encoder": "nano", "size": 28, "seed": 5})
    a, _ = build_encoder(p)
    b, _ = build_encoder(p)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    assert not any(t.requires_grad for t in a.model.parameters())


def test_a_split_missing_a_class_says_so_in_its_rows() -> None:
    assert absence_note([], "test") == ""
    note = absence_note([3, 4], "test")
    assert "class 3, 4 absent from test" in note and "NaN" in note

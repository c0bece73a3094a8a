"""The synthetic MedMNIST generator: format fidelity, bookkeeping, and learnable structure."""
from __future__ import annotations

import gzip
import json

import medmnist
import numpy as np
import pytest
from medmnist.evaluator import getAUC
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from biovfm_lib.data import synthetic
from biovfm_lib.data.synthetic import (
    MIN_PER_CLASS,
    SYNTHETIC_MARKER,
    TASKS,
    data_kind,
    synthetic_info,
    write_synthetic,
)

SPLITS = ("train", "val", "test")
KEYS = {f"{s}_{k}" for s in SPLITS for k in ("images", "labels")}
MULTI_LABEL = "multi-label, binary-class"


def dataset(flag: str, split: str, root, size: int = 28):
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    return cls(split=split, root=str(root), size=size)


def expected_sizes(flag: str, scale: float) -> dict[str, int]:
    info = medmnist.INFO[flag]
    floor = MIN_PER_CLASS * len(info["label"])
    return {s: max(round(info["n_samples"][s] * scale), floor) for s in SPLITS}


@pytest.fixture(scope="module")
def root28(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth28")
    paths = write_synthetic(root, size=28, scale=0.02, seed=0)
    assert [p.name for p in paths] == [f"{flag}.npz" for flag in TASKS]
    return root


@pytest.mark.parametrize("flag", TASKS)
def test_files_load_through_medmnist_classes(root28, flag):
    info = medmnist.INFO[flag]
    n_labels = len(info["label"])
    assert set(np.load(root28 / f"{flag}.npz").files) == KEYS
    for split, n in expected_sizes(flag, 0.02).items():
        ds = dataset(flag, split, root28)
        imgs, labels = ds.imgs, ds.labels
        assert imgs.dtype == np.uint8 and labels.dtype == np.uint8
        assert imgs.shape == ((n, 28, 28) if info["n_channels"] == 1 else (n, 28, 28, 3))
        assert imgs.min() < 40 and imgs.max() > 200, "images should use the 8-bit range"
        img, target = ds[0]
        assert img.size == (28, 28) and img.mode == ("L" if info["n_channels"] == 1 else "RGB")
        if info["task"] == MULTI_LABEL:
            assert labels.shape == (n, n_labels) and set(np.unique(labels)) == {0, 1}
            assert target.shape == (n_labels,)
        else:
            assert labels.shape == (n, 1) and labels.max() < n_labels
            assert target.shape == (1,)


@pytest.mark.parametrize("flag", TASKS)
def test_splits_follow_info_and_hold_every_class(root28, flag):
    info = medmnist.INFO[flag]
    n_labels = len(info["label"])
    got = {s: len(dataset(flag, s, root28).labels) for s in SPLITS}
    assert got == expected_sizes(flag, 0.02)
    if min(round(info["n_samples"][s] * 0.02) for s in SPLITS) >= MIN_PER_CLASS * n_labels:
        share = np.array([got[s] for s in SPLITS]) / sum(got.values())
        want = np.array([info["n_samples"][s] for s in SPLITS]) / sum(info["n_samples"].values())
        np.testing.assert_allclose(share, want, atol=0.01)
    for split in SPLITS:
        labels = dataset(flag, split, root28).labels
        if info["task"] == MULTI_LABEL:
            assert (labels.max(0) == 1).all() and (labels.min(0) == 0).all(), split
        else:
            assert set(labels[:, 0]) == set(range(n_labels)), split


def test_same_seed_is_byte_identical_other_seed_differs(root28, tmp_path):
    tasks = ["pathmnist", "chestmnist", "retinamnist"]
    again = write_synthetic(tmp_path / "same", tasks=tasks, seed=0)
    other = write_synthetic(tmp_path / "other", tasks=tasks, seed=1)
    for same, diff in zip(again, other):
        assert same.read_bytes() == (root28 / same.name).read_bytes()
        a, b = np.load(same), np.load(diff)
        assert not np.array_equal(a["train_images"], b["train_images"])
        assert not np.array_equal(a["train_labels"], b["train_labels"])


def test_a_sample_is_the_same_picture_at_every_size(root28, tmp_path):
    (path,) = write_synthetic(tmp_path, size=64, tasks=["organamnist"])
    small, big = np.load(root28 / "organamnist.npz"), np.load(path)
    np.testing.assert_array_equal(small["test_labels"], big["test_labels"])
    down = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BOX))
                     for im in big["test_images"]]).astype(float)
    ref = small["test_images"].astype(float)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(down, ref)]
    assert np.median(corr) > 0.9


def test_marker_records_and_merges(root28, tmp_path):
    info = synthetic_info(root28)
    assert info == json.loads((root28 / SYNTHETIC_MARKER).read_text())
    assert info["synthetic"] is True and "not medical data" in info["note"]
    assert (info["version"], info["seed"], info["scale"]) == (synthetic.GENERATOR_VERSION, 0,
                                                             0.02)
    assert info["tasks"] == list(TASKS) and info["sizes"] == [28]
    assert info["files"]["chestmnist.npz"] == {
        "task": "chestmnist", "size": 28, "n_samples": expected_sizes("chestmnist", 0.02)}
    assert synthetic_info(tmp_path) is None  # a folder of real files has no marker

    write_synthetic(tmp_path, tasks=["breastmnist"])
    write_synthetic(tmp_path, size=64, tasks=["dermamnist"])
    info = synthetic_info(tmp_path)
    assert info["tasks"] == ["dermamnist", "breastmnist"] and info["sizes"] == [28, 64]
    assert set(info["files"]) == {"breastmnist.npz", "dermamnist_64.npz"}


def test_rewrite_is_idempotent_and_interruptions_leave_no_file(tmp_path, monkeypatch):
    (path,) = write_synthetic(tmp_path, tasks=["breastmnist"])
    stamp = path.stat()
    assert write_synthetic(tmp_path, tasks=["breastmnist"], progress=True) == [path]
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_render", crash)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path, tasks=["breastmnist", "pneumoniamnist"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["breastmnist.npz", SYNTHETIC_MARKER])
    monkeypatch.undo()
    (path,) = write_synthetic(tmp_path, tasks=["pneumoniamnist"])
    assert len(dataset("pneumoniamnist", "train", tmp_path).imgs) == \
        expected_sizes("pneumoniamnist", 0.02)["train"]


def test_a_folder_keeps_one_configuration_and_no_real_files(tmp_path):
    write_synthetic(tmp_path / "synth", tasks=["breastmnist"])
    with pytest.raises(ValueError, match="'seed': 1"):
        write_synthetic(tmp_path / "synth", tasks=["breastmnist"], seed=1)
    real = tmp_path / "real"
    real.mkdir()
    (real / "breastmnist.npz").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="breastmnist.npz"):
        write_synthetic(real, tasks=["bloodmnist"])
    assert (real / "breastmnist.npz").read_bytes() == b"real data"
    assert synthetic_info(real) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tasks": ["pathmnist", "foomnist"]}, "foomnist"),
    ({"tasks": ["organmnist3d"]}, "organmnist3d"),
    ({"size": 32}, "size 32"),
    ({"size": 64.0}, "size 64.0"),
    ({"scale": 0}, "scale 0"),
    ({"scale": 1.5}, "scale 1.5"),
    ({"seed": -1}, "seed -1"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic(tmp_path / "synth", **kwargs)
    assert not (tmp_path / "synth").exists()


@pytest.mark.parametrize("flag", ["pathmnist", "chestmnist", "breastmnist", "retinamnist"])
def test_evaluator_reads_the_labels(root28, flag):
    evaluator = medmnist.Evaluator(flag, "test", size=28, root=str(root28))
    labels = np.load(root28 / f"{flag}.npz")["test_labels"]
    np.testing.assert_array_equal(evaluator.labels, labels)
    n_labels = len(medmnist.INFO[flag]["label"])
    perfect = (labels.astype(float) if labels.shape[1] > 1
               else np.eye(n_labels)[labels[:, 0]])
    assert evaluator.evaluate(perfect).AUC == pytest.approx(1.0)


def test_full_scale_matches_official_counts(tmp_path):
    write_synthetic(tmp_path, scale=1.0, tasks=["breastmnist"])
    for split in SPLITS:  # len() asserts the INFO count, which only holds at scale 1
        assert len(dataset("breastmnist", split, tmp_path)) == \
            medmnist.INFO["breastmnist"]["n_samples"][split]


def pixel_probe_auc(path, task: str) -> float:
    """Test AUC of a logistic regression on 7x7-pooled pixels: a stand-in for a frozen-feature
    linear probe that needs no network weights."""
    data = np.load(path)

    def features(imgs):
        x = imgs.astype(np.float32).reshape(len(imgs), 7, 4, 7, 4, -1) / 255
        return x.mean((2, 4)).reshape(len(imgs), -1)

    x_eval = np.concatenate([data["val_images"], data["test_images"]])
    y_eval = np.concatenate([data["val_labels"], data["test_labels"]])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
    # one BLAS thread: on these small problems, threading made the fits ~50x slower here
    with threadpool_limits(1):
        if task == MULTI_LABEL:
            fit = OneVsRestClassifier(model).fit(features(data["train_images"]),
                                                 data["train_labels"])
        else:
            fit = model.fit(features(data["train_images"]), data["train_labels"][:, 0])
        return getAUC(y_eval, fit.predict_proba(features(x_eval)), task)


def test_tasks_are_learnable_but_not_trivial(tmp_path):
    aucs = {}
    for flag in TASKS:
        info = medmnist.INFO[flag]
        scale = min(1.0, 800 / info["n_samples"]["train"])  # ~800 training images per task
        (path,) = write_synthetic(tmp_path / flag, scale=scale, tasks=[flag])
        aucs[flag] = pixel_probe_auc(path, info["task"])
    print("\n" + "\n".join(f"{flag:16s} AUC {auc:.3f}" for flag, auc in aucs.items()))
    values = np.array(list(aucs.values()))
    assert values.mean() > 0.75, aucs
    assert values.min() > 0.55, aucs  # every task carries signal
    assert (values < 0.9).sum() >= 3, aucs  # several leave clear headroom
    assert values.max() - values.min() > 0.2, aucs  # difficulty differs between tasks


def test_compressibility_differs_between_tasks(root28):
    ratios = {}
    for flag in TASKS:
        raw = np.load(root28 / f"{flag}.npz")["train_images"][:200].tobytes()
        ratios[flag] = len(gzip.compress(raw)) / len(raw)
    values = np.array(list(ratios.values()))
    assert values.max() - values.min() > 0.15, ratios
    assert len(np.unique(values.round(2))) >= 8, ratios


def test_data_kind_of_several_folders(root28, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    assert data_kind({"s": root28}) == ("synthetic", ["s"])
    assert data_kind({"r": real, "s": root28}) == ("mixed", ["s"])
    assert data_kind({"r": real}) == ("real", [])

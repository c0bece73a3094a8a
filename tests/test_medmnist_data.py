import numpy as np
import pytest

from biovfm_lib.data.medmnist import (
    MedMNISTFileError,
    MedMNISTFormatError,
    check_file,
    file_md5,
    load_task,
)
from biovfm_lib.data.synthetic import SYNTHETIC_MARKER, write_synthetic


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, size=28, scale=0.01, seed=0, tasks=["chestmnist", "dermamnist"])
    return root


def test_load_task_goes_through_the_medmnist_classes(synth_root):
    data = load_task("dermamnist", synth_root, size=28)
    assert data.task == "multi-class" and data.n_classes == 7 and data.n_channels == 3
    assert data.images["train"].shape[1:] == (28, 28, 3) and data.synthetic
    assert data.labels["val"].shape[1] == 1
    chest = load_task("chestmnist", synth_root, size=28)
    assert chest.multilabel and chest.labels["test"].shape[1] == 14
    assert chest.images["test"].ndim == 3


def test_load_task_reads_only_the_splits_asked_for(synth_root):
    full = load_task("dermamnist", synth_root, size=28)
    test = load_task("dermamnist", synth_root, size=28, splits=("test",))
    assert set(test.images) == set(test.labels) == {"test"}
    assert np.array_equal(test.images["test"], full.images["test"])
    assert np.array_equal(test.labels["test"], full.labels["test"])


def test_missing_file_says_where_and_how(tmp_path):
    with pytest.raises(MedMNISTFileError) as err:
        check_file(tmp_path, "pathmnist", 224)
    msg = str(err.value)
    assert "pathmnist_224.npz" in msg and str(tmp_path) in msg
    assert "biovfm data medmnist --download --size 224" in msg and "MD5" in msg


def test_real_files_are_held_to_info(tmp_path, synth_root):
    real = tmp_path / "real"
    real.mkdir()
    (real / "dermamnist.npz").write_bytes((synth_root / "dermamnist.npz").read_bytes())
    assert not (real / SYNTHETIC_MARKER).exists()  # looks like a real download, at 1% size
    with pytest.raises(MedMNISTFormatError, match=r"expected 7007 \(medmnist.INFO\)"):
        check_file(real, "dermamnist", 28)
    assert len(file_md5(real / "dermamnist.npz")) == 32
    # the MD5 check of a file that passes INFO's checks: tests/test_hardening_data.py


def test_unknown_flag():
    with pytest.raises(ValueError, match="unknown MedMNIST flag"):
        check_file(".", "mnist", 28)


def test_labels_are_medmnist_shaped(synth_root):
    data = load_task("dermamnist", synth_root, size=28)
    for split in ("train", "val", "test"):
        assert data.labels[split].dtype == np.uint8
        assert len(data.labels[split]) == len(data.images[split])

"""Issue 12, items 1, 8, 17, 18: bad data never gives a silent wrong number or a nameless error.

Each bad case asserts that the error (or warning) is one line naming the file or entry and
what is wrong, and that nothing written before the failure changed.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from biovfm_lib import cli, runs
from biovfm_lib.data.medmnist import (
    MedMNISTChecksumError,
    MedMNISTFileError,
    MedMNISTFormatError,
    check_file,
    load_task,
    prepare_tasks,
)
from biovfm_lib.data.synthetic import SYNTHETIC_MARKER, write_synthetic
from biovfm_lib.params import ProbeParams
from biovfm_lib.probe.features import FeatureCache
from biovfm_lib.probe.pipeline import build_encoder, cached_features

CPU = torch.device("cpu")
FLAG = "breastmnist"  # binary, grey, 546/78/156 samples: the smallest task


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, size=28, scale=0.05, seed=0, tasks=[FLAG])
    return root


@pytest.fixture(scope="module")
def full_scale(tmp_path_factory) -> Path:
    """A marker-less folder holding a file with the official counts: it looks like a real
    download in every respect but its MD5."""
    synth = tmp_path_factory.mktemp("full")
    write_synthetic(synth, size=28, scale=1.0, seed=0, tasks=[FLAG])
    real = tmp_path_factory.mktemp("real")
    shutil.copy(synth / f"{FLAG}.npz", real / f"{FLAG}.npz")
    return real


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def npz_bytes(members: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


# ------------------------------------------------------------------- 1: the feature cache
@pytest.fixture
def cache_run(synth, tmp_path):
    p = ProbeParams.validate_mapping({
        "data_root": str(synth), "data": "synthetic", "size": 28, "encoder": "nano",
        "tasks": [FLAG], "device": "cpu", "cache_dir": str(tmp_path / "cache"),
        "protocol": "cached", "precision": "fp32"})
    data = load_task(FLAG, synth, 28)
    enc, identity = build_encoder(p)
    cache = FeatureCache(tmp_path / "cache")

    def features() -> np.ndarray:
        return cached_features(enc, identity, data, "test", p, CPU, cache)

    fresh = features()
    (entry,) = cache.root.glob("*.npy")
    return features, fresh, entry, cache


def _truncate(entry: Path, fresh: np.ndarray, cache: FeatureCache) -> None:
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def _zero(entry: Path, fresh: np.ndarray, cache: FeatureCache) -> None:
    np.save(entry, np.zeros_like(fresh))  # a valid .npy of the right shape, all zeros


def _three_rows(entry: Path, fresh: np.ndarray, cache: FeatureCache) -> None:
    cache.put(entry.stem, fresh[:3])  # consistent with its own checksum, but too short


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "checksum"), (_zero, "checksum"), (_three_rows, "3 rows, expected"),
])
def test_a_damaged_cache_entry_is_named_discarded_and_recomputed(cache_run, damage, reason):
    features, fresh, entry, cache = cache_run
    damage(entry, fresh, cache)
    with pytest.warns(UserWarning) as caught:
        again = features()
    (warning,) = [w for w in caught if "feature cache" in str(w.message)]
    msg = str(warning.message)
    assert str(entry) in msg and reason in msg and "recomput" in msg and "\n" not in msg
    np.testing.assert_array_equal(again, fresh)
    with warnings.catch_warnings():  # the recomputed entry is whole and served silently
        warnings.simplefilter("error")
        np.testing.assert_array_equal(features(), fresh)


def test_cache_entries_record_checksum_rows_and_what_they_were_made_from(cache_run):
    _, fresh, entry, _ = cache_run
    meta = json.loads(entry.with_suffix(".json").read_text())
    assert meta["rows"] == len(fresh) and meta["shape"] == list(fresh.shape)
    assert len(meta["sha256"]) == 64 and meta["key"] == entry.stem
    assert meta["split"] == "test" and meta["flag"] == FLAG
    assert {"encoder", "data", "feature_version"} <= set(meta)


def test_an_entry_without_a_sidecar_is_not_trusted(tmp_path):
    cache = FeatureCache(tmp_path)
    path = cache.put("k", np.ones((4, 2), np.float32))
    path.with_suffix(".json").unlink()
    with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*no checksum"):
        assert cache.get("k", rows=4) is None


# ------------------------------------------------------------------- 8: MedMNIST files
def _float_images(m):
    m["train_images"] = m["train_images"].astype(np.float32) / 255


def _few_labels(m):
    m["train_labels"] = m["train_labels"][:-5]


def _flat_labels(m):
    m["val_labels"] = m["val_labels"][:, 0]


def _label_out_of_range(m):
    m["test_labels"] = m["test_labels"].copy()
    m["test_labels"][0, 0] = 7


def _wrong_size(m):
    m["train_images"] = np.pad(m["train_images"], ((0, 0), (0, 4), (0, 4)))


def _missing_key(m):
    del m["test_labels"]


def _too_few_samples(m):
    m["val_images"], m["val_labels"] = m["val_images"][:-2], m["val_labels"][:-2]


BAD_CONTENTS = [
    (_float_images, "train_images are float32, expected uint8"),
    (_few_labels, "train_labels has 22 rows but train_images has 27"),
    (_flat_labels, "val_labels have shape (10,), expected (10, 1)"),
    (_label_out_of_range, "test_labels hold values outside 0..1"),
    (_wrong_size, "train_images have shape (27, 32, 32), expected (27, 28, 28)"),
    (_missing_key, "missing key test_labels"),
    (_too_few_samples, "val has 8 samples, expected 10 (biovfm_synthetic.json)"),
]


def bad_copy(synth: Path, tmp_path: Path, data: bytes) -> Path:
    """A synthetic folder whose task file is ``data``: the marker stays, so only the damage
    differs from a good folder."""
    root = tmp_path / "bad"
    root.mkdir()
    shutil.copy(synth / SYNTHETIC_MARKER, root / SYNTHETIC_MARKER)
    (root / f"{FLAG}.npz").write_bytes(data)
    return root


@pytest.mark.parametrize("damage, what", BAD_CONTENTS,
                         ids=[d.__name__.strip("_") for d, _ in BAD_CONTENTS])
def test_a_bad_medmnist_file_is_one_error_naming_file_and_fault(synth, tmp_path, damage, what):
    members = arrays(synth / f"{FLAG}.npz")
    damage(members)
    root = bad_copy(synth, tmp_path, npz_bytes(members))
    path, before = root / f"{FLAG}.npz", (root / f"{FLAG}.npz").read_bytes()
    with pytest.raises(MedMNISTFormatError) as err:
        load_task(FLAG, root, 28)
    msg = str(err.value)
    assert str(path) in msg and what in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)
    with pytest.raises(MedMNISTFormatError, match=re.escape(what)):  # before any compute
        prepare_tasks(root, 28, [FLAG])
    assert path.read_bytes() == before


@pytest.mark.parametrize("cut", ["empty", "half", "not_a_zip"])
def test_a_truncated_medmnist_file_is_called_unreadable(synth, tmp_path, cut):
    good = (synth / f"{FLAG}.npz").read_bytes()
    data = {"empty": b"", "half": good[: len(good) // 2], "not_a_zip": b"hello"}[cut]
    root = bad_copy(synth, tmp_path, data)
    with pytest.raises(MedMNISTFormatError) as err:
        load_task(FLAG, root, 28)
    msg = str(err.value)
    assert str(root / f"{FLAG}.npz") in msg and "unreadable" in msg and "\n" not in msg
    assert f"--scale 0.05 --seed 0 --tasks {FLAG}" in msg  # the fix the generator accepts


def test_a_damaged_image_member_is_named_on_load(synth, tmp_path):
    data = bytearray((synth / f"{FLAG}.npz").read_bytes())
    middle = len(data) // 4  # inside train_images: headers and labels still read
    data[middle:middle + 64] = bytes(64)
    root = bad_copy(synth, tmp_path, bytes(data))
    check_file(root, FLAG, 28)  # the cheap check cannot see it ...
    with pytest.raises(MedMNISTFormatError, match=re.escape(str(root / f"{FLAG}.npz"))
                       + ".*unreadable.*train"):
        load_task(FLAG, root, 28)  # ... loading does, and names the file


def test_real_files_are_held_to_medmnist_info_counts(synth, full_scale, tmp_path):
    data = load_task(FLAG, full_scale, 28)
    assert not data.synthetic and len(data.images["train"]) == 546
    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(synth / f"{FLAG}.npz", real / f"{FLAG}.npz")  # 5% counts, no marker
    with pytest.raises(MedMNISTFormatError,
                       match=r"train has 27 samples, expected 546 \(medmnist.INFO\)"):
        load_task(FLAG, real, 28)


def test_a_good_synthetic_file_still_loads(synth):
    data = load_task(FLAG, synth, 28)
    assert data.synthetic and data.images["train"].dtype == np.uint8


# ------------------------------------------------------------------- 17: file permissions
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        a = runs.atomic_write_bytes(tmp_path / "a.bin", b"x")
        b = runs.atomic_write_json(tmp_path / "b.json", {"x": 1})
        c = runs.atomic_write_bytes(tmp_path / "a.bin", b"y", overwrite=True)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (a, b, c)} == {mode}


# ------------------------------------------------------------------- 18: the data check
def check(capsys, root: Path, *extra: str) -> tuple[int, str]:
    code = cli.main(["data", "medmnist", "--root", str(root), "--size", "28",
                     "--tasks", FLAG, *extra])
    out = capsys.readouterr().out.strip()
    assert "\n" not in out  # one line per task
    return code, out


def test_md5_is_checked_for_real_files_that_pass_info(full_scale):
    assert check_file(full_scale, FLAG, 28) == full_scale / f"{FLAG}.npz"
    with pytest.raises(MedMNISTChecksumError, match="MD5 mismatch for " + re.escape(
            str(full_scale / f"{FLAG}.npz"))):
        check_file(full_scale, FLAG, 28, verify_md5=True)


def test_data_check_calls_an_md5_mismatch_so(capsys, full_scale):
    code, out = check(capsys, full_scale, "--verify")
    assert code == 1 and out.startswith("md5 mismatch") and f"{FLAG}.npz" in out


def test_data_check_without_verify_says_what_it_checked(capsys, full_scale):
    code, out = check(capsys, full_scale)
    assert code == 0 and out.startswith("ok") and "MD5 not checked" in out


def test_data_check_finds_a_truncated_file_without_verify(capsys, synth, tmp_path):
    good = (synth / f"{FLAG}.npz").read_bytes()
    root = bad_copy(synth, tmp_path, good[: len(good) // 2])
    code, out = check(capsys, root)
    assert code == 1 and out.startswith("unreadable") and str(root / f"{FLAG}.npz") in out


def test_data_check_names_invalid_and_missing_files(capsys, synth, tmp_path):
    members = arrays(synth / f"{FLAG}.npz")
    _float_images(members)
    code, out = check(capsys, bad_copy(synth, tmp_path, npz_bytes(members)))
    assert code == 1 and out.startswith("invalid") and "float32" in out
    code, out = check(capsys, tmp_path / "nothing")
    assert code == 1 and out.startswith("missing")


def test_data_check_says_a_synthetic_folder_is_not_md5_checked(capsys, synth):
    code, out = check(capsys, synth, "--verify")
    assert code == 0 and out.startswith("synthetic") and "not checked against MD5" in out


def test_missing_file_error_is_still_a_file_error(tmp_path):
    with pytest.raises(MedMNISTFileError, match=f"{FLAG}.npz"):
        check_file(tmp_path, FLAG, 28)

"""Pretraining index (biovfm_lib.data.pretrain) and nested, source-stratified subsets
(biovfm_lib.curation.subsets)."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from biovfm_lib.curation.subsets import select_subset
from biovfm_lib.data.medmnist import MedMNISTFileError
from biovfm_lib.data.pretrain import (
    INDEX_COLUMNS,
    MEDMNIST_MODALITY,
    index_images,
    medmnist_sources,
)


def write_medmnist(path, train: np.ndarray, compressed: bool = True) -> None:
    """A file in MedMNIST's own layout: <split>_images uint8 and <split>_labels (N, 1)."""
    arrays = {}
    for split, images in (("train", train), ("val", train[:2]), ("test", train[:3])):
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.zeros((len(images), 1), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


@pytest.fixture
def data(tmp_path):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(scans / "b.png")
    Image.fromarray(grey).save(scans / "sub" / "a.PNG")
    Image.fromarray(np.stack([grey] * 3, -1)).save(scans / "sub" / "c.jpg")
    Image.fromarray(grey).save(scans / "sub" / "d.tif")
    (scans / "notes.txt").write_text("not an image")
    mm = tmp_path / "medmnist"
    mm.mkdir()
    rng = np.random.default_rng(0)
    write_medmnist(mm / "breastmnist.npz", rng.integers(0, 256, (7, 28, 28), dtype=np.uint8))
    write_medmnist(mm / "bloodmnist.npz", rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8))
    return tmp_path


def folder(root, name="scans", modality="x-ray", **extra) -> dict:
    return {"name": name, "kind": "folder", "modality": modality, "root": str(root), **extra}


def test_index_has_a_row_per_image_with_where_to_read_it(data):
    index = index_images([folder(data / "scans"),
                          *medmnist_sources(data / "medmnist", 28, ["breastmnist", "bloodmnist"])])
    assert tuple(index.columns) == INDEX_COLUMNS
    assert index["source"].value_counts().to_dict() == {"scans": 4, "breastmnist": 7,
                                                        "bloodmnist": 5}
    scans = index[index["source"] == "scans"]
    assert scans["image_id"].tolist() == ["scans/b.png", "scans/sub/a.PNG", "scans/sub/c.jpg",
                                          "scans/sub/d.tif"]
    assert scans["location"].tolist() == [str((data / "scans" / r).resolve()) for r in
                                          ("b.png", "sub/a.PNG", "sub/c.jpg", "sub/d.tif")]
    assert (scans["index"] == -1).all() and (scans["modality"] == "x-ray").all()
    blood = index[index["source"] == "bloodmnist"]
    assert blood["index"].tolist() == list(range(5))
    assert blood["image_id"].tolist() == [f"bloodmnist/{i}" for i in range(5)]
    assert set(blood["location"]) == {str((data / "medmnist" / "bloodmnist.npz").resolve())}
    assert set(blood["modality"]) == {"microscopy"}
    assert index["image_id"].is_unique


def test_ids_do_not_depend_on_source_order_or_other_sources(data):
    mm = medmnist_sources(data / "medmnist", 28, ["breastmnist", "bloodmnist"])
    one = index_images([folder(data / "scans"), *mm])
    other = index_images([mm[1], folder(data / "scans")])
    (data / "scans" / "sub" / "e.bmp").write_bytes((data / "scans" / "b.png").read_bytes())
    grown = index_images([folder(data / "scans")])
    key = ["image_id", "source", "modality", "location", "index"]
    common = one.merge(other, on=key)
    assert len(common) == len(other)
    assert set(one[one["source"] == "scans"]["image_id"]) < set(grown["image_id"])


def test_folder_glob_selects_files_and_kind_medmnist_accepts_a_modality(data):
    index = index_images([folder(data / "scans", glob="sub/*"),
                          {"name": "b", "kind": "medmnist", "root": str(data / "medmnist"),
                           "flag": "breastmnist", "size": 28, "modality": "mammography"}])
    assert index["image_id"].tolist()[:3] == ["scans/sub/a.PNG", "scans/sub/c.jpg",
                                              "scans/sub/d.tif"]
    assert set(index["modality"]) == {"x-ray", "mammography"} and len(index) == 10


def test_medmnist_sources_cover_the_2d_tasks_with_their_modalities(tmp_path):
    sources = medmnist_sources(tmp_path, 64)
    assert [s["flag"] for s in sources] == list(MEDMNIST_MODALITY)
    assert {s["flag"]: s["modality"] for s in sources}["breastmnist"] == "ultrasound"
    assert all(s["size"] == 64 and s["kind"] == "medmnist" for s in sources)
    with pytest.raises(ValueError, match="organmnist3d"):
        medmnist_sources(tmp_path, 28, ["organmnist3d"])


@pytest.mark.parametrize("source, error, match", [
    ({"name": "x", "kind": "folder", "modality": "ct", "root": "/no/such/dir"},
     FileNotFoundError, "'x': root /no/such/dir is not a directory"),
    ({"name": "x", "kind": "dicom", "root": "."}, ValueError, "unknown kind 'dicom'"),
    ({"name": "x", "kind": "folder", "root": "."}, ValueError, r"missing keys \['modality'\]"),
    ({"name": "x", "kind": "folder", "modality": "ct", "root": ".", "pattern": "*.png"},
     ValueError, r"unknown keys \['pattern'\]"),
])
def test_bad_sources_are_named_in_the_error(source, error, match):
    with pytest.raises(error, match=match):
        index_images([source])


def test_empty_source_missing_file_and_duplicate_names_are_errors(data):
    (data / "empty").mkdir()
    with pytest.raises(ValueError, match="'e': no image files"):
        index_images([folder(data / "empty", name="e")])
    with pytest.raises(ValueError, match="no image files.*matching '\\*.dcm'"):
        index_images([folder(data / "scans", glob="*.dcm")])
    with pytest.raises(MedMNISTFileError, match="pathmnist_64.npz"):
        index_images(medmnist_sources(data / "medmnist", 64, ["pathmnist"]))
    with pytest.raises(ValueError, match=r"unique.*\['scans'\]"):
        index_images([folder(data / "scans"), folder(data / "scans")])


# --------------------------------------------------------------------------- subsets

def fake_index(sizes: dict[str, int], modality: dict[str, str] | None = None) -> pd.DataFrame:
    rows = [(f"{s}/{i}", s, (modality or {}).get(s, "ct"), f"/d/{s}.npz", i)
            for s, n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


SKEWED = {"big": 400, "a": 3, "b": 1, "c": 5, "d": 2, "e": 7, "f": 1, "g": 4, "h": 6, "i": 2,
          "j": 3, "k": 1, "l": 1, "m": 9}


def test_every_size_is_nested_and_within_one_of_proportional_per_source():
    index = fake_index(SKEWED)
    total, previous = len(index), set()
    for n in range(1, total + 1):
        subset = select_subset(index, count=n, seed=3)
        ids = set(subset["image_id"])
        assert len(ids) == n and previous <= ids
        got = subset["source"].value_counts()
        for source, size in SKEWED.items():
            assert abs(got.get(source, 0) - n * size / total) <= 1, (n, source)
        previous = ids


def test_fractions_and_counts_are_nested_together():
    index = fake_index({"a": 300, "b": 120, "c": 44})
    subsets = [select_subset(index, fraction=f, seed=1) for f in (0.01, 0.1, 0.25, 0.5, 1.0)]
    subsets += [select_subset(index, count=c, seed=1) for c in (1, 20, 100, 200, 400)]
    subsets.sort(key=len)
    assert [len(s) for s in subsets] == [1, 5, 20, 46, 100, 116, 200, 232, 400, 464]
    for small, large in pairwise(subsets):
        assert set(small["image_id"]) <= set(large["image_id"])
    half = subsets[7]
    assert half["source"].value_counts().to_dict() == {"a": 150, "b": 60, "c": 22}
    assert half["image_id"].tolist() == [i for i in index["image_id"] if i in
                                         set(half["image_id"])]  # the index's row order


def test_seed_changes_the_subset_and_adding_a_source_keeps_each_sources_order():
    base = fake_index({"a": 200, "b": 80})
    assert set(select_subset(base, 0.3, seed=0)["image_id"]) != \
        set(select_subset(base, 0.3, seed=1)["image_id"])
    pd.testing.assert_frame_equal(select_subset(base, 0.3, seed=4), select_subset(base, 0.3,
                                                                                    seed=4))
    grown = fake_index({"a": 200, "b": 80, "new": 120})
    for fraction in (0.05, 0.2, 0.6):
        before, after = select_subset(base, fraction), select_subset(grown, fraction)
        for source in ("a", "b"):
            old = set(before.loc[before["source"] == source, "image_id"])
            new = set(after.loc[after["source"] == source, "image_id"])
            assert old <= new or new <= old, (fraction, source)


def test_modality_filters_pick_the_pool():
    index = fake_index({"us": 30, "ct1": 50, "ct2": 20, "derm": 10},
                       {"us": "ultrasound", "ct1": "ct", "ct2": "ct", "derm": "dermoscopy"})
    us = select_subset(index, modalities=["ultrasound"])
    assert set(us["source"]) == {"us"} and len(us) == 30
    mixed = select_subset(index, fraction=0.5, modalities=["ct", "dermoscopy"])
    assert mixed["source"].value_counts().to_dict() == {"ct1": 25, "ct2": 10, "derm": 5}
    assert len(select_subset(index)) == 110
    assert set(select_subset(index, count=40, modalities=["ct"])["image_id"]) > \
        set(select_subset(index, count=10, modalities=["ct"])["image_id"])


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 0.0}, r"fraction 0.0 must be in \(0, 1\]"),
    ({"fraction": 1.5}, r"fraction 1.5 must be in \(0, 1\]"),
    ({"fraction": 0.001}, "fraction 0.001 of 110 images selects none"),
    ({"count": 111}, r"count 111 must be an integer in \[1, 110\]"),
    ({"count": 0}, r"count 0 must be"),
    ({"count": 31, "modalities": ["ultrasound"]}, r"count 31 .*\[1, 30\]"),
    ({"fraction": 0.5, "count": 10}, "a fraction or a count, not both"),
    ({"modalities": ["mri"]},
     r"unknown modality \['mri'\]; the index has \['ct', 'dermoscopy', 'ultrasound'\]"),
    ({"modalities": "ct"}, "non-empty list"),
    ({"seed": -1}, "seed -1"),
])
def test_bad_subset_requests_name_the_value(kwargs, match):
    index = fake_index({"us": 30, "ct1": 50, "ct2": 20, "derm": 10},
                       {"us": "ultrasound", "ct1": "ct", "ct2": "ct", "derm": "dermoscopy"})
    with pytest.raises(ValueError, match=match):
        select_subset(index, **kwargs)

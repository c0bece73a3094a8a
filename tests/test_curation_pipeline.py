"""The curation pipeline (biovfm_lib.curation): shards, dedup, the resumable pipeline and
its outputs, on files the tests write plus real files that installed packages ship."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image
from pydicom.data import get_testdata_file

from biovfm_lib.analysis.inputs import corpus_subsets, subset_labels
from biovfm_lib.curation.dedup import find_duplicates
from biovfm_lib.curation.pipeline import MANIFEST_COLUMNS, curate, load_manifest
from biovfm_lib.curation.process import Settings
from biovfm_lib.curation.shards import ShardWriter, read_member
from biovfm_lib.curation.sources import Source, load_sources, resolve_root
from biovfm_lib.data.pretrain import INDEX_COLUMNS, PretrainImages, index_images
from biovfm_lib.train.loop import data_subset

ROOT = Path(__file__).resolve().parents[1]
BIOVFM = Path(sys.executable).with_name("biovfm")


# ----------------------------------------------------------------------------- shards
def test_shards_read_back_by_offset_and_stream_through_webdataset(tmp_path):
    payloads = {f"{i:04d}": bytes([i]) * (100 + 37 * i) for i in range(7)}
    located = {}
    with ShardWriter(tmp_path, "corpus", max_members=6) as writer:
        for key, data in payloads.items():
            located[key] = writer.add(f"{key}.bin", data)
            writer.add(f"{key}.json", json.dumps({"key": key}).encode())
    assert [p.name for p in writer.written] == ["corpus-000000.tar", "corpus-000001.tar",
                                                "corpus-000002.tar"]
    assert not list(tmp_path.glob("*.partial"))
    for key, (shard, offset) in located.items():
        assert read_member(tmp_path / shard, offset) == payloads[key]
    urls = [str(p) for p in writer.written]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == list(payloads)
    assert all(s["bin"] == payloads[s["__key__"]] and json.loads(s["json"])["key"] ==
               s["__key__"] for s in samples)


def test_read_member_rejects_an_offset_that_is_not_a_member(tmp_path):
    with ShardWriter(tmp_path, "s") as writer:
        shard, offset = writer.add("a.bin", b"x" * 600)
    with pytest.raises(ValueError, match="no tar member header"):
        read_member(tmp_path / shard, offset + 512)


# ----------------------------------------------------------------------------- dedup
def brute_force_duplicates(content, phash, max_distance):
    """The rule, written the slow, obvious way: in order, drop exact repeats, then drop an
    image within max_distance bits of an earlier kept one."""
    dropped, kept = {}, []
    for i, c in enumerate(content):
        if c in content[:i]:
            dropped[i] = (content.index(c), "exact")
    for i in range(len(content)):
        if i in dropped:
            continue
        near = [(((phash[i] ^ phash[k]) & (2**64 - 1)).bit_count(), k) for k in kept]
        near = [(d, k) for d, k in near if d <= max_distance]
        if near:
            dropped[i] = (min(near)[1], "near")
        else:
            kept.append(i)
    return dropped


@pytest.mark.parametrize("max_distance", [0, 3, 8])
def test_dedup_matches_a_brute_force_search(max_distance):
    rng = np.random.default_rng(max_distance)
    base = rng.integers(-2**63, 2**63 - 1, size=60, dtype=np.int64)
    flips = rng.integers(0, 64, size=(300, 6))
    hashes = [int(base[rng.integers(60)]) & (2**64 - 1) for _ in range(300)]  # unsigned
    for i, bits in enumerate(flips):  # near copies: a few random bit flips of a base hash
        for b in bits[: rng.integers(0, 7)]:
            hashes[i] ^= 1 << int(b)
    hashes = [h - 2**64 if h >= 2**63 else h for h in hashes]
    content = [f"c{rng.integers(250)}" for _ in range(300)]
    images = pd.DataFrame({"image_id": [f"s{i % 3}/{i}" for i in range(300)],
                           "source": [f"s{i % 3}" for i in range(300)],
                           "content_hash": content, "phash": np.asarray(hashes, np.int64)})
    found = find_duplicates(images, max_distance)
    expected = brute_force_duplicates(content, hashes, max_distance)
    assert len(expected) > 20
    got = {int(r.image_id.split("/")[1]): (int(r.duplicate_of.split("/")[1]), r.kind)
           for r in found.itertuples()}
    assert got == expected


# ----------------------------------------------------------------------------- pipeline
def write_raw_sources(root: Path) -> list[Source]:
    """Two small sources with planted problems: a cross-source DICOM copy, an exact copy in
    another format, a lossy near copy, and files that must be rejected."""
    rng = np.random.default_rng(0)
    a, b = root / "a", root / "b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    for i in range(12):  # distinct coarse structure (so no two are near copies) + fine noise
        coarse = Image.fromarray(rng.integers(0, 255, (5, 6), dtype=np.uint8)).resize(
            (96, 80), Image.Resampling.BICUBIC)
        image = (np.asarray(coarse, np.float32) + rng.normal(0, 10, (80, 96))).clip(0, 255)
        Image.fromarray(image.astype(np.uint8)).save(a / "sub" / f"img{i:02d}.png")
    coarse = rng.integers(0, 255, (6, 4), dtype=np.uint8)
    Image.fromarray(coarse).resize((60, 90), Image.Resampling.BICUBIC).save(b / "own.png")
    shutil.copy(a / "sub" / "img03.png", b / "copy_of_img03.png")  # exact, across sources
    Image.open(a / "sub" / "img05.png").save(b / "img05_as.bmp")  # exact, other format
    Image.open(a / "sub" / "img07.png").save(b / "img07_lossy.jpg", quality=90)  # near
    shutil.copy(get_testdata_file("CT_small.dcm"), a / "ct.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), b / "ct_again.dcm")
    (b / "empty.png").write_bytes(b"")
    (b / "truncated.png").write_bytes((a / "sub" / "img00.png").read_bytes()[:300])
    (b / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(b / "flat.png")
    Image.fromarray(rng.integers(0, 255, (10, 40), dtype=np.uint8)).save(b / "tiny.png")
    return [Source(name="a", modality="x-ray", anatomy="chest", root=str(a)),
            Source(name="b", modality="ct", root=str(b))]


SETTINGS = Settings(short_side=48, min_size=16)
OPTIONS = {"near_distance": 6, "subsets": {"half": {"fraction": 0.5},
                                          "ct": {"modalities": ["ct"]}},
           "files_per_part": 4, "shard_images": 5, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation")
    sources = write_raw_sources(root / "raw")
    return sources, curate(sources, root / "corpus", SETTINGS, workers=1, **OPTIONS)


def test_manifest_holds_every_kept_image_where_it_says(corpus):
    _, result = corpus
    manifest = result.manifest
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest["image_id"].is_unique and manifest["content_hash"].is_unique
    assert manifest[["height", "width"]].min(axis=1).eq(48).all()  # shorter side standardised
    assert (manifest.loc[manifest.source == "a", "anatomy"] == "chest").all()
    dataset = PretrainImages(load_manifest(result.out_dir))
    for i, row in manifest.iterrows():  # the pretraining dataset reads each from its shard
        image = dataset.read(i)
        assert tuple(image.shape) == (3, row.height, row.width)
    ct = manifest[manifest.image_id == "a/ct.dcm"].iloc[0]
    assert (ct.orig_height, ct.orig_width, ct.bit_depth, ct.frame) == (128, 128, 16, -1)


def test_duplicates_are_caught_across_sources_and_formats(corpus):
    _, result = corpus
    dups = result.duplicates.set_index("image_id")
    assert dups.loc["b/copy_of_img03.png", ["duplicate_of", "kind"]].tolist() == \
        ["a/sub/img03.png", "exact"]
    assert dups.loc["b/img05_as.bmp", "kind"] == "exact"  # same pixels, other container
    assert dups.loc["b/ct_again.dcm", "duplicate_of"] == "a/ct.dcm"
    assert dups.loc["b/img07_lossy.jpg", ["duplicate_of", "kind"]].tolist() == \
        ["a/sub/img07.png", "near"]
    assert not set(dups.index) & set(result.manifest.image_id)


def test_every_bad_file_is_rejected_with_its_reason(corpus):
    _, result = corpus
    reasons = dict(zip(result.rejects.raw_path.map(lambda p: Path(p).name),
                       result.rejects.reason))
    assert reasons == {"empty.png": "empty", "truncated.png": "corrupt",
                       "notes.txt": "unsupported_format", "flat.png": "zero_variance",
                       "tiny.png": "too_small"}


def test_summary_accounts_for_every_image(corpus):
    _, result = corpus
    s = result.summary.set_index("source")
    assert s.loc["a", "files"] == 13 and s.loc["b", "files"] == 10
    assert s.loc["b", "kept"] == 1
    removed = s[["exact_duplicates", "near_duplicates_within", "near_duplicates_across"]]
    assert (s["images_read"] == s["kept"] + removed.sum(axis=1)).all()
    assert s.loc["b", ["exact_duplicates", "near_duplicates_across", "rejects"]].tolist() == \
        [3, 1, 5]
    assert s["kept"].sum() == len(result.manifest)


def test_subsets_are_nested_and_stratified(corpus):
    _, result = corpus
    subsets = {n: set(pd.read_parquet(result.out_dir / "subsets" / f"{n}.parquet").image_id)
               for n in ("all", "half", "ct")}
    assert subsets["all"] == set(result.manifest.image_id)
    assert subsets["half"] < subsets["all"]
    assert len(subsets["half"]) == round(len(subsets["all"]) / 2)
    assert subsets["ct"] == set(result.manifest.query("modality == 'ct'").image_id)
    assert result.subsets == {n: len(v) for n, v in subsets.items()}
    assert len(load_manifest(result.out_dir, "half")) == len(subsets["half"])
    with pytest.raises(ValueError, match="no subset 'tenth'"):
        load_manifest(result.out_dir, "tenth")


def test_pretraining_indexes_a_named_subset_and_its_sidecar_records_the_definition(corpus):
    _, result = corpus
    source = {"name": "demo", "kind": "corpus", "root": str(result.out_dir), "subset": "half"}
    index = index_images([source])
    assert list(index.columns) == list(INDEX_COLUMNS) and len(index) == result.subsets["half"]
    assert set(index.source) <= {"a", "b"}  # each image keeps its own source for stratifying
    cfg = SimpleNamespace(sources=[source],
                          subset={"fraction": 0.5, "count": None, "modalities": None})
    record = data_subset(cfg)
    assert record["corpus_subsets"] == {"demo": {"name": "half", "fraction": 0.5,
                                                 "images": result.subsets["half"]}}
    assert subset_labels(record, list(corpus_subsets(record).values())) == \
        ("f0.5 of f0.5", "all")


def test_rerun_skips_finished_parts_and_redoes_only_missing_ones(corpus, tmp_path):
    sources, result = corpus
    out = tmp_path / "copy"
    shutil.copytree(result.out_dir, out)
    again = curate(sources, out, SETTINGS, workers=1, **OPTIONS)
    assert again.parts_done == 0 and again.parts_skipped == 7  # 4 of a, 3 of b
    victim = min((out / "parts").glob("b-*.rejects.parquet"))
    victim.with_name(victim.name.replace(".rejects", "")).unlink()
    redone = curate(sources, out, SETTINGS, workers=1, **OPTIONS)
    assert redone.parts_done == 1 and redone.parts_skipped == 6
    pd.testing.assert_frame_equal(redone.manifest, result.manifest)


def test_workers_in_parallel_give_the_same_corpus(corpus, tmp_path):
    sources, result = corpus
    parallel = curate(sources, tmp_path / "parallel", SETTINGS, workers=2, **OPTIONS)
    pd.testing.assert_frame_equal(parallel.manifest, result.manifest)
    pd.testing.assert_frame_equal(parallel.rejects, result.rejects)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL `biovfm curate` after its first finished part, rerun the same command, and get
    the corpus an uninterrupted run makes."""
    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8)).save(
            raw / f"{i:03d}.png")
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{name: noise, modality: mr, root: '{raw}'}}\n")
    args = [str(BIOVFM), "curate", str(sources), "--out", str(tmp_path / "killed"), "-q",
            "-p", "files_per_part", "2", "-p", "workers", "1", "-p", "short_side", "64"]
    proc = subprocess.Popen(args, cwd=ROOT)
    parts = tmp_path / "killed" / "parts"
    deadline = time.monotonic() + 120
    while not list(parts.glob("noise-*[0-9a-f].parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("noise-*[0-9a-f].parquet")))
    assert 1 <= done_before < 20 and not (tmp_path / "killed" / "manifest.parquet").exists()
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"already done {done_before}" in resumed.stdout
    subprocess.run([*args[:4], str(tmp_path / "whole"), *args[5:]], cwd=ROOT, check=True,
                   capture_output=True)
    killed = pd.read_parquet(tmp_path / "killed" / "manifest.parquet")
    whole = pd.read_parquet(tmp_path / "whole" / "manifest.parquet")
    assert len(whole) == 40
    pd.testing.assert_frame_equal(killed.drop(columns="raw_path"), whole.drop(columns="raw_path"))


def test_bad_sources_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {name: x, modality: ct, root: /nowhere, reader: gif9}\n")
    proc = subprocess.run([str(BIOVFM), "curate", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 2 and "source x" in proc.stderr and "gif9" in proc.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text("sources:\n  - {name: y, modality: ct, root: /nowhere}\n")
    proc = subprocess.run([str(BIOVFM), "curate", str(missing), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 2 and "source 'y'" in proc.stderr and "/nowhere" in proc.stderr


# ----------------------------------------------------------------------------- real files
def test_package_roots_resolve_to_installed_data():
    assert (resolve_root("package:pydicom/data/test_files") / "CT_small.dcm").is_file()
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_root("package:no_such_package_xyz/data")


def test_demo_sources_account_for_every_real_file(tmp_path):
    """Every real file of the demo's package sources becomes images or a reject with a
    reason, and the same DICOM images stored in several encodings are caught as copies."""
    sources = [s for s in load_sources(ROOT / "params/curation/demo_sources.yaml")
               if s.root.startswith("package:")]
    result = curate(sources, tmp_path / "c", Settings(short_side=32, min_size=16),
                    workers=2, progress=False)
    read = {i.split("#")[0] for i in pd.concat([result.manifest.image_id,
                                                 result.duplicates.image_id])}
    rejected = set(result.rejects.raw_path)
    for source in sources:
        root = source.root_path()
        for f in source.files():
            rel = f"{source.name}/{f.relative_to(root).as_posix()}"
            assert rel in read or str(f) in rejected, rel
    assert result.rejects.reason.isin(
        ["corrupt", "empty", "unsupported_format", "unsupported_syntax", "not_an_image",
         "zero_variance", "too_small"]).all(), result.rejects.query("reason == 'reader_error'")
    assert len(result.duplicates.query("kind == 'exact' and source == 'pydicom-data'")) > 5
    assert set(result.manifest.modality) == {"mixed", "mr", "microscopy", "fundus"}

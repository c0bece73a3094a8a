"""Curation hardening (issue 12, items 2, 3, 4, 16): changed source files are re-curated,
undecodable file names never stop a corpus, unlistable folders and symlink loops are rejects
rows, and a killed `biovfm curate` takes its workers with it. Real files only: images the
tests write."""
from __future__ import annotations

import codecs
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from PIL import Image

from biovfm_lib.curation.pipeline import curate
from biovfm_lib.curation.process import Settings
from biovfm_lib.curation.sources import Source

ROOT = Path(__file__).resolve().parents[1]
BIOVFM = Path(sys.executable).with_name("biovfm")
SETTINGS = Settings(short_side=32, min_size=16)


def noise_png(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    """A distinct image per seed (coarse structure, so no two are near copies)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (5, 4), dtype=np.uint8))
    coarse.resize(size, Image.Resampling.BICUBIC).save(path, format="PNG")


def bump_mtime(path: Path) -> None:
    """A repaired file is newer than the run that saw it, even on a coarse-clock filesystem."""
    later = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(later, later))


def run_curate(source: Source, out: Path, **kw):
    return curate([source], out, SETTINGS, near_distance=0, files_per_part=2, workers=1,
                  progress=False, **kw)


# ----------------------------------------------------------------------------- item 2
def test_a_changed_source_file_is_recurated_and_leaves_no_stale_rows(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(5):
        noise_png(raw / f"img{i}.png", i)
    good = (raw / "img0.png").read_bytes()
    (raw / "broken.png").write_bytes(good[:200])  # truncated: a reject
    source = Source(name="s", modality="mr", root=str(raw))
    first = run_curate(source, tmp_path / "corpus")
    assert set(first.rejects.reason) == {"corrupt"} and len(first.manifest) == 5
    assert first.changes == {"reused": 0, "changed": 0, "new": 3, "removed": 0}

    noise_png(raw / "broken.png", 100)  # repaired
    noise_png(raw / "img3.png", 103)  # replaced by another image, same name
    for name in ("broken.png", "img3.png"):
        bump_mtime(raw / name)
    again = run_curate(source, tmp_path / "corpus")
    # files sort as broken, img0..img4: parts [broken, img0] [img1, img2] [img3, img4]
    assert again.changes == {"reused": 1, "changed": 2, "new": 0, "removed": 0}
    assert again.parts_done == 2 and again.parts_skipped == 1
    assert again.rejects.empty and len(again.manifest) == 6
    hashes = [r.set_index("image_id").loc["s/img3.png", "content_hash"]
              for r in (first.manifest, again.manifest)]
    assert hashes[0] != hashes[1]  # the new pixels, not the stale ones
    fresh = run_curate(source, tmp_path / "fresh")  # what a first run on today's files gives
    pd.testing.assert_frame_equal(again.manifest.drop(columns="raw_path"),
                                  fresh.manifest.drop(columns="raw_path"))
    pd.testing.assert_frame_equal(again.summary, fresh.summary)
    staged = {p.name.split(".")[0] for p in (tmp_path / "corpus" / "parts").iterdir()}
    assert staged == {p.name.split(".")[0] for p in (tmp_path / "fresh" / "parts").iterdir()}

    (raw / "img4.png").unlink()
    (raw / "img2.png").unlink()  # parts [broken, img0] (kept) [img1, img3] (new)
    shrunk = run_curate(source, tmp_path / "corpus")
    assert shrunk.changes == {"reused": 1, "changed": 0, "new": 1, "removed": 2}
    assert len(shrunk.manifest) == 4
    assert not shrunk.manifest.image_id.isin(["s/img2.png", "s/img4.png"]).any()


def test_the_cli_says_what_changed(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        noise_png(raw / f"img{i}.png", i)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{name: s, modality: mr, root: '{raw}'}}\n")
    args = [str(BIOVFM), "curate", str(sources), "--out", str(tmp_path / "c"), "-q",
            "-p", "files_per_part", "2", "-p", "workers", "1", "-p", "short_side", "32"]
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
    noise_png(raw / "img2.png", 12)
    bump_mtime(raw / "img2.png")
    out = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert "parts: 1 reused, 1 re-curated (files changed), 0 new, 0 removed" in out


# ----------------------------------------------------------------------------- item 3
def test_a_file_name_that_is_not_utf8_is_curated_with_its_name_kept(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    name = os.fsdecode(b"caf\xe9 \\ scan.png")  # latin-1, plus a literal backslash
    bad = os.fsdecode(b"broken-\xff.png")
    noise_png(raw / name, 1)
    noise_png(raw / "plain.png", 2)
    (raw / bad).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    source = Source(name="s", modality="mr", root=str(raw))
    result = run_curate(source, tmp_path / "corpus")
    assert len(result.manifest) == 2
    row = result.manifest[result.manifest.image_id != "s/plain.png"].iloc[0]
    assert row.image_id == "s/caf\\xe9 \\\\ scan.png"
    # lossless: escape_decode gives back the exact bytes of the name
    assert codecs.escape_decode(row.raw_path.encode())[0] == os.fsencode(raw / name)
    (reject,) = result.rejects.itertuples()
    assert reject.reason == "corrupt"
    assert codecs.escape_decode(reject.raw_path.encode())[0] == os.fsencode(raw / bad)
    assert run_curate(source, tmp_path / "corpus").parts_done == 0  # and it resumes


# ----------------------------------------------------------------------------- item 4
def test_symlink_loops_and_broken_links_are_rejects(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    noise_png(raw / "sub" / "a.png", 1)
    noise_png(raw / "b.png", 2)
    os.symlink("..", raw / "sub" / "up")  # a folder link back to its own ancestor
    os.symlink("loop_b.png", raw / "loop_a.png")  # a chain that never ends
    os.symlink("loop_a.png", raw / "loop_b.png")
    os.symlink("nowhere.png", raw / "dangling.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    noise_png(elsewhere / "c.png", 3)
    os.symlink(elsewhere, raw / "linked")  # a folder link that is no loop: followed
    result = run_curate(Source(name="s", modality="mr", root=str(raw)), tmp_path / "corpus")
    assert sorted(result.manifest.image_id) == ["s/b.png", "s/linked/c.png", "s/sub/a.png"]
    reasons = dict(zip(result.rejects.raw_path.map(lambda p: Path(p).relative_to(raw)
                                                     .as_posix()), result.rejects.reason))
    assert reasons == {"sub/up": "symlink_loop", "loop_a.png": "symlink_loop",
                       "loop_b.png": "symlink_loop", "dangling.png": "broken_symlink"}
    assert result.summary.set_index("source").loc["s", "rejects"] == 4


@pytest.mark.parametrize("glob", ["**/*", "*.png", "sub/*.png", "**/*.png", "s*/**/a*",
                                  ["*.png", "sub/**/*.dcm"]])
def test_the_walk_matches_what_pathlib_globs_where_no_links_are(tmp_path, glob):
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    for rel in ("a.png", ".hidden.png", "notes.txt", "sub/a.png", "sub/b.dcm",
                "sub/deep/a.dcm", "sub/deep/c.png"):
        (tmp_path / rel).write_bytes(b"x")
    patterns = [glob] if isinstance(glob, str) else glob
    expected = sorted({p for g in patterns for p in tmp_path.glob(g) if p.is_file()})
    assert Source(name="s", modality="mr", root=str(tmp_path), glob=glob).files() == expected
    assert expected


UNREADABLE = """
import sys
from biovfm_lib.curation.pipeline import curate
from biovfm_lib.curation.process import Settings
from biovfm_lib.curation.sources import Source
curate([Source(name="s", modality="mr", root=sys.argv[1])], sys.argv[2],
       Settings(short_side=32, min_size=16), near_distance=0, workers=1, progress=False)
"""
NO_DAC = "-dac_override,-dac_read_search"  # the capabilities that let root past mode bits


def test_an_unreadable_folder_is_a_reject(tmp_path):
    """A real failure: as root, whom permission bits do not stop, the curation runs without
    the capabilities that override them (util-linux `setpriv`); otherwise in this process."""
    raw, out = tmp_path / "raw", tmp_path / "corpus"
    (raw / "locked").mkdir(parents=True)
    noise_png(raw / "open.png", 1)
    noise_png(raw / "locked" / "hidden.png", 2)
    (raw / "locked").chmod(0o000)
    try:
        if os.geteuid() != 0:
            curate([Source(name="s", modality="mr", root=str(raw))], out, SETTINGS,
                   near_distance=0, workers=1, progress=False)
        elif shutil.which("setpriv"):
            subprocess.run(["setpriv", f"--bounding-set={NO_DAC}", f"--inh-caps={NO_DAC}",
                            sys.executable, "-c", UNREADABLE, str(raw), str(out)],
                           cwd=ROOT, check=True, capture_output=True)
        else:
            pytest.skip("running as root, and no setpriv to drop the capabilities that "
                        "let root read any folder")
    finally:
        (raw / "locked").chmod(0o755)
    rejects = pd.read_parquet(out / "rejects.parquet")
    assert rejects[["raw_path", "reason", "source"]].values.tolist() == \
        [[str(raw / "locked"), "unreadable_folder", "s"]]
    assert "Permission denied" in rejects.detail.iloc[0]
    summary = pd.read_parquet(out / "summary.parquet").set_index("source")
    assert summary.loc["s", ["files", "rejects", "kept"]].tolist() == [1, 1, 1]


# ----------------------------------------------------------------------------- item 16
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_killed_curate_takes_its_workers_with_it(tmp_path, sig):
    """Whichever way the parent ends, mid-run, no worker (nor multiprocessing's resource
    tracker) outlives it: on SIGKILL the workers notice they were orphaned."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):
        Image.fromarray(rng.integers(0, 255, (400, 400), dtype=np.uint8)).save(
            raw / f"{i:03d}.png")
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - {{name: noise, modality: mr, root: '{raw}'}}\n")
    proc = subprocess.Popen([str(BIOVFM), "curate", str(sources), "--out",
                             str(tmp_path / "c"), "-q", "-p", "files_per_part", "1",
                             "-p", "workers", "2", "-p", "short_side", "64"], cwd=ROOT)
    parts = tmp_path / "c" / "parts"
    deadline = time.monotonic() + 120
    while not list(parts.glob("noise-*[0-9a-f].parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2, [c.cmdline() for c in children]
    proc.send_signal(sig)
    proc.wait(timeout=30)  # SIGINT: the parent stops at once, not after every queued part

    def alive() -> list[psutil.Process]:
        return [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    deadline = time.monotonic() + 15
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = alive()
    for c in survivors:  # leave no process behind, whatever the outcome
        c.kill()
    assert not survivors, [c.cmdline() for c in survivors]
    assert not (tmp_path / "c" / "manifest.parquet").exists()
    assert len(list(parts.glob("noise-*[0-9a-f].parquet"))) < 120  # stopped, not finished

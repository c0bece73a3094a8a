"""The curation pipeline: sources in, one deduplicated, subsettable, sharded corpus out.

Stages, each resumable:

1. plan: every available source's files, split into parts of ``files_per_part`` files
   (folders the walk cannot list and symlink loops become rejects rows, never a silent gap);
2. stage: parts run in worker processes (:mod:`~biovfm_lib.curation.process`); a finished
   part is never redone, so a rerun after a crash or a kill only does what is missing, while
   a part whose files changed since (size or modification time) is curated again and its
   old rows are dropped; :attr:`CurationResult.changes` says which happened;
3. finalise: duplicates are removed (:mod:`~biovfm_lib.curation.dedup`), the kept images are
   copied in a shuffled order into streaming-sized shards, and the manifest, rejects,
   duplicates, per-source summary and named subsets are written. Finalising is skipped when
   its inputs have not changed since the last run.

Output folder::

    manifest.parquet    one row per kept image (:data:`MANIFEST_COLUMNS`)
    rejects.parquet     raw_path, reason, source, frame, detail
    duplicates.parquet  what dedup removed, and what it kept instead
    summary.parquet     per source: files, images read, rejects, duplicates, kept
    subsets/            <name>.parquet (image_id) per named subset + index.json
    shards/             corpus-NNNNNN.tar (WebDataset layout: <key>.png + <key>.json)
    staging/, parts/    per-part work (the resume state; remove with clean_staging); after a
                        finalise they hold this plan's parts only
    curation.json       settings and what the last finalise was made from
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from biovfm_lib.curation.dedup import find_duplicates
from biovfm_lib.curation.process import (
    IMAGE_COLUMNS,
    REJECT_COLUMNS,
    Part,
    Settings,
    end_with_parent,
    process_part,
)
from biovfm_lib.curation.shards import ShardWriter, read_member
from biovfm_lib.curation.sources import Source, load_sources
from biovfm_lib.curation.subsets import id_hash, select_subset
from biovfm_lib.params import CurationParams
from biovfm_lib.runs import atomic_write_json, write_table

MANIFEST_COLUMNS = (*IMAGE_COLUMNS[:-2], "shard", "offset")
SUMMARY_COLUMNS = ("source", "modality", "available", "files", "images_read", "rejects",
                   "exact_duplicates", "near_duplicates_within", "near_duplicates_across",
                   "kept")
STATE = "curation.json"


@dataclass
class CurationResult:
    """What a run produced (tables in memory, files under ``out_dir``) and how fast."""

    out_dir: Path
    manifest: pd.DataFrame
    rejects: pd.DataFrame
    duplicates: pd.DataFrame
    summary: pd.DataFrame
    subsets: dict[str, int]
    parts_done: int  # by this run
    parts_skipped: int  # finished by an earlier run
    images_per_second_per_core: float | None  # None when nothing was staged now
    seconds: float
    skipped_sources: list[str] = field(default_factory=list)
    # parts against the last finished curation: reused (done before), changed (same file
    # names, contents changed: curated again), new, removed (of the last run, replaced by none)
    changes: dict[str, int] = field(default_factory=dict)

    def changes_line(self) -> str:
        """What the CLI and the notebook print, so a rerun says what it re-read."""
        c = self.changes
        return (f"parts: {c['reused']} reused, {c['changed']} re-curated (files changed), "
                f"{c['new']} new, {c['removed']} removed")


def curate(sources: list[Source], out_dir: str | Path, settings: Settings | None = None,
           near_distance: int = 4, subsets: dict[str, dict] | None = None,
           workers: int | None = None, files_per_part: int = 64, shard_images: int = 5000,
           clean_staging: bool = False, progress: bool = True) -> CurationResult:
    """Curate ``sources`` into ``out_dir`` (see the module docstring).

    ``subsets`` maps names to :func:`~biovfm_lib.curation.subsets.select_subset` arguments
    (``fraction`` or ``count``, ``modalities``, ``seed``); "all" is always written.
    ``workers`` processes stage parts (None: every core; 1: in this process).
    """
    start = time.perf_counter()
    settings = settings or Settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts, skipped_sources, problems = plan_parts(sources, files_per_part)
    names, slots = [p.name(settings) for p in parts], [p.slot(settings) for p in parts]
    done = [(out / "parts" / f"{n}.parquet").is_file() for n in names]
    todo = [p for p, d in zip(parts, done) if not d]
    previous = _read_state(out)
    changes = _changes(names, slots, done, previous or {})
    stats = _stage(todo, out, settings, workers, progress)
    state = {"settings": asdict(settings), "near_distance": near_distance,
             "subsets": subsets or {}, "shard_images": shard_images,
             "parts": names, "slots": slots, "problems": problems.values.tolist(),
             "roots": {p.source["name"]: p.root for p in parts}}
    if previous != state or not (out / "manifest.parquet").is_file():
        _finalise(sources, parts, problems, out, settings, near_distance, subsets or {},
                  shard_images, progress)
        atomic_write_json(out / STATE, state, overwrite=True)
    _drop_stale_parts(out, set(names))
    if clean_staging:
        shutil.rmtree(out / "staging", ignore_errors=True)
        shutil.rmtree(out / "parts", ignore_errors=True)
        # a rerun restages: the bytes are gone
        atomic_write_json(out / STATE, {**state, "parts": []}, overwrite=True)
    staged = sum(s["images"] for s in stats)
    busy = sum(s["seconds"] for s in stats)
    return CurationResult(
        out_dir=out, manifest=pd.read_parquet(out / "manifest.parquet"),
        rejects=pd.read_parquet(out / "rejects.parquet"),
        duplicates=pd.read_parquet(out / "duplicates.parquet"),
        summary=pd.read_parquet(out / "summary.parquet"),
        subsets={k: v["images"] for k, v in
                 json.loads((out / "subsets" / "index.json").read_text()).items()},
        parts_done=len(todo), parts_skipped=len(parts) - len(todo),
        images_per_second_per_core=staged / busy if staged and busy else None,
        seconds=time.perf_counter() - start, skipped_sources=skipped_sources,
        changes=changes)


def plan_parts(sources: list[Source], files_per_part: int
               ) -> tuple[list[Part], list[str], pd.DataFrame]:
    """Parts of every available source, in registry order; the names of sources with no
    root (registered but not downloaded here); and, as rejects rows, what the walks could
    not enter (a source whose every folder is unreadable has rows here and no parts)."""
    if files_per_part < 1:
        raise ValueError(f"files_per_part {files_per_part!r} must be at least 1")
    parts, skipped, problems = [], [], []
    for source in sources:
        if not source.available:
            skipped.append(source.name)
            continue
        root = source.root_path()
        scan = source.scan()
        problems += [(path, reason, source.name, -1, detail)
                     for path, reason, detail in scan.problems]
        if not scan.files and not scan.problems:
            raise ValueError(f"source {source.name!r}: no files under {root} match "
                             f"{source.glob!r}")
        files = [p.relative_to(root).as_posix() for p in scan.files]
        for n, i in enumerate(range(0, len(files), files_per_part)):
            parts.append(Part(source=source.model_dump(), root=str(root),
                              files=tuple(files[i:i + files_per_part]), number=n,
                              stamps=tuple(scan.stamps[i:i + files_per_part])))
    if not parts:
        raise ValueError("no files to curate: " + (
            "; ".join(f"{p[0]} ({p[1]})" for p in problems) if problems
            else "no source has a root: set 'root' for the sources downloaded here"))
    return parts, skipped, pd.DataFrame(problems, columns=list(REJECT_COLUMNS))


def _changes(names: list[str], slots: list[str], done: list[bool],
             previous: dict) -> dict[str, int]:
    """Parts reused (staged before), curated again because their files changed, new, and
    removed, against the last finished curation (whose names and slots ``previous`` holds;
    a part whose slot it shares under another name is the same files, changed)."""
    current = set(names)
    gone = {slot for name, slot in zip(previous.get("parts", []), previous.get("slots", []))
            if name not in current}
    changed = sum(slot in gone for slot, d in zip(slots, done) if not d)
    return {"reused": sum(done), "changed": changed, "new": done.count(False) - changed,
            "removed": len(gone - set(slots))}


_PART_FILE = re.compile(r"^(?P<part>.+?)(\.rejects)?\.parquet$")
_STAGING_FILE = re.compile(r"^(?P<part>.+)-\d{6}\.tar(\.partial)?$")


def _drop_stale_parts(out: Path, names: set[str]) -> None:
    """Delete the work of parts this plan no longer has (files changed, removed or
    regrouped), so the resume state is this corpus's and stale rows cannot come back."""
    for folder, pattern in ((out / "parts", _PART_FILE), (out / "staging", _STAGING_FILE)):
        for path in folder.glob("*") if folder.is_dir() else ():
            match = pattern.match(path.name)
            if match and match["part"] not in names:
                path.unlink()


def _stage(todo: list[Part], out: Path, settings: Settings, workers: int | None,
           progress: bool) -> list[dict]:
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=sum(len(p.files) for p in todo), unit="file", desc="staging",
               disable=not progress or not todo, mininterval=1.0)
    stats = []
    if workers == 1 or len(todo) <= 1:
        for part in todo:
            stats.append(process_part(part, out, settings))
            bar.update(len(part.files))
    else:  # spawn: a notebook kernel's threads make fork unsafe
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                 initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
            try:
                futures = {pool.submit(process_part, p, out, settings): p for p in todo}
                for future in as_completed(futures):
                    stats.append(future.result())
                    bar.update(len(futures[future].files))
            except BaseException:  # Ctrl-C (KeyboardInterrupt) or a failed part
                _stop(pool)
                raise
    bar.close()
    return stats


def _stop(pool: ProcessPoolExecutor) -> None:
    """End the workers now rather than after every queued part (what leaving the ``with``
    would wait for). A part cut short is redone next run: its rows are written last."""
    workers = list((pool._processes or {}).values())  # no public handle before Python 3.14
    for worker in workers:
        worker.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _finalise(sources: list[Source], parts: list[Part], problems: pd.DataFrame, out: Path,
              settings: Settings, near_distance: int, subsets: dict[str, dict],
              shard_images: int, progress: bool) -> None:
    names = [p.name(settings) for p in parts]
    images = _concat([out / "parts" / f"{n}.parquet" for n in names], IMAGE_COLUMNS)
    rejects = _concat([out / "parts" / f"{n}.rejects.parquet" for n in names], REJECT_COLUMNS)
    if len(problems):
        rejects = pd.concat([problems, rejects], ignore_index=True)
    duplicates = find_duplicates(images, near_distance)
    kept = images[~images["image_id"].isin(duplicates["image_id"])]
    manifest = _write_shards(kept, out, settings, shard_images, progress)
    write_table(rejects, out / "rejects.parquet", overwrite=True)
    write_table(duplicates, out / "duplicates.parquet", overwrite=True)
    write_table(summarise(sources, parts, images, rejects, duplicates, manifest),
                out / "summary.parquet", overwrite=True)
    _write_subsets(manifest, out / "subsets", subsets)
    write_table(manifest, out / "manifest.parquet", overwrite=True)


def _write_shards(kept: pd.DataFrame, out: Path, settings: Settings, shard_images: int,
                  progress: bool) -> pd.DataFrame:
    """Copy kept images into shuffled, evenly sized shards (so a streaming reader's buffer
    mixes sources) under a fresh folder that replaces ``shards/`` only when complete."""
    hashes = np.fromiter(map(id_hash, kept["image_id"]), np.uint64, len(kept))
    order = np.argsort(hashes, kind="stable")
    kept = kept.iloc[order].reset_index(drop=True)
    fresh = out / "shards.partial"
    shutil.rmtree(fresh, ignore_errors=True)
    shards, offsets = [], []
    with ShardWriter(fresh, "corpus", max_members=2 * shard_images) as writer:
        for row in tqdm(kept.itertuples(index=False), total=len(kept), desc="sharding",
                        unit="img", disable=not progress, mininterval=1.0):
            data = read_member(out / "staging" / row.staging, row.staging_offset)
            key = f"{len(offsets):09d}"
            shard, offset = writer.add(f"{key}.{settings.image_format}", data)
            meta = {"image_id": row.image_id, "source": row.source, "modality": row.modality}
            writer.add(f"{key}.json", json.dumps(meta).encode())
            shards.append(f"shards/{shard}")
            offsets.append(offset)
    shutil.rmtree(out / "shards", ignore_errors=True)
    fresh.rename(out / "shards")
    manifest = kept.drop(columns=["staging", "staging_offset"])
    manifest["shard"] = pd.Series(shards, dtype=object)
    manifest["offset"] = np.asarray(offsets, dtype=np.int64)
    return manifest[list(MANIFEST_COLUMNS)]


def summarise(sources: list[Source], parts: list[Part], images: pd.DataFrame,
              rejects: pd.DataFrame, duplicates: pd.DataFrame,
              manifest: pd.DataFrame) -> pd.DataFrame:
    """Per-source counts before and after dedup: what 01_curation plots and a reviewer asks
    first ("how much of source X survived, and why not the rest?")."""
    files = pd.Series([len(p.files) for p in parts],
                      index=[p.source["name"] for p in parts]).groupby(level=0).sum()
    near = duplicates[duplicates["kind"] == "near"]
    within = near[near["source"] == near["duplicate_source"]]["source"].value_counts()
    across = near[near["source"] != near["duplicate_source"]]["source"].value_counts()
    exact = duplicates[duplicates["kind"] == "exact"]
    per_source = [t["source"].value_counts() for t in (images, rejects, exact)]
    kept = manifest["source"].value_counts()
    rows = [(s.name, s.modality, s.available, int(files.get(s.name, 0)),
             *(int(t.get(s.name, 0)) for t in (*per_source, within, across, kept)))
            for s in sources]
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _write_subsets(manifest: pd.DataFrame, folder: Path, subsets: dict[str, dict]) -> None:
    folder.mkdir(exist_ok=True)
    index = {}
    for name, spec in {"all": {}, **subsets}.items():
        unknown = set(spec) - {"fraction", "count", "modalities", "seed"}
        if unknown:
            raise ValueError(f"subset {name!r}: unknown keys {sorted(unknown)}; use fraction "
                             f"or count, modalities, seed")
        chosen = select_subset(manifest, **spec)
        write_table(chosen[["image_id"]], folder / f"{name}.parquet", overwrite=True)
        index[name] = {**spec, "images": len(chosen)}
    atomic_write_json(folder / "index.json", index, overwrite=True)


def load_manifest(out_dir: str | Path, subset: str | None = None) -> pd.DataFrame:
    """The manifest of a curated corpus, optionally narrowed to a named subset, with absolute
    shard paths (``location``) and offsets (``index``) as the pretraining dataset reads them."""
    out = Path(out_dir)
    path = out / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no curated corpus (no manifest.parquet); "
                                f"run `biovfm curate SOURCES.yaml --out {out}` first")
    manifest = pd.read_parquet(path)
    if subset:
        index = json.loads((out / "subsets" / "index.json").read_text())
        if subset not in index:
            raise ValueError(f"{out}: no subset {subset!r}; subsets: {sorted(index)}")
        ids = pd.read_parquet(out / "subsets" / f"{subset}.parquet")["image_id"]
        manifest = manifest[manifest["image_id"].isin(ids)].reset_index(drop=True)
    manifest["location"] = [str(out / s) for s in manifest["shard"]]
    manifest["index"] = manifest["offset"]
    return manifest


def _concat(paths: list[Path], columns: tuple[str, ...]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    frames = [f for f in frames if len(f)]
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=list(columns)))


def corpus_roots(out_dir: str | Path) -> dict[str, str]:
    """The raw folder of each source a corpus was made from (its provenance)."""
    state = _read_state(Path(out_dir))
    if state is None:
        raise FileNotFoundError(f"{out_dir} holds no finished curation ({STATE} is missing)")
    return state["roots"]


def _read_state(out: Path) -> dict | None:
    path = out / STATE
    return json.loads(path.read_text()) if path.is_file() else None




def curate_params(p: CurationParams, progress: bool = True) -> CurationResult:
    """:func:`curate` with a validated parameter set (what the notebook and CLI both call)."""
    from biovfm_lib.runs import resolve

    return curate(load_sources(resolve(p.sources)), resolve(p.out),
                  Settings(p.short_side, p.min_size, p.image_format), p.near_distance,
                  p.subsets, p.workers or None, p.files_per_part, p.shard_images,
                  p.clean_staging, progress)

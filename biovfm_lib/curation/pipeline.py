"""The curation pipeline: sources in, one deduplicated, subsettable, sharded corpus out.

Stages, each resumable:

1. plan: every available source's files, split into parts of ``files_per_part`` files;
2. stage: parts run in worker processes (:mod:`~biovfm_lib.curation.process`); a finished
   part is never redone, so a rerun after a crash or a kill only does what is missing;
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
    staging/, parts/    per-part work (the resume state; remove with clean_staging)
    curation.json       settings and what the last finalise was made from
"""
from __future__ import annotations

import json
import multiprocessing
import os
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
    parts, skipped_sources = plan_parts(sources, files_per_part)
    todo = [p for p in parts if not (out / "parts" / f"{p.name(settings)}.parquet").is_file()]
    stats = _stage(todo, out, settings, workers, progress)
    state = {"settings": asdict(settings), "near_distance": near_distance,
             "subsets": subsets or {}, "shard_images": shard_images,
             "parts": [p.name(settings) for p in parts],
             "roots": {p.source["name"]: p.root for p in parts}}
    if _read_state(out) != state or not (out / "manifest.parquet").is_file():
        _finalise(sources, parts, out, settings, near_distance, subsets or {}, shard_images,
                  progress)
        atomic_write_json(out / STATE, state, overwrite=True)
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
        seconds=time.perf_counter() - start, skipped_sources=skipped_sources)


def plan_parts(sources: list[Source], files_per_part: int) -> tuple[list[Part], list[str]]:
    """Parts of every available source, in registry order; and the names of sources with no
    root (registered but not downloaded here)."""
    if files_per_part < 1:
        raise ValueError(f"files_per_part {files_per_part!r} must be at least 1")
    parts, skipped = [], []
    for source in sources:
        if not source.available:
            skipped.append(source.name)
            continue
        root = source.root_path()
        files = [p.relative_to(root).as_posix() for p in source.files()]
        if not files:
            raise ValueError(f"source {source.name!r}: no files under {root} match "
                             f"{source.glob!r}")
        for n, i in enumerate(range(0, len(files), files_per_part)):
            parts.append(Part(source=source.model_dump(), root=str(root),
                              files=tuple(files[i:i + files_per_part]), number=n))
    if not parts:
        raise ValueError("no source has a root: set 'root' for the sources downloaded here")
    return parts, skipped


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
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            futures = {pool.submit(process_part, p, out, settings): p for p in todo}
            for future in as_completed(futures):
                stats.append(future.result())
                bar.update(len(futures[future].files))
    bar.close()
    return stats


def _finalise(sources: list[Source], parts: list[Part], out: Path, settings: Settings,
              near_distance: int, subsets: dict[str, dict], shard_images: int,
              progress: bool) -> None:
    names = [p.name(settings) for p in parts]
    images = _concat([out / "parts" / f"{n}.parquet" for n in names], IMAGE_COLUMNS)
    rejects = _concat([out / "parts" / f"{n}.rejects.parquet" for n in names], REJECT_COLUMNS)
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

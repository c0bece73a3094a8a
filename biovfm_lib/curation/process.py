"""One unit of curation work: a part (a few raw files of one source) to a staging shard.

A part's outputs are its staging shard, its rejects and its image rows, written in that
order with the rows last and atomically: the rows file existing is the mark that the part is
done, so a run killed at any moment resumes by redoing only parts without one. A part's name
carries a digest of its files (names, sizes and modification times) and settings, so
changing any of them, a file repaired or replaced in place included, makes new parts rather
than reusing stale ones.

Worker processes end with the process that started them, however it ends (a SIGKILL
included): :func:`end_with_parent` is their initializer.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from biovfm_lib.curation.dedup import content_hash, perceptual_hash
from biovfm_lib.curation.frames import Frame, Unusable, check_frame, standardise
from biovfm_lib.curation.readers import detect_reader, read_frames
from biovfm_lib.curation.shards import ShardWriter
from biovfm_lib.curation.sources import path_text
from biovfm_lib.runs import write_table

IMAGE_COLUMNS = ("image_id", "source", "modality", "anatomy", "raw_path", "frame",
                 "orig_height", "orig_width", "bit_depth", "channels", "height", "width",
                 "content_hash", "phash", "staging", "staging_offset")
REJECT_COLUMNS = ("raw_path", "reason", "source", "frame", "detail")


@dataclass(frozen=True)
class Settings:
    """What decides the pixels a part produces (so it is part of every part's digest)."""

    short_side: int = 256
    min_size: int = 32
    image_format: str = "png"  # png (lossless) or jpeg (quality 95; GPU-decodable)


@dataclass(frozen=True)
class Part:
    source: dict  # a Source as a dict (picklable for worker processes)
    root: str
    files: tuple[str, ...]  # paths relative to root
    number: int
    stamps: tuple[tuple[int, int], ...] = ()  # (size, mtime in ns) per file

    def name(self, settings: Settings) -> str:
        """The part's identity: what its files hold now (as size and mtime tell, the way
        make and rsync decide; hashing every byte would read the corpus twice)."""
        return self._named(settings, self.stamps)

    def slot(self, settings: Settings) -> str:
        """The identity without the stamps: the same names after a file changed, which is
        how a rerun tells a re-curated part from a new one."""
        return self._named(settings, None)

    def _named(self, settings: Settings, stamps: tuple | None) -> str:
        keyed = {k: self.source[k] for k in ("name", "modality", "anatomy", "reader", "options")}
        described = [keyed, self.root, self.files, asdict(settings)]
        digest = hashlib.blake2b(json.dumps(described + ([] if stamps is None else [stamps]),
                                            sort_keys=True, default=str).encode(),
                                 digest_size=6).hexdigest()
        return f"{self.source['name']}-{self.number:05d}-{digest}"


def end_with_parent(parent: int) -> None:
    """Initializer of a curation worker: end when ``parent`` does. A worker waits on its task
    queue, which never closes when the parent is killed outright, so without this it would
    live on (and hold its memory) after a SIGKILLed `biovfm curate` or notebook kernel.
    SIGINT is the parent's to handle (a terminal sends Ctrl-C to the whole group; the parent
    then stops its workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)  # re-parented: the parent is gone, whatever the worker was doing

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def process_part(part: Part, out_dir: str | Path, settings: Settings) -> dict:
    """Read, check, standardise and stage every image of ``part``; never raises for a bad
    file (it becomes a reject row). Returns counts and seconds for progress and throughput."""
    start = time.perf_counter()
    name = part.name(settings)
    staging, parts = Path(out_dir) / "staging", Path(out_dir) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    rows, rejects = [], []
    with ShardWriter(staging, name, max_members=2**31, max_bytes=2**62) as writer, \
            warnings.catch_warnings():
        # pydicom warns about every odd file it still reads; what matters lands in rejects
        warnings.filterwarnings("ignore", module="pydicom")
        for rel in part.files:
            _stage_file(part, rel, settings, writer, rows, rejects)
    write_table(pd.DataFrame(rejects, columns=list(REJECT_COLUMNS)),
                parts / f"{name}.rejects.parquet", overwrite=True)
    write_table(pd.DataFrame(rows, columns=list(IMAGE_COLUMNS)), parts / f"{name}.parquet",
                overwrite=True)
    return {"part": name, "files": len(part.files), "images": len(rows),
            "rejects": len(rejects), "seconds": time.perf_counter() - start}


def _stage_file(part: Part, rel: str, settings: Settings, writer: ShardWriter,
                rows: list, rejects: list) -> None:
    src = part.source
    path = Path(part.root) / rel
    shown = path_text(path)
    try:
        reader = src["reader"] if src["reader"] != "auto" else detect_reader(path)
        for frame in read_frames(path, reader, src["options"]):
            try:
                rows.append(_stage_frame(part, rel, path, frame, settings, writer, len(rows)))
            except Unusable as err:
                rejects.append((shown, err.reason, src["name"], frame.index,
                                path_text(err.detail)))
    except Unusable as err:
        rejects.append((shown, err.reason, src["name"], -1, path_text(err.detail)))
    except Exception as err:  # noqa: BLE001 - one odd file must not stop the corpus
        detail = path_text("".join(traceback.format_exception_only(err)).strip())
        rejects.append((shown, "reader_error", src["name"], -1, detail))


def _stage_frame(part: Part, rel: str, path: Path, frame: Frame, settings: Settings,
                 writer: ShardWriter, number: int) -> tuple:
    check_frame(frame, settings.min_size)
    pixels = standardise(frame.pixels, settings.short_side)
    image_id = (f"{part.source['name']}/{path_text(rel)}"
                + (f"#{frame.index}" if frame.index >= 0 else ""))
    member = f"{number:08d}.{settings.image_format}"
    shard, offset = writer.add(member, encode(pixels, settings.image_format))
    return (image_id, part.source["name"], part.source["modality"], part.source["anatomy"],
            path_text(path), frame.index, *frame.original_size, frame.bit_depth,
            1 if pixels.ndim == 2 else 3, *pixels.shape[:2], content_hash(pixels),
            perceptual_hash(pixels), shard, offset)


def encode(pixels: np.ndarray, image_format: str) -> bytes:
    """PNG at a low compression level (lossless, fast to write) or JPEG at quality 95."""
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    elif image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    else:
        raise ValueError(f"image_format {image_format!r} must be 'png' or 'jpeg'")
    return buffer.getvalue()

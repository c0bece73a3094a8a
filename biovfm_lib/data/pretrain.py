"""Pretraining images: an index of where every image lives, nested subsets, and the dataset.

The index is one DataFrame with a row per image and the columns of :data:`INDEX_COLUMNS`:
``image_id`` (stable string: source name + relative path or row number), ``source``,
``modality``, ``location`` (the file to read) and ``index`` (the row inside an ``.npz``;
-1 for an image file). The curation pipeline's parquet manifest will carry the same columns
(plus anatomy and the like), so subsets and the dataset work on it unchanged; a new storage
kind (tar shards) only needs a new branch in :meth:`PretrainImages.read`, chosen by the
location's suffix.

Subsets are the unit of the data-size and modality scaling experiments, so they must be nested
(the 1 % run's images are all in the 10 % run) and stratified by source (every size sees the
same mix of datasets), and a source added later must not change which images the others
contribute. :func:`select_subset` therefore orders every source's images by a keyed hash of
their ids and takes a prefix of each, with per-source counts from one fixed sequence whose
every prefix is within one image of proportional.
"""
from __future__ import annotations

import hashlib
import heapq
import math
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import Dataset

from biovfm_lib.data.medmnist import check_file

INDEX_COLUMNS = ("image_id", "source", "modality", "location", "index")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
MEDMNIST_MODALITY = {
    "pathmnist": "pathology", "chestmnist": "x-ray", "dermamnist": "dermoscopy",
    "octmnist": "oct", "pneumoniamnist": "x-ray", "retinamnist": "fundus",
    "breastmnist": "ultrasound", "bloodmnist": "microscopy", "tissuemnist": "microscopy",
    "organamnist": "ct", "organcmnist": "ct", "organsmnist": "ct",
}
_SOURCE_KEYS = {"folder": ({"name", "kind", "modality", "root"}, {"glob"}),
                "medmnist": ({"name", "kind", "root", "flag", "size"}, {"modality"})}
_GREY_MODES = frozenset({"1", "L", "LA"})


# --------------------------------------------------------------------------- index

def medmnist_sources(root: str | Path, size: int, flags: list[str] | None = None) -> list[dict]:
    """Source dicts for MedMNIST train splits, with the modalities of :data:`MEDMNIST_MODALITY`
    (all twelve 2D tasks unless ``flags`` narrows them)."""
    flags = list(MEDMNIST_MODALITY) if flags is None else flags
    unknown = [f for f in flags if f not in MEDMNIST_MODALITY]
    if unknown:
        raise ValueError(f"no default modality for {unknown}; known flags: "
                         f"{sorted(MEDMNIST_MODALITY)}")
    return [{"name": f, "kind": "medmnist", "modality": MEDMNIST_MODALITY[f],
             "root": str(root), "flag": f, "size": size} for f in flags]


def index_images(sources: list[dict]) -> pd.DataFrame:
    """One row per image of every source (``kind`` "folder": all image files under ``root``,
    recursively or matching ``glob``; ``kind`` "medmnist": the ``train_images`` of a
    MedMNIST-format npz). Rows keep the source order, and within a source a sorted order."""
    if not sources:
        raise ValueError("no sources given")
    names = [s.get("name") for s in sources]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"source names must be unique (they prefix the image ids): {duplicated}")
    return pd.concat([_index_source(s) for s in sources], ignore_index=True)


def _index_source(source: dict) -> pd.DataFrame:
    name, kind = source.get("name"), source.get("kind")
    if not isinstance(name, str) or not name:
        raise ValueError(f"source {source!r} needs a non-empty string 'name'")
    if kind not in _SOURCE_KEYS:
        raise ValueError(f"source {name!r}: unknown kind {kind!r}; expected one of "
                         f"{sorted(_SOURCE_KEYS)}")
    required, optional = _SOURCE_KEYS[kind]
    missing, extra = required - source.keys(), source.keys() - required - optional
    if missing or extra:
        raise ValueError(f"source {name!r} ({kind}): missing keys {sorted(missing)}, "
                         f"unknown keys {sorted(extra)}")
    root = Path(source["root"])
    if not root.is_dir():
        raise FileNotFoundError(f"source {name!r}: root {root} is not a directory")
    if kind == "folder":
        locations, ids, rows = _folder_images(name, root, source.get("glob"))
        modality = source["modality"]
    else:
        locations, ids, rows = _medmnist_images(name, root, source["flag"], source["size"])
        modality = source.get("modality", MEDMNIST_MODALITY.get(source["flag"]))
        if modality is None:
            raise ValueError(f"source {name!r}: no default modality for flag "
                             f"{source['flag']!r}; give 'modality'")
    return pd.DataFrame({"image_id": ids, "source": name, "modality": modality,
                         "location": locations, "index": np.asarray(rows, dtype=np.int64)},
                        columns=list(INDEX_COLUMNS))


def _folder_images(name: str, root: Path, glob: str | None) -> tuple[list, list, list]:
    """Image files (by suffix, whatever the glob matches) sorted by their relative path."""
    found = root.rglob("*") if glob is None else root.glob(glob)
    rel = sorted(p.relative_to(root).as_posix() for p in found
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not rel:
        raise ValueError(f"source {name!r}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}"
                         f") under {root}" + (f" matching {glob!r}" if glob else ""))
    base = root.resolve()
    return [str(base / r) for r in rel], [f"{name}/{r}" for r in rel], [-1] * len(rel)


def _medmnist_images(name: str, root: Path, flag: str, size: int) -> tuple[list, list, range]:
    path = check_file(root, flag, size).resolve()
    n = _npy_member(path, "train_images")[0][0]
    if n == 0:
        raise ValueError(f"source {name!r}: {path} has no train images")
    return [str(path)] * n, [f"{name}/{i}" for i in range(n)], range(n)


def _npy_member(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype, bool, int | None]:
    """Shape, dtype and Fortran order of ``key`` in an npz without reading its data, plus the
    data's byte offset in the file when the member is stored uncompressed (so it can be
    memory-mapped; compressed members get None)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            header_len = f.tell()
    if info.compress_type != zipfile.ZIP_STORED:
        return shape, dtype, fortran, None
    with open(path, "rb") as raw:  # the local header's name and extra lengths (zip spec 4.3.7)
        raw.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", raw.read(4))
    return shape, dtype, fortran, info.header_offset + 30 + name_len + extra_len + header_len


# --------------------------------------------------------------------------- subsets

def select_subset(index: pd.DataFrame, fraction: float = 1.0, count: int | None = None,
                  modalities: list[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """The first ``fraction`` (or ``count`` images) of the pool of ``modalities`` (None: all).

    For one pool and seed, every smaller subset is inside every larger one, fractions and
    counts alike. Each source contributes its share within one image, taking a prefix of its
    images ordered by a hash of (seed, image_id): a source added to the index changes how many
    images the others give, never which ones come first. Rows keep the index's order.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed {seed!r} must be an integer in [0, 2**64)")
    pool = _modality_pool(index, modalities).reset_index(drop=True)
    n = _subset_size(len(pool), fraction, count)
    if n == len(pool):
        return pool
    codes, _ = pd.factorize(pool["source"], sort=True)  # sources in name order
    sizes = np.bincount(codes)
    key = hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=16).digest()
    hashes = np.fromiter((_id_hash(i, key) for i in pool["image_id"]), np.uint64, len(pool))
    order = np.lexsort((hashes, codes))  # by source, then hash (a 64-bit tie keeps row order)
    starts = np.cumsum(sizes) - sizes
    chosen = np.zeros(len(pool), dtype=bool)
    for start, take in zip(starts, _apportion(sizes.tolist(), n)):
        chosen[order[start:start + take]] = True
    return pool[chosen].reset_index(drop=True)


def _modality_pool(index: pd.DataFrame, modalities: list[str] | None) -> pd.DataFrame:
    if modalities is None:
        return index
    if isinstance(modalities, str) or not modalities:
        raise ValueError(f"modalities must be a non-empty list of names or None, "
                         f"got {modalities!r}")
    known = sorted(index["modality"].unique())
    unknown = sorted(set(modalities) - set(known))
    if unknown:
        raise ValueError(f"unknown modalit{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                         f"the index has {known}")
    return index[index["modality"].isin(modalities)]


def _subset_size(pool: int, fraction: float, count: int | None) -> int:
    if count is not None:
        if fraction != 1.0:
            raise ValueError(f"give a fraction or a count, not both (fraction={fraction!r}, "
                             f"count={count!r})")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= pool:
            raise ValueError(f"count {count!r} must be an integer in [1, {pool}] (the pool)")
        return count
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction!r} must be in (0, 1]")
    n = math.floor(fraction * pool + 0.5)
    if n == 0:
        raise ValueError(f"fraction {fraction!r} of {pool} images selects none")
    return n


def _id_hash(image_id: str, key: bytes) -> int:
    """64-bit keyed BLAKE2b of an id: stable across Python, numpy and pandas versions."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8, key=key).digest(),
                          "big")


def _apportion(sizes: list[int], n: int) -> list[int]:
    """Per-source counts of the first ``n`` seats of a fixed sequence whose every prefix of
    length m gives source s between m*p_s - 1 and m*p_s + 1 seats (p_s = its share of the
    pool). Being prefixes of one sequence makes the counts nested in ``n``.

    Rounding each share on its own does not work: the counts must sum to n, and largest
    remainders can take a seat away as n grows (the Alabama paradox). Divisor methods stay
    nested but miss the quota when many small sources meet a big one. Here source s's j-th
    seat may go no earlier than ceil((j-1)/p_s) and must go by floor(j/p_s); such a
    sequence exists (Tijdeman's chairman assignment theorem gives one within 1 - 1/(2k-2)),
    and earliest-deadline-first finds one for unit jobs with release times. It costs a heap
    step per seat: about a second per million images.
    """
    total = sum(sizes)
    counts = [0] * len(sizes)
    ready = [(total // size, s) for s, size in enumerate(sizes)]  # (deadline, source)
    heapq.heapify(ready)
    waiting: list[tuple[int, int]] = []  # (release, source) of each source's next seat
    for seat in range(1, n + 1):
        while waiting and waiting[0][0] <= seat:
            s = heapq.heappop(waiting)[1]
            heapq.heappush(ready, ((counts[s] + 1) * total // sizes[s], s))
        s = heapq.heappop(ready)[1]
        counts[s] += 1
        if counts[s] < sizes[s]:
            heapq.heappush(waiting, (-(-counts[s] * total // sizes[s]), s))
    return counts


# --------------------------------------------------------------------------- dataset

class PretrainImages(Dataset):
    """The images of an index as RGB uint8 CHW tensors, passed through ``transform``.

    Keys are ``(epoch, i)`` pairs (what :class:`~biovfm_lib.data.sampler.
    ResumableDistributedSampler` yields) or a plain ``i`` (epoch 0). The transform runs on
    torch's CPU generator, re-seeded for each item from (seed, epoch, i) inside
    :func:`torch.random.fork_rng`, so an item's augmentation depends on nothing else: not on
    the worker that loads it, the number of workers, nor what was loaded before, which is what
    makes a resumed run replay an uninterrupted one. The epoch travels with the key rather
    than through a ``set_epoch`` on the dataset, because persistent DataLoader workers hold
    their own copies of the dataset and would never see the call. (With a plain sampler every
    epoch is epoch 0, so augmentations would repeat: train with the resumable sampler.)
    Transforms must draw from torch's global generator, as all torchvision v2 ones do.

    Locations are held in an Arrow array rather than Python strings, so forked workers do not
    copy them page by page as reference counts change. Npz files are opened once per process
    (workers included) and never pickled: a stored member is memory-mapped, shared through
    the page cache; a compressed one (real MedMNIST files) is decompressed once per process.
    """

    def __init__(self, index: pd.DataFrame, transform: Callable | None = None, seed: int = 0):
        missing = {"location", "index"} - set(index.columns)
        if missing:
            raise ValueError(f"index lacks columns {sorted(missing)}")
        self.locations = pa.array(index["location"].astype(str), type=pa.large_string())
        self.rows = index["index"].to_numpy(dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        img = self.read(i)
        if self.transform is None:
            return img
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_sample_seed(self.seed, epoch, i))
            return self.transform(img)

    def read(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 (3, H, W), untransformed."""
        location = self.locations[i].as_py()
        if location.endswith(".npz"):
            return to_rgb_chw(np.asarray(self._train_images(location)[self.rows[i]]))
        return read_image_file(location)

    def _train_images(self, path: str) -> np.ndarray:
        if path not in self._arrays:
            shape, dtype, fortran, offset = _npy_member(Path(path), "train_images")
            if offset is None:
                with np.load(path) as npz:
                    self._arrays[path] = npz["train_images"]
            else:
                self._arrays[path] = np.memmap(path, dtype=dtype, mode="r", offset=offset,
                                               shape=shape, order="F" if fortran else "C")
        return self._arrays[path]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


def read_image_file(path: str | Path) -> torch.Tensor:
    """A PNG/JPEG/TIFF/BMP file (first frame) as uint8 (3, H, W). Alpha is dropped, palette
    and CMYK images become RGB, grey is repeated, and 16-bit or float pixels are stretched
    min-max (see :func:`to_rgb_chw`)."""
    with Image.open(path) as im:
        if im.mode in _GREY_MODES:
            return to_rgb_chw(np.asarray(im.convert("L")))
        if im.mode.startswith("I") or im.mode == "F":
            return to_rgb_chw(np.asarray(im))
        return to_rgb_chw(np.asarray(im.convert("RGB")))


def to_rgb_chw(pixels: np.ndarray) -> torch.Tensor:
    """(H, W), (H, W, 1) or (H, W, 3) pixels as uint8 (3, H, W).

    Pixels that are not uint8 are stretched from the image's own min..max to 0..255: medical
    16-bit files rarely use their full range (a 12-bit detector's values stay below 4096), so
    dividing by 257 would leave many of them nearly black. A constant image becomes 0.
    """
    if pixels.dtype != np.uint8:
        lo, hi = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        pixels = np.rint((pixels.astype(np.float64) - lo) * scale).astype(np.uint8)
    hwc = pixels[..., None] if pixels.ndim == 2 else pixels
    if hwc.ndim != 3 or hwc.shape[-1] not in (1, 3):
        raise ValueError(f"cannot read pixels of shape {pixels.shape} as an image")
    chw = torch.from_numpy(np.array(hwc.transpose(2, 0, 1), order="C"))  # a writable copy
    return chw.expand(3, -1, -1).contiguous()

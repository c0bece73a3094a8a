"""Pretraining images: an index of where every image lives, nested subsets, and the dataset.

The index is one DataFrame with a row per image and the columns of :data:`INDEX_COLUMNS`:
``image_id`` (stable string: source name + relative path or row number), ``source``,
``modality``, ``location`` (the file to read) and ``index`` (the row inside an ``.npz``;
-1 for an image file). The curation pipeline's parquet manifest carries the same columns
(plus anatomy and the like), so subsets and the dataset work on it unchanged: there the
location is a tar shard and the index the image's byte offset in it.

Subsets are chosen by :func:`biovfm_lib.curation.subsets.select_subset`, shared with
curation, so a named subset of the corpus and a training run's subset agree.
"""
from __future__ import annotations

import io
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

from biovfm_lib.curation.shards import read_member
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
                "medmnist": ({"name", "kind", "root", "flag", "size"}, {"modality"}),
                "corpus": ({"name", "kind", "root"}, {"subset"})}
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
    MedMNIST-format npz; ``kind`` "corpus": a curated corpus's manifest, or one of its named
    ``subset``, keeping each image's own source and modality). Rows keep the source order,
    and within a source a sorted order."""
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
    if kind == "corpus":
        from biovfm_lib.curation.pipeline import load_manifest

        return load_manifest(root, source.get("subset"))[list(INDEX_COLUMNS)]
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
    path = check_file(root, flag, size, counts=False).resolve()  # only train images are read
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
        if location.endswith(".tar"):  # a curated shard; the row is the member's data offset
            with Image.open(io.BytesIO(read_member(location, int(self.rows[i])))) as im:
                return to_rgb_chw(np.asarray(im))
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

"""MedMNIST loading through the `medmnist` package's own classes and file layout.

Runs never download: a missing file is an error that says where the file belongs and how to
get it (``biovfm data medmnist --download`` on a connected machine). Real and synthetic files
share the layout; a folder is synthetic when it carries the generator's marker.

Every file is checked against ``medmnist.INFO`` before use (keys, dtypes, shapes, label ranges,
and counts: INFO's for real files, the marker's for synthetic ones, which are written at a
fraction of the official size). Unchecked, a bad file either ends in an error naming no file
or, worse, runs: float images would be divided by 255 a second time.
"""
from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import medmnist
import numpy as np

from biovfm_lib.data.synthetic import SYNTHETIC_MARKER, synthetic_info, write_synthetic

SPLITS = ("train", "val", "test")
KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
CONTENT_CHECKS = "keys, dtypes, shapes, label ranges and counts"
# what reading a damaged npz raises, from zipfile, numpy's format reader or zlib
_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error)


class MedMNISTFileError(FileNotFoundError):
    """A MedMNIST file is missing or corrupt; the message says how to fix it."""


class MedMNISTChecksumError(MedMNISTFileError):
    """A file's MD5 is not the one in ``medmnist.INFO``: another version, or damaged."""


class MedMNISTFormatError(MedMNISTFileError, ValueError):
    """A file is there but is not what ``medmnist.INFO`` describes; the message names the file
    and every fault found, in one line."""


class MedMNISTUnreadableError(MedMNISTFormatError):
    """A file cannot be read as an npz at all: truncated, not a zip, or a damaged member."""


@dataclass(frozen=True)
class TaskData:
    """One MedMNIST task's three splits, as uint8 images and medmnist-shaped labels."""

    flag: str
    task: str  # medmnist.INFO task type, e.g. "multi-class"
    n_classes: int  # classes, or labels for the multi-label task
    n_channels: int
    size: int
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    file: Path
    synthetic: bool

    @property
    def multilabel(self) -> bool:
        return self.task == "multi-label, binary-class"


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def md5_key(size: int) -> str:
    return "MD5" if size == 28 else f"MD5_{size}"


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def check_file(root: str | Path, flag: str, size: int, verify_md5: bool = False,
               counts: bool = True) -> Path:
    """Path of a task's file, or a :class:`MedMNISTFileError` telling how to obtain it.

    The contents are checked every time (:func:`check_contents`, cheap: headers and labels
    only), the MD5 only on request and only for real files (it reads the whole file).
    ``counts=False`` is for readers of the images alone (pretraining), which a subsampled
    file serves as well.
    """
    if flag not in medmnist.INFO:
        raise ValueError(f"unknown MedMNIST flag {flag!r}")
    path = Path(root) / file_name(flag, size)
    info = medmnist.INFO[flag]
    url_key = "url" if size == 28 else f"url_{size}"
    if not path.is_file():
        raise MedMNISTFileError(
            f"MedMNIST file {path} not found. Put {path.name} in {Path(root).resolve()}: on a "
            f"connected machine run `biovfm data medmnist --download --size {size} --root {root}`"
            f", or download {info[url_key]} by hand (MD5 {info[md5_key(size)]}). For a demo "
            f"without data, `biovfm data synth --root DIR --size {size}` writes synthetic files.")
    check_contents(path, flag, size, counts)
    if verify_md5 and synthetic_info(path.parent) is None:
        got, want = file_md5(path), info[md5_key(size)]
        if got != want:
            raise MedMNISTChecksumError(f"MD5 mismatch for {path}: got {got}, expected {want} "
                                        "(medmnist.INFO); the file is corrupt or another version")
    return path


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _unreadable(path: Path, flag: str, size: int, err: BaseException, where: str = "") -> str:
    marker = synthetic_info(path.parent)
    if marker is None:
        fix = (f"download it again (`biovfm data medmnist --download --size {size} "
               f"--root {path.parent} --tasks {flag}`)")
    else:  # the folder's own seed and scale, or the generator refuses the folder
        fix = (f"delete it and rerun `biovfm data synth --root {path.parent} --size {size} "
               f"--scale {marker.get('scale')} --seed {marker.get('seed')} --tasks {flag}`")
    return (f"{path} is unreadable ({where}{_one_line(err)}): the file is truncated or "
            f"corrupt; {fix}")


def _expected_counts(path: Path, flag: str) -> tuple[Mapping[str, int] | None, str]:
    """Per-split sample counts the file must hold, and where they come from: INFO for real
    files, the marker for synthetic ones (None when the marker does not record them)."""
    marker = synthetic_info(path.parent)
    if marker is None:
        return medmnist.INFO[flag]["n_samples"], "medmnist.INFO"
    counts = marker.get("files", {}).get(path.name, {}).get("n_samples")
    return (counts, SYNTHETIC_MARKER) if counts else (None, "")


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(f)
    return shape, dtype


def _split_faults(zf: zipfile.ZipFile, split: str, info: Mapping[str, Any], size: int,
                  counts: Mapping[str, int] | None, source: str) -> list[str]:
    with zf.open(f"{split}_images.npy") as f:
        shape, dtype = _npy_header(f)
    with zf.open(f"{split}_labels.npy") as f:
        label_shape, label_dtype = _npy_header(f)
    n = shape[0] if shape else 0
    multilabel = info["task"] == "multi-label, binary-class"
    width = len(info["label"]) if multilabel else 1
    top = 1 if multilabel else len(info["label"]) - 1
    faults = []
    if dtype != np.uint8:
        faults.append(f"{split}_images are {dtype}, expected uint8 (0-255)")
    want = (n, size, size) + ((3,) if info["n_channels"] == 3 else ())
    if shape != want:
        faults.append(f"{split}_images have shape {shape}, expected {want}")
    rows = label_shape[0] if label_shape else 0
    if rows != n:
        faults.append(f"{split}_labels has {rows} rows but {split}_images has {n}")
    if label_shape != (rows, width):
        faults.append(f"{split}_labels have shape {label_shape}, expected {(rows, width)}")
    if label_dtype.kind not in "iu":
        faults.append(f"{split}_labels are {label_dtype}, expected integers")
    elif rows:
        with zf.open(f"{split}_labels.npy") as f:
            labels = np.lib.format.read_array(f, allow_pickle=False)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > top:
            faults.append(f"{split}_labels hold values outside 0..{top} (min {low}, max {high})")
    if counts is not None and n != counts[split]:
        faults.append(f"{split} has {n} samples, expected {counts[split]} ({source})")
    return faults


def check_contents(path: Path, flag: str, size: int, counts: bool = True) -> None:
    """Raise a :class:`MedMNISTFormatError` naming ``path`` and every fault, unless the file
    holds the six arrays ``medmnist.INFO`` describes for ``flag`` at ``size`` px (with its
    expected sample counts unless ``counts`` is False). Only npy headers and labels are read,
    so this costs next to nothing even for 224 px files."""
    info = medmnist.INFO[flag]
    expected, source = _expected_counts(path, flag) if counts else (None, "")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = [k for k in KEYS if f"{k}.npy" not in names]
            if missing:
                plural = "s" if len(missing) > 1 else ""
                faults = [f"missing key{plural} {', '.join(missing)} (a MedMNIST file holds "
                          + ", ".join(KEYS) + ")"]
            else:
                faults = [fault for split in SPLITS
                          for fault in _split_faults(zf, split, info, size, expected, source)]
    except _READ_ERRORS as err:
        raise MedMNISTUnreadableError(_unreadable(path, flag, size, err)) from None
    if faults:
        raise MedMNISTFormatError(f"{path} is not a valid {flag} file at {size} px: "
                                  + "; ".join(faults))


@dataclass(frozen=True)
class FileState:
    """What ``biovfm data medmnist`` says of one file; each state says what was checked, so
    ``ok`` never stands for a check that did not run."""

    state: str  # ok, synthetic, missing, md5 mismatch, unreadable, invalid
    detail: str

    @property
    def good(self) -> bool:
        return self.state in ("ok", "synthetic")


def file_state(root: str | Path, flag: str, size: int, verify_md5: bool = False) -> FileState:
    """Check one task's file as :func:`check_file` does, and say how it came out."""
    path = Path(root) / file_name(flag, size)
    try:
        check_file(root, flag, size, verify_md5)
    except MedMNISTChecksumError as err:
        return FileState("md5 mismatch", str(err))
    except MedMNISTUnreadableError as err:
        return FileState("unreadable", str(err))
    except MedMNISTFormatError as err:
        return FileState("invalid", str(err))
    except MedMNISTFileError as err:
        return FileState("missing", str(err))
    if synthetic_info(path.parent) is not None:
        return FileState("synthetic", f"{path} ({CONTENT_CHECKS} checked against "
                         f"medmnist.INFO and {SYNTHETIC_MARKER}; not checked against MD5: "
                         "synthetic files have no official checksum)")
    md5 = "MD5 matches medmnist.INFO" if verify_md5 else "MD5 not checked (add --verify)"
    return FileState("ok", f"{path} ({CONTENT_CHECKS} match medmnist.INFO; {md5})")


def prepare_tasks(root: Path, size: int, tasks: list[str], synthetic: bool = False,
                  scale: float = 0.02, seed: int = 0, verify_md5: bool = False) -> Path:
    """Check every task's file before any compute starts (writing synthetic ones first when
    asked), so a missing file costs nothing."""
    if synthetic:
        write_synthetic(root, size=size, scale=scale, seed=seed, tasks=tasks)
    for flag in tasks:
        check_file(root, flag, size, verify_md5=verify_md5)
    return root


def load_task(flag: str, root: str | Path, size: int = 224, verify_md5: bool = False,
              splits: Sequence[str] = SPLITS) -> TaskData:
    """Load the ``splits`` (by default all) of one task with the task's ``medmnist`` dataset
    class, after :func:`check_file`; a member damaged past its header is named here, when it
    is read."""
    path = check_file(root, flag, size, verify_md5)
    info = medmnist.INFO[flag]
    cls = getattr(medmnist, info["python_class"])
    images, labels = {}, {}
    for split in splits:
        try:
            ds = cls(split=split, root=str(root), size=size, download=False)
            images[split], labels[split] = np.asarray(ds.imgs), np.asarray(ds.labels)
        except _READ_ERRORS as err:
            raise MedMNISTUnreadableError(
                _unreadable(path, flag, size, err, f"reading {split}: ")) from None
    return TaskData(
        flag=flag, task=info["task"], n_classes=len(info["label"]),
        n_channels=info["n_channels"], size=size, images=images, labels=labels, file=path,
        synthetic=synthetic_info(root) is not None,
    )


def sample_split(flag: str, root: str | Path, size: int, split: str, n: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of one split (all of them when it holds fewer) with their labels, drawn
    without replacement by ``seed`` and kept in file order: a fixed sample.

    Only the drawn rows are read (a stored member through a memory map, a compressed one
    streamed past the rest), so 1000 images of a 13 GB split at 224 px cost 1000 images of
    memory, where :func:`load_task` would hold every split."""
    path = check_file(root, flag, size, counts=False)
    try:
        with zipfile.ZipFile(path) as zf:
            with zf.open(f"{split}_labels.npy") as f:
                labels = np.lib.format.read_array(f, allow_pickle=False)
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(len(labels), min(n, len(labels)), replace=False))
            images = _read_rows(zf, path, f"{split}_images.npy", rows)
    except _READ_ERRORS as err:
        raise MedMNISTUnreadableError(
            _unreadable(path, flag, size, err, f"reading {split}: ")) from None
    return images, labels[rows]


def _read_rows(zf: zipfile.ZipFile, path: Path, member: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted) of the C-ordered array ``member`` of the npz ``zf`` at ``path``."""
    info = zf.getinfo(member)
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        if fortran:
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)[rows]
        start = f.tell()
        if info.compress_type == zipfile.ZIP_STORED:  # the array's bytes lie in the file as is
            with open(path, "rb") as raw:
                raw.seek(info.header_offset + 26)  # name and extra lengths of the local header
                name_len, extra_len = struct.unpack("<HH", raw.read(4))
            offset = info.header_offset + 30 + name_len + extra_len + start
            return np.array(np.memmap(path, dtype, "r", offset, shape)[rows])
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        out = np.empty((len(rows), *shape[1:]), dtype)
        for i, row in enumerate(rows):
            f.seek(start + int(row) * row_bytes)  # forward only: rows are sorted
            out[i] = np.frombuffer(f.read(row_bytes), dtype).reshape(shape[1:])
        return out


def download(root: str | Path, size: int, flags: list[str]) -> list[Path]:
    """Fetch files with the ``medmnist`` package's own downloader (needs network)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    for flag in flags:
        cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
        cls(split="train", root=str(root), size=size, download=True)
    return [check_file(root, flag, size, verify_md5=True) for flag in flags]

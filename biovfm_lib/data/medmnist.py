"""MedMNIST loading through the `medmnist` package's own classes and file layout.

Runs never download: a missing file is an error that says where the file belongs and how to
get it (``biovfm data medmnist --download`` on a connected machine). Real and synthetic files
share the layout; a folder is synthetic when it carries the generator's marker.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import medmnist
import numpy as np

from biovfm_lib.data.synthetic import synthetic_info, write_synthetic

SPLITS = ("train", "val", "test")


class MedMNISTFileError(FileNotFoundError):
    """A MedMNIST file is missing or corrupt; the message says how to fix it."""


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


def check_file(root: str | Path, flag: str, size: int, verify_md5: bool = False) -> Path:
    """Path of a task's file, or a :class:`MedMNISTFileError` telling how to obtain it."""
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
    if verify_md5 and synthetic_info(path.parent) is None:
        got, want = file_md5(path), info[md5_key(size)]
        if got != want:
            raise MedMNISTFileError(f"MD5 mismatch for {path}: got {got}, expected {want} "
                                    "(medmnist.INFO); the file is corrupt or another version")
    return path


def prepare_tasks(root: Path, size: int, tasks: list[str], synthetic: bool = False,
                  scale: float = 0.02, seed: int = 0, verify_md5: bool = False) -> Path:
    """Check every task's file before any compute starts (writing synthetic ones first when
    asked), so a missing file costs nothing."""
    if synthetic:
        write_synthetic(root, size=size, scale=scale, seed=seed, tasks=tasks)
    for flag in tasks:
        check_file(root, flag, size, verify_md5=verify_md5)
    return root


def load_task(flag: str, root: str | Path, size: int = 224, verify_md5: bool = False) -> TaskData:
    """Load all splits of one task with the task's ``medmnist`` dataset class."""
    path = check_file(root, flag, size, verify_md5)
    info = medmnist.INFO[flag]
    cls = getattr(medmnist, info["python_class"])
    images, labels = {}, {}
    for split in SPLITS:
        ds = cls(split=split, root=str(root), size=size, download=False)
        images[split], labels[split] = np.asarray(ds.imgs), np.asarray(ds.labels)
    return TaskData(
        flag=flag, task=info["task"], n_classes=len(info["label"]),
        n_channels=info["n_channels"], size=size, images=images, labels=labels, file=path,
        synthetic=synthetic_info(root) is not None,
    )


def download(root: str | Path, size: int, flags: list[str]) -> list[Path]:
    """Fetch files with the ``medmnist`` package's own downloader (needs network)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    for flag in flags:
        cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
        cls(split="train", root=str(root), size=size, download=True)
    return [check_file(root, flag, size, verify_md5=True) for flag in flags]

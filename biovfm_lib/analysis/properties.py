"""Per-task properties that the scaling slopes are correlated with.

The study relates how much a task gains from scale to how big it is (training samples), how
separable its classes are (Davies-Bouldin index, DBI) and how complex its images are
(compressibility). Every image statistic here is computed on the same fixed-seed sample of a
task's training split (:func:`sample_indices`), so properties are reproducible and comparable
across tasks of very different sizes.

Multi-label rule (ChestMNIST): DBI needs one class per image, so an image with no positive label
("no finding") is class 0 and any other image is class ``1 + index of its first positive
label`` in medmnist's label order. This keeps the dominant "no finding" group apart, which is
what separates a chest X-ray task in practice, and is deterministic; its cost is that
co-occurring findings are credited to the lower-indexed one.

Counts: ``n_train`` is the training split, ``n_samples`` all three splits (the study's
"# Samples", which its correlations use) and ``n_classes`` the classes (labels for ChestMNIST,
5 grades for RetinaMNIST; the study's "# Classes"). Counts need no images:
:func:`count_properties` takes them from ``medmnist.INFO`` and leaves the image properties
empty, so the study's count correlations can be checked on a machine without data.
"""
from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import medmnist
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import davies_bouldin_score

from biovfm_lib.data.medmnist import load_task
from biovfm_lib.data.synthetic import TASKS

if TYPE_CHECKING:  # torch stays unimported unless an encoder is actually used
    from torch import nn

MULTI_LABEL = "multi-label, binary-class"
COLUMNS = ["task", "n_train", "n_classes", "task_type", "dbi_features", "dbi_pixels",
           "compress_gzip", "compress_png", "entropy", "n_samples"]
IMAGE_COLUMNS = ["dbi_features", "dbi_pixels", "compress_gzip", "compress_png", "entropy"]
ZLIB_LEVEL = 9  # fixed, so ratios never depend on a library default
PNG_LEVEL = 9


def sample_indices(n: int, sample: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(sample, n)`` items drawn without replacement with ``seed``.

    Every property of a task uses this one draw, so they all describe the same images.
    """
    if sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def class_labels(labels: np.ndarray, task: str) -> np.ndarray:
    """One integer class per image; multi-label rows follow the module's documented rule."""
    labels = np.asarray(labels)
    if task != MULTI_LABEL:
        return labels.reshape(len(labels), -1)[:, 0].astype(np.int64)
    positive = labels.astype(bool)
    return np.where(positive.any(axis=1), positive.argmax(axis=1) + 1, 0)


def davies_bouldin(features: np.ndarray, labels: np.ndarray, task: str) -> float:
    """DBI of ``features`` grouped by class (lower = better separated classes).

    ``labels`` are medmnist-shaped, (N, 1) or (N, n_labels); at least two classes must occur.
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    return float(davies_bouldin_score(x, class_labels(labels, task)))


def downsampled_pixels(images: np.ndarray, pixel_size: int) -> np.ndarray:
    """Images as (N, pixel_size**2 * channels) vectors, box-filtered and standardised per image.

    Box (area) down-sampling keeps the coarse structure a class signal lives in without
    aliasing; per-image standardisation (zero mean, unit variance) removes brightness and
    contrast offsets so the pixel DBI measures shape/texture separability, not exposure.
    """
    size = (pixel_size, pixel_size)
    small = np.stack([np.asarray(Image.fromarray(img).resize(size, Image.BOX), np.float64)
                      for img in images]).reshape(len(images), -1)
    small -= small.mean(axis=1, keepdims=True)
    sd = small.std(axis=1, keepdims=True)
    return small / np.where(sd > 0, sd, 1.0)


def _compressed_size(img: np.ndarray, method: str) -> int:
    if method == "gzip":  # the DEFLATE stream gzip writes, without gzip's fixed 18-byte header
        return len(zlib.compress(img.tobytes(), ZLIB_LEVEL))
    if method == "png":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=PNG_LEVEL)
        return buf.tell()
    raise ValueError(f"unknown compression method {method!r}; use 'gzip' or 'png'")


def compressibility(images: np.ndarray, method: Literal["gzip", "png"] = "gzip",
                    sample: int = 500, seed: int = 0) -> float:
    """Median compressed/raw byte ratio per image: a proxy for image complexity.

    The median keeps a few atypical images from moving a task's value; a ratio above 1 is
    possible for noise-like images, since the container overhead is counted.
    """
    idx = sample_indices(len(images), sample, seed)
    ratios = [_compressed_size(np.ascontiguousarray(images[i]), method) / images[i].nbytes
              for i in idx]
    return float(np.median(ratios))


def image_entropy(images: np.ndarray, sample: int = 500, seed: int = 0) -> float:
    """Mean Shannon entropy (bits) of each image's 8-bit intensity histogram (all channels)."""
    idx = sample_indices(len(images), sample, seed)
    out = []
    for i in idx:
        p = np.bincount(np.asarray(images[i], np.uint8).ravel(), minlength=256) / images[i].size
        p = p[p > 0]
        out.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(out))


def task_properties(root: str | Path, size: int = 28, tasks: Sequence[str] | None = None,
                    encoder: nn.Module | None = None, sample: int = 500, seed: int = 0,
                    pixel_size: int = 16) -> pd.DataFrame:
    """One row of properties per task (default: the study's 12 2D MedMNIST tasks).

    ``encoder`` is a frozen timm ViT accepted by ``extract_features``; without one,
    ``dbi_features`` is NaN. All image statistics use one fixed-seed training sample per task.
    """
    rows = []
    for flag in tasks or TASKS:
        data = load_task(flag, root, size)
        train, labels = data.images["train"], data.labels["train"]
        idx = sample_indices(len(train), sample, seed)
        images, picked = train[idx], labels[idx]
        rows.append({
            "task": flag, "n_train": len(train), "n_classes": data.n_classes,
            "task_type": data.task,
            "dbi_features": (np.nan if encoder is None
                             else davies_bouldin(_features(encoder, images), picked, data.task)),
            "dbi_pixels": davies_bouldin(downsampled_pixels(images, pixel_size), picked,
                                         data.task),
            # images is already the sample: compress/measure all of it
            "compress_gzip": compressibility(images, "gzip", len(images)),
            "compress_png": compressibility(images, "png", len(images)),
            "entropy": image_entropy(images, len(images)),
            "n_samples": sum(len(split) for split in data.labels.values()),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def measured(properties: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The ``columns`` every task has a value for: without images only the counts, so a
    prediction or figure over properties uses what exists instead of failing on NaNs."""
    return [c for c in columns if properties[c].notna().all()]


def count_properties(tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The count properties of the real tasks from ``medmnist.INFO``, image ones NaN.

    Same columns as :func:`task_properties`; what it returns for real files, without them.
    """
    rows = []
    for flag in tasks or TASKS:
        info = medmnist.INFO[flag]
        rows.append({"task": flag, "n_train": info["n_samples"]["train"],
                     "n_classes": len(info["label"]), "task_type": info["task"],
                     **dict.fromkeys(IMAGE_COLUMNS, np.nan),
                     "n_samples": sum(info["n_samples"].values())})
    return pd.DataFrame(rows, columns=COLUMNS)


def _features(encoder: nn.Module, images: np.ndarray) -> np.ndarray:
    """Encoder features on the encoder's own device; torch is imported only when needed."""
    from biovfm_lib.probe.features import extract_features

    device = next(encoder.parameters()).device
    return extract_features(encoder, images, device, desc="property features")

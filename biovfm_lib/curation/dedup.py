"""Duplicate removal: exact copies by content hash, near copies by perceptual hash.

Public medical datasets overlap (MIMIC-CXR and CheXpert share none, but many fundus and
chest sets re-host each other's images, and video or volume sources repeat near-identical
frames), and a duplicated image is counted twice in every data-size point of the scaling
study. Exact copies are found by a hash of the standardised pixels, so the same image stored
as DICOM in one source and PNG in another still matches. Near copies are found by a 64-bit DCT
perceptual hash (``imagehash.phash``) within a Hamming distance.

Keeping the first image of a group in a fixed priority order (sources in registry order, then
image id) makes the result independent of how files were split across worker processes.
"""
from __future__ import annotations

import hashlib

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

DUPLICATE_COLUMNS = ("image_id", "source", "duplicate_of", "duplicate_source", "kind",
                     "distance")


def content_hash(pixels: np.ndarray) -> str:
    """BLAKE2b of the pixel bytes and shape: equal exactly when the images are equal."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def perceptual_hash(pixels: np.ndarray) -> int:
    """imagehash's 64-bit pHash as a signed int64 (so it fits a parquet int64 column)."""
    bits = imagehash.phash(Image.fromarray(pixels)).hash.flatten()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value


def find_duplicates(images: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Rows of ``images`` (in priority order; columns image_id, source, content_hash, phash)
    that repeat an earlier kept image, as :data:`DUPLICATE_COLUMNS`.

    Exact duplicates go first; then each remaining image is dropped if a kept earlier image
    lies within ``max_distance`` bits (``max_distance < 0`` turns near-duplicate removal off).
    Candidates come from multi-index hashing: split the 64 bits into ``max_distance + 1``
    blocks; two hashes within that distance agree on at least one block (pigeonhole), so only
    images sharing a block value are compared.
    """
    ids = images["image_id"].to_numpy()
    sources = images["source"].to_numpy()
    repeat = images.duplicated("content_hash").to_numpy()
    keeper = pd.Series(np.arange(len(images))).groupby(
        images["content_hash"].to_numpy(), sort=False).transform("first").to_numpy()
    rows = [(i, keeper[i], "exact", 0) for i in np.flatnonzero(repeat)]
    if max_distance >= 0:
        candidates = np.flatnonzero(~repeat)
        hashes = images["phash"].to_numpy(dtype=np.int64)[candidates].view(np.uint64)
        rows += [(candidates[j], candidates[k], "near", d)
                 for j, k, d in _near_duplicates(hashes, max_distance)]
    dup = pd.DataFrame(rows, columns=["row", "of", "kind", "distance"]).sort_values("row")
    return pd.DataFrame({
        "image_id": ids[dup["row"]], "source": sources[dup["row"]],
        "duplicate_of": ids[dup["of"]], "duplicate_source": sources[dup["of"]],
        "kind": dup["kind"].to_numpy(), "distance": dup["distance"].to_numpy(dtype=np.int64),
    }, columns=list(DUPLICATE_COLUMNS))


def _near_duplicates(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(dropped, kept, distance) positions: greedy in order, an image is dropped when an
    earlier kept image is within ``max_distance``."""
    neighbours = _close_pairs(hashes, max_distance)
    kept = np.ones(len(hashes), dtype=bool)
    found = []
    for j in range(len(hashes)):
        for k, d in neighbours.get(j, ()):
            if kept[k]:
                kept[j] = False
                found.append((j, k, d))
                break
    return found


def _close_pairs(hashes: np.ndarray, max_distance: int) -> dict[int, list[tuple[int, int]]]:
    """For each position j, the earlier positions k < j within ``max_distance`` bits, nearest
    (then earliest) first. Each bucket of images sharing a block value is compared as one
    distance matrix, so the cost is the sum of squared bucket sizes."""
    found: dict[int, dict[int, int]] = {}
    for bits in np.array_split(np.arange(64, dtype=np.uint64), max_distance + 1):
        key = hashes & np.bitwise_or.reduce(np.uint64(1) << bits)
        order = np.argsort(key, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
            if len(group) < 2:
                continue
            group = np.sort(group)
            dist = np.bitwise_count(hashes[group][:, None] ^ hashes[group][None, :])
            later, earlier = np.nonzero(np.tril(dist <= max_distance, k=-1))
            for j, k, d in zip(group[later], group[earlier], dist[later, earlier]):
                found.setdefault(int(j), {})[int(k)] = int(d)
    return {j: sorted(near.items(), key=lambda kd: (kd[1], kd[0]))
            for j, near in found.items()}

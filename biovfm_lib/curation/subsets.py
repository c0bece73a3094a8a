"""Nested, source-stratified subsets of an image table: the unit of the data-size and
modality scaling experiments.

Subsets must be nested (the 1 % run's images are all in the 10 % run) and stratified by source
(every size sees the same mix of datasets), and a source added later must not change which
images the others contribute. :func:`select_subset` therefore orders every source's images by
a keyed hash of their ids and takes a prefix of each, with per-source counts from one fixed
sequence whose every prefix is within one image of proportional. Curation writes its named
subsets with it and pretraining selects with it, so both agree for the same seed.
"""
from __future__ import annotations

import hashlib
import heapq
import math

import numpy as np
import pandas as pd


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
    hashes = np.fromiter((id_hash(i, key) for i in pool["image_id"]), np.uint64, len(pool))
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


def id_hash(image_id: str, key: bytes = b"") -> int:
    """64-bit (keyed) BLAKE2b of an id: stable across Python, numpy and pandas versions, so
    subsets and the corpus's shuffled shard order never change under a library upgrade."""
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

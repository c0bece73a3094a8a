"""Stratified, nested subsets of a task's training labels, for label-efficiency probes.

A subset is drawn per stratum: an image's class, or for the multi-label task (ChestMNIST) its
rarest positive label (by training frequency), with the images without any finding a stratum
of their own; so every finding present in training is in a subset once it is large enough.

Each draw shuffles every stratum once (its own fixed seed, from the run's seed and the draw's
index) and everything is read off those orders, so subsets nest:

- ``shots``: the first ``s`` images of every stratum (all of a smaller one): 1 inside 5
  inside 10 shots;
- ``label_fractions``: a prefix of one stratified order of all images: the first image of
  every stratum (so every stratum appears), then the rest interleaved in proportion to the
  strata's sizes. A fraction ``f`` of ``N`` images takes ``round(f * N)`` of them, at least
  one per stratum, so 1% sits inside 10%, and the 1-shot subset inside both.

The validation split stays whole: it chooses learning rate, epoch and k as in the main probe.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALL_LABELS = "all"


@dataclass(frozen=True)
class LabelSetting:
    """One way of subsetting the labels: ``label_setting`` in the results names it."""

    name: str  # "f0.01" for a fraction, "5-shot" for shots per class
    fraction: float | None = None
    shots: int | None = None


def label_settings(fractions: list[float], shots: list[int]) -> list[LabelSetting]:
    """The settings a run asks for, fractions then shots, each ascending."""
    return ([LabelSetting(f"f{f:g}", fraction=f) for f in sorted(fractions)]
            + [LabelSetting(f"{s}-shot", shots=s) for s in sorted(shots)])


def strata(labels: np.ndarray, multilabel: bool) -> np.ndarray:
    """Each training image's stratum (rules in the module docstring)."""
    y = np.asarray(labels)
    if not multilabel:
        return y.reshape(len(y), -1)[:, 0].astype(np.int64)
    positive = y.astype(bool)
    frequency = positive.sum(axis=0)
    # rarest positive label; no finding -> stratum L (one past the labels)
    rank = np.where(positive, frequency[None, :], np.iinfo(np.int64).max)
    rarest = rank.argmin(axis=1)
    return np.where(positive.any(axis=1), rarest, y.shape[1]).astype(np.int64)


@dataclass(frozen=True)
class LabelDraw:
    """One draw's shuffled strata, from which every subset of the draw is read."""

    members: list[np.ndarray]  # per stratum present, its image indices in drawn order
    order: np.ndarray  # all images, stratified: every prefix is a stratified subset

    def shots(self, shots: int) -> np.ndarray:
        """The first ``shots`` images of every stratum, as sorted indices."""
        return np.sort(np.concatenate([m[:shots] for m in self.members]))

    def fraction(self, fraction: float) -> np.ndarray:
        """A stratified ``fraction`` of the images (at least one per stratum), sorted."""
        n = min(len(self.order), max(round(fraction * len(self.order)), len(self.members)))
        return np.sort(self.order[:n])

    def subset(self, setting: LabelSetting) -> np.ndarray:
        if setting.shots is not None:
            return self.shots(setting.shots)
        assert setting.fraction is not None
        return self.fraction(setting.fraction)


def draw_labels(stratum: np.ndarray, seed: int, draw: int) -> LabelDraw:
    """Draw ``draw`` of the run seeded ``seed``: the same for every setting, so they nest."""
    rng = np.random.default_rng([seed, draw])
    members, position, offset = [], np.empty(len(stratum)), np.empty(len(stratum))
    for s in np.unique(stratum):
        idx = rng.permutation(np.flatnonzero(stratum == s))
        members.append(idx)
        # rank within the stratum, spread over [0, 1): interleaves strata in proportion
        position[idx] = np.arange(len(idx))
        offset[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    order = np.lexsort((offset, position > 0))  # first of every stratum, then by offset
    return LabelDraw(members, order)

"""Decision thresholds for binary and multi-label tasks, chosen on the validation split.

Each label's threshold maximises MCC on the split it is given (the caller passes the
validation split) and is then applied as ``score > threshold``. Two rules (``threshold_rule``):

* ``study`` (the default): the BioVFM evaluation's rule, reproduced exactly. The candidates
  are the thresholds ``sklearn.metrics.roc_curve`` returns (``drop_intermediate`` on), without
  the first (infinite) one, sorted ascending; above 1000 candidates only every
  ``int(count / 1000)``-th is kept (at ChestMNIST's real validation size this thins 4 of its
  14 labels). A candidate is scored predicting ``score >= t``, the first maximum of MCC wins,
  and the winner is applied with ``score > t``, so the sample at the chosen score flips to
  negative on the test split.
* ``exact``: ours. Every distinct partition of the samples is a candidate (one value below the
  smallest score, the midpoints between consecutive distinct scores, and the largest score),
  scored as it will be applied (``score > t``); ties in MCC (within 1e-12) go to the candidate
  closest to 0.5 and then to the smaller one, so a flat optimum stays near medmnist's default.
"""
from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

from biovfm_lib.probe.metrics import (
    DEFAULT_THRESHOLD,
    MULTI_CLASS,
    MULTI_LABEL,
    ORDINAL,
    mcc_from_counts,
    validate_scores,
)

THRESHOLD_RULES = ("study", "exact")
ThresholdRule = Literal["study", "exact"]
STUDY_MAX_CANDIDATES = 1000
_TIE_TOLERANCE = 1e-12


def study_candidates(target: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The study's candidate thresholds for one label (module notes)."""
    with warnings.catch_warnings():  # a split without positives: sklearn warns, the study ran on
        warnings.simplefilter("ignore")
        candidates = np.sort(roc_curve(target, score)[2][1:])
    if candidates.size > STUDY_MAX_CANDIDATES:
        candidates = candidates[:: candidates.size // STUDY_MAX_CANDIDATES]
    return candidates


def _study_threshold(target: np.ndarray, score: np.ndarray) -> float:
    candidates = study_candidates(target, score)
    if not candidates.size:
        return DEFAULT_THRESHOLD
    pos, neg = np.sort(score[target]), np.sort(score[~target])
    tp = pos.size - np.searchsorted(pos, candidates, side="left")  # score >= t
    fp = neg.size - np.searchsorted(neg, candidates, side="left")
    mcc = mcc_from_counts(tp, fp, pos.size - tp, neg.size - fp)
    return float(candidates[np.argmax(mcc)])


def _exact_threshold(target: np.ndarray, score: np.ndarray) -> float:
    values, inverse = np.unique(score, return_inverse=True)
    pos = np.bincount(inverse, weights=target.astype(np.float64), minlength=values.size)
    neg = np.bincount(inverse, weights=(~target).astype(np.float64), minlength=values.size)
    # Candidate j predicts positive the distinct values j, j+1, ...; j = len(values): none.
    tp = np.append(np.cumsum(pos[::-1])[::-1], 0.0)
    fp = np.append(np.cumsum(neg[::-1])[::-1], 0.0)
    mcc = mcc_from_counts(tp, fp, pos.sum() - tp, neg.sum() - fp)
    lo, hi = values[:-1], values[1:]
    mid = lo + (hi - lo) / 2
    mid = np.where(mid < hi, mid, lo)  # adjacent floats: the midpoint may round up to ``hi``
    candidates = np.concatenate([[np.nextafter(values[0], -np.inf)], mid, [values[-1]]])
    best = mcc >= mcc.max() - _TIE_TOLERANCE
    distance = np.where(best, np.abs(candidates - DEFAULT_THRESHOLD), np.inf)
    return float(candidates[np.argmin(distance)])


def choose_thresholds(y_true, y_score, task: str, rule: ThresholdRule = "study"
                      ) -> np.ndarray | None:
    """Per-label decision thresholds maximising MCC, to be chosen on the validation split.

    Returns shape (1,) for binary-class, (L,) for multi-label, and None for multi-class and
    ordinal-regression, which predict by argmax. A sample is positive when its score is
    strictly greater than the threshold.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; expected one of {THRESHOLD_RULES}")
    truth, score = validate_scores(y_true, y_score, task)
    if task in (MULTI_CLASS, ORDINAL):
        return None
    targets = truth if task == MULTI_LABEL else (truth == 1)[:, None]
    best = _study_threshold if rule == "study" else _exact_threshold
    return np.array([best(targets[:, j], score[:, j]) for j in range(score.shape[1])])

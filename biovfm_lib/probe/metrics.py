"""Test-set metrics for linear probes on the MedMNIST 2D benchmarks, with bootstrap CIs.

Inputs follow medmnist's storage conventions. ``task`` is ``medmnist.INFO[flag]['task']``;
``y_true`` is an int array of shape (n, 1) or (n,) for single-label tasks and a 0/1 array of
shape (n, L) for 'multi-label, binary-class'; ``y_score`` holds probabilities: (n, C) softmax
for multi-class / ordinal-regression / binary-class (the positive score of a binary task is
column -1, as in medmnist's evaluator; (n,) is also accepted) and (n, L) sigmoid for
multi-label.

Rules (every metric is checked against scikit-learn and medmnist in tests/test_metrics.py):

* multi-class and ordinal-regression (RetinaMNIST is treated as 5-class classification):
  the prediction is the argmax of the scores (first maximum on ties, as ``np.argmax``).
  ``auc`` is the mean over classes of the one-vs-rest AUC of that class's score column, exactly
  medmnist's ``getAUC``. ``acc``, ``balanced_acc``, ``mcc`` and ``f1_macro`` are sklearn's
  ``accuracy_score``, ``balanced_accuracy_score``, ``matthews_corrcoef`` (multi-class formula)
  and ``f1_score(average='macro')``.
* binary-class: the prediction is ``score[:, -1] > threshold`` (strict, as medmnist's
  ``getACC``); ``auc`` is ``roc_auc_score`` of the positive score; the other metrics are the
  sklearn functions above on the 0/1 predictions, so ``f1_macro`` averages the F1 of both
  classes (``average='macro'``, not sklearn's default ``average='binary'``).
* multi-label: label ``l`` is predicted positive when ``score[:, l] > thresholds[l]``.
  ``auc``, ``acc``, ``balanced_acc`` and ``mcc`` are means over labels of the per-label binary
  metric (``auc`` and ``acc`` are then medmnist's ``getAUC``/``getACC``); ``f1_macro`` is
  ``f1_score(Y, P, average='macro')`` on the indicator matrices, i.e. the per-label F1
  ``2TP / (2TP + FP + FN)`` averaged over all labels, 0 for a label never true nor predicted.
* thresholds: ``None`` means 0.5, medmnist's convention. ``choose_thresholds`` picks, per
  label, the threshold maximising MCC on the split it is given (the caller passes the
  validation split). Candidates are one value below the smallest score (all positive), the
  midpoints between consecutive distinct scores, and the largest score (all negative), which
  realises every distinct partition of the samples. Ties in MCC (within 1e-12) go to the
  candidate closest to 0.5 and then to the smaller one, so a flat optimum stays near the
  default and the choice is deterministic.

Degenerate cases (a class missing from the test set or, more often, from a bootstrap
resample) follow sklearn wherever sklearn defines a value, and never warn:

* a class's one-vs-rest AUC is undefined without both positives and negatives; ``auc`` is
  the mean over the classes (labels) where it is defined, NaN when there is none;
* ``mcc`` is 0 when its denominator is 0 (a constant truth or prediction), as sklearn;
* ``balanced_acc`` averages recall over the classes present in the truth (sklearn drops the
  others); per multi-label label, this is the recall of the one class present, if only one;
* single-label ``f1_macro`` averages over the classes present in the truth or the predictions
  (sklearn's default ``labels``); multi-label ``f1_macro`` scores an absent label 0.

Bootstrap: each resample draws n test samples with replacement (resample r from the r-th
child of ``SeedSequence(seed)``, so results do not depend on how resamples are chunked). Every
metric is a function of per-sample weights, so the point estimate uses weights 1 and a
resample uses its multinomial counts. Sorting happens once, outside the resampling loop: the
weighted AUC is the Mann-Whitney statistic (ties count half, equal to
``roc_auc_score(..., sample_weight=w)``) and needs only weight sums over fixed groups of
samples (score-ordered runs of negatives, and positives between the same runs), and the
confusion matrices are weight sums over (truth, prediction) cells. All those sums, for a chunk
of resamples at once, are one sparse 0/1 matrix product with the counts. The interval is the
percentile interval (``np.percentile``, linear interpolation) of each metric's resample
values; resamples where a metric is undefined (NaN AUC) are left out of its interval.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

METRICS = ("auc", "acc", "balanced_acc", "mcc", "f1_macro")
MULTI_CLASS = "multi-class"
BINARY = "binary-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL)

DEFAULT_THRESHOLD = 0.5
# Bound on (samples or groups) x resamples per bootstrap chunk: ~32 MB per array.
_CHUNK_ELEMENTS = 2**22
_TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class _AucColumn:
    """One binary AUC as a function of group weight sums.

    The negatives, in ascending score order, are cut into segments at every position where a
    positive's score falls; the positives are grouped by the pair of cut positions that bound
    their score (negatives strictly below, and below or tied). The cumulative segment sums
    then give, for every positive group, the negative weight below it and tied with it.
    """

    neg_segments: slice  # rows of the group sums: negative weight per segment
    pos_groups: slice  # rows of the group sums: positive weight per group
    below: np.ndarray  # per positive group: index into [0, cumsum(segments)] of "strictly below"
    below_or_tied: np.ndarray  # same for "below or tied"


@dataclass(frozen=True)
class _Problem:
    """A validated task reduced to sums of sample weights over fixed groups of samples.

    ``groups`` (n_groups, n) is a 0/1 sparse matrix, so the group sums of any number of weight
    vectors (n, B) take one sparse product; every metric is a function of those sums.
    """

    n: int
    groups: sp.csr_matrix
    auc_columns: list[_AucColumn]
    cells: slice  # rows of the group sums: (truth, prediction) cells, row-major per label
    n_labels: int | None  # L for multi-label (cells are L blocks of 2x2), else None
    n_classes: int  # K x K cells for single-label tasks


def _auc_groups(target: np.ndarray, score: np.ndarray, offset: int
                ) -> tuple[_AucColumn, np.ndarray, np.ndarray]:
    """The AUC column of one binary problem, and its (group row, sample) memberships."""
    neg, pos = np.flatnonzero(~target), np.flatnonzero(target)
    neg_order = np.argsort(score[neg], kind="stable")
    neg_sorted = score[neg][neg_order]
    below = np.searchsorted(neg_sorted, score[pos], side="left")
    below_or_tied = np.searchsorted(neg_sorted, score[pos], side="right")
    starts = np.unique(np.concatenate([[0], below, below_or_tied]))
    starts = starts[starts < neg.size]
    bounds = np.append(starts, neg.size)  # cumsum index k: weight of neg_sorted[:bounds[k]]
    neg_segment = np.empty(neg.size, dtype=np.int64)
    neg_segment[neg_order] = np.searchsorted(starts, np.arange(neg.size), side="right") - 1
    keys, pos_group = np.unique(below * (neg.size + 1) + below_or_tied, return_inverse=True)
    pos_offset = offset + starts.size
    column = _AucColumn(
        neg_segments=slice(offset, pos_offset),
        pos_groups=slice(pos_offset, pos_offset + keys.size),
        below=np.searchsorted(bounds, keys // (neg.size + 1)),
        below_or_tied=np.searchsorted(bounds, keys % (neg.size + 1)),
    )
    rows = np.concatenate([offset + neg_segment, pos_offset + pos_group])
    return column, rows, np.concatenate([neg, pos])


def _auc_from_sums(column: _AucColumn, sums: np.ndarray) -> np.ndarray:
    """AUC per resample from group sums (n_groups, B); NaN without positive or negative mass.

    Sum over positives of w * (negative weight below + half the tied negative weight), over
    (positive weight * negative weight): the Mann-Whitney form of the trapezoidal ROC area.
    Products and sums are taken in float64, so float32 integer counts give exact results.
    """
    seg = sums[column.neg_segments]
    neg_cum = np.zeros((seg.shape[0] + 1, sums.shape[1]), dtype=sums.dtype)
    np.cumsum(seg, axis=0, out=neg_cum[1:])
    pos_w = sums[column.pos_groups]
    twice_u = np.einsum(
        "gb,gb->b",
        pos_w,
        neg_cum[column.below] + neg_cum[column.below_or_tied],
        dtype=np.float64,
    )
    pairs = pos_w.sum(axis=0, dtype=np.float64) * neg_cum[-1].astype(np.float64)
    return _safe_divide(twice_u, 2 * pairs, fill=np.nan)


def _safe_divide(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """``num / den`` with ``fill`` where ``den == 0``, without runtime warnings."""
    out = np.full(np.broadcast(num, den).shape, fill, dtype=np.float64)
    return np.divide(num, den, out=out, where=den != 0)


def _masked_mean(values: np.ndarray, mask: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Mean over the last axis of ``values`` where ``mask``; ``fill`` for an empty mask."""
    return _safe_divide(np.where(mask, values, 0).sum(-1), mask.sum(-1), fill)


def _confusion_metrics(conf: np.ndarray) -> dict[str, np.ndarray]:
    """acc, balanced_acc, mcc and f1_macro from confusion matrices (..., K, K) [truth, pred].

    Written with sklearn's formulas and its conventions for absent classes (module docstring).
    """
    true_sum = conf.sum(-1)
    pred_sum = conf.sum(-2)
    correct = np.trace(conf, axis1=-2, axis2=-1)
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    total = true_sum.sum(-1)
    cov_tp = correct * total - (true_sum * pred_sum).sum(-1)
    cov_pp = total**2 - (pred_sum**2).sum(-1)
    cov_tt = total**2 - (true_sum**2).sum(-1)
    return {
        "acc": correct / total,
        "balanced_acc": _masked_mean(_safe_divide(diag, true_sum, 0.0), true_sum > 0),
        "mcc": _safe_divide(cov_tp, np.sqrt(cov_tt * cov_pp), 0.0),
        "f1_macro": _masked_mean(
            _safe_divide(2 * diag, true_sum + pred_sum, 0.0), true_sum + pred_sum > 0
        ),
    }


def _metrics_from_weights(problem: _Problem, weights: np.ndarray) -> dict[str, np.ndarray]:
    """All five metrics for each column of ``weights`` (n, B)."""
    sums = problem.groups @ weights
    aucs = np.stack([_auc_from_sums(col, sums) for col in problem.auc_columns], axis=-1)
    out = {"auc": _masked_mean(aucs, ~np.isnan(aucs))}
    cells = sums[problem.cells].T.astype(np.float64)
    if problem.n_labels is None:
        k = problem.n_classes
        out.update(_confusion_metrics(cells.reshape(-1, k, k)))
        return out
    per_label = cells.reshape(-1, problem.n_labels, 2, 2)
    binary = _confusion_metrics(per_label)
    out.update({name: binary[name].mean(-1) for name in ("acc", "balanced_acc", "mcc")})
    tp, fp, fn = per_label[..., 1, 1], per_label[..., 0, 1], per_label[..., 1, 0]
    out["f1_macro"] = _safe_divide(2 * tp, 2 * tp + fp + fn, 0.0).mean(-1)
    return out


def _validate(y_true, y_score, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (truth, scores): int (n,) and (n, C) for single-label tasks, bool and float
    (n, L) for multi-label; binary scores become the (n, 1) positive column."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1 and task == BINARY:
        y_score = y_score[:, None]
    if y_score.ndim != 2 or y_score.shape[0] == 0:
        raise ValueError(f"y_score must have shape (n, C) with n >= 1, got {y_score.shape}")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score contains NaN or infinite values")
    n, c = y_score.shape
    if task == MULTI_LABEL:
        if y_true.shape != (n, c):
            raise ValueError(f"multi-label y_true must have y_score's shape {(n, c)}, "
                             f"got {y_true.shape}")
        if not np.isin(y_true, (0, 1)).all():
            raise ValueError("multi-label y_true must contain only 0 and 1")
        return y_true.astype(bool), y_score
    if y_true.shape not in ((n,), (n, 1)):
        raise ValueError(f"{task} y_true must have shape ({n},) or ({n}, 1), got {y_true.shape}")
    labels = y_true.reshape(n)
    n_classes = 2 if task == BINARY else c
    if task == BINARY and c not in (1, 2):
        raise ValueError(f"binary-class y_score must have 1 or 2 columns, got {c}")
    if task != BINARY and c < 2:
        raise ValueError(f"{task} y_score must have at least 2 class columns, got {c}")
    if not (np.isin(labels, np.arange(n_classes)).all()):
        raise ValueError(f"{task} y_true must hold integer labels in [0, {n_classes}), "
                         f"got values {np.unique(labels)[:10]}")
    return labels.astype(np.int64), (y_score[:, -1:] if task == BINARY else y_score)


def _validate_thresholds(thresholds, task: str, n_labels: int) -> np.ndarray:
    if task in (MULTI_CLASS, ORDINAL):
        if thresholds is not None:
            raise ValueError(f"{task} predicts by argmax; thresholds must be None")
        return np.empty(0)
    expected = (n_labels,)
    if thresholds is None:
        return np.full(expected, DEFAULT_THRESHOLD)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != expected:
        raise ValueError(f"{task} thresholds must have shape {expected}, got {thresholds.shape}")
    return thresholds


def _prepare(y_true, y_score, task: str, thresholds) -> _Problem:
    truth, score = _validate(y_true, y_score, task)
    n, width = score.shape
    thresholds = _validate_thresholds(thresholds, task, width)
    if task == MULTI_LABEL:
        targets = truth
        cell = 4 * np.arange(width) + 2 * truth + (score > thresholds)
        n_labels, n_classes = width, 2
    else:
        n_classes = 2 if task == BINARY else width
        pred = (score[:, 0] > thresholds[0]) if task == BINARY else score.argmax(axis=1)
        targets = (truth == 1)[:, None] if task == BINARY else truth[:, None] == np.arange(width)
        cell = (truth * n_classes + pred)[:, None]
        n_labels = None
    rows, samples, auc_columns = [], [], []
    offset = 0
    for j in range(width):
        column, col_rows, col_samples = _auc_groups(targets[:, j], score[:, j], offset)
        auc_columns.append(column)
        rows.append(col_rows)
        samples.append(col_samples)
        offset = column.pos_groups.stop
    rows.append(offset + cell.ravel())
    samples.append(np.repeat(np.arange(n), cell.shape[1]))
    n_cells = cell.shape[1] * n_classes**2
    rows, samples = np.concatenate(rows), np.concatenate(samples)
    groups = sp.csr_matrix(
        (np.ones(rows.size, dtype=_weight_dtype(n)), (rows, samples)), shape=(offset + n_cells, n)
    )
    return _Problem(
        n=n,
        groups=groups,
        auc_columns=auc_columns,
        cells=slice(offset, offset + n_cells),
        n_labels=n_labels,
        n_classes=n_classes,
    )


def _weight_dtype(n: int) -> type:
    """float32 holds integer counts and their sums exactly below 2**24 and halves bandwidth."""
    return np.float32 if n < 2**24 else np.float64


def _mcc_2x2(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    conf = np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], -2)
    return _confusion_metrics(conf.astype(np.float64))["mcc"]


def _best_threshold(target: np.ndarray, score: np.ndarray) -> float:
    """MCC-maximising threshold for ``score > t``; see the module docstring for the rules."""
    values, inverse = np.unique(score, return_inverse=True)
    pos = np.bincount(inverse, weights=target.astype(np.float64), minlength=values.size)
    neg = np.bincount(inverse, weights=(~target).astype(np.float64), minlength=values.size)
    # Candidate j predicts positive the distinct values j, j+1, ...; j = len(values): none.
    tp = np.append(np.cumsum(pos[::-1])[::-1], 0.0)
    fp = np.append(np.cumsum(neg[::-1])[::-1], 0.0)
    mcc = _mcc_2x2(tp, fp, pos.sum() - tp, neg.sum() - fp)
    lo, hi = values[:-1], values[1:]
    mid = lo + (hi - lo) / 2
    mid = np.where(mid < hi, mid, lo)  # adjacent floats: the midpoint may round up to ``hi``
    candidates = np.concatenate([[np.nextafter(values[0], -np.inf)], mid, [values[-1]]])
    best = mcc >= mcc.max() - _TIE_TOLERANCE
    distance = np.where(best, np.abs(candidates - DEFAULT_THRESHOLD), np.inf)
    return float(candidates[np.argmin(distance)])


def choose_thresholds(y_true, y_score, task: str) -> np.ndarray | None:
    """Per-label decision thresholds maximising MCC, to be chosen on the validation split.

    Returns shape (1,) for binary-class, (L,) for multi-label, and None for multi-class and
    ordinal-regression, which predict by argmax. A sample is positive when its score is
    strictly greater than the threshold.
    """
    truth, score = _validate(y_true, y_score, task)
    if task in (MULTI_CLASS, ORDINAL):
        return None
    targets = truth if task == MULTI_LABEL else (truth == 1)[:, None]
    return np.array([_best_threshold(targets[:, j], score[:, j]) for j in range(score.shape[1])])


def compute_metrics(y_true, y_score, task: str, thresholds: np.ndarray | None = None
                    ) -> dict[str, float]:
    """The five metrics of ``METRICS`` on one split (rules in the module docstring)."""
    problem = _prepare(y_true, y_score, task, thresholds)
    weights = np.ones((problem.n, 1))
    return {name: float(v[0]) for name, v in _metrics_from_weights(problem, weights).items()}


def _resample_indices(n: int, n_boot: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Bootstrap sample indices in (<= chunk, n) blocks whose rows are resamples 0..n_boot-1.

    Resample r draws from its own child generator of ``SeedSequence(seed)``, so the resamples
    are the same whatever the chunk size (which depends on the task's memory needs).
    """
    children = np.random.SeedSequence(seed).spawn(n_boot)
    for start in range(0, n_boot, chunk):
        block = children[start : start + chunk]
        yield np.stack([np.random.default_rng(child).integers(0, n, n) for child in block])


def bootstrap_metrics(y_true, y_score, task: str, thresholds: np.ndarray | None = None,
                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                      ) -> dict[str, tuple[float, float]]:
    """Percentile (1 - alpha) confidence intervals of every metric over test-set resamples.

    All metrics share the same ``n_boot`` resamples with replacement (seeded), so their
    intervals are computed on identical data. Thresholds stay fixed: they were chosen on the
    validation split and are part of the model being evaluated.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    problem = _prepare(y_true, y_score, task, thresholds)
    n, dtype = problem.n, problem.groups.dtype
    chunk = max(1, _CHUNK_ELEMENTS // max(problem.groups.shape))
    values: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for idx in _resample_indices(n, n_boot, seed, chunk):
        b = idx.shape[0]
        idx *= b
        idx += np.arange(b)[:, None]  # flat index of (sample, resample) in an (n, b) array
        counts = np.bincount(idx.ravel(), minlength=n * b)  # counts[i, r]: draws of i in r
        for name, v in _metrics_from_weights(problem, counts.reshape(n, b).astype(dtype)).items():
            values[name].append(v)
    quantiles = (100 * alpha / 2, 100 * (1 - alpha / 2))
    out = {}
    for name in METRICS:
        v = np.concatenate(values[name])
        v = v[~np.isnan(v)]
        lo, hi = np.percentile(v, quantiles) if v.size else (np.nan, np.nan)
        out[name] = (float(lo), float(hi))
    return out

"""Test-set metrics for linear probes on the MedMNIST 2D benchmarks, with bootstrap CIs.

Inputs follow medmnist's storage conventions. ``task`` is ``medmnist.INFO[flag]['task']``;
``y_true`` is an int array of shape (n, 1) or (n,) for single-label tasks and a 0/1 array of
shape (n, L) for 'multi-label, binary-class'; ``y_score`` holds probabilities: (n, C) softmax
for multi-class / ordinal-regression / binary-class (the positive score of a binary task is
column -1, as in medmnist's evaluator; (n,) is also accepted) and (n, L) sigmoid for
multi-label.

Metrics (``METRICS``; each is checked against scikit-learn, medmnist and the study's
evaluation code in tests/test_metrics.py). The study's published numbers come from
``medmnist.Evaluator`` (AUC, ACC) and from the BioVFM evaluation's confusion-matrix metrics
at thresholds tuned on the validation split; both sets are reproduced exactly:

* ``auc``: medmnist's ``getAUC``: binary-class AUC of the positive score; otherwise the mean
  over classes (labels) of the one-vs-rest AUC of that score column.
* ``acc``: medmnist's ``getACC``, the study's published accuracy: argmax for multi-class and
  ordinal-regression (RetinaMNIST is 5-class classification), ``score > 0.5`` for binary and
  per label for multi-label (then the mean over labels). It ignores tuned thresholds.
* ``acc_tuned``: the same accuracy at the tuned thresholds (equal to ``acc`` for argmax tasks).
* at the tuned thresholds: ``balanced_acc``, ``mcc``, ``f1``, ``f1_macro``, ``f1_micro``,
  ``recall_macro``, ``recall_micro``, each sklearn's function as the study calls it:

  - single-label: ``balanced_accuracy_score``, ``matthews_corrcoef`` (multi-class formula),
    ``f1_score`` / ``recall_score`` with ``average='macro'`` / ``'micro'``;
  - binary-class: the study calls ``f1_score`` and ``recall_score`` with sklearn's default
    ``average='binary'``, so ``f1``, ``f1_micro`` are the positive class's F1 and
    ``recall_macro``, ``recall_micro`` its recall. ``f1_macro`` is ours, the mean F1 of both
    classes; the study's column of that name is our ``f1``;
  - multi-label: ``acc``, ``balanced_acc`` and ``mcc`` are means over labels of the binary
    metric; F1 and recall are sklearn's on the indicator matrices (macro: per-label values
    averaged over all labels; micro: pooled counts).

  ``f1`` is the study's reported F1 for every task type: the positive class's for binary,
  sklearn macro otherwise.

Thresholds (:mod:`biovfm_lib.probe.thresholds`) are chosen on the validation split and fixed
for the test split; a sample is positive when its score is strictly greater.

Degenerate cases (a class missing from the test set or, more often, from a bootstrap
resample) follow sklearn wherever sklearn defines a value, and never warn:

* a class's one-vs-rest AUC is undefined without both positives and negatives; ``auc`` is
  the mean over the classes (labels) where it is defined, NaN when there is none (sklearn,
  and so the study, gives NaN as soon as one class is undefined; :func:`absent_classes`
  names them so a result can say so);
* ``mcc`` is 0 when its denominator is 0 (a constant truth or prediction), as sklearn;
* ``balanced_acc`` averages recall over the classes present in the truth (sklearn drops the
  others); per multi-label label, this is the recall of the one class present, if only one;
* single-label ``f1_macro`` and ``recall_macro`` average over the classes present in the truth
  or the predictions (sklearn's default ``labels``); an undefined F1 or recall scores 0
  (sklearn's ``zero_division`` default), also for a multi-label label.

Bootstrap (``ci_rule``): every metric is a function of per-sample weights, so the point
estimate uses weights 1 and a resample its multinomial counts. Sorting happens once, outside
the resampling loop: the weighted AUC is the Mann-Whitney statistic (ties count half, equal to
``roc_auc_score(..., sample_weight=w)``) and needs only weight sums over fixed groups of
samples (score-ordered runs of negatives, and positives between the same runs), and the
confusion matrices are weight sums over (truth, prediction) cells. All those sums, for a chunk
of resamples at once, are one sparse 0/1 matrix product with the counts.

* ``study`` (the default): resample ``i`` is ``sklearn.utils.resample(idx, replace=True,
  random_state=i)``, as the study draws it (the seed is not used), and the interval is the
  order statistics ``sorted[int(alpha/2 * B) - 1]`` and ``sorted[int((1 - alpha/2) * B) - 1]``
  of the ``B`` replicate values (NaN sorted last), rounded to 4 decimals like the replicate
  mean. The rule needs ``B >= 2 / alpha`` (40 at 95%): below that its lower index is -1.
* ``percentile``: resample ``r`` draws from the ``r``-th child of ``SeedSequence(seed)`` (the
  same whatever the chunking) and the interval is ``np.percentile`` (linear interpolation) of
  the replicate values where the metric is defined.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.utils import resample

METRICS = ("auc", "acc", "acc_tuned", "balanced_acc", "mcc", "f1", "f1_macro", "f1_micro",
           "recall_macro", "recall_micro")
# What the study publishes per task, in its order: the headline table and figures show these.
STUDY_METRICS = ("auc", "acc", "balanced_acc", "mcc", "f1")
CI_RULES = ("study", "percentile")
CiRule = Literal["study", "percentile"]
MULTI_CLASS = "multi-class"
BINARY = "binary-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL)

DEFAULT_THRESHOLD = 0.5
# Bound on (samples or groups) x resamples per bootstrap chunk: ~32 MB per array.
_CHUNK_ELEMENTS = 2**22


class Interval(NamedTuple):
    """A bootstrap confidence interval and the mean of the replicates it was taken from."""

    low: float
    high: float
    mean: float


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
    task: str
    groups: sp.csr_matrix
    auc_columns: list[_AucColumn]
    cells: slice  # rows of the group sums: (truth, prediction) cells, row-major per label
    default_cells: slice | None  # the same cells at threshold 0.5 (None for argmax tasks)
    n_labels: int | None  # L for multi-label (cells are L blocks of 2x2), else None
    n_classes: int  # K x K cells for single-label tasks (2 for binary)


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
    """acc, balanced_acc, mcc, f1_macro and recall_macro of confusion matrices (..., K, K)
    [truth, pred], with sklearn's formulas and conventions for absent classes (module notes).
    """
    true_sum = conf.sum(-1)
    pred_sum = conf.sum(-2)
    correct = np.trace(conf, axis1=-2, axis2=-1)
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    total = true_sum.sum(-1)
    cov_tp = correct * total - (true_sum * pred_sum).sum(-1)
    cov_pp = total**2 - (pred_sum**2).sum(-1)
    cov_tt = total**2 - (true_sum**2).sum(-1)
    recall = _safe_divide(diag, true_sum, 0.0)
    seen = true_sum + pred_sum > 0  # sklearn's default labels: in the truth or predictions
    return {
        "acc": correct / total,
        "balanced_acc": _masked_mean(recall, true_sum > 0),
        "mcc": _safe_divide(cov_tp, np.sqrt(cov_tt * cov_pp), 0.0),
        "f1_macro": _masked_mean(_safe_divide(2 * diag, true_sum + pred_sum, 0.0), seen),
        "recall_macro": _masked_mean(recall, seen),
    }


def mcc_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
                    ) -> np.ndarray:
    """Binary MCC of count arrays, in sklearn's float operations, so candidates tie exactly as
    they do in ``matthews_corrcoef`` (which decides the study's first maximum)."""
    conf = np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], -2)
    return _confusion_metrics(conf.astype(np.float64))["mcc"]


def _positive_class(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    """F1 and recall of the positive class (0 where undefined, sklearn's zero_division)."""
    return _safe_divide(2 * tp, 2 * tp + fp + fn, 0.0), _safe_divide(tp, tp + fn, 0.0)


def _single_label_metrics(conf: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    out = _confusion_metrics(conf)
    if binary:  # sklearn's average='binary', which the study's f1 and recall calls use
        f1, recall = _positive_class(conf[..., 1, 1], conf[..., 0, 1], conf[..., 1, 0])
        out.update(f1=f1, f1_micro=f1, recall_macro=recall, recall_micro=recall)
    else:  # micro averages over all predictions of a single-label task are the accuracy
        out.update(f1=out["f1_macro"], f1_micro=out["acc"], recall_micro=out["acc"])
    return out


def _multi_label_metrics(per_label: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of (..., L, 2, 2) per-label confusion matrices."""
    binary = _confusion_metrics(per_label)
    out = {name: binary[name].mean(-1) for name in ("acc", "balanced_acc", "mcc")}
    tp, fp, fn = per_label[..., 1, 1], per_label[..., 0, 1], per_label[..., 1, 0]
    f1, recall = _positive_class(tp, fp, fn)
    f1_micro, recall_micro = _positive_class(tp.sum(-1), fp.sum(-1), fn.sum(-1))
    out.update(f1=f1.mean(-1), f1_macro=f1.mean(-1), f1_micro=f1_micro,
               recall_macro=recall.mean(-1), recall_micro=recall_micro)
    return out


def _metrics_from_weights(problem: _Problem, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` for each column of ``weights`` (n, B)."""
    sums = problem.groups @ weights
    aucs = np.stack([_auc_from_sums(col, sums) for col in problem.auc_columns], axis=-1)
    out = {"auc": _masked_mean(aucs, ~np.isnan(aucs))}

    def confusion(cells: slice) -> dict[str, np.ndarray]:
        c = sums[cells].T.astype(np.float64)
        if problem.n_labels is None:
            k = problem.n_classes
            return _single_label_metrics(c.reshape(-1, k, k), binary=problem.task == BINARY)
        return _multi_label_metrics(c.reshape(-1, problem.n_labels, 2, 2))

    tuned = confusion(problem.cells)
    default = tuned if problem.default_cells is None else confusion(problem.default_cells)
    out.update(tuned, acc=default["acc"], acc_tuned=tuned["acc"])
    return {name: out[name] for name in METRICS}


def validate_scores(y_true, y_score, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one split's labels and scores; return (truth, scores): int (n,) and (n, C) for
    single-label tasks, bool and float (n, L) for multi-label; binary scores become the (n, 1)
    positive column."""
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
    truth, score = validate_scores(y_true, y_score, task)
    n, width = score.shape
    thresholds = _validate_thresholds(thresholds, task, width)
    default = None
    if task == MULTI_LABEL:
        targets = truth
        cell = 4 * np.arange(width) + 2 * truth + (score > thresholds)
        default = 4 * np.arange(width) + 2 * truth + (score > DEFAULT_THRESHOLD)
        n_labels, n_classes = width, 2
    else:
        n_classes = 2 if task == BINARY else width
        targets = (truth == 1)[:, None] if task == BINARY else truth[:, None] == np.arange(width)
        if task == BINARY:
            cell = (2 * truth + (score[:, 0] > thresholds[0]))[:, None]
            default = (2 * truth + (score[:, 0] > DEFAULT_THRESHOLD))[:, None]
        else:
            cell = (truth * n_classes + score.argmax(axis=1))[:, None]
        n_labels = None
    rows, samples, auc_columns = [], [], []
    offset = 0
    for j in range(width):
        column, col_rows, col_samples = _auc_groups(targets[:, j], score[:, j], offset)
        auc_columns.append(column)
        rows.append(col_rows)
        samples.append(col_samples)
        offset = column.pos_groups.stop
    n_cells = cell.shape[1] * n_classes**2
    cell_blocks = [cell] if default is None else [cell, default]
    for i, block in enumerate(cell_blocks):
        rows.append(offset + i * n_cells + block.ravel())
        samples.append(np.repeat(np.arange(n), block.shape[1]))
    rows, samples = np.concatenate(rows), np.concatenate(samples)
    groups = sp.csr_matrix(
        (np.ones(rows.size, dtype=_weight_dtype(n)), (rows, samples)),
        shape=(offset + len(cell_blocks) * n_cells, n),
    )
    return _Problem(
        n=n,
        task=task,
        groups=groups,
        auc_columns=auc_columns,
        cells=slice(offset, offset + n_cells),
        default_cells=None if default is None else slice(offset + n_cells, offset + 2 * n_cells),
        n_labels=n_labels,
        n_classes=n_classes,
    )


def _weight_dtype(n: int) -> type:
    """float32 holds integer counts and their sums exactly below 2**24 and halves bandwidth."""
    return np.float32 if n < 2**24 else np.float64


def absent_classes(y_true, task: str, n_classes: int) -> list[int]:
    """Classes missing from a split (for multi-label: labels without positives or without
    negatives). Their one-vs-rest AUC is undefined: ``auc`` averages the others, where
    sklearn, and so the study, gives NaN."""
    y = np.asarray(y_true)
    if task == MULTI_LABEL:
        positives = y.astype(bool).sum(0)
        return [int(j) for j in np.flatnonzero((positives == 0) | (positives == len(y)))]
    counts = np.bincount(y.reshape(len(y)).astype(np.int64), minlength=n_classes)
    return [int(j) for j in np.flatnonzero(counts == 0)]


def compute_metrics(y_true, y_score, task: str, thresholds: np.ndarray | None = None
                    ) -> dict[str, float]:
    """Every metric of ``METRICS`` on one split (rules in the module docstring)."""
    problem = _prepare(y_true, y_score, task, thresholds)
    weights = np.ones((problem.n, 1))
    return {name: float(v[0]) for name, v in _metrics_from_weights(problem, weights).items()}


def _percentile_resamples(n: int, n_boot: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Bootstrap sample indices in (<= chunk, n) blocks whose rows are resamples 0..n_boot-1.

    Resample r draws from its own child generator of ``SeedSequence(seed)``, so the resamples
    are the same whatever the chunk size (which depends on the task's memory needs).
    """
    children = np.random.SeedSequence(seed).spawn(n_boot)
    for start in range(0, n_boot, chunk):
        block = children[start : start + chunk]
        yield np.stack([np.random.default_rng(child).integers(0, n, n) for child in block])


def _study_resamples(n: int, n_boot: int, chunk: int) -> Iterator[np.ndarray]:
    """The study's resamples: replicate i is sklearn's ``resample`` with ``random_state=i``."""
    idx = np.arange(n)
    for start in range(0, n_boot, chunk):
        yield np.stack([resample(idx, replace=True, random_state=i)
                        for i in range(start, min(start + chunk, n_boot))])


def study_min_replicates(alpha: float) -> int:
    """The fewest replicates for which the study's order-statistic interval is defined."""
    return int(np.ceil(2 / alpha - 1e-9))


def _study_interval(values: np.ndarray, alpha: float) -> Interval:
    """The study's interval: order statistics of the sorted replicates (NaN last, as pandas
    sorts), taken by position in all ``B`` of them, and the mean of the defined ones; all
    rounded to 4 decimals as the study reports them."""
    ordered = np.sort(values)
    b = ordered.size
    low, high = ordered[int(alpha / 2 * b) - 1], ordered[int((1 - alpha / 2) * b) - 1]
    defined = values[~np.isnan(values)]
    mean = defined.mean() if defined.size else np.nan
    return Interval(*(float(np.round(v, 4)) for v in (low, high, mean)))


def _percentile_interval(values: np.ndarray, alpha: float) -> Interval:
    defined = values[~np.isnan(values)]
    if not defined.size:
        return Interval(np.nan, np.nan, np.nan)
    low, high = np.percentile(defined, (100 * alpha / 2, 100 * (1 - alpha / 2)))
    return Interval(float(low), float(high), float(defined.mean()))


def bootstrap_metrics(y_true, y_score, task: str, thresholds: np.ndarray | None = None,
                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                      rule: CiRule = "study") -> dict[str, Interval]:
    """(1 - alpha) confidence intervals of every metric over test-set resamples.

    All metrics share the same ``n_boot`` resamples with replacement, so their intervals are
    computed on identical data. Thresholds stay fixed: they were chosen on the validation
    split and are part of the model being evaluated. ``rule`` picks how resamples are drawn
    and intervals taken (module notes); ``seed`` only matters for ``percentile``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if rule not in CI_RULES:
        raise ValueError(f"unknown ci rule {rule!r}; expected one of {CI_RULES}")
    if rule == "study" and n_boot < study_min_replicates(alpha):
        raise ValueError(f"ci rule 'study' takes order statistics and needs n_boot >= "
                         f"{study_min_replicates(alpha)} at alpha {alpha}, got {n_boot}; "
                         "use rule 'percentile' for fewer replicates")
    problem = _prepare(y_true, y_score, task, thresholds)
    n, dtype = problem.n, problem.groups.dtype
    chunk = max(1, _CHUNK_ELEMENTS // max(problem.groups.shape))
    blocks = (_study_resamples(n, n_boot, chunk) if rule == "study"
              else _percentile_resamples(n, n_boot, seed, chunk))
    values: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for idx in blocks:
        b = idx.shape[0]
        idx *= b
        idx += np.arange(b)[:, None]  # flat index of (sample, resample) in an (n, b) array
        counts = np.bincount(idx.ravel(), minlength=n * b)  # counts[i, r]: draws of i in r
        for name, v in _metrics_from_weights(problem, counts.reshape(n, b).astype(dtype)).items():
            values[name].append(v)
    interval = _study_interval if rule == "study" else _percentile_interval
    return {name: interval(np.concatenate(values[name]), alpha) for name in METRICS}

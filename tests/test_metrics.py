"""Tests for biovfm_lib.probe.metrics against scikit-learn, medmnist's evaluator and the
BioVFM evaluation's rules (metrics as it calls sklearn, its resamples and its intervals)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    recall_score,
    roc_auc_score,
)
from sklearn.utils import resample

from biovfm_lib.probe.metrics import (
    METRICS,
    _metrics_from_weights,
    _percentile_resamples,
    _prepare,
    absent_classes,
    bootstrap_metrics,
    compute_metrics,
)

MULTI_CLASS = "multi-class"
BINARY = "binary-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_case(task: str, n: int, seed: int = 0, ties: bool = False, signal: float = 1.0,
              shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels in medmnist's layout and informative probabilities; ``ties`` rounds them to 0.1
    (so exact 0.5 scores and argmax ties occur); ``shift`` lowers the logits."""
    rng = np.random.default_rng(seed)
    if task == MULTI_LABEL:
        y = (rng.random((n, 4)) < np.array([0.1, 0.3, 0.5, 0.7])).astype(np.int64)
        logits = rng.normal(size=y.shape) + signal * (2 * y - 1) - shift
        score = 1 / (1 + np.exp(-logits))
    else:
        k = 2 if task == BINARY else 5
        y = rng.integers(0, k, size=(n, 1))
        logits = rng.normal(size=(n, k))
        logits[np.arange(n), y[:, 0]] += signal
        logits[:, -1] -= shift
        score = _softmax(logits)
    return y, (np.round(score, 1) if ties else score)


def _auc_over_defined(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean sklearn AUC over the columns with both classes present (the documented rule)."""
    pairs = zip(targets.T, scores.T, strict=True)
    aucs = [roc_auc_score(t, s) for t, s in pairs if 0 < t.sum() < len(t)]
    return float(np.mean(aucs)) if aucs else np.nan


def reference(y: np.ndarray, score: np.ndarray, task: str,
              thresholds: np.ndarray | None = None) -> dict[str, float]:
    """The metrics the slow way: medmnist's accuracy, and sklearn one call per metric (and per
    label) as the study calls it (sklearn's default ``average='binary'`` for a binary F1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on the degenerate cases we test
        if task == MULTI_LABEL:
            t = np.full(y.shape[1], 0.5) if thresholds is None else thresholds
            pred = (score > t).astype(np.int64)
            per_label = list(zip(y.T, pred.T, strict=True))
            return {
                "auc": _auc_over_defined(y, score),
                "acc": np.mean([accuracy_score(a, b) for a, b in zip(y.T, (score > 0.5).T)]),
                "acc_tuned": np.mean([accuracy_score(a, b) for a, b in per_label]),
                "balanced_acc": np.mean([balanced_accuracy_score(a, b) for a, b in per_label]),
                "mcc": np.mean([matthews_corrcoef(a, b) for a, b in per_label]),
                "f1": f1_score(y, pred, average="macro"),
                "f1_macro": f1_score(y, pred, average="macro"),
                "f1_micro": f1_score(y, pred, average="micro"),
                "recall_macro": recall_score(y, pred, average="macro"),
                "recall_micro": recall_score(y, pred, average="micro"),
            }
        labels = y.ravel()
        if task == BINARY:
            t = 0.5 if thresholds is None else thresholds[0]
            pred = (score[:, -1] > t).astype(np.int64)
            auc = _auc_over_defined(labels[:, None] == 1, score[:, -1:])
            return {
                "auc": auc, "acc": accuracy_score(labels, score[:, -1] > 0.5),
                "acc_tuned": accuracy_score(labels, pred),
                "balanced_acc": balanced_accuracy_score(labels, pred),
                "mcc": matthews_corrcoef(labels, pred),
                "f1": f1_score(labels, pred), "f1_macro": f1_score(labels, pred, average="macro"),
                "f1_micro": f1_score(labels, pred), "recall_macro": recall_score(labels, pred),
                "recall_micro": recall_score(labels, pred),
            }
        pred = score.argmax(axis=1)
        return {
            "auc": _auc_over_defined(labels[:, None] == np.arange(score.shape[1]), score),
            "acc": accuracy_score(labels, pred),
            "acc_tuned": accuracy_score(labels, pred),
            "balanced_acc": balanced_accuracy_score(labels, pred),
            "mcc": matthews_corrcoef(labels, pred),
            "f1": f1_score(labels, pred, average="macro"),
            "f1_macro": f1_score(labels, pred, average="macro"),
            "f1_micro": f1_score(labels, pred, average="micro"),
            "recall_macro": recall_score(labels, pred, average="macro"),
            "recall_micro": recall_score(labels, pred, average="micro"),
        }


def _assert_metrics_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(METRICS)
    for name in METRICS:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tied"])
@pytest.mark.parametrize("task", TASKS)
def test_point_metrics_match_sklearn_and_medmnist(task: str, ties: bool) -> None:
    y, score = make_case(task, 400, ties=ties)
    got = compute_metrics(y, score, task)
    _assert_metrics_close(got, reference(y, score, task))
    assert got["auc"] == pytest.approx(getAUC(y, score, task), rel=1e-12)
    assert got["acc"] == pytest.approx(getACC(y, score, task), rel=1e-12)


@pytest.mark.parametrize("task", [BINARY, MULTI_LABEL])
def test_explicit_thresholds_match_sklearn(task: str) -> None:
    y, score = make_case(task, 300, ties=True, seed=1)
    thresholds = np.random.default_rng(2).uniform(0.2, 0.8, size=1 if task == BINARY else 4)
    _assert_metrics_close(compute_metrics(y, score, task, thresholds),
                          reference(y, score, task, thresholds))


def test_single_label_y_true_may_be_flat() -> None:
    y, score = make_case(MULTI_CLASS, 100)
    assert compute_metrics(y.ravel(), score, MULTI_CLASS) == compute_metrics(y, score, MULTI_CLASS)


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tied"])
def test_weighted_auc_matches_sklearn_sample_weight(ties: bool) -> None:
    rng = np.random.default_rng(3)
    y, score = make_case(BINARY, 250, seed=3, ties=ties)
    weights = rng.exponential(size=(250, 3))
    weights[rng.random(250) < 0.2, 0] = 0.0  # zero weights, as in a bootstrap resample
    weights[:, 2] = rng.integers(0, 4, size=250)  # integer counts
    got = _metrics_from_weights(_prepare(y, score, BINARY, None), weights)["auc"]
    want = [roc_auc_score(y.ravel(), score[:, -1], sample_weight=w) for w in weights.T]
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("predicted", [True, False], ids=["predicted", "never-predicted"])
def test_absent_class_uses_defined_aucs_and_sklearn_rules(predicted: bool) -> None:
    y, score = make_case(MULTI_CLASS, 300, seed=4)
    y[y == 2] = 3  # class 2 never true; sklearn still scores it where it is predicted
    if not predicted:
        score[:, 2] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_metrics(y, score, MULTI_CLASS)
    _assert_metrics_close(got, reference(y, score, MULTI_CLASS))
    present = [k for k in range(5) if k != 2]
    assert got["auc"] == pytest.approx(
        np.mean([roc_auc_score(y.ravel() == k, score[:, k]) for k in present]), rel=1e-12)


def test_multilabel_absent_label_scores_zero_f1_and_no_auc() -> None:
    y, score = make_case(MULTI_LABEL, 200, seed=16)
    y[:, 0], score[:, 0] = 0, 0.1  # label 0: never true, never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_metrics(y, score, MULTI_LABEL)
    _assert_metrics_close(got, reference(y, score, MULTI_LABEL))
    assert got["auc"] == pytest.approx(
        np.mean([roc_auc_score(y[:, j], score[:, j]) for j in (1, 2, 3)]), rel=1e-12)


def test_single_class_binary_is_nan_auc_and_zero_mcc_without_warnings() -> None:
    y = np.zeros((50, 1), dtype=np.int64)
    score = _softmax(np.random.default_rng(5).normal(size=(50, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_metrics(y, score, BINARY)
        ci = bootstrap_metrics(y, score, BINARY, n_boot=20, rule="percentile")
        study = bootstrap_metrics(y, score, BINARY, n_boot=40)
    assert np.isnan(got["auc"]) and got["mcc"] == 0.0
    _assert_metrics_close(got, reference(y, score, BINARY))
    for interval in (ci, study):
        assert np.isnan(interval["auc"]).all() and np.isfinite(interval["acc"]).all()


@pytest.mark.parametrize("task", TASKS)
def test_bootstrap_ci_contains_point_estimate(task: str) -> None:
    y, score = make_case(task, 1000, seed=10)
    point = compute_metrics(y, score, task)
    for rule in ("study", "percentile"):
        for name, (lo, hi, _) in bootstrap_metrics(y, score, task, n_boot=200, rule=rule).items():
            assert lo <= point[name] <= hi, (rule, name)


def test_bootstrap_narrower_with_more_samples() -> None:
    small = bootstrap_metrics(*make_case(MULTI_CLASS, 200, seed=11), MULTI_CLASS, n_boot=200)
    large = bootstrap_metrics(*make_case(MULTI_CLASS, 5000, seed=11), MULTI_CLASS, n_boot=200)
    for name in METRICS:
        assert large[name].high - large[name].low < small[name].high - small[name].low, name


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    y, score = make_case(BINARY, 300, seed=12)
    first = bootstrap_metrics(y, score, BINARY, n_boot=100, seed=3, rule="percentile")
    assert bootstrap_metrics(y, score, BINARY, n_boot=100, seed=3, rule="percentile") == first
    assert bootstrap_metrics(y, score, BINARY, n_boot=100, seed=4, rule="percentile") != first
    # the study's resamples are random_state=0..B-1 whatever the seed
    study = bootstrap_metrics(y, score, BINARY, n_boot=100, seed=3)
    assert bootstrap_metrics(y, score, BINARY, n_boot=100, seed=4) == study


def test_resamples_do_not_depend_on_chunking() -> None:
    whole = np.concatenate(list(_percentile_resamples(30, 10, 0, chunk=10)))
    pieces = np.concatenate(list(_percentile_resamples(30, 10, 0, chunk=3)))
    np.testing.assert_array_equal(whole, pieces)
    assert whole.shape == (10, 30) and whole.min() >= 0 and whole.max() < 30


@pytest.mark.parametrize("task", TASKS)
def test_percentile_bootstrap_matches_slow_reference(task: str) -> None:
    """Same resample indices, metrics from sklearn one resample at a time. The test set is
    tiny, so many resamples lose a class or a label's positives (degenerate cases)."""
    y, score = make_case(task, 30, seed=13, ties=True)
    if task != MULTI_LABEL:  # make the last class rare: absent from ~13% of the resamples
        last = score.shape[1] - 1
        y[y == last] = last - 1
        y[:2] = last
    n_boot, seed = 40, 5
    per_resample = [reference(y[idx], score[idx], task)
                    for block in _percentile_resamples(len(y), n_boot, seed, chunk=7)
                    for idx in block]
    for alpha in (0.05, 0.5):
        got = bootstrap_metrics(y, score, task, n_boot=n_boot, seed=seed, alpha=alpha,
                                rule="percentile")
        for name in METRICS:
            values = np.array([r[name] for r in per_resample])
            values = values[~np.isnan(values)]
            want = [*np.percentile(values, [50 * alpha, 100 - 50 * alpha]), values.mean()]
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-12, err_msg=name)


def test_bootstrap_degenerate_resamples_do_not_warn() -> None:
    y, score = make_case(MULTI_CLASS, 25, seed=14)
    y[:] = np.where(y == 4, 3, y)
    y[0] = 4  # a singleton class, absent from about a third of the resamples
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = bootstrap_metrics(y, score, MULTI_CLASS, n_boot=300)
    assert all(np.isfinite(ci[name]).all() and ci[name].low <= ci[name].high for name in METRICS)


def test_bootstrap_speed_tissuemnist_size() -> None:
    """TissueMNIST's test set: 47,280 samples, 8 classes, 1000 resamples (timing printed)."""
    rng = np.random.default_rng(15)
    y = rng.integers(0, 8, size=(47_280, 1))
    logits = rng.normal(size=(47_280, 8))
    logits[np.arange(47_280), y[:, 0]] += 1.5
    score = _softmax(logits)
    point = compute_metrics(y, score, MULTI_CLASS)
    for rule in ("study", "percentile"):
        start = time.perf_counter()
        ci = bootstrap_metrics(y, score, MULTI_CLASS, n_boot=1000, rule=rule)
        print(f"\nbootstrap ({rule}) 47,280 x 8 classes x 1000 resamples: "
              f"{time.perf_counter() - start:.2f} s")
        assert all(ci[name].low <= point[name] <= ci[name].high for name in METRICS)


@pytest.mark.parametrize(
    ("task", "y", "score", "thresholds", "match"),
    [
        ("multiclass", np.zeros((4, 1)), np.full((4, 2), 0.5), None, "unknown task"),
        (MULTI_CLASS, np.zeros((4, 2)), np.full((4, 2), 0.5), None, r"shape \(4,\) or \(4, 1\)"),
        (MULTI_CLASS, np.array([0, 1, 2, 3]), np.full((4, 3), 0.3), None, r"labels in \[0, 3\)"),
        (MULTI_CLASS, np.zeros(4), np.full(4, 0.5), None, r"shape \(n, C\)"),
        (MULTI_CLASS, np.zeros(4), np.full((4, 2), 0.5), np.array([0.5]), "must be None"),
        (BINARY, np.zeros(4), np.full((4, 3), 0.3), None, "1 or 2 columns"),
        (BINARY, np.zeros(4), np.full((4, 2), 0.5), np.array([0.5, 0.5]), r"shape \(1,\)"),
        (BINARY, np.zeros(4), np.array([[0.5, np.nan]] * 4), None, "NaN or infinite"),
        (MULTI_LABEL, np.full((4, 3), 2), np.full((4, 3), 0.5), None, "only 0 and 1"),
        (MULTI_LABEL, np.zeros((4, 2)), np.full((4, 3), 0.5), None, "y_score's shape"),
        (MULTI_LABEL, np.zeros((4, 3)), np.full((4, 3), 0.5), np.array([0.5]), r"shape \(3,\)"),
    ],
)
def test_invalid_inputs_raise_clear_errors(task, y, score, thresholds, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, score, task, thresholds)


def test_invalid_bootstrap_arguments() -> None:
    y, score = make_case(BINARY, 20)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_metrics(y, score, BINARY, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_metrics(y, score, BINARY, alpha=1.0)


# ----------------------------------------------------------------------------- the study's rules
def test_binary_f1_is_the_positive_class_f1_as_the_study_reports() -> None:
    """The study's F1 column is sklearn's default ``average='binary'``; ours stays macro."""
    y = np.array([[1], [1], [1], [0], [0], [0], [0], [0], [0], [0]])
    score = np.array([0.9, 0.8, 0.3, 0.7, 0.6, 0.1, 0.2, 0.1, 0.3, 0.2])
    got = compute_metrics(y, np.stack([1 - score, score], 1), BINARY)
    pred = score > 0.5
    assert got["f1"] == pytest.approx(f1_score(y.ravel(), pred)) == pytest.approx(0.571428571)
    assert got["f1_macro"] == pytest.approx(f1_score(y.ravel(), pred, average="macro"))
    assert got["f1_macro"] > got["f1"] + 0.09
    assert got["recall_macro"] == got["recall_micro"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("task", [BINARY, MULTI_LABEL])
def test_acc_is_medmnist_accuracy_and_acc_tuned_uses_the_thresholds(task: str) -> None:
    y, score = make_case(task, 500, seed=20, signal=2.0, shift=2.0)
    thresholds = np.full(1 if task == BINARY else 4, 0.1)
    got = compute_metrics(y, score, task, thresholds)
    assert got["acc"] == pytest.approx(getACC(y, score, task), rel=1e-12)
    assert got["acc_tuned"] == pytest.approx(reference(y, score, task, thresholds)["acc_tuned"])
    assert abs(got["acc"] - got["acc_tuned"]) > 0.01


def test_study_resamples_are_sklearn_resample_with_random_state_i() -> None:
    from biovfm_lib.probe.metrics import _study_resamples

    got = np.concatenate(list(_study_resamples(37, 25, chunk=7)))
    want = np.stack([resample(np.arange(37), replace=True, random_state=i) for i in range(25)])
    np.testing.assert_array_equal(got, want)


def _study_reference_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, ...]:
    """The study's interval as its evaluation takes it: a pandas sort, two positions, a mean."""
    import pandas as pd

    s = pd.Series(values).sort_values()
    low = s.iloc[int(alpha / 2 * len(s)) - 1].round(4)
    high = s.iloc[int((1 - alpha / 2) * len(s)) - 1].round(4)
    return float(low), float(high), float(round(s.mean(), 4))


@pytest.mark.parametrize("task", [BINARY, MULTI_CLASS])
def test_study_bootstrap_reproduces_the_studys_replicates_and_endpoints(task: str) -> None:
    """1000 replicates drawn as the study draws them, metrics from sklearn one replicate at a
    time, interval by the study's order statistics: equal to 4 decimals, exactly. The
    percentile interval of the same replicates differs, so the rule is what is tested."""
    y, score = make_case(task, 60, seed=21, ties=True)
    labels = y.ravel()
    pred = (score[:, -1] > 0.5).astype(int) if task == BINARY else score.argmax(1)
    per_replicate = {"auc": [], "mcc": []}
    for i in range(1000):
        idx = resample(np.arange(len(y)), replace=True, random_state=i)
        auc = (roc_auc_score(labels[idx], score[idx, -1]) if task == BINARY else
               _auc_over_defined(labels[idx, None] == np.arange(5), score[idx]))
        per_replicate["auc"].append(auc)
        per_replicate["mcc"].append(matthews_corrcoef(labels[idx], pred[idx]))
    got = bootstrap_metrics(y, score, task, n_boot=1000)
    differs = False
    for name, values in per_replicate.items():
        values = np.array(values)
        assert tuple(got[name]) == _study_reference_interval(values), name
        differs |= not np.allclose(got[name][:2], np.percentile(values, [2.5, 97.5]), atol=1e-5)
    assert differs


def test_study_interval_sorts_nan_last_and_counts_it() -> None:
    from biovfm_lib.probe.metrics import _study_interval

    values = np.random.default_rng(22).normal(0.8, 0.05, size=1000)
    values[::97] = np.nan
    assert tuple(_study_interval(values, 0.05)) == _study_reference_interval(values)


def test_study_interval_needs_enough_replicates() -> None:
    y, score = make_case(BINARY, 50)
    with pytest.raises(ValueError, match="n_boot >= 40"):
        bootstrap_metrics(y, score, BINARY, n_boot=39)
    assert bootstrap_metrics(y, score, BINARY, n_boot=39, rule="percentile")["auc"].low > 0.5


def test_absent_classes_name_what_auc_cannot_score() -> None:
    y, _ = make_case(MULTI_CLASS, 300, seed=4)
    y[y == 2] = 3
    assert absent_classes(y, MULTI_CLASS, 5) == [2]
    y_ml, _ = make_case(MULTI_LABEL, 100, seed=4)
    y_ml[:, 1], y_ml[:, 3] = 0, 1
    assert absent_classes(y_ml, MULTI_LABEL, 4) == [1, 3]
    assert absent_classes(np.ones((5, 1)), BINARY, 2) == [0]

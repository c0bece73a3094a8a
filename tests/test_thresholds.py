"""Tests for biovfm_lib.probe.thresholds: the study's MCC threshold search, and ours."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef, roc_curve

from biovfm_lib.probe.metrics import compute_metrics
from biovfm_lib.probe.thresholds import choose_thresholds, study_candidates
from tests.test_metrics import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL, make_case


def _study_reference(target: np.ndarray, score: np.ndarray) -> float:
    """The study's search written out plainly: roc_curve's thresholds less the first, sorted,
    thinned to every int(n/1000)-th above 1000, each scored with ``score >= t`` by sklearn's
    MCC, the first maximum kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = np.sort(roc_curve(target, score)[2][1:])
    if len(candidates) > 1000:
        candidates = candidates[:: int(len(candidates) / 1000)]
    mccs = [matthews_corrcoef(target, np.where(score < t, 0, 1)) for t in candidates]
    return float(candidates[int(np.argmax(mccs))])


def _columns(y: np.ndarray, score: np.ndarray, task: str):
    """(target, score) per label: the positive column of a binary task, else every label."""
    if task == MULTI_LABEL:
        return zip(y.T, score.T)
    return zip((y[:, 0] == 1)[None], score[:, -1:].T)


@pytest.mark.parametrize("rule", ["study", "exact"])
def test_choose_thresholds_shapes(rule: str) -> None:
    for task in (MULTI_CLASS, ORDINAL):
        assert choose_thresholds(*make_case(task, 50), task, rule=rule) is None
    assert choose_thresholds(*make_case(BINARY, 50), BINARY, rule=rule).shape == (1,)
    assert choose_thresholds(*make_case(MULTI_LABEL, 50), MULTI_LABEL, rule=rule).shape == (4,)


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tied"])
@pytest.mark.parametrize("task", [BINARY, MULTI_LABEL])
def test_study_rule_reproduces_the_studys_search(task: str, ties: bool) -> None:
    y, score = make_case(task, 700, seed=30, ties=ties)
    got = choose_thresholds(y, score, task)
    want = [_study_reference(t.astype(int), s) for t, s in _columns(y, score, task)]
    np.testing.assert_array_equal(got, want)


def test_study_rule_thins_more_than_1000_candidates() -> None:
    """ChestMNIST-sized validation labels give thousands of ROC corners: every int(n/1000)-th
    is kept, so the chosen threshold can differ from the best over all of them."""
    y, score = make_case(BINARY, 12_000, seed=31, signal=0.7)
    target, s = y[:, 0] == 1, score[:, -1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n_all = len(roc_curve(target, s)[2]) - 1
    assert n_all >= 2000
    assert len(study_candidates(target, s)) == len(range(0, n_all, n_all // 1000))
    assert choose_thresholds(y, score, BINARY)[0] == _study_reference(target.astype(int), s)


def test_study_rule_selects_with_ge_and_applies_with_gt() -> None:
    """Tied scores at the best cut: the study scores ``>= 0.6`` (MCC 1 on validation) but
    applies ``> 0.6``, so the tied positives become negatives; ours keeps them positive."""
    y = np.array([[0], [0], [1], [1], [1]])
    p = np.array([0.2, 0.3, 0.6, 0.6, 0.9])
    score = np.stack([1 - p, p], 1)
    study = choose_thresholds(y, score, BINARY)
    exact = choose_thresholds(y, score, BINARY, rule="exact")
    assert study[0] == 0.6 and exact[0] == pytest.approx(0.45)
    assert compute_metrics(y, score, BINARY, exact)["mcc"] == 1.0
    assert compute_metrics(y, score, BINARY, study)["mcc"] < 0.5


def _brute_force_best_mcc(target: np.ndarray, score: np.ndarray) -> float:
    values = np.unique(score)
    candidates = np.concatenate([[-np.inf], (values[:-1] + values[1:]) / 2, values])
    return max(matthews_corrcoef(target, score > t) for t in candidates)


@pytest.mark.parametrize("ties", [False, True], ids=["random", "tied"])
@pytest.mark.parametrize("task", [BINARY, MULTI_LABEL])
def test_exact_rule_maximises_mcc_as_applied(task: str, ties: bool) -> None:
    y, score = make_case(task, 80, seed=6, ties=ties)
    thresholds = choose_thresholds(y, score, task, rule="exact")
    random_thresholds = np.random.default_rng(7).uniform(0, 1, size=20)
    for (target, s), t in zip(_columns(y, score, task), thresholds, strict=True):
        chosen = matthews_corrcoef(target, s > t)
        assert chosen == pytest.approx(_brute_force_best_mcc(target, s), abs=1e-12)
        assert all(chosen >= matthews_corrcoef(target, s > r) - 1e-12 for r in random_thresholds)


@pytest.mark.parametrize("rule", ["study", "exact"])
@pytest.mark.parametrize("task", [BINARY, MULTI_LABEL])
def test_tuned_thresholds_beat_default_on_shifted_scores(task: str, rule: str) -> None:
    """Well-ranked but miscalibrated scores (mostly < 0.5): tuning on a validation split must
    improve test MCC over the 0.5 default."""
    y_val, s_val = make_case(task, 1000, seed=8, signal=2.0, shift=3.0)
    y_test, s_test = make_case(task, 1000, seed=9, signal=2.0, shift=3.0)
    thresholds = choose_thresholds(y_val, s_val, task, rule=rule)
    tuned = compute_metrics(y_test, s_test, task, thresholds)["mcc"]
    default = compute_metrics(y_test, s_test, task)["mcc"]
    assert tuned > default + 0.1


def test_exact_rule_ties_go_to_candidate_nearest_default() -> None:
    # A constant label makes every MCC 0; candidates are ~0.1, 0.2, 0.55 and 0.8.
    y = np.zeros((3, 1), dtype=np.int64)
    score = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    np.testing.assert_array_equal(choose_thresholds(y, score, BINARY, rule="exact"), [0.55])


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_thresholds(*make_case(BINARY, 20), BINARY, rule="midpoint")

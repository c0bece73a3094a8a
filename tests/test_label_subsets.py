"""Label subsets: stratified, nested across fractions and shots, reproducible per draw."""
import numpy as np
import pytest

from biovfm_lib.probe.label_subsets import draw_labels, label_settings, strata


@pytest.fixture
def classes():
    """1000 images of 5 classes, one of them rare (3 images)."""
    rng = np.random.default_rng(0)
    y = rng.choice(4, 997, p=[0.5, 0.3, 0.15, 0.05])
    return rng.permutation(np.concatenate([y, [4, 4, 4]]))


def test_fractions_are_stratified_nested_and_hold_every_class(classes):
    draw = draw_labels(classes, seed=0, draw=0)
    small, large = draw.fraction(0.01), draw.fraction(0.1)
    assert len(small) == 10 and len(large) == 100
    assert set(small) <= set(large)  # the 1% subset inside the 10% one
    for subset in (small, large, draw.fraction(0.5)):
        counts = np.bincount(classes[subset], minlength=5)
        assert (counts >= 1).all()  # the rare class too
        expected = len(subset) * np.bincount(classes) / len(classes)
        assert np.abs(counts - expected).max() <= 2  # proportional, beyond the one each
    assert len(np.unique(large)) == len(large)


def test_a_fraction_too_small_for_every_class_takes_one_of_each(classes):
    subset = draw_labels(classes, 0, 0).fraction(0.001)  # round(1.0) < 5 classes
    assert sorted(classes[subset]) == [0, 1, 2, 3, 4]


def test_shots_are_k_per_class_nested_and_inside_every_fraction(classes):
    draw = draw_labels(classes, seed=3, draw=1)
    one, five, ten = (draw.shots(s) for s in (1, 5, 10))
    assert np.bincount(classes[five], minlength=5).tolist() == [5, 5, 5, 5, 3]  # rare: all 3
    assert np.bincount(classes[ten]).tolist() == [10, 10, 10, 10, 3]
    assert set(one) <= set(five) <= set(ten)
    assert set(one) <= set(draw.fraction(0.01))


def test_draws_are_fixed_by_seed_and_differ_from_each_other(classes):
    a, b = draw_labels(classes, 0, 0), draw_labels(classes, 0, 0)
    np.testing.assert_array_equal(a.fraction(0.1), b.fraction(0.1))
    assert set(a.fraction(0.1)) != set(draw_labels(classes, 0, 1).fraction(0.1))
    assert set(a.shots(5)) != set(draw_labels(classes, 1, 0).shots(5))


def test_multilabel_strata_are_the_rarest_finding_or_none():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1], [1, 1, 0], [0, 1, 0]])
    # label frequencies 4, 3, 1: rarest positive label per row, 3 for no finding
    assert strata(y, multilabel=True).tolist() == [0, 1, 3, 2, 1, 1]
    assert strata(np.array([[2], [0], [1]]), multilabel=False).tolist() == [2, 0, 1]


def test_multilabel_shots_cover_every_finding():
    rng = np.random.default_rng(2)
    y = (rng.random((500, 6)) < [0.3, 0.2, 0.1, 0.05, 0.02, 0.01]).astype(np.uint8)
    subset = draw_labels(strata(y, True), 0, 0).shots(1)
    assert len(subset) == 7 and y[subset].any(axis=0).all()  # one per finding + no finding


def test_settings_are_named_and_ordered():
    names = [s.name for s in label_settings([0.1, 0.01], [10, 1])]
    assert names == ["f0.01", "f0.1", "1-shot", "10-shot"]

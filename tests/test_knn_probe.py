"""The kNN probe against a brute-force sklearn KNeighborsClassifier on the same features."""
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from biovfm_lib.data.medmnist import TaskData
from biovfm_lib.probe.knn_probe import fit_knn
from biovfm_lib.probe.metrics import compute_metrics
from biovfm_lib.ssl.knn import knn_scores

T = 0.07


def sklearn_knn(k: int) -> KNeighborsClassifier:
    """DINOv2's rule in sklearn: cosine neighbours, each voting with weight exp(cos / T)."""
    return KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                weights=lambda d: np.exp((1 - d) / T))


def features(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def task(train_y, val_y, test_y, n_classes, kind="multi-class") -> TaskData:
    labels = {"train": train_y, "val": val_y, "test": test_y}
    return TaskData("x", kind, n_classes, 1, 28, {}, labels, Path("x.npz"), True)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_scores_are_sklearns_distance_weighted_probabilities(k):
    rng = np.random.default_rng(1)
    train, query = features(200), features(50, seed=2)
    y = rng.integers(0, 4, 200)
    ours = knn_scores(torch.from_numpy(train), torch.from_numpy(y), torch.from_numpy(query),
                      [k], 4, temperature=T, chunk=7)[k].numpy()
    ref = sklearn_knn(k).fit(train, y).predict_proba(query)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_multilabel_scores_are_the_weighted_share_of_neighbours_with_each_label():
    rng = np.random.default_rng(3)
    train, query = features(150), features(30, seed=4)
    y = rng.integers(0, 2, (150, 3))
    ours = knn_scores(torch.from_numpy(train), torch.from_numpy(y), torch.from_numpy(query),
                      [10], 3, multilabel=True, temperature=T)[10].numpy()
    ref = np.stack([p[:, 1] for p in sklearn_knn(10).fit(train, y).predict_proba(query)], 1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_k_is_chosen_on_validation_auc_and_reported_on_test():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 16)) * 0.6
    y = {s: rng.integers(0, 3, n) for s, n in (("train", 300), ("val", 80), ("test", 90))}
    x = {s: (centres[v] + rng.normal(size=(len(v), 16))).astype(np.float32)
         for s, v in y.items()}
    data = task(*(y[s][:, None] for s in ("train", "val", "test")), n_classes=3)
    fit = fit_knn(x["train"], data.labels["train"], x["val"], x["test"], data, [1, 10, 50], T)
    aucs = {k: compute_metrics(y["val"], sklearn_knn(k).fit(x["train"], y["train"])
                               .predict_proba(x["val"]), "multi-class")["auc"]
            for k in (1, 10, 50)}
    assert fit.k == max(aucs, key=aucs.get)
    ref = sklearn_knn(fit.k).fit(x["train"], y["train"]).predict_proba(x["test"])
    np.testing.assert_allclose(fit.scores["test"], ref, atol=1e-5)
    assert fit.scores["test"].dtype == np.float64


def test_a_memory_smaller_than_k_votes_with_all_of_it():
    rng = np.random.default_rng(6)
    train, val, test = features(6), features(10, seed=7), features(10, seed=8)
    data = task(np.array([0, 1, 0, 1, 0, 1])[:, None], rng.integers(0, 2, (10, 1)),
                rng.integers(0, 2, (10, 1)), 2, "binary-class")
    fit = fit_knn(train, data.labels["train"], val, test, data, [10, 20], T)
    assert fit.k == 6
    ref = sklearn_knn(6).fit(train, data.labels["train"][:, 0]).predict_proba(test)
    np.testing.assert_allclose(fit.scores["test"], ref, atol=1e-5)

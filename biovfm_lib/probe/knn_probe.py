"""The kNN probe: DINOv2's weighted kNN on cached features, k chosen on validation.

The training features are the memory (:func:`biovfm_lib.ssl.knn.knn_scores`: L2-normalised,
votes weighted by ``exp(cos / T)``); each ``k`` of ``knn`` scores the validation split and the
one with the best validation AUC (the study's headline metric; ties go to the smaller k) is
reported on test, with the same thresholds, metrics and bootstrap as the linear probe. A
memory smaller than a ``k`` (a few-shot subset) votes with all of its images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from biovfm_lib.data.medmnist import TaskData
from biovfm_lib.probe.linear import targets
from biovfm_lib.probe.metrics import compute_metrics
from biovfm_lib.ssl.knn import knn_scores


@dataclass
class KnnFit:
    k: int  # the k chosen on validation (after capping at the memory's size)
    scores: dict[str, np.ndarray]  # "val", "test": class (label) scores, float64


def fit_knn(memory: np.ndarray, memory_labels: np.ndarray, val: np.ndarray, test: np.ndarray,
            data: TaskData, ks: list[int], temperature: float) -> KnnFit:
    """Score val and test against ``memory`` for every k; keep the k best on val AUC."""
    ks = sorted({min(k, len(memory)) for k in ks})
    train = torch.from_numpy(memory)
    labels = targets(memory_labels, data.multilabel)
    by_split = {name: knn_scores(train, labels, torch.from_numpy(x), ks, data.n_classes,
                                 data.multilabel, temperature)
                for name, x in (("val", val), ("test", test))}
    val_auc = [compute_metrics(data.labels["val"], by_split["val"][k].double().numpy(),
                               data.task)["auc"] for k in ks]
    best = ks[int(np.nanargmax(val_auc))] if not np.isnan(val_auc).all() else ks[0]
    return KnnFit(best, {name: s[best].double().numpy() for name, s in by_split.items()})

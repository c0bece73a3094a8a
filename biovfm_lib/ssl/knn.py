"""Weighted k-nearest-neighbour classification of frozen features, DINOv2's evaluation rule.

DINOv2's kNN (``dinov2/eval/knn.py``) L2-normalises features, takes the cosine similarities of
the ``max(ks)`` nearest training features, weights them by a softmax of ``similarity / T`` over
those ``max(ks)`` and sums the one-hot labels of the first ``k``. Here each ``k``'s votes are
renormalised to sum to one, so they read as class probabilities (AUC compares them across
images): the argmax, and so the accuracy, is DINOv2's exactly, since renormalising a prefix of
a softmax scales all of one image's votes alike. A multi-label task (ChestMNIST) gets, per
label, the weighted share of neighbours carrying it.

It lives below both ``probe`` (the kNN probe) and ``train`` (the online monitor), which share it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 0.07


def knn_scores(train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor,
               ks: list[int], n_classes: int, multilabel: bool = False,
               temperature: float = TEMPERATURE, chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Per ``k``, (len(query), n_classes) scores of ``query`` against the ``train`` memory.

    ``train_labels`` are class indices (N,) or, for a multi-label task, 0/1 rows (N, L).
    Queries are processed ``chunk`` at a time so memory stays at ``chunk x len(train)``.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"knn: every k must be >= 1, got {ks}")
    if max(ks) > len(train):
        raise ValueError(f"knn: k={max(ks)} exceeds the {len(train)} training features")
    if temperature <= 0:
        raise ValueError(f"knn: temperature must be > 0, got {temperature}")
    memory = F.normalize(train.float(), dim=1)
    votes = (train_labels.float() if multilabel
             else F.one_hot(train_labels.long(), n_classes).float())
    max_k = max(ks)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(query), chunk):
        q = F.normalize(query[start:start + chunk].float(), dim=1)
        sims, idx = (q @ memory.T).topk(max_k, dim=1, largest=True, sorted=True)
        weights = torch.softmax(sims / temperature, dim=1)
        neighbour_votes = votes[idx] * weights.unsqueeze(-1)  # (q, max_k, classes)
        for k in ks:
            summed = neighbour_votes[:, :k].sum(dim=1)
            out[k].append(summed / weights[:, :k].sum(dim=1, keepdim=True))
    return {k: torch.cat(parts) if parts else torch.empty(0, n_classes)
            for k, parts in out.items()}

"""Evaluations beyond the study's one linear probe: kNN, label efficiency, seeds, blocks.

They reuse the run's cached features, so each costs seconds, not a pass of the backbone:

- ``knn``: DINOv2's weighted kNN (:mod:`biovfm_lib.probe.knn_probe`) on every probed block;
- ``label_fractions`` / ``shots``: the linear probe (and kNN, if on) of the last block trained
  on stratified, nested subsets of the training labels (:mod:`biovfm_lib.probe.label_subsets`),
  ``label_draws`` times each;
- ``n_runs``: the linear head of the last block trained with seeds ``seed``, ``seed + 1``, ...
  (head initialisation and batch order): its spread is the training's, on fixed features and a
  fixed test set, where the bootstrap interval is the test set's, for one trained head;
- ``layers``: the linear probe (and kNN) of every probed block (:mod:`biovfm_lib.probe.layers`).

Every one of them trains on cached eval-mode training features, so their rows say
``protocol: cached`` (``backbone_mode: eval``) whatever protocol the main probe ran under. Under
``protocol: cached`` the evaluation identical to the main probe (the last block, all labels,
seed ``seed``) is the main probe itself, shared, not repeated; under ``official`` it is run on
cached features beside it, so a sweep never mixes protocols. ``main`` marks the main probe's
rows, the only ones the scaling analysis fits, and only the main probe keeps its training
curves and predictions. Rows that are one of several draws or seeds carry no bootstrap
interval (their spread is the draws' or seeds'); the others carry one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biovfm_lib.data.medmnist import TaskData
from biovfm_lib.params import ProbeParams
from biovfm_lib.probe.knn_probe import fit_knn
from biovfm_lib.probe.label_subsets import (
    ALL_LABELS,
    LabelDraw,
    draw_labels,
    label_settings,
    strata,
)
from biovfm_lib.probe.linear import HeadBias, feature_batches, fit_linear_heads, predict, targets
from biovfm_lib.probe.scoring import score_rows

# Columns every results row carries beside today's; the main probe's rows read linear, the
# last block, the run's seed, all labels, draw 0, no k, main.
BEYOND_COLUMNS = ["probe", "layer", "run_seed", "label_setting", "labels_used", "label_draw",
                  "best_k", "main"]
CACHED = {"protocol": "cached", "backbone_mode": "eval", "train_drop_path": 0.0}


def beyond_enabled(p: ProbeParams) -> bool:
    """Whether the run asks for any evaluation beyond the main probe."""
    return bool(p.knn or p.label_fractions or p.shots or p.n_runs > 1 or p.layers != "last")


def main_tags(p: ProbeParams, last: int, n_train: int) -> dict[str, Any]:
    """The new columns of the main probe's rows."""
    return {"probe": "linear", "layer": last, "run_seed": p.seed, "label_setting": ALL_LABELS,
            "labels_used": n_train, "label_draw": 0, "best_k": np.nan, "main": True}


@dataclass(frozen=True)
class Evaluation:
    """One probe beyond the main one: what it trains, on which block and labels."""

    probe: str  # "linear" or "knn"
    layer: int
    run_seed: int
    label_setting: str = ALL_LABELS
    label_draw: int = 0


def plan(p: ProbeParams, layers: list[int]) -> dict[Evaluation, bool]:
    """Every evaluation the run asks for beyond the main probe, each once, with whether it
    gets a bootstrap interval."""
    last = layers[-1]
    wanted: dict[Evaluation, bool] = {}

    def want(evaluation: Evaluation, bootstrap: bool) -> None:
        wanted[evaluation] = wanted.get(evaluation, False) or bootstrap

    knn = ["knn"] if p.knn else []
    for probe in (["linear"] if p.layers != "last" else []) + knn:  # a point per block
        for layer in layers:
            want(Evaluation(probe, layer, p.seed), True)
    if p.n_runs > 1:
        for run in range(p.n_runs):
            want(Evaluation("linear", last, p.seed + run), False)
    settings = label_settings(p.label_fractions, p.shots)
    if settings:  # the curve's full-label point, on cached features like the rest of it
        want(Evaluation("linear", last, p.seed), True)
    for setting in settings:
        for draw in range(p.label_draws):
            for probe in ["linear", *knn]:
                want(Evaluation(probe, last, p.seed, setting.name, draw), False)
    if p.protocol == "cached":  # that one is the main probe
        wanted.pop(Evaluation("linear", last, p.seed), None)
    return wanted


def beyond_rows(data: TaskData, feats: dict[str, dict[int, np.ndarray]], p: ProbeParams,
                device: torch.device, head_bias: HeadBias) -> list[dict[str, Any]]:
    """The rows of every evaluation :func:`plan` lists, on ``feats[split][block]``."""
    settings = {s.name: s for s in label_settings(p.label_fractions, p.shots)}
    draws: dict[int, LabelDraw] = {}
    if settings:
        stratum = strata(data.labels["train"], data.multilabel)
        draws = {d: draw_labels(stratum, p.seed, d) for d in range(p.label_draws)}
    rows = []
    for ev, bootstrap in plan(p, sorted(feats["val"])).items():
        idx = (np.arange(len(data.labels["train"])) if ev.label_setting == ALL_LABELS
               else draws[ev.label_draw].subset(settings[ev.label_setting]))
        x = {"train": feats["train"][ev.layer][idx], "val": feats["val"][ev.layer],
             "test": feats["test"][ev.layer]}
        if ev.probe == "knn":
            knn = fit_knn(x["train"], data.labels["train"][idx], x["val"], x["test"], data,
                          p.knn, p.knn_temperature)
            scores, fitted = knn.scores, {"best_k": knn.k}
        else:
            scores, fitted = _linear(data, x, data.labels["train"][idx], p, ev.run_seed, device,
                                     head_bias, desc=f"{data.flag} {ev.label_setting} "
                                     f"b{ev.layer} s{ev.run_seed}")
        split_rows, _ = score_rows(data, scores, p, bootstrap=bootstrap)
        tags = {**CACHED, "probe": ev.probe, "layer": ev.layer, "run_seed": ev.run_seed,
                "label_setting": ev.label_setting, "labels_used": len(idx),
                "label_draw": ev.label_draw, "main": False}
        rows += [{**row, **fitted, **tags} for row in split_rows]
    return rows


def _linear(data: TaskData, x: dict[str, np.ndarray], train_labels: np.ndarray,
            p: ProbeParams, seed: int, device: torch.device, head_bias: HeadBias, desc: str
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The main probe's recipe (lrs, epochs, selection on val loss) on ``x``, seeded ``seed``."""
    train = feature_batches(torch.from_numpy(x["train"]), targets(train_labels, data.multilabel),
                            p.batch_size, seed)
    val_x = torch.from_numpy(x["val"])
    fit = fit_linear_heads(train, val_x, targets(data.labels["val"], data.multilabel),
                           data.n_classes, data.multilabel, p.lrs, p.epochs, p.weight_decay,
                           device, seed, desc=desc, head_bias=head_bias)
    scores = {"val": predict(fit.head, val_x, data.multilabel),
              "test": predict(fit.head, torch.from_numpy(x["test"]), data.multilabel)}
    return scores, {"best_lr": fit.lr, "best_epoch": fit.epoch}

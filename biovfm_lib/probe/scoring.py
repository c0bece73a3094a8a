"""From one probe's validation and test scores to results rows: every probe scores alike.

Thresholds are tuned on validation and fixed for test, every metric of ``METRICS`` is taken on
both splits, with the bootstrap interval where asked (the run's ``bootstrap`` replicates).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from biovfm_lib.data.medmnist import TaskData
from biovfm_lib.params import ProbeParams
from biovfm_lib.probe.metrics import (
    METRICS,
    Interval,
    absent_classes,
    bootstrap_metrics,
    compute_metrics,
)
from biovfm_lib.probe.thresholds import choose_thresholds


def absence_note(classes: list[int], split: str) -> str:
    """The ``note`` of a split's rows when classes are missing from it (empty otherwise)."""
    if not classes:
        return ""
    return (f"class {', '.join(map(str, classes))} absent from {split}: auc averages the classes "
            "it can score (the study's auc would be NaN)")


def score_rows(data: TaskData, scores: dict[str, np.ndarray], p: ProbeParams,
               bootstrap: bool = True) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """Rows (split, metric, value, ci_low, ci_high, n, boot_mean, note) of val and test, and
    the thresholds chosen on val (None for argmax tasks)."""
    thresholds = choose_thresholds(data.labels["val"], scores["val"], data.task,
                                   rule=p.threshold_rule)
    rows = []
    for split in ("val", "test"):
        y_true = data.labels[split]
        values = compute_metrics(y_true, scores[split], data.task, thresholds)
        cis = bootstrap_metrics(y_true, scores[split], data.task, thresholds,
                                n_boot=p.bootstrap, seed=p.seed, rule=p.ci_rule
                                ) if p.bootstrap and bootstrap else {}
        note = absence_note(absent_classes(y_true, data.task, data.n_classes), split)
        for metric in METRICS:
            ci = cis.get(metric, Interval(np.nan, np.nan, np.nan))
            rows.append({"split": split, "metric": metric, "value": values[metric],
                         "ci_low": ci.low, "ci_high": ci.high, "n": len(y_true),
                         "boot_mean": ci.mean, "note": note})
    return rows, thresholds

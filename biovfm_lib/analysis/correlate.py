"""Correlating scaling slopes with task properties, and predicting slopes from them.

With about a dozen tasks, a single correlation is fragile, so each coefficient comes with a
multiplicity-adjusted p-value and a bootstrap-over-tasks confidence interval. The multiple-
testing family is one algorithm's full set of (property x method) tests: those are the claims
made about that algorithm together, while different algorithms are separate analyses.

:func:`loto_prediction` goes beyond the study: it asks whether properties *predict* a held-out
task's slope better than the other tasks' mean slope, which a correlation alone cannot show.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

CORRELATE_COLUMNS = ["algorithm", "property", "method", "r", "p_value", "p_adjusted",
                     "ci_low", "ci_high", "n_tasks"]
METHODS = ("pearson", "spearman")


def _merge(slopes: pd.DataFrame, properties: pd.DataFrame,
           prop_columns: Sequence[str]) -> pd.DataFrame:
    """Per-task slopes joined with properties; the cross-task "mean" row is not a task."""
    per_task = slopes.loc[slopes["task"] != "mean", ["algorithm", "task", "slope"]]
    return per_task.merge(properties[["task", *prop_columns]], on="task", how="inner")


def _bootstrap_r(x: np.ndarray, y: np.ndarray, method: str, idx: np.ndarray) -> np.ndarray:
    """r on each resample of tasks (rows of ``idx``); NaN where x or y is constant."""
    xs, ys = x[idx], y[idx]
    if method == "spearman":  # Spearman's rho is Pearson's r of average ranks
        xs, ys = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
    xs = xs - xs.mean(axis=1, keepdims=True)
    ys = ys - ys.mean(axis=1, keepdims=True)
    den = np.sqrt((xs ** 2).sum(axis=1) * (ys ** 2).sum(axis=1))
    num = (xs * ys).sum(axis=1)
    ok = den > 1e-12 * np.maximum(np.abs(num), 1.0)
    return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def correlate(slopes: pd.DataFrame, properties: pd.DataFrame, prop_columns: Sequence[str],
              method: str | Sequence[str] = METHODS, n_boot: int = 1000, seed: int = 0,
              adjust: str = "holm", ci: float = 0.95) -> pd.DataFrame:
    """Correlation of each algorithm's per-task slope with each property, by each method.

    ``method`` is "pearson", "spearman" or a sequence of them (default: both).
    ``adjust`` is a ``multipletests`` method ("holm" or "fdr_bh"), applied per algorithm over
    all its property x method tests. The CI is the percentile bootstrap over tasks; resamples
    in which slope or property is constant are skipped. Tasks with a missing property are
    dropped for that property; fewer than 3 tasks give NaN.
    """
    methods = [method] if isinstance(method, str) else list(method)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; use one of {METHODS}")
    data = _merge(slopes, properties, prop_columns)
    tails = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    rows = []
    for algorithm, group in data.groupby("algorithm", sort=True):
        family = []
        for prop in prop_columns:
            sub = group.dropna(subset=[prop, "slope"])
            x, y = sub[prop].to_numpy(float), sub["slope"].to_numpy(float)
            n = len(sub)
            idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n else None
            for name in methods:
                r = p = lo = hi = np.nan
                if n >= 3:
                    test = stats.pearsonr if name == "pearson" else stats.spearmanr
                    r, p = (float(v) for v in test(x, y))
                    boot = _bootstrap_r(x, y, name, idx)
                    boot = boot[np.isfinite(boot)]
                    if len(boot):
                        lo, hi = np.percentile(boot, tails)
                family.append({"algorithm": algorithm, "property": prop, "method": name,
                               "r": r, "p_value": p, "ci_low": lo, "ci_high": hi,
                               "n_tasks": n})
        frame = pd.DataFrame(family)
        frame["p_adjusted"] = np.nan
        tested = frame["p_value"].notna()
        if tested.any():
            frame.loc[tested, "p_adjusted"] = multipletests(
                frame.loc[tested, "p_value"], method=adjust)[1]
        rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=CORRELATE_COLUMNS)
    return pd.concat(rows, ignore_index=True)[CORRELATE_COLUMNS]


def loto_prediction(slopes: pd.DataFrame, properties: pd.DataFrame,
                    prop_columns: Sequence[str]) -> pd.DataFrame:
    """Leave-one-task-out predictions of each task's slope from its properties.

    For each held-out task, an ordinary least-squares fit (with intercept) on the other tasks,
    with properties standardised by those tasks' mean and sd only, predicts its slope; the
    baseline predicts the other tasks' mean slope. Tasks missing a property are dropped.
    Returns ``algorithm, task, slope, predicted, baseline``; summarise with :func:`loto_summary`.
    """
    data = _merge(slopes, properties, prop_columns).dropna(subset=[*prop_columns, "slope"])
    rows = []
    for algorithm, group in data.groupby("algorithm", sort=True):
        x = group[list(prop_columns)].to_numpy(float)
        y = group["slope"].to_numpy(float)
        if len(y) < len(prop_columns) + 2:
            raise ValueError(f"{algorithm}: {len(y)} tasks cannot leave one out and still fit "
                             f"{len(prop_columns)} properties plus an intercept")
        for i, task in enumerate(group["task"]):
            train = np.arange(len(y)) != i
            mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
            sd = np.where(sd > 0, sd, 1.0)  # a constant property then only shifts the intercept
            design = np.column_stack([np.ones(train.sum()), (x[train] - mu) / sd])
            coef = np.linalg.lstsq(design, y[train], rcond=None)[0]
            predicted = coef[0] + ((x[i] - mu) / sd) @ coef[1:]
            rows.append({"algorithm": algorithm, "task": task, "slope": y[i],
                         "predicted": float(predicted), "baseline": float(y[train].mean())})
    return pd.DataFrame(rows, columns=["algorithm", "task", "slope", "predicted", "baseline"])


def loto_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Out-of-sample error per algorithm; ``skill = 1 - rmse_model / rmse_mean``.

    Skill > 0 means the properties predict held-out slopes better than the mean does.
    """
    def errors(g: pd.DataFrame) -> pd.Series:
        model, mean = g["predicted"] - g["slope"], g["baseline"] - g["slope"]
        rmse_model, rmse_mean = np.sqrt((model ** 2).mean()), np.sqrt((mean ** 2).mean())
        return pd.Series({"rmse_model": rmse_model, "rmse_mean": rmse_mean,
                          "mae_model": model.abs().mean(), "mae_mean": mean.abs().mean(),
                          "skill": 1 - rmse_model / rmse_mean})

    return (predictions.groupby("algorithm", sort=True)[["slope", "predicted", "baseline"]]
            .apply(errors).reset_index())

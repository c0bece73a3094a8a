"""What notebook 03_probe shows of the evaluations beyond the main probe: tables and figures.

Every function takes a run's whole results table and picks its own rows
(:mod:`biovfm_lib.probe.beyond` says which evaluation writes which); values are in percent.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from biovfm_lib.probe.label_subsets import ALL_LABELS
from biovfm_lib.probe.report import main_rows

SEED_NOTE = ("The bootstrap interval is the uncertainty from the finite test set: how far the "
             "metric of this one trained head would move on another test set of the same size. "
             "The sd across seeds is the spread from training the head (its initialisation and "
             "batch order) on the same cached features, scored on the same test set.")


def _pct(v: float) -> str:
    return "" if pd.isna(v) else f"{100 * v:.1f}"


def _with_ci(row: pd.Series) -> str:
    if pd.isna(row.ci_low):
        return _pct(row.value)
    return f"{_pct(row.value)} [{_pct(row.ci_low)}, {_pct(row.ci_high)}]"


def _short(task: str) -> str:
    return task.replace("mnist", "")


def _last_block(results: pd.DataFrame) -> pd.DataFrame:
    return results[results.layer == main_rows(results).layer.max()]


def _metric(results: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    return results[(results.metric == metric) & (results.split == split)]


def knn_table(results: pd.DataFrame, metric: str = "auc", split: str = "test") -> pd.DataFrame:
    """Per task, the main linear probe and the kNN probe of the last block (all labels), each
    'value [bootstrap 95% CI]', and the k chosen on validation; a mean row."""
    df = _metric(_last_block(results), metric, split)
    knn = df[(df.probe == "knn") & (df.label_setting == ALL_LABELS)].set_index("task")
    linear = _metric(main_rows(results), metric, split).set_index("task")
    protocol = linear.protocol.iloc[0]
    table = pd.DataFrame({f"linear ({protocol})": linear.apply(_with_ci, axis=1),
                          "knn (cached)": knn.apply(_with_ci, axis=1),
                          "k": knn.best_k.astype(int).astype(str)})
    table.loc["mean"] = [_pct(linear.value.mean()), _pct(knn.value.mean()), ""]
    table.index = [_short(t) for t in table.index]
    return table.rename_axis(f"{metric}, {split}")


def seed_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The linear probes of the last block on all labels trained on cached features, one per
    run seed (under ``protocol: cached`` the main probe is the first of them)."""
    df = _last_block(results)
    return df[(df.probe == "linear") & (df.label_setting == ALL_LABELS)
              & (df.protocol == "cached")]


def seed_table(results: pd.DataFrame, metric: str = "auc", split: str = "test") -> pd.DataFrame:
    """Per task, the main probe's value with its bootstrap 95% CI next to the mean +- sd over
    run seeds, and the per-seed values (:data:`SEED_NOTE` says what each measures)."""
    seeds = _metric(seed_rows(results), metric, split)
    main = _metric(main_rows(results), metric, split).set_index("task")
    by_task = seeds.groupby("task").value
    per_seed = seeds.sort_values("run_seed").groupby("task").value.agg(
        lambda v: ", ".join(map(_pct, v)))
    n = by_task.size()
    return pd.DataFrame({
        f"main probe ({main.protocol.iloc[0]}), bootstrap 95% CI": main.apply(_with_ci, axis=1),
        "mean +- sd over seeds": [f"{_pct(m)} +- {_pct(s)}" for m, s in
                                  zip(by_task.mean(), by_task.std(ddof=1))],
        "seeds": n, "per seed": per_seed,
    }, index=n.index).rename(index=_short).rename_axis(f"{metric}, {split}")


def label_efficiency(results: pd.DataFrame, metric: str = "auc", split: str = "test"
                     ) -> pd.DataFrame:
    """Per task, probe and label setting: labels used, and the metric's mean, sd (over draws)
    and per-draw values; ``all`` is the same probe on all labels (cached features too)."""
    df = _metric(_last_block(results), metric, split)
    full = _metric(_last_block(layer_rows(results)), metric, split)
    rows = pd.concat([df[df.label_setting != ALL_LABELS], full])
    table = rows.sort_values("label_draw").groupby(
        ["task", "probe", "label_setting"], sort=False).agg(
        labels_used=("labels_used", "mean"), mean=("value", "mean"), sd=("value", "std"),
        draws=("value", "size"), values=("value", list))
    return table.reset_index().sort_values(["task", "probe", "labels_used"], ignore_index=True)


def plot_label_efficiency(results: pd.DataFrame, metric: str = "auc", split: str = "test"
                          ) -> plt.Figure:
    """Per task, the metric (mean +- sd over draws) against the labels used, a line per probe;
    the rightmost point of each line is its probe on all labels."""
    table = label_efficiency(results, metric, split)
    tasks = list(dict.fromkeys(table.task))
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes.flat, tasks):
        for probe, t in table[table.task == task].groupby("probe"):
            ax.errorbar(t.labels_used, t["mean"], yerr=t.sd.fillna(0), marker="o", ms=3,
                        capsize=2, label=probe)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overprint on short axes
        ax.set_title(_short(task), fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("training labels used (log)")
    fig.supylabel(f"{split} {metric}\n(mean +- sd, draws)", fontsize=9)
    return _finish(fig, axes, len(tasks))


def layer_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Per block, the probes on all labels at the run's seed on cached features."""
    seed = main_rows(results).run_seed.iloc[0]
    return results[(results.label_setting == ALL_LABELS) & (results.run_seed == seed)
                   & (results.protocol == "cached")]


def plot_layers(results: pd.DataFrame, metric: str = "auc", split: str = "test"
                ) -> plt.Figure:
    """Per task, the metric of each probed block (bootstrap 95% CI), a line per probe."""
    df = _metric(layer_rows(results), metric, split)
    tasks = list(dict.fromkeys(df.task))
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes.flat, tasks):
        for probe, t in df[df.task == task].sort_values("layer").groupby("probe"):
            err = np.vstack([t.value - t.ci_low, t.ci_high - t.value]).clip(min=0)
            ax.errorbar(t.layer, t.value, yerr=None if np.isnan(err).all() else err,
                        marker="o", ms=3, capsize=2, label=probe)
        ax.set_title(_short(task), fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("block (0 = first; the last is the study's)")
    fig.supylabel(f"{split} {metric}\n(bootstrap 95% CI)", fontsize=9)
    return _finish(fig, axes, len(tasks))


def _panels(n: int) -> tuple[plt.Figure, np.ndarray]:
    cols = min(4, n)
    rows = -(-n // cols)
    return plt.subplots(rows, cols, figsize=(3.2 * cols, 0.6 + 2.4 * rows), squeeze=False)


def _finish(fig: plt.Figure, axes: np.ndarray, n: int) -> plt.Figure:
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig

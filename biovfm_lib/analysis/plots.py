"""The figures of notebooks 04_scaling and 05_task_properties.

Scaling figures draw one curve per source, algorithm, data subset and modality subset, the
same grouping the slope fits use, so a drawn line is always the fitted one: colour says the
algorithm, marker the subset, line style (and hollow markers) the reference table.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

COLORS = {"dinov2": "tab:blue", "mae": "tab:orange"}
CURVE = ["source", "algorithm", "data_subset", "modality_subset"]
MARKERS = "os^DvP<>"
HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]


def _short(task: str) -> str:
    return task.replace("mnist", "")


def _subset(data_subset: str, modality_subset: str) -> str:
    return f"{data_subset}/{modality_subset}"


def curve_label(source: str, algorithm: str, data_subset: str, modality_subset: str) -> str:
    """How figures and pickers name a curve: ``dinov2 full/all (reference)``."""
    return f"{algorithm} {_subset(data_subset, modality_subset)} ({source})"


def checkpoint_labels(points: pd.DataFrame) -> pd.Series:
    """A name per point for the checkpoint it measures, so runs can be picked for comparison.

    A reference checkpoint is the study's model of one algorithm and size; a run's is also told
    apart by its probe run, since one checkpoint may be probed more than once.
    """
    base = (points["source"] + " · " + points["algorithm"] + " " + points["size"].fillna("")
            + " · " + points["data_subset"] + "/" + points["modality_subset"])
    if "run_id" not in points:
        return base
    return base.where(points["run_id"].isna(), base + " · probe " + points["run_id"])


def _styles(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """One marker per (data subset, modality subset) present, in a stable order."""
    pairs = sorted(set(zip(df["data_subset"], df["modality_subset"])))
    return {pair: MARKERS[i % len(MARKERS)] for i, pair in enumerate(pairs)}


def _size_axis(ax: plt.Axes, sizes: pd.Series) -> None:
    """A log x axis ticked at the sizes that were measured: decade ticks alone leave a few
    nearby sizes (or a single one) with no labelled tick at all."""
    ax.set_xscale("log")
    values = np.unique(sizes.dropna().to_numpy(dtype=float))
    labels, last = [], -np.inf
    for v in values:  # sizes closer than a factor 1.8 share a tick's room: label the first
        labels.append(f"{v:.3g}" if np.log10(v) - last > 0.25 else "")
        last = np.log10(v) if labels[-1] else last
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FixedFormatter(labels))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(values) == 1:  # one size: a margin either side, or the point sits on the frame
        ax.set_xlim(values[0] / 1.5, values[0] * 1.5)


def plot_mean_scaling(points: pd.DataFrame, x: str, metric: str = "auc",
                      random_init: pd.DataFrame | None = None) -> plt.Figure:
    """Mean metric over tasks against size per curve; runs solid, reference dashed; random
    initialisations (:func:`biovfm_lib.analysis.inputs.baseline_points`) as grey crosses at
    their sizes, so a gain from pretraining reads as the height above them."""
    df = points[(points.metric == metric) & points[x].notna()]
    if df.empty:
        return _empty(f"no {metric} points with {x}")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    floor = _random_init(random_init, metric, x)
    if len(floor):
        mean = floor.groupby(x).value.mean()
        ax.plot(mean.index, mean.values, "x:", color="grey", label="random init")
    markers = _styles(df)
    for (source, algo, data, modality), g in df.groupby(CURVE):
        mean = g.groupby(x).value.mean()
        ax.plot(mean.index, mean.values, marker=markers[data, modality],
                ls="-" if source == "runs" else "--", color=COLORS.get(algo),
                mfc=None if source == "runs" else "none",
                label=curve_label(source, algo, data, modality))
    _size_axis(ax, pd.concat([df[x], floor[x]]))
    ax.set_xlabel(x)
    ax.set_ylabel(f"mean test {metric}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_task_panels(points: pd.DataFrame, slopes: pd.DataFrame, x: str, metric: str = "auc",
                     baseline: pd.DataFrame | None = None,
                     random_init: pd.DataFrame | None = None) -> plt.Figure:
    """One panel per task: points, the fitted power law per curve, a baseline line
    (BiomedCLIP) and random initialisations as grey crosses."""
    df = points[(points.metric == metric) & points[x].notna()]
    floor = _random_init(random_init, metric, x)
    tasks = sorted(df.task.unique())
    if not tasks:
        return _empty(f"no {metric} points with {x}")
    fits = slopes[(slopes.fit == "power_law") & (slopes.metric == metric)
                  & (slopes.axis == "model_size")].set_index(["task", *CURVE])
    markers = _styles(df)
    cols = 4
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for (source, algo, data, modality), g in df[df.task == task].groupby(CURVE):
            g = g.sort_values(x)
            color = COLORS.get(algo)
            ax.plot(g[x], g.value, markers[data, modality], color=color, ms=4,
                    mfc=None if source == "runs" else "none",
                    label=curve_label(source, algo, data, modality))
            key = (task, source, algo, data, modality)
            if key in fits.index and np.isfinite(fits.loc[key, "slope"]):
                xs = np.geomspace(g[x].min(), g[x].max(), 20)
                logy = np.polyfit(np.log(g[x]), np.log(g.value), 1)  # same OLS line
                ax.plot(xs, np.exp(np.polyval(logy, np.log(xs))), color=color, lw=1,
                        ls="-" if source == "runs" else "--")
        if baseline is not None:
            b = baseline[(baseline.task == task) & (baseline.metric == metric)]
            if len(b):
                ax.axhline(b.value.iloc[0], color="grey", ls=":", lw=1, label="BiomedCLIP")
        r = floor[floor.task == task].sort_values(x)
        if len(r):
            ax.plot(r[x], r.value, "x:", color="grey", ms=4, label="random init")
        _size_axis(ax, pd.concat([df.loc[df.task == task, x], r[x]]))
        ax.set_title(_short(task), fontsize=9)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel(x)
    fig.tight_layout()
    return fig


def _random_init(random_init: pd.DataFrame | None, metric: str, x: str) -> pd.DataFrame:
    """The random-initialisation rows of ``metric`` placed on ``x`` (only the study's x is
    defined for an encoder that was never pretrained; none on another axis)."""
    if random_init is None or x not in random_init:
        return pd.DataFrame(columns=["task", "value", x])
    rows = random_init[(random_init.metric == metric) & random_init[x].notna()]
    return rows[["task", "value", x]]


def _empty(message: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.axis("off")
    return fig


def plot_slopes(slopes: pd.DataFrame, metric: str = "auc", fit: str = "power_law",
                axis: str = "model_size") -> plt.Figure:
    """Slope per task and curve (algorithm, data subset, modality subset) with its 95% CI,
    one panel per source; hatching tells the subsets of one algorithm apart."""
    df = slopes[(slopes.metric == metric) & (slopes.fit == fit) & (slopes.axis == axis)]
    sources = sorted(df.source.unique())
    if not sources:
        return _empty(f"no {fit} slopes of {metric}")
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 3.4), squeeze=False)
    for ax, source in zip(axes.flat, sources):
        d = df[df.source == source]
        tasks = sorted(d.task.unique(), key=lambda t: (t == "mean", t))
        curves = list(d.groupby(CURVE[1:], sort=True))
        subsets = sorted({(data, modality) for (_, data, modality), _ in curves})
        width = 0.8 / max(len(curves), 1)
        for i, ((algo, data, modality), c) in enumerate(curves):
            a = c.set_index("task").reindex(tasks)
            err = np.vstack([a.slope - a.ci_low, a.ci_high - a.slope]).astype(float)
            ax.bar(np.arange(len(tasks)) + i * width, a.slope, width,
                   yerr=np.where(np.isfinite(err), err, 0), capsize=2, color=COLORS.get(algo),
                   hatch=HATCHES[subsets.index((data, modality)) % len(HATCHES)],
                   edgecolor="white", label=f"{algo} {_subset(data, modality)}")
        ax.set_xticks(np.arange(len(tasks)) + width * (len(curves) - 1) / 2,
                      [_short(t) for t in tasks], rotation=90)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(f"{fit} slope of {metric} ({source}, {axis})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_correlations(corr: pd.DataFrame, method: str = "pearson") -> plt.Figure:
    """Correlation of slope with each property, grouped by algorithm, with bootstrap CIs."""
    d = corr[corr.method == method]
    props = list(dict.fromkeys(d.property))
    algos = sorted(d.algorithm.unique())
    width = 0.8 / max(len(algos), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(props) + 2, 3.4))
    for i, algo in enumerate(algos):
        a = d[d.algorithm == algo].set_index("property").reindex(props)
        err = np.vstack([a.r - a.ci_low, a.ci_high - a.r]).astype(float)
        ax.bar(np.arange(len(props)) + i * width, a.r, width, color=COLORS.get(algo),
               yerr=np.where(np.isfinite(err), err, 0), capsize=2, label=algo)
    ax.set_xticks(np.arange(len(props)) + width * (len(algos) - 1) / 2, props, rotation=30)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel(f"{method} r with scaling slope")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_property_scatter(slopes: pd.DataFrame, props: pd.DataFrame, columns: list[str]
                          ) -> plt.Figure:
    """Slope against each property, one point per task and algorithm, labelled."""
    merged = slopes[slopes.task != "mean"].merge(props, on="task")
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 3.2), squeeze=False)
    for ax, col in zip(axes.flat, columns):
        for algo, g in merged.groupby("algorithm"):
            ax.scatter(g[col], g.slope, color=COLORS.get(algo), s=14, label=algo)
            for _, row in g.iterrows():
                ax.annotate(_short(row.task), (row[col], row.slope), fontsize=6)
        ax.set_xlabel(col)
    axes.flat[0].set_ylabel("slope")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_subsets(table: pd.DataFrame, metric: str = "auc") -> plt.Figure:
    """Mean metric per (algorithm, size, data subset) for each modality subset: the modality
    comparison of :func:`biovfm_lib.analysis.scaling.subset_table`."""
    if table.empty:
        return _empty("no runs to compare")
    fig, ax = plt.subplots(figsize=(1.2 * len(table) + 3, 3.4))
    table.plot.bar(ax=ax, rot=0)
    ax.set_xticklabels(["\n".join(map(str, key)) for key in table.index], fontsize=8)
    ax.set_xlabel("")
    ax.set_ylabel(f"mean test {metric} ({table.attrs.get('n_tasks', '?')} tasks)")
    ax.legend(title="modality subset", fontsize=6, title_fontsize=7)
    fig.tight_layout()
    return fig

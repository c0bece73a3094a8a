"""The figures of notebooks 04_scaling and 05_task_properties.

Scaling figures draw one curve per source, algorithm, recipe, data subset, modality subset and
probe resolution, the same grouping the slope fits use, so a drawn line is always the fitted
one: colour says the algorithm, marker the recipe, subset and resolution, line style (and
hollow markers) the reference table. The resolution figure walks the fits' own resolution curves
(:func:`biovfm_lib.analysis.scaling.resolution_curves`) for the same reason.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from biovfm_lib.analysis.scaling import (
    MEAN_TASK,
    RECIPE,
    RESOLUTION,
    complete_labels,
    on_curve,
    resolution_curves,
    task_mean,
)

COLORS = {"dinov2": "tab:blue", "mae": "tab:orange"}
CURVE = ["source", "algorithm", RECIPE, "data_subset", "modality_subset", RESOLUTION]
MARKERS = "os^DvP<>"
HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]


def _short(task: str) -> str:
    return task.replace("mnist", "")


def _subset(data_subset: str, modality_subset: str) -> str:
    return f"{data_subset}/{modality_subset}"


def curve_label(source: str, algorithm: str, recipe: str, data_subset: str,
                modality_subset: str, resolution: str) -> str:
    """How figures and pickers name a curve: ``dinov2 study full/all 224 (reference)``."""
    return (f"{algorithm} {recipe} {_subset(data_subset, modality_subset)} {resolution} "
            f"({source})")


def checkpoint_labels(points: pd.DataFrame) -> pd.Series:
    """A name per point for the checkpoint it measures, so runs can be picked for comparison.

    A reference checkpoint is the study's model of one algorithm and size; a run's is also told
    apart by its probe run, since one checkpoint may be probed more than once.
    """
    points = complete_labels(points)
    base = (points["source"] + " · " + points["algorithm"] + " " + points["size"].fillna("")
            + " " + points[RECIPE] + " · " + points["data_subset"] + "/"
            + points["modality_subset"] + " · " + points[RESOLUTION])
    if "run_id" not in points:
        return base
    return base.where(points["run_id"].isna(), base + " · probe " + points["run_id"])


def _styles(df: pd.DataFrame) -> dict[tuple[str, str, str, str], str]:
    """One marker per (recipe, data subset, modality subset, resolution) present, in a stable
    order."""
    keys = sorted(set(zip(df[RECIPE], df["data_subset"], df["modality_subset"],
                          df[RESOLUTION])))
    return {key: MARKERS[i % len(MARKERS)] for i, key in enumerate(keys)}


def _size_axis(ax: plt.Axes, sizes: pd.Series) -> None:
    """A log x axis ticked at the sizes that were measured: decade ticks alone leave a few
    nearby sizes (or a single one) with no labelled tick at all."""
    ax.set_xscale("log")
    values = np.unique(sizes.dropna().to_numpy(dtype=float))
    labels, last = [], -np.inf
    for v in values:  # sizes closer than a factor 1.8 share a tick's room: label the first
        labels.append(f"{v:.3g}" if np.log10(v) - last > 0.25 else "")
        last = np.log10(v) if labels[-1] else last
    _fixed_ticks(ax, values, labels)


def _fixed_ticks(ax: plt.Axes, values: np.ndarray, labels: list[str]) -> None:
    """Ticks at ``values`` only, named ``labels``: a log axis's own ticks name none of them."""
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
    df = complete_labels(points[(points.metric == metric) & points[x].notna()])
    if df.empty:
        return _empty(f"no {metric} points with {x}")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    floor = _random_init(random_init, metric, x, df[RESOLUTION])
    for resolution, f in floor.groupby(RESOLUTION):
        mean = f.groupby(x).value.mean()
        ax.plot(mean.index, mean.values, "x:", color="grey",
                label=_floor_label(floor, resolution))
    markers = _styles(df)
    for (source, algo, *style), g in df.groupby(CURVE):
        mean = g.groupby(x).value.mean()
        ax.plot(mean.index, mean.values, marker=markers[tuple(style)],
                ls="-" if source == "runs" else "--", color=COLORS.get(algo),
                mfc=None if source == "runs" else "none",
                label=curve_label(source, algo, *style))
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
    df = complete_labels(points[(points.metric == metric) & points[x].notna()])
    floor = _random_init(random_init, metric, x, df[RESOLUTION])
    tasks = sorted(df.task.unique())
    if not tasks:
        return _empty(f"no {metric} points with {x}")
    fits = complete_labels(slopes[(slopes.fit == "power_law") & (slopes.metric == metric)
                                  & (slopes.axis == "model_size")]).set_index(["task", *CURVE])
    markers = _styles(df)
    cols = 4
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for (source, algo, *style), g in df[df.task == task].groupby(CURVE):
            g = g.sort_values(x)
            color = COLORS.get(algo)
            ax.plot(g[x], g.value, markers[tuple(style)], color=color, ms=4,
                    mfc=None if source == "runs" else "none",
                    label=curve_label(source, algo, *style))
            key = (task, source, algo, *style)
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
        for resolution, f in r.groupby(RESOLUTION):
            ax.plot(f[x], f.value, "x:", color="grey", ms=4,
                    label=_floor_label(floor, resolution))
        _size_axis(ax, pd.concat([df.loc[df.task == task, x], r[x]]))
        ax.set_title(_short(task), fontsize=9)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel(x)
    fig.tight_layout()
    return fig


def plot_resolution(points: pd.DataFrame, metric: str = "auc",
                    random_init: pd.DataFrame | None = None) -> plt.Figure:
    """Test ``metric`` against image size, one panel per task and one for the mean over tasks
    (:func:`~biovfm_lib.analysis.scaling.task_mean`), one line per resolution curve (one
    checkpoint at one encoder input size and fit), on a log2 axis ticked at the sizes probed;
    random initialisations of the curve's model size, at the same input and fit, as grey
    crosses, so the height above them is what pretraining adds at each resolution."""
    curves = list(resolution_curves(points[points.metric == metric]))
    if not curves:
        return _empty(f"no {metric} points with an image size")
    floors = _resolution_floors(random_init, metric, curves)
    sizes = np.unique(pd.concat([curve["img_size"] for _, curve in curves]).to_numpy(float))
    panels = [*sorted(set(pd.concat([curve["task"] for _, curve in curves]))), MEAN_TASK]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for ax, task in zip(axes.flat, panels):
        for i, (labels, curve) in enumerate(curves):
            line = _at_sizes(curve, task)
            ax.plot(line.index, line.values, marker=MARKERS[i % len(MARKERS)], ms=4,
                    color=COLORS.get(labels["algorithm"]), label=_resolution_label(labels))
        for floor in floors:
            line = _at_sizes(floor, task)
            ax.plot(line.index, line.values, "x:", color="grey", ms=4, label="random init")
        ax.set_xscale("log", base=2)
        _fixed_ticks(ax, sizes, [f"{v:.0f}" for v in sizes])
        ax.set_title("mean over tasks" if task == MEAN_TASK else _short(task), fontsize=9)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("image size (px)")
    fig.supylabel(f"test {metric}")
    fig.tight_layout()
    return fig


def _resolution_label(labels: dict) -> str:
    """A resolution curve's name: ``dinov2 base full/all 28, 64, 128, 224/pad224``."""
    return (f"{labels['algorithm']} {labels['size']} "
            f"{_subset(labels['data_subset'], labels['modality_subset'])} {labels[RESOLUTION]}")


def _at_sizes(frame: pd.DataFrame, task: str) -> pd.Series:
    """One task's value per image size (repeated probes averaged), or the mean over the tasks
    measured at every size for ``MEAN_TASK``."""
    if task == MEAN_TASK:
        return task_mean(frame, "img_size", by=()).set_index("img_size")["value"]
    return frame[frame.task == task].groupby("img_size")["value"].mean()


def _resolution_floors(random_init: pd.DataFrame | None, metric: str,
                       curves: list[tuple[dict, pd.DataFrame]]) -> list[pd.DataFrame]:
    """The random-initialisation rows of ``metric`` on each curve's input and fit at its model
    size; a floor already drawn in full (the native point that closes a pad and a resize
    curve alike) is not drawn again."""
    if random_init is None or "img_size" not in random_init:
        return []
    rows = random_init[random_init.metric == metric]
    floors, drawn = [], set()
    for labels, _ in curves:
        floor = rows[(rows["size"] == labels["size"])
                     & on_curve(rows, labels["input_size"], labels["input_fit"])]
        if not set(floor.index) <= drawn:
            floors.append(floor)
            drawn |= set(floor.index)
    return floors


def _random_init(random_init: pd.DataFrame | None, metric: str, x: str,
                 resolutions: pd.Series) -> pd.DataFrame:
    """The random-initialisation rows of ``metric`` placed on ``x`` (only the study's x is
    defined for an encoder that was never pretrained; none on another axis), at the
    ``resolutions`` drawn: a floor at another resolution is no floor of these curves."""
    if random_init is None or x not in random_init:
        return pd.DataFrame(columns=["task", "value", x, RESOLUTION])
    rows = complete_labels(random_init)
    rows = rows[(rows.metric == metric) & rows[x].notna() & rows[RESOLUTION].isin(resolutions)]
    return rows[["task", "value", x, RESOLUTION]]


def _floor_label(floor: pd.DataFrame, resolution: str) -> str:
    """``random init``, naming the resolution only where floors of several are drawn."""
    several = floor[RESOLUTION].nunique() > 1
    return f"random init {resolution}" if several else "random init"


def _empty(message: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.axis("off")
    return fig


def plot_slopes(slopes: pd.DataFrame, metric: str = "auc", fit: str = "power_law",
                axis: str = "model_size") -> plt.Figure:
    """Slope per task and curve (algorithm, recipe, data subset, modality subset, resolution)
    with its 95% CI, one panel per source; hatching tells the curves of one algorithm apart."""
    df = complete_labels(slopes[(slopes.metric == metric) & (slopes.fit == fit)
                                & (slopes.axis == axis)])
    sources = sorted(df.source.unique())
    if not sources:
        return _empty(f"no {fit} slopes of {metric}")
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 3.4), squeeze=False)
    for ax, source in zip(axes.flat, sources):
        d = df[df.source == source]
        tasks = sorted(d.task.unique(), key=lambda t: (t == "mean", t))
        curves = list(d.groupby(CURVE[1:], sort=True))
        subsets = sorted({key[1:] for key, _ in curves})
        width = 0.8 / max(len(curves), 1)
        for i, ((algo, recipe, data, modality, resolution), c) in enumerate(curves):
            a = c.set_index("task").reindex(tasks)
            err = np.vstack([a.slope - a.ci_low, a.ci_high - a.slope]).astype(float)
            ax.bar(np.arange(len(tasks)) + i * width, a.slope, width,
                   yerr=np.where(np.isfinite(err), err, 0), capsize=2, color=COLORS.get(algo),
                   hatch=HATCHES[subsets.index((recipe, data, modality, resolution))
                                 % len(HATCHES)], edgecolor="white",
                   label=f"{algo} {recipe} {_subset(data, modality)} {resolution}")
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

"""Scaling slopes: how much a probe metric improves as pretraining scales.

The study summarises each (algorithm, task) curve by one number, the slope of an OLS fit of
``log(metric)`` on ``log(x)`` (``x`` = total pretraining parameters, images seen, ...). Because
``log(k * y) = log(k) + log(y)``, that slope is the same whether the metric is a fraction or a
percentage: only the intercept moves by ``log(100)``. So callers need not normalise ``value``.

A log-log line cannot bend, yet AUCs saturate near 1. :func:`fit_saturating` fits the usual
error power law with a floor, ``1 - y = a * N**-b + c``, as a check on the study's summary;
its exponent ``b`` is reported in the same ``slope`` column (with a bootstrap CI), tagged
``fit="saturating"``. The two slopes have different meanings and signs (power-law slope > 0
when the metric grows; ``b`` > 0 when the error shrinks) and must not be compared directly.

Every curve holds its pretraining data fixed. Points carry ``data_subset`` (how much of the
pool: ``full``, ``f0.25``, ``n100000``) and ``modality_subset`` (which pool: ``all``,
``ct+mri``; see :mod:`biovfm_lib.analysis.inputs`), and the slope tables carry them too:

- model size (``axis = "model_size"``): one curve per (algorithm, data subset, modality
  subset), since pooling a 10% run of one size with a full run of another would mix data size
  into the model-size slope;
- data size (``axis = "data_size:<model size>"``): one curve per (algorithm, model size,
  modality subset), against the subset's image count; its ``data_subset`` lists the subsets
  the curve spans, smallest first (``"f0.25, f0.5, full"``);
- modality subsets are compared at equal algorithm, size and data subset by
  :func:`subset_table`, and DINOv2 against MAE within each subset by :func:`compare_algorithms`.

Every curve also holds its pretraining ``recipe`` fixed (``study``, ``dinov2_p14``): runs of
two recipes are two curves, never one fit. Points without a ``recipe`` column (a table from a
single source, such as the study's published numbers) form one recipe, labelled
``unrecorded``.

Every curve holds the probe's ``resolution`` fixed as well (``"224"``, ``"28/pad224"``; see
:func:`biovfm_lib.analysis.inputs.resolution_label`): one checkpoint probed at 28 and at 224 px
would otherwise be two points at one model size, and the gap between them would read as noise
in the model-size slope. Points without the column (tables built by hand) form one
resolution, ``unrecorded`` like the recipe. Resolution is an axis of its own in
:func:`resolution_slopes` (``axis = "resolution"``): one checkpoint at one encoder input size
(MedMNIST+'s protocol: smaller images zero-padded or resized to the input, so compute is held
fixed) against the image size; its ``resolution`` lists the sizes the curve spans
(``"28, 64, 128, 224/pad224"``).
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize

from biovfm_lib.analysis.inputs import UNKNOWN, UNRECORDED

SLOPE_COLUMNS = [
    "source", "algorithm", "task", "metric", "axis", "fit",
    "slope", "se", "ci_low", "ci_high", "p_value", "n_points",
    "data_subset", "modality_subset", "recipe", "resolution", "note",
]
FIT_COLUMNS = SLOPE_COLUMNS[6:12]  # what a fit returns, besides its note
SUBSET_COLUMNS = ["data_subset", "modality_subset"]
RECIPE = "recipe"
RESOLUTION = "resolution"
MEAN_TASK = "mean"
PAIRED = [*SUBSET_COLUMNS, RESOLUTION]  # what both algorithms of a comparison share
# One checkpoint at one encoder input size: a curve against the image size.
RESOLUTION_KEYS = ["algorithm", RECIPE, "size", *SUBSET_COLUMNS, "checkpoint", "input_size",
                   "metric"]
RESOLUTION_SLOPE_COLUMNS = [*SLOPE_COLUMNS, "size", "checkpoint"]


def complete_labels(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` with complete ``recipe`` and ``resolution`` labels (see the module notes), so
    grouping by them keeps every point and never pools two recipes or resolutions."""
    return points.assign(**{col: points[col].fillna(UNRECORDED) if col in points else UNRECORDED
                            for col in (RECIPE, RESOLUTION)})


def _nan_result(n_points: int, note: str, **extra: float) -> dict:
    """A fit that could not be made: NaNs and the reason, so tables keep one row per curve."""
    out = {k: np.nan for k in ("slope", "se", "ci_low", "ci_high", "p_value")}
    return {**out, "n_points": n_points, **extra, "note": note}


def _clean(x: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray, str]:
    """Keep finite points with x > 0 and y > 0 (both are logged), saying how many were dropped."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    dropped = int((~keep).sum())
    note = f"dropped {dropped} non-finite or non-positive point(s); " if dropped else ""
    return x[keep], y[keep], note


def fit_power_law(x: Iterable[float], y: Iterable[float], alpha: float = 0.05) -> dict:
    """The study's fit: OLS of ``log(y)`` on ``log(x)``.

    Returns ``slope, se, ci_low, ci_high, p_value`` (two-sided t test of slope = 0, CI at
    ``1 - alpha``), ``n_points, intercept, r2`` and a ``note``. Degenerate inputs give NaNs and
    a note instead of raising, so a whole table of curves can be fitted without special cases:
    fewer than 2 distinct x leave the slope undefined; exactly 2 points define the slope but
    leave no residual degrees of freedom, so se/CI/p are NaN.
    """
    x, y, note = _clean(x, y)
    n = len(x)
    if len(np.unique(x)) < 2:
        return _nan_result(n, note + "fewer than 2 distinct x values: slope undefined",
                           intercept=np.nan, r2=np.nan)
    res = sm.OLS(np.log(y), sm.add_constant(np.log(x))).fit()
    intercept, slope = (float(v) for v in res.params)
    if res.df_resid < 1:
        return {
            "slope": slope, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
            "n_points": n, "intercept": intercept, "r2": np.nan,
            "note": note + "2 points: slope exact, no residual df for se/CI/p-value",
        }
    ci_low, ci_high = (float(v) for v in res.conf_int(alpha)[1])
    return {
        "slope": slope, "se": float(res.bse[1]), "ci_low": ci_low, "ci_high": ci_high,
        "p_value": float(res.pvalues[1]), "n_points": n, "intercept": intercept,
        "r2": float(res.rsquared), "note": note.removesuffix("; "),
    }


def _error_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * n ** (-b) + c


def _error_law_jac(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Analytic Jacobian: about twice as fast as finite differences, which the bootstrap needs."""
    power = n ** (-b)
    return np.column_stack([power, -a * power * np.log(n), np.ones_like(n)])


def _fit_error_law(n: np.ndarray, err: np.ndarray) -> tuple[float, float, float]:
    """Bounded least squares for ``err = a * n**-b + c`` with ``a, b > 0``, ``0 <= c < min(err)``.

    ``n`` should be roughly of order 1 (the caller rescales), so that ``a`` and ``b`` stay well
    conditioned. The start point comes from a log-log line through ``err - c0``.
    """
    c_max = float(err.min())
    c0 = 0.5 * c_max
    b0, log_a0 = np.polyfit(np.log(n), np.log(err - c0), 1)
    p0 = [float(np.exp(log_a0)), float(np.clip(-b0, 1e-3, 10.0)), c0]
    bounds = ([1e-12, 1e-12, 0.0], [np.inf, np.inf, c_max])
    with warnings.catch_warnings():  # covariance warnings on tiny samples are expected
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        params, _ = optimize.curve_fit(_error_law, n, err, p0=p0, bounds=bounds, jac=_error_law_jac,
                                        maxfev=20_000)
    return float(params[0]), float(params[1]), float(params[2])


def fit_saturating(
    x: Iterable[float], y: Iterable[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Fit ``1 - y = a * x**-b + c`` (error decays as a power law towards a floor ``c``).

    ``y`` is a score in [0, 1]; if any value exceeds 1 the whole series is taken as percent and
    divided by 100 (unlike the log-log slope, this fit is not scale-invariant). ``slope`` is the
    exponent ``b``; its ``se`` and percentile CI come from a bootstrap over checkpoints
    (points resampled with replacement, refitted; failed or unidentifiable resamples -- fewer
    than 3 distinct x -- are skipped and ``n_boot_ok`` says how many succeeded). ``p_value`` is
    NaN: no test is made. Needs at least 4 points (3 parameters plus one residual df).
    """
    x, y, note = _clean(x, y)
    y = y / 100.0 if (y > 1).any() else y
    err = 1.0 - y
    n = len(x)
    extra = {"a": np.nan, "c": np.nan, "n_boot_ok": 0}
    if n < 4 or len(np.unique(x)) < 3:
        return _nan_result(n, note + "saturating fit needs >= 4 points at >= 3 distinct x", **extra)
    if (err <= 0).any():
        return _nan_result(n, note + "a score of 1 leaves no room for an error floor", **extra)
    scale = float(np.exp(np.log(x).mean()))  # fit on x / geometric mean for conditioning
    try:
        a, b, c = _fit_error_law(x / scale, err)
    except (RuntimeError, ValueError) as exc:
        return _nan_result(n, note + f"saturating fit failed: {exc}", **extra)

    rng = np.random.default_rng(seed)
    cache: dict[tuple[int, ...], float] = {}  # few distinct resamples exist for 4-6 points
    boot = []
    for _ in range(n_boot):
        idx = np.sort(rng.integers(0, n, n))
        key = tuple(idx.tolist())
        if key not in cache:
            cache[key] = np.nan
            if len(np.unique(x[idx])) >= 3:
                try:
                    cache[key] = _fit_error_law(x[idx] / scale, err[idx])[1]
                except (RuntimeError, ValueError):
                    pass
        boot.append(cache[key])
    boot_b = np.asarray(boot)[np.isfinite(boot)]
    if len(boot_b) >= 2:
        se = float(boot_b.std(ddof=1))
        ci_low, ci_high = (float(v) for v in np.quantile(boot_b, [alpha / 2, 1 - alpha / 2]))
    else:
        se = ci_low = ci_high = np.nan
    note += f"bootstrap: {len(boot_b)}/{n_boot} resamples fitted"
    return {
        "slope": b, "se": se, "ci_low": ci_low, "ci_high": ci_high, "p_value": np.nan,
        "n_points": n, "a": a * scale**b, "c": c, "n_boot_ok": len(boot_b), "note": note,
    }


def task_mean(points: pd.DataFrame, x: str, by: Sequence[str] = ("algorithm", "metric")
              ) -> pd.DataFrame:
    """Mean ``value`` per (``by``, x) over the tasks measured at *every* (``by``, x) cell.

    Restricting to complete tasks keeps the mean curve from jumping when a task is missing at
    one size. Repeated points for one task and x (seeds) are averaged first. Returns columns
    ``by + [x, "value", "n_tasks"]``; empty if no task is complete.
    """
    by = list(by)
    per_task = points.groupby([*by, "task", x], as_index=False)["value"].mean()
    n_cells = len(per_task[[*by, x]].drop_duplicates())
    counts = per_task.groupby("task").size()
    complete = counts.index[counts == n_cells]
    kept = per_task[per_task["task"].isin(complete)]
    out = kept.groupby([*by, x], as_index=False)["value"].mean()
    return out.assign(n_tasks=len(complete))


def _usable(points: pd.DataFrame, x: str, metrics: Sequence[str] | None) -> pd.DataFrame:
    """Rows that can enter a fit: the chosen metrics, with both x and value present.

    The subset labels must be complete: grouping would silently drop a point whose label is
    missing, and pooling it with a guessed subset would mix what the fits hold fixed.
    """
    missing = {"algorithm", "task", "metric", "value", x, *SUBSET_COLUMNS} - set(points.columns)
    if missing:
        raise KeyError(f"points lack column(s) {sorted(missing)}")
    df = points if metrics is None else points[points["metric"].isin(list(metrics))]
    df = df.dropna(subset=[x, "value"])
    if df[SUBSET_COLUMNS].isna().any().any():
        raise ValueError(f"points without a {' or '.join(SUBSET_COLUMNS)} label")
    return complete_labels(df)


def _fit_rows(group: pd.DataFrame, x: str, labels: dict, n_boot: int) -> list[dict]:
    """Both fits of each task's curve and of the task mean; ``labels`` name the group."""
    curves = [(task, g[x], g["value"], "") for task, g in group.groupby("task", sort=True)]
    mean = task_mean(group, x)
    n_tasks = int(mean["n_tasks"].iloc[0]) if len(mean) else 0
    curves.append((MEAN_TASK, mean[x], mean["value"], f"mean over {n_tasks} task(s)"))
    rows = []
    for task, xs, ys, prefix in curves:
        fits = {
            "power_law": fit_power_law(xs, ys),
            "saturating": fit_saturating(xs, ys, n_boot=n_boot),
        }
        for fit, res in fits.items():
            note = "; ".join(s for s in (prefix, res["note"]) if s)
            rows.append({**labels, "task": task, "fit": fit,
                         **{k: res[k] for k in FIT_COLUMNS}, "note": note})
    return rows


def scaling_slopes(
    points: pd.DataFrame,
    x: str = "params_total_m",
    axis: str = "model_size",
    metrics: Sequence[str] | None = None,
    source: str = "runs",
    n_boot: int = 1000,
) -> pd.DataFrame:
    """One row per (algorithm, recipe, data subset, modality subset, resolution, task, metric,
    fit) with ``fit`` in {"power_law", "saturating"}.

    ``points`` is tidy (``algorithm, task, metric, value, data_subset, modality_subset`` and
    the ``x`` column); rows missing x or value (e.g. BiomedCLIP, which has no size) are
    ignored. Task ``"mean"`` is the fit to the mean over tasks present at every x of its curve
    (see :func:`task_mean`). ``source`` and ``axis`` are labels copied into the table so
    slopes from runs and from the paper can be stacked.
    """
    df = _usable(points, x, metrics)
    rows = []
    keys = ["algorithm", RECIPE, *SUBSET_COLUMNS, RESOLUTION, "metric"]
    for values, group in df.groupby(keys, sort=True):
        labels = {"source": source, "axis": axis, **dict(zip(keys, values))}
        rows += _fit_rows(group, x, labels, n_boot)
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def _interaction_test(
    log_x: np.ndarray, log_y: np.ndarray, is_a: np.ndarray, alpha: float
) -> dict:
    """OLS ``log y ~ log x * is_a``: the interaction coefficient is ``slope_a - slope_b``."""
    design = np.column_stack([np.ones_like(log_x), log_x, is_a, log_x * is_a])
    res = sm.OLS(log_y, design).fit()
    ci_low, ci_high = (float(v) for v in res.conf_int(alpha)[3])
    return {
        "slope_b": float(res.params[1]), "slope_a": float(res.params[1] + res.params[3]),
        "diff": float(res.params[3]), "se": float(res.bse[3]), "ci_low": ci_low,
        "ci_high": ci_high, "p_value": float(res.pvalues[3]),
    }


def compare_algorithms(
    points: pd.DataFrame,
    x: str = "params_total_m",
    a: str = "dinov2",
    b: str = "mae",
    metric: str = "auc",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Do algorithms ``a`` and ``b`` scale at different rates? One row per data subset,
    modality subset, resolution, pair of recipes (``recipe_a``, ``recipe_b``) and shared task,
    plus the mean.

    Both algorithms are compared on the same pretraining subset and probe resolution only: one
    that either of them lacks gives no rows. Each algorithm's curve holds one recipe. Pools
    both curves in one OLS of ``log y`` on ``log x``, an indicator for ``a`` and their
    interaction; the interaction is ``diff = slope_a - slope_b``, reported with its se, CI and
    t-test p-value. Pooling assumes a common residual variance for the two curves, and with 4
    sizes per algorithm leaves only 4 residual df, so the test has little power: a large p
    means "not shown to differ", not "equal". The mean compares both algorithms over the same
    tasks (those present at every x for both).
    """
    columns = ["task", "metric", *SUBSET_COLUMNS, RESOLUTION, "a", "b", "recipe_a", "recipe_b",
               "slope_a", "slope_b", "diff", "se", "ci_low", "ci_high", "p_value", "n_points",
               "note"]
    df = _usable(points, x, [metric])
    rows = []
    for held, recipes, pair in _recipe_pairs(df[df["algorithm"].isin([a, b])], a, b):
        tasks = {algo: set(pair.loc[pair["algorithm"] == algo, "task"]) for algo in (a, b)}
        if not (tasks[a] and tasks[b]):
            continue
        curves = [(task, pair[pair["task"] == task], "") for task in sorted(tasks[a] & tasks[b])]
        mean = task_mean(pair, x)
        n_tasks = int(mean["n_tasks"].iloc[0]) if len(mean) else 0
        curves.append((MEAN_TASK, mean, f"mean over {n_tasks} task(s)"))
        for task, g, note in curves:
            row = {"task": task, "metric": metric, **dict(zip(PAIRED, held)), "a": a, "b": b,
                   **dict(zip(("recipe_a", "recipe_b"), recipes)), "n_points": len(g)}
            ok = all(g.loc[g["algorithm"] == algo, x].nunique() >= 2 for algo in (a, b))
            positive = bool((g[x] > 0).all() and (g["value"] > 0).all())
            if ok and positive and len(g) > 4:
                row |= _interaction_test(np.log(g[x].to_numpy(float)),
                                         np.log(g["value"].to_numpy(float)),
                                         (g["algorithm"] == a).to_numpy(float), alpha)
            else:
                why = "needs >= 2 distinct x per algorithm, > 4 points and positive x and values"
                note = "; ".join(s for s in (note, why) if s)
            rows.append(row | {"note": note})
    return pd.DataFrame(rows, columns=columns)


def _recipe_pairs(df: pd.DataFrame, a: str, b: str
                  ) -> Iterator[tuple[tuple, tuple[str, str], pd.DataFrame]]:
    """``(subset and resolution labels, (recipe of a, recipe of b), points)`` for every subset
    and resolution and every pair of the two algorithms' recipes in it: one recipe per
    algorithm in each comparison."""
    for held, in_subset in df.groupby(PAIRED, sort=True):
        recipes = {algo: sorted(set(in_subset.loc[in_subset["algorithm"] == algo, RECIPE]))
                   for algo in (a, b)}
        for ra, rb in itertools.product(recipes[a], recipes[b]):
            keep = (((in_subset["algorithm"] == a) & (in_subset[RECIPE] == ra))
                    | ((in_subset["algorithm"] == b) & (in_subset[RECIPE] == rb)))
            yield held, (ra, rb), in_subset[keep]


def data_scaling_slopes(points: pd.DataFrame, metrics: Sequence[str] | None = None,
                        source: str = "runs", n_boot: int = 1000,
                        x: str = "n_train_images") -> pd.DataFrame:
    """Slopes against data size, one (algorithm, recipe, model size, modality subset,
    resolution) at a time.

    Mixing model sizes or modality pools would confound them with data size, so each gets its
    own fits, labelled ``axis = "data_size:<size>"``; its ``data_subset`` lists the subsets
    along the curve. Data size is the subset's image count (``n_train_images``), not images
    seen: runs of a fixed step budget see as many images from a 10% subset as from the full
    one. A curve with a single data size reports why it has no slope.
    """
    df = _usable(points, x, metrics).dropna(subset=["size"])
    rows = []
    keys = ["algorithm", RECIPE, "size", "modality_subset", RESOLUTION, "metric"]
    for values, group in df.groupby(keys, sort=True):
        labels = dict(zip(keys, values))
        spanned = group.groupby("data_subset")[x].median().sort_values().index
        rows += _fit_rows(group, x, {
            "source": source, "algorithm": labels["algorithm"], RECIPE: labels[RECIPE],
            RESOLUTION: labels[RESOLUTION], "metric": labels["metric"],
            "axis": f"data_size:{labels['size']}", "data_subset": ", ".join(spanned),
            "modality_subset": labels["modality_subset"]}, n_boot)
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def on_curve(points: pd.DataFrame, input_size: float, input_fit: str) -> pd.Series:
    """Which ``points`` lie on the resolution curve of encoder input ``input_size`` brought
    there by ``input_fit``: those fitted to it that way, and those probed at their own size,
    which no fit touched and so belong to every fit's curve (the 224 px end of a pad224 curve
    and of a resize224 one alike)."""
    native = points["img_size"] == points["input_size"]
    fitted = points["input_fit"].fillna(UNKNOWN) == input_fit
    return (points["input_size"] == input_size) & (native | fitted)


def resolution_span(img_sizes: Iterable[float], input_size: float, input_fit: str) -> str:
    """How a resolution curve is named: the image sizes it spans, smallest first, and the
    input they were brought to (``"28, 64, 128, 224/pad224"``); a curve of native points
    alone is just its size, as :func:`~biovfm_lib.analysis.inputs.resolution_label` says."""
    spanned = ", ".join(f"{int(v)}" for v in sorted(set(img_sizes)))
    return f"{spanned}/{input_fit}{int(input_size)}" if input_fit else spanned


def resolution_curves(points: pd.DataFrame) -> Iterator[tuple[dict, pd.DataFrame]]:
    """``(labels, points)`` per curve of metric against image size: one checkpoint
    (:data:`RESOLUTION_KEYS`) at one encoder input size, one per way smaller images were
    brought to it (:func:`on_curve`). ``labels`` holds the keys, ``input_fit`` ("" for a curve
    of native points only) and ``resolution``, the curve's :func:`resolution_span`. Fits and
    figures both walk these, so a drawn line is always a fitted one."""
    missing = {*RESOLUTION_KEYS, "img_size", "input_fit", "task", "value"} - set(points.columns)
    if missing:
        raise KeyError(f"points lack column(s) {sorted(missing)}")
    df = complete_labels(points).dropna(subset=["img_size", "input_size", "value"])
    for values, group in df.groupby(RESOLUTION_KEYS, sort=True, dropna=False):
        labels = dict(zip(RESOLUTION_KEYS, values))
        native = group["img_size"] == group["input_size"]
        fits = sorted(set(group.loc[~native, "input_fit"].fillna(UNKNOWN))) or [""]
        for fit in fits:
            curve = group[on_curve(group, labels["input_size"], fit)]
            span = resolution_span(curve["img_size"], labels["input_size"], fit)
            yield {**labels, "input_fit": fit, RESOLUTION: span}, curve


def resolution_points(points: pd.DataFrame) -> pd.DataFrame:
    """The ``points`` on some resolution curve (:func:`resolution_curves`) that spans at least
    two image sizes: checkpoints probed at one resolution, as every model-size run is, have no
    resolution slope to give."""
    kept = [curve.index for _, curve in resolution_curves(points)
            if curve["img_size"].nunique() >= 2]
    return points.loc[np.unique(np.concatenate(kept))] if kept else points.iloc[:0]


def resolution_slopes(points: pd.DataFrame, metrics: Sequence[str] | None = None,
                      source: str = "runs", n_boot: int = 1000) -> pd.DataFrame:
    """Slopes of each metric against the image size (``img_size``), one checkpoint at one
    encoder input size and fit at a time (:func:`resolution_curves`), labelled ``axis =
    "resolution"``; with compute held fixed, the slope says what the information in the pixels
    is worth to a task. Columns: :data:`RESOLUTION_SLOPE_COLUMNS`, the checkpoint's ``size``
    and path after the slope table's own. A curve with a single image size reports why it has
    no slope, as a data-size curve with a single subset does."""
    df = points if metrics is None else points[points["metric"].isin(list(metrics))]
    rows = []
    for labels, curve in resolution_curves(df):
        rows += _fit_rows(curve, "img_size", {
            "source": source, "axis": "resolution",
            **{k: labels[k] for k in ("algorithm", RECIPE, *SUBSET_COLUMNS, RESOLUTION, "metric",
                                      "size", "checkpoint")}}, n_boot)
    return pd.DataFrame(rows, columns=RESOLUTION_SLOPE_COLUMNS)


def subset_table(points: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Mean test metric per algorithm, model size and data subset (rows) and modality subset
    (columns): the study's modality comparison, with everything else held fixed.

    Every cell averages the same tasks (those measured in every cell, see :func:`task_mean`),
    so a run probed on fewer tasks cannot look better or worse for it; their number is in
    ``table.attrs["n_tasks"]``. Points that carry a ``recipe`` add it to the rows, and so do
    points of several resolutions, so two recipes or resolutions are never averaged into one
    cell.
    """
    several = RESOLUTION in points and points[RESOLUTION].nunique(dropna=False) > 1
    keys = ["algorithm", *([RECIPE] if RECIPE in points else []),
            *([RESOLUTION] if several else []), "size", "data_subset"]
    points = complete_labels(points)
    mean = task_mean(points[points["metric"] == metric], "modality_subset", by=keys)
    table = mean.pivot_table(index=keys, columns="modality_subset", values="value")
    table.attrs["n_tasks"] = int(mean["n_tasks"].iloc[0]) if len(mean) else 0
    return table


def gain_over_random(points: pd.DataFrame, random_init: pd.DataFrame, metric: str = "auc"
                     ) -> pd.DataFrame:
    """Mean test ``metric`` of each checkpoint group (algorithm, size, data and modality
    subset, probe resolution) beside the random initialisation of its size probed at its
    resolution, over the tasks both were probed on: a scaling slope says nothing about whether
    pretraining helped at all, this table does. Groups whose size and resolution have no
    random-initialisation run are left out."""
    keys = ["algorithm", *[col for col in (RECIPE, RESOLUTION) if col in points], "size",
            "data_subset", "modality_subset"]
    points, random_init = complete_labels(points), complete_labels(random_init)
    runs_ = points[(points["source"] == "runs") & (points["metric"] == metric)]
    floor = random_init[random_init["metric"] == metric]
    rows = []
    for key, g in runs_.groupby(keys, dropna=False):
        group = dict(zip(keys, key))
        at = (floor["size"] == group["size"]) & (floor[RESOLUTION] == g[RESOLUTION].iloc[0])
        base = floor[at].set_index("task")["value"]
        per_task = g.groupby("task")["value"].mean()
        tasks = per_task.index.intersection(base.index)
        if len(tasks):
            rows.append({**group, "n_tasks": len(tasks), "pretrained": per_task[tasks].mean(),
                         "random_init": base[tasks].mean()})
    table = pd.DataFrame(rows, columns=[*keys, "n_tasks", "pretrained", "random_init"])
    return table.assign(gain=table["pretrained"] - table["random_init"])

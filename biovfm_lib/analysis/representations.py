"""Linear CKA between checkpoints' representations, block by block (notebooks/06_representations).

Scaling slopes say *how much* a bigger DINOv2 or MAE gains; they do not say *where* in depth
two encoders come to represent images differently. Centred kernel alignment (CKA) compares two
representations of the same images: ``X`` (n x p) and ``Y`` (n x q), any widths. With linear
kernels ``K = X X^T`` and ``L = Y Y^T``

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L)),

which is 1 for one representation against itself and unchanged under orthogonal transforms
and isotropic scaling of either side (Kornblith et al., 2019). Two estimators of HSIC:

- ``biased``: Kornblith et al.'s, ``tr(K_c L_c)`` on centred Gram matrices, i.e.
  ``||Y_c^T X_c||_F^2``. It is inflated when the width approaches the number of images:
  independent random features of width 200 on 50 images score far above 0.
- ``debiased`` (the default): Song et al. (2012)'s unbiased HSIC estimator, which is what
  Nguyen et al. (2021) call debiased CKA. Independent representations score near 0 at any
  width, so a low value means different, not merely under-sampled; it may be slightly
  negative, and needs at least 4 images.

Both need one costly term per block pair, ``tr(KL)``: ``n^2`` from Gram matrices, against
``n * p * q`` as ``||X^T Y||_F^2`` from the features, so every block's Gram matrix is formed
once (``n^2 * width``) and kept when the sample is at most :data:`GRAM_ROWS` images (32 MB a
block) or no wider than the features; larger samples of narrow features stay in feature
space. With centred features ``K 1 = 0``, which reduces the unbiased estimator to

    [tr(KL) - d_K.d_L (1 + 2/(n-2)) + sum(d_K) sum(d_L) / ((n-1)(n-2))] / (n (n-3)),

``d`` being the Gram diagonal (squared row norms). The unbiased estimator is translation
invariant, so centring first changes nothing but rounding; ``tests/test_representations.py``
holds it against Song et al.'s formula on uncentred Gram matrices.

Every pair of checkpoints is compared on the same images: a fixed sample of each task's test
split (:func:`sample_rows`, drawn once per task from the seed), whose size is the ``n`` of
every row of the table. ``layer`` numbers blocks from 0, as the probe's results do; depth
curves compare blocks at the same *relative* depth ``(layer + 1) / blocks``, so encoders of
different depths line up at their last block.
"""
from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from biovfm_lib.analysis.inputs import (
    corpus_subsets,
    probe_points,
    recipe_of,
    sidecar,
    subset_labels,
)
from biovfm_lib.params import MedMNISTTaskParams, ProbeParams, RepresentationsParams
from biovfm_lib.runs import resolve

Estimator = Literal["debiased", "biased"]
CKA_COLUMNS = ["checkpoint_a", "checkpoint_b", "layer_a", "layer_b", "task", "cka", "n"]
CURVE_COLUMNS = ["checkpoint_a", "checkpoint_b", "task", "depth", "layer_a", "layer_b", "cka"]
PAIR_KINDS = {"mae_vs_dinov2": "MAE vs DINOv2 of the same size",
              "small_vs_large": "smallest vs largest size of one algorithm"}
# samples up to this many images keep each block's Gram matrix (float64: 32 MB at 2048)
GRAM_ROWS = 2048
# what must match for two checkpoints to be a like-for-like pair (as the scaling fits hold fixed)
SAME_DATA = ["data_subset", "modality_subset"]


# --------------------------------------------------------------------------- the estimators
@dataclass(frozen=True)
class Prepared:
    """One representation, centred and scaled once, with what every pair needs from it."""

    x: np.ndarray  # centred features, float64, unit Frobenius norm
    gram: np.ndarray | None  # x @ x.T, kept for samples up to GRAM_ROWS (or n <= width)
    diag: np.ndarray  # the Gram diagonal: squared row norms

    @property
    def n(self) -> int:
        return len(self.x)


def prepare(features: np.ndarray) -> Prepared:
    """Centre (and scale to unit norm, which CKA ignores but float arithmetic likes) once, so
    a layer compared with many others is not re-centred for each."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a matrix (images x width), got shape {x.shape}")
    x = x - x.mean(axis=0)
    norm = np.linalg.norm(x)
    if norm > 0:
        x = x / norm
    gram = x @ x.T if len(x) <= max(GRAM_ROWS, x.shape[1]) else None
    return Prepared(x, gram, np.einsum("ij,ij->i", x, x))


def _trace_product(a: Prepared, b: Prepared) -> float:
    """``tr(K_a K_b)`` of the centred linear kernels, in whichever space is cheaper."""
    if a.gram is not None and b.gram is not None:
        return float(np.einsum("ij,ij->", a.gram, b.gram))
    return float(np.linalg.norm(a.x.T @ b.x) ** 2)


def _hsic(a: Prepared, b: Prepared, trace: float, estimator: Estimator) -> float:
    n = a.n
    if estimator == "biased":
        return trace / (n - 1) ** 2
    dd = float(a.diag @ b.diag)
    return (trace - dd * (1 + 2 / (n - 2)) + a.diag.sum() * b.diag.sum() / ((n - 1) * (n - 2))
            ) / (n * (n - 3))


def _cka(a: Prepared, b: Prepared, self_a: float, self_b: float, estimator: Estimator) -> float:
    denominator = self_a * self_b
    if not denominator > 0:  # a constant representation (or too few images): undefined
        return float("nan")
    return _hsic(a, b, _trace_product(a, b), estimator) / float(np.sqrt(denominator))


def _self_hsic(a: Prepared, estimator: Estimator) -> float:
    return _hsic(a, a, _trace_product(a, a), estimator)


def _check(n_a: int, n_b: int, estimator: Estimator) -> None:
    if n_a != n_b:
        raise ValueError(f"CKA compares representations of the same images: {n_a} rows "
                         f"against {n_b}")
    if estimator not in ("debiased", "biased"):
        raise ValueError(f"estimator must be 'debiased' or 'biased', got {estimator!r}")
    if n_a < (4 if estimator == "debiased" else 2):
        raise ValueError(f"{estimator} CKA needs at least {4 if estimator == 'debiased' else 2} "
                         f"images, got {n_a}")


def linear_cka(x: np.ndarray, y: np.ndarray, estimator: Estimator = "debiased") -> float:
    """Linear CKA of two representations of the same images (rows), any widths."""
    _check(len(x), len(y), estimator)
    a, b = prepare(x), prepare(y)
    return _cka(a, b, _self_hsic(a, estimator), _self_hsic(b, estimator), estimator)


Blocks = dict[int, tuple[Prepared, float]]  # per block: prepared features, self-HSIC


def prepare_blocks(features: Mapping[int, np.ndarray], estimator: Estimator = "debiased"
                   ) -> Blocks:
    """Every block of one encoder prepared and self-compared once, however many encoders it
    is then compared with (its Gram matrix is the ``n^2 * width`` part of the cost)."""
    blocks = {}
    for layer, f in sorted(features.items()):
        prepared = prepare(f)
        _check(prepared.n, prepared.n, estimator)
        blocks[layer] = (prepared, _self_hsic(prepared, estimator))
    return blocks


def cka_matrix(features_a: Mapping[int, np.ndarray], features_b: Mapping[int, np.ndarray],
               estimator: Estimator = "debiased") -> pd.DataFrame:
    """CKA of every block of one encoder against every block of another (rows ``layer_a``,
    columns ``layer_b``)."""
    return _matrix(prepare_blocks(features_a, estimator), prepare_blocks(features_b, estimator),
                   estimator)


def _matrix(a: Blocks, b: Blocks, estimator: Estimator) -> pd.DataFrame:
    for (pa, _), (pb, _) in itertools.product(a.values(), b.values()):
        _check(pa.n, pb.n, estimator)
    values = [[_cka(pa, pb, sa, sb, estimator) for pb, sb in b.values()]
              for pa, sa in a.values()]
    return pd.DataFrame(values, index=pd.Index(list(a), name="layer_a"),
                        columns=pd.Index(list(b), name="layer_b"))


# --------------------------------------------------------------------------- the table
def sample_rows(n_rows: int, sample: int, seed: int, task: str) -> np.ndarray:
    """The fixed test images of one task, ascending: ``sample`` of ``n_rows`` (all if fewer),
    drawn from ``seed`` and the task's name, so every checkpoint and every rerun compares the
    same images, whatever the order of the tasks."""
    if sample >= n_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    return np.sort(rng.choice(n_rows, size=sample, replace=False))


def cka_table(features: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]],
              pairs: Sequence[tuple[str, str]] | None = None,
              estimator: Estimator = "debiased") -> pd.DataFrame:
    """The tidy table of ``cka.parquet``: one row per checkpoint pair, block pair and task.

    ``features`` is ``{checkpoint: {task: {layer: sampled features}}}``; ``pairs`` default to
    every unordered pair of distinct checkpoints, in the order given. A task is compared only
    where both checkpoints have it; ``n`` is the number of images compared.
    """
    if pairs is None:
        pairs = list(itertools.combinations(list(features), 2))
    frames = []
    for task in dict.fromkeys(t for blocks in features.values() for t in blocks):
        here = [(a, b) for a, b in pairs if task in features[a] and task in features[b]]
        # each checkpoint's blocks prepared once per task, then compared with every partner
        prepared = {c: prepare_blocks(features[c][task], estimator)
                    for c in dict.fromkeys(c for pair in here for c in pair)}
        for ck_a, ck_b in here:
            matrix = _matrix(prepared[ck_a], prepared[ck_b], estimator)
            long = matrix.stack().rename("cka").reset_index()
            n = next(iter(prepared[ck_a].values()))[0].n
            frames.append(long.assign(checkpoint_a=ck_a, checkpoint_b=ck_b, task=task, n=n))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            CKA_COLUMNS, [str, str, int, int, str, float, int])})
    table = pd.concat(frames, ignore_index=True)[CKA_COLUMNS]
    return table.astype({"layer_a": int, "layer_b": int, "cka": float, "n": int})


# --------------------------------------------------------------------------- the inputs
CHECKPOINT_COLUMNS = ["checkpoint", "label", "algorithm", "recipe", "size", "data_subset",
                      "modality_subset", "run_id"]


def checkpoint_table(run_ids: Sequence[str] = (), checkpoints: Sequence[str] = ()
                     ) -> pd.DataFrame:
    """The checkpoints to compare, one row each with what its sidecar says, in a stable order.

    Those of the 03_probe runs ``run_ids`` (all completed runs of exported checkpoints when
    both arguments are empty; random initialisations have no checkpoint and are left out),
    then the explicit ``checkpoints`` (paths as the probe resolves them, so a checkpoint named
    both ways is one row). ``label`` names a checkpoint in figures: algorithm and size, with
    its data subset when it is not the whole corpus.
    """
    rows: dict[str, dict] = {}
    if run_ids or not checkpoints:
        points = probe_points(run_ids=list(run_ids) or None)
        for r in points.drop_duplicates("checkpoint").itertuples(index=False):
            rows[r.checkpoint] = {"checkpoint": r.checkpoint, "algorithm": r.algorithm,
                                  "recipe": r.recipe, "size": r.size,
                                  "data_subset": r.data_subset,
                                  "modality_subset": r.modality_subset, "run_id": r.run_id}
    for given in checkpoints:
        path = str(resolve(given))
        meta = sidecar(path)
        record = meta.get("data_subset")
        named = corpus_subsets(record) if record else {}
        data, modality = (subset_labels(record, list(named.values()))
                          if None not in named.values() else ("unknown", "unknown"))
        rows.setdefault(path, {"checkpoint": path, "algorithm": meta.get("algorithm"),
                               "recipe": recipe_of(meta) if meta else None,
                               "size": meta.get("size"), "data_subset": data,
                               "modality_subset": modality, "run_id": None})
    table = pd.DataFrame(list(rows.values()), columns=CHECKPOINT_COLUMNS)
    labels = [_label(r) for r in table.itertuples(index=False)]
    repeated = {label for label in labels if labels.count(label) > 1}
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # two checkpoints of one description: numbered
        if label in repeated:
            seen[label] = seen.get(label, 0) + 1
            labels[i] = f"{label} #{seen[label]}"
    table["label"] = pd.Series(labels, dtype=object)
    return table


def _label(r) -> str:
    if not r.algorithm:
        return Path(r.checkpoint).parent.name or Path(r.checkpoint).stem
    subset = "" if (r.data_subset, r.modality_subset) == ("full", "all") else \
        f" {r.data_subset}/{r.modality_subset}"
    return f"{r.algorithm} {r.size}{subset}"


def sampled_features(p: RepresentationsParams, checkpoints: Sequence[str]
                     ) -> tuple[dict[str, dict[str, dict[int, np.ndarray]]], dict[str, int], str]:
    """Each checkpoint's features of each block on each task's fixed test sample, from the
    probe's feature cache (the full test split, extracted in one forward pass where missing,
    then cached, so a later probe with ``layers: all`` finds them), and each checkpoint's
    block count, and whether the data were ``real`` or ``synthetic``.

    Tasks are the outer loop, so one task's images are in memory at a time; every encoder is
    loaded once and visits the device only for its own extraction.
    """
    # torch and timm only where features are extracted: the tables and figures need neither
    from biovfm_lib.data.medmnist import load_task
    from biovfm_lib.probe.features import FeatureCache, block_count
    from biovfm_lib.probe.layers import layer_features, probed_layers
    from biovfm_lib.probe.pipeline import build_encoder, prepare_data, resolve_device

    probe = {c: probe_params(p, c) for c in checkpoints}
    if not probe:
        return {}, {}, "none"
    root = prepare_data(next(iter(probe.values())))
    device = resolve_device(p.device)
    cache = FeatureCache(resolve(p.cache_dir))
    encoders = {c: build_encoder(probe[c]) for c in checkpoints}
    n_blocks = {c: block_count(enc.model) for c, (enc, _) in encoders.items()}
    layers = {c: probed_layers(p.layers, n) for c, n in n_blocks.items()}
    out: dict[str, dict[str, dict[int, np.ndarray]]] = {c: {} for c in checkpoints}
    synthetic = []
    for flag in p.tasks:
        data = load_task(flag, root, p.size, splits=("test",))  # a 224 px train split: GBs
        synthetic.append(data.synthetic)
        rows = sample_rows(len(data.images["test"]), p.sample, p.seed, flag)
        for c, (enc, identity) in encoders.items():
            enc.model.to(device)
            full = layer_features(enc, identity, data, "test", probe[c], device, cache,
                                  layers[c])
            enc.model.to("cpu")
            out[c][flag] = {layer: feats[rows] for layer, feats in full.items()}
    return out, n_blocks, "synthetic" if any(synthetic) else "real"


def probe_params(p: RepresentationsParams, checkpoint: str) -> ProbeParams:
    """The probe's parameters for ``checkpoint`` with this notebook's data and feature, so
    both key the feature cache alike (``protocol: cached``: eval-mode features, no drop path
    installed)."""
    shared = [*MedMNISTTaskParams.model_fields, "features", "device", "precision",
              "extract_batch_size", "cache_dir"]
    return ProbeParams.validate_mapping({**{k: getattr(p, k) for k in shared},
                                         "checkpoint": checkpoint, "protocol": "cached"})


# --------------------------------------------------------------------------- which pairs
def highlighted_pairs(checkpoints: pd.DataFrame, size_order: Sequence[str]
                      ) -> dict[str, list[tuple[str, str]]]:
    """The pairs the study's question is about, by kind (:data:`PAIR_KINDS`), each like for
    like in pretraining data (and, within one algorithm, recipe):

    - ``mae_vs_dinov2``: at each size where both exist, the MAE checkpoint against DINOv2's;
    - ``small_vs_large``: per algorithm, its smallest against its largest size.

    ``checkpoints`` has a row per checkpoint (``checkpoint, algorithm, recipe, size,
    data_subset, modality_subset``); ``size_order`` ranks sizes, smallest first. Where several
    checkpoints fit one slot, the first listed is used. A kind with no pair maps to [].
    """
    known = checkpoints[checkpoints["algorithm"].notna() & checkpoints["size"].isin(size_order)]
    rank = {s: i for i, s in enumerate(size_order)}
    found: dict[str, list[tuple[str, str]]] = {kind: [] for kind in PAIR_KINDS}
    for _, group in known.groupby(SAME_DATA + ["size"], sort=False, dropna=False):
        by_algorithm = group.groupby("algorithm").checkpoint.first()
        if {"mae", "dinov2"} <= set(by_algorithm.index):
            found["mae_vs_dinov2"].append((by_algorithm["mae"], by_algorithm["dinov2"]))
    for _, group in known.groupby(SAME_DATA + ["algorithm", "recipe"], sort=False,
                                  dropna=False):
        sizes = sorted(group["size"].unique(), key=rank.__getitem__)
        if len(sizes) >= 2:
            first = group.groupby("size").checkpoint.first()
            found["small_vs_large"].append((first[sizes[0]], first[sizes[-1]]))
    found["mae_vs_dinov2"].sort(key=lambda pair: rank[_size_of(checkpoints, pair[0])])
    return found


def every_pair(checkpoints: Sequence[str], first: Sequence[tuple[str, str]] = ()
                ) -> list[tuple[str, str]]:
    """Every unordered pair of distinct checkpoints once: ``first`` in its own orientation
    (so the highlighted pairs read MAE against DINOv2, small against large), then the rest in
    the order given."""
    pairs = list(dict.fromkeys(first))
    seen = {frozenset(pair) for pair in pairs}
    return pairs + [pair for pair in itertools.combinations(checkpoints, 2)
                    if frozenset(pair) not in seen]


def _size_of(checkpoints: pd.DataFrame, checkpoint: str) -> str:
    return checkpoints.set_index("checkpoint").loc[checkpoint, "size"]


# --------------------------------------------------------------------------- depth
def depth_curve(table: pd.DataFrame, n_blocks: Mapping[str, int]) -> pd.DataFrame:
    """CKA of blocks at the same relative depth, per pair and task: "where do they part".

    Relative depth is ``(layer + 1) / blocks``. The checkpoint with fewer compared blocks sets
    the depths; each of its blocks is paired with the other's block nearest in relative depth
    (for equal depths: the diagonal of the layer-pair matrix).
    """
    rows = []
    for (ck_a, ck_b, task), group in table.groupby(["checkpoint_a", "checkpoint_b", "task"],
                                                   sort=False):
        matrix = group.pivot(index="layer_a", columns="layer_b", values="cka")
        depth_a = (matrix.index.to_numpy() + 1) / n_blocks[ck_a]
        depth_b = (matrix.columns.to_numpy() + 1) / n_blocks[ck_b]
        a_leads = len(depth_a) <= len(depth_b)
        for i, depth in enumerate(depth_a if a_leads else depth_b):
            j = int(np.argmin(np.abs((depth_b if a_leads else depth_a) - depth)))
            la, lb = (matrix.index[i], matrix.columns[j]) if a_leads else \
                (matrix.index[j], matrix.columns[i])
            rows.append((ck_a, ck_b, task, float(depth), int(la), int(lb),
                         float(matrix.loc[la, lb])))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def parting(curve: pd.DataFrame) -> pd.DataFrame:
    """Per pair, over the mean across tasks of its depth curve: the CKA at the first and last
    compared depth, the lowest CKA and its depth, and the depth where CKA falls most between
    consecutive compared depths (``drop`` is that fall; NaN with one depth)."""
    mean = (curve.groupby(["checkpoint_a", "checkpoint_b", "depth"], sort=False)
            .cka.mean().reset_index())
    rows = []
    for (ck_a, ck_b), g in mean.groupby(["checkpoint_a", "checkpoint_b"], sort=False):
        g = g.sort_values("depth")
        falls = -np.diff(g.cka.to_numpy())
        steepest = int(np.argmax(falls)) if len(falls) else -1
        rows.append({"checkpoint_a": ck_a, "checkpoint_b": ck_b,
                     "cka_first": g.cka.iloc[0], "cka_last": g.cka.iloc[-1],
                     "cka_min": g.cka.min(), "depth_min": g.depth.iloc[int(np.argmin(g.cka))],
                     "depth_drop": g.depth.iloc[steepest + 1] if steepest >= 0 else np.nan,
                     "drop": falls[steepest] if steepest >= 0 else np.nan})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- beside the CKA
def layer_probe_curve(results: pd.DataFrame, checkpoints: Sequence[str], metric: str = "auc"
                      ) -> pd.DataFrame:
    """Test ``metric`` by block per checkpoint, the mean over tasks, from 03_probe results
    (their linear probes on all labels, mean over seeds): the probe's view of the same depths.

    Results without a ``layer`` column (written before blocks were probed) count as their last
    block, unknown, and are left out. Columns: ``checkpoint, layer, value, n_tasks``.
    """
    columns = ["checkpoint", "layer", "value", "n_tasks"]
    if results.empty or "layer" not in results:
        return pd.DataFrame(columns=columns)
    df = results[(results.notebook == "03_probe") & (results.split == "test")
                 & (results.metric == metric) & results.checkpoint.isin(checkpoints)
                 & results.layer.notna()]
    if "probe" in df:
        df = df[df.probe.fillna("linear").eq("linear")
                & df.label_setting.fillna("all").eq("all")]
    per_task = df.groupby(["checkpoint", "layer", "task"]).value.mean().reset_index()
    curve = per_task.groupby(["checkpoint", "layer"]).agg(
        value=("value", "mean"), n_tasks=("task", "nunique")).reset_index()
    return curve.astype({"layer": int})[columns]


def mean_slopes(slopes: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """The model-size power-law slope of the mean over tasks, per algorithm and data, from a
    04_scaling run's ``slopes.parquet`` (its own runs only, not the reference table)."""
    keep = ["algorithm", "recipe", "data_subset", "modality_subset", "slope", "ci_low",
            "ci_high", "n_points", "note"]
    df = slopes[(slopes.source == "runs") & (slopes.fit == "power_law")
                & (slopes.axis == "model_size") & (slopes.task == "mean")
                & (slopes.metric == metric)]
    return df[[c for c in keep if c in df]].reset_index(drop=True)


# --------------------------------------------------------------------------- figures
def mean_matrix(table: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """A pair's layer-pair CKA matrix, the mean over tasks."""
    g = table[(table.checkpoint_a == pair[0]) & (table.checkpoint_b == pair[1])]
    return g.groupby(["layer_a", "layer_b"]).cka.mean().unstack("layer_b")


def plot_cka_heatmaps(table: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                      labels: Mapping[str, str], probe: pd.DataFrame | None = None,
                      title: str = "") -> plt.Figure:
    """One heatmap per pair (mean CKA over tasks, block by block), and beside them the probe's
    test AUC by block of the checkpoints in those pairs (or why there is none)."""
    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(3.4 * (len(pairs) + 1) + 0.6, 3.4),
                             squeeze=False, layout="constrained")
    matrices = [mean_matrix(table, pair) for pair in pairs]
    low = min([0.0] + [float(np.nanmin(m.to_numpy())) for m in matrices])  # debiased: may be < 0
    image = None
    for ax, pair, m in zip(axes[0], pairs, matrices):
        image = ax.imshow(m.to_numpy(), origin="lower", vmin=low, vmax=1, cmap="magma",
                          aspect="auto")
        ax.set_xticks(range(m.shape[1]), m.columns)
        ax.set_yticks(range(m.shape[0]), m.index)
        ax.set_ylabel(f"{labels[pair[0]]}\nblock", fontsize=8)
        ax.set_xlabel(f"{labels[pair[1]]} block", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes[0, :-1].tolist(), shrink=0.8, label="linear CKA")
    _probe_panel(axes[0, -1], probe, [c for pair in pairs for c in pair], labels)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _probe_panel(ax: plt.Axes, probe: pd.DataFrame | None, checkpoints: Sequence[str],
                 labels: Mapping[str, str]) -> None:
    shown = probe[probe.checkpoint.isin(checkpoints)] if probe is not None else None
    if shown is None or shown.empty:
        ax.text(0.5, 0.5, "no 03_probe results\nof these checkpoints", ha="center",
                va="center", fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
        return
    for checkpoint in dict.fromkeys(checkpoints):
        c = shown[shown.checkpoint == checkpoint].sort_values("layer")
        if len(c):
            ax.plot(c.layer, c.value, marker="o", label=labels[checkpoint])
    ax.set_xlabel("block")
    ax.set_ylabel("probe test AUC (mean over tasks)", fontsize=8)
    ax.legend(fontsize=6)
    if shown.groupby("checkpoint").layer.nunique().max() == 1:
        ax.set_title("last block only: probe with layers: all\nfor the curve", fontsize=7)


def plot_depth_curves(curve: pd.DataFrame, pairs: Mapping[str, Sequence[tuple[str, str]]],
                      labels: Mapping[str, str]) -> plt.Figure:
    """CKA at the same relative depth against depth, the mean over tasks (band: min to max
    over tasks), one line per pair; solid for MAE vs DINOv2, dashed for small vs large."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    styles = {"mae_vs_dinov2": "-", "small_vs_large": "--"}
    for kind, kind_pairs in pairs.items():
        for a, b in kind_pairs:
            g = curve[(curve.checkpoint_a == a) & (curve.checkpoint_b == b)]
            s = g.groupby("depth").cka.agg(["mean", "min", "max"]).reset_index()
            line, = ax.plot(s.depth, s["mean"], styles.get(kind, ":"), marker="o",
                            label=f"{labels[a]} vs {labels[b]}")
            ax.fill_between(s.depth, s["min"], s["max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("relative depth (block / blocks)")
    ax.set_ylabel("linear CKA, same relative depth")
    ax.set_xlim(0, 1.02)
    ax.axhline(0, color="grey", lw=0.5)
    if ax.lines:
        ax.legend(fontsize=7)
    return fig

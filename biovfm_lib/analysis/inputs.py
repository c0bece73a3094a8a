"""Scaling points from probe runs: each test metric joined with its checkpoint's sidecar.

A probe result names its checkpoint; the checkpoint's JSON sidecar says what produced it
(algorithm, size, parameters, images seen, data subset). Joining the two gives the tidy
points the scaling fits take, in the same columns as the reference table.

A sidecar records its pretraining subset as ``data_subset = {"fraction", "count",
"modalities"}`` (what :func:`biovfm_lib.data.pretrain.select_subset` took). Fits must hold the
subset fixed, so it becomes two labels, in the spelling of the training run's folder name:

- ``data_subset``: how much of the modality pool was used: ``full`` (fraction 1), ``f0.25``
  (a fraction), ``n100000`` (a count);
- ``modality_subset``: which pool: ``all`` or the modalities joined by ``+`` (``ct+mri``).

A run on a curated corpus may draw from one of its named subsets; the record then holds
``corpus_subsets: {corpus name: {"name": subset name, <its select_subset arguments>}}``, the
definition copied from the corpus's ``subsets/index.json`` at export time, because a name
alone says nothing about what the subset is. The two layers compose: a run's
``fraction: 0.5`` of the corpus subset ``{fraction: 0.1}`` is ``f0.5 of f0.1``, and modality
lists intersect. A sidecar without a subset record gets ``unknown`` for both labels, and one
that names a subset without its definition ``unknown:<name>``, rather than a guess.

``params_study_m`` is the study's x-axis (the MAE pretraining model's trainable parameters at
the checkpoint's size, :data:`biovfm_lib.models.sizes.STUDY_PARAMS`): sidecars record it at
export, and one written before they did gets it from its ``size``, so runs and the study's
published slopes are fitted on one scale.

``recipe`` names what the checkpoint was pretrained with (``study``, ``dinov2_p14``; see
:class:`biovfm_lib.params.PretrainParams`), so fits never pool recipes. A sidecar written before
recipes were recorded gets the one its code trained: ``dinov2_p14`` for DINOv2, ``study`` for
MAE (:data:`biovfm_lib.params.LEGACY_RECIPES`).

A probe row also says what its encoder saw: ``img_size``, the side of the MedMNIST file's
images (28, 64, 128, 224), and ``input_size``, the side the encoder took, with ``input_fit``
(``pad`` or ``resize``) saying how an image of another size was brought to it. The same
checkpoint probed at 28 and at 224 px is two measurements, not two points at one x, so each
point carries a ``resolution`` label (:func:`resolution_label`) that every fit holds fixed. A
row written before input sizes were recorded probed its images at their own size (native);
one without an ``img_size`` is ``unrecorded``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from biovfm_lib.models.sizes import study_params_m
from biovfm_lib.params import LEGACY_RECIPES
from biovfm_lib.runs import collect_results

RESOLUTION_COLUMNS = ["img_size", "input_size", "input_fit", "resolution"]
POINT_COLUMNS = ["source", "algorithm", "recipe", "size", "task", "metric", "value",
                 "params_total_m", "params_encoder_m", "params_study_m", "images_seen",
                 "n_train_images",
                 "data_subset", "modality_subset", *RESOLUTION_COLUMNS,
                 "data_source", "checkpoint", "run_id"]

NUMERIC = dict.fromkeys(["value", "params_total_m", "params_encoder_m", "params_study_m",
                         "images_seen", "n_train_images", "img_size", "input_size"], float)
UNKNOWN = "unknown"
UNRECORDED = "unrecorded"


def sidecar(checkpoint: str) -> dict:
    """The JSON sidecar of an exported backbone, or {} for other checkpoints."""
    if not checkpoint:  # a random-initialisation baseline
        return {}
    path = Path(checkpoint).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def study_x(meta: dict) -> float:
    """The study's x (M parameters) of a sidecar: its own record, else derived from its size."""
    if meta.get("params_study_m") is not None:
        return float(meta["params_study_m"])
    return study_params_m(meta.get("size"))


def recipe_of(meta: dict) -> str:
    """The pretraining recipe a sidecar records, else the one its algorithm's code trained
    before recipes were recorded."""
    return meta.get("recipe") or LEGACY_RECIPES.get(meta.get("algorithm"), UNKNOWN)


def _data_label(spec: dict) -> str:
    count, fraction = spec.get("count"), spec.get("fraction", 1.0)
    return f"n{count}" if count else "full" if fraction == 1 else f"f{fraction:g}"


def subset_labels(subset: dict | None, named: list[dict] | None = None) -> tuple[str, str]:
    """``(data_subset, modality_subset)`` labels of a sidecar's ``data_subset`` record, drawn
    from within the corpus subsets ``named`` (their ``select_subset`` arguments), if any."""
    if subset is None:
        return UNKNOWN, UNKNOWN
    layers = [*(named or []), subset]  # outermost first
    sizes = [label for label in map(_data_label, layers) if label != "full"]
    pools = [set(spec["modalities"]) for spec in layers if spec.get("modalities")]
    modalities = set.intersection(*pools) if pools else set()
    return (" of ".join(reversed(sizes)) or "full",
            "+".join(sorted(modalities)) if pools else "all")


def corpus_subsets(record: dict) -> dict[str, dict | None]:
    """The named corpus subsets a run drew from, by name, with the definitions its sidecar
    recorded (None for a sidecar that kept only the name)."""
    named: dict[str, dict | None] = {}
    for entry in record.get("corpus_subsets", {}).values():
        if isinstance(entry, dict):
            named[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
        elif entry:
            named[entry] = None
    return named


def _labels(checkpoint: str, meta: dict) -> tuple[str, str]:
    record = meta.get("data_subset")
    named = corpus_subsets(record) if record else {}
    if missing := sorted(name for name, spec in named.items() if spec is None):
        return (f"{UNKNOWN}:{'+'.join(missing)}",) * 2
    return subset_labels(record, list(named.values()))


def resolution_label(img_size: float | None, input_size: float | None,
                     input_fit: str | None) -> str:
    """How fits and tables name what an encoder saw: ``"224"`` for images probed at their own
    size, ``"28/pad224"`` for 28 px images zero-padded to a 224 px input; ``unrecorded`` when
    the image size is not known. An ``input_size`` of 0 or none is the image's own size, as the
    probe's parameter means; a non-native row without its fit says ``unknown`` for it."""
    if img_size is None or pd.isna(img_size):
        return UNRECORDED
    if input_size is None or pd.isna(input_size) or input_size in (0, img_size):
        return f"{int(img_size)}"
    fit = input_fit if isinstance(input_fit, str) and input_fit else UNKNOWN
    return f"{int(img_size)}/{fit}{int(input_size)}"


def _column(results: pd.DataFrame, name: str) -> pd.Series:
    """A results column, or one of NaN for results written before it existed."""
    return results[name] if name in results else pd.Series(np.nan, index=results.index)


def input_resolution(results: pd.DataFrame) -> pd.DataFrame:
    """``img_size, input_size, input_fit, resolution`` of probe result rows (see the module
    notes): a missing or zero ``input_size`` is the image's own size."""
    img = pd.to_numeric(_column(results, "img_size"), errors="coerce").astype(float)
    given = pd.to_numeric(_column(results, "input_size"), errors="coerce").astype(float)
    size = given.where(given > 0, img)
    fit = _column(results, "input_fit")
    labels = [resolution_label(*row) for row in zip(img, size, fit)]
    return pd.DataFrame({"img_size": img, "input_size": size, "input_fit": fit,
                         "resolution": labels}, index=results.index)


def main_probe(results: pd.DataFrame) -> pd.Series:
    """Which rows are a probe run's main probe, the only ones fits and headline numbers pool:
    its kNN, label-subset, extra-seed and other-block rows are other evaluations (``main``
    False), and results written before ``main`` existed hold nothing else."""
    if "main" not in results:
        return pd.Series(True, index=results.index)
    return results["main"].fillna(True).astype(bool)


def _probe_test_rows(results: pd.DataFrame, run_ids: list[str] | None) -> pd.DataFrame:
    """The main probe's test rows of 03_probe runs, of ``run_ids`` only if given."""
    df = results[(results.notebook == "03_probe") & (results.split == "test")
                 & main_probe(results)]
    return df[df.run_id.isin(run_ids)] if run_ids else df


def probe_points(results: pd.DataFrame | None = None, run_ids: list[str] | None = None
                 ) -> pd.DataFrame:
    """Test-split metrics of completed 03_probe runs of this project's exported checkpoints.

    Runs of random initialisations or foreign checkpoints carry no algorithm or size and are
    left out; ``run_ids`` narrows the runs; only a run's main probe counts (:func:`main_probe`).
    """
    results = collect_results("results") if results is None else results
    if results.empty:
        return pd.DataFrame(columns=POINT_COLUMNS).astype(NUMERIC)
    df = _probe_test_rows(results, run_ids)
    meta = {c: sidecar(c) for c in df.checkpoint.unique()}
    df = df[[bool(meta[c].get("algorithm")) for c in df.checkpoint]]
    labels = {c: _labels(c, meta[c]) for c in df.checkpoint.unique()}
    subsets = [labels[c] for c in df.checkpoint]
    seen = input_resolution(df)
    return pd.DataFrame({
        "source": "runs",
        "algorithm": [meta[c]["algorithm"] for c in df.checkpoint],
        "recipe": [recipe_of(meta[c]) for c in df.checkpoint],
        "size": [meta[c].get("size") for c in df.checkpoint],
        "task": df.task.to_numpy(), "metric": df.metric.to_numpy(), "value": df.value.to_numpy(),
        # a sidecar counts the exported encoder only: no decoder, so no total
        "params_total_m": float("nan"),
        "params_encoder_m": [meta[c]["n_params"] / 1e6 for c in df.checkpoint],
        "params_study_m": [study_x(meta[c]) for c in df.checkpoint],
        "images_seen": [meta[c].get("images_seen") for c in df.checkpoint],
        "n_train_images": [meta[c].get("n_train_images") for c in df.checkpoint],
        "data_subset": [data for data, _ in subsets],
        "modality_subset": [modality for _, modality in subsets],
        **{c: seen[c].to_numpy() for c in RESOLUTION_COLUMNS},
        "data_source": df.data_source.to_numpy(),
        "checkpoint": df.checkpoint.to_numpy(), "run_id": df.run_id.to_numpy(),
    }, columns=POINT_COLUMNS).astype(NUMERIC)


BASELINE_COLUMNS = ["size", "task", "metric", "value", "params_study_m", *RESOLUTION_COLUMNS,
                    "data_source", "run_id"]


def baseline_points(results: pd.DataFrame | None = None, run_ids: list[str] | None = None
                    ) -> pd.DataFrame:
    """Test-split metrics of completed 03_probe runs of random initialisations, the floor a
    pretrained checkpoint's gain is read against; one row per size, resolution, task and
    metric (the mean where several runs probed one size at one resolution: a floor at 28 px
    says nothing about one at 224), at the size's study x so it sits on the scaling figures'
    axis. ``run_ids`` narrows the runs as for :func:`probe_points`."""
    results = collect_results("results") if results is None else results
    if results.empty:
        return pd.DataFrame(columns=BASELINE_COLUMNS)
    df = _probe_test_rows(results, run_ids)
    df = df[df.checkpoint.fillna("") == ""]
    if df.empty:
        return pd.DataFrame(columns=BASELINE_COLUMNS)
    df = df.assign(**input_resolution(df))
    rows = (df.groupby(["encoder", "resolution", "task", "metric"], as_index=False)
            .agg(value=("value", "mean"), img_size=("img_size", "first"),
                 input_size=("input_size", "first"), input_fit=("input_fit", "first"),
                 data_source=("data_source", "first"),
                 run_id=("run_id", lambda ids: ",".join(sorted(set(ids))))))
    rows = rows.rename(columns={"encoder": "size"})
    rows["params_study_m"] = [study_params_m(s) for s in rows["size"]]
    return rows[BASELINE_COLUMNS]

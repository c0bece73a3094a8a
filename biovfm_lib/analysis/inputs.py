"""Scaling points from probe runs: each test metric joined with its checkpoint's sidecar.

A probe result names its checkpoint; the checkpoint's JSON sidecar says what produced it
(algorithm, size, parameters, images seen, data subset). Joining the two gives the tidy
points the scaling fits take, in the same columns as the reference table.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from biovfm_lib.runs import collect_results

POINT_COLUMNS = ["source", "algorithm", "size", "task", "metric", "value", "params_total_m",
                 "params_encoder_m", "images_seen", "data_subset", "data_source", "checkpoint",
                 "run_id"]

NUMERIC = dict.fromkeys(["value", "params_total_m", "params_encoder_m", "images_seen"], float)


def sidecar(checkpoint: str) -> dict:
    """The JSON sidecar of an exported backbone, or {} for other checkpoints."""
    if not checkpoint:  # a random-initialisation baseline
        return {}
    path = Path(checkpoint).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def probe_points(results: pd.DataFrame | None = None, run_ids: list[str] | None = None
                 ) -> pd.DataFrame:
    """Test-split metrics of completed 03_probe runs of this project's exported checkpoints.

    Runs of random initialisations or foreign checkpoints carry no algorithm or size and are
    left out; ``run_ids`` narrows the runs.
    """
    results = collect_results("results") if results is None else results
    if results.empty:
        return pd.DataFrame(columns=POINT_COLUMNS).astype(NUMERIC)
    df = results[(results.notebook == "03_probe") & (results.split == "test")]
    if run_ids:
        df = df[df.run_id.isin(run_ids)]
    meta = {c: sidecar(c) for c in df.checkpoint.unique()}
    df = df[[bool(meta[c].get("algorithm")) for c in df.checkpoint]]
    return pd.DataFrame({
        "source": "runs",
        "algorithm": [meta[c]["algorithm"] for c in df.checkpoint],
        "size": [meta[c].get("size") for c in df.checkpoint],
        "task": df.task.to_numpy(), "metric": df.metric.to_numpy(), "value": df.value.to_numpy(),
        # a sidecar counts the exported encoder only: no decoder, so no total
        "params_total_m": float("nan"),
        "params_encoder_m": [meta[c]["n_params"] / 1e6 for c in df.checkpoint],
        "images_seen": [meta[c].get("images_seen") for c in df.checkpoint],
        "data_subset": [json.dumps(meta[c].get("data_subset"), sort_keys=True)
                        for c in df.checkpoint],
        "data_source": df.data_source.to_numpy(),
        "checkpoint": df.checkpoint.to_numpy(), "run_id": df.run_id.to_numpy(),
    }, columns=POINT_COLUMNS).astype(NUMERIC)

"""Probe results become scaling points only through a checkpoint sidecar."""
import json

import pandas as pd

from biovfm_lib.analysis.inputs import POINT_COLUMNS, probe_points


def test_points_join_sidecars_and_skip_random_baselines(tmp_path):
    ckpt = tmp_path / "backbone.safetensors"
    ckpt.write_bytes(b"")
    ckpt.with_suffix(".json").write_text(json.dumps({
        "algorithm": "mae", "size": "small", "n_params": 21_700_000, "images_seen": 1000,
        "data_subset": {"fraction": 0.5}}))
    rows = [{"run_id": r, "notebook": "03_probe", "status": "completed", "encoder": "small",
             "checkpoint": c, "task": "dermamnist", "split": split, "metric": "auc",
             "value": v, "data_source": "synthetic"}
            for r, c, v in (("a", str(ckpt), 0.8), ("b", "", 0.6))
            for split in ("val", "test")]
    points = probe_points(pd.DataFrame(rows))
    assert list(points.columns) == POINT_COLUMNS and len(points) == 1
    row = points.iloc[0]
    assert (row.algorithm, row["size"], row.value, row.images_seen) == ("mae", "small", 0.8, 1000)
    assert row.params_encoder_m == 21.7 and row.data_source == "synthetic"
    assert probe_points(pd.DataFrame(rows[2:])).empty  # the random baseline alone

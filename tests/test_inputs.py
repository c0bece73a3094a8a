"""Probe results become scaling points only through a checkpoint sidecar."""
import json

import pandas as pd
import pytest

from biovfm_lib.analysis.inputs import POINT_COLUMNS, probe_points, subset_labels


def test_points_join_sidecars_and_skip_random_baselines(tmp_path):
    ckpt = tmp_path / "backbone.safetensors"
    ckpt.write_bytes(b"")
    ckpt.with_suffix(".json").write_text(json.dumps({
        "algorithm": "mae", "size": "small", "n_params": 21_700_000, "images_seen": 1000,
        "n_train_images": 250,
        "data_subset": {"fraction": 0.5, "count": None, "modalities": ["mri", "ct"]}}))
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
    assert (row.n_train_images, row.data_subset, row.modality_subset) == (250, "f0.5", "ct+mri")
    assert probe_points(pd.DataFrame(rows[2:])).empty  # the random baseline alone


@pytest.mark.parametrize(("record", "labels"), [
    # what biovfm_lib.train.config.resolve_config writes for the default parameters
    ({"fraction": 1.0, "count": None, "modalities": None}, ("full", "all")),
    ({"fraction": 0.25, "count": None, "modalities": None}, ("f0.25", "all")),
    ({"fraction": 1.0, "count": 5000, "modalities": ["us"]}, ("n5000", "us")),
    (None, ("unknown", "unknown")),  # a sidecar that does not say
])
def test_subset_labels(record, labels):
    assert subset_labels(record) == labels


def _export(root, run: str, subset_name: str, definition: dict | None, **run_subset) -> str:
    """An exported backbone whose sidecar drew from a named corpus subset, recording its
    definition as biovfm_lib.train does (or, like an old sidecar, only its name)."""
    (root / run / "export").mkdir(parents=True)
    ckpt = root / run / "export" / "backbone.safetensors"
    ckpt.write_bytes(b"")
    named = subset_name if definition is None else {"name": subset_name, **definition}
    record = {"fraction": 1.0, "count": None, "modalities": None, **run_subset,
              "corpus_subsets": {"demo": named}}
    ckpt.with_suffix(".json").write_text(json.dumps({
        "algorithm": "dinov2", "size": "nano", "n_params": 1_000_000, "data_subset": record}))
    return str(ckpt)


def test_named_corpus_subsets_compose_with_the_run_subset(tmp_path):
    runs = {
        "a": _export(tmp_path, "a", "tenth", {"fraction": 0.1, "images": 10}, fraction=0.5),
        "b": _export(tmp_path, "b", "us", {"modalities": ["ultrasound"], "images": 30},
                     modalities=["ultrasound", "ct"]),
        "c": _export(tmp_path, "c", "gone", None),  # a sidecar that kept only the name
    }
    rows = [{"run_id": r, "notebook": "03_probe", "status": "completed", "encoder": "nano",
             "checkpoint": c, "task": "dermamnist", "split": "test", "metric": "auc",
             "value": 0.7, "data_source": "synthetic"} for r, c in runs.items()]
    points = probe_points(pd.DataFrame(rows)).set_index("run_id")
    assert points.loc["a", ["data_subset", "modality_subset"]].tolist() == ["f0.5 of f0.1", "all"]
    assert points.loc["b", ["data_subset", "modality_subset"]].tolist() == ["full", "ultrasound"]
    assert points.loc["c", ["data_subset", "modality_subset"]].tolist() == ["unknown:gone"] * 2


def test_random_initialisations_become_the_floor_at_their_size(tmp_path):
    from biovfm_lib.analysis.inputs import BASELINE_COLUMNS, baseline_points
    from biovfm_lib.analysis.scaling import gain_over_random
    from biovfm_lib.models.sizes import STUDY_PARAMS

    ckpt = tmp_path / "backbone.safetensors"
    ckpt.write_bytes(b"")
    ckpt.with_suffix(".json").write_text(json.dumps({
        "algorithm": "mae", "size": "nano", "n_params": 500_000, "data_subset": {
            "fraction": 1.0, "count": None, "modalities": None}}))
    rows = [{"run_id": r, "notebook": "03_probe", "status": "completed", "encoder": size,
             "checkpoint": c, "task": task, "split": split, "metric": "auc", "value": v,
             "data_source": "synthetic"}
            for r, c, size, values in (
                ("pre", str(ckpt), "nano", {"dermamnist": 0.8, "bloodmnist": 0.9}),
                ("r1", "", "nano", {"dermamnist": 0.6, "bloodmnist": 0.7}),
                ("r2", "", "nano", {"dermamnist": 0.7}),  # a second seed of one task
                ("r3", "", "pico", {"dermamnist": 0.55}))
            for task, v in values.items() for split in ("val", "test")]
    results = pd.DataFrame(rows)
    floor = baseline_points(results)
    assert list(floor.columns) == BASELINE_COLUMNS and len(floor) == 3
    derma = floor.set_index(["size", "task"]).loc[("nano", "dermamnist")]
    assert derma.value == pytest.approx(0.65) and derma.run_id == "r1,r2"  # runs averaged
    assert derma.params_study_m == STUDY_PARAMS["nano"] / 1e6
    assert list(baseline_points(results, run_ids=["pre", "r3"])["size"]) == ["pico"]
    assert baseline_points(results, run_ids=["pre"]).empty  # no random init among the runs

    gains = gain_over_random(probe_points(results), floor)
    (row,) = gains.itertuples()
    assert (row.algorithm, row.size, row.n_tasks) == ("mae", "nano", 2)
    assert row.pretrained == pytest.approx(0.85) and row.random_init == pytest.approx(0.675)
    assert row.gain == pytest.approx(0.175)
    no_floor = gain_over_random(probe_points(results), floor[floor["size"] == "pico"])
    assert no_floor.empty  # a size with no random init has no gain to state

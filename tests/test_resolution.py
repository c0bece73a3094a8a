"""Probe resolution: every fit holds it fixed, and the resolution curve is an axis of its own."""
from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from biovfm_lib.analysis.inputs import baseline_points, probe_points, resolution_label
from biovfm_lib.analysis.plots import plot_resolution, plot_task_panels
from biovfm_lib.analysis.scaling import (
    RESOLUTION_SLOPE_COLUMNS,
    compare_algorithms,
    gain_over_random,
    resolution_points,
    resolution_slopes,
    scaling_slopes,
)

matplotlib.use("Agg")

TASKS = ("pathmnist", "dermamnist")


@pytest.mark.parametrize(("img_size", "input_size", "input_fit", "label"), [
    (224, 224, "pad", "224"),              # native: the fit is moot
    (224.0, np.nan, np.nan, "224"),        # a row written before input sizes were recorded
    (28, 0, "pad", "28"),                  # input_size 0: the image's own size
    (28, 224, "pad", "28/pad224"),
    (28.0, 224.0, "resize", "28/resize224"),
    (64, 128, None, "64/unknown128"),      # another size without its fit: not a guess
    (np.nan, 224, "pad", "unrecorded"),
])
def test_resolution_label(img_size, input_size, input_fit, label):
    assert resolution_label(img_size, input_size, input_fit) == label


def _export(root, name: str, size: str) -> str:
    ckpt = root / f"{name}.safetensors"
    ckpt.write_bytes(b"")
    ckpt.with_suffix(".json").write_text(json.dumps({
        "algorithm": "mae", "size": size, "n_params": 1_000_000,
        "data_subset": {"fraction": 1.0, "count": None, "modalities": None}}))
    return str(ckpt)


def _rows(run: str, checkpoint: str, values: dict[str, float], **seen) -> list[dict]:
    return [{"run_id": run, "notebook": "03_probe", "status": "completed", "encoder": "nano",
             "checkpoint": checkpoint, "task": task, "split": "test", "metric": "auc",
             "value": v, "data_source": "synthetic", **seen} for task, v in values.items()]


def test_points_and_floors_carry_the_resolution(tmp_path):
    ckpt = _export(tmp_path, "nano", "nano")
    pad = {"img_size": 28, "input_size": 224, "input_fit": "pad"}
    results = pd.DataFrame([
        *_rows("p28", ckpt, {"dermamnist": 0.8}, **pad),
        *_rows("p224", ckpt, {"dermamnist": 0.9}, img_size=224),  # no input columns: native
        *_rows("r28a", "", {"dermamnist": 0.6}, **pad),
        *_rows("r28b", "", {"dermamnist": 0.62}, **pad),
        *_rows("r224", "", {"dermamnist": 0.7}, img_size=224, input_size=224, input_fit="pad"),
    ])
    points = probe_points(results).set_index("run_id")
    assert points.loc["p28", ["img_size", "input_size", "resolution"]].tolist() == [
        28, 224, "28/pad224"]
    assert points.loc["p224", ["img_size", "input_size", "resolution"]].tolist() == [
        224, 224, "224"]
    floor = baseline_points(results).set_index("resolution")
    # averaged per resolution: pooled with the 224 px run it would be 0.64
    assert floor.loc["28/pad224", "value"] == pytest.approx(0.61)
    assert floor.loc["28/pad224", "run_id"] == "r28a,r28b"
    assert floor.loc["224", "value"] == pytest.approx(0.7)

    gains = gain_over_random(probe_points(results), baseline_points(results))
    gains = gains.set_index("resolution")
    assert gains["random_init"].to_dict() == pytest.approx({"28/pad224": 0.61, "224": 0.7})
    assert gains["gain"].to_dict() == pytest.approx({"28/pad224": 0.19, "224": 0.2})
    no_28 = results[~results["run_id"].isin(["r28a", "r28b"])]
    only_224 = gain_over_random(probe_points(results), baseline_points(no_28))
    assert only_224["resolution"].tolist() == ["224"]  # no floor at 28 px: no gain to state


# ----------------------------------------------------------------------- held fixed in fits
SIZES = {"small": 21.7, "base": 85.8}


def _points(slopes: dict[str, float], sizes: dict[str, float] = SIZES,
            algorithm: str = "mae") -> pd.DataFrame:
    """Exact power-law points of checkpoints each probed at several resolutions."""
    rows = []
    for resolution, slope in slopes.items():
        img = int(resolution.split("/")[0])
        for size, params in sizes.items():
            for task in TASKS:
                rows.append({
                    "source": "runs", "algorithm": algorithm, "recipe": "study", "size": size,
                    "task": task, "metric": "auc", "params_study_m": params,
                    "value": (0.4 if img == 28 else 0.6) * params**slope,
                    "data_subset": "full", "modality_subset": "all", "img_size": img,
                    "input_size": 224, "input_fit": "pad", "resolution": resolution,
                    "checkpoint": f"{algorithm}-{size}.safetensors"})
    return pd.DataFrame(rows)


def test_model_size_fits_never_pool_two_resolutions():
    points = _points({"28/pad224": 0.02, "224": 0.05})
    slopes = scaling_slopes(points, x="params_study_m", n_boot=0).query("fit == 'power_law'")
    got = slopes.set_index(["resolution", "task"])
    assert set(slopes["resolution"]) == {"28/pad224", "224"}
    assert (slopes["n_points"] == 2).all()  # pooled, each curve would have 4 points
    for task in (*TASKS, "mean"):
        assert got.loc[("28/pad224", task), "slope"] == pytest.approx(0.02, abs=1e-9)
        assert got.loc[("224", task), "slope"] == pytest.approx(0.05, abs=1e-9)

    one = _points({"28/pad224": 0.02, "224": 0.05}, sizes={"base": 85.8})
    single = scaling_slopes(one, x="params_study_m", n_boot=0).query("fit == 'power_law'")
    # one checkpoint at 28 and 224: one point per curve, never two at one x
    assert (single["n_points"] == 1).all() and single["slope"].isna().all()
    assert single["note"].str.contains("distinct x").all()


def test_algorithms_are_compared_at_one_resolution_only():
    sizes = {**SIZES, "large": 303.3}  # the interaction test needs more than 4 points
    points = pd.concat([_points({"224": 0.05}, sizes, algorithm="dinov2"),
                        _points({"28/pad224": 0.02, "224": 0.03}, sizes)], ignore_index=True)
    out = compare_algorithms(points, x="params_study_m")
    assert set(out["resolution"]) == {"224"}  # MAE alone was probed at 28 px
    assert out.set_index("task").loc["pathmnist", ["slope_a", "slope_b"]].tolist() == (
        pytest.approx([0.05, 0.03], abs=1e-9))


def test_model_size_panels_draw_one_checkpoint_at_four_resolutions():
    points = _points({"28/pad224": 0.0, "64/pad224": 0.0, "128/pad224": 0.0, "224": 0.0},
                     sizes={"base": 85.8})
    slopes = scaling_slopes(points, x="params_study_m", n_boot=0)
    fig = plot_task_panels(points, slopes, "params_study_m")
    # one marker line per resolution, and no fitted line: a single size has no slope
    assert [len(ax.lines) for ax in fig.axes[:len(TASKS)]] == [4, 4]


# ----------------------------------------------------------------------- the resolution axis
CHECKPOINT = "dinov2-base.safetensors"


def _resolution_points() -> pd.DataFrame:
    """One checkpoint at 28-224 px padded to 224 (value = c * img**0.05), 28 and 64 px also
    resized to 224 (slope 0.1 from the same 224 px point), and another probed at 224 only."""
    scale = {"pathmnist": 0.5, "dermamnist": 0.3}
    rows = []

    def add(checkpoint: str, size: str, img: int, fit: str, value: float, task: str) -> None:
        rows.append({"source": "runs", "algorithm": "dinov2", "recipe": "study", "size": size,
                     "task": task, "metric": "auc", "value": value, "data_subset": "full",
                     "modality_subset": "all", "img_size": float(img), "input_size": 224.0,
                     "input_fit": fit, "resolution": resolution_label(img, 224, fit),
                     "checkpoint": checkpoint})

    for task, c in scale.items():
        for img in (28, 64, 128, 224):
            add(CHECKPOINT, "base", img, "pad", c * img**0.05, task)
        for img in (28, 64):
            add(CHECKPOINT, "base", img, "resize", c * 224**0.05 * (img / 224) ** 0.1, task)
        add("dinov2-small.safetensors", "small", 224, "pad", 0.4, task)
    return pd.DataFrame(rows)


def test_resolution_slopes_recover_a_known_slope_per_curve():
    points = _resolution_points()
    slopes = resolution_slopes(points, n_boot=0)
    assert list(slopes.columns) == RESOLUTION_SLOPE_COLUMNS
    assert set(slopes["axis"]) == {"resolution"}
    power = slopes[slopes["fit"] == "power_law"].set_index(["resolution", "task"])
    for task in (*TASKS, "mean"):
        pad = power.loc[("28, 64, 128, 224/pad224", task)]
        assert pad["slope"] == pytest.approx(0.05, abs=1e-9) and pad["n_points"] == 4
        # the native 224 px point closes the resize curve too
        resize = power.loc[("28, 64, 224/resize224", task)]
        assert resize["slope"] == pytest.approx(0.1, abs=1e-9) and resize["n_points"] == 3
        assert power.loc[("28, 64, 128, 224/pad224", task), "checkpoint"] == CHECKPOINT
    single = power.loc["224"]  # the checkpoint probed at one size says why it has no slope
    assert single["slope"].isna().all() and single["note"].str.contains("distinct x").all()
    assert set(single["size"]) == {"small"}


def test_resolution_points_are_the_checkpoints_probed_at_several_sizes():
    points = _resolution_points()
    chosen = resolution_points(points)
    assert set(chosen["checkpoint"]) == {CHECKPOINT}
    assert len(chosen) == len(points[points["checkpoint"] == CHECKPOINT]) == 2 * 6
    assert resolution_points(points[points["img_size"] == 224]).empty


def test_resolution_figure_draws_every_curve_and_the_floor():
    points = resolution_points(_resolution_points())
    floor = pd.DataFrame([
        {"size": "base", "task": task, "metric": "auc", "value": 0.3, "img_size": float(img),
         "input_size": 224.0, "input_fit": "pad", "resolution": resolution_label(img, 224, "pad")}
        for task in TASKS for img in (28, 224)])
    fig = plot_resolution(points, "auc", random_init=floor)
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["derma", "path", "mean over tasks"]
    for ax in panels:  # the pad and resize curves, and the floor on the pad curve's input
        assert len(ax.lines) == 3 and ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["28", "64", "128", "224"]
    pad = panels[2].lines[0]
    assert list(pad.get_xdata()) == [28, 64, 128, 224]
    assert np.allclose(pad.get_ydata(), 0.4 * np.array([28, 64, 128, 224]) ** 0.05)

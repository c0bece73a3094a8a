"""The scaling figures draw the curves the fits hold apart: never two recipes as one line."""
from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from biovfm_lib.analysis.plots import plot_mean_scaling, plot_slopes, plot_task_panels
from biovfm_lib.analysis.scaling import scaling_slopes

matplotlib.use("Agg")

SIZES = {"small": 47.4, "base": 111.66, "large": 329.24}
SLOPES = {"study": 0.02, "dinov2_p14": 0.06}  # DINOv2's two recipes, on the same corpus


@pytest.fixture
def points() -> pd.DataFrame:
    return pd.DataFrame([
        {"source": "runs", "algorithm": "dinov2", "recipe": recipe, "size": size,
         "task": task, "metric": "auc", "params_study_m": x, "value": 0.5 * x**slope,
         "data_subset": "full", "modality_subset": "all", "resolution": "224"}
        for recipe, slope in SLOPES.items() for size, x in SIZES.items()
        for task in ("dermamnist", "pathmnist")])


def test_two_recipes_are_two_curves_in_every_figure(points):
    slopes = scaling_slopes(points, x="params_study_m", n_boot=0)
    mean = plot_mean_scaling(points, "params_study_m")
    assert sorted(line.get_label() for line in mean.axes[0].lines) == [
        "dinov2 dinov2_p14 full/all 224 (runs)", "dinov2 study full/all 224 (runs)"]
    panels = plot_task_panels(points, slopes, "params_study_m")
    for ax in panels.axes[:2]:  # each recipe's points and its own fitted line
        assert len(ax.lines) == 4
        fitted = [line for line in ax.lines if line.get_label().startswith("_")]
        rises = sorted(line.get_ydata()[-1] / line.get_ydata()[0] for line in fitted)
        ratio = SIZES["large"] / SIZES["small"]
        assert rises == pytest.approx([ratio ** SLOPES["study"], ratio ** SLOPES["dinov2_p14"]])
    bars = plot_slopes(slopes, "auc")
    assert sorted(c.get_label() for c in bars.axes[0].containers
                  if isinstance(c, BarContainer)) == [
        "dinov2 dinov2_p14 full/all 224", "dinov2 study full/all 224"]


def test_the_picker_names_each_checkpoints_recipe_and_resolution(points):
    from biovfm_lib.analysis.plots import checkpoint_labels

    labels = checkpoint_labels(points)  # the reference's points have no probe run
    assert labels.nunique() == len(SLOPES) * len(SIZES)
    assert labels.iloc[0] == "runs · dinov2 small study · full/all · 224"

"""Scaling-slope fits checked against independent computations, and the paper's reference table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from biovfm_lib.analysis.reference import (
    COLUMNS,
    REFERENCE_CSV,
    STUDY_X,
    SUBSET_COLUMNS,
    load_reference,
)
from biovfm_lib.analysis.scaling import (
    SLOPE_COLUMNS,
    compare_algorithms,
    data_scaling_slopes,
    fit_power_law,
    fit_saturating,
    scaling_slopes,
    subset_table,
)

TASKS = {
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
}


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return load_reference()


@pytest.fixture(scope="module")
def ref_slopes(ref: pd.DataFrame) -> pd.DataFrame:
    return scaling_slopes(ref, source="reference", n_boot=20)


# ----------------------------------------------------------------------------- reference table
def test_reference_shape(ref: pd.DataFrame) -> None:
    assert list(ref.columns) == [*COLUMNS, *SUBSET_COLUMNS, STUDY_X, "recipe", "img_size",
                                 "input_size", "resolution"]
    # the study probed MedMNIST+ 224 px files at 224 px, BiomedCLIP included
    assert (ref[["img_size", "input_size"]] == 224).all().all()
    assert (ref["resolution"] == "224").all()
    assert len(ref) == 12 * (2 * 4 + 1)
    assert set(ref["task"]) == TASKS
    assert ref.groupby("algorithm").size().to_dict() == {"dinov2": 48, "mae": 48, "biomedclip": 12}
    assert (ref["source"] == "reference").all() and (ref["metric"] == "auc").all()
    assert not ref.duplicated(["algorithm", "size", "task"]).any()
    clip = ref[ref["algorithm"] == "biomedclip"]
    assert clip[["size", "params_total_m", "params_encoder_m"]].isna().all().all()
    # the study's model-size runs all pretrain on the whole corpus; BiomedCLIP on other data
    study = ref[ref["algorithm"] != "biomedclip"]
    assert (study["data_subset"] == "full").all() and (study["modality_subset"] == "all").all()
    assert (clip[list(SUBSET_COLUMNS)] == "external").all().all()


@pytest.mark.parametrize(
    ("algorithm", "size", "task", "value"),
    [
        ("dinov2", "tiny", "dermamnist", 89.7), ("dinov2", "large", "bloodmnist", 99.96),
        ("dinov2", "base", "retinamnist", 83.3), ("dinov2", "small", "octmnist", 98.8),
        ("mae", "tiny", "octmnist", 81.4), ("mae", "base", "organsmnist", 95.9),
        ("mae", "large", "chestmnist", 78.6), ("mae", "small", "bloodmnist", 99.48),
        ("biomedclip", None, "tissuemnist", 87.3), ("biomedclip", None, "bloodmnist", 99.89),
    ],
)
def test_reference_values(ref: pd.DataFrame, algorithm: str, size: str | None, task: str,
                          value: float) -> None:
    rows = ref[(ref["algorithm"] == algorithm) & (ref["task"] == task)]
    rows = rows[rows["size"].isna()] if size is None else rows[rows["size"] == size]
    assert rows["value"].tolist() == [value]


def test_reference_params(ref: pd.DataFrame) -> None:
    by_size = ref.dropna(subset=["size"]).groupby("size")[["params_total_m", "params_encoder_m"]]
    assert by_size.nunique().eq(1).all().all()  # one count per size, same for both algorithms
    first = by_size.first()
    assert first["params_total_m"].to_dict() == {
        "tiny": 31.2, "small": 47.4, "base": 111.66, "large": 329.24}
    assert first["params_encoder_m"].to_dict() == {
        "tiny": 5.5, "small": 21.7, "base": 85.8, "large": 303.3}


def test_reference_malformed(tmp_path) -> None:
    good = pd.read_csv(REFERENCE_CSV)
    path = tmp_path / "bad.csv"
    good.drop(columns="params_total_m").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*params_total_m"):
        load_reference(path)
    good.assign(value=good["value"].astype(str).replace("89.7", "n/a")).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*'value'"):
        load_reference(path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_reference(tmp_path / "missing.csv")


# ----------------------------------------------------------------------------- power law
def _polyfit_slope(x: pd.Series, y: pd.Series) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def test_power_law_matches_polyfit_on_reference(ref: pd.DataFrame,
                                                ref_slopes: pd.DataFrame) -> None:
    assert list(ref_slopes.columns) == SLOPE_COLUMNS
    assert set(zip(ref_slopes["data_subset"], ref_slopes["modality_subset"])) == {("full", "all")}
    power = ref_slopes[ref_slopes["fit"] == "power_law"].set_index(["algorithm", "task"])
    sized = ref.dropna(subset=["params_total_m"])
    assert len(power) == 2 * 13
    for (algorithm, task), g in sized.groupby(["algorithm", "task"]):
        expected = _polyfit_slope(g["params_total_m"], g["value"])
        assert power.loc[(algorithm, task), "slope"] == pytest.approx(expected, rel=1e-9)
    for algorithm, g in sized.groupby("algorithm"):
        mean = g.groupby("params_total_m")["value"].mean()  # every task is present at every size
        expected = _polyfit_slope(mean.index.to_series(), mean)
        assert power.loc[(algorithm, "mean"), "slope"] == pytest.approx(expected, rel=1e-9)
        assert "12 task" in power.loc[(algorithm, "mean"), "note"]


def test_power_law_is_scale_invariant_in_y() -> None:
    x, y = [31.2, 47.4, 111.66, 329.24], np.array([0.745, 0.771, 0.780, 0.792])
    pct, frac = fit_power_law(x, 100 * y), fit_power_law(x, y)
    assert pct["slope"] == pytest.approx(frac["slope"])
    assert pct["p_value"] == pytest.approx(frac["p_value"])
    assert pct["intercept"] - frac["intercept"] == pytest.approx(np.log(100))


def test_power_law_se_and_p_match_manual_ols(ref: pd.DataFrame) -> None:
    g = ref[(ref["algorithm"] == "mae") & (ref["task"] == "chestmnist")]
    lx, ly = np.log(g["params_total_m"].to_numpy()), np.log(g["value"].to_numpy())
    n = len(lx)
    sxx = ((lx - lx.mean()) ** 2).sum()
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / sxx
    resid = ly - (ly.mean() + slope * (lx - lx.mean()))
    se = np.sqrt((resid**2).sum() / (n - 2) / sxx)
    p = 2 * stats.t.sf(abs(slope / se), n - 2)
    half = stats.t.ppf(0.975, n - 2) * se

    res = fit_power_law(g["params_total_m"], g["value"])
    assert res["n_points"] == 4
    assert res["slope"] == pytest.approx(slope, rel=1e-9)
    assert res["se"] == pytest.approx(se, rel=1e-9)
    assert res["p_value"] == pytest.approx(p, rel=1e-9)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((slope - half, slope + half), rel=1e-9)


def test_power_law_degenerate_inputs(ref: pd.DataFrame) -> None:
    one = fit_power_law([100.0, 100.0, 100.0], [0.8, 0.85, 0.9])
    assert np.isnan(one["slope"]) and np.isnan(one["se"]) and "distinct x" in one["note"]

    two = fit_power_law([10.0, 100.0], [0.5, 0.5 * 10**0.1])
    assert two["slope"] == pytest.approx(0.1)
    assert np.isnan(two["se"]) and np.isnan(two["p_value"]) and "2 points" in two["note"]

    base_only = scaling_slopes(ref[ref["size"] == "base"], n_boot=10)
    assert len(base_only) == 2 * 13 * 2
    assert base_only["slope"].isna().all() and base_only["note"].str.len().gt(0).all()


# ----------------------------------------------------------------------------- saturating fit
def test_saturating_recovers_noiseless_parameters() -> None:
    x = np.logspace(1, 4, 8)
    y = 1 - (2.0 * x**-0.5 + 0.05)
    res = fit_saturating(x, y, n_boot=50)
    assert res["slope"] == pytest.approx(0.5, rel=1e-4)
    assert res["a"] == pytest.approx(2.0, rel=1e-3)
    assert res["c"] == pytest.approx(0.05, abs=1e-5)
    assert fit_saturating(x, 100 * y, n_boot=50)["slope"] == pytest.approx(res["slope"], rel=1e-6)


def test_saturating_bootstrap_ci_covers_truth() -> None:
    rng = np.random.default_rng(1)
    x = np.repeat(np.logspace(1, 4, 6), 2)
    y = 1 - (2.0 * x**-0.5 + 0.05) + rng.normal(0, 0.005, x.size)
    res = fit_saturating(x, y, n_boot=300, seed=0)
    assert res["ci_low"] < 0.5 < res["ci_high"]
    assert res["ci_high"] - res["ci_low"] < 0.5  # informative, not just wide
    assert res["n_boot_ok"] > 250 and f"{res['n_boot_ok']}/300" in res["note"]


def test_saturating_needs_four_points() -> None:
    res = fit_saturating([10.0, 100.0, 1000.0], [0.7, 0.8, 0.85])
    assert np.isnan(res["slope"]) and ">= 4 points" in res["note"]


# ----------------------------------------------------------------------------- algorithm contrast
def _two_algorithms(rng: np.random.Generator, task: str, slope_a: float,
                    slope_b: float) -> pd.DataFrame:
    x = np.repeat([31.2, 47.4, 111.66, 329.24], 2)  # 4 sizes x 2 seeds per algorithm
    rows = []
    for algorithm, slope, icpt in (("dinov2", slope_a, -0.3), ("mae", slope_b, -0.5)):
        y = np.exp(icpt + slope * np.log(x) + rng.normal(0, 0.01, x.size))
        rows.append(pd.DataFrame({"algorithm": algorithm, "task": task, "metric": "auc",
                                  "value": y, "params_total_m": x, "data_subset": "full",
                                  "modality_subset": "all"}))
    return pd.concat(rows, ignore_index=True)


def test_interaction_detects_planted_difference_only() -> None:
    """Many simulated tasks in one table: each gets its own test."""
    rng = np.random.default_rng(0)
    points = pd.concat(
        [_two_algorithms(rng, f"planted{i}", 0.05, 0.01) for i in range(100)]
        + [_two_algorithms(rng, f"null{i}", 0.03, 0.03) for i in range(300)],
        ignore_index=True,
    )
    out = compare_algorithms(points).set_index("task").drop(index="mean")
    planted = out[out.index.str.startswith("planted")]
    null = out[out.index.str.startswith("null")]
    assert (planted["p_value"] < 0.05).mean() > 0.95
    assert 0.01 < (null["p_value"] < 0.05).mean() < 0.10  # nominal 5% false-positive rate
    assert np.allclose(planted["diff"], planted["slope_a"] - planted["slope_b"])
    covered = (planted["ci_low"] < 0.04) & (0.04 < planted["ci_high"])
    assert 0.88 < covered.mean() <= 1.0  # nominal 95% coverage of the planted difference


def test_compare_on_reference_matches_separate_fits(ref: pd.DataFrame,
                                                    ref_slopes: pd.DataFrame) -> None:
    out = compare_algorithms(ref, "params_total_m").set_index("task")
    assert set(out.index) == TASKS | {"mean"}
    power = ref_slopes[ref_slopes["fit"] == "power_law"].set_index(["algorithm", "task"])["slope"]
    for task, row in out.iterrows():
        assert row["slope_a"] == pytest.approx(power[("dinov2", task)], rel=1e-9)
        assert row["slope_b"] == pytest.approx(power[("mae", task)], rel=1e-9)
        assert 0 <= row["p_value"] <= 1


# ----------------------------------------------------------------------------- subsets held fixed
SIZES = {"tiny": 5.5, "small": 21.7, "base": 85.8, "large": 303.3}


def _lstsq_slope(x: pd.Series, y: pd.Series) -> float:
    design = np.column_stack([np.ones(len(x)), np.log(x.to_numpy(float))])
    return float(np.linalg.lstsq(design, np.log(y.to_numpy(float)), rcond=None)[0][1])


def _probe_points(rng: np.random.Generator, slopes: dict[tuple[str, str, str], float],
                  sizes: dict[str, float] = SIZES, n_train: dict[str, int] | None = None,
                  tasks: tuple[str, ...] = ("pathmnist", "dermamnist")) -> pd.DataFrame:
    """Noisy power-law points of probe runs, one slope per (algorithm, data, modality subset)."""
    n_train = n_train or {"full": 100_000, "f0.1": 10_000}
    rows = []
    for (algorithm, data, modality), slope in slopes.items():
        level = 0.5 if data == "full" else 0.4  # subsets differ in level too, as real ones do
        for size, params in sizes.items():
            for task in tasks:
                rows.append({
                    "source": "runs", "algorithm": algorithm, "size": size, "task": task,
                    "metric": "auc", "params_encoder_m": params,
                    "value": level * params**slope * np.exp(rng.normal(0, 0.01)),
                    "n_train_images": n_train[data], "data_subset": data,
                    "modality_subset": modality})
    return pd.DataFrame(rows)


def test_model_size_fits_hold_the_data_subset_fixed() -> None:
    rng = np.random.default_rng(0)
    points = _probe_points(rng, {("mae", "full", "all"): 0.04, ("mae", "f0.1", "all"): 0.01})
    slopes = scaling_slopes(points, x="params_encoder_m", n_boot=0)
    power = slopes[slopes["fit"] == "power_law"].set_index(["data_subset", "task"])
    assert set(slopes["data_subset"]) == {"full", "f0.1"} and set(slopes["modality_subset"]) == {
        "all"}
    assert len(power) == 2 * (2 + 1)  # per subset: two tasks and their mean
    for (data, task), g in points.groupby(["data_subset", "task"]):
        expected = _lstsq_slope(g["params_encoder_m"], g["value"])
        assert power.loc[(data, task), "slope"] == pytest.approx(expected, rel=1e-9)
        assert power.loc[(data, task), "n_points"] == len(g) == len(SIZES)
    for data, g in points.groupby("data_subset"):
        mean = g.groupby("params_encoder_m")["value"].mean()
        expected = _lstsq_slope(mean.index.to_series(), mean)
        assert power.loc[(data, "mean"), "slope"] == pytest.approx(expected, rel=1e-9)
    # pooling the subsets, as before, gives a slope that is neither subset's
    pooled = _lstsq_slope(*(points.loc[points["task"] == "pathmnist", c]
                            for c in ("params_encoder_m", "value")))
    assert all(abs(pooled - power.loc[(d, "pathmnist"), "slope"]) > 0.005 for d in ("full", "f0.1"))


def test_points_need_subset_labels() -> None:
    points = _probe_points(np.random.default_rng(0), {("mae", "full", "all"): 0.04})
    with pytest.raises(KeyError, match="modality_subset"):
        scaling_slopes(points.drop(columns="modality_subset"), x="params_encoder_m")
    points.loc[0, "data_subset"] = None
    with pytest.raises(ValueError, match="label"):
        scaling_slopes(points, x="params_encoder_m")


def test_algorithms_are_compared_on_the_same_subset_only() -> None:
    rng = np.random.default_rng(1)
    points = _probe_points(rng, {("dinov2", "full", "all"): 0.03, ("mae", "full", "all"): 0.05,
                                 ("dinov2", "f0.1", "all"): 0.01})  # MAE has no f0.1 run
    out = compare_algorithms(points, x="params_encoder_m")
    assert set(out["data_subset"]) == {"full"} and set(out["task"]) == {
        "pathmnist", "dermamnist", "mean"}
    full = points[points["data_subset"] == "full"]
    for _, row in out[out["task"] != "mean"].iterrows():
        g = full[full["task"] == row["task"]]
        for algorithm, col in (("dinov2", "slope_a"), ("mae", "slope_b")):
            mine = g[g["algorithm"] == algorithm]
            expected = _lstsq_slope(mine["params_encoder_m"], mine["value"])
            assert row[col] == pytest.approx(expected, rel=1e-9)


def test_data_scaling_fits_each_model_size_and_modality_subset_on_its_own() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for (size, modality), slope in {("small", "all"): 0.02, ("base", "all"): 0.05,
                                    ("base", "us"): 0.08}.items():
        for data, n_train in (("f0.01", 1e5), ("f0.1", 1e6), ("full", 1e7)):
            for task in ("pathmnist", "dermamnist"):
                rows.append({"algorithm": "dinov2", "size": size, "task": task, "metric": "auc",
                             "value": 0.5 * n_train**slope * (1 + 1e-3 * rng.standard_normal()),
                             "n_train_images": n_train, "images_seen": 5e6,  # fixed budget
                             "data_subset": data, "modality_subset": modality})
    points = pd.DataFrame(rows)
    slopes = data_scaling_slopes(points, n_boot=0).query("fit == 'power_law'")
    assert set(zip(slopes.axis, slopes.modality_subset)) == {
        ("data_size:small", "all"), ("data_size:base", "all"), ("data_size:base", "us")}
    assert set(slopes["data_subset"]) == {"f0.01, f0.1, full"}  # the span, smallest first
    for (size, modality), g in points[points.task == "pathmnist"].groupby(
            ["size", "modality_subset"]):
        got = slopes[(slopes.axis == f"data_size:{size}") & (slopes.modality_subset == modality)
                     & (slopes.task == "pathmnist")]
        expected = _lstsq_slope(g["n_train_images"], g["value"])
        assert got.slope.item() == pytest.approx(expected, rel=1e-9)
        assert got.n_points.item() == 3


def test_subset_table_compares_modalities_over_the_same_tasks() -> None:
    points = pd.DataFrame({
        "algorithm": "dinov2", "size": "base", "data_subset": "full", "metric": "auc",
        "modality_subset": ["all", "all", "all", "us", "us"],
        "task": ["pathmnist", "dermamnist", "breastmnist", "pathmnist", "breastmnist"],
        "value": [0.9, 0.6, 0.8, 0.7, 0.9],
    })
    table = subset_table(points)
    assert table.index.names == ["algorithm", "size", "data_subset"]
    assert list(table.columns) == ["all", "us"]
    # dermamnist was not probed for "us": both means are over pathmnist and breastmnist
    assert table.loc[("dinov2", "base", "full")].tolist() == pytest.approx([0.85, 0.8])
    assert table.attrs["n_tasks"] == 2

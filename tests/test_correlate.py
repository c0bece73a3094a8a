import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from biovfm_lib.analysis.correlate import (
    CORRELATE_COLUMNS,
    correlate,
    loto_prediction,
    loto_summary,
)

TASKS = [f"t{i}" for i in range(12)]


def _data(seed: int = 0):
    """Two algorithms: slope = 2 * size + noise; 'unrelated' is independent of both slopes."""
    rng = np.random.default_rng(seed)
    props = pd.DataFrame({"task": TASKS, "size": rng.normal(size=12),
                          "unrelated": rng.normal(size=12)})
    rows = [{"algorithm": algo, "task": t, "slope": 2 * s + rng.normal(0, 0.3)}
            for algo in ("dino", "mae") for t, s in zip(TASKS, props["size"])]
    rows += [{"algorithm": algo, "task": "mean", "slope": 99.0} for algo in ("dino", "mae")]
    return pd.DataFrame(rows), props


def test_correlate_matches_scipy_and_multipletests():
    slopes, props = _data()
    out = correlate(slopes, props, ["size", "unrelated"], n_boot=200)
    assert list(out.columns) == CORRELATE_COLUMNS and len(out) == 2 * 2 * 2
    assert (out["n_tasks"] == 12).all()  # the "mean" row is ignored
    for algo, fam in out.groupby("algorithm"):
        y = slopes[(slopes.algorithm == algo) & (slopes.task != "mean")]["slope"].to_numpy()
        for row in fam.itertuples():
            test = stats.pearsonr if row.method == "pearson" else stats.spearmanr
            r, p = test(props[row.property], y)
            assert row.r == pytest.approx(r) and row.p_value == pytest.approx(p)
        for adjust in ("holm", "fdr_bh"):
            got = correlate(slopes[slopes.algorithm == algo], props, ["size", "unrelated"],
                            n_boot=10, adjust=adjust)
            want = multipletests(fam["p_value"], method=adjust)[1]
            assert np.allclose(got["p_adjusted"], want)


def test_bootstrap_ci_contains_r_and_is_reproducible():
    slopes, props = _data()
    a = correlate(slopes, props, ["size"], method="spearman", n_boot=500, seed=1)
    b = correlate(slopes, props, ["size"], method="spearman", n_boot=500, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert (a["ci_low"] <= a["r"]).all() and (a["r"] <= a["ci_high"]).all()
    assert (a["ci_low"] > 0.5).all()  # a clear relation stays clear under resampling
    c = correlate(slopes, props, ["size"], method="spearman", n_boot=500, seed=2)
    assert not np.allclose(a["ci_low"], c["ci_low"])


def test_missing_property_gives_nan_not_error():
    slopes, props = _data()
    props["dbi_features"] = np.nan
    out = correlate(slopes, props, ["size", "dbi_features"], method="pearson", n_boot=20)
    missing = out[out.property == "dbi_features"]
    assert missing[["r", "p_value", "p_adjusted"]].isna().all().all()
    # the family then holds only the tested property: Holm leaves a single p unchanged
    tested = out[out.property == "size"]
    assert np.allclose(tested["p_adjusted"], tested["p_value"])


def test_loto_predicts_planted_relation_only():
    slopes, props = _data()
    related = loto_prediction(slopes, props, ["size"])
    assert list(related.columns) == ["algorithm", "task", "slope", "predicted", "baseline"]
    assert len(related) == 24 and "mean" not in set(related["task"])
    summary = loto_summary(related)
    assert list(summary.columns) == ["algorithm", "rmse_model", "rmse_mean", "mae_model",
                                     "mae_mean", "skill"]
    assert (summary["skill"] > 0.5).all()
    unrelated = loto_summary(loto_prediction(slopes, props, ["unrelated"]))
    assert (unrelated["skill"] <= 0.05).all()


def test_loto_standardises_on_training_tasks_only():
    # an exact linear relation is recovered exactly, whatever the property's scale
    props = pd.DataFrame({"task": TASKS, "x": np.arange(12) * 1000.0 + 5})
    slopes = pd.DataFrame({"algorithm": "a", "task": TASKS, "slope": 0.5 * props["x"] - 1})
    pred = loto_prediction(slopes, props, ["x"])
    assert np.allclose(pred["predicted"], pred["slope"])
    assert pred.loc[0, "baseline"] == pytest.approx(pred["slope"][1:].mean())

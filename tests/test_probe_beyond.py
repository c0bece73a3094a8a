"""The evaluations beyond the main probe: parameters, plan, rows, and what analysis pools."""
import json

import numpy as np
import pandas as pd
import pytest

from biovfm_lib import runs
from biovfm_lib.analysis.inputs import baseline_points, probe_points
from biovfm_lib.params import ParamError, ProbeParams
from biovfm_lib.probe.beyond import BEYOND_COLUMNS, Evaluation, plan
from biovfm_lib.probe.metrics import METRICS
from biovfm_lib.probe.pipeline import FIT_COLUMNS, RESULT_COLUMNS, run_probe
from biovfm_lib.probe.report_beyond import knn_table, label_efficiency, seed_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BEYOND = {"knn": [3, 50], "label_fractions": [0.5], "shots": [1], "label_draws": 2,
          "n_runs": 2, "layers": [1]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


def params(data_root, cache, **kw):
    base = {"data_root": str(data_root), "data": "synthetic", "size": 28, "encoder": "nano",
            "tasks": ["breastmnist", "chestmnist"], "epochs": 3, "lrs": [0.01, 0.001],
            "bootstrap": 40, "device": "cpu", "cache_dir": str(cache), "protocol": "cached"}
    return ProbeParams.validate_mapping({**base, **kw})


def probe(p):
    return run_probe(p, runs.open_run("03_probe", p)).results


def test_pool_is_features_by_another_name():
    assert ProbeParams.validate_mapping({"pool": "cls"}).features == "cls"
    assert ProbeParams.validate_mapping({"features": "cls"}).pool == "cls"
    both = ProbeParams.validate_mapping({"features": "last4_avgpool", "pool": "last4_avgpool"})
    assert both.features == both.pool == "last4_avgpool"
    with pytest.raises(ParamError, match=r"features / pool: .*'cls'.*'last4_avgpool'"):
        ProbeParams.validate_mapping({"features": "cls", "pool": "last4_avgpool"})
    with pytest.raises(ParamError, match="layers: features/pool last4_avgpool"):
        ProbeParams.validate_mapping({"pool": "last4_avgpool", "layers": "all"})


@pytest.mark.parametrize("key,value", [("knn", [0]), ("knn", [5, 5]), ("shots", [0]),
                                       ("label_fractions", [1.0]), ("label_draws", 0),
                                       ("n_runs", 0), ("layers", "first"), ("layers", [-1]),
                                       ("knn_temperature", 0.0)])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ParamError, match=f"  {key}"):
        ProbeParams.validate_mapping({key: value})


def test_the_plan_runs_each_evaluation_once_and_never_repeats_the_main_probe():
    cached = plan(ProbeParams.validate_mapping({**BEYOND, "protocol": "cached"}), [1, 3])
    official = plan(ProbeParams.validate_mapping({**BEYOND, "protocol": "official"}), [1, 3])
    twin = Evaluation("linear", 3, 0)  # the main probe's configuration, on cached features
    assert twin not in cached and official.pop(twin) is True  # bootstrapped: a layer point
    assert cached == official
    assert cached[Evaluation("knn", 1, 0)] and not cached[Evaluation("linear", 3, 1)]
    assert not cached[Evaluation("knn", 3, 0, "1-shot", 1)]
    assert len(cached) == 1 + 2 + 1 + 2 * 2 * 2  # layer 1, knn x 2 blocks, seed 1, labels


def test_beyond_rows_sit_beside_unchanged_main_rows(data_root, tmp_path):
    plain = probe(params(data_root, tmp_path / "c1"))
    df = probe(params(data_root, tmp_path / "c2", **BEYOND))
    assert list(df.columns) == [*RESULT_COLUMNS, *FIT_COLUMNS, *[
        c for c in plain.columns if c not in RESULT_COLUMNS + FIT_COLUMNS + BEYOND_COLUMNS],
        *BEYOND_COLUMNS]
    main = df[df["main"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(main[list(plain.columns)], plain, check_dtype=False)
    extra = df[~df["main"]]
    assert len(extra) == 2 * 12 * 2 * len(METRICS) and extra.protocol.eq("cached").all()
    test = extra[extra.split == "test"].drop_duplicates(
        ["task", "probe", "layer", "run_seed", "label_setting", "label_draw"])
    single = test[(test.label_setting == "all") & (test.run_seed == 0)]
    assert single.ci_low.notna().all()  # one evaluation of its setting: bootstrapped
    assert test[test.label_setting != "all"].ci_low.isna().all()  # draws: sd instead
    breast = test[test.task == "breastmnist"]
    assert breast.loc[breast.label_setting == "1-shot", "labels_used"].eq(2).all()
    knn = breast[(breast.probe == "knn") & (breast.label_setting == "all")]
    assert knn.best_k.isin([3, knn.labels_used.iloc[0]]).all() and knn.best_lr.isna().all()
    assert sorted(knn.layer) == [1, 3]
    assert len(seed_table(df)) == 2 and seed_table(df)["seeds"].eq(2).all()
    assert knn_table(df).loc["breast", "k"] in ("3", str(knn.labels_used.iloc[0]))
    le = label_efficiency(df)
    assert set(le.label_setting) == {"f0.5", "1-shot", "all"} and le.draws.max() == 2


def test_under_the_official_protocol_only_the_main_rows_are_official(data_root, tmp_path):
    kw = {"protocol": "official", "tasks": ["breastmnist"], "epochs": 2, "lrs": [0.01],
          "batch_size": 32}
    plain = probe(params(data_root, tmp_path / "c1", **kw))
    df = probe(params(data_root, tmp_path / "c2", knn=[3], n_runs=2, **kw))
    main = df[df["main"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(main[list(plain.columns)], plain, check_dtype=False)
    assert main.protocol.eq("official").all()
    extra = df[~df["main"]]
    assert extra.protocol.eq("cached").all() and extra.backbone_mode.eq("eval").all()
    linear = extra[extra.probe == "linear"]
    assert sorted(linear.run_seed.unique()) == [0, 1]  # both seeds cached, beside the main
    assert len(list((tmp_path / "c2").glob("*.npy"))) == 3  # train features cached too


def test_scaling_points_take_only_the_main_probe(tmp_path):
    ckpt = tmp_path / "backbone.safetensors"
    ckpt.write_bytes(b"")
    ckpt.with_suffix(".json").write_text(json.dumps({"algorithm": "mae", "size": "small",
                                                     "n_params": 21_700_000}))
    row = {"notebook": "03_probe", "status": "completed", "encoder": "small",
           "checkpoint": str(ckpt), "task": "dermamnist", "split": "test", "metric": "auc",
           "data_source": "synthetic"}
    new = pd.DataFrame([{**row, "run_id": "new", "value": v, "main": m, "probe": probe}
                        for v, m, probe in ((0.8, True, "linear"), (0.7, False, "knn"),
                                            (0.6, False, "linear"))])
    old = pd.DataFrame([{**row, "run_id": "old", "value": 0.75}])  # written before `main`
    points = probe_points(pd.concat([new, old], ignore_index=True))
    assert sorted(zip(points.run_id, points.value)) == [("new", 0.8), ("old", 0.75)]
    assert probe_points(old).value.tolist() == [0.75]
    assert np.isclose(probe_points(new).value, 0.8).all() and len(probe_points(new)) == 1
    random_init = new.assign(checkpoint="", encoder="nano")  # the baseline floor: main only
    assert baseline_points(random_init).value.tolist() == [0.8]


@pytest.mark.parametrize("protocol", ["cached", "official"])
def test_dinov2s_linear_eval_feature_probes_under_either_protocol(data_root, tmp_path, protocol):
    p = params(data_root, tmp_path / "cache", tasks=["breastmnist"], epochs=2, lrs=[0.01],
               batch_size=32, pool="last4_avgpool", protocol=protocol)
    df = probe(p)
    assert df.features.eq("last4_avgpool").all() and df.value.notna().all()
    (entry, *_) = (tmp_path / "cache").glob("*.npy")
    assert np.load(entry).shape[1] == 5 * 96  # 4 CLS tokens and the mean patch token

"""Linear CKA (biovfm_lib/analysis/representations.py) and notebooks/06_representations."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biovfm_lib.analysis import representations
from biovfm_lib.analysis.representations import (
    CKA_COLUMNS,
    checkpoint_table,
    cka_matrix,
    cka_table,
    depth_curve,
    every_pair,
    highlighted_pairs,
    layer_probe_curve,
    linear_cka,
    mean_slopes,
    parting,
    sample_rows,
)
from biovfm_lib.params import ParamError, RepresentationsParams, params_for
from biovfm_lib.preflight import MissingInput, check_inputs

ROOT = Path(__file__).resolve().parents[1]
BIOVFM = Path(sys.executable).with_name("biovfm")
ESTIMATORS = ["debiased", "biased"]


# ----------------------------------------------------------------------- direct formulas
def centred_gram_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Kornblith et al.'s HSIC, tr(K H L H), on Gram matrices, as written in the paper."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012)'s unbiased HSIC on (uncentred) Gram matrices, as written there."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def direct_cka(x: np.ndarray, y: np.ndarray, estimator: str) -> float:
    hsic = unbiased_hsic if estimator == "debiased" else centred_gram_hsic
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def related(rng, n: int, p: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Two representations that share a signal, off-centre (so centring matters)."""
    x = rng.normal(size=(n, p)) + 3.0
    y = x @ rng.normal(size=(p, q)) + 2.0 * rng.normal(size=(n, q)) - 1.0
    return x, y


# ----------------------------------------------------------------------- the estimators
# (n, p, q): more images than width, fewer, and one of each
SHAPES = [(60, 5, 8), (20, 50, 30), (25, 25, 40), (30, 40, 10)]


@pytest.fixture(params=["gram", "features"])
def cka_space(request, monkeypatch):
    """Every estimator test twice: from Gram matrices (the default for samples this small)
    and in feature space (where a sample is larger than GRAM_ROWS and than the width)."""
    if request.param == "features":
        monkeypatch.setattr(representations, "GRAM_ROWS", 0)
    return request.param


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.usefixtures("cka_space")
def test_cka_with_itself_is_one(estimator, shape):
    x, _ = related(np.random.default_rng(0), *shape)
    assert linear_cka(x, x, estimator) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.usefixtures("cka_space")
def test_unchanged_by_orthogonal_transform_scaling_and_shift(estimator, shape):
    rng = np.random.default_rng(1)
    x, y = related(rng, *shape)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    base = linear_cka(x, y, estimator)
    assert 0.2 < base < 0.999  # related, not identical: a value the transforms could move
    assert linear_cka(x @ q, y, estimator) == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.3 * x, 0.01 * y, estimator) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 5.0, y, estimator) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_the_gram_matrix_formula(estimator, shape, cka_space):
    x, y = related(np.random.default_rng(2), *shape)
    in_features = cka_space == "features" and shape[0] > shape[1]
    assert (representations.prepare(x).gram is None) == in_features  # the path under test
    assert linear_cka(x, y, estimator) == pytest.approx(direct_cka(x, y, estimator), rel=1e-9)


@pytest.mark.usefixtures("cka_space")
def test_the_two_estimators_differ_where_width_rivals_the_sample():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 200)), rng.normal(size=(50, 200))  # independent
    assert linear_cka(x, y, "biased") > 0.5  # the plain estimator sees similarity in noise
    assert abs(linear_cka(x, y, "debiased")) < 0.1
    x, y = rng.normal(size=(4000, 16)), rng.normal(size=(4000, 16))
    assert abs(linear_cka(x, y, "debiased")) < 0.01


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.usefixtures("cka_space")
def test_symmetric(estimator):
    x, y = related(np.random.default_rng(4), 40, 6, 12)
    assert linear_cka(x, y, estimator) == pytest.approx(linear_cka(y, x, estimator), abs=1e-14)


def test_refuses_what_it_cannot_compare():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="same images"):
        linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(rng.normal(size=(3, 3)), rng.normal(size=(3, 3)))
    assert np.isnan(linear_cka(np.ones((10, 3)), rng.normal(size=(10, 3))))  # constant


@pytest.mark.usefixtures("cka_space")
def test_matrix_is_every_block_against_every_block():
    rng = np.random.default_rng(6)
    a = {0: rng.normal(size=(30, 8)), 1: rng.normal(size=(30, 12))}
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    b = {0: a[1] @ rotation, 1: rng.normal(size=(30, 4)), 2: a[0]}
    m = cka_matrix(a, b)
    assert m.shape == (2, 3) and list(m.index) == [0, 1] and list(m.columns) == [0, 1, 2]
    assert m.loc[0, 2] == pytest.approx(1.0) and m.loc[1, 0] == pytest.approx(1.0)
    for i, fa in a.items():
        for j, fb in b.items():
            assert m.loc[i, j] == pytest.approx(linear_cka(fa, fb), abs=1e-12)


# ----------------------------------------------------------------------- tables and pairs
def test_sample_is_fixed_per_task_and_seed():
    rows = sample_rows(1000, 100, 0, "bloodmnist")
    assert len(rows) == 100 and len(set(rows)) == 100 and (np.diff(rows) > 0).all()
    assert (rows == sample_rows(1000, 100, 0, "bloodmnist")).all()
    assert not (rows == sample_rows(1000, 100, 0, "pathmnist")).all()
    assert not (rows == sample_rows(1000, 100, 1, "bloodmnist")).all()
    assert (sample_rows(40, 100, 0, "bloodmnist") == np.arange(40)).all()


def test_table_rows_are_pairs_by_blocks_by_tasks():
    rng = np.random.default_rng(7)

    def encoder(blocks: int, n: dict) -> dict:
        return {t: {b: rng.normal(size=(m, 6)) for b in range(blocks)} for t, m in n.items()}

    feats = {"a": encoder(3, {"t1": 20, "t2": 12}), "b": encoder(4, {"t1": 20, "t2": 12}),
             "c": encoder(2, {"t1": 20})}
    table = cka_table(feats)
    assert list(table.columns) == CKA_COLUMNS
    # a-b: 3 x 4 blocks on 2 tasks; a-c, b-c: only the task both have
    assert len(table) == 3 * 4 * 2 + 3 * 2 + 4 * 2
    assert set(zip(table.checkpoint_a, table.checkpoint_b)) == {("a", "b"), ("a", "c"),
                                                                 ("b", "c")}
    assert table.set_index("task").n.groupby("task").unique().to_dict() == {
        "t1": [20], "t2": [12]}
    row = table.query("checkpoint_a == 'a' and checkpoint_b == 'b' and layer_a == 2 "
                      "and layer_b == 1 and task == 't2'").cka.item()
    assert row == pytest.approx(linear_cka(feats["a"]["t2"][2], feats["b"]["t2"][1]))
    assert cka_table({}).columns.tolist() == CKA_COLUMNS


def test_every_pair_once_highlighted_ones_first_as_oriented():
    pairs = every_pair(["a", "b", "c"], [("c", "a"), ("c", "a")])
    assert pairs == [("c", "a"), ("a", "b"), ("b", "c")]


def test_depth_curve_pairs_blocks_at_the_same_relative_depth():
    rows = [("p", "n", a, b, "t", 10 * a + b, 9) for a in range(3) for b in range(4)]
    table = pd.DataFrame(rows, columns=CKA_COLUMNS)
    curve = depth_curve(table, {"p": 3, "n": 4})
    # pico's depths 1/3, 2/3, 1 against nano's 1/4, 1/2, 3/4, 1: nearest blocks 0, 2, 3
    assert curve.depth.round(3).tolist() == [0.333, 0.667, 1.0]
    assert list(zip(curve.layer_a, curve.layer_b)) == [(0, 0), (1, 2), (2, 3)]
    assert curve.cka.tolist() == [0.0, 12.0, 23.0]


def test_parting_finds_the_steepest_fall():
    curve = pd.DataFrame({"checkpoint_a": "a", "checkpoint_b": "b", "task": ["t"] * 4,
                          "depth": [0.25, 0.5, 0.75, 1.0], "layer_a": range(4),
                          "layer_b": range(4), "cka": [0.9, 0.85, 0.4, 0.5]})
    (r,) = parting(curve).itertuples()
    assert (r.cka_first, r.cka_last, r.cka_min, r.depth_min) == (0.9, 0.5, 0.4, 0.75)
    assert r.depth_drop == 0.75 and r.drop == pytest.approx(0.45)


def test_highlighted_pairs_hold_size_and_data_fixed():
    ck = pd.DataFrame([
        ("mae-p", "mae", "study", "pico", "full", "all"),
        ("dino-p", "dinov2", "study", "pico", "full", "all"),
        ("mae-n", "mae", "study", "nano", "full", "all"),
        ("mae-n-half", "mae", "study", "nano", "f0.5", "all"),
        ("dino-n", "dinov2", "study", "nano", "full", "all"),
        ("foreign", None, None, None, "unknown", "unknown"),
    ], columns=["checkpoint", "algorithm", "recipe", "size", "data_subset", "modality_subset"])
    pairs = highlighted_pairs(ck, ["pico", "nano", "tiny"])
    assert pairs["mae_vs_dinov2"] == [("mae-p", "dino-p"), ("mae-n", "dino-n")]
    assert sorted(pairs["small_vs_large"]) == [("dino-p", "dino-n"), ("mae-p", "mae-n")]
    only_mae = highlighted_pairs(ck[ck.algorithm == "mae"], ["pico", "nano"])
    assert only_mae == {"mae_vs_dinov2": [], "small_vs_large": [("mae-p", "mae-n")]}


def test_probe_curve_reads_linear_probes_on_all_labels():
    base = {"notebook": "03_probe", "split": "test", "metric": "auc", "checkpoint": "c",
            "probe": "linear", "label_setting": "all"}
    rows = [{**base, "task": t, "layer": b, "value": 0.5 + 0.1 * b + (0.02 if t == "x" else 0)}
            for t in ("x", "y") for b in range(3)]
    rows += [{**base, "task": "x", "layer": 2, "value": 0.0, "probe": "knn"},
             {**base, "task": "x", "layer": 2, "value": 0.0, "label_setting": "1-shot"},
             {**base, "task": "x", "layer": 2, "value": 0.0, "checkpoint": "other"}]
    curve = layer_probe_curve(pd.DataFrame(rows), ["c"])
    assert curve.layer.tolist() == [0, 1, 2] and curve.n_tasks.tolist() == [2, 2, 2]
    assert curve.value.tolist() == pytest.approx([0.51, 0.61, 0.71])
    assert layer_probe_curve(pd.DataFrame(rows).drop(columns="layer"), ["c"]).empty


# ----------------------------------------------------------------------- params, preflight
def test_params_files_validate_and_the_class_is_registered():
    assert params_for("06_representations") is RepresentationsParams
    smoke = RepresentationsParams.from_yaml(ROOT / "params/representations/smoke.yaml")
    paper = RepresentationsParams.from_yaml(ROOT / "params/representations/paper.yaml")
    assert (smoke.data, smoke.size, smoke.sample, smoke.layers) == ("synthetic", 28, 100, "all")
    assert (paper.data, paper.size, paper.sample, len(paper.tasks)) == ("medmnist", 224, 1000, 12)
    with pytest.raises(ParamError, match="estimator"):
        RepresentationsParams.validate_mapping({"estimator": "unbiased"})
    with pytest.raises(ParamError, match="sample"):
        RepresentationsParams.validate_mapping({"sample": 3})


def test_preflight_names_a_missing_checkpoint(tmp_path):
    params = RepresentationsParams.validate_mapping(
        {"data": "synthetic", "checkpoints": [str(tmp_path / "gone.safetensors")]}).as_dict()
    with pytest.raises(MissingInput, match="gone.safetensors does not exist"):
        check_inputs("06_representations", params)


# ----------------------------------------------------------------------- the notebook
def export_random(stem: Path, algorithm: str, size: str, seed: int) -> str:
    """A randomly initialised ViT exported as this project's pretraining exports its
    backbones (weights + sidecar; zero steps, and its sidecar says so)."""
    import torch

    from biovfm_lib.models.checkpoints import export_backbone
    from biovfm_lib.models.factory import vit_spec
    from biovfm_lib.models.sizes import study_params_m

    spec = vit_spec(size, 4, img_size=28)
    torch.manual_seed(seed)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, _ = export_backbone(
        spec.create().eval(), spec, stem, algorithm=algorithm, recipe="study", size=size,
        params_study_m=study_params_m(size), steps=0, images_seen=0,
        data_subset={"count": None, "fraction": 1.0, "modalities": None})
    return str(weights)


TASKS = ["bloodmnist", "dermamnist", "pathmnist"]


def test_checkpoint_table_reads_sidecars_and_names_each_checkpoint_once(tmp_path):
    mae = export_random(tmp_path / "a" / "backbone", "mae", "pico", 0)
    again = export_random(tmp_path / "b" / "backbone", "mae", "pico", 1)
    table = checkpoint_table(checkpoints=[mae, again, mae])
    assert table.checkpoint.tolist() == [mae, again]
    assert table.label.tolist() == ["mae pico #1", "mae pico #2"]
    assert table[["algorithm", "recipe", "size", "data_subset", "modality_subset"]].iloc[0
                                                                                     ].tolist() \
        == ["mae", "study", "pico", "full", "all"]
    assert checkpoint_table().empty  # no probe run yet, nothing named


def test_mean_slopes_are_the_runs_model_size_fits_of_the_mean():
    base = {"source": "runs", "fit": "power_law", "axis": "model_size", "task": "mean",
            "metric": "auc", "algorithm": "mae", "slope": 0.02}
    slopes = pd.DataFrame([base, {**base, "source": "reference", "slope": 9.0},
                           {**base, "task": "bloodmnist", "slope": 9.0},
                           {**base, "axis": "data_size:nano", "slope": 9.0},
                           {**base, "fit": "saturating", "slope": 9.0},
                           {**base, "algorithm": "dinov2", "slope": 0.05}])
    assert mean_slopes(slopes).set_index("algorithm").slope.to_dict() == {
        "mae": 0.02, "dinov2": 0.05}


@pytest.mark.slow
def test_representations_notebook_smoke_run(isolated_outputs, tmp_path):
    """A probe run (every block) of one checkpoint as run_ids, two more as explicit paths:
    three checkpoints, both pair kinds, and the table checked against features extracted
    here, outside the notebook, and the direct formula."""
    import torch

    from biovfm_lib import reports, runs
    from biovfm_lib.data.medmnist import load_task
    from biovfm_lib.models.checkpoints import load_encoder
    from biovfm_lib.params import ProbeParams
    from biovfm_lib.probe.features import extract_layer_features
    from biovfm_lib.probe.pipeline import run_probe

    data_root = isolated_outputs / "data" / "synthetic"
    mae_pico = export_random(tmp_path / "mae_pico" / "backbone", "mae", "pico", 0)
    dino_pico = export_random(tmp_path / "dino_pico" / "backbone", "dinov2", "pico", 1)
    mae_nano = export_random(tmp_path / "mae_nano" / "backbone", "mae", "nano", 2)
    probe = ProbeParams.validate_mapping({
        "data_root": str(data_root), "data": "synthetic", "size": 28, "tasks": TASKS,
        "checkpoint": mae_nano, "protocol": "cached", "layers": "all", "epochs": 2,
        "bootstrap": 0, "device": "cpu"})
    probe_dir = runs.open_run("03_probe", probe)
    run_probe(probe, probe_dir)
    runs.update_record(probe_dir, status="completed", data_source="synthetic")

    started = time.perf_counter()
    env = {**os.environ, "BIOVFM_OUTPUTS": str(isolated_outputs)}
    proc = subprocess.run(
        [str(BIOVFM), "run", "06_representations", "-f", "params/representations/smoke.yaml",
         "-p", "data_root", str(data_root), "-p", "run_ids", json.dumps([probe_dir.name]),
         "-p", "checkpoints", json.dumps([mae_pico, dino_pico]), "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"06_representations smoke run: {wall:.1f} s")
    (run_dir,) = (isolated_outputs / "runs" / "06_representations").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["data_source"] == "synthetic"

    table = pd.read_parquet(run_dir / "cka.parquet")
    assert list(table.columns) == CKA_COLUMNS
    blocks = {mae_pico: 3, dino_pico: 3, mae_nano: 4}
    assert set(table.checkpoint_a) | set(table.checkpoint_b) == set(blocks)
    assert len(table) == len(TASKS) * (4 * 3 + 4 * 3 + 3 * 3)
    assert table.cka.between(-0.2, 1 + 1e-9).all() and table.cka.notna().all()
    assert set(table.task) == set(TASKS)
    for task, n in table.groupby("task").n.unique().items():
        tests = len(load_task(task, data_root, 28).labels["test"])
        assert list(n) == [min(100, tests)]

    # one value again, from features extracted here and the paper's formula
    # highlighted pairs keep their orientation: small against large
    row = table[(table.checkpoint_a == mae_pico) & (table.checkpoint_b == mae_nano)
                & (table.task == "pathmnist") & (table.layer_a == 2) & (table.layer_b == 1)]
    data = load_task("pathmnist", data_root, 28)
    images = data.images["test"][sample_rows(len(data.images["test"]), 100, 0, "pathmnist")]
    feats = [extract_layer_features(load_encoder(c, img_size=28).model, images,
                                    torch.device("cpu"), [layer], "mean_patch", 64)[layer]
             for c, layer in ((mae_nano, 1), (mae_pico, 2))]
    feats = [f.astype(np.float64) for f in feats]
    assert row.cka.item() == pytest.approx(direct_cka(*feats, "debiased"), abs=1e-5)

    curve = pd.read_parquet(run_dir / "probe_by_layer.parquet")
    assert curve[curve.checkpoint == mae_nano].layer.tolist() == [0, 1, 2, 3]
    assert curve.value.between(0, 1).all()
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"cka_mae_vs_dinov2.png", "cka_small_vs_large.png", "depth_curve.png",
            "depth_curve.svg"} <= figures
    html = (run_dir / "06_representations.html").read_text()
    assert "SYNTHETIC" in html and "No completed 04_scaling run yet" in html
    assert "mae pico vs dinov2 pico" in html
    index = reports.build_index().read_text()
    assert "06_representations" in index and run_dir.name in index

import medmnist
import numpy as np
import pytest
from sklearn.metrics import davies_bouldin_score

from biovfm_lib.analysis.properties import (
    COLUMNS,
    class_labels,
    compressibility,
    davies_bouldin,
    image_entropy,
    sample_indices,
    task_properties,
)
from biovfm_lib.data.synthetic import write_synthetic

MULTI = "multi-label, binary-class"


def test_dbi_equals_sklearn_on_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 1.0, (30, 5)) for c in (0, 3, 6)])
    y = np.repeat([0, 1, 2], 30)[:, None]
    assert davies_bouldin(x, y, "multi-class") == pytest.approx(davies_bouldin_score(x, y[:, 0]))


def test_dbi_matches_hand_computation_on_toy():
    # cluster A: (0,0),(2,0),(1,3) centroid (1,1); cluster B: (10,0),(12,0),(11,3) centroid (11,1)
    a = np.array([[0, 0], [2, 0], [1, 3]], float)
    x = np.concatenate([a, a + [10, 0]])
    y = np.array([0, 0, 0, 1, 1, 1])[:, None]
    s = (2 * np.sqrt(2) + 2) / 3  # mean distance to centroid: sqrt2, sqrt2, 2
    expected = (s + s) / 10  # both clusters' worst ratio is (s_A + s_B) / centroid distance
    assert davies_bouldin(x, y, "binary-class") == pytest.approx(expected)


def test_multilabel_rule_no_finding_then_first_positive():
    labels = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]])
    assert class_labels(labels, MULTI).tolist() == [0, 2, 1, 3]
    x = np.array([[0.0], [0.1], [5.0], [5.1], [9.0], [9.2]])
    multi = np.array([[0, 0], [0, 0], [1, 1], [1, 0], [0, 1], [0, 1]])
    assert davies_bouldin(x, multi, MULTI) == pytest.approx(
        davies_bouldin_score(x, [0, 0, 1, 1, 2, 2]))


def _images():
    n, h = 8, 32
    constant = np.full((n, h, h), 120, np.uint8)
    gradient = np.broadcast_to(np.linspace(0, 255, h).astype(np.uint8), (n, h, h)).copy()
    noise = np.random.default_rng(0).integers(0, 256, (n, h, h), dtype=np.uint8)
    return constant, gradient, noise


@pytest.mark.parametrize("method", ["gzip", "png"])
def test_compressibility_orders_constant_gradient_noise(method):
    constant, gradient, noise = _images()
    c, g, u = (compressibility(im, method) for im in (constant, gradient, noise))
    assert c < g < u
    rgb = np.repeat(noise[..., None], 3, axis=-1)
    assert compressibility(rgb, method) > g


def test_compressibility_is_deterministic_for_a_seed():
    imgs = np.random.default_rng(1).integers(0, 256, (50, 16, 16), dtype=np.uint8)
    imgs[::2] //= 16  # mixed complexity so the sample matters
    a = compressibility(imgs, "png", sample=9, seed=3)
    assert a == compressibility(imgs, "png", sample=9, seed=3)
    assert np.array_equal(sample_indices(50, 9, 3), sample_indices(50, 9, 3))
    assert not np.array_equal(sample_indices(50, 9, 3), sample_indices(50, 9, 4))
    with pytest.raises(ValueError):
        compressibility(imgs, "bz2")


def test_entropy_constant_zero_ramp_eight_bits():
    assert image_entropy(np.full((3, 16, 16), 7, np.uint8)) == 0.0
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert image_entropy(ramp) == pytest.approx(8.0)


def test_task_properties_on_synthetic(tmp_path):
    from biovfm_lib.models.factory import create_vit

    # a subset covering RGB, grey, multi-label, binary and ordinal tasks keeps this fast
    tasks = ["pathmnist", "chestmnist", "pneumoniamnist", "retinamnist", "bloodmnist"]
    root = tmp_path / "medmnist"
    write_synthetic(root, size=28, scale=0.02, seed=0, tasks=tasks)
    encoder = create_vit("nano", img_size=28)
    df = task_properties(root, 28, tasks, encoder=encoder, sample=100, seed=0)
    assert list(df.columns) == COLUMNS and df["task"].tolist() == tasks
    for row in df.itertuples():
        with np.load(root / f"{row.task}.npz") as f:
            assert row.n_train == len(f["train_labels"])
        assert row.n_classes == len(medmnist.INFO[row.task]["label"])
        assert row.task_type == medmnist.INFO[row.task]["task"]
    values = df[COLUMNS[4:]]
    assert np.isfinite(values.to_numpy(float)).all()
    assert (values.nunique() > 1).all()
    assert (df[["dbi_features", "dbi_pixels"]].nunique() == len(df)).all()
    assert df["entropy"].between(0, 8).all()
    no_encoder = task_properties(root, 28, ["chestmnist"], sample=100)
    assert np.isnan(no_encoder.loc[0, "dbi_features"])
    assert no_encoder.loc[0, "dbi_pixels"] == df.loc[1, "dbi_pixels"]  # same fixed sample

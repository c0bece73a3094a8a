"""Pretraining really learns: a briefly pretrained nano ViT beats its random initialisation.

Measured on this workbook's synthetic MedMNIST-format data (seed 0, 2 CPU cores), mean test
AUC over the 12 tasks against 0.643 at random initialisation: MAE, 150 steps of batch 64
(~30 s): 0.709; DINOv2, 200 steps of batch 64 (~1.5 min): 0.702 with its colour and blur
batched on the training device (``augment_on: device``, here the CPU; 300 steps with them in
the loader gave 0.700 in twice the time). The margin asserted is half the smaller gain. DINOv2 at this scale needs its smoke settings (no layer-scale damping, 128
prototypes, a faster teacher, a higher lr): with the default recipe scaled down it does not
beat random features within a CPU budget (0.61-0.65 after 150-200 steps).
"""
import pytest

from biovfm_lib import runs
from biovfm_lib.params import PretrainParams, ProbeParams
from biovfm_lib.probe.pipeline import run_probe
from biovfm_lib.train import launch

pytestmark = pytest.mark.slow
MARGIN = 0.028


def mean_test_auc(root, checkpoint: str = "") -> float:
    p = ProbeParams.validate_mapping({
        "data_root": str(root), "data": "synthetic", "size": 28, "encoder": "nano",
        "checkpoint": checkpoint, "epochs": 30, "lrs": [0.01, 0.001], "bootstrap": 0,
        "device": "cpu"})
    results = run_probe(p, runs.open_run("03_probe", p)).results
    return results.query("split == 'test' and metric == 'auc'").value.mean()


SMOKE_RECIPES = {
    "mae": {"max_steps": 150, "method": {"base_lr": 0.004}},
    "dinov2": {"max_steps": 200, "local_size": 12, "n_local": 2, "augment_on": "device", "method": {
        "layerscale": 1.0, "n_prototypes": 128, "momentum_teacher": 0.99, "base_lr": 0.01}},
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def random_init_auc(synth, tmp_path_factory):
    """Probed once for both objectives: a 12-task probe is much of each test's time."""
    with pytest.MonkeyPatch.context() as patch:  # module scope: before isolated_outputs
        patch.setenv("BIOVFM_OUTPUTS", str(tmp_path_factory.mktemp("outputs")))
        return mean_test_auc(synth)


@pytest.mark.parametrize("algorithm", ["mae", "dinov2"])
def test_pretraining_beats_random_initialisation(tmp_path, algorithm, synth, random_init_auc):
    result = launch(PretrainParams.validate_mapping({
        "algorithm": algorithm, "encoder": "nano", "patch_size": 4, "data": "synthetic",
        "data_root": str(synth), "data_size": 28, "img_size": 28, "epochs": 100,
        "batch_size": 64, "num_workers": 2, "nproc": 1, "log_every": 10,
        "checkpoint_every": 1000, "out_root": str(tmp_path / "pretrain"),
        **SMOKE_RECIPES[algorithm]}), live=False)
    pretrained, random_init = mean_test_auc(synth, str(result.export)), random_init_auc
    print(f"mean test AUC: {algorithm} {pretrained:.4f}, random init {random_init:.4f}")
    assert pretrained - random_init > MARGIN

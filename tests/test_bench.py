"""Benchmarks run and record their figures (their speed is reported, never asserted)."""
import json

import pytest

from biovfm_lib.curation.bench import bench_curate
from biovfm_lib.probe.bench import BEYOND_SETTINGS, bench_beyond, bench_probe
from biovfm_lib.train.bench import bench_pretrain


def test_probe_benchmark_records_throughput(isolated_outputs):
    result = bench_probe(encoder="nano", size=28, n_images=64, batch_size=32, device="cpu")
    (path,) = (isolated_outputs / "bench").glob("probe_nano_28px_cpu_*.json")
    stored = json.loads(path.read_text())
    assert stored["images_per_s"] == result["images_per_s"] > 0
    assert stored["precision"] == "fp32" and stored["machine"]["cpu_count"]


def test_beyond_benchmark_times_every_evaluation_on_the_smoke_probe(isolated_outputs):
    result = bench_beyond({"tasks": ["breastmnist"], "epochs": 1, "bootstrap": 0})
    (path,) = (isolated_outputs / "bench").glob("probe_beyond_nano_28px_cpu_*.json")
    stored = json.loads(path.read_text())
    assert set(stored["seconds"]) == set(result["seconds"]) >= set(BEYOND_SETTINGS)
    assert stored["params"]["size"] == 28 and stored["params"]["data"] == "synthetic"


@pytest.mark.parametrize("algorithm", ["dinov2", "mae"])
def test_pretrain_benchmark_records_step_time(isolated_outputs, algorithm):
    result = bench_pretrain(algorithm, "nano", batch_size=4, steps=2, warmup=1, img_size=28,
                            local_size=12, n_local=2, device="cpu")
    (path,) = (isolated_outputs / "bench").glob(f"pretrain_{algorithm}_nano_cpu_*.json")
    stored = json.loads(path.read_text())
    assert stored["step_s"] > 0 and stored["mfu"] is None  # no known peak for a CPU
    assert stored["model_tflops_per_s"] == result["model_tflops_per_s"]


def test_curate_benchmark_records_rates_and_compares_with_pretraining(isolated_outputs,
                                                                        capsys):
    bench_pretrain("mae", "nano", batch_size=4, steps=2, warmup=1, img_size=28, device="cpu")
    result = bench_curate(images=6, size=96, short_side=48)
    (path,) = (isolated_outputs / "bench").glob("curate_*.json")
    stored = json.loads(path.read_text())
    rates = [k for k in stored if k.endswith(("_per_s", "_per_s_per_core"))]
    assert len(rates) == 4 and all(stored[k] == result[k] > 0 for k in rates)
    assert "pretraining mae nano 28 px on cpu" in capsys.readouterr().out

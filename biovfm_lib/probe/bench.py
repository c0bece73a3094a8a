"""Probe benchmarks (benchmarks, not tests: they print figures): feature-extraction throughput,
and the wall time of each evaluation beyond the main probe.

Random uint8 images stand in for data in the throughput benchmark: a frozen ViT's speed does
not depend on content. Results are printed and written to ``outputs/bench/`` as JSON.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biovfm_lib.data.medmnist import SPLITS, load_task
from biovfm_lib.models.factory import vit_spec
from biovfm_lib.params import ProbeParams, load_yaml
from biovfm_lib.probe.beyond import beyond_rows
from biovfm_lib.probe.features import FeatureCache, block_count, extract_features
from biovfm_lib.probe.layers import layer_features
from biovfm_lib.probe.pipeline import (
    build_encoder,
    head_bias,
    prepare_data,
    probe_task,
    resolve_device,
)
from biovfm_lib.runs import project_root, record_benchmark


def bench_probe(encoder: str = "base", size: int = 224, patch_size: int = 0,
                n_images: int = 2048, batch_size: int = 256, device: str = "auto"
                ) -> dict[str, Any]:
    dev = resolve_device(device)
    spec = vit_spec(encoder, patch_size, img_size=size)
    model = spec.create().eval().to(dev)
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    extract_features(model, images[:batch_size], dev, batch_size=batch_size)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    extract_features(model, images, dev, batch_size=batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "benchmark": "probe_features", "encoder": encoder, "timm_kwargs": spec.timm_kwargs,
        "img_size": size, "images": n_images, "batch_size": batch_size, "device": str(dev),
        "precision": "bf16" if dev.type == "cuda" else "fp32", "seconds": round(seconds, 3),
        "images_per_s": round(n_images / seconds, 1),
        "peak_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                            if dev.type == "cuda" else None),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"{encoder} @ {size}px on {dev} ({result['precision']}): "
          f"{result['images_per_s']} images/s ({n_images} images in {seconds:.1f} s)")
    record_benchmark(f"probe_{encoder}_{size}px_{dev.type}", result)
    return result


# What each evaluation beyond the main probe costs on its own, at the settings.
BEYOND_SETTINGS: dict[str, dict[str, Any]] = {
    "knn [10, 20]": {"knn": [10, 20]},
    "label efficiency, linear": {"label_fractions": [0.01, 0.1], "shots": [1, 5, 10],
                                 "label_draws": 5},
    "label efficiency, linear + knn": {"label_fractions": [0.01, 0.1], "shots": [1, 5, 10],
                                       "label_draws": 5, "knn": [10, 20]},
    "seeds, n_runs 5": {"n_runs": 5},
    "layers all, linear per block": {"layers": "all"},
}
SMOKE_PROBE = "params/probe/smoke.yaml"


def bench_beyond(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wall time of each evaluation beyond the main probe over every task, features cached.

    The smoke probe's settings (12 synthetic tasks at 28 px, a nano ViT on CPU) unless
    ``overrides`` says otherwise. Extraction is timed cold, in a fresh cache, for the last
    block alone (today's) and for every block in one pass (``layers: all``); then each
    evaluation's rows are timed on the cached features, and the main probe for scale.
    """
    smoke = load_yaml(project_root() / SMOKE_PROBE)
    base = ProbeParams.validate_mapping({**smoke, **(overrides or {})})
    root = prepare_data(base)
    device = resolve_device(base.device)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        enc, identity = build_encoder(base)
        enc.model.to(device)
        last = block_count(enc.model) - 1
        tasks = [load_task(flag, root, base.size) for flag in base.tasks]
        blocks = list(range(last + 1))
        for name, layers in (("extract, last block", [last]), ("extract, all blocks", blocks)):
            cache = FeatureCache(Path(tmp) / name.replace(" ", "_"))
            start = time.perf_counter()
            feats = [{s: layer_features(enc, identity, data, s, base, device, cache, layers)
                      for s in SPLITS} for data in tasks]
            seconds[name] = time.perf_counter() - start
        start = time.perf_counter()
        for data in tasks:
            probe_task(enc, identity, data, base, device, cache, "bench")
        seconds["main probe (linear, cached)"] = time.perf_counter() - start
        for name, setting in BEYOND_SETTINGS.items():
            p = base.model_copy(update=setting)
            start = time.perf_counter()
            for data, f in zip(tasks, feats):
                beyond_rows(data, f, p, device, head_bias(enc))
            seconds[name] = time.perf_counter() - start
    result = {"benchmark": "probe_beyond", "params": base.as_dict(), "device": str(device),
              "seconds": {k: round(v, 2) for k, v in seconds.items()},
              "torch_threads": torch.get_num_threads()}
    for name, s in result["seconds"].items():
        print(f"{name:>34}: {s:7.2f} s ({len(tasks)} tasks)")
    record_benchmark(f"probe_beyond_{base.encoder}_{base.size}px_{device.type}", result)
    return result

"""Feature-extraction throughput benchmark (a benchmark, not a test: it prints figures).

Random uint8 images stand in for data: throughput of a frozen ViT does not depend on content.
Results are printed and written to ``outputs/bench/`` as JSON for the record.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from biovfm_lib.models.factory import vit_spec
from biovfm_lib.probe.features import extract_features
from biovfm_lib.probe.pipeline import resolve_device
from biovfm_lib.runs import record_benchmark


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

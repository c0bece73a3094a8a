"""Pretraining throughput benchmark: images/s, step time, peak memory and MFU of one device.

Batches are random tensors made on the device, so the figures measure the model and the
optimiser alone (the data loader is benchmarked separately, :func:`bench_augment` for DINOv2's
augmentation); the step is the training loop's own ``train_step``. A benchmark prints figures
and writes them to ``outputs/bench/``; it is not a test.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from biovfm_lib.data.device_augment import DINOv2Photometric
from biovfm_lib.data.ssl_transforms import DINOv2Augmentation
from biovfm_lib.params import PretrainParams
from biovfm_lib.runs import record_benchmark
from biovfm_lib.ssl import DINOv2
from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.distributed import DistEnv, prepare_model
from biovfm_lib.train.loop import build_method, train_step
from biovfm_lib.train.meter import peak_flops


def synthetic_samples(method: torch.nn.Module, n: int) -> list:
    """Normalised random samples in the shapes the method's augmentation produces."""
    def image(size: int) -> torch.Tensor:
        return torch.randn(3, size, size)
    mcfg = method.cfg
    if isinstance(method, DINOv2):
        return [[image(mcfg.global_crop_size), image(mcfg.global_crop_size)]
                + [image(mcfg.local_crop_size) for _ in range(mcfg.n_local_crops)]
                for _ in range(n)]
    return [image(mcfg.img_size) for _ in range(n)]


def bench_pretrain(algorithm: str = "mae", size: str = "large", batch_size: int = 64,
                   steps: int = 20, warmup: int = 5, img_size: int = 224, local_size: int = 0,
                   n_local: int = 8, activation_checkpointing: bool = False,
                   compile_blocks: bool = False, device: str = "auto",
                   recipe: str = "study") -> dict[str, Any]:
    """One training step's throughput of ``recipe`` (its patch and crops: the DINOv2 study
    recipe is 2 x 224 + 8 x 96 px at patch 16, dinov2_p14 2 x 224 + 8 x 98 at patch 14;
    ``local_size`` 0 keeps the recipe's)."""
    dev = torch.device(device if device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    p = PretrainParams.validate_mapping({
        "algorithm": algorithm, "recipe": recipe, "encoder": size, "img_size": img_size,
        "local_size": local_size, "n_local": n_local, "batch_size": batch_size})
    cfg = TrainConfig(algorithm=algorithm, size=size, method={}, sources=[], subset={},
                      img_size=img_size, local_size=local_size, n_local=n_local, epochs=1,
                      max_steps=0, batch_size=batch_size, seed=0, precision="auto",
                      strategy="ddp", activation_checkpointing=activation_checkpointing,
                      compile=compile_blocks, num_workers=0, checkpoint_every=1, log_every=1,
                      out_dir="", recipe=recipe, params=p.as_dict())
    bf16 = dev.type == "cuda"
    method, _ = build_method(cfg, batch_size, warmup + steps)
    mcfg = method.cfg
    # the training loop's own preparation, alone (no process group: nothing is wrapped)
    model = prepare_model(method, "ddp", DistEnv(0, 0, 1, dev), activation_checkpointing,
                          compile_blocks, bf16)
    opt = torch.optim.AdamW(method.param_groups(), lr=0.0, betas=method.betas,
                            fused=dev.type == "cuda")
    batch = {k: v.to(dev) for k, v in
             method.collate(synthetic_samples(method, batch_size)).items()}
    for step in range(warmup):
        train_step(model, method, opt, batch, step, bf16)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        train_step(model, method, opt, batch, step, bf16)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    rate = batch_size / seconds
    peak = peak_flops(dev)
    crops = (f"2x{mcfg.global_crop_size} + {mcfg.n_local_crops}x{mcfg.local_crop_size}"
             if isinstance(method, DINOv2) else None)
    result = {
        "benchmark": "pretrain", "algorithm": algorithm, "recipe": recipe, "size": size,
        "spec": method.spec, "patch_size": mcfg.patch_size, "batch_size": batch_size,
        "img_size": img_size, "crops": crops,
        "device": str(dev), "precision": "bf16" if bf16 else "fp32",
        "activation_checkpointing": activation_checkpointing, "compile": compile_blocks,
        "step_s": round(seconds, 4), "images_per_s": round(rate, 1),
        "model_tflops_per_s": round(rate * method.flops_per_sample() / 1e12, 2),
        "mfu": round(rate * method.flops_per_sample() / peak, 4) if peak else None,
        "peak_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                            if dev.type == "cuda" else None),
    }
    mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
    shape = f"/{mcfg.patch_size}" + (f", {crops}" if crops else "")
    print(f"{algorithm} ({recipe}) {size}{shape}, batch {batch_size} on {dev} "
          f"({result['precision']}): {result['images_per_s']} images/s, "
          f"{seconds * 1e3:.0f} ms/step{mfu}")
    variant = "" if recipe == "study" else f"-{recipe}"  # the study's keeps its old name
    record_benchmark(f"pretrain_{algorithm}{variant}_{size}_{dev.type}", result)
    return result


def _per_core_rate(augment: DINOv2Augmentation, images: list[torch.Tensor]) -> float:
    """Images/s on one thread, as a DataLoader worker runs a transform (torch gives each
    worker one intra-op thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        augment(images[0])
        start = time.perf_counter()
        for image in images:
            augment(image)
        return len(images) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def bench_augment(global_size: int = 224, local_size: int = 98, n_local: int = 8,
                  source_size: int | None = None, n_images: int = 32, batch_size: int = 64,
                  repeats: int = 3, device: str = "auto") -> dict[str, Any]:
    """Images/s of DINOv2's augmentation both ways: the full CPU recipe and its crops-only
    part per loader core, and the batched photometric part on ``device`` (a batch of
    ``batch_size`` images' crops per call). An image is one source image with all its crops.
    Sources are random uint8 images of ``source_size`` (default: the global crop size, as
    MedMNIST's 224 px files); the ops' cost does not depend on the pixel values."""
    dev = torch.device(device if device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    size = source_size or global_size
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
              for _ in range(n_images)]
    crops_only = DINOv2Augmentation(global_size, local_size, n_local, photometric=False)
    full = _per_core_rate(DINOv2Augmentation(global_size, local_size, n_local), images)
    geometric = _per_core_rate(crops_only, images)

    views = [crops_only(images[i % n_images]) for i in range(batch_size)]
    crops = [torch.stack([v[c] for v in views]).to(dev) for c in range(2 + n_local)]
    photometric = DINOv2Photometric(seed=0)
    photometric(crops, step=0)  # warm-up: kernels, allocator
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(1, repeats + 1):
        photometric(crops, step)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    batched = batch_size * repeats / (time.perf_counter() - start)
    result = {
        "benchmark": "augment", "algorithm": "dinov2",
        "crops": f"2x{global_size} + {n_local}x{local_size}", "source_size": size,
        "cpu_full_images_per_s_per_core": round(full, 1),
        "cpu_crops_only_images_per_s_per_core": round(geometric, 1),
        "device": str(dev), "device_batch_size": batch_size,
        "device_threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "device_photometric_images_per_s": round(batched, 1),
    }
    threads = f", {result['device_threads']} threads" if dev.type == "cpu" else ""
    print(f"DINOv2 augmentation, {result['crops']} from {size} px: CPU loader "
          f"{full:.1f} images/s per core with colour/blur, {geometric:.1f} crops only; "
          f"batched colour/blur on {dev}{threads}: {batched:.1f} images/s")
    record_benchmark(f"augment_dinov2_{global_size}px_{dev.type}", result)
    return result

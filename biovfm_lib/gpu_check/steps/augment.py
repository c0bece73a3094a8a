"""Step 7, augment: DINOv2's batched photometrics on the device against the CPU reference.

The reference is torchvision's functional ops, one image at a time on the CPU, in the CPU
recipe's order, with the very parameters the device drew; the device path is
:mod:`biovfm_lib.data.device_augment` on the training device. Both run in uint8, so their
difference is counted in uint8 levels (a rounding tie landing on the other side of .5 is one
level). Throughput is :func:`biovfm_lib.train.bench.bench_augment`'s.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from biovfm_lib.data.device_augment import DINOv2Photometric, PhotometricParams, apply_params
from biovfm_lib.data.ssl_transforms import DINOV2_BLUR_KERNEL, DINOV2_SOLARIZE_THRESHOLD
from biovfm_lib.gpu_check.context import StepContext
from biovfm_lib.train.bench import bench_augment

MAX_LEVELS = 1  # uint8 levels the device may differ from the reference by
_JITTER = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]


def reference(images: Tensor, p: PhotometricParams) -> Tensor:
    """The CPU recipe's photometric ops per image, with drawn parameters ``p``."""
    out = []
    for i, image in enumerate(images):
        if p.jitter[i]:
            for op in p.order[i].tolist():
                image = _JITTER[op](image, float(p.factors[i, op]))
        if p.grey[i]:
            image = F.rgb_to_grayscale(image, num_output_channels=3)
        if p.blur[i]:
            image = F.gaussian_blur(image, [DINOV2_BLUR_KERNEL] * 2, [float(p.sigma[i])] * 2)
        if p.solarize[i]:
            image = F.solarize(image, DINOV2_SOLARIZE_THRESHOLD)
        out.append(image)
    return torch.stack(out)


def augment(ctx: StepContext) -> None:
    device = torch.device(ctx.device)
    n, global_size, local_size, n_local = (4, 28, 12, 2) if ctx.smoke else (16, 224, 96, 8)
    g = torch.Generator().manual_seed(0)
    groups = [torch.randint(0, 256, (k, 3, s, s), dtype=torch.uint8, generator=g)
              for k, s in ((n, global_size), (n, global_size), (n * n_local, local_size))]
    photometric = DINOv2Photometric(seed=0)
    drawn = photometric.draw([len(x) for x in groups], step=0, device=device)
    worst, differing, values = 0, 0, 0
    for x, p in zip(groups, drawn, strict=True):
        on_device = apply_params(x.to(device), p).cpu()
        on_cpu = dataclasses.replace(p, **{f.name: getattr(p, f.name).cpu()
                                           for f in dataclasses.fields(p)})
        diff = (on_device.int() - reference(x, on_cpu).int()).abs()
        worst = max(worst, int(diff.max()))
        differing, values = differing + int((diff > 0).sum()), values + diff.numel()
    ctx.put(device=str(device), crops=f"2x{global_size} + {n_local}x{local_size}", images=n,
            max_difference_levels=worst, fraction_differing=differing / values)
    ctx.check(f"device photometrics on {device.type} vs CPU reference, same draws",
              worst, f"<= {MAX_LEVELS} uint8 level", worst <= MAX_LEVELS, "levels")

    rates = bench_augment(global_size=global_size, local_size=local_size, n_local=n_local,
                          n_images=8 if ctx.smoke else 32, batch_size=2 * n if ctx.smoke else 64,
                          repeats=2 if ctx.smoke else 5, device=ctx.device)
    cpu = rates["cpu_full_images_per_s_per_core"]
    dev = rates["device_photometric_images_per_s"]
    ctx.put(cpu_loader_images_per_s_per_core=cpu,
            cpu_crops_only_images_per_s_per_core=rates["cpu_crops_only_images_per_s_per_core"],
            device_photometric_images_per_s=dev)
    ctx.check(f"DINOv2 photometrics images/s: {device.type} batched vs one CPU loader core",
              f"{dev:.0f} vs {cpu:.0f}", "", None)

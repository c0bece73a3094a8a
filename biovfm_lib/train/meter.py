"""Throughput and model FLOPs utilisation (MFU) against the device's peak.

MFU = achieved model FLOPs / peak FLOPs, with model FLOPs from the method's analytic count
(forward + backward, no recomputation), so activation checkpointing does not inflate it.
Peaks are dense bf16 tensor-core figures from the vendors' data sheets.
"""
from __future__ import annotations

import time

import torch

PEAK_BF16_FLOPS = {  # dense, no sparsity
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
    "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None when unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


class ThroughputMeter:
    """Images/s and MFU over the steps since the last read, across all ranks."""

    def __init__(self, flops_per_sample: float, world_size: int, device: torch.device):
        self.flops_per_sample = flops_per_sample
        self.world_size = world_size
        self.device = device
        self.peak = peak_flops(device)
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start, self.samples = time.perf_counter(), 0

    def update(self, samples_per_rank: int) -> None:
        self.samples += samples_per_rank

    def read(self) -> dict[str, float | None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rate = self.samples * self.world_size / seconds
        flops = rate * self.flops_per_sample
        out = {"images_per_s": rate, "tflops": flops / 1e12,
               "mfu": flops / (self.peak * self.world_size) if self.peak else None}
        self.reset()
        return out

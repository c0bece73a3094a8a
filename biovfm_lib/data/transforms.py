"""Probe-time image transforms of the official BioVFM evaluation.

Grey images are repeated to three channels and every image is normalised with mean = std = 0.5.
Batches are converted on the target device, which is far faster than per-image PIL transforms;
only the training augmentation (random per image) goes through a per-sample path.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

MEAN = STD = 0.5


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W) or (B,H,W,3) -> float (B,3,H,W), normalised as the official protocol."""
    x = images if images.ndim == 4 else images.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - MEAN) / STD


def train_augmentation(size: int) -> v2.Compose:
    """RandomRotation(30) + RandomCrop(padding 4): the official probe's train augmentation."""
    return v2.Compose([v2.RandomRotation(30), v2.RandomCrop(size, padding=4)])


class AugmentedImages(Dataset):
    """Training images augmented per sample (uint8 CHW), with their row index."""

    def __init__(self, images: np.ndarray, size: int):
        self.images = images
        self.augment = train_augmentation(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i]))
        chw = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        return self.augment(chw).permute(1, 2, 0).squeeze(-1), i

"""Probe-time image transforms of the official BioVFM evaluation.

Grey images are repeated to three channels and every image is normalised with mean = std = 0.5.
Batches are converted on the target device, which is far faster than per-image PIL transforms;
only the training augmentation (random per image) goes through a per-sample path.

A resolution study (MedMNIST+, Doerrich et al. 2024) keeps the encoder's input side fixed and
feeds it every file resolution: :func:`fit_to_input` pads a normalised batch, as MedMNIST+'s
code pads after normalising, or resizes it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from biovfm_lib.params import InputFit

MEAN = STD = 0.5


def to_model_input(images: torch.Tensor, side: int = 0, fit: InputFit = "pad") -> torch.Tensor:
    """uint8 (B,H,W) or (B,H,W,3) -> float (B,3,H,W), normalised as the official protocol, and
    brought to ``side`` px by :func:`fit_to_input` (0: left at its own size)."""
    x = images if images.ndim == 4 else images.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = (x - MEAN) / STD
    return fit_to_input(x, side, fit) if side else x


def fit_to_input(x: torch.Tensor, side: int, fit: InputFit = "pad") -> torch.Tensor:
    """A normalised batch (B,3,H,W) at ``side`` x ``side``.

    ``pad`` centres the image on zeros, the normalised value of mid-grey, with the odd pixel of
    an odd margin on the right / bottom, as MedMNIST+ pads its images to 224; it cannot
    shrink. ``resize`` is bilinear, antialiased so that shrinking averages instead of skipping
    pixels.
    """
    h, w = x.shape[-2:]
    if (h, w) == (side, side):
        return x
    if fit == "resize":
        return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True,
                             align_corners=False)
    if h > side or w > side:
        raise ValueError(f"input_fit pad: a {h}x{w} image does not fit in {side}x{side}")
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top), value=0.0)


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

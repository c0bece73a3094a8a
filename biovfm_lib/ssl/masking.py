"""Token masks drawn at collate time: iBOT block masks (DINOv2) and random masks (MAE).

Reproducibility: a batch's masks are a pure function of ``(seed, its pixels)`` through
``batch_seed``. Collate functions run in DataLoader workers, each with its own copy of any RNG,
so a generator carried by the method would repeat across workers and drift with their number;
keying on the content instead gives the same batch the same masks in any worker, after any
resume, as long as the transforms reproduce the crops (their own seeding).

lightly's ``random_block_mask`` implements the same DINOv2 algorithm but draws from Python's
global ``random`` and ``random_token_mask`` from torch's global RNG; neither takes a generator,
so both are re-stated here with an explicit one.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random

import torch
from torch import Tensor


def batch_seed(seed: int, images: Tensor, n_values: int = 4096) -> int:
    """A 64-bit seed from ``seed`` and an evenly strided sample of ``images``' values."""
    flat = images.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // n_values)].float().cpu().numpy()
    digest = hashlib.blake2b(str(seed).encode() + sample.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def block_mask(height: int, width: int, n_masked: int, rng: random.Random,
               min_block: int = 4, max_block: int | None = None,
               min_aspect: float = 0.3) -> Tensor:
    """One (height, width) boolean mask of about ``n_masked`` patches in rectangular blocks.

    DINOv2's ``MaskingGenerator`` (itself BEiT's): blocks of random area in
    ``[min_block, remaining]`` and log-uniform aspect ratio are added until ``n_masked`` is
    reached or ten tries in a row add nothing, so a crowded grid can end slightly short of the
    target, never above it.
    """
    max_block = n_masked if max_block is None else max_block
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = torch.zeros(height, width, dtype=torch.bool)
    count = 0
    while count < n_masked:
        budget = min(n_masked - count, max_block)
        delta = 0
        for _ in range(10):
            area = rng.uniform(min_block, budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= budget:
                    mask[top:top + h, left:left + w] = True
                    delta += new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def block_limit(grid: int) -> int:
    """The largest block of a (grid x grid) iBOT mask: dinov2's ``max_num_patches = 0.5 *
    img_size // patch_size * img_size // patch_size``, which Python evaluates left to right,
    i.e. ``(grid // 2) * grid`` for a crop of ``grid`` patches. Half the grid when it is even;
    at an odd grid less (7 x 7: 21 patches, not 24)."""
    return (grid // 2) * grid


def ibot_masks(n_images: int, grid: int, probability: float, ratio: tuple[float, float],
               rng: random.Random) -> Tensor:
    """(n_images, grid * grid) masks for the global crops, as DINOv2's collate draws them.

    ``int(n_images * probability)`` images are masked; their target ratios are stratified over
    ``ratio`` (one uniform draw per equal sub-interval, so a batch spans the whole range) and
    the masks are shuffled across images. A block holds at most ``block_limit(grid)`` patches.
    """
    n = grid * grid
    n_masked_images = int(n_images * probability)
    edges = torch.linspace(ratio[0], ratio[1], n_masked_images + 1).tolist()
    masks = [block_mask(grid, grid, int(n * rng.uniform(lo, hi)), rng,
                        max_block=block_limit(grid))
             for lo, hi in itertools.pairwise(edges)]
    masks += [torch.zeros(grid, grid, dtype=torch.bool)] * (n_images - n_masked_images)
    rng.shuffle(masks)
    return torch.stack(masks).flatten(1)


def random_token_mask(batch: int, n_tokens: int, mask_ratio: float, generator: torch.Generator
                      ) -> tuple[Tensor, Tensor]:
    """MAE's per-sample random masking: ``(idx_keep, mask)``.

    ``idx_keep`` (batch, int(n_tokens * (1 - mask_ratio))) indexes the visible patches in a
    random order (as MAE's ``ids_shuffle``); ``mask`` (batch, n_tokens) is True where hidden.
    """
    n_keep = int(n_tokens * (1 - mask_ratio))
    idx_keep = torch.rand(batch, n_tokens, generator=generator).argsort(dim=1)[:, :n_keep]
    mask = torch.ones(batch, n_tokens, dtype=torch.bool).scatter_(1, idx_keep, False)
    return idx_keep, mask

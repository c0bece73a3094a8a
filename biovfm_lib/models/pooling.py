"""The study's frozen-feature pooling, shared by the probe and the training loop's monitor.

The official BioVFM probe averages the last block's patch tokens (no CLS, no register tokens)
before the model's own final norm, then applies a fresh ``LayerNorm(eps=1e-6)`` with weight 1
and bias 0, frozen: a LayerNorm without affine parameters. It lives at model level because
training (its online kNN monitor) sits below probing and must score the same feature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-6


def mean_patch(patches: torch.Tensor) -> torch.Tensor:
    """(B, L, D) patch tokens of one block -> (B, D) float32 features."""
    pooled = patches.float().mean(dim=1)
    return F.layer_norm(pooled, pooled.shape[-1:], eps=LAYER_NORM_EPS)

"""The stochastic depth the study's probe leaves live in the frozen backbone.

The BioVFM evaluation (a PyTorch Lightning module) never puts the backbone in eval mode while
the heads train, so the drop path its backbones are built with stays active on the training
features: DINOv2 builds use 0.3 in every block (0.4 for ViT-H), MAE builds (timm 0.3.2
defaults) use none. Above a rate of 0.1, DINOv2's block does not drop per sample by a coin flip:
it adds each residual branch to a random subset of exactly ``max(int(B * (1 - p)), 1)`` samples
of the batch, scaled by ``B / subset``. :class:`SubsetDropPath` reproduces that on timm blocks.
Every residual branch of a ViT works per sample, so zeroing the other rows of a branch computed
on the whole batch gives what computing it on the subset only would.
"""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from biovfm_lib.models.checkpoints import LoadedEncoder

# DINOv2's Block switches to the subset mechanics only above this rate.
SUBSET_ABOVE = 0.1
STUDY_DINOV2_DROP_PATH = 0.3
STUDY_DINOV2_HUGE_DROP_PATH = 0.4
_HUGE_WIDTH = 1280  # ViT-H/14, the one size the study builds with a higher rate


class SubsetDropPath(nn.Module):
    """DINOv2's batch-subset stochastic depth for one residual branch (identity in eval)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return residual
        b = residual.shape[0]
        keep = max(int(b * (1 - self.drop_prob)), 1)
        rows = torch.randperm(b, device=residual.device)[:keep]
        scale = torch.zeros(b, device=residual.device, dtype=residual.dtype)
        scale[rows] = b / keep
        return residual * scale.view(b, *(1,) * (residual.ndim - 1))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def study_drop_path(rate: float) -> nn.Module:
    """The branch wrapper DINOv2's Block uses at ``rate``: subset above 0.1, else per sample."""
    if rate > SUBSET_ABOVE:
        return SubsetDropPath(rate)
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def install_drop_path(model: nn.Module, rate: float) -> int:
    """Give every residual branch of a timm ViT the study's stochastic depth at ``rate``.

    It only acts in train mode and holds no parameters, so eval-mode features, the state dict
    and the weights stay exactly as they were. Returns the number of blocks changed; a model
    without timm-style blocks is refused rather than left silently unchanged.
    """
    blocks = [m for m in model.modules() if hasattr(m, "drop_path1") and hasattr(m, "drop_path2")]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no blocks with drop_path1/drop_path2")
    for block in blocks:  # new modules start in train mode: give them the block's
        block.drop_path1 = study_drop_path(rate).train(block.training)
        block.drop_path2 = study_drop_path(rate).train(block.training)
    return len(blocks)


def encoder_algorithm(enc: LoadedEncoder) -> str:
    """``dinov2``, ``mae``, or what our export recorded; empty when nothing says (timm, random)."""
    if enc.format in ("dinov2", "mae"):
        return enc.format
    return str(enc.meta.get("algorithm", ""))


def study_drop_path_rate(enc: LoadedEncoder) -> float:
    """The drop path the study's evaluation builds this encoder's architecture with."""
    if encoder_algorithm(enc) != "dinov2":
        return 0.0
    huge = getattr(enc.model, "embed_dim", 0) == _HUGE_WIDTH
    return STUDY_DINOV2_HUGE_DROP_PATH if huge else STUDY_DINOV2_DROP_PATH

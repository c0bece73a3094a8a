"""One registry of ViT sizes, built with timm.

A size name maps to a timm architecture plus keyword overrides; the pair ``(timm_name,
timm_kwargs)`` is what checkpoints record, so ``timm.create_model(timm_name, **timm_kwargs)``
rebuilds any backbone of this project without importing it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn


@dataclass(frozen=True)
class VitSize:
    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int


VIT_SIZES: dict[str, VitSize] = {
    # nano exists for CPU smoke runs at 28 px: small patches keep a useful token count.
    "nano": VitSize("vit_tiny_patch16_224", 96, 4, 3, 4),
    "tiny": VitSize("vit_tiny_patch16_224", 192, 12, 3, 16),
    "small": VitSize("vit_small_patch16_224", 384, 12, 6, 16),
    "base": VitSize("vit_base_patch16_224", 768, 12, 12, 16),
    "large": VitSize("vit_large_patch16_224", 1024, 24, 16, 16),
    "huge": VitSize("vit_huge_patch14_224", 1280, 32, 16, 14),  # ViT-H/14, ~630M
}

# The study's x-axis for every scaling fit (its analysis notebook fits DINOv2 and MAE alike
# against the MAE *pretraining* model's trainable parameters, encoder + decoder), by size.
# Each entry is the trainable-parameter count of this project's ``MAE(MAEConfig.for_size(
# size))``: for tiny..huge that is the official recipe (decoder 8 x 512, 16 heads; both
# position embeddings fixed), which gives the study's 31.200 / 47.402 / 111.656 / 329.239 /
# 656.614 M. nano is not in the study; it follows the same rule with its smoke decoder.
# tests/test_study_analysis.py recounts every entry, so the table cannot drift from the model.
STUDY_PARAMS: dict[str, int] = {
    "nano": 867_888, "tiny": 31_200_000, "small": 47_401_728, "base": 111_655_680,
    "large": 329_239_296, "huge": 656_613_964,
}


def study_params_m(size: str | None) -> float:
    """The study's x for a model size, in millions of parameters (NaN for an unknown size).

    Derived from the size name alone, so every checkpoint of one size, whatever its
    algorithm, lands at the same x as the study's published curves.
    """
    return STUDY_PARAMS[size] / 1e6 if size in STUDY_PARAMS else float("nan")


@dataclass(frozen=True)
class VitSpec:
    """A buildable backbone description: what checkpoint sidecars store."""

    timm_name: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self, **overrides: Any) -> nn.Module:
        return timm.create_model(self.timm_name, **{**self.timm_kwargs, **overrides})


def vit_spec(size: str, patch_size: int = 0, img_size: int = 224, **extra: Any) -> VitSpec:
    """The spec of a headless ViT of a named size (``patch_size=0`` keeps the size's default).

    ``extra`` passes timm ``VisionTransformer`` options through, e.g. ``init_values`` (layer
    scale, as DINOv2 uses), ``reg_tokens`` or ``drop_path_rate``.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose from {list(VIT_SIZES)}")
    s = VIT_SIZES[size]
    kwargs = dict(
        img_size=img_size, patch_size=patch_size or s.patch_size, embed_dim=s.embed_dim,
        depth=s.depth, num_heads=s.num_heads, num_classes=0, **extra,
    )
    return VitSpec(s.timm_name, kwargs)


def create_vit(size: str, patch_size: int = 0, img_size: int = 224, **extra: Any) -> nn.Module:
    """A randomly initialised headless timm ViT of a named size."""
    return vit_spec(size, patch_size, img_size, **extra).create()

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

from biovfm_lib.models.sizes import VIT_SIZES


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

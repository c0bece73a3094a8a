"""One registry of ViT sizes, built with timm.

A size name maps to a timm architecture plus keyword overrides; the pair ``(timm_name,
timm_kwargs)`` is what checkpoints record, so ``timm.create_model(timm_name, **timm_kwargs)``
rebuilds any backbone of this project without importing it.

The feed-forward is the ViT's MLP, or DINOv2's ``swiglufused`` (its ViT-g, and the study's
DINOv2 ViT-H): ``SiLU(x W1) * (x W2)`` then ``W3``, with 2/3 of the MLP's hidden width rounded
up to a multiple of 8, so its three matrices cost what the MLP's two do. timm registers that
feed-forward with its DINOv2 ViT-g only, whose builder takes any width; naming it keeps the
record a plain timm architecture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
from torch import nn

from biovfm_lib.models.sizes import VIT_SIZES

FeedForward = Literal["mlp", "swiglufused"]
FEED_FORWARDS: tuple[str, ...] = ("mlp", "swiglufused")
SWIGLU_ARCH = "vit_giant_patch14_dinov2"  # timm's ViT with SwiGLUPacked and SiLU


@dataclass(frozen=True)
class VitSpec:
    """A buildable backbone description: what checkpoint sidecars store."""

    timm_name: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self, **overrides: Any) -> nn.Module:
        return timm.create_model(self.timm_name, **{**self.timm_kwargs, **overrides})


def mlp_ratio(hidden: int, embed_dim: int) -> float:
    """The ``mlp_ratio`` under which timm builds a feed-forward ``hidden`` wide: timm sizes it
    as ``int(embed_dim * mlp_ratio)``, so step up one ulp where the quotient rounds down."""
    ratio = hidden / embed_dim
    return ratio if int(embed_dim * ratio) == hidden else math.nextafter(ratio, math.inf)


def swiglu_hidden(embed_dim: int, ratio: float = 4.0) -> int:
    """DINOv2's ``SwiGLUFFNFused`` hidden width for an MLP of ``ratio`` (see the module notes)."""
    return (int(embed_dim * ratio * 2 / 3) + 7) // 8 * 8


def vit_spec(size: str, patch_size: int = 0, img_size: int = 224, ffn: FeedForward = "mlp",
             **extra: Any) -> VitSpec:
    """The spec of a headless ViT of a named size (``patch_size=0`` keeps the size's default)
    and feed-forward (``ffn``, see the module notes).

    ``extra`` passes timm ``VisionTransformer`` options through, e.g. ``init_values`` (layer
    scale, as DINOv2 uses), ``reg_tokens`` or ``drop_path_rate``.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose from {list(VIT_SIZES)}")
    if ffn not in FEED_FORWARDS:
        raise ValueError(f"unknown feed-forward {ffn!r}; choose from {list(FEED_FORWARDS)}")
    s = VIT_SIZES[size]
    kwargs = dict(
        img_size=img_size, patch_size=patch_size or s.patch_size, embed_dim=s.embed_dim,
        depth=s.depth, num_heads=s.num_heads, num_classes=0, **extra,
    )
    if ffn == "mlp":
        return VitSpec(s.timm_name, kwargs)
    # SwiGLUPacked holds W1 and W2 in one matrix: twice the hidden width
    ratio = mlp_ratio(2 * swiglu_hidden(s.embed_dim), s.embed_dim)
    return VitSpec(SWIGLU_ARCH, {"init_values": None, **kwargs, "mlp_ratio": ratio})


def create_vit(size: str, patch_size: int = 0, img_size: int = 224, ffn: FeedForward = "mlp",
               **extra: Any) -> nn.Module:
    """A randomly initialised headless timm ViT of a named size."""
    return vit_spec(size, patch_size, img_size, ffn, **extra).create()

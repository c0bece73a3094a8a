"""Position-table interpolation as the official codebases do it, for training and for loading.

A learned position table belongs to one patch grid; another input size needs the table on
another grid, and the rule changes what the model sees. Three rules meet in this project:

- DINOv2 (``dinov2/models/vision_transformer.py``, ``interpolate_pos_encoding``): bicubic,
  at every forward pass, with a *scale factor* of ``(n + offset) / M`` instead of an output
  size; ``interpolate_offset`` is 0.1 and there is no antialiasing in the default training
  config and the release backbones; the register releases use offset 0 (an output size) with
  antialiasing. The scale factor, not only the output size, sets where PyTorch samples, so an
  offset of 0.1 shifts every sample point: at 6 x 6 from 14 x 14 (DINOv2's 96 px local crops
  at patch 16) the table is a few percent away from a size-based resampling.
- MAE (``util/pos_embed.py``, ``interpolate_pos_embed``; the BioVFM evaluation applies the same
  function to every checkpoint it loads): bicubic to an output size, no antialiasing, prefix
  tokens kept, once at load time.
- timm (``resample_abs_pos_embed``): bicubic to an output size *with* antialiasing, which
  only differs from MAE's rule when the grid shrinks.

Here are the first two as pure functions on a table, and :func:`use_dinov2_pos_interpolation`,
which makes a timm ViT (or the masked wrapper around it) apply DINOv2's rule at run time.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The attribute of a timm ViT that records the installed rule (plain data: deep copies,
# state dicts and FSDP leave it alone).
_ATTR = "dinov2_pos_interpolation"


@dataclass(frozen=True)
class DINOv2PosInterpolation:
    """DINOv2's two interpolation settings (``interpolate_offset``, ``interpolate_antialias``).

    The defaults are ``ssl_default_config.yaml``'s and the non-register releases'; the register
    releases (``dinov2_vit*14_reg``) use :data:`DINOV2_REGISTER_INTERPOLATION`.
    """

    offset: float = 0.1
    antialias: bool = False


DINOV2_INTERPOLATION = DINOv2PosInterpolation()
DINOV2_REGISTER_INTERPOLATION = DINOv2PosInterpolation(offset=0.0, antialias=True)


def _split_square(pos_embed: Tensor, num_prefix_tokens: int) -> tuple[Tensor, Tensor, int]:
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"a position table of {patches.shape[1]} patch entries is not a square "
                         f"grid (prefix tokens: {num_prefix_tokens})")
    return prefix, patches, side


def _to_grid(patches: Tensor, side: int) -> Tensor:
    return patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)


def _from_grid(grid: Tensor, prefix: Tensor) -> Tensor:
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).flatten(1, 2).to(prefix.dtype)], dim=1)


def interpolate_pos_embed_dinov2(pos_embed: Tensor, grid: tuple[int, int],
                                 num_prefix_tokens: int = 1,
                                 settings: DINOv2PosInterpolation = DINOV2_INTERPOLATION
                                 ) -> Tensor:
    """``pos_embed`` (1, prefix + M*M, D) on a ``grid`` of (rows, columns), as DINOv2 does.

    With an offset, PyTorch's bicubic kernel samples source row ``(i + 0.5) * M / (rows +
    offset) - 0.5`` for output row ``i`` (and likewise for columns); without one it is given the
    output size. The table itself is returned where the grid is already M x M, as DINOv2 adds
    its table unchanged at its own size. Computed in float32, returned in the table's dtype;
    prefix entries (the class token's) are kept.
    """
    prefix, patches, side = _split_square(pos_embed, num_prefix_tokens)
    rows, cols = grid
    if (rows, cols) == (side, side):
        return pos_embed
    if settings.offset:
        size = {"scale_factor": ((rows + settings.offset) / side, (cols + settings.offset) / side)}
    else:
        size = {"size": (rows, cols)}
    out = F.interpolate(_to_grid(patches, side), mode="bicubic", antialias=settings.antialias,
                        **size)
    if tuple(out.shape[-2:]) != (rows, cols):  # DINOv2 asserts the same
        raise ValueError(f"offset {settings.offset} gives a {tuple(out.shape[-2:])} grid from "
                         f"{side} x {side}, not {grid}")
    return _from_grid(out, prefix)


def interpolate_pos_embed_mae(pos_embed: Tensor, grid: tuple[int, int],
                              num_prefix_tokens: int = 1) -> Tensor:
    """``pos_embed`` (1, prefix + M*M, D) on a ``grid``, as MAE's (and the BioVFM evaluation's)
    ``interpolate_pos_embed`` does at load time: bicubic to the output size, corners not
    aligned, no antialiasing, prefix entries kept; unchanged where the grid already fits."""
    prefix, patches, side = _split_square(pos_embed, num_prefix_tokens)
    if tuple(grid) == (side, side):
        return pos_embed
    out = F.interpolate(_to_grid(patches, side), size=tuple(grid), mode="bicubic",
                        align_corners=False)
    return _from_grid(out, prefix)


def _table_prefix(vit: nn.Module) -> int:
    """Prefix entries of a timm ViT's table: none where prefix tokens skip it (``no_embed_class``,
    timm's layout of DINOv2's register models)."""
    return 0 if vit.no_embed_class else vit.num_prefix_tokens


def dinov2_pos_embed(vit: nn.Module, grid: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """The table a ViT with DINOv2's rule installed adds on a ``grid``: its own table at its
    own grid, else the interpolated one in the tokens' ``dtype`` (DINOv2 casts it back to
    theirs, so under autocast a resampled table is added in bf16)."""
    settings: DINOv2PosInterpolation = getattr(vit, _ATTR)
    table = interpolate_pos_embed_dinov2(vit.pos_embed, grid, _table_prefix(vit), settings)
    return vit.pos_embed if table is vit.pos_embed else table.to(dtype)


def installed_dinov2_pos_interpolation(vit: nn.Module) -> DINOv2PosInterpolation | None:
    """The DINOv2 rule installed on a timm ViT, or None where it keeps timm's own."""
    return getattr(vit, _ATTR, None)


def _pos_embed(self: nn.Module, x: Tensor) -> Tensor:
    """timm ``VisionTransformer._pos_embed`` with DINOv2's table (layout otherwise timm's)."""
    if self.dynamic_img_size:
        b, h, w, c = x.shape
        x = x.view(b, h * w, c)
        grid = (h, w)
    else:
        grid = tuple(self.patch_embed.grid_size)
    prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token)
              if t is not None]
    pos = dinov2_pos_embed(self, grid, x.dtype)
    if self.no_embed_class:
        x = torch.cat([*prefix, x + pos], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + pos
    return self.pos_drop(x)


def use_dinov2_pos_interpolation(model: nn.Module,
                                 settings: DINOv2PosInterpolation = DINOV2_INTERPOLATION
                                 ) -> nn.Module:
    """Make a timm ViT (or ``ssl.vit.MaskedViT`` around one) resample its table DINOv2's way.

    Inputs at the model's own size are unaffected; other sizes (DINOv2's local crops) get
    :func:`interpolate_pos_embed_dinov2` instead of timm's size-based resampling. The model
    must be built with ``dynamic_img_size=True`` (without it timm accepts only its own size,
    and this would change nothing). Returns ``model``; its weights and state dict are as
    they were, so checkpoints and exports do not change.
    """
    vit = getattr(model, "vit", model)
    if vit.pos_embed is None or not vit.dynamic_img_size:
        raise ValueError("DINOv2's position interpolation needs a timm ViT with a position "
                         "table built with dynamic_img_size=True")
    setattr(vit, _ATTR, settings)
    vit._pos_embed = types.MethodType(_pos_embed, vit)
    return model

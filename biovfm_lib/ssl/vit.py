"""What both objectives need of a timm ViT: the masked-token wrapper, optimizer groups, FLOPs
and the fused-attention check."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from lightly.models.modules import MaskedVisionTransformerTIMM
from torch import Tensor, nn
from torch.nn import Parameter

from biovfm_lib.models.pos_embed import dinov2_pos_embed, installed_dinov2_pos_interpolation

# 3-d tensors that are embeddings, not weights: timm's ``no_weight_decay`` set plus the mask
# token. Everything 1-d (biases, norms, layer-scale gammas) is also left undecayed.
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token")


class MaskedViT(MaskedVisionTransformerTIMM):
    """lightly's masked-token wrapper of a timm ViT, whose activation checkpointing follows
    the timm model's own ``set_grad_checkpointing`` (what a timm-aware loop calls); lightly's
    wrapper otherwise keeps a separate flag, and the loop's switch would do nothing."""

    @property
    def grad_checkpointing(self) -> bool:
        return self.vit.grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool) -> None:
        self.vit.set_grad_checkpointing(enable)

    def add_pos_embed(self, x: Tensor) -> Tensor:
        """lightly's, unless DINOv2's interpolation is installed on the ViT
        (``models.pos_embed.use_dinov2_pos_interpolation``): lightly resamples the table
        itself, by size, so the ViT's own rule would never be reached through this wrapper.
        ``x`` holds the prefix tokens, then a square grid of patch tokens."""
        vit = self.vit
        if installed_dinov2_pos_interpolation(vit) is None:
            return super().add_pos_embed(x)
        n_prefix = vit.num_prefix_tokens
        side = math.isqrt(x.shape[1] - n_prefix)
        pos = dinov2_pos_embed(vit, (side, side), x.dtype)
        if vit.no_embed_class:
            x = torch.cat([x[:, :n_prefix], x[:, n_prefix:] + pos], dim=1)
        else:
            x = x + pos
        return vit.pos_drop(x)


def require_fused_attention(model: nn.Module) -> None:
    """Fail unless every timm attention layer uses ``F.scaled_dot_product_attention``.

    timm picks the fused kernel at construction unless ``TIMM_FUSED_ATTN=0`` (or an export
    mode) turned it off; the unfused path materialises the (tokens x tokens) matrix, which
    costs memory and speed at ViT-H scale, so a silent fallback is an error here.
    """
    slow = [name for name, m in model.named_modules() if getattr(m, "fused_attn", True) is False]
    if slow:
        raise RuntimeError(f"timm attention is not fused in {slow[:3]}...; unset TIMM_FUSED_ATTN")


def param_groups(model: nn.Module, vit: nn.Module, layer_decay: float = 1.0,
                 patch_embed_lr_mult: float = 1.0, embed_params: Iterable[Parameter] = (),
                 decay_embeddings: bool = False) -> list[dict]:
    """AdamW groups of ``model``'s trainable parameters with ``lr_scale`` and ``wd_scale``.

    Layer ids follow DINOv2's ``get_vit_lr_decay_rate``: 0 for the patch embedding, position
    embedding and tokens (``embed_params`` adds ones kept outside ``vit``, e.g. a mask token),
    ``i + 1`` for block ``i``, ``depth + 1`` for everything else (final norm, heads, decoder);
    ``lr_scale = layer_decay ** (depth + 1 - id)``, times ``patch_embed_lr_mult`` on the patch
    embedding. ``wd_scale`` is 0 for 1-d tensors (biases, norms, layer-scale gammas) and,
    unless ``decay_embeddings``, for the embeddings ``_NO_DECAY_NAMES``; ``decay_embeddings``
    is the official codes' rule (dinov2 exempts names ending ``.bias`` or holding ``norm`` or
    ``gamma``, MAE 1-d tensors and biases: on these models the 1-d tensors exactly).
    Parameters are matched by identity for the lr, so names of wrappers do not matter; groups
    are merged by equal scales.
    """
    depth = len(vit.blocks)
    layer = {id(p): 0 for p in [*vit.patch_embed.parameters(), *embed_params]}
    layer.update({id(p): 0 for p in (vit.pos_embed, vit.cls_token, vit.reg_token)
                  if p is not None})
    for i, block in enumerate(vit.blocks):
        layer.update({id(p): i + 1 for p in block.parameters()})
    patch_embed = {id(p) for p in vit.patch_embed.parameters()}
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_scale = layer_decay ** (depth + 1 - layer.get(id(p), depth + 1))
        lr_scale *= patch_embed_lr_mult if id(p) in patch_embed else 1.0
        exempt = not decay_embeddings and name.endswith(_NO_DECAY_NAMES)
        wd_scale = 0.0 if p.ndim <= 1 or exempt else 1.0
        group = groups.setdefault((lr_scale, wd_scale), {
            "params": [], "lr_scale": lr_scale, "wd_scale": wd_scale,
            "name": f"lr_scale={lr_scale:.4g}/wd_scale={wd_scale:g}"})
        group["params"].append(p)
    return list(groups.values())


def transformer_flops(dim: int, depth: int, mlp_per_token: float, n_tokens: float) -> float:
    """Forward matmul FLOPs of ``depth`` pre-norm blocks on one sequence of ``n_tokens``.

    Per block: qkv and output projections ``2 * 4 * dim**2`` and the feed-forward's
    ``mlp_per_token`` (:func:`linear_flops` of a block's ``mlp``: ``2 * 2 * dim * hidden`` for
    an MLP, ``16 * dim**2`` at ratio 4; ``2 * 3 * dim * hidden`` for SwiGLU's three matrices)
    per token, plus attention's two (tokens x tokens x dim) products ``4 * n_tokens**2 * dim``.
    Norms, softmax, activations and residuals are left out, as in the ``6 * params * tokens``
    rule this refines.
    """
    return depth * (n_tokens * (8 * dim * dim + mlp_per_token) + 4 * n_tokens ** 2 * dim)


def vit_flops(vit: nn.Module, n_tokens: float, n_patches: float) -> float:
    """Forward FLOPs of a timm ViT: patch embedding on ``n_patches`` plus blocks on ``n_tokens``
    (which may differ: MAE embeds every patch, then encodes the visible ones)."""
    proj = vit.patch_embed.proj
    patch_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    return (2 * n_patches * patch_in * vit.embed_dim
            + transformer_flops(vit.embed_dim, len(vit.blocks), linear_flops(vit.blocks[0].mlp),
                                n_tokens))


def linear_flops(module: nn.Module) -> float:
    """Forward FLOPs per token of ``module``'s linear layers (2 per multiply-add)."""
    return sum(2 * m.in_features * m.out_features for m in module.modules()
               if isinstance(m, nn.Linear))

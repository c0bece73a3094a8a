"""MAE (He et al., 2022) on a timm ViT: reconstruct the normalised pixels of hidden patches.

Follows facebookresearch/mae (``models_mae.py``, ``main_pretrain.py``, ``PRETRAIN.md``). From
lightly: ``MaskedVisionTransformerTIMM`` as the encoder wrapper (``vit.MaskedViT``; MAE's
init: xavier-uniform linears and patch embedding, fixed 2D sin-cos position embedding), the
decoder ``MaskedVisionTransformerDecoderTIMM`` (mask token, fixed sin-cos embedding, timm
blocks; the older ``MAEDecoderTIMM`` is deprecated), ``patchify`` (MAE's patch layout) and
``set_at_index``. Re-stated: the random masking (to draw it seeded at collate time, see
``masking``) and the loss (a few lines, so the norm-pix target is visible).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from lightly.models.modules.masked_vision_transformer_decoder_timm import (
    MaskedVisionTransformerDecoderTIMM,
)
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from lightly.models.utils import patchify, set_at_index
from torch import Tensor, nn

from biovfm_lib.models.factory import VitSpec, vit_spec
from biovfm_lib.models.sizes import VIT_SIZES
from biovfm_lib.ssl.masking import batch_seed, random_token_mask
from biovfm_lib.ssl.schedules import cosine, steps
from biovfm_lib.ssl.vit import (
    MaskedViT,
    linear_flops,
    param_groups,
    require_fused_attention,
    transformer_flops,
    vit_flops,
)

# decoder (width, heads) of the CPU smoke sizes, which have no official recipe
SMOKE_DECODERS = {"femto": (72, 3), "pico": (96, 3), "nano": (128, 4)}


@dataclass(frozen=True)
class MAEConfig:
    """MAE's pretraining recipe (the same for B/16, L/16 and H/14): 800 epochs with 40 of
    warm-up, effective batch 4096, base lr scaled by ``batch_size / 256`` (``batch_size`` is
    the global batch), no layer decay, no drop path, no gradient clipping, weight decay on
    every tensor but the 1-d ones (``add_weight_decay`` with an empty skip list: the class and
    mask tokens decay too).

    The warm-up counts ``warmup_epochs`` data epochs of ``epoch_length`` iterations (the
    training loop sets it: one pass over the data), so a run cut by ``max_steps`` keeps the
    official warm-up length; with ``epoch_length`` 0 it is ``warmup_frac`` of the run instead
    (the share 40 / 800 unless set: models built outside the loop, or a chosen share)."""

    size: str = "large"
    patch_size: int = 16
    img_size: int = 224
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    mask_seed: int = 0
    batch_size: int = 4096
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_epochs: float = 40
    epoch_length: int = 0  # iterations per data epoch; 0: the warm-up is warmup_frac of the run
    warmup_frac: float = 40 / 800
    weight_decay: float = 0.05
    # False exempts cls_token and the decoder's mask_token too (timm's no_weight_decay habit)
    decay_embeddings: bool = True
    clip_grad: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)

    @classmethod
    def for_size(cls, size: str, **overrides) -> MAEConfig:
        """The size's patch (16; 14 for ViT-H/14); the CPU smoke sizes run at 28 px with
        patch 4 and a 2-block decoder 1.5x as wide as the encoder (:data:`SMOKE_DECODERS`; a
        512 x 8 one would cost 50x a nano encoder)."""
        if size not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {size!r}; choose from {list(VIT_SIZES)}")
        recipe = {"patch_size": VIT_SIZES[size].patch_size}
        if size in SMOKE_DECODERS:  # no official recipe: a decoder in proportion
            dim, heads = SMOKE_DECODERS[size]
            recipe.update(img_size=28, decoder_dim=dim, decoder_depth=2, decoder_heads=heads)
        return replace(cls(), size=size, **{**recipe, **overrides})

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"image size {self.img_size} is not a multiple of the patch "
                             f"{self.patch_size}")
        if self.epoch_length < 0:
            raise ValueError(f"epoch_length must be >= 0, not {self.epoch_length}")


def masked_patch_loss(pred: Tensor, images: Tensor, mask: Tensor, patch_size: int,
                      norm_pix: bool = True) -> Tensor:
    """Mean squared error on the hidden patches only (MAE's ``forward_loss``).

    ``pred`` (B, L, patch_size**2 * C) in ``patchify`` order, ``mask`` (B, L) True where
    hidden. With ``norm_pix`` each target patch is standardised by its own mean and
    (unbiased) variance, the variant MAE reports as better representations.
    """
    target = patchify(images.float(), patch_size)
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAE(nn.Module):
    """Encoder on the visible 25% of patches, light decoder on all, loss on the hidden ones.

    Batch (see ``collate``): ``images`` (B, C, H, W), ``idx_keep`` (B, visible) patch indices
    and ``mask`` (B, patches), True where hidden.
    """

    def __init__(self, cfg: MAEConfig, total_steps: int) -> None:
        super().__init__()
        self.cfg, self.total_steps = cfg, total_steps
        self.clip_grad, self.betas = cfg.clip_grad, cfg.betas
        self.warmup_steps = (round(cfg.warmup_epochs * cfg.epoch_length) if cfg.epoch_length
                             else steps(cfg.warmup_frac, total_steps))
        self.spec: VitSpec = vit_spec(cfg.size, cfg.patch_size, cfg.img_size)
        vit = self.spec.create()
        self.backbone = MaskedViT(vit)  # lightly's MAE init, fixed sin-cos pos_embed
        self.backbone.mask_token.requires_grad_(False)  # the encoder never sees mask tokens
        n_patches = vit.patch_embed.num_patches
        self.decoder_embed = nn.Linear(vit.embed_dim, cfg.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            n_patches, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
            num_prefix_tokens=vit.num_prefix_tokens)
        patch_pixels = cfg.patch_size ** 2 * vit.patch_embed.proj.in_channels
        self.decoder_pred = nn.Linear(cfg.decoder_dim, patch_pixels)
        for layer in (self.decoder_embed, self.decoder_pred):
            init_weights(layer)
        require_fused_attention(self)

    # ------------------------------------------------------------------ schedules
    def phases(self) -> dict[str, int]:
        """The warm-up and its length in iterations, so the loop can say when a run ends
        before it does."""
        return {"lr warm-up": self.warmup_steps}

    def lr(self, step: int) -> float:
        """MAE's ``adjust_learning_rate`` per iteration: linear warm-up to ``blr * batch /
        256``, then a half cosine to ``min_lr`` over the rest of the run."""
        peak = self.cfg.base_lr * self.cfg.batch_size / 256
        return cosine(step, self.total_steps, peak, self.cfg.min_lr, self.warmup_steps)

    def weight_decay(self, step: int) -> float:
        return self.cfg.weight_decay

    # ------------------------------------------------------------------ training hooks
    def param_groups(self) -> list[dict]:
        return param_groups(self, self.backbone.vit,
                            decay_embeddings=self.cfg.decay_embeddings)

    def before_optimizer_step(self, step: int) -> None:
        """Nothing to do: MAE has no frozen-layer phase."""

    def after_optimizer_step(self, step: int) -> None:
        """Nothing to do: MAE has no teacher."""

    def backbone_for_export(self) -> nn.Module:
        return self.backbone.vit

    # ------------------------------------------------------------------ data
    def collate(self, samples: list[Tensor]) -> dict[str, Tensor]:
        """Stack the images and draw each one's random mask, seeded by ``(cfg.mask_seed, the
        images)`` (see ``masking``), so a resumed run hides the same patches."""
        images = torch.stack(samples)
        generator = torch.Generator().manual_seed(batch_seed(self.cfg.mask_seed, images))
        n_patches = (self.cfg.img_size // self.cfg.patch_size) ** 2
        idx_keep, mask = random_token_mask(len(images), n_patches, self.cfg.mask_ratio, generator)
        return {"images": images, "idx_keep": idx_keep, "mask": mask}

    # ------------------------------------------------------------------ objective
    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        images, idx_keep, mask = batch["images"], batch["idx_keep"], batch["mask"]
        n_prefix = self.backbone.vit.num_prefix_tokens
        prefix = torch.arange(n_prefix, device=idx_keep.device).expand(len(idx_keep), -1)
        keep = torch.cat([prefix, idx_keep + n_prefix], dim=1)  # prefix tokens always kept
        x = self.decoder_embed(self.backbone.encode(images, idx_keep=keep))
        # Hidden positions get the mask token, visible ones their encoding (MAE's unshuffle).
        tokens = self.decoder.mask_token.to(x.dtype).expand(len(x), self.decoder.sequence_length,
                                                            -1)
        pred = self.decoder_pred(self.decoder(set_at_index(tokens, keep, x))[:, n_prefix:])
        loss = masked_patch_loss(pred, images, mask, self.cfg.patch_size, self.cfg.norm_pix_loss)
        # spread of each predicted pixel across patches and images (no host sync)
        return {"loss": loss, "pred_std": pred.detach().float().flatten(0, 1).std(0).mean()}

    def collapse_stats(self, out: dict[str, Tensor]) -> dict[str, float]:
        """``pred_std``: how much each predicted (normalised) pixel varies across patches and
        images; the targets have unit variance, so a value near 0 means the decoder predicts
        one constant patch whatever the encoder sees."""
        return {"pred_std": float(out["pred_std"])}

    def flops_per_sample(self) -> float:
        """Matmul FLOPs of one image, forward + backward (``3 x`` forward).

        Forward = patch embedding of all L patches + encoder blocks on the visible
        ``int(L * (1 - mask_ratio)) + 1`` tokens (``vit_flops``), decoder embedding of those,
        decoder blocks on L + 1 tokens (``transformer_flops``) and the pixel head on the L
        patches (MAE predicts every patch and scores the hidden ones).
        """
        vit = self.backbone.vit
        n_patches = vit.patch_embed.num_patches
        n_visible = int(n_patches * (1 - self.cfg.mask_ratio)) + vit.num_prefix_tokens
        n_all = n_patches + vit.num_prefix_tokens
        decoder_mlp = linear_flops(self.decoder.blocks[0].mlp)
        forward = (vit_flops(vit, n_visible, n_patches)
                   + n_visible * linear_flops(self.decoder_embed)
                   + transformer_flops(self.cfg.decoder_dim, self.cfg.decoder_depth, decoder_mlp,
                                       n_all)
                   + n_patches * linear_flops(self.decoder_pred))
        return 3 * forward

"""DINOv2 (Oquab et al., 2023) on a timm ViT: DINO + iBOT + KoLeo with an EMA teacher.

Follows facebookresearch/dinov2 (``ssl_meta_arch.py``, ``loss/``, ``ssl_default_config.yaml``,
``train/train.py``, ``utils/param_groups.py``, ``train/vitl14.yaml``/``vitg14.yaml``).

Two recipes (``DINOV2_RECIPES``): ``study``, the default, is what the BioVFM study ran (its
model builder: dinov2's default config at patch 16 for ViT-T/S/B/L, with drop path 0.3, and
patch 14 with drop path 0.4 for ViT-H), with the official mechanics: epochs of
``OFFICIAL_EPOCH_LENGTH`` iterations, weight decay on the position embedding and tokens,
gradients clipped per student module, blur at the rates the code applies, DINOv2's own
position-table interpolation. ``dinov2_p14`` is this workbook's earlier recipe: patch 14,
Sinkhorn-Knopp centering, weight decay to 0.2, 98 px local crops, schedules as shares of the
run, embeddings exempt from weight decay, one global gradient norm, the stated blur rates and
timm's interpolation. From lightly: the masked-token ViT wrapper, the
projection head (3-layer MLP, weight-normed last layer with trainable gain, as DINOv2's
``DINOHead``), KoLeo (run here in fp32, as DINOv2 disables autocast for it), the EMA centre,
uniform drop path and the momentum update. Re-stated here: the DINO and iBOT cross-entropies,
because lightly's ``DINOLoss``/``IBOTPatchLoss`` soften the teacher with an EMA centre inside
the loss and so cannot take Sinkhorn-Knopp targets; and Sinkhorn-Knopp itself, which lightly
has only in SwAV/MSN forms (no DINOv2 global-count normalisation).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.loss import KoLeoLoss
from lightly.models.modules.center import Center
from lightly.models.modules.heads import DINOv2ProjectionHead
from lightly.models.utils import update_drop_path_rate, update_momentum
from torch import Tensor, nn

from biovfm_lib.data.ssl_transforms import DINOV2_CODE_BLUR_P, DINOV2_RECIPE_BLUR_P
from biovfm_lib.models.factory import FEED_FORWARDS, VitSpec, vit_spec
from biovfm_lib.models.pos_embed import use_dinov2_pos_interpolation
from biovfm_lib.ssl.masking import batch_seed, ibot_masks
from biovfm_lib.ssl.schedules import cosine, steps
from biovfm_lib.ssl.vit import (
    MaskedViT,
    linear_flops,
    param_groups,
    require_fused_attention,
    vit_flops,
)

DINOV2_RECIPES = ("study", "dinov2_p14")
OFFICIAL_EPOCH_LENGTH = 1250  # dinov2's train.OFFICIAL_EPOCH_LENGTH: iterations per "epoch"

# femto, pico and nano are the CPU smoke sizes of both recipes (no official counterpart): 28 px
# at patch 4, small heads, drop path 0.1 over their 2 to 4 blocks.
_NANO = {"patch_size": 4, "global_crop_size": 28, "local_crop_size": 12, "drop_path_rate": 0.1,
         "n_prototypes": 1024, "ibot_n_prototypes": 1024, "head_hidden_dim": 256,
         "head_bottleneck_dim": 64, "ibot_bottleneck_dim": 64}

# What each recipe changes of the dataclass defaults (= the study's), then by size.
_RECIPE_BASE: dict[str, dict] = {
    "study": {},
    "dinov2_p14": {"patch_size": 14, "local_crop_size": 98, "centering": "sinkhorn",
                   "weight_decay_end": 0.2, "epoch_length": 0, "decay_embeddings": False,
                   "clip_per_module": False, "blur_p": DINOV2_RECIPE_BLUR_P,
                   "pos_interpolation": "timm"},
}
# study: the study's builder sets patch 16 and uniform drop path 0.3 for T/S/B/L, patch 14,
# 0.4 and the SwiGLU feed-forward (swiglufused) for ViT-H, on the default config (ViT-H's local
# crops are 98 px: 96 is no multiple of 14; dinov2's patch-14 configs use 98). dinov2_p14:
# S/B have no pretraining config of their own (DINOv2 distils them), so they take the default
# recipe with drop path 0.1; L is ssl_default_config; H/14 takes vitl14/vitg14.yaml, the recipe
# of DINOv2's own long runs at patch 14 (500 epochs: warm-up 80, teacher-temperature warm-up
# 30, last layer frozen 1; swiglufused).
_SIZE_RECIPES: dict[str, dict[str, dict]] = {
    "study": {"femto": _NANO, "pico": _NANO, "nano": _NANO, "tiny": {}, "small": {},
              "base": {}, "large": {},
              "huge": {"patch_size": 14, "local_crop_size": 98, "drop_path_rate": 0.4,
                       "ffn_layer": "swiglufused"}},
    "dinov2_p14": {
        "femto": _NANO,
        "pico": _NANO,
        "nano": _NANO,
        "tiny": {"drop_path_rate": 0.1},
        "small": {"drop_path_rate": 0.1},
        "base": {"drop_path_rate": 0.1},
        "large": {"drop_path_rate": 0.3},
        "huge": {"drop_path_rate": 0.4, "ffn_layer": "swiglufused", "layer_decay": 1.0,
                 "base_lr": 2e-4,
                 "momentum_teacher": 0.994, "n_prototypes": 131072, "head_bottleneck_dim": 384,
                 "ibot_separate_head": True, "ibot_n_prototypes": 131072,
                 "warmup_frac": 80 / 500, "teacher_temp_warmup_frac": 30 / 500,
                 "freeze_last_layer_frac": 1 / 500},
    },
}


@dataclass(frozen=True)
class DINOv2Config:
    """The study's recipe: dinov2's ``ssl_default_config.yaml`` (ViT-L/16, EMA centering,
    weight decay 0.04 -> 0.4, 2 x 224 + 8 x 96 px crops) with the official training mechanics.
    ``for_size`` gives it per size, or the ``dinov2_p14`` variant; ``batch_size`` is the
    global batch the lr scales with."""

    size: str = "large"
    recipe: str = "study"  # the name a checkpoint's sidecar records (DINOV2_RECIPES)
    patch_size: int = 16
    global_crop_size: int = 224
    local_crop_size: int = 96
    n_local_crops: int = 8
    layerscale: float = 1e-5
    ffn_layer: str = "mlp"  # dinov2's student.ffn_layer: mlp or swiglufused (FEED_FORWARDS)
    drop_path_rate: float = 0.3  # the same in every block (drop_path_uniform)
    n_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    ibot_separate_head: bool = False
    ibot_n_prototypes: int = 65536  # ibot_* head sizes apply to a separate head only
    ibot_bottleneck_dim: int = 256
    dino_loss_weight: float = 1.0
    ibot_loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    centering: str = "centering"  # EMA centre (momentum center_momentum), or "sinkhorn"
    sinkhorn_iterations: int = 3
    center_momentum: float = 0.9
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.04
    teacher_temp_warmup_frac: float = 0.3
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_seed: int = 0
    batch_size: int = 1024
    base_lr: float = 4e-3  # at batch 1024, scaled by sqrt(batch_size / 1024)
    min_lr: float = 1e-6
    # Warm-ups: with epoch_length > 0 an epoch is that many iterations (the official
    # OFFICIAL_EPOCH_LENGTH), so a run of any length, cut or not, warms up for the official
    # number of iterations; with 0 they are shares of the run (the *_frac fields).
    epoch_length: int = OFFICIAL_EPOCH_LENGTH
    warmup_epochs: float = 10
    teacher_temp_warmup_epochs: float = 30
    freeze_last_layer_epochs: float = 1
    warmup_frac: float = 0.1  # and teacher_temp_warmup_frac above
    freeze_last_layer_frac: float = 0.01
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    # dinov2's param groups decay pos_embed, cls/mask/register tokens (only biases, norms and
    # layer-scale gammas are exempt); False exempts those embeddings too
    decay_embeddings: bool = True
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    momentum_teacher: float = 0.992
    momentum_teacher_end: float = 1.0
    clip_grad: float = 3.0
    clip_per_module: bool = True  # each student module to clip_grad (official), else one norm
    betas: tuple[float, float] = (0.9, 0.999)
    # Gaussian-blur probabilities of global crop 1, global crop 2 and the local crops
    blur_p: tuple[float, float, float] = DINOV2_CODE_BLUR_P
    # the position table at another grid (local crops): "dinov2" = the official ViT's
    # (bicubic, offset 0.1, no antialias), "timm" = timm's size-based resampling
    pos_interpolation: str = "dinov2"

    @classmethod
    def for_size(cls, size: str, recipe: str = "study", **overrides) -> DINOv2Config:
        """``recipe`` (``DINOV2_RECIPES``) for a ViT size (``_SIZE_RECIPES``), then
        ``overrides``."""
        if recipe not in _SIZE_RECIPES:
            raise ValueError(f"unknown DINOv2 recipe {recipe!r}; choose from {DINOV2_RECIPES}")
        if size not in _SIZE_RECIPES[recipe]:
            raise ValueError(f"unknown ViT size {size!r}; choose from "
                             f"{list(_SIZE_RECIPES[recipe])}")
        return replace(cls(), size=size, recipe=recipe,
                       **{**_RECIPE_BASE[recipe], **_SIZE_RECIPES[recipe][size], **overrides})

    def __post_init__(self) -> None:
        for crop in (self.global_crop_size, self.local_crop_size):
            if crop % self.patch_size:
                raise ValueError(f"crop size {crop} is not a multiple of patch {self.patch_size}")
        if self.recipe not in DINOV2_RECIPES:
            raise ValueError(f"recipe must be one of {DINOV2_RECIPES}, not {self.recipe!r}")
        if self.centering not in ("sinkhorn", "centering"):
            raise ValueError(f"centering must be 'sinkhorn' or 'centering', not {self.centering!r}")
        if self.pos_interpolation not in ("dinov2", "timm"):
            raise ValueError(f"pos_interpolation must be 'dinov2' or 'timm', not "
                             f"{self.pos_interpolation!r}")
        if self.epoch_length < 0:
            raise ValueError(f"epoch_length must be >= 0, not {self.epoch_length}")
        if self.ffn_layer not in FEED_FORWARDS:
            raise ValueError(f"ffn_layer must be one of {FEED_FORWARDS}, not {self.ffn_layer!r}")


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, n_iterations: int = 3) -> Tensor:
    """Teacher targets (rows = samples) with equal prototype mass over the global batch.

    DINOv2's ``sinkhorn_knopp_teacher`` (SwAV's algorithm): normalise ``exp(logits / temp)``
    to total mass 1, then alternately scale each prototype to mass 1/K (sums across ranks)
    and each sample to 1/B (B = global count); each returned row sums to 1, each prototype to
    ~B/K (exactly in the limit). Run in the log domain: the same numbers, but no fp32
    overflow (official: exp(logit / 0.04) > 3e38 once a logit passes ~3.5) and no 0/0.
    """
    log_q = logits.float() / temp
    n_samples = torch.tensor(float(len(log_q)), device=log_q.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n_samples)
    log_q -= _logsumexp_across_ranks(log_q, dim=None)
    for _ in range(n_iterations):
        log_q -= _logsumexp_across_ranks(log_q, dim=0) + math.log(log_q.shape[1])
        log_q -= log_q.logsumexp(dim=1, keepdim=True) + n_samples.log()
    return (log_q + n_samples.log()).exp_()


def _logsumexp_across_ranks(x: Tensor, dim: int | None) -> Tensor:
    """logsumexp over ``dim`` (every element when None) of ``x`` on all ranks together."""
    distributed = dist.is_available() and dist.is_initialized()
    top = x.amax() if dim is None else x.amax(dim=dim, keepdim=True)
    if distributed:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    shifted = (x - top).exp_()
    total = shifted.sum() if dim is None else shifted.sum(dim=dim, keepdim=True)
    if distributed:
        dist.all_reduce(total)
    return total.log() + top


def dino_loss(teacher_probs: Tensor, student_logits: Tensor, temp: float
              ) -> tuple[Tensor, Tensor]:
    """DINOv2's DINO cross-entropy, split into (global-crop, local-crop) parts.

    ``teacher_probs`` (2, B, K) are the targets of the two global crops, ``student_logits``
    (2 + n, B, K) the student's crops, globals first. Student global crop i meets teacher crop
    1 - i, each local crop meets both; every pair's batch-mean cross-entropy is summed and
    divided by DINOv2's term count ``2 + max(2n, 1)``: the number of pairs, 2n + 2, except
    without local crops, where the official code still counts one local term (3, not 2).
    """
    log_p = F.log_softmax(student_logits.float() / temp, dim=-1)
    n_pairs = 2 + max(2 * (len(student_logits) - 2), 1)
    global_part = -(teacher_probs.flip(0) * log_p[:2]).sum(-1).mean(-1).sum() / n_pairs
    local_part = -torch.einsum("tbk,sbk->", teacher_probs, log_p[2:])
    return global_part, local_part / (teacher_probs.shape[1] * n_pairs)


def ibot_loss(teacher_probs: Tensor, student_logits: Tensor, masks: Tensor,
              mask_indices: Tensor, temp: float) -> Tensor:
    """DINOv2's iBOT masked-patch cross-entropy (``forward_masked``).

    ``teacher_probs``/``student_logits`` (M, K) belong to the M masked tokens, in the order of
    ``mask_indices`` (flat positions in ``masks``, (2B, patches)). Each image's tokens are
    averaged, the images summed and divided by all 2B global crops (unmasked ones add 0).
    """
    weights = (1 / masks.sum(1).clamp(min=1)).unsqueeze(1).expand_as(masks)
    ce = -(teacher_probs * F.log_softmax(student_logits.float() / temp, dim=-1)).sum(-1)
    return (ce * weights.flatten()[mask_indices]).sum() / len(masks)


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def koleo(x: Tensor) -> Tensor:
    """KoLeo entropy estimate -mean log(nearest-neighbour distance) of L2-normalised rows,
    lightly's (= DINOv2's) loss computed in fp32, as DINOv2 does under mixed precision."""
    with torch.autocast(x.device.type, enabled=False):
        return KoLeoLoss()(x.float())


class DINOv2(nn.Module):
    """Student (trained) and teacher (EMA of the student) of backbone + DINO (+ iBOT) heads.

    Batch (see ``collate``): ``global_crops`` (2B, C, G, G) crop-major (all first crops, then
    all second crops), ``local_crops`` (nB, C, L, L), ``masks`` (2B, patches) for the student's
    global crops and ``mask_indices``, their flat nonzero positions (precomputed so the forward
    needs no host sync).
    """

    def __init__(self, cfg: DINOv2Config, total_steps: int) -> None:
        super().__init__()
        self.cfg, self.total_steps = cfg, total_steps
        # the loop clips one global norm to ``clip_grad``; per-module clipping happens in
        # before_optimizer_step instead, and the loop then only measures the global norm
        self.clip_grad = None if cfg.clip_per_module else cfg.clip_grad
        self.betas = cfg.betas
        self.warmup_steps = self._phase(cfg.warmup_epochs, cfg.warmup_frac)
        self.teacher_temp_warmup_steps = self._phase(cfg.teacher_temp_warmup_epochs,
                                                     cfg.teacher_temp_warmup_frac)
        self.freeze_last_layer_steps = self._phase(cfg.freeze_last_layer_epochs,
                                                   cfg.freeze_last_layer_frac)
        self.spec: VitSpec = vit_spec(cfg.size, cfg.patch_size, cfg.global_crop_size,
                                      cfg.ffn_layer, init_values=cfg.layerscale)
        self.student, self.teacher = self._build(), self._build()
        self.teacher.load_state_dict(self.student.state_dict())  # deepcopy fails on weight_norm
        self.teacher.requires_grad_(False)
        update_drop_path_rate(self.student.backbone.vit, cfg.drop_path_rate, mode="uniform")
        require_fused_attention(self)
        self.dino_center = self.ibot_center = None
        if cfg.centering == "centering":
            ibot_k = cfg.ibot_n_prototypes if cfg.ibot_separate_head else cfg.n_prototypes
            self.dino_center = Center((1, cfg.n_prototypes), momentum=cfg.center_momentum)
            self.ibot_center = Center((1, ibot_k), momentum=cfg.center_momentum)

    def _build(self) -> nn.ModuleDict:
        cfg = self.cfg
        # timm's init is DINOv2's (trunc-normal 0.02, learned pos_embed), so lightly's MAE
        # init is skipped; dynamic size lets the local crops use the interpolated pos_embed,
        # resampled DINOv2's way (offset 0.1, bicubic, no antialias) or timm's by size.
        vit = self.spec.create(dynamic_img_size=True)
        backbone = MaskedViT(vit, weight_initialization="skip", pos_embed_initialization="skip",
                             antialias=False)
        if cfg.pos_interpolation == "dinov2":
            use_dinov2_pos_interpolation(backbone)
        parts = {
            "backbone": backbone,
            "dino_head": DINOv2ProjectionHead(vit.embed_dim, cfg.head_hidden_dim,
                                              cfg.head_bottleneck_dim, cfg.n_prototypes),
        }
        if cfg.ibot_separate_head:
            parts["ibot_head"] = DINOv2ProjectionHead(vit.embed_dim, cfg.head_hidden_dim,
                                                      cfg.ibot_bottleneck_dim,
                                                      cfg.ibot_n_prototypes)
        return nn.ModuleDict(parts)

    # ------------------------------------------------------------------ schedules
    def _phase(self, epochs: float, frac: float) -> int:
        """A warm-up's length in iterations: ``epochs`` of ``epoch_length`` iterations, as
        dinov2 counts them whatever the run's length, or (``epoch_length`` 0) ``frac`` of
        this run."""
        if self.cfg.epoch_length:
            return round(epochs * self.cfg.epoch_length)
        return steps(frac, self.total_steps)

    def phases(self) -> dict[str, int]:
        """The warm-up phases and their lengths in iterations, so the loop can say when a
        run ends before one of them does."""
        return {"lr warm-up": self.warmup_steps,
                "teacher-temperature warm-up": self.teacher_temp_warmup_steps,
                "last-layer freeze": self.freeze_last_layer_steps}

    def lr(self, step: int) -> float:
        peak = self.cfg.base_lr * math.sqrt(self.cfg.batch_size / 1024)
        return cosine(step, self.total_steps, peak, self.cfg.min_lr, self.warmup_steps)

    def weight_decay(self, step: int) -> float:
        return cosine(step, self.total_steps, self.cfg.weight_decay, self.cfg.weight_decay_end)

    def momentum(self, step: int) -> float:
        return cosine(step, self.total_steps, self.cfg.momentum_teacher,
                      self.cfg.momentum_teacher_end)

    def teacher_temp(self, step: int) -> float:
        return cosine(step, self.total_steps, self.cfg.teacher_temp, self.cfg.teacher_temp,
                      self.teacher_temp_warmup_steps, self.cfg.teacher_temp_warmup)

    # ------------------------------------------------------------------ training hooks
    def param_groups(self) -> list[dict]:
        """The student's AdamW groups (``vit.param_groups``), the heads' last layers in groups
        of their own with ``frozen_steps``: the loop gives them lr 0 for that many steps, as
        dinov2's last-layer lr schedule does. AdamW still updates their moments from the
        gradients meanwhile (and decays nothing: decoupled decay scales with the lr), so the
        first update after the freeze is the official one."""
        backbone = self.student.backbone
        groups = param_groups(self.student, backbone.vit, self.cfg.layer_decay,
                              self.cfg.patch_embed_lr_mult, [backbone.mask_token],
                              decay_embeddings=self.cfg.decay_embeddings)
        last = {id(p) for name, module in self.student.named_children() if name.endswith("_head")
                for p in module.last_layer.parameters()}
        split = []
        for group in groups:
            for is_last in (False, True):
                params = [p for p in group["params"] if (id(p) in last) == is_last]
                if params:
                    split.append({**group, "params": params,
                                  "frozen_steps": self.freeze_last_layer_steps if is_last else 0,
                                  "name": group["name"] + ("/last_layer" if is_last else "")})
        return split

    def before_optimizer_step(self, step: int) -> None:
        """With ``clip_per_module``, clip the backbone's and each head's gradient to
        ``clip_grad`` separately, as dinov2's training loop clips each student module."""
        if self.cfg.clip_per_module and self.cfg.clip_grad:
            for module in self.student.values():
                nn.utils.clip_grad_norm_(module.parameters(), self.cfg.clip_grad)

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        update_momentum(self.student, self.teacher, self.momentum(step))

    def backbone_for_export(self) -> nn.Module:
        return self.teacher.backbone.vit

    # ------------------------------------------------------------------ data
    def collate(self, samples: list[list[Tensor]]) -> dict[str, Tensor]:
        """Stack ``[global_1, global_2, local_1..local_n]`` per sample crop-major and draw the
        iBOT masks of the global crops, seeded by ``(cfg.mask_seed, the global crops)``."""
        cfg = self.cfg
        n_crops = 2 + cfg.n_local_crops
        if any(len(s) != n_crops for s in samples):
            raise ValueError(f"each sample must hold 2 global + {cfg.n_local_crops} local crops")
        global_crops = torch.stack([s[i] for i in range(2) for s in samples])
        local_crops = torch.stack([s[i] for i in range(2, n_crops) for s in samples]) \
            if cfg.n_local_crops else global_crops.new_zeros(0, global_crops.shape[1],
                                                             cfg.local_crop_size,
                                                             cfg.local_crop_size)
        rng = random.Random(batch_seed(cfg.mask_seed, global_crops))
        masks = ibot_masks(len(global_crops), cfg.global_crop_size // cfg.patch_size,
                           cfg.mask_probability, cfg.mask_ratio, rng)
        return {"global_crops": global_crops, "local_crops": local_crops, "masks": masks,
                "mask_indices": masks.flatten().nonzero().squeeze(1)}

    # ------------------------------------------------------------------ objective
    def _heads(self, model: nn.ModuleDict, cls: Tensor, patches: Tensor) -> tuple[Tensor, Tensor]:
        """DINO logits of CLS tokens and iBOT logits of masked patch tokens; a shared head
        takes both in one call, as DINOv2 does."""
        if "ibot_head" in model:
            return model.dino_head(cls), model.ibot_head(patches)
        out = model.dino_head(torch.cat([cls, patches]))
        return out[:len(cls)], out[len(cls):]

    def _targets(self, logits: Tensor, temp: float, center: Center | None) -> Tensor:
        """Teacher probabilities: Sinkhorn-Knopp, or softmax around the EMA centre (which is
        then updated with this batch, as DINOv2 applies the previous centre)."""
        if center is None:
            return sinkhorn_knopp(logits, temp, self.cfg.sinkhorn_iterations)
        probs = F.softmax((logits.float() - center.value) / temp, dim=-1)
        center.update(logits.float())
        return probs

    def forward(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """All terms with DINOv2's weights and normalisation; KoLeo is taken per global crop
        (never between two crops of one image) and summed."""
        cfg = self.cfg
        global_crops, masks = batch["global_crops"], batch["masks"]
        mask_indices = batch["mask_indices"]
        batch_size, n_local = len(global_crops) // 2, cfg.n_local_crops
        n_prefix = self.student.backbone.vit.num_prefix_tokens
        temp = self.teacher_temp(step)
        warmup = self.warmup_steps

        with torch.no_grad():
            tokens = self.teacher.backbone.encode(global_crops)
            patches = tokens[:, n_prefix:].flatten(0, 1)[mask_indices]
            t_cls, t_patch = self._heads(self.teacher, tokens[:, 0], patches)
            t_cls = self._targets(t_cls, temp, self.dino_center).view(2, batch_size, -1)
            t_patch = self._targets(t_patch, temp, self.ibot_center)

        prefix_mask = masks.new_zeros(len(masks), n_prefix)
        tokens = self.student.backbone.encode(global_crops,
                                              mask=torch.cat([prefix_mask, masks], dim=1))
        cls_global = tokens[:, 0]
        cls = [cls_global]
        if n_local:
            cls.append(self.student.backbone.encode(batch["local_crops"])[:, 0])
        patches = tokens[:, n_prefix:].flatten(0, 1)[mask_indices]
        s_cls, s_patch = self._heads(self.student, torch.cat(cls), patches)

        s_cls = s_cls.view(2 + n_local, batch_size, -1)
        dino_global, dino_local = dino_loss(t_cls, s_cls, cfg.student_temp)
        ibot = ibot_loss(t_patch, s_patch, masks, mask_indices, cfg.student_temp)
        koleo_loss = cfg.koleo_loss_weight * sum(koleo(c) for c in cls_global.chunk(2))
        loss = (cfg.dino_loss_weight * (dino_global + dino_local)
                + cfg.ibot_loss_weight * ibot + koleo_loss)

        with torch.no_grad():  # collapse monitors, see collapse_stats
            probs = t_cls.flatten(0, 1)
            feats = F.normalize(cls_global.float(), dim=-1)
            monitors = {
                "teacher_entropy": _entropy(probs).mean() / math.log(probs.shape[-1]),
                "teacher_marginal_entropy": _entropy(probs.mean(0)) / math.log(probs.shape[-1]),
                "student_feature_std": feats.std(0).mean() * math.sqrt(feats.shape[-1]),
                "warmup_progress": loss.new_tensor(min(1.0, step / warmup) if warmup else 1.0),
                "teacher_temp": loss.new_tensor(temp),
                "momentum": loss.new_tensor(self.momentum(step)),
            }
        terms = {"dino_global_loss": dino_global, "dino_local_loss": dino_local,
                 "ibot_loss": ibot, "koleo_loss": koleo_loss}
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}, **monitors}

    def collapse_stats(self, out: dict[str, Tensor]) -> dict[str, float]:
        """Signals of the two DINO collapses (Caron et al., 2021), each in [0, ~1]:
        ``teacher_entropy`` (per-sample, / log K) near 1 = uniform collapse;
        ``teacher_marginal_entropy`` (of the batch-mean distribution, / log K) near 0 = one
        prototype wins (Sinkhorn holds it near 1 by construction); ``student_feature_std``
        (std over the batch of unit CLS features x sqrt(dim), ~1 when spread) near 0 =
        constant features. The latter only once the lr warm-up is over: with layer scale 1e-5
        DINOv2 *starts* with input-independent CLS features (std ~1e-5) and leaves that state
        during the warm-up, so earlier it cannot tell collapse from initialisation."""
        stats = {k: float(out[k]) for k in ("teacher_entropy", "teacher_marginal_entropy")}
        if float(out["warmup_progress"]) >= 1:
            stats["student_feature_std"] = float(out["student_feature_std"])
        return stats

    def flops_per_sample(self) -> float:
        """Matmul FLOPs of one image (2 global + n local crops), forward + backward.

        ``3 * student + teacher`` (backward = 2 x forward; the teacher only runs forward), with
        student = 2 ViT(global) + n ViT(local) + DINO head on 2 + n CLS + iBOT head on the
        expected masked tokens (2 * mask_probability * mean mask ratio * patches), teacher =
        2 ViT(global) + heads on 2 CLS and the same masked tokens. ViT = ``vit_flops``
        (2 * params * tokens per matmul + 4 * tokens**2 * dim attention per block); a head is
        2 * params per token. Losses, Sinkhorn and KoLeo are not counted (< 0.1%).
        """
        cfg, vit = self.cfg, self.student.backbone.vit
        n_global = (cfg.global_crop_size // cfg.patch_size) ** 2
        n_local = (cfg.local_crop_size // cfg.patch_size) ** 2
        masked = 2 * cfg.mask_probability * sum(cfg.mask_ratio) / 2 * n_global
        dino_head, ibot_head = (linear_flops(self.student[h]) for h in
                                ("dino_head", "ibot_head" if cfg.ibot_separate_head
                                 else "dino_head"))
        vit_global = vit_flops(vit, n_global + vit.num_prefix_tokens, n_global)
        vit_local = vit_flops(vit, n_local + vit.num_prefix_tokens, n_local)
        teacher = 2 * vit_global + 2 * dino_head + masked * ibot_head
        student = teacher + cfg.n_local_crops * (vit_local + dino_head)
        return 3 * student + teacher


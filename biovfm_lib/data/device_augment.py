"""DINOv2's photometric augmentation, batched on the training device.

A CPU core runs the full DINOv2 multi-crop recipe at a few tens of images per second, and the
photometric half (colour jitter, whose hue shift goes through HSV, greyscale, a 9x9 blur,
solarisation) costs most of it: a loader feeding a ViT-L on a GPU would starve it. So the
loader keeps the per-image crops and flips on uint8
(:class:`~biovfm_lib.data.ssl_transforms.DINOv2Augmentation` with ``photometric=False``) and
this module does the rest on whole batches where the model runs.

Every op takes (B, 3, H, W) uint8 or float tensors with one random parameter per sample and
reproduces torchvision v2's functional op with that parameter on that sample, integer
rounding included (bit for bit on a CPU). torchvision's kernels that are batched already
(greyscale, solarise, the HSV conversions, normalise) are called directly, two private
helpers included (a later torchvision that renames them fails at import, not silently); the
blends and the blur, whose kernels take one scalar per call, are written here with the same
arithmetic.

Branches are selected with ``torch.where`` rather than by indexing the chosen samples, which
would make the host wait on the device once per op. The price is that every branch is
computed for every sample (hue even for unjittered ones, the blur even where it is off): on a
GPU that is a small part of a ViT step; on a CPU the batched op is no faster per core than
the per-image recipe, which is why ``augment_on="auto"`` keeps a CPU run's in the loader.

Randomness comes from one generator on the device, seeded from (seed, step, rank), so a
resumed run replays the augmentation of an uninterrupted one. The stream is not the CPU
loader's: switching where the augmentation runs changes the exact views a run sees (not their
distribution), which is why ``augment_on`` is part of a run's identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._color import (
    _hsv_to_rgb,
    _rgb_to_grayscale_image,
    _rgb_to_hsv,
)

from biovfm_lib.data.ssl_transforms import (
    DINOV2_BLUR_KERNEL,
    DINOV2_BLUR_SIGMA,
    DINOV2_GREY_P,
    DINOV2_JITTER,
    DINOV2_JITTER_P,
    DINOV2_RECIPE_BLUR_P,
    DINOV2_SOLARIZE_P,
    DINOV2_SOLARIZE_THRESHOLD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's op ids (its ``fn_idx``)
_IDENTITY_FACTORS = (1.0, 1.0, 1.0, 0.0)
_STREAM = 0x0D1A  # keeps these seeds apart from the loader's (seed, epoch, index) ones


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _max_value(dtype: torch.dtype) -> float:
    return 1.0 if dtype.is_floating_point else float(torch.iinfo(dtype).max)


def _blend(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """torchvision's ``_blend`` with a ratio per sample: ``ratio * images + (1 - ratio) *
    other``, clamped, truncated back to an integer dtype. ``1 - ratio`` is taken in float64
    because torchvision takes it of a Python float, and the sum is fused (``addcmul``) as
    torchvision's ``add_(alpha=)`` is; ratio 1 returns ``images`` exactly."""
    ratio64 = _per_sample(ratio).double()
    out = images.mul(ratio64.float()).addcmul_(other, (1.0 - ratio64).float())
    out = out.clamp_(0, _max_value(images.dtype))
    return out if images.is_floating_point() else out.to(images.dtype)


def _grey(images: Tensor) -> Tensor:
    """Luma as contrast and saturation use it: float, floored for integer images."""
    grey = _rgb_to_grayscale_image(images, num_output_channels=1, preserve_dtype=False)
    return grey if images.is_floating_point() else grey.floor_()


def _blend_step(images: Tensor, op: Tensor, factors: Tensor, active: Tensor) -> Tensor:
    """One position of the jitter order for every sample at once: each active sample gets the
    blend its ``op`` names (brightness blends with black, contrast with its mean grey,
    saturation with its grey image); the others (inactive, or due for hue) get ratio 1."""
    grey = _grey(images)
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    op4 = _per_sample(op)
    other = torch.where(op4 == CONTRAST, mean,
                        torch.where(op4 == SATURATION, grey, torch.zeros_like(mean)))
    ratio = factors.gather(1, op.clamp(max=SATURATION).unsqueeze(1)).squeeze(1)
    ratio = torch.where(active & (op != HUE), ratio, torch.ones_like(ratio))
    return _blend(images, other, ratio)


def adjust_hue(images: Tensor, factor: Tensor) -> Tensor:
    """``F.adjust_hue`` with a hue shift per sample (torchvision's HSV conversions are
    batched already; only the shift needed a per-sample factor)."""
    hsv = _rgb_to_hsv(F.to_dtype(images, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(factor.view(-1, 1, 1)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return F.to_dtype(rgb, images.dtype, scale=True)


def color_jitter(images: Tensor, factors: Tensor, order: Tensor, apply: Tensor) -> Tensor:
    """``v2.ColorJitter`` per sample: ``factors`` (B, 4) are the brightness, contrast,
    saturation and hue factors, ``order`` (B, 4) each sample's permutation of the four ops,
    ``apply`` (B,) bool which samples are jittered at all (``RandomApply``).

    Hue, the expensive op, runs once for the batch: the blends a sample does before its hue
    run first (one batched blend per position), then hue, then the blends after it."""
    factors = torch.where(apply.unsqueeze(1), factors,
                          factors.new_tensor(_IDENTITY_FACTORS).expand_as(factors))
    hue_at = (order == HUE).int().argmax(dim=1)
    for k in range(3):
        images = _blend_step(images, order[:, k], factors, k < hue_at)
    images = torch.where(_per_sample(apply), adjust_hue(images, factors[:, HUE]), images)
    for k in range(1, 4):
        images = _blend_step(images, order[:, k], factors, k > hue_at)
    return images


def grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """``v2.RandomGrayscale`` with the coin already tossed per sample."""
    return torch.where(_per_sample(apply), F.rgb_to_grayscale(images, num_output_channels=3),
                       images)


def _gaussian_kernels(sigma: Tensor, kernel_size: int, dtype: torch.dtype = torch.float32
                     ) -> Tensor:
    """(B, kernel_size) 1D Gaussian kernels, computed as torchvision's
    ``_get_gaussian_kernel1d`` does (its 2D kernel is the outer product of two of these)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=dtype, device=sigma.device)
    return torch.softmax(x.div(sigma.to(dtype).unsqueeze(1)).pow(2).neg(), dim=1)


def gaussian_blur(images: Tensor, sigma: Tensor, apply: Tensor,
                  kernel_size: int = DINOV2_BLUR_KERNEL) -> Tensor:
    """``v2.GaussianBlur`` with a sigma per sample on the samples ``apply`` selects: reflect
    padding, then one grouped (depthwise) convolution whose groups are the batch's samples and
    channels, each with its sample's 2D kernel. Separating it into two 1D passes would be
    cheaper on a CPU but no longer bit-identical to torchvision; on a GPU the blur is a small
    part of a step either way. Integer images are rounded back as torchvision rounds them."""
    b, c, h, w = images.shape
    fp = images.is_floating_point()
    k1d = _gaussian_kernels(sigma, kernel_size, images.dtype if fp else torch.float32)
    k2d = (k1d.unsqueeze(2) * k1d.unsqueeze(1)).repeat_interleave(c, dim=0)
    half = kernel_size // 2
    x = nnf.pad(images if fp else images.float(), [half] * 4, mode="reflect")
    x = nnf.conv2d(x.reshape(1, b * c, h + 2 * half, w + 2 * half), k2d.unsqueeze(1),
                   groups=b * c).view(b, c, h, w)
    if not fp:
        x = x.round_().to(images.dtype)
    return torch.where(_per_sample(apply), x, images)


def solarize(images: Tensor, threshold: float, apply: Tensor) -> Tensor:
    """``v2.RandomSolarize`` with the coin already tossed per sample; ``threshold`` is in the
    images' value range (128 for uint8, 128 / 255 for float), as torchvision takes it."""
    return torch.where(_per_sample(apply), F.solarize(images, threshold), images)


@dataclass(frozen=True)
class PhotometricParams:
    """One crop type's random draws, one row per sample."""

    jitter: Tensor  # (B,) bool: colour jitter applied
    factors: Tensor  # (B, 4): brightness, contrast, saturation, hue factors
    order: Tensor  # (B, 4) long: the jitter ops' order, a permutation of 0..3
    grey: Tensor  # (B,) bool
    blur: Tensor  # (B,) bool
    sigma: Tensor  # (B,)
    solarize: Tensor  # (B,) bool


def draw_params(n: int, generator: torch.Generator, blur_p: float, solarize_p: float
                ) -> PhotometricParams:
    """Draws with torchvision's distributions: each ``RandomApply`` coin is ``u < p``, the
    jitter factors and sigma are uniform over the recipe's ranges, and the op order is a
    uniform random permutation (the argsort of four uniforms)."""
    device = generator.device
    u = torch.rand(n, 13, generator=generator, device=device)
    ranges = [(1 - DINOV2_JITTER[k], 1 + DINOV2_JITTER[k])
              for k in ("brightness", "contrast", "saturation")]
    ranges.append((-DINOV2_JITTER["hue"], DINOV2_JITTER["hue"]))
    low, high = torch.tensor(ranges, device=device).T
    lo_sigma, hi_sigma = DINOV2_BLUR_SIGMA
    return PhotometricParams(
        jitter=u[:, 0] < DINOV2_JITTER_P, factors=low + (high - low) * u[:, 1:5],
        order=u[:, 5:9].argsort(dim=1), grey=u[:, 9] < DINOV2_GREY_P, blur=u[:, 10] < blur_p,
        sigma=lo_sigma + (hi_sigma - lo_sigma) * u[:, 11], solarize=u[:, 12] < solarize_p)


def apply_params(images: Tensor, params: PhotometricParams) -> Tensor:
    """Jitter, greyscale, blur and solarise, in the CPU recipe's order, in ``images``' dtype."""
    if not len(images):  # no local crops: a grouped convolution cannot have zero groups
        return images
    images = color_jitter(images, params.factors, params.order, params.jitter)
    images = grayscale(images, params.grey)
    images = gaussian_blur(images, params.sigma, params.blur)
    threshold = DINOV2_SOLARIZE_THRESHOLD * _max_value(images.dtype) / 255
    return solarize(images, threshold, params.solarize)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The generator seed of one step on one rank."""
    return int(np.random.SeedSequence([_STREAM, seed, step, rank]).generate_state(
        1, np.uint64)[0])


class DINOv2Photometric:
    """The photometric half of :class:`~biovfm_lib.data.ssl_transforms.DINOv2Augmentation`
    on batches of uint8 crops ``[global_1, global_2, local...]`` (each (B, 3, H, W); the
    locals may come as one (n_local * B, ...) batch). Returns float crops, normalised.

    Ops run in uint8, as the CPU recipe runs them, so the two paths differ only in their
    random stream. ``blur_p``, ``mean`` and ``std`` must be the values the CPU recipe would
    have used; the rest of the recipe is shared through :mod:`~biovfm_lib.data.ssl_transforms`'
    constants."""

    def __init__(self, seed: int, rank: int = 0,
                 blur_p: tuple[float, float, float] = DINOV2_RECIPE_BLUR_P,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.seed, self.rank = seed, rank
        self.recipes = [(blur_p[0], 0.0), (blur_p[1], DINOV2_SOLARIZE_P), (blur_p[2], 0.0)]
        self.mean, self.std = list(mean), list(std)

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(step_seed(self.seed, step, self.rank))

    def draw(self, sizes: list[int], step: int, device: torch.device
             ) -> list[PhotometricParams]:
        """The draws of global 1, global 2 and the (concatenated) locals, in that order."""
        generator = self.generator(step, device)
        return [draw_params(n, generator, blur_p, solarize_p)
                for n, (blur_p, solarize_p) in zip(sizes, self.recipes, strict=True)]

    def apply(self, groups: list[Tensor], params: list[PhotometricParams]) -> list[Tensor]:
        return [F.normalize(F.to_dtype(apply_params(x, p), torch.float32, scale=True),
                            self.mean, self.std) for x, p in zip(groups, params, strict=True)]

    def __call__(self, crops: list[Tensor], step: int) -> list[Tensor]:
        global_1, global_2, *local = crops
        groups = [global_1, global_2, torch.cat(local) if local else global_1[:0]]
        out = self.apply(groups, self.draw([len(x) for x in groups], step, global_1.device))
        return out[:2] + (list(out[2].split([len(x) for x in local])) if local else [])

    def on_batch(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Augment a :meth:`~biovfm_lib.ssl.DINOv2.collate` batch in place of its uint8 crops
        (global crops crop-major: the first half are every sample's first global crop)."""
        global_1, global_2 = batch["global_crops"].chunk(2)
        global_1, global_2, local = self([global_1, global_2, batch["local_crops"]], step)
        return {**batch, "global_crops": torch.cat([global_1, global_2]), "local_crops": local}

"""The pretraining augmentations of DINOv2 and MAE, on uint8 (3, H, W) image tensors.

They follow facebookresearch/dinov2 (``dinov2/data/augmentations.py``,
``DataAugmentationDINO``) and facebookresearch/mae (``main_pretrain.py``), built from
torchvision v2 so that they run on tensors and draw only from torch's global generator (which
:class:`~biovfm_lib.data.pretrain.PretrainImages` seeds per sample).

One deviation to know about: DINOv2's ``GaussianBlur(p)`` hands ``1 - p`` to
``RandomApply``, whose argument is the probability of applying, so the official code blurs the
two global crops with probability 0.0 and 0.9 (locals 0.5), not the 1.0 and 0.1 its call
sites and the BYOL recipe say (dinov2 PR #411, dinov3 issue #286). Released DINOv2 weights,
and models trained with that code base, saw :data:`DINOV2_CODE_BLUR_P`; the default here is
the stated recipe, :data:`DINOV2_RECIPE_BLUR_P`. Pass ``blur_p`` to choose.

The photometric constants live here once: the CPU pipeline and the batched device version
(:mod:`biovfm_lib.data.device_augment`, used with ``photometric=False`` crops) read the same
ones, so the two paths cannot drift apart.
"""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_RECIPE_BLUR_P = (1.0, 0.1, 0.5)  # global 1, global 2, local crops
DINOV2_CODE_BLUR_P = (0.0, 0.9, 0.5)  # what dinov2's code applies (see the module docstring)
DINOV2_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
DINOV2_JITTER_P = 0.8
DINOV2_GREY_P = 0.2
DINOV2_BLUR_KERNEL = 9
DINOV2_BLUR_SIGMA = (0.1, 2.0)
DINOV2_SOLARIZE_THRESHOLD = 128  # on uint8 values
DINOV2_SOLARIZE_P = 0.2  # second global crop only


def _crop_and_flip(size: int, scale: tuple[float, float]) -> list[v2.Transform]:
    return [v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC,
                                 antialias=True),
            v2.RandomHorizontalFlip(p=0.5)]


def _normalise(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]


class DINOv2Augmentation:
    """Multi-crop views ``[global_1, global_2, local_1, ..., local_n]`` of one image, float
    (3, size, size) each: random resized crop (bicubic) and flip, colour jitter (p 0.8) and
    greyscale (p 0.2), then Gaussian blur (and, on the second global crop, solarisation at p
    0.2), normalised.

    ``photometric=False`` keeps only the crops and flips and returns them as uint8: the cheap,
    per-image part a CPU loader must do, leaving colour, blur, solarisation and normalisation
    to :class:`~biovfm_lib.data.device_augment.DINOv2Photometric` on the training device
    (given the same ``blur_p``, ``mean`` and ``std``)."""

    def __init__(self, global_size: int = 224, local_size: int = 98, n_local: int = 8,
                 global_scale: tuple[float, float] = (0.32, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.32),
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 blur_p: tuple[float, float, float] = DINOV2_RECIPE_BLUR_P,
                 photometric: bool = True):
        global_geo = _crop_and_flip(global_size, global_scale)
        local_geo = _crop_and_flip(local_size, local_scale)
        self.n_local = n_local
        if not photometric:
            self.global_1 = self.global_2 = v2.Compose(global_geo)
            self.local = v2.Compose(local_geo)
            return
        colour = [v2.RandomApply([v2.ColorJitter(**DINOV2_JITTER)], p=DINOV2_JITTER_P),
                  v2.RandomGrayscale(p=DINOV2_GREY_P)]

        def blur(p: float) -> v2.Transform:
            return v2.RandomApply([v2.GaussianBlur(kernel_size=DINOV2_BLUR_KERNEL,
                                                   sigma=DINOV2_BLUR_SIGMA)], p=p)

        norm = _normalise(mean, std)
        self.global_1 = v2.Compose([*global_geo, *colour, blur(blur_p[0]), *norm])
        self.global_2 = v2.Compose([*global_geo, *colour, blur(blur_p[1]),
                                    v2.RandomSolarize(threshold=DINOV2_SOLARIZE_THRESHOLD,
                                                      p=DINOV2_SOLARIZE_P), *norm])
        self.local = v2.Compose([*local_geo, *colour, blur(blur_p[2]), *norm])

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [self.global_1(image), self.global_2(image),
                *(self.local(image) for _ in range(self.n_local))]


class MAEAugmentation:
    """MAE's pretraining view: random resized crop (bicubic), flip, normalise; one float
    (3, size, size) tensor."""

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.2, 1.0),
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.transform = v2.Compose([*_crop_and_flip(size, scale), *_normalise(mean, std)])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform(image)

"""The ViT sizes by name, and the study's x for each: a table with no torch or timm behind it.

Parameter validation and the analysis read it, so checking a parameter file or fitting slopes
never pays for importing timm; :mod:`biovfm_lib.models.factory` builds the models.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VitSize:
    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int


VIT_SIZES: dict[str, VitSize] = {
    # femto, pico and nano exist for CPU smoke runs at 28 px (small patches keep a useful
    # token count): three sizes, so the demo's grid fits model-size slopes with CIs.
    "femto": VitSize("vit_tiny_patch16_224", 48, 2, 2, 4),
    "pico": VitSize("vit_tiny_patch16_224", 64, 3, 2, 4),
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
# 656.614 M. femto, pico and nano are not in the study; they follow the same rule with their
# smoke decoders.
# tests/test_study_analysis.py recounts every entry, so the table cannot drift from the model.
STUDY_PARAMS: dict[str, int] = {
    "femto": 192_576, "pico": 388_144, "nano": 867_888, "tiny": 31_200_000,
    "small": 47_401_728, "base": 111_655_680, "large": 329_239_296, "huge": 656_613_964,
}


def study_params_m(size: str | None) -> float:
    """The study's x for a model size, in millions of parameters (NaN for an unknown size).

    Derived from the size name alone, so every checkpoint of one size, whatever its
    algorithm, lands at the same x as the study's published curves.
    """
    return STUDY_PARAMS[size] / 1e6 if size in STUDY_PARAMS else float("nan")

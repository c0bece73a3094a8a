"""Encoders: timm ViTs by size name, and checkpoint export / import."""
from biovfm_lib.models.factory import VIT_SIZES, VitSpec, create_vit, vit_spec

__all__ = ["VIT_SIZES", "VitSpec", "create_vit", "vit_spec"]

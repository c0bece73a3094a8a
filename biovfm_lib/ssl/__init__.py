"""Self-supervised objectives (DINOv2, MAE) on timm ViTs, as modules a training loop drives."""
from biovfm_lib.ssl.dinov2 import DINOv2, DINOv2Config
from biovfm_lib.ssl.mae import MAE, MAEConfig
from biovfm_lib.ssl.schedules import cosine

__all__ = ["MAE", "DINOv2", "DINOv2Config", "MAEConfig", "cosine"]

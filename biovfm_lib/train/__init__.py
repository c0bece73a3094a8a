"""Pretraining engine: the torchrun entry point, the loop, distribution, checkpoints, launch."""
from biovfm_lib.train.launch import launch

__all__ = ["launch"]

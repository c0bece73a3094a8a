"""Full training state for exact resume, whatever the wrapping (none, DDP or FSDP).

PyTorch's ``torch.distributed.checkpoint.state_dict`` API gathers full (unsharded, unprefixed)
model and optimizer state from any wrapper and loads it back into any other, so one file
format serves every strategy. Each rank's RNG states are stored too: dropout, drop path and
masking then replay exactly after a restart.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from biovfm_lib.train.distributed import DistEnv, all_gather_objects, barrier

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    env: DistEnv, **extra: Any) -> None:
    """Gather the full state on every rank's CPU and write it from rank 0, atomically."""
    model_state, optim_state = get_state_dict(model, optimizer, options=FULL)
    rngs = all_gather_objects(rng_state())
    if env.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"model": model_state, "optimizer": optim_state, "rng": rngs, **extra}, tmp)
        os.replace(tmp, path)
    barrier()


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    env: DistEnv) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG; return the remaining entries."""
    # Our own file, written above; it holds RNG states that weights_only cannot represent.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    set_state_dict(model, optimizer, model_state_dict=ckpt.pop("model"),
                   optim_state_dict=ckpt.pop("optimizer"),
                   options=StateDictOptions(full_state_dict=True))
    rngs = ckpt.pop("rng")
    if len(rngs) != env.world_size:
        raise RuntimeError(f"{path} was written by {len(rngs)} ranks, this run has "
                           f"{env.world_size}: resume with the same number of processes")
    set_rng_state(rngs[env.rank])
    return ckpt

"""Process-group setup and model wrapping: one code path from one CPU to many GPU nodes.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; NCCL on GPUs, gloo on CPU. DDP replicates the
model; FSDP (PyTorch's per-parameter ``fully_shard``) shards every transformer block and the
rest of the model across ranks, for the sizes whose optimizer state outgrows one GPU.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from timm.models.vision_transformer import VisionTransformer
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the torchrun process group (or run alone when started without torchrun)."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if "MASTER_ADDR" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, local_rank, world, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.AVG if t.is_cuda else dist.ReduceOp.SUM)
        if not t.is_cuda:  # gloo has no AVG
            t /= dist.get_world_size()
    return t


def trainable_vits(model: nn.Module) -> list[VisionTransformer]:
    """The ViTs that receive gradients (the student / encoder, not an EMA teacher)."""
    return [m for m in model.modules() if isinstance(m, VisionTransformer)
            and any(p.requires_grad for p in m.parameters())]


def prepare_model(model: nn.Module, strategy: str, env: DistEnv, activation_checkpointing: bool,
                  compile_blocks: bool, bf16: bool) -> nn.Module:
    """Move to the device, then checkpoint / compile / shard as asked; returns what to call."""
    model.to(env.device)
    for vit in trainable_vits(model):
        if activation_checkpointing:
            vit.set_grad_checkpointing(True)
        if compile_blocks:
            for block in vit.blocks:
                block.compile()
    if not dist.is_initialized():
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if bf16 else MixedPrecisionPolicy()
        for vit in (m for m in model.modules() if isinstance(m, VisionTransformer)):
            for block in vit.blocks:
                fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

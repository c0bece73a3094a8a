"""Linear heads on frozen features, several learning rates trained side by side.

The head is the official BioVFM one: BatchNorm1d without affine parameters (eps 1e-6), then
Linear with weights drawn trunc-normal with std 0.01 (MoCo v3's probe init, as the study sets
it), trained with AdamW (weight decay 0) under a cosine schedule over the epochs. Each learning
rate gets its own head fed by the same batches, so a sweep costs one pass over the features.
The state kept is the (learning rate, epoch) with the lowest validation loss. Training batches
drop the last partial batch, as the study's loader does (``drop_last=True``).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
# The study's bias init depends on the build: its MAE/ViT models zero every Linear bias (timm's
# init), its DINOv2 classifier adds the head after that init, keeping nn.Linear's uniform one.
HeadBias = Literal["zero", "uniform"]
BN_EPS = 1e-6
HEAD_INIT_STD = 0.01


def linear_head(dim: int, n_out: int, bias: HeadBias = "zero") -> nn.Sequential:
    """The study's probe head, initialised as its builder does."""
    linear = nn.Linear(dim, n_out)
    nn.init.trunc_normal_(linear.weight, std=HEAD_INIT_STD)
    if bias == "zero":
        nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=BN_EPS), linear)


def loss_fn(multilabel: bool) -> nn.Module:
    """BCE for the multi-label task (ChestMNIST), cross-entropy otherwise."""
    return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()


def targets(labels: np.ndarray | torch.Tensor, multilabel: bool) -> torch.Tensor:
    """medmnist labels -> loss targets: float (N,L) for multi-label, long (N,) otherwise."""
    y = torch.as_tensor(np.asarray(labels))
    return y.float() if multilabel else y.reshape(len(y), -1)[:, 0].long()


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


@dataclass
class ProbeFit:
    """The selected head and how it was chosen."""

    head: nn.Module
    lr: float
    epoch: int
    val_loss: float
    history: pd.DataFrame  # epoch, lr, train_loss, val_loss


def train_drop_last(n: int, batch_size: int) -> bool:
    """Whether to drop the last partial batch: yes, unless it is the only batch there is.

    The study drops it; on a split smaller than one batch that would train on nothing, so
    such a split keeps its one partial batch instead (real MedMNIST train splits never are).
    """
    return n >= batch_size


def feature_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Batches:
    """Shuffled mini-batches of cached features, a fresh permutation each epoch."""
    stop = len(x) - len(x) % batch_size if train_drop_last(len(x), batch_size) else len(x)

    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(x), generator=g)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
    return batches


def fit_linear_heads(train_batches: Batches, val_x: torch.Tensor, val_y: torch.Tensor,
                     n_out: int, multilabel: bool, lrs: list[float], epochs: int,
                     weight_decay: float = 0.0, device: torch.device | str = "cpu",
                     seed: int = 0, desc: str = "heads", head_bias: HeadBias = "zero"
                     ) -> ProbeFit:
    """Train one head per learning rate; keep the lowest-validation-loss state of any head.

    An epoch without a single batch of two or more samples (BatchNorm's minimum) is an error:
    a head that never trained must not be evaluated as if it had.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    dim = val_x.shape[1]
    heads = nn.ModuleList(linear_head(dim, n_out, head_bias) for _ in lrs).to(device)
    opt = torch.optim.AdamW(
        [{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, lrs)],
        weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    criterion = loss_fn(multilabel)
    val_x, val_y = val_x.to(device), val_y.to(device)
    best: tuple[float, int, int, dict] | None = None  # val_loss, head index, epoch, state
    rows = []
    for epoch in tqdm(range(1, epochs + 1), desc=desc, leave=False, mininterval=2.0):
        heads.train()
        totals, seen = torch.zeros(len(lrs), device=device), 0
        for xb, yb in train_batches(epoch):
            if len(xb) < 2:  # BatchNorm cannot train on a single sample
                continue
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            losses = torch.stack([criterion(h(xb), yb) for h in heads])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            totals += losses.detach() * len(xb)
            seen += len(xb)
        if seen == 0:
            raise ValueError(f"epoch {epoch}: no training batch of at least 2 samples")
        sched.step()
        heads.eval()
        with torch.no_grad():
            val_losses = [criterion(h(val_x), val_y).item() for h in heads]
        for i, lr in enumerate(lrs):
            rows.append({"epoch": epoch, "lr": lr, "train_loss": (totals[i] / seen).item(),
                         "val_loss": val_losses[i]})
            if best is None or val_losses[i] < best[0]:
                best = (val_losses[i], i, epoch, copy.deepcopy(heads[i].state_dict()))
    assert best is not None
    val_loss, index, epoch, state = best
    head = linear_head(dim, n_out, head_bias).to(device)
    head.load_state_dict(state)
    return ProbeFit(head.eval(), lrs[index], epoch, val_loss, pd.DataFrame(rows))


@torch.no_grad()
def predict(head: nn.Module, x: torch.Tensor, multilabel: bool, batch_size: int = 4096
            ) -> np.ndarray:
    """Class (or label) probabilities of a fitted head, as float64 numpy."""
    head.eval()
    device = next(head.parameters()).device
    out = [probabilities(head(x[i:i + batch_size].to(device)), multilabel).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()

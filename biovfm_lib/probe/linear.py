"""Linear heads on frozen features, several learning rates trained side by side.

The head is the official BioVFM one: BatchNorm1d without affine parameters, then Linear,
trained with AdamW (weight decay 0) under a cosine schedule over the epochs. Each learning rate
gets its own head fed by the same batches, so a sweep costs one pass over the features.
The state kept is the (learning rate, epoch) with the lowest validation loss.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def linear_head(dim: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, n_out))


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


def feature_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Batches:
    """Shuffled mini-batches of cached features, a fresh permutation each epoch."""
    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
    return batches


def fit_linear_heads(train_batches: Batches, val_x: torch.Tensor, val_y: torch.Tensor,
                     n_out: int, multilabel: bool, lrs: list[float], epochs: int,
                     weight_decay: float = 0.0, device: torch.device | str = "cpu",
                     seed: int = 0, desc: str = "heads") -> ProbeFit:
    """Train one head per learning rate; keep the lowest-validation-loss state of any head."""
    device = torch.device(device)
    torch.manual_seed(seed)
    dim = val_x.shape[1]
    heads = nn.ModuleList(linear_head(dim, n_out) for _ in lrs).to(device)
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
        sched.step()
        heads.eval()
        with torch.no_grad():
            val_losses = [criterion(h(val_x), val_y).item() for h in heads]
        for i, lr in enumerate(lrs):
            rows.append({"epoch": epoch, "lr": lr, "train_loss": (totals[i] / max(seen, 1)).item(),
                         "val_loss": val_losses[i]})
            if best is None or val_losses[i] < best[0]:
                best = (val_losses[i], i, epoch, copy.deepcopy(heads[i].state_dict()))
    assert best is not None
    val_loss, index, epoch, state = best
    head = linear_head(dim, n_out).to(device)
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

"""A distributed sampler that resumes mid-epoch exactly where a killed run stopped.

Every epoch is one seeded permutation shared by all ranks; rank r takes every R-th entry
from position r, so ranks never overlap and all get the same number of samples (DDP and FSDP
hang when one rank runs out first). The sampler yields ``(epoch, index)`` keys, which
:class:`~biovfm_lib.data.pretrain.PretrainImages` turns into per-sample augmentation seeds,
so order and augmentations replay together.

Position: the training loop calls :meth:`advance` with the number of samples of each batch
whose update it has completed. The sampler cannot count for itself, because a DataLoader draws
indices ahead of training (``prefetch_factor`` batches per worker) and a count taken there
would skip the prefetched but untrained samples after a restart. A checkpoint stores
:meth:`state_dict` next to the model; after a restart :meth:`load_state_dict` and a new
DataLoader iterator continue with the first sample not yet trained on. All ranks advance in
step, so rank 0's state serves every rank::

    sampler.load_state_dict(ckpt["sampler"])           # on resume
    for epoch in range(sampler.epoch, epochs):
        sampler.set_epoch(epoch)                         # keeps the position of its own epoch
        for batch in loader:
            train_step(batch)
            sampler.advance(batch_size)
            maybe_save({"sampler": sampler.state_dict(), ...})
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

_CONFIG = ("dataset_len", "num_replicas", "seed", "shuffle", "drop_last")


class ResumableDistributedSampler(Sampler[tuple[int, int]]):
    """``(epoch, index)`` keys of this rank's share of each epoch, from the current position.

    ``drop_last`` cuts the permutation to a multiple of ``num_replicas``; otherwise it is
    padded by wrapping around, as :class:`torch.utils.data.DistributedSampler` does.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, num_replicas={num_replicas})")
        if dataset_len < 1 or (drop_last and dataset_len < num_replicas):
            raise ValueError(f"dataset_len {dataset_len} gives no sample to each of "
                             f"{num_replicas} ranks")
        if seed < 0:
            raise ValueError(f"seed {seed} must be non-negative")
        self.dataset_len, self.num_replicas, self.rank = dataset_len, num_replicas, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        self.consumed = 0  # samples of this epoch this rank has trained on

    @property
    def num_samples(self) -> int:
        """Samples per rank in a whole epoch."""
        if self.drop_last:
            return self.dataset_len // self.num_replicas
        return math.ceil(self.dataset_len / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` from its start; the current epoch keeps its position, so that the
        usual ``set_epoch`` at the top of the loop does not undo a resume."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def advance(self, n: int) -> None:
        """Record that this rank has trained on ``n`` more samples of the current epoch."""
        if n < 0 or self.consumed + n > self.num_samples:
            raise ValueError(f"cannot advance by {n}: {self.consumed} of {self.num_samples} "
                             f"samples of epoch {self.epoch} are already consumed")
        self.consumed += n

    def state_dict(self) -> dict:
        """Position plus the settings that fix the order, checked again on load."""
        return {"epoch": self.epoch, "consumed": self.consumed,
                **{k: getattr(self, k) for k in _CONFIG}}

    def load_state_dict(self, state: dict) -> None:
        changed = {k: (state[k], getattr(self, k)) for k in _CONFIG
                   if state[k] != getattr(self, k)}
        if changed:
            raise ValueError("the checkpoint's sampler settings differ (saved, now): "
                             f"{changed}; resuming would not replay the same data order")
        if not 0 <= state["consumed"] <= self.num_samples:
            raise ValueError(f"consumed {state['consumed']} is outside [0, {self.num_samples}]")
        self.epoch, self.consumed = state["epoch"], state["consumed"]

    def rank_indices(self) -> list[int]:
        """This rank's dataset indices for the whole current epoch, in order."""
        if self.shuffle:
            entropy = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)
            order = torch.randperm(self.dataset_len,
                                   generator=torch.Generator().manual_seed(int(entropy[0])))
        else:
            order = torch.arange(self.dataset_len)
        total = self.num_samples * self.num_replicas
        order = order.repeat(math.ceil(total / self.dataset_len))[:total]
        return order[self.rank::self.num_replicas].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Keys from the current position; the position is read now, when the DataLoader
        creates its iterator, and later :meth:`advance` calls do not move this iterator."""
        epoch = self.epoch
        return ((epoch, i) for i in self.rank_indices()[self.consumed:])

    def __len__(self) -> int:
        """Keys the next iterator yields: the rest of the current epoch."""
        return self.num_samples - self.consumed

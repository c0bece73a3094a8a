"""Online kNN monitor: is the run learning? An answer within minutes, not after the probe.

Every ``monitor_every`` steps rank 0 encodes small fixed samples of MedMNIST-format tasks with
the current backbone (DINOv2's teacher, MAE's encoder: what the run exports) and scores the
val sample against the train sample by weighted kNN (:func:`biovfm_lib.ssl.knn.knn_scores`,
DINOv2's rule); accuracy and AUC go to ``log.jsonl`` as
``{"step", "monitor": {task: {"knn_acc", "knn_auc"}}, "monitor_s"}``. Val, not test: the
probe reports test, which a run's monitoring never sees.

It never changes training. It encodes with a private copy of the backbone, refreshed from the
live weights at each evaluation and always in eval mode, so the training modules (their mode,
compiled blocks, autocast state) are left alone; the copy is built under a forked RNG and the
samples are drawn with their own generator, so the global torch / numpy / python streams that
dropout, drop path and the checkpoint's RNG state follow are never drawn from. Under FSDP the
live weights are sharded: every rank takes part in gathering them (one all-gather per
tensor) and only rank 0 keeps and uses them; under DDP, or alone, no rank but 0 does anything.
The copy costs one backbone's weights of memory on rank 0's device.

Features are the probe's ``mean_patch`` (:func:`biovfm_lib.models.pooling.mean_patch`, shared
with ``biovfm_lib.probe.features``): the mean of the last block's patch tokens before the final
norm, through an affine-free LayerNorm (eps 1e-6).
MedMNIST images are resized to the run's ``img_size``, the size the backbone trains at.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import medmnist
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.distributed.tensor import DTensor

from biovfm_lib.data.medmnist import MedMNISTFileError, check_file, sample_split
from biovfm_lib.data.transforms import to_model_input
from biovfm_lib.models.pooling import mean_patch
from biovfm_lib.ssl.knn import knn_scores
from biovfm_lib.ssl.vit import vit_flops
from biovfm_lib.train.distributed import DistEnv, autocast

BATCH = 256  # images per forward pass


def check_monitor_data(settings: dict[str, Any], every: int) -> None:
    """Raise a one-line ValueError unless every monitored task's file is there and sound and
    its train split holds ``k`` images, so bad monitor data stops the launch instead of
    failing rank 0 inside torchrun."""
    for flag in settings["tasks"]:
        try:
            path = check_file(settings["root"], flag, settings["size"], counts=False)
        except MedMNISTFileError as err:
            raise ValueError(
                f"monitor (monitor_every: {every}): {' '.join(str(err).split())} Set "
                "monitor_data_root, monitor_data_size or monitor_tasks to data that is there, "
                "or monitor_every: 0") from None
        with np.load(path) as npz:
            n_train = len(npz["train_labels"])
        if n_train < settings["k"]:
            raise ValueError(f"monitor_k: {settings['k']} neighbours, but {path} holds "
                             f"{n_train} train images; lower monitor_k or drop {flag} from "
                             "monitor_tasks")


def pooled_features(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The probe's ``mean_patch`` features of a normalised batch, as float32."""
    (last,) = vit.forward_intermediates(x, indices=1, norm=False, output_fmt="NLC",
                                        intermediates_only=True)
    return mean_patch(last)


def knn_metrics(scores: np.ndarray, labels: np.ndarray, multilabel: bool
                ) -> tuple[float, float | None]:
    """Accuracy and AUC of kNN ``scores`` (N, classes) against MedMNIST ``labels``.

    AUC is the mean one-vs-rest AUC over classes (sklearn's ``multi_class="ovr"`` macro; for
    two classes both halves equal the binary AUC) or over labels (multi-label); a class or
    label the sample holds only one value of is left out, and None means none was left.
    Accuracy is top-1, or for a multi-label task the share of (image, label) pairs right at
    threshold 0.5 (medmnist's rule)."""
    if multilabel:
        truth = labels.astype(bool)
        acc = float(((scores > 0.5) == truth).mean())
    else:
        y = labels.reshape(-1)
        truth = np.eye(scores.shape[1], dtype=bool)[y]
        acc = float((scores.argmax(1) == y).mean())
    aucs = [roc_auc_score(truth[:, c], scores[:, c]) for c in range(scores.shape[1])
            if 0 < truth[:, c].sum() < len(truth)]
    return acc, float(np.mean(aucs)) if aucs else None


@dataclass(frozen=True)
class TaskSample:
    """One task's fixed samples: uint8 images (file size) and medmnist-shaped labels."""

    flag: str
    n_classes: int
    multilabel: bool
    train_images: torch.Tensor
    train_labels: torch.Tensor  # class indices (N,) or 0/1 rows (N, L), on the device
    query_images: torch.Tensor
    query_labels: np.ndarray


def draw_samples(settings: dict[str, Any], seed: int, device: torch.device
                 ) -> list[TaskSample]:
    """Each task's train memory and val queries, drawn once by ``seed`` with their own
    generator (:func:`biovfm_lib.data.medmnist.sample_split`)."""
    samples = []
    for i, flag in enumerate(settings["tasks"]):
        info = medmnist.INFO[flag]
        multilabel = info["task"] == "multi-label, binary-class"
        read = {split: sample_split(flag, settings["root"], settings["size"], split, n,
                                    seed + 2 * i + j)
                for j, (split, n) in enumerate((("train", settings["n_train"]),
                                                ("val", settings["n_query"])))}
        train_labels = torch.from_numpy(read["train"][1].astype(np.int64))
        samples.append(TaskSample(
            flag=flag, n_classes=len(info["label"]), multilabel=multilabel,
            train_images=_pinned(read["train"][0], device),
            train_labels=(train_labels if multilabel else train_labels[:, 0]).to(device),
            query_images=_pinned(read["val"][0], device), query_labels=read["val"][1]))
    return samples


def _pinned(images: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(images)
    return t.pin_memory() if device.type == "cuda" else t


class OnlineMonitor:
    """Build on every rank after the model is prepared; call on every rank at a monitor step
    (the FSDP gather needs them all); rank 0 gets the log record, the others None."""

    def __init__(self, method: nn.Module, settings: dict[str, Any], env: DistEnv, bf16: bool,
                 img_size: int, seed: int):
        self.live = method.backbone_for_export()
        self.env, self.bf16, self.img_size, self.k = env, bf16, img_size, settings["k"]
        self.copy: nn.Module | None = None
        self.samples: list[TaskSample] = []
        if not env.is_main:
            return
        with torch.random.fork_rng(devices=[]):  # timm's weight init draws from the CPU RNG
            self.copy = method.spec.create().to(env.device).eval().requires_grad_(False)
        live_keys, copy_keys = set(self.live.state_dict()), set(self.copy.state_dict())
        if live_keys != copy_keys:
            raise RuntimeError(f"monitor: the backbone's weights {sorted(live_keys ^ copy_keys)} "
                               "do not match its spec's model")
        self.samples = draw_samples(settings, seed, env.device)

    def images(self) -> int:
        """Images encoded per evaluation."""
        return sum(len(s.train_images) + len(s.query_images) for s in self.samples)

    def flops_share(self, train_flops_per_step: float, every: int) -> float:
        """The monitor's matmul FLOPs as a share of rank 0's training FLOPs: its wall-time
        share where both run equally efficiently (other ranks wait for rank 0 meanwhile)."""
        assert self.copy is not None
        n_patches = self.copy.patch_embed.num_patches
        fwd = vit_flops(self.copy, n_patches + self.copy.num_prefix_tokens, n_patches)
        return self.images() * fwd / (every * train_flops_per_step)

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, Any] | None:
        start = time.perf_counter()
        self._refresh()
        if self.copy is None:
            return None
        scores = {}
        for task in self.samples:
            memory = self._features(task.train_images)
            query = self._features(task.query_images)
            votes = knn_scores(memory, task.train_labels, query, [self.k], task.n_classes,
                               task.multilabel)[self.k]
            acc, auc = knn_metrics(votes.cpu().numpy(), task.query_labels, task.multilabel)
            scores[task.flag] = {"knn_acc": acc, "knn_auc": auc}
        return {"step": step, "monitor": scores, "monitor_s": time.perf_counter() - start,
                "time": time.time()}

    def _refresh(self) -> None:
        """Copy the live backbone's weights into rank 0's copy, tensor by tensor (gathering
        FSDP shards on every rank, so peak memory is one full tensor more)."""
        target = self.copy.state_dict() if self.copy is not None else {}
        for name, tensor in self.live.state_dict().items():
            if isinstance(tensor, DTensor):
                tensor = tensor.full_tensor()
            if self.copy is not None:
                target[name].copy_(tensor)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH].to(self.env.device, non_blocking=True)
            x = to_model_input(batch)
            if x.shape[-1] != self.img_size:
                x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                                  align_corners=False, antialias=True)
            with autocast(self.env.device, self.bf16):
                out.append(pooled_features(self.copy, x))
        return torch.cat(out)

"""What notebook 02_pretrain shows: the views an objective trains on, and the run's curves
(loss, learning rate, throughput and, when the run had the online kNN monitor, its scores)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from biovfm_lib.curation.pipeline import corpus_roots
from biovfm_lib.data.pretrain import PretrainImages
from biovfm_lib.data.ssl_transforms import IMAGENET_MEAN, IMAGENET_STD
from biovfm_lib.data.synthetic import data_kind, synthetic_info
from biovfm_lib.params import PretrainParams
from biovfm_lib.runs import resolve
from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.loop import build_method, training_images

MONITOR_COLUMNS = ["step", "task", "knn_acc", "knn_auc", "monitor_s", "time"]


def _records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def read_log(path: str | Path) -> pd.DataFrame:
    """The JSON-lines log's training records as a table, one row per logged step (the
    monitor's records are :func:`read_monitor`'s)."""
    return pd.DataFrame([r for r in _records(path) if "monitor" not in r])


def read_monitor(path: str | Path) -> pd.DataFrame:
    """The online kNN monitor's records as a tidy table, one row per (step, task); empty
    when the run had no monitor."""
    rows = [{"step": r["step"], "task": task, **scores, "monitor_s": r["monitor_s"],
             "time": r["time"]} for r in _records(path) if "monitor" in r
            for task, scores in r["monitor"].items()]
    return pd.DataFrame(rows, columns=MONITOR_COLUMNS)


def monitor_share(log: pd.DataFrame, monitor: pd.DataFrame) -> float:
    """The monitor's share of the run's wall time, from the logs' clocks: its seconds over
    the span from the first evaluation's start (or first logged step) to the last record."""
    evaluations = monitor.drop_duplicates("step")
    start = min(log.time.min(), (evaluations.time - evaluations.monitor_s).min())
    end = max(log.time.max(), evaluations.time.max())
    return float(evaluations.monitor_s.sum() / max(end - start, 1e-9))


def _show(ax, img: torch.Tensor, title: str = "") -> None:
    """Show a uint8 image, or a normalised float one (undoing the normalisation)."""
    if img.dtype == torch.uint8:
        img = img.float() / 255
    else:
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        img = img.float() * torch.tensor(IMAGENET_STD)[:, None, None] + mean
    ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_views(cfg: TrainConfig, n_images: int = 3) -> plt.Figure:
    """A few training images as the objective sees them: DINOv2's crops with iBOT masks, or
    MAE's visible patches."""
    images = training_images(cfg).head(n_images)
    method, transform = build_method(cfg, cfg.batch_size, 1)
    dataset = PretrainImages(images, transform, seed=cfg.seed)
    samples = [dataset[(0, i)] for i in range(n_images)]
    batch = method.collate(samples)
    if cfg.algorithm == "dinov2":
        n_local = len(samples[0]) - 2
        cols = 3 + n_local
        fig, axes = plt.subplots(n_images, cols, figsize=(1.6 * cols, 1.7 * n_images),
                                 squeeze=False)
        grid = cfg.img_size // method.cfg.patch_size
        for r, sample in enumerate(samples):
            _show(axes[r, 0], dataset.read(r), "image")
            for c, crop in enumerate(sample):
                _show(axes[r, c + 1], crop, "global" if c < 2 else "local")
            mask = batch["masks"][r].view(grid, grid).float().numpy()
            axes[r, 1].imshow(np.kron(mask, np.ones((method.cfg.patch_size,) * 2)),
                              alpha=0.45, cmap="Reds", vmin=0, vmax=1)
            axes[r, -1].axis("off")
        fig.suptitle("DINOv2 views: 2 global crops (iBOT-masked patches in red on the "
                     "first), local crops", fontsize=9)
    else:
        fig, axes = plt.subplots(n_images, 2, figsize=(3.4, 1.7 * n_images), squeeze=False)
        p = method.cfg.patch_size
        grid = cfg.img_size // p
        for r in range(n_images):
            img = batch["images"][r]
            _show(axes[r, 0], img, "input")
            hidden = batch["mask"][r].view(grid, grid).repeat_interleave(p, 0) \
                .repeat_interleave(p, 1)
            _show(axes[r, 1], img.masked_fill(hidden, -3.0), "encoder sees")
        fig.suptitle(f"MAE: {method.cfg.mask_ratio:.0%} of patches hidden", fontsize=9)
    fig.tight_layout()
    return fig


def plot_log(log: pd.DataFrame, monitor: pd.DataFrame | None = None) -> plt.Figure:
    """Loss terms, then (when ``monitor`` has records) the online kNN scores beside them,
    learning rate and throughput over the run."""
    terms = [c for c in log.columns if c.endswith("_loss")]
    knn = monitor is not None and not monitor.empty
    fig, axes = plt.subplots(1, 3 + knn, figsize=(13 + 4 * knn, 3.4))
    axes[0].plot(log.step, log.loss, label="total", color="black")
    for term in terms:
        axes[0].plot(log.step, log[term], label=term, lw=1)
    axes[0].set_title("loss")
    axes[0].legend(fontsize=7)
    if knn:
        _plot_monitor(axes[1], log, monitor)
    axes[1 + knn].plot(log.step, log.lr)
    axes[1 + knn].set_title("learning rate")
    axes[2 + knn].plot(log.step, log.images_per_s)
    axes[2 + knn].set_title("images / s" + ("" if log.mfu.isna().all()
                                            else f" (MFU {log.mfu.median():.0%} median)"))
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def _plot_monitor(ax, log: pd.DataFrame, monitor: pd.DataFrame) -> None:
    """kNN accuracy (solid) and AUC (dashed) per task, one colour per task."""
    for i, (task, rows) in enumerate(monitor.groupby("task", sort=False)):
        colour = f"C{i}"
        ax.plot(rows.step, rows.knn_acc, color=colour, marker=".", label=task)
        ax.plot(rows.step, rows.knn_auc, color=colour, marker=".", ls="--")
    ax.set_ylim(0, 1)
    ax.set_title(f"online kNN: acc (solid), AUC (dashed)\n"
                 f"monitor: {monitor_share(log, monitor):.1%} of wall time", fontsize=9)
    ax.legend(fontsize=7)


def data_source(p: PretrainParams) -> str:
    """"synthetic" for generated MedMNIST-format data, "real" otherwise; a curated corpus
    is "mixed" when only some of its sources are synthetic."""
    if p.data == "folder":
        return "real"
    if p.data == "corpus":
        return data_kind(corpus_roots(resolve(p.data_root)))[0]
    return "synthetic" if synthetic_info(resolve(p.data_root)) is not None else "real"


def data_banner(p: PretrainParams) -> str:
    """A Markdown line saying which images the run trains on."""
    subset = (f"{p.data_count} images" if p.data_count else f"{p.data_fraction:.0%} subset")
    subset += f", modalities {p.modalities}" if p.modalities else ", all modalities"
    where = f"`{resolve(p.data_root)}`"
    if p.data == "corpus":
        named = f"subset `{p.corpus_subset}`" if p.corpus_subset else "all of it"
        mixed = {"synthetic": " All its sources are SYNTHETIC.",
                 "mixed": " Some of its sources are SYNTHETIC MedMNIST-format images."}
        return (f"**Data: a curated corpus** at {where} ({named}; {subset})."
                + mixed.get(data_source(p), ""))
    if data_source(p) == "synthetic":
        return (f"**Data: SYNTHETIC** MedMNIST-format train images at {where} ({subset}). "
                "They exercise the pipeline; they say nothing about medical images.")
    kind = "a folder of images" if p.data == "folder" else "real MedMNIST train splits"
    return f"**Data: {kind}** at {where} ({subset})."

"""What notebook 03_probe shows: the data banner, sample images, the summary table and plots."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from biovfm_lib.data.medmnist import load_task
from biovfm_lib.data.synthetic import synthetic_info
from biovfm_lib.probe.metrics import STUDY_METRICS


def data_banner(root: Path, size: int) -> str:
    """A Markdown line stating whether the data are real MedMNIST or synthetic."""
    info = synthetic_info(root)
    if info is None:
        return f"**Data: real MedMNIST** files at `{root}` ({size} px)."
    return (f"**Data: SYNTHETIC** MedMNIST-format files at `{root}` ({size} px, generator "
            f"seed {info.get('seed')}, scale {info.get('scale')}). Numbers below say nothing "
            "about medical images; they show the pipeline runs end to end.")


def sample_grid(root: Path, tasks: list[str], size: int, per_task: int = 6) -> plt.Figure:
    """A row of training images per task, titled with their labels."""
    fig, axes = plt.subplots(len(tasks), per_task, figsize=(1.3 * per_task, 1.4 * len(tasks)),
                             squeeze=False)
    for row, flag in zip(axes, tasks):
        data = load_task(flag, root, size)
        imgs, labels = data.images["train"], data.labels["train"]
        for ax, i in zip(row, np.linspace(0, len(imgs) - 1, per_task).astype(int)):
            ax.imshow(imgs[i], cmap="gray" if imgs.ndim == 3 else None, vmin=0, vmax=255)
            ax.set_title(",".join(map(str, np.flatnonzero(labels[i])) if data.multilabel
                                  else str(labels[i][0])), fontsize=7)
            ax.axis("off")
        row[0].text(-0.1, 0.5, flag.replace("mnist", ""), transform=row[0].transAxes,
                    ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def main_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The main probe's rows (results written before ``main`` existed hold nothing else)."""
    return results[results["main"].astype(bool)] if "main" in results else results


def summary_table(results: pd.DataFrame, split: str = "test",
                  metrics: tuple[str, ...] = STUDY_METRICS) -> pd.DataFrame:
    """Tasks x metrics (by default those the study publishes) of the main probe, each cell
    'value [low, high]' in percent, with a mean row."""
    results = main_rows(results)
    df = results[results.split == split]
    value = df.pivot(index="task", columns="metric", values="value")[list(metrics)]
    low = df.pivot(index="task", columns="metric", values="ci_low")[list(metrics)]
    high = df.pivot(index="task", columns="metric", values="ci_high")[list(metrics)]
    cells = value.map(lambda v: f"{100 * v:.1f}")
    if low.notna().all().all():
        cells = cells + " [" + (100 * low).round(1).astype(str) + ", " + \
            (100 * high).round(1).astype(str) + "]"
    cells.loc["mean"] = value.mean().map(lambda v: f"{100 * v:.1f}")
    return cells


def split_notes(results: pd.DataFrame, split: str = "test") -> str:
    """A Markdown list of what the rows of ``split`` note (classes absent, ...), or ''."""
    if "note" not in results:
        return ""
    df = results[(results.split == split) & (results.note.fillna("") != "")]
    notes = df.drop_duplicates(["task", "note"])
    return "\n".join(f"- **{t.replace('mnist', '')}**: {n}" for t, n in zip(notes.task, notes.note))


def plot_metrics(results: pd.DataFrame, split: str = "test",
                 metrics: tuple[str, ...] = STUDY_METRICS) -> plt.Figure:
    """One panel per metric: a bar per task with the main probe's bootstrap 95% CI."""
    results = main_rows(results)
    df = results[results.split == split]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), sharey=False)
    for ax, metric in zip(axes, metrics):
        m = df[df.metric == metric].set_index("task")
        err = np.vstack([m.value - m.ci_low, m.ci_high - m.value]).clip(min=0)
        ax.bar(range(len(m)), m.value, yerr=None if np.isnan(err).all() else err, capsize=2,
               color="tab:blue")
        ax.set_xticks(range(len(m)), [t.replace("mnist", "") for t in m.index], rotation=90)
        ax.set_title(metric)
        ax.set_ylim(min(0.0, float(m.value.min())), 1.0)
    fig.suptitle(f"Linear probe, {split} split (95% bootstrap CI)")
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame) -> plt.Figure:
    """Validation loss per epoch for each task and learning rate (selection criterion)."""
    tasks = list(dict.fromkeys(history.task))
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for lr, h in history[history.task == task].groupby("lr"):
            ax.plot(h.epoch, h.val_loss, label=f"lr {lr:g}")
            ax.plot(h.epoch, h.train_loss, ls=":", color=ax.lines[-1].get_color())
        ax.set_title(task.replace("mnist", ""), fontsize=9)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("epoch")
    fig.supylabel("loss (solid: val, dotted: train)")
    fig.tight_layout()
    return fig

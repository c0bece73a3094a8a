"""Figures of notebook 01_curation: what the study's corpus is made of, what our run kept
and rejected, and what the images look like."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from biovfm_lib.curation.shards import read_member
from biovfm_lib.curation.sources import Source


def registry_table(sources: list[Source]) -> pd.DataFrame:
    """The registry as a table (one row per source, as the study's Table 1)."""
    return pd.DataFrame([{"source": s.name, "modality": s.modality, "year": s.year,
                          "images": s.images or 0, "available": s.available}
                         for s in sources])


def plot_composition(table: pd.DataFrame, top: int = 20) -> plt.Figure:
    """Images per modality and the largest sources, on log axes: the corpus spans four
    orders of magnitude, from 20-image fundus sets to 5M-image radiology collections. A
    multi-modality source (``ct+mr``) splits its images evenly over its modalities: the study
    gives no finer breakdown."""
    per_modality: dict[str, float] = {}
    for modality, images in zip(table["modality"], table["images"]):
        parts = modality.split("+")
        for part in parts:
            per_modality[part] = per_modality.get(part, 0) + images / len(parts)
    modalities = pd.Series(per_modality).sort_values()
    largest = table.nlargest(top, "images").sort_values("images")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(4, 0.28 * top)))
    left.barh(modalities.index, modalities.to_numpy(), color="tab:blue")
    left.set(xscale="log", xlabel="images", title=f"per modality ({table['images'].sum():,})")
    right.barh(largest["source"], largest["images"], color="tab:green")
    right.set(xscale="log", xlabel="images", title=f"the {top} largest of {len(table)} sources")
    fig.tight_layout()
    return fig


def plot_survival(summary: pd.DataFrame) -> plt.Figure:
    """Per source: images read, then what rejects and duplicates took away."""
    shown = summary[summary["available"]].set_index("source")
    parts = {"kept": shown["kept"], "exact duplicates": shown["exact_duplicates"],
             "near duplicates": shown["near_duplicates_within"]
             + shown["near_duplicates_across"], "rejected files/frames": shown["rejects"]}
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    left = np.zeros(len(shown))
    for label, counts in parts.items():
        ax.barh(shown.index, counts.to_numpy(), left=left, label=label)
        left += counts.to_numpy()
    ax.set(xscale="symlog", xlabel="images (rejects: files or frames)",
           title="what each source contributed")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_rejects(rejects: pd.DataFrame) -> plt.Figure:
    """Rejects by reason and source: a bad download or a missing codec shows up as one bar."""
    counts = rejects.groupby(["reason", "source"]).size().unstack(fill_value=0)
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(len(counts), 1) + 1.5))
    if len(counts):
        counts.plot.barh(stacked=True, ax=ax)
        ax.legend(fontsize=8)
    ax.set(xlabel="rejected files or frames", ylabel="", title="rejects by reason")
    fig.tight_layout()
    return fig


def load_image(corpus: str | Path, row: pd.Series) -> np.ndarray:
    """One corpus image as stored (grey or RGB), from its shard."""
    data = read_member(Path(corpus) / row["shard"], int(row["offset"]))
    return np.asarray(Image.open(io.BytesIO(data)))


def sample_grid(corpus: str | Path, manifest: pd.DataFrame, by: str = "modality",
                per_group: int = 8, seed: int = 0) -> plt.Figure:
    """A row of random images per group (modality or source), as the corpus stores them."""
    groups = sorted(manifest[by].unique())
    fig, axes = plt.subplots(len(groups), per_group, squeeze=False,
                             figsize=(1.4 * per_group, 1.5 * len(groups)))
    for row_axes, group in zip(axes, groups):
        members = manifest[manifest[by] == group]
        picked = members.sample(min(per_group, len(members)), random_state=seed)
        for ax, (_, image_row) in zip(row_axes, picked.iterrows()):
            image = load_image(corpus, image_row)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
        row_axes[0].set_ylabel(group, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_subsets(index: dict[str, dict]) -> plt.Figure:
    """Sizes of the named subsets (nested data fractions and modality subsets)."""
    names = sorted(index, key=lambda n: index[n]["images"])
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    ax.barh(names, [index[n]["images"] for n in names], color="tab:purple")
    ax.set(xlabel="images", title="named subsets")
    fig.tight_layout()
    return fig

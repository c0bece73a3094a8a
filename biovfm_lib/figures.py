"""Saving figures the house way: PNG and SVG beside the notebook run that drew them."""
from __future__ import annotations

from pathlib import Path

import matplotlib.figure


def save_figure(fig: matplotlib.figure.Figure, run_dir: str | Path, name: str) -> None:
    """Write ``<run_dir>/figures/<name>.{png,svg}``.

    It returns nothing on purpose: a notebook cell that ends with this call would otherwise
    print the paths as the cell's output, in every report.
    """
    out = Path(run_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=150, bbox_inches="tight")

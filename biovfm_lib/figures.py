"""Saving figures the house way: PNG and SVG beside the notebook run that drew them."""
from __future__ import annotations

from pathlib import Path

import matplotlib.figure


def save_figure(fig: matplotlib.figure.Figure, run_dir: str | Path, name: str) -> list[Path]:
    """Write ``<run_dir>/figures/<name>.{png,svg}`` and return the paths."""
    out = Path(run_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths

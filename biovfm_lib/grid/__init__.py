"""Scaling grids: a grid file's points run through the notebooks, then the analysis once.

``spec`` reads a grid file into points with stable ids, ``state`` keeps what ran under
``outputs/grids/<grid>/``, ``runner`` runs points (here, side by side, or per GPU set),
``slurm`` submits them as jobs and ``plan`` says what a command would do.
"""
from biovfm_lib.grid.spec import Grid, GridError, Point, Step, load_grid

__all__ = ["Grid", "GridError", "Point", "Step", "load_grid"]

"""Whole-file replacement for the pipeline's tables: a reader sees the old file or the new
one, never half of either. (Run folders use :mod:`biovfm_lib.runs`, which refuses to
overwrite; a corpus folder is rewritten in place when its inputs change.)"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def replace_parquet(df: pd.DataFrame, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    df.to_parquet(partial, index=False)
    partial.replace(path)


def replace_json(path: Path, obj: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(obj, indent=2, sort_keys=True))
    partial.replace(path)

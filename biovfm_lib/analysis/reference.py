"""The BioVFM-21M paper's linear-probe test AUCs (arXiv 2505.09329), as a tidy table.

Our runs are compared against these numbers, so they live in a versioned CSV rather than in
code: ``params/reference/biovfm_paper_auc.csv``. Values are test AUC in percent (metric
``auc``, source ``reference``). ``params_total_m`` is the study's x-axis: total pretraining
parameters *including the MAE decoder* (31.2 / 47.4 / 111.66 / 329.24 M for ViT-T/S/B/L).
``params_encoder_m`` is the encoder alone; counted with
``timm.create_model('vit_{tiny,small,base,large}_patch16_224', num_classes=0)`` on the meta
device (timm 1.x): 5.524 / 21.666 / 85.799 / 303.302 M, stored rounded to 0.1 M.
BiomedCLIP is a single off-the-shelf model, so its ``size`` and parameter counts are empty (NaN).

Every DINOv2 and MAE number in the table comes from the study's model-size experiment, which
pretrains on all of BioVFM-21M: :func:`load_reference` labels those rows ``data_subset =
"full"`` and ``modality_subset = "all"``, the labels a run on its whole pool of every modality
gets (see :mod:`biovfm_lib.analysis.inputs`), so slopes from both sources hold the subset
fixed the same way. BiomedCLIP was pretrained elsewhere (PMC figures, not BioVFM-21M) and gets
``external`` for both.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE_CSV = Path(__file__).resolve().parents[2] / "params" / "reference" / "biovfm_paper_auc.csv"
COLUMNS = (
    "source", "algorithm", "size", "task", "metric", "value", "params_total_m", "params_encoder_m",
)
NUMERIC = ("value", "params_total_m", "params_encoder_m")
REQUIRED = ("source", "algorithm", "task", "metric", "value")  # never empty, even for BiomedCLIP
SUBSET_COLUMNS = ("data_subset", "modality_subset")  # derived, not in the CSV
STUDY_SUBSET = ("full", "all")
EXTERNAL = "external"


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """Read the reference table, failing loudly (file and column named) if it is malformed,
    because silently mis-parsed reference numbers would corrupt every comparison downstream.

    Returns the CSV's ``COLUMNS`` plus the derived ``SUBSET_COLUMNS`` (see the module notes).
    """
    path = Path(path) if path is not None else REFERENCE_CSV
    if not path.is_file():
        raise FileNotFoundError(f"reference table not found: {path}")
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    for col in REQUIRED:
        if df[col].isna().any():
            raise ValueError(f"{path}: column {col!r} has empty values")
    for col in NUMERIC:
        converted = pd.to_numeric(df[col], errors="coerce")
        bad = converted.isna() & df[col].notna()
        if bad.any():
            raise ValueError(
                f"{path}: column {col!r} has non-numeric values {df.loc[bad, col].tolist()[:5]}"
            )
        df[col] = converted.astype(float)
    study = df["size"].notna()
    return df[list(COLUMNS)].assign(**{col: study.map({True: label, False: EXTERNAL})
                                       for col, label in zip(SUBSET_COLUMNS, STUDY_SUBSET)})

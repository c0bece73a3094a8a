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
``external`` for both. The loader also exposes ``params_total_m`` as ``params_study_m``, the
name under which runs carry the same x (:mod:`biovfm_lib.analysis.inputs`). The study
probed MedMNIST+'s 224 px files at 224 px, so every row says so (``img_size`` and
``input_size`` 224, ``resolution`` ``"224"``) and is fitted beside runs of that resolution
only.

Besides the AUCs, the study published its per-task slopes (the bar charts' 4-decimal labels;
``biovfm_paper_slopes.csv``) and its Pearson r of those slopes with task properties
(``biovfm_paper_correlations.csv``), both with its algorithm labels ``DINOv2`` / ``MAE``.
:func:`compare_slopes` and :func:`compare_correlations` set ours beside them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from biovfm_lib.analysis.inputs import UNRECORDED, resolution_label
from biovfm_lib.analysis.scaling import SLOPE_COLUMNS

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "params" / "reference"
REFERENCE_CSV = REFERENCE_DIR / "biovfm_paper_auc.csv"
PUBLISHED_SLOPES_CSV = REFERENCE_DIR / "biovfm_paper_slopes.csv"
PUBLISHED_CORRELATIONS_CSV = REFERENCE_DIR / "biovfm_paper_correlations.csv"
COLUMNS = (
    "source", "algorithm", "size", "task", "metric", "value", "params_total_m", "params_encoder_m",
)
NUMERIC = ("value", "params_total_m", "params_encoder_m")
REQUIRED = ("source", "algorithm", "task", "metric", "value")  # never empty, even for BiomedCLIP
SUBSET_COLUMNS = ("data_subset", "modality_subset")  # derived, not in the CSV
STUDY_SUBSET = ("full", "all")
EXTERNAL = "external"
STUDY_X = "params_study_m"  # derived: the study's x under the name runs carry it
STUDY_RECIPE = "study"  # what the study pretrained with, by definition of our recipe names
STUDY_IMG_SIZE = 224  # MedMNIST+ files of 224 px, probed at their own size
STUDY_RESOLUTION = resolution_label(STUDY_IMG_SIZE, STUDY_IMG_SIZE, None)
STUDY_XS = (STUDY_X, "params_total_m")  # the same numbers in the reference table
# The study's algorithm labels -> this project's spelling.
STUDY_ALGORITHMS = {"DINOv2": "dinov2", "MAE": "mae"}
# The study's property labels -> our properties that measure the same thing. Its "DBI" does
# not say in which space it was computed, so both of ours stand beside it; "Compressibility"
# is its median gzip ratio, our ``compress_gzip``.
STUDY_PROPERTIES = {"# Samples": ("n_samples",), "# Classes": ("n_classes",),
                    "DBI": ("dbi_features", "dbi_pixels"), "Compressibility": ("compress_gzip",)}
COUNT_PROPERTIES = ("n_train", "n_samples", "n_classes")  # known without any image
N_STUDY_TASKS = 12  # the study correlates over all 12 MedMNIST 2D tasks
# Our recomputed slopes differ from the published ones by the AUC table's digitisation.
DIGITISATION_NOTE = ("its slopes are refitted on AUCs digitised from the study's figure at 0.1 "
                     "AUC, the published ones are the study's 4-decimal bar-chart labels: a few "
                     "tasks differ by up to 5e-4")


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """Read the reference table, failing loudly (file and column named) if it is malformed,
    because silently mis-parsed reference numbers would corrupt every comparison downstream.

    Returns the CSV's ``COLUMNS`` plus the derived ``SUBSET_COLUMNS``, ``STUDY_X``, ``recipe``
    and the study's resolution (see the module notes).
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
                                       for col, label in zip(SUBSET_COLUMNS, STUDY_SUBSET)},
                                    **{STUDY_X: df["params_total_m"]},
                                    recipe=study.map({True: STUDY_RECIPE, False: EXTERNAL}),
                                    img_size=float(STUDY_IMG_SIZE),
                                    input_size=float(STUDY_IMG_SIZE),
                                    resolution=STUDY_RESOLUTION)


def _read_study_table(path: Path, columns: tuple[str, ...], numeric: str) -> pd.DataFrame:
    """A small published table, with its algorithm labels in our spelling; loud on any flaw,
    because a mis-read published number would make every comparison with it wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"published table not found: {path}")
    df = pd.read_csv(path)
    if missing := [c for c in columns if c not in df.columns]:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(columns)}")
    if unknown := sorted(set(df["algorithm"]) - set(STUDY_ALGORITHMS)):
        raise ValueError(f"{path}: unknown algorithm label(s) {unknown}; "
                         f"expected {sorted(STUDY_ALGORITHMS)}")
    values = pd.to_numeric(df[numeric], errors="coerce")
    if values.isna().any():
        raise ValueError(f"{path}: column {numeric!r} has empty or non-numeric values")
    if df.duplicated([c for c in columns if c != numeric]).any():
        raise ValueError(f"{path}: repeated rows")
    return df[list(columns)].assign(algorithm=df["algorithm"].map(STUDY_ALGORITHMS),
                                    **{numeric: values.astype(float)})


def load_published_slopes(path: str | Path | None = None) -> pd.DataFrame:
    """The study's published per-task AUC slopes against model size (``task, algorithm,
    slope``; task ``mean`` is its fit to the mean AUC), algorithms in our spelling."""
    return _read_study_table(Path(path) if path else PUBLISHED_SLOPES_CSV,
                             ("task", "algorithm", "slope"), "slope")


def published_slope_table(published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The published slopes as a slope table (:data:`~biovfm_lib.analysis.scaling.SLOPE_COLUMNS`,
    source ``published``): power-law AUC fits against model size on the whole corpus, which
    is what they are; the study printed no se, CI or p-value, so those are NaN."""
    published = load_published_slopes() if published is None else published
    labels = {"source": "published", "metric": "auc", "axis": "model_size", "fit": "power_law",
              "data_subset": STUDY_SUBSET[0], "modality_subset": STUDY_SUBSET[1],
              "recipe": STUDY_RECIPE, "resolution": STUDY_RESOLUTION, "n_points": 4,
              "note": "the study's bar-chart label (4 decimals)"}
    return published.assign(**labels).reindex(columns=SLOPE_COLUMNS)


def load_published_correlations(path: str | Path | None = None) -> pd.DataFrame:
    """The study's Pearson r of its slopes with each task property (``label, algorithm, r``;
    labels as its figure: ``# Samples``, ``# Classes``, ``DBI``, ``Compressibility``)."""
    df = _read_study_table(Path(path) if path else PUBLISHED_CORRELATIONS_CSV,
                           ("label", "algorithm", "r"), "r")
    if unknown := sorted(set(df["label"]) - set(STUDY_PROPERTIES)):
        raise ValueError(f"unknown property label(s) {unknown}; expected {list(STUDY_PROPERTIES)}")
    return df


def compare_slopes(slopes: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our power-law AUC slopes against model size beside the published ones, per source,
    algorithm and task (``mean`` last): ``source, algorithm, task, slope, published, diff``
    (ours minus the study's).

    ``slopes`` is a :func:`~biovfm_lib.analysis.scaling.scaling_slopes` table; only its
    whole-corpus (``full`` / ``all``) model-size AUC rows of the study recipe, probed at the
    study's resolution, are the study's experiment. Only fits on the study's x (``STUDY_XS``)
    are comparable: the caller checks that.
    """
    published = load_published_slopes() if published is None else published
    ours = slopes.query("fit == 'power_law' and axis == 'model_size' and metric == 'auc' and "
                        "data_subset == 'full' and modality_subset == 'all'").dropna(
                            subset=["slope"])  # a curve of one size has no slope to compare
    if "recipe" in ours:  # another recipe's slope is another experiment than the study's
        ours = ours[ours["recipe"].isin([STUDY_RECIPE, UNRECORDED])]
    if "resolution" in ours:  # a slope of 28 px probes is another experiment too
        ours = ours[ours["resolution"].isin([STUDY_RESOLUTION, UNRECORDED])]
    merged = ours[["source", "algorithm", "task", "slope"]].merge(
        published.rename(columns={"slope": "published"}), on=["algorithm", "task"], how="inner")
    merged = merged.assign(diff=merged["slope"] - merged["published"],
                           last=merged["task"].eq("mean"))  # the mean after the tasks
    return (merged.sort_values(["source", "algorithm", "last", "task"]).drop(columns="last")
            .reset_index(drop=True))


def _comparability(prop: str, r: float, n_tasks: int, data_source: str) -> str:
    """Why an r of ours cannot be held against the study's, or "" if it can."""
    image = prop not in COUNT_PROPERTIES
    if image and (data_source == "none" or np.isnan(r)):
        return "needs data"
    notes = []
    if data_source == "synthetic" and image:
        notes.append("synthetic images: not the study's tasks")
    elif data_source == "synthetic" and prop != "n_classes":  # classes are the real ones
        notes.append("synthetic files: scaled counts")
    if n_tasks != N_STUDY_TASKS:
        notes.append(f"{n_tasks} of the study's {N_STUDY_TASKS} tasks")
    return "; ".join(notes)


def compare_correlations(correlations: pd.DataFrame, published: pd.DataFrame | None = None,
                         data_source: str = "real") -> pd.DataFrame:
    """The study's Pearson r beside ours, one row per (study label, our property, algorithm):
    ``label, property, algorithm, published, r, diff, same_2dp, note``.

    ``same_2dp`` says whether ours rounds to the published value (the study prints two
    decimals). ``note`` says why an r is not comparable: an image property with no images
    (``needs data``), synthetic files, or fewer tasks than the study's 12; counts need no
    images. ``correlations`` is a :func:`~biovfm_lib.analysis.correlate.correlate` table.
    """
    published = load_published_correlations() if published is None else published
    pearson = correlations[correlations["method"] == "pearson"].set_index(
        ["algorithm", "property"])
    rows = []
    for item in published.itertuples(index=False):
        for prop in STUDY_PROPERTIES[item.label]:
            key = (item.algorithm, prop)
            r = float(pearson["r"].get(key, np.nan))
            note = _comparability(prop, r, int(pearson["n_tasks"].get(key, 0)), data_source)
            r = np.nan if note == "needs data" else r
            rows.append({"label": item.label, "property": prop, "algorithm": item.algorithm,
                         "published": item.r, "r": r, "diff": r - item.r,
                         "same_2dp": bool(np.isfinite(r) and round(r, 2) == item.r),
                         "note": note})
    return pd.DataFrame(rows, columns=["label", "property", "algorithm", "published", "r",
                                       "diff", "same_2dp", "note"])

"""Typed, validated notebook parameters.

papermill injects parameters as plain globals and only *warns* about names the notebook does
not declare, so a typo such as ``epoch: 5`` would silently run with the default. Every
notebook therefore validates its namespace here, right after the injected cell, and refuses
unknown keys, wrong types and out-of-range values with one error that names each bad key.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from biovfm_lib.yaml_io import YamlError, parse_yaml, read_yaml

MEDMNIST_2D_TASKS: tuple[str, ...] = (
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)
MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)

# The probe's metric names (biovfm_lib.probe.metrics.METRICS, which a test keeps in step).
ProbeMetric = Literal["auc", "acc", "acc_tuned", "balanced_acc", "mcc", "f1", "f1_macro",
                      "f1_micro", "recall_macro", "recall_micro"]

# Names the runner injects into every notebook; they are not part of a notebook's own parameters.
RUNNER_KEYS: tuple[str, ...] = ("run_dir",)

# Pretraining recipes (biovfm_lib.ssl.dinov2.DINOV2_RECIPES; MAE has only "study"). Runs,
# configs and sidecars written before recipes were named trained what is now LEGACY_RECIPES.
PretrainRecipe = Literal["study", "dinov2_p14"]
LEGACY_RECIPES: dict[str, str] = {"dinov2": "dinov2_p14", "mae": "study"}


class ParamError(ValueError):
    """A parameter set was rejected; the message names every offending key."""


class NotebookParams(BaseModel):
    """Base for a notebook's parameters: strict types, no unknown keys, frozen once validated."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def validate_mapping(cls, values: Mapping[str, Any]) -> NotebookParams:
        """Validate ``values``; raise :class:`ParamError` naming each bad key."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise ParamError(_describe(cls, err)) from None

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> NotebookParams:
        """Validate the globals of a notebook kernel after papermill's injected cell.

        Every public literal-valued global at that point is a parameter: those of the
        ``parameters`` cell and those papermill injected. Anything not declared is an error.
        """
        values = {
            k: v for k, v in namespace.items()
            if not k.startswith("_") and k not in RUNNER_KEYS and k not in _IPYTHON_NAMES
            and _is_literal(v)
        }
        return cls.validate_mapping(values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None
                  ) -> NotebookParams:
        """Validate a papermill parameter file (plus overrides) before any kernel starts."""
        return cls.validate_mapping({**load_yaml(path), **(overrides or {})})

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def parse_override(cls, key: str, text: str) -> Any:
        """The value of ``-p key text``: YAML, as papermill's ``-y`` reads it, except that a
        text parameter keeps the text as typed (``-p name no`` is the name "no", not False)."""
        try:
            value = parse_yaml(text, f"-p {key}")
        except YamlError as err:
            raise ParamError(str(err)) from None
        field = cls.model_fields.get(key)
        if field is not None and field.annotation is str and not isinstance(value, str):
            return text
        return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a parameter file; an empty file is an empty mapping, any other non-mapping is an
    error."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"parameter file not found: {path}")
    try:
        data = read_yaml(path) or {}
    except YamlError as err:
        raise ParamError(str(err)) from None
    if not isinstance(data, dict):
        raise ParamError(f"parameter file {path} must hold a mapping of key: value, "
                         f"got {type(data).__name__}")
    return data


def _check_tasks(tasks: list[str]) -> list[str]:
    unknown = [t for t in tasks if t not in MEDMNIST_2D_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(MEDMNIST_2D_TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError("tasks must not repeat")
    return tasks


def _check_medmnist_size(size: int) -> int:
    if size not in MEDMNIST_SIZES:
        raise ValueError(f"must be one of the MedMNIST sizes {list(MEDMNIST_SIZES)}")
    return size


def _check_encoder(name: str) -> str:
    from biovfm_lib.models.sizes import VIT_SIZES

    if name not in VIT_SIZES:
        raise ValueError(f"unknown encoder size {name!r}; choose from {list(VIT_SIZES)}")
    return name


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _check_plain_name(name: str) -> str:
    """A folder name, never a path: ``../x`` or ``a/b`` would write outside ``out_root``."""
    if name and not _PLAIN_NAME.match(name):
        raise ValueError(f"{name!r} must be a plain folder name: letters, digits and '_.+-', "
                         "starting with a letter or digit (no '/', no '..')")
    return name


def _check_positive(values: list[float]) -> list[float]:
    if any(v <= 0 for v in values):
        raise ValueError("every value must be > 0")
    return values


def _check_layers(layers: str | list[int]) -> str | list[int]:
    if isinstance(layers, str):
        if layers not in ("last", "all"):
            raise ValueError("must be 'last', 'all' or a list of block indices")
    elif not layers or any(i < 0 for i in layers) or len(set(layers)) != len(layers):
        raise ValueError("block indices: at least one, each >= 0, none repeated")
    return layers


def _check_counts(values: list[int]) -> list[int]:
    if any(v < 1 for v in values) or len(set(values)) != len(values):
        raise ValueError("every value must be >= 1, none repeated")
    return values


def _check_fractions(values: list[float]) -> list[float]:
    if any(not 0 < v < 1 for v in values) or len(set(values)) != len(values):
        raise ValueError("every fraction must be in (0, 1), none repeated (all labels are "
                         "the main probe)")
    return values


FeaturePool = Literal["mean_patch", "cls", "last4_avgpool"]
InputFit = Literal["pad", "resize"]
DEFAULT_POOL = "mean_patch"
Tasks = Annotated[list[str], Field(min_length=1), AfterValidator(_check_tasks)]
MedMNISTSize = Annotated[int, AfterValidator(_check_medmnist_size)]
EncoderSize = Annotated[str, AfterValidator(_check_encoder)]
ALL_TASKS = Field(default_factory=lambda: list(MEDMNIST_2D_TASKS))


class MedMNISTTaskParams(NotebookParams):
    """The MedMNIST-format tasks a notebook reads: real files under ``data_root``, or synthetic
    ones it writes there first; notebooks reading them alike share one feature cache."""

    data_root: str = "outputs/data/medmnist"
    data: Literal["medmnist", "synthetic"] = "medmnist"
    synthetic_scale: float = Field(0.02, gt=0, le=1)
    synthetic_seed: int = Field(0, ge=0)
    tasks: Tasks = ALL_TASKS
    size: MedMNISTSize = 224


class ProbeParams(MedMNISTTaskParams):
    """Parameters of notebooks/03_probe: linear probing of one encoder on MedMNIST tasks."""

    verify_md5: bool = False
    # encoder
    encoder: EncoderSize = "base"
    patch_size: int = Field(0, ge=0)  # 0: the size's default patch
    checkpoint: str = ""  # empty: random initialisation (a baseline)
    checkpoint_format: Literal["auto", "biovfm", "dinov2", "mae", "timm"] = "auto"
    timm_name: str = ""  # architecture of a plain timm checkpoint
    # heads of a checkpoint that records none (0: its record, else the official ViT's of its
    # width; other widths are refused, since weights load under any count that divides them)
    num_heads: int = Field(0, ge=0)
    # the feature: mean_patch (the study's), cls, or last4_avgpool (DINOv2's linear-eval
    # feature: the CLS tokens of the last 4 blocks and the mean patch token, after the final
    # norm). ``pool`` is the evaluation issue's name for the same setting: set either one
    # (one left at the default follows the other); both set to different values is an error
    features: FeaturePool = DEFAULT_POOL
    pool: FeaturePool = DEFAULT_POOL
    # blocks to probe besides the last (last: none; all: every block; or block indices from
    # 0): a linear probe (and kNN, if on) per block, on cached features of one forward pass
    layers: Annotated[str | list[int], AfterValidator(_check_layers)] = "last"
    # the encoder's input side (0: the image's own ``size``, as the study probes 224 px files
    # at 224); another side probes a resolution with compute fixed, MedMNIST+'s protocol:
    # ``input_fit`` pad = its centred zero padding of the normalised image (so a grey border:
    # mean = std = 0.5), resize = bilinear with antialiasing (also shrinks)
    input_size: int = Field(0, ge=0)
    input_fit: InputFit = "pad"
    # protocol
    protocol: Literal["official", "cached"] = "official"  # cached: ours, the fast path
    # official only (cached features are eval-mode by construction): study = the backbone in
    # train mode with the study's drop path while heads train (DINOv2 0.3, ViT-H 0.4, else 0),
    # eval mode for validation and test; eval = the clean variant, eval mode throughout
    backbone_mode: Literal["study", "eval"] = "study"
    # feature arithmetic: auto = bf16 autocast on GPU, fp32 on CPU; the study used fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lrs: Annotated[list[float], Field(min_length=1), AfterValidator(_check_positive)] = Field(
        default_factory=lambda: [1e-2])
    weight_decay: float = Field(0.0, ge=0)
    bootstrap: int = Field(1000, ge=0)
    # study: the BioVFM evaluation's rules (its MCC threshold search and its order-statistic
    # bootstrap interval); exact / percentile: ours (see biovfm_lib/probe/thresholds.py, metrics.py)
    threshold_rule: Literal["study", "exact"] = "study"
    ci_rule: Literal["study", "percentile"] = "study"
    seed: int = Field(0, ge=0)
    device: str = "auto"
    extract_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0)
    cache_dir: str = "outputs/cache/features"
    # evaluations beyond the study (all off by default; all on cached eval-mode features, so
    # their rows say protocol cached whatever ``protocol`` the main probe ran under)
    knn: Annotated[list[int], AfterValidator(_check_counts)] = Field(default_factory=list)
    knn_temperature: float = Field(0.07, gt=0)  # DINOv2's
    label_fractions: Annotated[list[float], AfterValidator(_check_fractions)] = Field(
        default_factory=list)  # stratified, nested subsets of the training labels
    shots: Annotated[list[int], AfterValidator(_check_counts)] = Field(
        default_factory=list)  # labelled training images per class
    label_draws: int = Field(5, ge=1)  # draws of each label setting, fixed seeds
    n_runs: int = Field(1, ge=1)  # linear heads trained with seeds seed, seed + 1, ...

    @model_validator(mode="before")
    @classmethod
    def _one_pooling(cls, values: Any) -> Any:
        """``features`` and ``pool`` name one setting: a key at its default follows the other."""
        if not isinstance(values, dict):
            return values
        features = values.get("features", DEFAULT_POOL)
        pool = values.get("pool", DEFAULT_POOL)
        if not (isinstance(features, str) and isinstance(pool, str)):
            return values  # the fields' own checks name the bad key
        if DEFAULT_POOL not in (features, pool) and features != pool:
            raise ValueError(f"features / pool: two names for one setting, given different "
                             f"values (features {features!r}, pool {pool!r}); set one of them")
        chosen = pool if features == DEFAULT_POOL else features
        return {**values, "features": chosen, "pool": chosen}

    @property
    def encoder_input(self) -> int:
        """The side of the image the encoder sees."""
        return self.input_size or self.size

    @property
    def fits_input(self) -> bool:
        """Whether images are padded or resized to another side before the encoder."""
        return self.encoder_input != self.size

    @model_validator(mode="after")
    def _pad_only_grows(self) -> ProbeParams:
        if self.input_fit == "pad" and 0 < self.input_size < self.size:
            raise ValueError(f"input_size: padding cannot shrink a {self.size} px image to "
                             f"{self.input_size} px; set input_fit: resize, or an input_size "
                             f">= size")
        return self

    @model_validator(mode="after")
    def _last4_on_the_last_blocks(self) -> ProbeParams:
        if self.features == "last4_avgpool" and self.layers != "last":
            raise ValueError(f"layers: features/pool last4_avgpool reads the last 4 blocks "
                             f"together; probe other blocks with mean_patch or cls, got "
                             f"layers {self.layers!r}")
        return self

    @model_validator(mode="after")
    def _study_interval_defined(self) -> ProbeParams:
        from biovfm_lib.probe.metrics import study_min_replicates

        least = study_min_replicates(0.05)
        if self.ci_rule == "study" and 0 < self.bootstrap < least:
            raise ValueError(f"bootstrap: ci_rule 'study' takes order statistics and needs at "
                             f"least {least} replicates (or 0 for none), got {self.bootstrap}; "
                             "set ci_rule: percentile for fewer")
        return self


class PretrainParams(NotebookParams):
    """Parameters of notebooks/02_pretrain: one self-supervised pretraining run."""

    algorithm: Literal["dinov2", "mae"] = "dinov2"
    # study: what the study ran (DINOv2: dinov2's default config at patch 16, ViT-H at 14,
    # with its training mechanics; MAE: facebookresearch/mae's main_pretrain); dinov2_p14
    # (DINOv2 only): patch 14, Sinkhorn-Knopp, weight decay to 0.2, 98 px local crops
    recipe: PretrainRecipe = "study"
    encoder: EncoderSize = "base"
    # 0: the recipe's patch (DINOv2 study 16, dinov2_p14 14; MAE 16; ViT-H 14)
    patch_size: int = Field(0, ge=0)
    # data: MedMNIST-format train images (real or synthetic), a folder of images, or a corpus
    # that `biovfm curate` wrote (data_root = its folder; corpus_subset = one of its subsets)
    data: Literal["medmnist", "synthetic", "folder", "corpus"] = "medmnist"
    data_root: str = "outputs/data/medmnist"
    data_size: MedMNISTSize = 224  # which MedMNIST file size to read
    tasks: Tasks = ALL_TASKS
    synthetic_scale: float = Field(0.02, gt=0, le=1)
    synthetic_seed: int = Field(0, ge=0)
    data_fraction: float = Field(1.0, gt=0, le=1)  # nested subsets: smaller inside larger
    data_count: int = Field(0, ge=0)  # absolute subset size instead of a fraction (0: unused)
    modalities: list[str] = Field(default_factory=list)  # empty: all modalities
    corpus_subset: str = ""  # a named subset of a curated corpus (empty: all of it)
    # crops
    img_size: int = Field(224, ge=8)  # DINOv2 global crops / MAE input
    local_size: int = Field(0, ge=0)  # 0: the recipe's (DINOv2 study 96; ViT-H, dinov2_p14 98)
    n_local: int = Field(8, ge=0)
    # optimisation. An epoch is a pass over the data, except for the DINOv2 study recipe:
    # method.epoch_length iterations (dinov2's OFFICIAL_EPOCH_LENGTH, 1250), as the study ran
    epochs: int = Field(100, ge=1)
    max_steps: int = Field(0, ge=0)  # stop early after this many steps (0: all epochs)
    batch_size: int = Field(64, ge=2)  # per process
    method: dict[str, Any] = Field(default_factory=dict)  # overrides of the recipe's config
    seed: int = Field(0, ge=0)
    # engine
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # where DINOv2's colour jitter, greyscale, blur and solarisation run (crops stay in the
    # loader): auto = on the training device when it is a GPU, in the loader on CPU
    augment_on: Literal["auto", "loader", "device"] = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"  # auto: FSDP for large and huge
    activation_checkpointing: bool = False
    compile: bool = False
    nproc: int = Field(0, ge=0)  # processes per node (0: every visible GPU, else 1 CPU)
    nnodes: int = Field(1, ge=1)
    num_workers: int = Field(4, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)
    out_root: str = "outputs/pretrain"  # the training folder is out_root/<name>
    # a plain folder name; empty: derived from the parameters, so a rerun resumes the same run
    name: Annotated[str, AfterValidator(_check_plain_name)] = ""
    launcher: Literal["local", "slurm"] = "local"
    slurm: dict[str, Any] = Field(default_factory=dict)  # partition, time, account, ...
    # online kNN monitor (biovfm_lib/train/monitor.py; it changes nothing that is learned):
    # every monitor_every steps (0: off) rank 0 scores the backbone by weighted kNN (k =
    # monitor_k) on fixed samples of MedMNIST-format tasks: monitor_samples = [train memory,
    # val queries] per task. monitor_tasks empty: the first three of `tasks`. monitor_data_root
    # empty: data_root for medmnist / synthetic data, else outputs/data/medmnist;
    # monitor_data_size 0: data_size. Images are resized to img_size. The launch prints its
    # estimated share of the training compute (target < 5%: e.g. every 500 steps for DINOv2,
    # 1000 for MAE at 64 images per GPU; its cost is one evaluation per interval)
    monitor_every: int = Field(0, ge=0)
    monitor_tasks: Annotated[list[str], AfterValidator(_check_tasks)] = Field(
        default_factory=list)
    monitor_data_root: str = ""
    monitor_data_size: int = Field(0, ge=0)
    monitor_samples: list[int] = Field(default_factory=lambda: [1000, 500])
    monitor_k: int = Field(20, ge=1)

    @field_validator("monitor_data_size")
    @classmethod
    def _monitor_size(cls, size: int) -> int:
        return _check_medmnist_size(size) if size else size

    @field_validator("monitor_samples")
    @classmethod
    def _monitor_samples(cls, sizes: list[int]) -> list[int]:
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError("must be [train memory, val queries] per task, two integers >= 1")
        return sizes

    @model_validator(mode="after")
    def _monitor_k_fits(self) -> PretrainParams:
        if self.monitor_k > self.monitor_samples[0]:
            raise ValueError(f"monitor_k: {self.monitor_k} neighbours need a train memory of at "
                             f"least as many images; monitor_samples[0] is "
                             f"{self.monitor_samples[0]}")
        return self

    @model_validator(mode="after")
    def _known_method_keys(self) -> PretrainParams:
        import dataclasses

        from biovfm_lib.ssl import DINOv2Config, MAEConfig

        config = DINOv2Config if self.algorithm == "dinov2" else MAEConfig
        known = {f.name for f in dataclasses.fields(config)} - {"size", "recipe"}
        unknown = sorted(set(self.method) - known)
        if unknown:
            raise ValueError(f"method: unknown {config.__name__} key(s) {unknown}; "
                             f"known: {sorted(known)}")
        return self

    @model_validator(mode="after")
    def _recipe_fits_algorithm(self) -> PretrainParams:
        if self.algorithm == "mae" and self.recipe != "study":
            raise ValueError(f"recipe: {self.recipe!r} is a DINOv2 recipe; MAE has only "
                             "'study' (facebookresearch/mae's main_pretrain)")
        return self


class ScalingParams(NotebookParams):
    """Parameters of notebooks/04_scaling: per-task scaling fits of probe results."""

    source: Literal["both", "runs", "reference"] = "both"
    reference: str = "params/reference/biovfm_paper_auc.csv"
    run_ids: list[str] = Field(default_factory=list)  # empty: every completed 03_probe run
    # params_study_m: the study's x, the MAE pretraining model's trainable parameters at each
    # size (runs and the reference table both carry it, so their slopes share one scale)
    x: Literal["params_study_m", "params_total_m", "params_encoder_m", "images_seen"] = \
        "params_study_m"
    metrics: list[ProbeMetric] = Field(
        default_factory=lambda: ["auc"], min_length=1)
    n_boot: int = Field(1000, ge=0)


class PropertiesParams(NotebookParams):
    """Parameters of notebooks/05_task_properties: task properties against scaling slopes."""

    data_root: str = "outputs/data/medmnist"
    # none: no images; counts from medmnist.INFO, image properties reported as needing data
    data: Literal["medmnist", "synthetic", "none"] = "medmnist"
    synthetic_scale: float = Field(0.02, gt=0, le=1)
    synthetic_seed: int = Field(0, ge=0)
    size: MedMNISTSize = 224
    tasks: Tasks = ALL_TASKS
    encoder: EncoderSize = "small"  # for DBI on features (random init unless checkpoint)
    patch_size: int = Field(0, ge=0)
    checkpoint: str = ""
    sample: int = Field(500, ge=10)  # training images per task, fixed seed
    pixel_size: int = Field(16, ge=2)
    seed: int = Field(0, ge=0)
    # reference: refitted on the AUC table; published: the study's own (biovfm_paper_slopes.csv);
    # runs: the latest 04_scaling run
    slopes: Literal["reference", "published", "runs"] = "reference"
    metric: ProbeMetric = "auc"
    n_boot: int = Field(1000, ge=0)
    adjust: Literal["holm", "fdr_bh"] = "holm"
    device: str = "auto"

    @model_validator(mode="after")
    def _published_slopes_are_auc(self) -> PropertiesParams:
        if self.slopes == "published" and self.metric != "auc":
            raise ValueError(f"metric: the study published AUC slopes only, got {self.metric!r}")
        return self


class CurationParams(NotebookParams):
    """Parameters of notebooks/01_curation (and of ``biovfm curate``): one corpus."""

    sources: str = "params/curation/demo_sources.yaml"  # the registry of sources to curate
    out: str = "outputs/corpus/demo"  # the corpus folder (rerunning resumes into it)
    short_side: int = Field(256, ge=8)  # images are resized so their shorter side is this
    min_size: int = Field(32, ge=1)  # frames with a shorter side below this are rejected
    image_format: Literal["png", "jpeg"] = "png"  # in the shards: lossless or GPU-decodable
    near_distance: int = Field(4, ge=-1, le=32)  # pHash bits for near duplicates (-1: off)
    subsets: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name: select_subset args
    workers: int = Field(0, ge=0)  # processes (0: every core)
    files_per_part: int = Field(64, ge=1)  # raw files per unit of resumable work
    shard_images: int = Field(5000, ge=1)  # images per output shard
    clean_staging: bool = False  # delete the resume state once the corpus is written
    samples_per_modality: int = Field(8, ge=1)  # images per modality in the sample grid

    @field_validator("subsets")
    @classmethod
    def _subset_keys(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        allowed = {"fraction", "count", "modalities", "seed"}
        bad = {name: sorted(set(spec) - allowed) for name, spec in value.items()
               if set(spec) - allowed}
        if bad:
            raise ValueError(f"unknown subset keys {bad}; allowed: {sorted(allowed)}")
        return value


class RepresentationsParams(MedMNISTTaskParams):
    """Parameters of notebooks/06_representations: linear CKA between checkpoints, per block."""

    # the checkpoints: those of these 03_probe runs, plus explicit paths; both empty: every
    # completed 03_probe run of an exported checkpoint (random initialisations are left out)
    run_ids: list[str] = Field(default_factory=list)
    checkpoints: list[str] = Field(default_factory=list)
    # the representation: the probe's feature of each block compared: all, last, or block
    # indices from 0 (the last block is always among them, as in the probe)
    layers: Annotated[str | list[int], AfterValidator(_check_layers)] = "all"
    features: Literal["mean_patch", "cls"] = DEFAULT_POOL
    sample: int = Field(500, ge=4)  # test images per task, a fixed draw (the table's n)
    estimator: Literal["debiased", "biased"] = "debiased"
    seed: int = Field(0, ge=0)
    # a 04_scaling run whose slopes to show beside the depth curves: a run id, latest (the
    # newest completed one), or empty for none
    scaling_run: str = ""
    # engine
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    extract_batch_size: int = Field(256, ge=1)
    cache_dir: str = "outputs/cache/features"


PARAMS_BY_NOTEBOOK: dict[str, type[NotebookParams]] = {
    "01_curation": CurationParams,
    "02_pretrain": PretrainParams, "03_probe": ProbeParams, "04_scaling": ScalingParams,
    "05_task_properties": PropertiesParams, "06_representations": RepresentationsParams}


def params_for(notebook: str) -> type[NotebookParams]:
    """The parameter class of a notebook, by its stem (``03_probe``)."""
    try:
        return PARAMS_BY_NOTEBOOK[notebook]
    except KeyError:
        raise ParamError(f"no parameter set registered for notebook {notebook!r}; "
                         f"known: {sorted(PARAMS_BY_NOTEBOOK)}") from None


_IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
_LITERAL_TYPES = (str, int, float, bool, list, dict, tuple, type(None))


def _is_literal(value: Any) -> bool:
    return isinstance(value, _LITERAL_TYPES)


def _describe(cls: type[BaseModel], err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<parameters>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown parameter (known: {', '.join(cls.model_fields)})")
        else:
            got = e.get("input")
            lines.append(f"  {key}: {e['msg']} (got {got!r})")
    return f"invalid parameters for {cls.__name__}:\n" + "\n".join(lines)


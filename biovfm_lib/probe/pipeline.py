"""The probe of one encoder on MedMNIST tasks: features, heads, metrics, predictions.

Two protocols share everything but the training features:
- ``official`` (BioVFM's evaluation): every epoch the frozen backbone encodes freshly augmented
  training images (RandomRotation(30) + RandomCrop(padding 4)). With ``backbone_mode: study``
  it does so in train mode with the study's drop path live, as the study's Lightning module did.
- ``cached`` (the fast path, a documented deviation): training features are extracted once
  without augmentation, in eval mode, and cached on disk, so heads for several learning rates
  train in seconds; ``backbone_mode`` does not apply (the results record ``eval``).
Validation and test features never see augmentation, come from the backbone in eval mode and
are cached in both protocols. The evaluations beyond the main probe (kNN, label efficiency,
seeds, blocks: :mod:`biovfm_lib.probe.beyond`) need cached training features too, and add rows
beside the main probe's, which stay as they were.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
from torch.utils.data import DataLoader

from biovfm_lib.data.medmnist import SPLITS, TaskData, load_task, prepare_tasks
from biovfm_lib.data.transforms import AugmentedImages, to_model_input
from biovfm_lib.models.checkpoints import LoadedEncoder, load_encoder
from biovfm_lib.models.factory import vit_spec
from biovfm_lib.models.stochastic_depth import (
    encoder_algorithm,
    install_drop_path,
    study_drop_path_rate,
)
from biovfm_lib.params import ProbeParams
from biovfm_lib.probe.beyond import BEYOND_COLUMNS, beyond_enabled, beyond_rows, main_tags
from biovfm_lib.probe.features import (
    FeatureCache,
    autocast_for,
    backbone_training,
    block_count,
    encode,
    feature_precision,
)
from biovfm_lib.probe.layers import check_feature_blocks, layer_features, probed_layers
from biovfm_lib.probe.linear import (
    Batches,
    HeadBias,
    feature_batches,
    fit_linear_heads,
    predict,
    targets,
    train_drop_last,
)
from biovfm_lib.probe.scoring import score_rows
from biovfm_lib.runs import atomic_write_bytes, resolve, write_table

RESULT_COLUMNS = ["encoder", "checkpoint", "task", "split", "metric", "value", "ci_low",
                  "ci_high", "n"]
# then, in this order: the fit, the run's settings, the columns the evaluations beyond added
FIT_COLUMNS = ["best_lr", "best_epoch", "boot_mean", "note"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_encoder(p: ProbeParams) -> tuple[LoadedEncoder, dict[str, Any]]:
    """The frozen encoder to probe, and the identity its cached features are keyed on."""
    if p.checkpoint:
        enc = load_encoder(resolve(p.checkpoint), p.checkpoint_format, img_size=p.encoder_input,
                           timm_name=p.timm_name, num_heads=p.num_heads)
        identity = {"sha256": enc.sha256, "spec": enc.spec}
    else:  # a random-initialisation baseline, reproducible from its seed
        spec = vit_spec(p.encoder, p.patch_size, img_size=p.encoder_input)
        torch.manual_seed(p.seed)
        enc = LoadedEncoder(spec.create().eval(), "random", spec, "", "", {})
        identity = {"random_init": spec, "seed": p.seed, "timm": timm.__version__,
                    "torch": torch.__version__}
    for param in enc.model.parameters():
        param.requires_grad_(False)
    if backbone_mode(p) == "study":  # acts in train mode only: eval features stay as they were
        install_drop_path(enc.model, study_drop_path_rate(enc))
    return enc, identity


def backbone_mode(p: ProbeParams) -> str:
    """The mode the backbone is in while heads train; cached features are always eval-mode."""
    return p.backbone_mode if p.protocol == "official" else "eval"


def train_drop_path(enc: LoadedEncoder, p: ProbeParams) -> float:
    """The drop path live in the backbone while heads train (0 in eval mode)."""
    return study_drop_path_rate(enc) if backbone_mode(p) == "study" else 0.0


def head_bias(enc: LoadedEncoder) -> HeadBias:
    """The head's bias init in the study's build of this encoder's algorithm."""
    return "uniform" if encoder_algorithm(enc) == "dinov2" else "zero"


def encoder_label(enc: LoadedEncoder, p: ProbeParams) -> str:
    return str(enc.meta.get("size") or (p.encoder if enc.format == "random" else
                                        enc.spec.timm_name))


def prepare_data(p: ProbeParams) -> Path:
    """The data root, every task's file checked (synthesised first if asked)."""
    return prepare_tasks(resolve(p.data_root), p.size, p.tasks, p.data == "synthetic",
                         p.synthetic_scale, p.synthetic_seed, p.verify_md5)


@dataclass
class TaskProbe:
    flag: str
    rows: list[dict[str, Any]]
    history: pd.DataFrame
    predictions: dict[str, np.ndarray] = field(repr=False)


def augmented_batches(model: torch.nn.Module, images: np.ndarray, y: torch.Tensor,
                      p: ProbeParams, device: torch.device) -> Batches:
    """Training features of the official protocol: augmented images through the backbone.

    Under ``backbone_mode: study`` the backbone encodes in train mode (its drop path live), and
    is back in eval mode between batches, so nothing else ever sees it in train mode.
    """
    dataset = AugmentedImages(images, p.size)
    live = backbone_mode(p) == "study"

    def batches(epoch: int):
        g = torch.Generator().manual_seed(p.seed * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=p.batch_size, shuffle=True, generator=g,
                            num_workers=p.num_workers, pin_memory=device.type == "cuda",
                            drop_last=train_drop_last(len(dataset), p.batch_size))
        for imgs, idx in loader:
            x = to_model_input(imgs.to(device, non_blocking=True), p.encoder_input, p.input_fit)
            with autocast_for(device, p.precision), backbone_training(model, live):
                feats = encode(model, x, p.features)
            yield feats, y[idx]
    return batches


def cached_features(enc: LoadedEncoder, identity: dict, data: TaskData, split: str,
                    p: ProbeParams, device: torch.device, cache: FeatureCache) -> np.ndarray:
    """The main probe's features of one split (the last block's), cached."""
    last = block_count(enc.model) - 1
    return layer_features(enc, identity, data, split, p, device, cache, [last])[last]


def probe_task(enc: LoadedEncoder, identity: dict, data: TaskData, p: ProbeParams,
               device: torch.device, cache: FeatureCache, label: str) -> TaskProbe:
    """Fit, select and evaluate the linear probe of one task, and the evaluations beyond it."""
    last = block_count(enc.model) - 1
    layers = probed_layers(p.layers, last + 1)
    beyond = beyond_enabled(p)
    splits = SPLITS if p.protocol == "cached" or beyond else ("val", "test")
    blocks = {s: layer_features(enc, identity, data, s, p, device, cache, layers)
              for s in splits}
    feats = {s: torch.from_numpy(blocks[s][last]) for s in splits}
    ys = {s: targets(data.labels[s], data.multilabel) for s in SPLITS}
    if p.protocol == "cached":
        train = feature_batches(feats["train"], ys["train"], p.batch_size, p.seed)
    else:
        train = augmented_batches(enc.model, data.images["train"], ys["train"], p, device)
    fit = fit_linear_heads(train, feats["val"], ys["val"], data.n_classes, data.multilabel,
                           p.lrs, p.epochs, p.weight_decay, device, p.seed, desc=data.flag,
                           head_bias=head_bias(enc))
    scores = {s: predict(fit.head, feats[s], data.multilabel) for s in ("val", "test")}
    split_rows, thresholds = score_rows(data, scores, p)
    head = {"encoder": label, "checkpoint": enc.source, "task": data.flag}
    tags = main_tags(p, last, len(data.labels["train"]))
    rows = [{**head, **r, "best_lr": fit.lr, "best_epoch": fit.epoch, **tags}
            for r in split_rows]
    if beyond:
        rows += [{**head, **r} for r in beyond_rows(data, blocks, p, device, head_bias(enc))]
    history = fit.history.assign(task=data.flag)
    predictions = {"test_labels": data.labels["test"], "test_scores": scores["test"],
                   "val_labels": data.labels["val"], "val_scores": scores["val"],
                   "thresholds": np.asarray([] if thresholds is None else thresholds)}
    return TaskProbe(data.flag, rows, history, predictions)


@dataclass
class ProbeReport:
    results: pd.DataFrame
    history: pd.DataFrame
    data_source: str  # "real" or "synthetic"
    encoder: LoadedEncoder = field(repr=False)


def run_probe(p: ProbeParams, run_dir: str | Path) -> ProbeReport:
    """Probe every requested task and write results, history and predictions to the run."""
    run_dir = Path(run_dir)
    root = prepare_data(p)
    device = resolve_device(p.device)
    enc, identity = build_encoder(p)
    enc.model.to(device)
    check_feature_blocks(enc.model, p)
    probed_layers(p.layers, block_count(enc.model))  # a block that does not exist: fail now
    label = encoder_label(enc, p)
    cache = FeatureCache(resolve(p.cache_dir))

    probes, synthetic = [], []
    for flag in p.tasks:
        data = load_task(flag, root, p.size, verify_md5=False)  # checked in prepare_data
        synthetic.append(data.synthetic)
        probe = probe_task(enc, identity, data, p, device, cache, label)
        _save_predictions(run_dir / "predictions" / f"{flag}.npz", probe.predictions)
        probes.append(probe)

    data_source = "synthetic" if any(synthetic) else "real"
    extra = {"data_source": data_source, "img_size": p.size, "input_size": p.encoder_input,
             "input_fit": p.input_fit if p.fits_input else "none", "protocol": p.protocol,
             "backbone_mode": backbone_mode(p), "train_drop_path": train_drop_path(enc, p),
             "precision": feature_precision(p.precision, device),
             "features": p.features, "threshold_rule": p.threshold_rule, "ci_rule": p.ci_rule}
    # a row's own protocol (the evaluations beyond say cached) wins over the run's
    results = pd.DataFrame([{**extra, **r} for pr in probes for r in pr.rows])
    order = RESULT_COLUMNS + FIT_COLUMNS + list(extra)
    results = results[order + [c for c in results.columns if c not in order + BEYOND_COLUMNS]
                      + BEYOND_COLUMNS]
    history = pd.concat([pr.history for pr in probes], ignore_index=True)
    write_table(results, run_dir / "results.parquet")
    write_table(history, run_dir / "history.parquet")
    return ProbeReport(results, history, data_source, enc)


def _save_predictions(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())

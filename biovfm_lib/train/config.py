"""The resolved configuration of one pretraining run: what every torchrun rank reads.

Notebook parameters are a user's intent ("auto" strategy, a data folder); the resolved config
is the decision (FSDP, these sources, this output folder), written to ``config.yaml`` in the
training folder. Its hash names the folder, so the same command twice resumes one run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from biovfm_lib.params import LEGACY_RECIPES, PretrainParams
from biovfm_lib.yaml_io import read_yaml

# Parameters that change how a run executes, not what it learns: excluded from its name.
# (augment_on is not one: the device draws other random crops' colours than the loader.)
# The online kNN monitor is one of them: it reads the backbone, never the training stream.
_EXECUTION_ONLY = ("num_workers", "log_every", "checkpoint_every", "launcher", "slurm", "name",
                   "out_root", "activation_checkpointing", "compile", "monitor_every",
                   "monitor_tasks", "monitor_data_root", "monitor_data_size", "monitor_samples",
                   "monitor_k")
FSDP_SIZES = ("large", "huge")
MONITOR_DEFAULT_TASKS = 3  # monitor_tasks empty: this many of the run's `tasks`, in order
MONITOR_DATA_ROOT = "outputs/data/medmnist"  # where it reads when the run trains on no MedMNIST


@dataclass(frozen=True)
class TrainConfig:
    algorithm: str
    size: str
    method: dict[str, Any]  # keyword overrides of DINOv2Config / MAEConfig .for_size
    sources: list[dict[str, Any]]  # for biovfm_lib.data.pretrain.index_images
    subset: dict[str, Any]  # fraction, count, modalities for select_subset
    img_size: int
    local_size: int  # 0: the recipe's
    n_local: int
    epochs: int
    max_steps: int
    batch_size: int  # per process
    seed: int
    precision: str  # "auto" | "bf16" | "fp32"
    strategy: str  # "ddp" | "fsdp"
    activation_checkpointing: bool
    compile: bool
    num_workers: int
    checkpoint_every: int
    log_every: int
    out_dir: str
    # "auto" | "loader" | "device"; configs written before it existed ran in the loader
    augment_on: str = "loader"
    recipe: str = "study"  # a config written before it existed: LEGACY_RECIPES[algorithm]
    monitor_every: int = 0  # online kNN monitor every this many steps (0: off)
    monitor: dict[str, Any] = field(default_factory=dict)  # monitor_settings(): what it reads
    params: dict[str, Any] = field(default_factory=dict)  # the notebook parameters, for record

    def to_yaml(self, path: Path) -> None:
        from biovfm_lib.runs import atomic_write_bytes

        text = yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)
        atomic_write_bytes(path, text.encode(), overwrite=True)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        data = read_yaml(path)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        data.setdefault("recipe", LEGACY_RECIPES[data["algorithm"]])
        return cls(**data)

    @property
    def dir(self) -> Path:
        return Path(self.out_dir)


def learned_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that change what a run learns (not how fast or where it logs)."""
    return {k: v for k, v in params.items() if k not in _EXECUTION_ONLY}


def check_same_run(existing: TrainConfig, p: PretrainParams) -> None:
    """Refuse to resume a training folder that holds a run with other parameters."""
    old, new = learned_params(existing.params), learned_params(p.as_dict())
    changed = {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys()
               if old.get(k) != new.get(k)}
    if changed:
        diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(f"{existing.dir} holds a run with other parameters ({diff}); "
                         "choose another `name` or `out_root` to start a new run")


def run_name(p: PretrainParams) -> str:
    """``<algorithm>-<size>-<subset>-<hash>``: stable for the same training parameters."""
    if p.name:
        return p.name
    digest = hashlib.sha1(json.dumps(learned_params(p.as_dict()), sort_keys=True).encode()
                          ).hexdigest()[:8]
    subset = f"n{p.data_count}" if p.data_count else f"f{p.data_fraction:g}"
    if p.modalities:
        subset += "-" + "+".join(sorted(p.modalities))
    if p.corpus_subset:
        subset = f"{p.corpus_subset}-{subset}"
    return f"{p.algorithm}-{p.encoder}-{subset}-{digest}"


def data_sources(p: PretrainParams) -> list[dict[str, Any]]:
    """The image sources a run trains on (synthesising MedMNIST-format files if asked)."""
    from biovfm_lib.data.pretrain import medmnist_sources
    from biovfm_lib.runs import resolve

    root = resolve(p.data_root)
    if p.data == "folder":
        return [{"name": root.name, "kind": "folder", "modality": "mixed", "root": str(root)}]
    if p.data == "corpus":
        return [{"name": root.name, "kind": "corpus", "root": str(root),
                 "subset": p.corpus_subset or None}]
    if p.data == "synthetic":
        from biovfm_lib.data.synthetic import write_synthetic

        write_synthetic(root, size=p.data_size, scale=p.synthetic_scale, seed=p.synthetic_seed,
                        tasks=p.tasks)
    return medmnist_sources(root, p.data_size, p.tasks)


def monitor_settings(p: PretrainParams) -> dict[str, Any]:
    """What the online kNN monitor reads, resolved: its tasks, data folder and file size, its
    sample sizes and k (empty when it is off)."""
    from biovfm_lib.runs import resolve

    if not p.monitor_every:
        return {}
    root = p.monitor_data_root or (p.data_root if p.data in ("medmnist", "synthetic")
                                   else MONITOR_DATA_ROOT)
    return {"tasks": p.monitor_tasks or p.tasks[:MONITOR_DEFAULT_TASKS],
            "root": str(resolve(root)), "size": p.monitor_data_size or p.data_size,
            "n_train": p.monitor_samples[0], "n_query": p.monitor_samples[1], "k": p.monitor_k}


def resolve_config(p: PretrainParams) -> TrainConfig:
    from biovfm_lib.runs import resolve

    strategy = p.strategy if p.strategy != "auto" else (
        "fsdp" if p.encoder in FSDP_SIZES else "ddp")
    method = dict(p.method)
    if p.patch_size:
        method.setdefault("patch_size", p.patch_size)
    return TrainConfig(
        algorithm=p.algorithm, size=p.encoder, method=method, sources=data_sources(p),
        subset={"fraction": p.data_fraction, "count": p.data_count or None,
                "modalities": p.modalities or None},
        img_size=p.img_size, local_size=p.local_size, n_local=p.n_local, epochs=p.epochs,
        max_steps=p.max_steps, batch_size=p.batch_size, seed=p.seed, precision=p.precision,
        strategy=strategy, activation_checkpointing=p.activation_checkpointing,
        compile=p.compile, num_workers=p.num_workers, checkpoint_every=p.checkpoint_every,
        log_every=p.log_every, out_dir=str(resolve(p.out_root) / run_name(p)),
        augment_on=p.augment_on, recipe=p.recipe, monitor_every=p.monitor_every,
        monitor=monitor_settings(p), params=p.as_dict(),
    )

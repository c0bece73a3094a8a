"""Typed, validated notebook parameters.

papermill injects parameters as plain globals and only *warns* about names the notebook does
not declare, so a typo such as ``epoch: 5`` would silently run with the default. Every
notebook therefore validates its namespace here, right after the injected cell, and refuses
unknown keys, wrong types and out-of-range values with one error that names each bad key.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MEDMNIST_2D_TASKS: tuple[str, ...] = (
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)
MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)

# Names the runner injects into every notebook; they are not part of a notebook's own parameters.
RUNNER_KEYS: tuple[str, ...] = ("run_dir",)


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a parameter file; an empty file is an empty mapping, anything else non-dict is an error."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"parameter file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamError(f"parameter file {path} must hold a mapping of key: value, "
                         f"got {type(data).__name__}")
    return data


class ProbeParams(NotebookParams):
    """Parameters of notebooks/03_probe: linear probing of one encoder on MedMNIST tasks."""

    # data
    data_root: str = "outputs/data/medmnist"
    data: Literal["medmnist", "synthetic"] = "medmnist"
    synthetic_scale: float = Field(0.02, gt=0, le=1)
    synthetic_seed: int = Field(0, ge=0)
    tasks: list[str] = Field(default_factory=lambda: list(MEDMNIST_2D_TASKS), min_length=1)
    size: int = 224
    verify_md5: bool = False
    # encoder
    encoder: str = "base"
    patch_size: int = Field(0, ge=0)  # 0: the size's default patch
    checkpoint: str = ""  # empty: random initialisation (a baseline)
    checkpoint_format: Literal["auto", "biovfm", "dinov2", "mae", "timm"] = "auto"
    timm_name: str = ""  # architecture of a plain timm checkpoint
    features: Literal["mean_patch", "cls"] = "mean_patch"
    # protocol
    protocol: Literal["official", "cached"] = "cached"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lrs: list[float] = Field(default_factory=lambda: [1e-2], min_length=1)
    weight_decay: float = Field(0.0, ge=0)
    bootstrap: int = Field(1000, ge=0)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    extract_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0)
    cache_dir: str = "outputs/cache/features"

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in MEDMNIST_2D_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {list(MEDMNIST_2D_TASKS)}")
        if len(set(tasks)) != len(tasks):
            raise ValueError("tasks must not repeat")
        return tasks

    @field_validator("size")
    @classmethod
    def _known_size(cls, size: int) -> int:
        if size not in MEDMNIST_SIZES:
            raise ValueError(f"must be one of the MedMNIST sizes {list(MEDMNIST_SIZES)}")
        return size

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, lrs: list[float]) -> list[float]:
        if any(lr <= 0 for lr in lrs):
            raise ValueError("every learning rate must be > 0")
        return lrs

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        from biovfm_lib.models.factory import VIT_SIZES

        if name not in VIT_SIZES:
            raise ValueError(f"unknown encoder size {name!r}; choose from {list(VIT_SIZES)}")
        return name


PARAMS_BY_NOTEBOOK: dict[str, type[NotebookParams]] = {"03_probe": ProbeParams}


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


"""The source registry: which raw datasets make the corpus, where they lie, how to read them.

A sources file is YAML with a top-level ``sources:`` list. Each entry names one dataset:
``name, modality, anatomy, license, root, glob, reader`` (plus reader ``options``) say how to
curate it; ``year, images, reference, home`` describe it as the study's table does, so the
same file documents the study's composition and drives the pipeline. A source whose ``root``
is empty is registered but not downloaded here: the pipeline lists it as skipped.

``root`` is a path (absolute, ``~``, or relative to the project; ``outputs/...`` follows
``$BIOVFM_OUTPUTS``) or ``package:NAME/sub/dir``, a folder inside an installed Python package.
The latter lets the demo curate real images that packages ship (pydicom's test files,
nibabel's examples) without machine-specific paths.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from biovfm_lib.curation.readers import READERS

PACKAGE_PREFIX = "package:"


class Source(BaseModel):
    """One dataset of the corpus (see the module docstring for the fields' roles)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")
    modality: str = Field(min_length=1)
    anatomy: str | None = None
    license: str | None = None
    root: str | None = None
    glob: str | list[str] = "**/*"  # one pattern or several (their union)
    reader: str = "auto"
    options: dict[str, Any] = Field(default_factory=dict)
    # what the study's table says about it (documentation, plotted by 01_curation)
    year: int | None = None
    images: int | None = Field(None, ge=0)
    reference: str | None = None
    home: str | None = None

    @field_validator("reader")
    @classmethod
    def _known_reader(cls, value: str) -> str:
        if value != "auto" and value not in READERS:
            raise ValueError(f"unknown reader {value!r}; use 'auto' or one of {sorted(READERS)}")
        return value

    @property
    def available(self) -> bool:
        return bool(self.root)

    def root_path(self) -> Path:
        """The folder to search, resolved; an error names the source when it is missing."""
        if not self.root:
            raise ValueError(f"source {self.name!r} has no root (not downloaded here)")
        path = resolve_root(self.root)
        if not path.is_dir():
            raise FileNotFoundError(f"source {self.name!r}: root {path} is not a directory")
        return path

    def files(self) -> list[Path]:
        """Every regular file the glob(s) match, once each, in a stable (sorted) order."""
        root = self.root_path()
        patterns = [self.glob] if isinstance(self.glob, str) else self.glob
        return sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})


def resolve_root(root: str) -> Path:
    """A source root as a path (``package:`` roots through the installed package)."""
    if root.startswith(PACKAGE_PREFIX):
        package, _, sub = root[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"root {root!r}: package {package!r} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / sub
    from biovfm_lib.runs import resolve

    return resolve(root)


def load_sources(path: str | Path) -> list[Source]:
    """The sources of a YAML file, validated; one error lists every bad entry by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sources file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty top-level 'sources:' list")
    sources, problems = [], []
    for i, entry in enumerate(entries):
        label = entry.get("name", f"#{i}") if isinstance(entry, dict) else f"#{i}"
        try:
            sources.append(Source.model_validate(entry))
        except ValidationError as err:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                                for e in err.errors())
            problems.append(f"source {label}: {details}")
    names = [s.name for s in sources]
    problems += [f"source name {n!r} appears more than once"
                 for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise ValueError(f"{path}: invalid sources:\n  " + "\n  ".join(problems))
    return sources

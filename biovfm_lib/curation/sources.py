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

import errno
import importlib.util
import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from biovfm_lib.curation.readers import READERS
from biovfm_lib.yaml_io import read_yaml

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
        return self.scan().files

    def scan(self) -> Scan:
        """The files the glob(s) match, with what identifies their content, and every place
        the walk could not go (so nothing under the root is skipped in silence)."""
        patterns = [self.glob] if isinstance(self.glob, str) else self.glob
        return scan_tree(self.root_path(), [p.split("/") for p in patterns])


@dataclass
class Scan:
    """What a walk of a source root found. ``stamps`` is (size, mtime in ns) per file: what
    a part's identity hashes, so a file repaired or replaced in place is read again.
    ``problems`` are (path text, reason, detail) for folders and links the walk could not
    follow: an unreadable folder, a symlink loop, a link to nothing."""

    files: list[Path] = field(default_factory=list)
    stamps: list[tuple[int, int]] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)


def scan_tree(root: Path, patterns: list[list[str]]) -> Scan:
    """Walk ``root`` as ``Path.glob`` would match ``patterns`` (split at "/"; ``**`` is any
    number of folders), but following folder links, as datasets assembled from several
    disks need, and recording each folder or link it cannot follow instead of skipping it.
    A link back to a folder on its own path is a loop (what ``find -L`` reports)."""
    found: list[tuple[Path, os.stat_result]] = []
    problems: list[tuple[str, str, str]] = []
    deepest = None if any("**" in p for p in patterns) else max(len(p) for p in patterns) - 1

    def walk(folder: Path, rel: tuple[str, ...], ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            problems.append((path_text(folder), "unreadable_folder", _reason(err)))
            return
        descend = deepest is None or len(rel) < deepest
        for entry in entries:
            path, parts = folder / entry.name, (*rel, entry.name)
            wanted = any(_matches(parts, p) for p in patterns)
            if not wanted and entry.is_file(follow_symlinks=False):
                continue  # most files of a big tree: no stat needed
            try:
                info = entry.stat()  # follows links
            except OSError as err:  # a link to nothing or to itself, or a file we may not stat
                if descend or wanted:
                    link = entry.is_symlink() and err.errno in (errno.ELOOP, errno.ENOENT)
                    reason = ("unreadable_file" if not link else
                              "symlink_loop" if err.errno == errno.ELOOP else "broken_symlink")
                    problems.append((path_text(path), reason, _reason(err)))
                continue
            if stat.S_ISREG(info.st_mode):
                if wanted:
                    found.append((path, info))
            elif stat.S_ISDIR(info.st_mode) and descend:
                if (info.st_dev, info.st_ino) in ancestors:
                    target = path_text(os.path.realpath(path))
                    problems.append((path_text(path), "symlink_loop",
                                     f"leads back to {target}, a folder on its own path"))
                else:
                    walk(path, parts, ancestors | {(info.st_dev, info.st_ino)})

    top = root.stat()
    walk(root, (), frozenset({(top.st_dev, top.st_ino)}))
    found.sort(key=lambda f: f[0])
    return Scan([p for p, _ in found], [(i.st_size, i.st_mtime_ns) for _, i in found],
                problems)


def _matches(parts: tuple[str, ...], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:],
                                                                          pattern[1:])


def _reason(err: OSError) -> str:
    return f"{type(err).__name__}: {err.strerror or err}"


def path_text(path: str | Path) -> str:
    """A path as the tables store it: ``str(path)`` for every name that is valid UTF-8;
    a name that is not (parquet strings must be UTF-8) has each undecodable byte written
    as ``\\xNN`` and each backslash doubled, so ``codecs.escape_decode`` gives back its
    exact bytes and the text still reads like the name."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path).replace(b"\\", b"\\\\")
        return raw.decode("utf-8", "backslashreplace")
    return text


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
    data = read_yaml(path) or {}
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

"""Grid files: the scaling study as data, expanded into points with stable ids.

A grid file (``params/grids/NAME.yaml``) names the notebooks every point runs (``steps``), the
``axes`` and what each axis value sets (or ``skip``, for a step its points leave out: a
random-initialisation baseline probes without pretraining), optional ``sweeps`` (which
combinations run), the ``analysis`` notebooks run once over all points, and ``slurm``
options. A point's id hashes the notebooks and merged parameters it runs, so an edited
parameter file or axis value gives a new point instead of silently reusing an old result, and
the same point in two grid files is one experiment. The file's structure is checked when it
is loaded, with errors that name the key; parameter values are validated per point
(``Point.validate``) before anything runs, so a bad value fails its point, not the grid.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biovfm_lib.params import ParamError, load_yaml, params_for
from biovfm_lib.yaml_io import YamlError, read_yaml

GRID_KEYS = ("name", "description", "steps", "axes", "sweeps", "analysis", "slurm")
STEP_KEYS = ("notebook", "file", "params")
ANALYSIS_KEYS = ("name", "notebook", "file", "params")
# status.parquet columns; an axis may not take one of these names
STATUS_COLUMNS = ("grid", "kind", "id", "slug", "axes", "status", "step", "run_ids", "started",
                  "ended", "elapsed_s", "error", "log")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+]*$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RUNS_PLACEHOLDER = re.compile(r"^\{runs:([A-Za-z0-9_]+)\}$")
SKIP = "skip"  # an axis value's setting for a step its points do not run


class GridError(ValueError):
    """A grid file is malformed; the message names the file and the offending key."""


@dataclass(frozen=True)
class Step:
    """One notebook run of a point (or of the analysis), ready for ``execution.execute``."""

    name: str
    notebook: str
    file: str | None  # parameter file, relative to the project root (or absolute)
    params: dict[str, Any]  # overrides of the file's values, placeholders substituted
    file_values: dict[str, Any] = field(default_factory=dict)  # the file, read at load time

    def values(self) -> dict[str, Any]:
        """The merged parameters the notebook gets (file, then overrides), as they were when
        the grid was loaded: a parameter file edited mid-grid changes no planned point."""
        return {**self.file_values, **self.params}

    def validate(self) -> str | None:
        """The parameter error this step would fail with, before any kernel starts."""
        try:
            params_for(self.notebook).validate_mapping(self.values())
        except ParamError as err:
            return str(err)
        return None

    def execute_args(self) -> tuple[str, Path | None, dict[str, Any]]:
        """``execution.execute`` arguments: the file (copied into the run folder for the record)
        and every merged value as an override, so what runs is what the id hashed."""
        return self.notebook, param_file(self.file) if self.file else None, self.values()


@dataclass(frozen=True)
class Point:
    """One combination of axis values: its steps run in order, each feeding the next."""

    id: str
    slug: str
    axes: dict[str, str]  # axis name -> value label
    steps: tuple[Step, ...]  # the grid's steps less those an axis value skips

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def validate(self) -> str | None:
        errors = [f"{s.name} ({s.notebook}): {e}" for s in self.steps if (e := s.validate())]
        return "\n".join(errors) or None

    def missing_input(self) -> str | None:
        """What the first step would miss on disk (later steps read what earlier ones make)."""
        from biovfm_lib.preflight import MissingInput, check_inputs

        first = self.steps[0]
        try:
            params = params_for(first.notebook).validate_mapping(first.values()).as_dict()
            check_inputs(first.notebook, params)
        except ParamError:  # reported as this point's parameter error when it runs
            return None
        except MissingInput as err:
            return f"point {self.slug}: {err}"
        return None


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    description: str
    axes: dict[str, list[str]]  # axis name -> value labels, in file order
    points: tuple[Point, ...]
    analysis: tuple[Step, ...]  # ``{runs:STEP}`` values still unexpanded
    step_names: tuple[str, ...]
    slurm: dict[str, Any] = field(default_factory=dict)

    def analysis_steps(self, runs_by_step: Mapping[str, list[str]]) -> list[Step]:
        """The analysis steps with every ``"{runs:STEP}"`` value replaced by the run ids of
        that step over the grid's completed points (so 04_scaling fits this grid's probes,
        not every probe run that happens to share the outputs folder)."""
        def expand(value: Any) -> Any:
            if isinstance(value, str) and (m := _RUNS_PLACEHOLDER.match(value)):
                return list(runs_by_step.get(m.group(1), []))
            if isinstance(value, list):
                return [expand(v) for v in value]
            if isinstance(value, dict):
                return {k: expand(v) for k, v in value.items()}
            return value

        return [Step(s.name, s.notebook, s.file, expand(s.params), s.file_values)
                for s in self.analysis]

    def point(self, key: str) -> Point:
        """A point by id or slug."""
        for p in self.points:
            if key in (p.id, p.slug):
                return p
        raise GridError(f"{self.path}: no point {key!r}; points: {[p.id for p in self.points]}")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (relative to the working directory, else to the project)
    and expand its points."""
    from biovfm_lib.runs import project_root

    path = Path(path).expanduser()
    path = path if path.is_absolute() or path.is_file() else project_root() / path
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        data = read_yaml(path) or {}
    except YamlError as err:
        raise GridError(str(err)) from None
    where = str(path)
    _mapping(data, where, "the file")
    _known_keys(data, GRID_KEYS, where, "")
    for key in ("steps", "axes"):
        if key not in data:
            raise GridError(f"{where}: missing key {key!r}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _LABEL.match(name):
        raise GridError(f"{where}: name: {name!r} must be letters, digits, '_', '.', '+'")

    steps = _steps(data["steps"], where)
    axes = _axes(data["axes"], steps, where)
    combos = _sweeps(data.get("sweeps"), axes, where)
    points, seen = [], set()
    for combo in combos:
        point = _point(name, steps, axes, combo, where)
        if point.id not in seen:  # sweeps may overlap: the shared point runs once
            seen.add(point.id)
            points.append(point)
    analysis = _analysis(data.get("analysis") or [], list(steps), name, where)
    slurm = data.get("slurm") or {}
    _mapping(slurm, where, "slurm")
    return Grid(name=name, path=path, description=str(data.get("description", "")),
                axes={a: list(v) for a, v in axes.items()}, points=tuple(points),
                analysis=tuple(analysis), step_names=tuple(steps), slurm=dict(slurm))


# --------------------------------------------------------------------------- parsing
def _steps(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    _mapping(raw, where, "steps")
    if not raw:
        raise GridError(f"{where}: steps: name at least one notebook per point")
    steps = {}
    for name, step in raw.items():
        key = f"steps.{name}"
        if not isinstance(name, str) or not _LABEL.match(name):
            raise GridError(f"{where}: {key}: step names are letters, digits and '_'")
        steps[name] = _step(step, where, key, STEP_KEYS)
    return steps


def _step(raw: Any, where: str, key: str, known: tuple[str, ...]) -> dict[str, Any]:
    _mapping(raw, where, key)
    _known_keys(raw, known, where, key)
    if "notebook" not in raw:
        raise GridError(f"{where}: {key}: missing key 'notebook'")
    try:
        params_for(str(raw["notebook"]))
    except ParamError as err:
        raise GridError(f"{where}: {key}.notebook: {err}") from None
    params = raw.get("params") or {}
    _mapping(params, where, f"{key}.params")
    if raw.get("file") is not None:
        _check_file(raw["file"], where, f"{key}.file")
    return {"notebook": str(raw["notebook"]), "file": raw.get("file"), "params": dict(params)}


def _axes(raw: Any, steps: Mapping[str, Any], where: str) -> dict[str, dict[str, dict]]:
    """``axis: {label: {step: {param: value, file: path} | skip}}``, checked against the
    steps."""
    _mapping(raw, where, "axes")
    if not raw:
        raise GridError(f"{where}: axes: give at least one axis with one value")
    axes: dict[str, dict[str, dict]] = {}
    for axis, values in raw.items():
        if not isinstance(axis, str) or not _LABEL.match(axis) or axis in STATUS_COLUMNS:
            raise GridError(f"{where}: axes.{axis}: an axis name is letters, digits and '_', "
                            f"and none of {list(STATUS_COLUMNS)}")
        _mapping(values, where, f"axes.{axis}")
        if not values:
            raise GridError(f"{where}: axes.{axis}: no values")
        axes[axis] = {}
        for label, sets in values.items():
            key = f"axes.{axis}.{label}"
            if not _LABEL.match(str(label)):
                raise GridError(f"{where}: {key}: a value label is letters, digits, '_', '.', "
                                "'+' (it names folders)")
            sets = sets or {}
            _mapping(sets, where, key)
            for step, values_ in sets.items():
                if step not in steps:
                    raise GridError(f"{where}: {key}.{step}: no such step; steps: "
                                    f"{list(steps)}")
                if values_ == SKIP:
                    continue
                if isinstance(values_, str):
                    raise GridError(f"{where}: {key}.{step}: {values_!r}: give the step's "
                                    f"parameters as a mapping, or {SKIP!r} to leave it out")
                _mapping(values_, where, f"{key}.{step}")
                if values_.get("file") is not None:
                    _check_file(values_["file"], where, f"{key}.{step}.file")
            axes[axis][str(label)] = sets
    return axes


def _sweeps(raw: Any, axes: Mapping[str, Mapping[str, Any]], where: str
            ) -> list[dict[str, str]]:
    """The label combinations to run: the full product of the axes, or the union of the
    products each sweep names (an axis a sweep leaves out takes all its values)."""
    sweeps = [{}] if raw is None else raw
    if not isinstance(sweeps, list) or not sweeps:
        raise GridError(f"{where}: sweeps: a list of {{axis: [values]}} mappings")
    combos = []
    for i, sweep in enumerate(sweeps):
        _mapping(sweep, where, f"sweeps[{i}]")
        chosen = []
        for axis, labels in axes.items():
            want = sweep.get(axis, list(labels))
            want = want if isinstance(want, list) else [want]
            unknown = [w for w in want if str(w) not in labels]
            if unknown or not want:
                raise GridError(f"{where}: sweeps[{i}].{axis}: unknown value(s) {unknown}; "
                                f"values: {list(labels)}")
            chosen.append([str(w) for w in want])
        extra = sorted(set(sweep) - set(axes))
        if extra:
            raise GridError(f"{where}: sweeps[{i}]: unknown axis {extra}; axes: {list(axes)}")
        combos += [dict(zip(axes, c)) for c in itertools.product(*chosen)]
    return combos


def _point(grid: str, steps: Mapping[str, dict], axes: Mapping[str, Mapping[str, dict]],
           combo: Mapping[str, str], where: str) -> Point:
    slug = "-".join(combo.values())
    names = {"grid": grid, "slug": slug, "point": "{point}", **combo}
    # a skipped step ignores what other axes set for it (the size axis sets pretraining's
    # encoder; a baseline that skips pretraining takes only the probe's)
    skipped = {name for axis, label in combo.items()
               for name, sets in axes[axis][label].items() if sets == SKIP}
    if skipped >= set(steps):
        raise GridError(f"{where}: point {slug}: its axis values skip every step")
    resolved = []
    for name, step in steps.items():
        if name in skipped:
            continue
        file, params, set_by = step["file"], dict(step["params"]), {}
        for axis, label in combo.items():
            for key, value in (axes[axis][label].get(name) or {}).items():
                if key in set_by:
                    raise GridError(f"{where}: axes {set_by[key]} and {axis} both set "
                                    f"{name}.{key}")
                set_by[key] = axis
                if key == "file":
                    file = value
                else:
                    params[key] = value
        key = f"steps.{name}"
        if _runs_refs(params):
            raise GridError(f"{where}: {key}: {{runs:STEP}} is for analysis steps only")
        file = _substitute(file, names, where, f"{key}.file") if file else None
        if file and not param_file(file).is_file():
            raise GridError(f"{where}: {key}.file: parameter file not found: {file}")
        resolved.append(Step(name, step["notebook"], file,
                             _substitute(params, names, where, f"{key}.params"),
                             load_yaml(param_file(file)) if file else {}))
    # the id covers what runs: notebooks and merged values, with {point} itself unexpanded
    digest = hashlib.sha1(json.dumps([[s.name, s.notebook, s.values()] for s in resolved],
                                     sort_keys=True, default=str).encode()).hexdigest()[:8]
    point_id = f"{slug}-{digest}"
    final = tuple(Step(s.name, s.notebook, s.file,
                       _substitute(s.params, {"point": point_id}, where, f"steps.{s.name}"),
                       s.file_values) for s in resolved)
    return Point(point_id, slug, dict(combo), final)


def _analysis(raw: Any, step_names: list[str], grid: str, where: str) -> list[Step]:
    if not isinstance(raw, list):
        raise GridError(f"{where}: analysis: a list of {{notebook, file, params}}")
    steps, seen = [], set()
    for i, item in enumerate(raw):
        key = f"analysis[{i}]"
        step = _step(item, where, key, ANALYSIS_KEYS)
        name = str(item.get("name", step["notebook"]))
        if name in seen:
            raise GridError(f"{where}: {key}: a second analysis step named {name!r}; "
                            "give it a 'name'")
        seen.add(name)
        for ref in _runs_refs(step["params"]):
            if ref not in step_names:
                raise GridError(f"{where}: {key}.params: {{runs:{ref}}} names no step; "
                                f"steps: {step_names}")
        params = _substitute(step["params"], {"grid": grid}, where, f"{key}.params",
                             keep_runs=True)
        file_values = load_yaml(param_file(step["file"])) if step["file"] else {}
        steps.append(Step(name, step["notebook"], step["file"], params, file_values))
    return steps


# --------------------------------------------------------------------------- helpers
def _substitute(value: Any, names: Mapping[str, str], where: str, key: str,
                keep_runs: bool = False) -> Any:
    """Fill ``{name}`` placeholders in strings; an unknown name is an error, not a literal."""
    if isinstance(value, dict):
        return {k: _substitute(v, names, where, f"{key}.{k}", keep_runs) for k, v in
                value.items()}
    if isinstance(value, list):
        return [_substitute(v, names, where, key, keep_runs) for v in value]
    if not isinstance(value, str) or (keep_runs and _RUNS_PLACEHOLDER.match(value)):
        return value

    def fill(m: re.Match) -> str:
        if m.group(1) not in names:
            raise GridError(f"{where}: {key}: unknown placeholder {m.group(0)}; known: "
                            + ", ".join("{" + n + "}" for n in names))
        return names[m.group(1)]

    return _PLACEHOLDER.sub(fill, value)


def _runs_refs(value: Any) -> list[str]:
    if isinstance(value, str):
        m = _RUNS_PLACEHOLDER.match(value)
        return [m.group(1)] if m else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [r for v in value for r in _runs_refs(v)]
    return []


def _mapping(value: Any, where: str, key: str) -> None:
    if not isinstance(value, dict):
        raise GridError(f"{where}: {key}: expected a mapping, got {type(value).__name__}")


def _known_keys(value: Mapping, known: tuple[str, ...], where: str, key: str) -> None:
    unknown = sorted(str(k) for k in set(value) - set(known))
    if unknown:
        prefix = f"{key}." if key else ""
        raise GridError(f"{where}: {', '.join(prefix + k for k in unknown)}: unknown key "
                        f"(known: {', '.join(known)})")


def _check_file(file: Any, where: str, key: str) -> None:
    if not isinstance(file, str):
        raise GridError(f"{where}: {key}: a path, got {file!r}")
    if "{" not in file and not param_file(file).is_file():
        raise GridError(f"{where}: {key}: parameter file not found: {file}")


def param_file(path: str | Path) -> Path:
    """Parameter files named in a grid are relative to the project root, so a grid means the
    same thing wherever the command is typed."""
    from biovfm_lib.runs import project_root

    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p

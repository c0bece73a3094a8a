"""Run records: where a run writes, what it records, and how results are collected.

Every notebook run owns ``outputs/runs/<notebook>/<run_id>/`` and never writes outside it.
Run folders are created exclusively and files are written atomically (temp file + rename) and
never overwritten, so parallel runs are safe and a crash cannot leave a half-written table.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from biovfm_lib.params import NotebookParams

KERNEL_NAME = "biovfm"
RECORD = "run.json"
TRACKED_PACKAGES = (
    "torch", "torchvision", "timm", "medmnist", "numpy", "pandas", "scikit-learn", "scipy",
    "statsmodels", "papermill", "safetensors", "biovfm-workbook",
)


# ----------------------------------------------------------------------------- locations
def project_root() -> Path:
    """The workbook checkout: ``$BIOVFM_ROOT``, else the checkout this package lives in."""
    if env := os.environ.get("BIOVFM_ROOT"):
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return Path.cwd().resolve()


def outputs_root() -> Path:
    """Where runs, caches and reports go: ``$BIOVFM_OUTPUTS``, else ``<root>/outputs``."""
    if env := os.environ.get("BIOVFM_OUTPUTS"):
        return Path(env).resolve()
    return project_root() / "outputs"


def resolve(path: str | Path) -> Path:
    """Resolve a parameter path: absolute as given; ``outputs/...`` under the outputs root
    (so ``$BIOVFM_OUTPUTS`` moves everything a run writes); else relative to the project."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] == "outputs":
        return outputs_root().joinpath(*p.parts[1:])
    return project_root() / p


def notebook_path(notebook: str | Path) -> Path:
    """Accept ``03_probe``, ``03_probe.ipynb`` or a path; return the notebook file."""
    p = Path(notebook)
    candidates = [p, resolve(p), project_root() / "notebooks" / p.with_suffix(".ipynb").name]
    for c in candidates:
        if c.suffix == ".ipynb" and c.is_file():
            return c.resolve()
    known = sorted(x.stem for x in (project_root() / "notebooks").glob("*.ipynb"))
    raise FileNotFoundError(f"notebook {str(notebook)!r} not found; known notebooks: {known}")


# ----------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    """The process umask, read without setting it where Linux allows: probing with
    ``os.umask`` briefly changes it for every thread that creates a file meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` all-or-nothing; refuse to replace an existing file.

    The file gets the permissions ``open`` would give it (0o666 less the umask): ``mkstemp``
    makes owner-only files, and results must be readable as every other file is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {path}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: no silent clobbering
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, obj: Any, overwrite: bool = False) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_bytes(path, text.encode(), overwrite=overwrite)


def write_table(df: pd.DataFrame, path: Path, overwrite: bool = False) -> Path:
    """Write a table as parquet, atomically; never over an existing one unless ``overwrite``
    (tables a corpus or a grid rewrites in place, whose readers must see old or new whole)."""
    return atomic_write_bytes(path, df.to_parquet(index=False), overwrite=overwrite)


# ----------------------------------------------------------------------------- provenance
def git_state(root: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout (``None`` values outside a git checkout)."""
    root = root or project_root()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                 timeout=20, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "host": socket.gethostname()}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a hard dependency
        info["cuda"] = False
    return info


def record_benchmark(name: str, result: dict[str, Any]) -> Path:
    """Write a benchmark's figures, with the machine and time they were taken on, to
    ``outputs/bench/<name>_<ns>.json`` (benchmarks never overwrite earlier figures)."""
    result = {**result, "machine": device_info(), "when": now()}
    path = atomic_write_json(outputs_root() / "bench" / f"{name}_{time.time_ns()}.json", result)
    print(f"written: {path}")
    return path


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- run folders
def new_run_id(params: Mapping[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}-{digest[:6]}"


def create_run_dir(notebook: str, params: Mapping[str, Any]) -> Path:
    """Create a fresh, exclusive run folder (a suffix is added on an id clash)."""
    base = outputs_root() / "runs" / notebook
    base.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(params)
    for n in range(1000):
        path = base / (run_id if n == 0 else f"{run_id}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not allocate a run folder under {base}")


class FolderBusy(RuntimeError):
    """Another live process holds a run or training folder."""


LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_folder(folder: Path, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder`` for this process, or fail at once naming who holds it.

    Two processes writing one training folder would interleave its log and fight over its
    checkpoints, and the second would only fail at export, after all its compute. The lock is
    an ``flock`` on ``<folder>/.lock``, which the kernel releases when its holder dies however
    it dies; the file records the holder, so a later run can say who held it, and warns when
    it takes over the lock of a process that died.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with path.open("a+") as handle:
        handle.seek(0)
        try:
            holder = json.loads(handle.read() or "{}")
        except ValueError:
            holder = {}
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"{what} {folder} is in use by pid {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')} since {holder.get('since', '?')}; "
                             "wait for it, or stop that process") from None
        if holder and holder.get("pid") != os.getpid():
            warnings.warn(f"{what} {folder}: taking over the lock of pid {holder.get('pid')} on "
                          f"{holder.get('host')} (since {holder.get('since')}), which is no "
                          "longer running", stacklevel=3)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({**this_process(), "since": now()}))
        handle.flush()
        try:
            yield folder
        finally:
            handle.seek(0)
            handle.truncate()  # a clean release leaves nothing to take over
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_record(run_dir: Path, notebook: str, params: Mapping[str, Any], launcher: str) -> dict:
    record = {
        "run_id": run_dir.name, "notebook": notebook, "status": "running",
        "launcher": launcher, "parameters": dict(params), "git": git_state(),
        "packages": package_versions(), "device": device_info(),
        "python": sys.version.split()[0], "started": now(), "ended": None,
        "process": this_process(),
    }
    atomic_write_json(run_dir / RECORD, record)
    return record


def this_process() -> dict[str, Any]:
    """Who runs a run: host, pid and the pid's start time (pids are reused; the pair is not)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": psutil.Process().create_time()}


def process_alive(process: Mapping[str, Any] | None) -> bool | None:
    """Whether a recorded process still runs: None when it ran on another host (or was not
    recorded), so the caller cannot tell."""
    import psutil

    if not process or process.get("host") != socket.gethostname():
        return None
    try:
        started = psutil.Process(int(process["pid"])).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False
    return abs(started - float(process.get("pid_started", started))) < 1.0


def effective_status(record: Mapping[str, Any]) -> str:
    """A record's status, with a ``running`` run whose process died shown as ``killed``: a
    killed process cannot write its own end, so only a reader can tell."""
    status = str(record.get("status", "unknown"))
    if status == "running" and process_alive(record.get("process")) is False:
        return "killed"
    return status


def read_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RECORD).read_text())


def update_record(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into ``run.json`` (the only file a run rewrites, always atomically)."""
    record = {**read_record(run_dir), **fields}
    atomic_write_json(Path(run_dir) / RECORD, record, overwrite=True)
    return record


def open_run(notebook: str, params: NotebookParams, run_dir: str = "") -> Path:
    """The run folder a notebook writes into.

    Under ``biovfm run`` the runner has made it and passes ``run_dir``; a notebook run by hand
    (JupyterLab, or plain papermill) gets a fresh folder and a record of its own.
    """
    if run_dir:
        path = Path(run_dir)
        if not (path / RECORD).is_file():
            raise FileNotFoundError(f"run_dir {path} has no {RECORD}; leave run_dir empty")
        return path
    path = create_run_dir(notebook, params.as_dict())
    start_record(path, notebook, params.as_dict(), launcher="interactive")
    return path


# ----------------------------------------------------------------------------- collection
def collect_results(kind: str = "results", status: str | None = "completed",
                    outputs: Path | None = None) -> pd.DataFrame:
    """All runs' ``<kind>.parquet`` tables as one tidy frame, with run id, notebook and status.

    ``status=None`` keeps every run; by default only completed runs count.
    """
    root = (outputs or outputs_root()) / "runs"
    frames = []
    for table in sorted(root.glob(f"*/*/{kind}.parquet")):
        run_dir = table.parent
        record = read_record(run_dir) if (run_dir / RECORD).is_file() else {}
        run_status = record.get("status", "unknown")
        if status is not None and run_status != status:
            continue
        df = pd.read_parquet(table)
        df.insert(0, "run_id", run_dir.name)
        df.insert(1, "notebook", run_dir.parent.name)
        df.insert(2, "status", run_status)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run_id", "notebook", "status"])
    return pd.concat(frames, ignore_index=True)

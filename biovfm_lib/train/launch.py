"""Launching pretraining from a notebook cell: torchrun as a subprocess, or a Slurm job.

The notebook process never trains itself: a crash, an out-of-memory or a NCCL hang stays in
the subprocess, and the same command scales from one CPU to many nodes. Output streams into
the cell as a bounded live view (the last lines, refreshed at most once a second) and is
teed to ``launch.log`` in the training folder; a failure raises with the log's tail.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from biovfm_lib.params import PretrainParams
from biovfm_lib.runs import hold_folder
from biovfm_lib.train.config import TrainConfig, check_same_run, resolve_config

_EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Stopped): ")
# torch's elastic error handler prints a rank's traceback with this prefix on every line.
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")


class LaunchError(RuntimeError):
    """torchrun (or sbatch) failed; the message carries the tail of its log."""


@dataclass(frozen=True)
class LaunchResult:
    train_dir: Path
    config: Path
    log: Path  # JSON lines, one per logged step
    export: Path | None  # the backbone's safetensors (None for a submitted Slurm job)
    command: list[str]


def processes_per_node(p: PretrainParams) -> int:
    """``nproc`` if set, else every visible GPU, else one CPU process."""
    if p.nproc:
        return p.nproc
    import torch

    return torch.cuda.device_count() or 1


def torchrun_command(config: Path, nproc: int) -> list[str]:
    """A single-node standalone torchrun of the training entry point."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "biovfm_lib.train", "--config", str(config)]


def check_launchable(cfg: TrainConfig, world_size: int) -> None:
    """What every rank would find wrong, found here: the objective's config with the run's
    ``method`` overrides, a data subset of at least one global batch and the online monitor's
    data. Inside torchrun each ends as a ChildFailedError with the real exception far up the
    log."""
    from biovfm_lib.train.loop import method_config, training_images
    from biovfm_lib.train.monitor import check_monitor_data

    global_batch = cfg.batch_size * world_size
    try:
        method_config(cfg, global_batch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"method: {err}") from None
    n_images = len(training_images(cfg))
    if n_images < global_batch:
        raise ValueError(f"the data subset has {n_images} images, fewer than one global batch "
                         f"of {global_batch} ({cfg.batch_size} per process x {world_size} "
                         "processes): lower batch_size or take more data")
    if cfg.monitor_every:
        check_monitor_data(cfg.monitor, cfg.monitor_every)


def prepare(p: PretrainParams) -> tuple[TrainConfig, Path]:
    cfg = resolve_config(p)
    path = cfg.dir / "config.yaml"
    if path.exists():
        check_same_run(TrainConfig.from_yaml(path), p)
    nproc = (p.nproc or 8) if p.launcher == "slurm" else processes_per_node(p)
    check_launchable(cfg, nproc * p.nnodes)  # before anything is written
    cfg.dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(path)
    return cfg, path


LAUNCHER_PID = "BIOVFM_LAUNCHER_PID"


def launch(p: PretrainParams, live: bool = True) -> LaunchResult:
    """Run pretraining to the end (or submit it to Slurm) and return where it wrote."""
    cfg, config = prepare(p)
    if p.launcher == "slurm":
        return submit_slurm(p, cfg, config)
    with hold_folder(cfg.dir, "training folder"):  # a second launch stops here, at once
        return _run_torchrun(p, cfg, config, live)


def _run_torchrun(p: PretrainParams, cfg: TrainConfig, config: Path, live: bool
                  ) -> LaunchResult:
    nproc = processes_per_node(p)
    cmd = torchrun_command(config, nproc)
    env = {**os.environ, LAUNCHER_PID: str(os.getpid())}  # ranks stop if this process dies
    if nproc > 1 and "OMP_NUM_THREADS" not in env:  # CPU ranks share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    log_file = cfg.dir / "launch.log"
    tail = LiveTail(enabled=live)
    with log_file.open("a") as tee, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=env, start_new_session=True) as proc:
        tee.write(f"$ {shlex.join(cmd)}\n")
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                tee.write(line)
                tee.flush()
                tail.add(line)
        except BaseException:  # an interrupted cell must not leave ranks training
            stop_process_tree(proc.pid)
            raise
        code = proc.wait()
    tail.close()
    if code != 0:
        raise LaunchError(f"{rank_error(tail.errors) or f'torchrun exited with {code}'} "
                          f"(torchrun exit {code}; whole log: {log_file})\n"
                          f"last lines:\n" + "".join(tail.lines))
    export = cfg.dir / "export" / "backbone.safetensors"
    return LaunchResult(cfg.dir, config, cfg.dir / "log.jsonl", export, cmd)


def rank_error(errors: list[str]) -> str:
    """The exception a rank died of: the last exception line that is not torchrun's own
    ChildFailedError report, which only says that a child failed."""
    own = [e.strip() for e in errors if "ChildFailedError" not in e]
    return own[-1] if own else (errors[-1].strip() if errors else "")


def stop_process_tree(pid: int, timeout: float = 10.0) -> None:
    """Terminate a launcher and every rank it started (torchrun workers outlive their agent
    when only the agent is signalled); what does not exit in time is killed."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*root.children(recursive=True), root]
    for proc in procs:
        proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        proc.kill()


class LiveTail:
    """The last lines of a stream, shown in place in a notebook (or printed in a terminal)."""

    def __init__(self, enabled: bool = True, lines: int = 25, interval: float = 1.0):
        self.lines: deque[str] = deque(maxlen=lines)
        self.errors: list[str] = []  # exception lines, however early they came
        self.interval, self.last = interval, 0.0
        self.handle = None
        if enabled and _in_notebook():
            from IPython.display import display

            self.handle = display(self._view(), display_id=True)
        self.print = enabled and self.handle is None

    def add(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1]  # keep a progress bar's latest state only
        if _EXCEPTION_LINE.match(unprefixed := _RANK_PREFIX.sub("", line)):
            self.errors.append(unprefixed)
        self.lines.append(line if line.endswith("\n") else line + "\n")
        if self.print:
            print(line, end="" if line.endswith("\n") else "\n", flush=True)
        elif self.handle is not None and time.monotonic() - self.last > self.interval:
            self.handle.update(self._view())
            self.last = time.monotonic()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.update(self._view())

    def _view(self):
        from IPython.display import Pretty

        return Pretty("".join(self.lines))


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def slurm_script(p: PretrainParams, cfg: TrainConfig, config: Path) -> str:
    """An sbatch script: one srun task per node, each running torchrun with c10d rendezvous."""
    opts = {"job-name": cfg.dir.name, "nodes": p.nnodes, "ntasks-per-node": 1,
            "gpus-per-node": p.nproc or 8, "cpus-per-task": 8 * (p.nproc or 8),
            "output": str(cfg.dir / "slurm-%j.log"), **p.slurm}
    header = "\n".join(f"#SBATCH --{k}={v}" for k, v in opts.items())
    torchrun = shlex.join([sys.executable, "-m", "torch.distributed.run",
                           f"--nnodes={p.nnodes}", f"--nproc-per-node={p.nproc or 8}",
                           "--rdzv-backend=c10d"])
    cmd = (f'{torchrun} --rdzv-endpoint="$MASTER_ADDR:29500" --rdzv-id="$SLURM_JOB_ID" '
           f"-m biovfm_lib.train --config {shlex.quote(str(config))}")
    return (f"#!/bin/bash\n{header}\nset -euo pipefail\n"
            "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n"
            f"cd {shlex.quote(str(Path.cwd()))}\n"
            f"srun {cmd}\n")


def submit_slurm(p: PretrainParams, cfg: TrainConfig, config: Path) -> LaunchResult:
    script = cfg.dir / "job.sbatch"
    script.write_text(slurm_script(p, cfg, config))
    try:
        out = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise LaunchError(f"sbatch not found: submit {script} on the cluster's login node") \
            from None
    except subprocess.CalledProcessError as err:
        raise LaunchError(f"sbatch failed for {script}:\n{err.stderr}") from None
    print(out.stdout.strip())
    return LaunchResult(cfg.dir, config, cfg.dir / "log.jsonl", None, ["sbatch", str(script)])

"""What a notebook needs on disk, checked before any kernel starts.

A missing corpus, data file or checkpoint is found by a notebook only after its kernel has
started and it has written into its run (or training) folder; a newcomer then sees a failed
run and a traceback instead of the one command that was missing. :func:`check_inputs` names
the missing input and what makes it, before anything is started or written.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEMO_CORPUS = "outputs/corpus/demo"
DEMO_CURATION = "biovfm run 01_curation -f params/curation/demo.yaml"


class MissingInput(FileNotFoundError):
    """An input a notebook reads does not exist yet; the message says what makes it."""


def _corpus(root: Path, data_root: str) -> None:
    from biovfm_lib.curation.pipeline import STATE

    if (root / STATE).is_file():
        return
    make = (f"`{DEMO_CURATION}` (or `make demo`)" if data_root.rstrip("/") == DEMO_CORPUS
            else f"`biovfm curate SOURCES.yaml --out {data_root}`")
    raise MissingInput(f"data_root {root} holds no finished curation ({STATE} is missing); "
                       f"run {make} first")


def _medmnist(root: Path, size: int, tasks: list[str], counts: bool = True) -> None:
    """Every task's file present and well-formed (headers and labels: cheap); a bad one is
    its own one-line error naming the file."""
    from biovfm_lib.data.medmnist import check_file, file_name

    missing = [file_name(t, size) for t in tasks if not (root / file_name(t, size)).is_file()]
    if missing:
        raise MissingInput(f"data_root {root} lacks {len(missing)} MedMNIST file(s) "
                           f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                           f"run `biovfm data medmnist --download --size {size}` on a connected "
                           "machine, or set `data: synthetic`")
    for task in tasks:
        check_file(root, task, size, counts=counts)


def _checkpoint(path: Path, checkpoint: str) -> None:
    if path.exists():
        return
    hint = ("its pretraining exports it: run `biovfm run 02_pretrain -f "
            "params/pretrain/smoke.yaml` (or `make demo`)" if "/export/" in checkpoint
            else "check the path")
    raise MissingInput(f"checkpoint {checkpoint} does not exist; {hint}")


def check_inputs(notebook: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`MissingInput` when ``notebook`` would read something that is not there.

    Inputs a run makes itself (synthetic data it generates) are not required.
    """
    from biovfm_lib.runs import resolve

    data, root = params.get("data"), params.get("data_root")
    if notebook == "02_pretrain":
        if data == "corpus":
            _corpus(resolve(root), root)
        elif data == "folder" and not resolve(root).is_dir():
            raise MissingInput(f"data_root {resolve(root)} is not a folder of images")
        elif data == "medmnist":
            _medmnist(resolve(root), params["data_size"], params["tasks"], counts=False)
    elif notebook in ("03_probe", "05_task_properties"):
        if data == "medmnist":
            _medmnist(resolve(root), params["size"], params["tasks"])
        if params.get("checkpoint"):
            _checkpoint(resolve(params["checkpoint"]), params["checkpoint"])
    elif notebook == "06_representations":
        if data == "medmnist":
            _medmnist(resolve(root), params["size"], params["tasks"])
        for checkpoint in params.get("checkpoints") or []:
            _checkpoint(resolve(checkpoint), checkpoint)

"""The bad input zoo: what a careless or unlucky user hands the workbook.

Every case goes in through the front door (the ``biovfm`` command, or ``load_encoder`` for
the checkpoints a probe is given) and must end in a non-zero exit whose last line names the
file or key and what is wrong, and leave every file written before exactly as it was.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from biovfm_lib import cli
from biovfm_lib.models.checkpoints import CheckpointError, export_backbone, load_encoder
from biovfm_lib.models.factory import VitSpec
from tests.test_hardening_data import BAD_CONTENTS, FLAG, arrays, bad_copy, npz_bytes

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], names: str, capsys, watched: Path) -> str:
    """Run the command; assert it fails with a last line naming ``names``, changing nothing."""
    before = snapshot(watched)
    code = cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and lines, argv
    assert names in lines[-1], lines[-1]
    assert snapshot(watched) == before
    return lines[-1]


# ----------------------------------------------------------------------------- YAML and names
PARAM_FILES = {
    "duplicate key": ("epochs: 3\nlrs: [0.1]\nepochs: 5\n", "duplicate key 'epochs'"),
    "syntax error": ("epochs: 3\nlrs: [0.1,\n", "line 3"),
    "not a mapping": ("- epochs\n- 3\n", "must hold a mapping"),
    "unknown key": ("epoch: 3\n", "epoch"),
    "wrong type": ("epochs: three\n", "epochs"),
}


@pytest.mark.parametrize("case", sorted(PARAM_FILES))
def test_a_bad_parameter_file(case: str, tmp_path: Path, isolated_outputs, capsys) -> None:
    text, what = PARAM_FILES[case]
    path = tmp_path / "p.yaml"
    path.write_text(text)
    line = refused(["run", "03_probe", "-f", str(path)], what, capsys, tmp_path)
    assert case in ("unknown key", "wrong type") or str(path) in line


def test_a_parameter_file_with_bad_bytes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"epochs: 3\nname: caf\xe9\n")
    refused(["run", "03_probe", "-f", str(path)], f"{path}, line 2: not UTF-8", capsys,
            tmp_path)


@pytest.mark.parametrize(("key", "value", "what"), [
    ("lrs", "[0.1,", "-p lrs, line 1"),
    ("name", "../../../somewhere", "must be a plain folder name"),
    ("name", "a/b", "must be a plain folder name"),
    ("epochs", "-3", "epochs"),
])
def test_a_bad_override(key: str, value: str, what: str, tmp_path: Path, capsys) -> None:
    notebook = "02_pretrain" if key == "name" else "03_probe"
    refused(["run", notebook, "-p", key, value], what, capsys, tmp_path)


@pytest.mark.parametrize(("edit", "what"), [
    (lambda t: t.replace("  mae:", "  dinov2:"), "duplicate key 'dinov2'"),
    (lambda t: t.replace("steps:", "steps: [", 1), "line"),
    (lambda t: t + "\nbogus: 1\n", "bogus"),
])
def test_a_bad_grid_file(edit: Callable[[str], str], what: str, tmp_path: Path,
                         capsys) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(edit((ROOT / "params" / "grids" / "smoke.yaml").read_text()))
    line = refused(["grid", str(path)], what, capsys, tmp_path)
    assert str(path) in line


def test_a_sources_file_with_a_repeated_key(tmp_path: Path, capsys) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - name: a\n    modality: ct\n    name: b\n")
    refused(["curate", str(path), "--out", str(tmp_path / "corpus")],
            "line 4, column 5: duplicate key 'name'", capsys, tmp_path)


# ----------------------------------------------------------------------------- MedMNIST files
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from biovfm_lib.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, size=28, scale=0.05, seed=0, tasks=[FLAG])
    return root


@pytest.mark.parametrize(("damage", "what"), BAD_CONTENTS,
                         ids=[d.__name__.strip("_") for d, _ in BAD_CONTENTS])
def test_a_bad_medmnist_file_stops_the_probe_before_a_kernel(synth, tmp_path, damage, what,
                                                             isolated_outputs, capsys) -> None:
    members = arrays(synth / f"{FLAG}.npz")
    damage(members)
    root = bad_copy(synth, tmp_path, npz_bytes(members))
    line = refused(["run", "03_probe", "-p", "data_root", str(root), "-p", "size", "28",
                    "-p", "tasks", f"[{FLAG}]"], what, capsys, tmp_path)
    assert str(root / f"{FLAG}.npz") in line and not isolated_outputs.exists()


def test_a_corrupt_synthetic_marker(synth, tmp_path, isolated_outputs, capsys) -> None:
    """A folder whose marker cannot be read is neither trusted as real nor as synthetic."""
    root = bad_copy(synth, tmp_path, (synth / f"{FLAG}.npz").read_bytes())
    (root / "biovfm_synthetic.json").write_text("{truncated")
    refused(["run", "03_probe", "-p", "data_root", str(root), "-p", "size", "28",
             "-p", "tasks", f"[{FLAG}]"], f"{root / 'biovfm_synthetic.json'}: unreadable "
                                          "synthetic-data marker", capsys, tmp_path)


def test_a_truncated_medmnist_file(synth, tmp_path, isolated_outputs, capsys) -> None:
    data = (synth / f"{FLAG}.npz").read_bytes()
    root = bad_copy(synth, tmp_path, data[: len(data) // 2])
    refused(["run", "03_probe", "-p", "data_root", str(root), "-p", "size", "28",
             "-p", "tasks", f"[{FLAG}]"], "is unreadable", capsys, tmp_path)


# ----------------------------------------------------------------------------- checkpoints
ARCH = "vit_tiny_patch16_224"
KWARGS = {"img_size": 28, "patch_size": 4, "depth": 2, "num_classes": 0}


def _vit() -> torch.nn.Module:
    return timm.create_model(ARCH, **KWARGS).eval()


def _sidecar_edit(change: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        weights, sidecar = export_backbone(_vit(), VitSpec(ARCH, KWARGS), root / "backbone",
                                           algorithm="dinov2", size="tiny")
        change(sidecar)
        return weights
    return make


def _json_edit(**fields) -> Callable[[Path], None]:
    def change(sidecar: Path) -> None:
        record = {**json.loads(sidecar.read_text()), **fields}
        sidecar.write_text(json.dumps({k: v for k, v in record.items() if v is not None}))
    return change


def _saved(obj_of: Callable[[], object], name: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        torch.save(obj_of(), root / name)
        return root / name
    return make


def _bytes(data: Callable[[], bytes], name: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        (root / name).write_bytes(data())
        return root / name
    return make


def _half(of: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = of(root)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path
    return make


def _poisoned(value: float) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        weights = _sidecar_edit(lambda _: None)(root)
        state = safetensors.torch.load_file(weights)
        state["blocks.0.attn.qkv.weight"][0, 0] = value
        safetensors.torch.save_file(state, weights)
        return weights
    return make


def _prefixed(prefix: str, drop: str = "") -> dict:
    return {f"{prefix}{k}": v for k, v in _vit().state_dict().items() if not drop or drop not in k}


def _folder(root: Path) -> Path:
    _sidecar_edit(lambda _: None)(root)
    return root


CHECKPOINTS: dict[str, tuple[Callable[[Path], Path], dict, str]] = {
    "text file": (_bytes(lambda: b"hello, not weights\n", "notes.pth"), {}, "not readable"),
    "empty file": (_bytes(lambda: b"", "empty.pth"), {}, "empty file"),
    "random bytes": (_bytes(lambda: os.urandom(4096), "random.pth"), {}, "not readable"),
    "truncated pth": (_half(_saved(lambda: _vit().state_dict(), "w.pth")), {"timm_name": ARCH},
                      "truncated"),
    "truncated safetensors": (_half(_sidecar_edit(lambda _: None)), {}, "truncated"),
    "resnet": (_saved(lambda: timm.create_model("resnet18").state_dict(), "r.pth"), {},
               "CNN"),
    "resnet with timm_name": (_saved(lambda: timm.create_model("resnet18").state_dict(),
                                     "r.pth"), {"timm_name": "resnet18"}, "CNN"),
    "plain state dict": (_saved(lambda: _vit().state_dict(), "w.pth"), {}, "pass timm_name"),
    "unknown timm_name": (_saved(lambda: _vit().state_dict(), "w.pth"),
                          {"timm_name": "vit_nonexistent"}, "not a timm architecture"),
    "other timm architecture": (_saved(lambda: _vit().state_dict(), "w.pth"),
                                {"timm_name": "vit_small_patch16_224"}, "do not fit"),
    "sidecar missing": (_sidecar_edit(Path.unlink), {}, "sidecar backbone.json is missing"),
    "sidecar corrupt": (_sidecar_edit(lambda p: p.write_text("{not json")), {},
                        "unreadable sidecar"),
    "sidecar empty": (_sidecar_edit(lambda p: p.write_text("")), {}, "unreadable sidecar"),
    "sidecar a list": (_sidecar_edit(lambda p: p.write_text("[1, 2]")), {}, "holds a list"),
    "sidecar of an unknown version": (_sidecar_edit(_json_edit(version=99)), {},
                                      "version <= 1"),
    "sidecar of another format": (_sidecar_edit(_json_edit(format="other")), {},
                                  "not a biovfm-backbone sidecar"),
    "sidecar without timm_name": (_sidecar_edit(_json_edit(timm_name=None)), {},
                                  "do not name a timm architecture"),
    "sidecar naming another architecture": (
        _sidecar_edit(_json_edit(timm_name="vit_base_patch16_224")), {}, "do not fit"),
    "NaN weights": (_poisoned(float("nan")), {}, "NaN or infinite"),
    "infinite weights": (_poisoned(float("inf")), {}, "NaN or infinite"),
    "dinov2 teacher, keys missing": (
        _saved(lambda: {"teacher": _prefixed("backbone.", drop="blocks.1")}, "t.pth"), {},
        "do not fit"),
    "dinov2 teacher, foreign keys": (
        _saved(lambda: {"teacher": {"backbone.foo": torch.zeros(3)}}, "t.pth"), {},
        "not a ViT in the expected key layout"),
    "dinov2 teacher not a dict": (_saved(lambda: {"teacher": [1, 2]}, "t.pth"), {},
                                  "not a state dict"),
    "mae, keys missing": (_saved(lambda: {"model": _prefixed("", drop="cls_token")}, "m.pth"),
                          {}, "no ['cls_token']"),
    "mae, foreign keys": (_saved(lambda: {"model": {"decoder_embed.weight": torch.zeros(2)}},
                                 "m.pth"), {}, "not a ViT in the expected key layout"),
    "mae of another width than args.model": (
        _saved(lambda: {"model": _vit().state_dict(),
                        "args": argparse.Namespace(model="mae_vit_large_patch16")}, "m.pth"),
        {}, "set num_heads"),
    "training last.pt": (_saved(lambda: {"model": _prefixed("student.backbone."),
                                         "optimizer": {}, "rng": {}, "step": 3}, "last.pt"),
                         {}, "training checkpoint"),
    "a folder": (_folder, {}, "is a folder, not a checkpoint file; did you mean"),
    "forced mae on an export": (_sidecar_edit(lambda _: None), {"fmt": "mae"},
                                "is a biovfm checkpoint, not mae"),
    "forced mae on a state dict": (_saved(lambda: _vit().state_dict(), "w.pth"),
                                   {"fmt": "mae", "timm_name": ""},
                                   "is a timm checkpoint, not mae"),
    "forced dinov2 on mae": (_saved(lambda: {"model": _vit().state_dict()}, "m.pth"),
                             {"fmt": "dinov2"}, "is a mae checkpoint, not dinov2"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_bad_checkpoint_is_one_line_naming_it(case: str, tmp_path: Path) -> None:
    make, kwargs, what = CHECKPOINTS[case]
    root = tmp_path / "ckpt"
    root.mkdir()
    path = make(root)
    kwargs = dict(kwargs)
    fmt = kwargs.pop("fmt", "auto")
    before = snapshot(root)
    with pytest.raises(CheckpointError) as info:
        load_encoder(path, fmt, img_size=28, **kwargs)
    message = str(info.value)
    assert "\n" not in message and what in message, message
    named = {str(path), str(path.with_suffix(".json")), str(path.with_suffix(".safetensors"))}
    assert any(n in message for n in named), message
    assert snapshot(root) == before


def test_a_bad_checkpoint_ends_the_probe_run_with_that_line(tmp_path, isolated_outputs,
                                                            capsys) -> None:
    """End to end: the run fails, its last line is the checkpoint's, the traceback is in the
    run's error.txt."""
    weights = _poisoned(float("nan"))(tmp_path)
    code = cli.main(["run", "03_probe", "-f", "params/probe/smoke.yaml", "-p", "checkpoint",
                     str(weights), "-p", "tasks", "[breastmnist]", "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and str(weights) in lines[-1] and "NaN or infinite" in lines[-1]
    error_txt = Path(lines[-2].removeprefix("traceback: "))
    assert error_txt.is_file() and "Traceback" in error_txt.read_text()



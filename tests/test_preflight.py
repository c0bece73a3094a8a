"""A newcomer's second command: missing inputs are named, with what makes them, before any
kernel starts and before anything is written."""
from __future__ import annotations

from pathlib import Path

import pytest

from biovfm_lib import cli


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


def _nothing_written(outputs: Path) -> bool:
    return not any(p.is_file() for p in outputs.rglob("*")) if outputs.exists() else True


def test_pretraining_before_curation_says_what_to_run(isolated_outputs, capsys) -> None:
    code, err = _run(["run", "02_pretrain", "-f", "params/pretrain/smoke.yaml"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds no finished curation" in err
    assert "biovfm run 01_curation -f params/curation/demo.yaml" in err and "make demo" in err
    assert _nothing_written(isolated_outputs)  # no run folder, no config.yaml


def test_probing_an_export_that_does_not_exist_yet(isolated_outputs, capsys) -> None:
    code, err = _run(["run", "03_probe", "-f", "params/probe/smoke_pretrained.yaml"], capsys)
    assert code == 2 and "checkpoint outputs/pretrain/smoke-dinov2-nano/export/" in err
    assert "02_pretrain" in err and _nothing_written(isolated_outputs)


def test_real_medmnist_files_that_are_absent(isolated_outputs, tmp_path, capsys) -> None:
    code, err = _run(["run", "03_probe", "-p", "data_root", str(tmp_path / "none"),
                      "-p", "tasks", "[breastmnist]"], capsys)
    assert code == 2 and "lacks 1 MedMNIST file(s) (breastmnist_224.npz)" in err
    assert "biovfm data medmnist --download --size 224" in err


def test_the_smoke_grid_before_curation(isolated_outputs, capsys) -> None:
    code, err = _run(["grid", "params/grids/smoke.yaml"], capsys)
    assert code == 2 and "point dinov2-nano-all" in err and "01_curation" in err
    assert not (isolated_outputs / "runs").exists()


@pytest.mark.parametrize("notebook", ["03_probe", "05_task_properties"])
def test_synthetic_data_is_made_by_the_run_so_it_is_not_required(notebook) -> None:
    from biovfm_lib.params import params_for
    from biovfm_lib.preflight import check_inputs

    p = params_for(notebook).validate_mapping({"data": "synthetic",
                                                "data_root": "outputs/nowhere"}).as_dict()
    check_inputs(notebook, p)  # nothing to find yet: the run writes it

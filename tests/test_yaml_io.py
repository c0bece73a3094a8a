"""Every YAML the workbook reads: duplicate keys refused, exponent floats read as numbers,
and every syntax error one line naming the file (or -p key), line and column."""
from __future__ import annotations

from pathlib import Path

import pytest

from biovfm_lib import cli
from biovfm_lib.curation.sources import load_sources
from biovfm_lib.grid import load_grid
from biovfm_lib.grid.spec import GridError
from biovfm_lib.params import ParamError, PretrainParams, ProbeParams, load_yaml
from biovfm_lib.yaml_io import YamlError, parse_yaml, read_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_duplicate_keys_are_refused_with_the_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("epochs: 3\nlrs: [0.1]\nepochs: 5\n")
    with pytest.raises(ParamError, match=r"p\.yaml, line 3, column 1: duplicate key 'epochs' "
                                         r"\(first on line 1\)"):
        load_yaml(path)


def test_a_grid_with_two_equal_axis_labels_is_refused(tmp_path: Path) -> None:
    """Today's smoke grid with its ``dinov2:`` label written twice (the second one MAE's)."""
    text = (ROOT / "params" / "grids" / "smoke.yaml").read_text()
    mae_line = next(line for line in text.splitlines() if line.strip().startswith("mae:"))
    path = tmp_path / "grid.yaml"
    path.write_text(text.replace(mae_line, mae_line.replace("mae:", "dinov2:")))
    with pytest.raises(GridError, match=r"grid\.yaml, line \d+, column 5: duplicate key "
                                        r"'dinov2'"):
        load_grid(path)


def test_a_sources_file_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - name: a\n    modality: ct\n    name: b\n")
    with pytest.raises(YamlError, match=r"sources\.yaml, line 4, column 5: duplicate key 'name'"):
        load_sources(path)


def test_merge_keys_and_equal_keys_in_different_mappings_are_fine() -> None:
    assert parse_yaml("a: &x {k: 1}\nb: {<<: *x, j: 2}\nc: {k: 3}\n", "t") == {
        "a": {"k": 1}, "b": {"k": 1, "j": 2}, "c": {"k": 3}}


@pytest.mark.parametrize(("text", "value"), [
    ("1e-4", 1e-4), ("-2.5E+3", -2500.0), ("3", 3), ("1.5", 1.5), ("1_000", 1000),
    (".inf", float("inf")), ("e5", "e5"), ("1e", "1e"),
])
def test_exponent_floats_are_numbers_as_in_yaml_1_2(text: str, value) -> None:
    assert parse_yaml(text, "t") == value


@pytest.mark.parametrize(("text", "where"), [
    ("a: [1, 2\nb: 3", "line 2, column 2"),
    ("a: b: c", "line 1, column 5"),
    ("a:\n\t- 1", "line 2, column 1"),
])
def test_syntax_errors_are_one_line_naming_file_line_and_column(tmp_path: Path, text: str,
                                                                where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ParamError) as info:
        load_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}, {where}: ") and "\n" not in message


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("epochs: 3\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlError, match=r"latin1\.yaml, line 2: not UTF-8 text \(byte 0xe9"):
        read_yaml(path)


def test_overrides_read_as_the_user_meant() -> None:
    assert ProbeParams.parse_override("weight_decay", "1e-4") == 1e-4
    assert ProbeParams.validate_mapping({"weight_decay": 1e-4}).weight_decay == 1e-4
    assert PretrainParams.parse_override("name", "no") == "no"  # not YAML 1.1's False
    assert PretrainParams.parse_override("name", "'quoted'") == "quoted"
    assert PretrainParams.parse_override("epochs", "5") == 5
    with pytest.raises(ParamError, match=r"^-p lrs, line 1, column 6: "):
        ProbeParams.parse_override("lrs", "[0.1,")


@pytest.mark.parametrize("name", ["../../../somewhere", "a/b", "..", "/abs", ""])
def test_training_folder_names_are_plain_names(name: str) -> None:
    if not name:  # empty: derived from the parameters
        assert PretrainParams.validate_mapping({"name": name}).name == ""
        return
    with pytest.raises(ParamError, match="must be a plain folder name"):
        PretrainParams.validate_mapping({"name": name})


def test_the_command_line_says_one_line_and_writes_nothing(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    monkeypatch.setenv("BIOVFM_OUTPUTS", str(tmp_path / "outputs"))
    code = cli.main(["run", "02_pretrain", "-f", "params/pretrain/smoke.yaml",
                     "-p", "name", "../../../somewhere"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) <= 3 and "must be a plain folder name" in err[-1]
    assert not (tmp_path / "outputs").exists() and not (tmp_path.parent / "somewhere").exists()

from pathlib import Path

import pytest
from pydantic import ValidationError

from biovfm_lib.curation.sources import load_sources
from biovfm_lib.params import (
    MEDMNIST_2D_TASKS,
    CurationParams,
    ParamError,
    PretrainParams,
    ProbeParams,
    PropertiesParams,
    ScalingParams,
    load_yaml,
    params_for,
)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_official_protocol():
    p = ProbeParams()
    assert p.tasks == list(MEDMNIST_2D_TASKS) and len(p.tasks) == 12
    assert (p.size, p.batch_size, p.epochs, p.lrs, p.weight_decay) == (224, 128, 100, [1e-2], 0.0)
    assert p.features == "mean_patch" and p.bootstrap == 1000
    assert (p.protocol, p.backbone_mode, p.threshold_rule, p.ci_rule) == (
        "official", "study", "study", "study")


PARAM_FOLDERS = {"probe": ProbeParams, "pretrain": PretrainParams, "scaling": ScalingParams,
                 "properties": PropertiesParams, "curation": CurationParams}


@pytest.mark.parametrize("path", sorted(p for folder in PARAM_FOLDERS
                                       for p in (ROOT / "params" / folder).glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_parameter_file_validates(path):
    if path.name.endswith("_sources.yaml"):  # a curation source registry, not parameters
        assert load_sources(path)
        return
    params = PARAM_FOLDERS[path.parent.name].from_yaml(path)
    if isinstance(params, CurationParams):
        assert load_sources(ROOT / params.sources)


def test_unknown_key_is_named():
    with pytest.raises(ParamError, match=r"epoch: unknown parameter"):
        ProbeParams.validate_mapping({"epoch": 5})


@pytest.mark.parametrize("key,value,fragment", [
    ("epochs", "5", "epochs"),             # wrong type: strict, no silent str -> int
    ("epochs", 0, "epochs"),               # out of range
    ("size", 100, "size"),                 # not a MedMNIST size
    ("lrs", [0.01, -1.0], "lrs"),
    ("tasks", ["pathmnist", "mnist"], "tasks"),
    ("encoder", "gigantic", "encoder"),
    ("protocol", "fancy", "protocol"),
    ("verify_md5", "yes", "verify_md5"),
])
def test_bad_values_raise_one_error_naming_the_key(key, value, fragment):
    with pytest.raises(ParamError) as err:
        ProbeParams.validate_mapping({key: value})
    assert f"  {fragment}" in str(err.value) and repr(value) in str(err.value)


def test_all_bad_keys_in_one_message():
    with pytest.raises(ParamError) as err:
        ProbeParams.validate_mapping({"epochs": -1, "sizee": 28, "bootstrap": -5})
    msg = str(err.value)
    assert "epochs" in msg and "sizee" in msg and "bootstrap" in msg


def test_int_is_accepted_for_float():
    assert ProbeParams.validate_mapping({"weight_decay": 0}).weight_decay == 0


def test_namespace_validation_catches_injected_typos():
    import math

    ns = {"epochs": 3, "size": 28, "run_dir": "/x", "math": math, "_private": 1, "In": [],
          "ProbeParams": ProbeParams}
    assert ProbeParams.from_namespace(ns).epochs == 3
    with pytest.raises(ParamError, match="batchsize"):
        ProbeParams.from_namespace({**ns, "batchsize": 64})


def test_validated_params_are_frozen():
    p = ProbeParams()
    with pytest.raises(ValidationError, match="frozen"):
        p.epochs = 3


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ParamError, match="mapping"):
        load_yaml(bad)
    with pytest.raises(ParamError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ParamError, match="no parameter set"):
        params_for("99_nothing")


def test_pretrain_method_overrides_are_checked_against_the_recipe():
    assert PretrainParams.validate_mapping({"method": {"base_lr": 1e-3}}).method == {
        "base_lr": 1e-3}
    with pytest.raises(ParamError, match="base_lrr"):
        PretrainParams.validate_mapping({"method": {"base_lrr": 1e-3}})
    with pytest.raises(ParamError, match="n_prototypes"):  # a DINOv2 key given to MAE
        PretrainParams.validate_mapping({"algorithm": "mae", "method": {"n_prototypes": 8}})

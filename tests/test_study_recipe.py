"""The DINOv2 recipe the study ran (``recipe: study``) against facebookresearch/dinov2's code,
and the ``dinov2_p14`` variant kept beside it (issue 11, items 1-5, 7, 8).

Each test pins one behaviour of the official code (``configs/ssl_default_config.yaml``,
``train/train.py``, ``train/ssl_meta_arch.py``, ``utils/param_groups.py``,
``data/augmentations.py``, ``data/masking.py``) or of the study's model builder (JiarunLiu/BioVFM
``evaluation/models/builder.py``), restated here from what that code computes.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biovfm_lib.analysis.inputs import probe_points
from biovfm_lib.analysis.scaling import compare_algorithms, scaling_slopes, subset_table
from biovfm_lib.data.device_augment import DINOv2Photometric
from biovfm_lib.data.ssl_transforms import DINOV2_CODE_BLUR_P, DINOV2_RECIPE_BLUR_P
from biovfm_lib.grid.spec import load_grid
from biovfm_lib.params import ParamError, PretrainParams
from biovfm_lib.ssl import DINOv2, DINOv2Config, masking
from biovfm_lib.ssl.dinov2 import OFFICIAL_EPOCH_LENGTH, dino_loss
from biovfm_lib.ssl.masking import block_limit, ibot_masks
from biovfm_lib.train import launch
from biovfm_lib.train.bench import bench_pretrain
from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.distributed import DistEnv
from biovfm_lib.train.loop import (
    build_method,
    device_augmentation,
    iterations_per_epoch,
    method_config,
    schedule_notes,
    train_step,
)

pytestmark = [pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]
RECIPES = ("study", "dinov2_p14")
SIZES = ("tiny", "small", "base", "large", "huge")
CPU = torch.device("cpu")




def nano(recipe: str = "study", total_steps: int = 100, **overrides) -> DINOv2:
    torch.manual_seed(0)
    cfg = DINOv2Config.for_size("nano", recipe, **{
        "global_crop_size": 32, "local_crop_size": 16, "n_local_crops": 2, "n_prototypes": 128,
        "head_hidden_dim": 64, "head_bottleneck_dim": 32, "drop_path_rate": 0.0,
        "batch_size": 1024, **overrides})
    return DINOv2(cfg, total_steps)


def dino_batch(method: DINOv2, n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = method.cfg
    return method.collate([
        [torch.randn(3, cfg.global_crop_size, cfg.global_crop_size, generator=g)
         for _ in range(2)]
        + [torch.randn(3, cfg.local_crop_size, cfg.local_crop_size, generator=g)
           for _ in range(cfg.n_local_crops)] for _ in range(n)])


def train_config(algorithm: str = "dinov2", recipe: str = "study", size: str = "nano",
                 **kw) -> TrainConfig:
    """A run's resolved config without data (what build_method and device_augmentation read)."""
    base = {"algorithm": algorithm, "size": size, "method": {}, "sources": [], "subset": {},
            "img_size": 28, "local_size": 0, "n_local": 2, "epochs": 1, "max_steps": 0,
            "batch_size": 8, "seed": 0, "precision": "fp32", "strategy": "ddp",
            "activation_checkpointing": False, "compile": False, "num_workers": 0,
            "checkpoint_every": 1, "log_every": 1, "out_dir": "", "augment_on": "device",
            "recipe": recipe}
    return TrainConfig(**{**base, **kw})


# ============================================================================ item 1: recipe
def test_study_recipe_is_the_default_config_at_the_studys_patch_and_drop_path():
    """ssl_default_config.yaml, with the study builder's patch 16 / drop path 0.3 for T/S/B/L
    and patch 14 / drop path 0.4 for ViT-H (today: patch 14, Sinkhorn, wd to 0.2, 98 px local
    crops, drop path 0.1 for T/S/B)."""
    official = {
        "layerscale": 1e-5, "centering": "centering", "center_momentum": 0.9,
        "weight_decay": 0.04, "weight_decay_end": 0.4, "n_prototypes": 65536,
        "ibot_separate_head": False, "head_hidden_dim": 2048, "head_bottleneck_dim": 256,
        "dino_loss_weight": 1.0, "ibot_loss_weight": 1.0, "koleo_loss_weight": 0.1,
        "teacher_temp_warmup": 0.04, "teacher_temp": 0.07, "momentum_teacher": 0.992,
        "momentum_teacher_end": 1.0, "base_lr": 0.004, "min_lr": 1e-6, "clip_grad": 3.0,
        "layer_decay": 0.9, "patch_embed_lr_mult": 0.2, "betas": (0.9, 0.999),
        "global_crop_size": 224, "n_local_crops": 8, "mask_probability": 0.5,
        "mask_ratio": (0.1, 0.5), "student_temp": 0.1, "batch_size": 1024,
        "epoch_length": 1250, "warmup_epochs": 10, "teacher_temp_warmup_epochs": 30,
        "freeze_last_layer_epochs": 1,
    }
    for size in SIZES:
        cfg = DINOv2Config.for_size(size)
        huge = size == "huge"
        assert cfg.recipe == "study"
        assert (cfg.patch_size, cfg.local_crop_size, cfg.drop_path_rate) == (
            (14, 98, 0.4) if huge else (16, 96, 0.3)), size
        # the study's builder: kwargs['ffn_layer'] = "swiglufused" for dino_vit_huge only
        assert cfg.ffn_layer == ("swiglufused" if huge else "mlp"), size
        assert {k: getattr(cfg, k) for k in official} == official, size
    assert DINOv2Config() == DINOv2Config.for_size("large")  # the dataclass is the study's
    with torch.device("meta"):
        tiny = DINOv2(DINOv2Config.for_size("tiny"), 100)
    vit = tiny.student.backbone.vit
    assert vit.patch_embed.patch_size == (16, 16) and tiny.spec.timm_kwargs["patch_size"] == 16
    assert {b.drop_path1.drop_prob for b in vit.blocks} == {0.3}  # uniform, as drop_path_uniform
    assert tiny.spec.timm_kwargs["init_values"] == 1e-5  # layer scale


def test_variant_keeps_the_patch_14_recipe():
    for size in SIZES:
        cfg = DINOv2Config.for_size(size, "dinov2_p14")
        assert (cfg.patch_size, cfg.local_crop_size, cfg.centering, cfg.weight_decay_end) == (
            14, 98, "sinkhorn", 0.2)
        assert cfg.epoch_length == 0 and not cfg.decay_embeddings and not cfg.clip_per_module
        assert cfg.blur_p == DINOV2_RECIPE_BLUR_P and cfg.pos_interpolation == "timm"
    assert [DINOv2Config.for_size(s, "dinov2_p14").drop_path_rate for s in SIZES] == [
        0.1, 0.1, 0.1, 0.3, 0.4]
    huge = DINOv2Config.for_size("huge", "dinov2_p14")
    assert huge.ibot_separate_head and huge.n_prototypes == 131072 and huge.layer_decay == 1.0
    with pytest.raises(ValueError, match="recipe"):
        DINOv2Config.for_size("base", "dinov2_p16")


def test_recipe_parameter_defaults_to_study_and_refuses_the_variant_for_mae():
    assert PretrainParams().recipe == "study" and PretrainParams().local_size == 0
    assert PretrainParams.validate_mapping({"recipe": "dinov2_p14"}).recipe == "dinov2_p14"
    with pytest.raises(ParamError, match="recipe"):
        PretrainParams.validate_mapping({"algorithm": "mae", "recipe": "dinov2_p14"})
    with pytest.raises(ParamError, match="recipe"):  # its own parameter, not a method key
        PretrainParams.validate_mapping({"method": {"recipe": "dinov2_p14"}})
    # the run's crops follow the recipe unless set: 96 px at patch 16, 98 at patch 14
    assert method_config(train_config(size="base", img_size=224), 64).local_crop_size == 96
    assert method_config(train_config(size="huge", img_size=224), 64).local_crop_size == 98
    assert method_config(train_config(recipe="dinov2_p14", size="base", img_size=224),
                         64).local_crop_size == 98


def test_shipped_files_run_the_study_recipe_and_keep_the_variant_file():
    """The study's grid, its ViT-L file and the smoke run use the study recipe; the old
    ViT-L/14 file still exists and names the variant."""
    root = Path(__file__).resolve().parents[1]
    paper = load_grid(root / "params" / "grids" / "paper.yaml")
    dinov2 = {}
    for point in paper.points:
        if point.axes["algorithm"] == "dinov2" and point.axes["subset"] == "all":
            p = PretrainParams.validate_mapping(point.steps[0].values())
            mcfg = method_config(train_config(size=p.encoder, img_size=p.img_size,
                                              local_size=p.local_size, n_local=p.n_local,
                                              recipe=p.recipe), 1024)
            dinov2[p.encoder] = (p.recipe, mcfg.patch_size, mcfg.local_crop_size)
    assert dinov2 == {s: ("study", 14, 98) if s == "huge" else ("study", 16, 96) for s in SIZES}
    for name, recipe in (("dinov2_vitl16", "study"), ("smoke", "study"),
                         ("dinov2_vitl14", "dinov2_p14")):
        assert PretrainParams.from_yaml(root / "params" / "pretrain" / f"{name}.yaml"
                                        ).recipe == recipe


def test_configs_written_before_recipes_read_as_what_they_trained(tmp_path):
    for algorithm, recipe in (("dinov2", "dinov2_p14"), ("mae", "study")):
        path = tmp_path / f"{algorithm}.yaml"
        train_config(algorithm=algorithm).to_yaml(path)
        text = "\n".join(line for line in path.read_text().splitlines()
                         if not line.startswith("recipe:"))
        path.write_text(text)
        assert TrainConfig.from_yaml(path).recipe == recipe


# ============================================================================ item 2: epochs
def test_epochs_are_1250_iterations_and_warmups_absolute():
    """train.py's schedules: warm-up 10, teacher-temperature warm-up 30 and last layer frozen
    1 epoch of OFFICIAL_EPOCH_LENGTH iterations, whatever the run's length."""
    assert OFFICIAL_EPOCH_LENGTH == 1250
    full = DINOv2(DINOv2Config.for_size("base"), total_steps=100 * 1250)
    cut = DINOv2(DINOv2Config.for_size("base"), total_steps=2000)  # max_steps cut the run
    peak = 4e-3
    for method in (full, cut):
        assert method.phases() == {"lr warm-up": 12_500, "teacher-temperature warm-up": 37_500,
                                   "last-layer freeze": 1250}
        assert method.lr(1000) == pytest.approx(peak * 1000 / 12_500)
        assert method.teacher_temp(18_750) == pytest.approx(0.055)
        last = [g for g in method.param_groups() if g["frozen_steps"]]
        assert last and all(g["frozen_steps"] == 1250 for g in last)
    assert full.lr(12_500) == pytest.approx(peak) and full.teacher_temp(37_500) == 0.07
    # the variant's are shares of the run
    variant = DINOv2(DINOv2Config.for_size("base", "dinov2_p14"), total_steps=2000)
    assert variant.phases() == {"lr warm-up": 200, "teacher-temperature warm-up": 600,
                                "last-layer freeze": 20}
    # an epoch of the run: 1250 iterations (study), a pass over the data (variant)
    study, p14 = method_config(train_config(), 8), method_config(train_config(
        recipe="dinov2_p14"), 8)
    assert iterations_per_epoch(study, 37) == 1250 and iterations_per_epoch(p14, 37) == 37


def test_a_run_shorter_than_a_warmup_says_so():
    notes = schedule_notes(DINOv2(DINOv2Config.for_size("base"), total_steps=2000))
    assert len(notes) == 2
    assert "lr warm-up (12500 steps)" in notes[0] and "2000 steps" in notes[0]
    assert "teacher-temperature warm-up (37500 steps)" in notes[1]
    assert schedule_notes(DINOv2(DINOv2Config.for_size("base"), total_steps=125_000)) == []


# ============================================================================ item 3: decay
def official_decays(name: str) -> bool:
    """utils/param_groups.py: wd_multiplier 0 for ``.bias``, ``norm`` and ``gamma`` names."""
    return not (name.endswith(".bias") or "norm" in name or "gamma" in name)


def test_param_groups_decay_embeddings_as_dinov2():
    method = nano()
    wd = {id(p): g["wd_scale"] for g in method.param_groups() for p in g["params"]}
    named = dict(method.student.named_parameters())
    decayed = sorted(n for n, p in named.items() if wd[id(p)] == 1)
    assert decayed == sorted(n for n in named if official_decays(n))
    for name in ("backbone.vit.pos_embed", "backbone.vit.cls_token", "backbone.mask_token"):
        assert name in decayed
    variant = nano("dinov2_p14")
    wd = {id(p): g["wd_scale"] for g in variant.param_groups() for p in g["params"]}
    vit = variant.student.backbone.vit
    assert [wd[id(p)] for p in (vit.pos_embed, vit.cls_token,
                                variant.student.backbone.mask_token)] == [0, 0, 0]


# ============================================================================ item 4: clipping
class PlantedGradients(nn.Module):
    """A stand-in for the model whose loss gives each student module a gradient of a chosen
    norm (random direction), so clipping can be read off the gradients afterwards."""

    def __init__(self, method: DINOv2, norms: dict[str, float]):
        super().__init__()
        self.method, self.norms = method, norms

    def forward(self, batch: dict, step: int) -> dict:
        g = torch.Generator().manual_seed(0)
        loss = torch.zeros(())
        for name, module in self.method.student.named_children():
            params = [p for p in module.parameters() if p.requires_grad]
            dirs = [torch.randn(p.shape, generator=g) for p in params]
            scale = self.norms[name] / torch.cat([d.flatten() for d in dirs]).norm()
            loss = loss + sum((p * d * scale).sum() for p, d in zip(params, dirs, strict=True))
        return {"loss": loss}


def module_norms(method: DINOv2) -> dict[str, float]:
    return {name: float(torch.cat([p.grad.flatten() for p in m.parameters()]).norm())
            for name, m in method.student.named_children()}


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_student_module_is_clipped_on_its_own(recipe):
    """train.py clips every ``model.student`` module (backbone, DINO head, iBOT head) to 3.0
    separately: a backbone at norm 10 is cut to 3, a head at norm 1 is left alone."""
    method = nano(recipe, ibot_separate_head=True, ibot_n_prototypes=64, ibot_bottleneck_dim=16)
    norms = {"backbone": 10.0, "dino_head": 1.0, "ibot_head": 2.0}
    opt = torch.optim.AdamW(method.param_groups(), betas=method.betas)
    _, total = train_step(PlantedGradients(method, norms), method, opt, {}, 0, bf16=False)
    assert float(total) == pytest.approx(math.sqrt(100 + 1 + 4), rel=1e-5)  # logged: pre-clip
    got = module_norms(method)
    if recipe == "study":
        assert got == pytest.approx({"backbone": 3.0, "dino_head": 1.0, "ibot_head": 2.0},
                                    rel=1e-5)
    else:  # one global norm: every module scaled by 3 / sqrt(105)
        assert got == pytest.approx({k: v * 3 / math.sqrt(105) for k, v in norms.items()},
                                    rel=1e-5)


# ============================================================================ item 5: freeze
@pytest.mark.parametrize("recipe", RECIPES)
def test_last_layer_freeze_is_lr_zero_and_adamw_moments_accumulate(recipe):
    """train.py sets the last layer's lr to 0 for the first epoch: the weights hold, AdamW's
    moments take every gradient, and the first unfrozen step uses all of them."""
    freeze = ({"epoch_length": 2, "freeze_last_layer_epochs": 1} if recipe == "study"
              else {"freeze_last_layer_frac": 0.02})  # 2 of 100 steps either way
    method = nano(recipe, **freeze, warmup_epochs=0, warmup_frac=0.0)
    batch = dino_batch(method)
    opt = torch.optim.AdamW(method.param_groups(), betas=method.betas)
    weight = method.student.dino_head.last_layer.weight_v
    grads = []
    for step in range(3):
        before = weight.detach().clone()
        train_step(method, method, opt, batch, step, bf16=False)
        grads.append(weight.grad.detach().clone())
        assert torch.equal(before, weight) == (step < 2)  # no update, no decay while frozen
    state = opt.state[weight]
    assert int(state["step"]) == 3  # dropping the gradient instead gives 1
    beta1, beta2 = method.betas
    exp_avg = (1 - beta1) * (beta1 ** 2 * grads[0] + beta1 * grads[1] + grads[2])
    torch.testing.assert_close(state["exp_avg"], exp_avg)
    exp_sq = (1 - beta2) * (beta2 ** 2 * grads[0] ** 2 + beta2 * grads[1] ** 2 + grads[2] ** 2)
    torch.testing.assert_close(state["exp_avg_sq"], exp_sq)


# ============================================================================ item 6: wiring
def added_position_table(method: DINOv2, size: int) -> torch.Tensor:
    """What the student's backbone adds to the tokens of a ``size`` px crop."""
    backbone = method.student.backbone.eval()
    seen = []
    hook = backbone.vit.blocks[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0]))
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        backbone.encode(images)
        tokens = backbone.prepend_prefix_tokens(backbone.images_to_tokens(images))
    hook.remove()
    return (seen[0] - tokens)[0]


@pytest.mark.parametrize("recipe", RECIPES)
def test_local_crops_take_the_position_table_as_the_recipe_says(recipe):
    """dinov2's interpolate_pos_encoding: bicubic with scale factor (6 + 0.1) / 14 and no
    antialias for a 6 x 6 crop of a 14 x 14 table (DINOv2's 96 / 16 local crops, here the
    same grids at patch 4); the variant resamples by size, as timm."""
    method = nano(recipe, global_crop_size=56, local_crop_size=24)
    assert method.cfg.pos_interpolation == ("dinov2" if recipe == "study" else "timm")
    table = method.student.backbone.vit.pos_embed[0].detach()
    grid = table[1:].T.reshape(1, -1, 14, 14)
    if recipe == "study":
        local = F.interpolate(grid, scale_factor=(6.1 / 14, 6.1 / 14), mode="bicubic",
                              antialias=False)
    else:
        local = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=False)
    expected = torch.cat([table[:1], local.reshape(-1, 36).T])
    torch.testing.assert_close(added_position_table(method, 24), expected,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(added_position_table(method, 56), table, rtol=0, atol=1e-6)
    other = F.interpolate(grid, **({"size": (6, 6)} if recipe == "study" else
                                   {"scale_factor": (6.1 / 14, 6.1 / 14)}),
                          mode="bicubic", antialias=False)
    assert (other - local).abs().max() > 1e-3  # the two rules really differ here


# ============================================================================ item 7: blur
def count_blurs(transform) -> list[int]:
    """Wrap every Gaussian blur of a DINOv2Augmentation's three pipelines with a counter."""
    counts = []
    for pipeline in (transform.global_1, transform.global_2, transform.local):
        counts.append(0)
        index = len(counts) - 1
        for step in pipeline.transforms:
            for inner in getattr(step, "transforms", []):
                if type(inner).__name__ == "GaussianBlur":
                    original = inner.forward

                    def counted(*args, _original=original, _index=index):
                        counts[_index] += 1
                        return _original(*args)
                    inner.forward = counted
    return counts


@pytest.mark.parametrize("recipe, rates", [("study", DINOV2_CODE_BLUR_P),
                                           ("dinov2_p14", DINOV2_RECIPE_BLUR_P)])
def test_blur_rates_on_the_loader_and_the_device(recipe, rates):
    """augmentations.py's GaussianBlur(p) applies with 1 - p: 0.0 / 0.9 / 0.5 for global 1,
    global 2 and the local crops. Frequencies over many draws lie within 5 binomial sd."""
    cfg = train_config(recipe=recipe)
    _, transform = build_method(cfg, 8, 10)
    counts = count_blurs(transform)
    g = torch.Generator().manual_seed(0)
    n = 600
    torch.manual_seed(0)
    for _ in range(n):
        transform(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g))
    draws = (n, n, n * cfg.n_local)
    device = device_augmentation(cfg, DistEnv(0, 0, 1, CPU))
    assert isinstance(device, DINOv2Photometric)
    params = device.draw([20_000] * 3, step=0, device=CPU)
    for count, total, p, drawn, rate in zip(counts, draws, params, (20_000,) * 3, rates,
                                            strict=True):
        for freq, size in ((count / total, total), (float(p.blur.float().mean()), drawn)):
            assert abs(freq - rate) <= 5 * math.sqrt(rate * (1 - rate) / size), (freq, rate)


# ============================================================================ item 8: edges
def test_zero_local_crops_divide_the_global_term_by_three():
    """ssl_meta_arch.py: the global DINO term is divided by 2 + max(2n, 1) terms."""
    g = torch.Generator().manual_seed(0)
    teacher = F.softmax(torch.randn(2, 5, 12, generator=g), dim=-1)
    student = torch.randn(2, 5, 12, generator=g)
    ce = [-(teacher[1 - i] * F.log_softmax(student[i] / 0.1, dim=-1)).sum(-1).mean()
          for i in range(2)]
    global_part, local_part = dino_loss(teacher, student, 0.1)
    torch.testing.assert_close(global_part, sum(ce) / 3)
    assert float(local_part) == 0
    method = nano(n_local_crops=0).eval()
    with torch.no_grad():
        out = method(dino_batch(method), 0)
    assert out["dino_global_loss"].isfinite() and float(out["dino_local_loss"]) == 0


def test_block_mask_limit_is_the_official_expression(monkeypatch):
    """train.py: max_num_patches = 0.5 * img_size // patch_size * img_size // patch_size,
    evaluated left to right (7 x 7 grid: 21, not 24)."""
    for patch in (4, 14, 16):
        for grid in range(2, 20):
            img = grid * patch
            assert block_limit(grid) == int(0.5 * img // patch * img // patch), (grid, patch)
    assert block_limit(7) == 21 and block_limit(14) == 98 and block_limit(16) == 128
    calls = []
    original = masking.block_mask

    def recorded(*args, max_block=None, **kw):
        calls.append(max_block)
        return original(*args, max_block=max_block, **kw)
    monkeypatch.setattr(masking, "block_mask", recorded)
    masks = ibot_masks(8, 7, 0.5, (0.1, 0.5), random.Random(0))
    assert calls == [21] * 4 and masks.shape == (8, 49)


# ============================================================================ sidecar, analysis
@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_runs_of_both_recipes_train_and_record_their_recipe(tmp_path, recipe):
    result = launch(PretrainParams.validate_mapping({
        "algorithm": "dinov2", "recipe": recipe, "encoder": "nano", "patch_size": 4,
        "data": "synthetic", "data_root": str(tmp_path / "synth"), "data_size": 28,
        "synthetic_scale": 0.01, "img_size": 28,
        "local_size": 12, "n_local": 2, "epochs": 1, "max_steps": 3, "batch_size": 8,
        "num_workers": 0, "checkpoint_every": 10, "log_every": 1, "nproc": 1,
        "out_root": str(tmp_path / "pretrain")}), live=False)
    sidecar = json.loads(result.export.with_suffix(".json").read_text())
    assert sidecar["recipe"] == recipe and sidecar["steps"] == 3
    log = (result.train_dir / "launch.log").read_text()
    assert ("lr warm-up (12500 steps)" in log) == (recipe == "study")


def probe_rows(tmp_path, runs: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for run_id, meta in runs.items():
        stem = tmp_path / run_id
        stem.with_suffix(".json").write_text(json.dumps({"n_params": 1e6, **meta}))
        for task, value in (("pathmnist", meta["auc"]), ("dermamnist", meta["auc"] - 0.1)):
            rows.append({"notebook": "03_probe", "split": "test", "run_id": run_id,
                         "checkpoint": str(stem.with_suffix(".safetensors")), "task": task,
                         "metric": "auc", "value": value, "data_source": "synthetic"})
    return pd.DataFrame(rows)


def test_scaling_points_carry_the_recipe_and_fits_never_pool_recipes(tmp_path):
    subset = {"fraction": 1.0, "count": None, "modalities": None}
    runs = {}
    for size, x in (("small", 47.4), ("base", 111.7), ("large", 329.2)):
        for recipe, slope in (("study", 0.05), ("dinov2_p14", 0.01), (None, 0.03)):
            meta = {"algorithm": "dinov2", "size": size, "params_study_m": x,
                    "data_subset": subset, "auc": 0.5 * x ** slope}
            if recipe:
                meta["recipe"] = recipe
            runs[f"dino-{size}-{recipe}"] = meta
        runs[f"mae-{size}"] = {"algorithm": "mae", "size": size, "params_study_m": x,
                               "data_subset": subset, "auc": 0.5 * x ** 0.02}
    points = probe_points(probe_rows(tmp_path, runs))
    # a sidecar without a recipe gets the one its code trained: dinov2_p14 for DINOv2
    assert points.groupby("algorithm").recipe.agg(set).to_dict() == {
        "dinov2": {"study", "dinov2_p14"}, "mae": {"study"}}
    slopes = scaling_slopes(points, x="params_study_m", n_boot=0).query(
        "fit == 'power_law' and task == 'pathmnist'").set_index(["algorithm", "recipe"])
    assert slopes.loc[("dinov2", "study"), "slope"] == pytest.approx(0.05, rel=1e-6)
    assert slopes.loc[("mae", "study"), "slope"] == pytest.approx(0.02, rel=1e-6)
    assert slopes.loc[("dinov2", "dinov2_p14"), "n_points"] == 6  # p14 and pre-recipe runs
    compared = compare_algorithms(points, x="params_study_m").query("task == 'pathmnist'")
    assert set(zip(compared.recipe_a, compared.recipe_b)) == {
        ("study", "study"), ("dinov2_p14", "study")}
    study = compared[compared.recipe_a == "study"].iloc[0]
    assert study.slope_a == pytest.approx(0.05, rel=1e-6)
    table = subset_table(points)
    assert table.index.names == ["algorithm", "recipe", "size", "data_subset"]
    # points without a recipe column are one recipe
    unlabelled = scaling_slopes(points[points.recipe == "study"].drop(columns="recipe"),
                                x="params_study_m", n_boot=0)
    assert set(unlabelled.recipe) == {"unrecorded"}


def test_benchmark_reports_both_recipes(isolated_outputs):
    study = bench_pretrain("dinov2", "nano", batch_size=2, steps=1, warmup=1, img_size=28,
                           local_size=12, n_local=2, device="cpu")
    variant = bench_pretrain("dinov2", "nano", batch_size=2, steps=1, warmup=1, img_size=28,
                             local_size=12, n_local=2, device="cpu", recipe="dinov2_p14")
    assert (study["recipe"], variant["recipe"]) == RECIPES
    assert study["crops"] == variant["crops"] == "2x28 + 2x12"
    bench = isolated_outputs / "bench"  # the study's file keeps its name; the variant's says so
    assert len(list(bench.glob("pretrain_dinov2_nano_cpu_*.json"))) == 1
    assert len(list(bench.glob("pretrain_dinov2-dinov2_p14_nano_cpu_*.json"))) == 1
    # the study's shapes at ViT-L: 2 x 224 + 8 x 96 at patch 16
    large = method_config(train_config(size="large", img_size=224, n_local=8), 64)
    assert (large.patch_size, large.global_crop_size, large.local_crop_size) == (16, 224, 96)

"""The self-supervised objectives: masks, schedules, losses against direct computations, real
optimisation steps, EMA, exports, FLOPs against torch's counter, per-size recipes."""
from __future__ import annotations

import functools
import math
import random

import pytest
import safetensors.torch
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightly.models.utils import get_2d_sine_cosine_positional_embedding
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from biovfm_lib.models.checkpoints import export_backbone
from biovfm_lib.ssl import MAE, DINOv2, DINOv2Config, MAEConfig, cosine
from biovfm_lib.ssl.dinov2 import dino_loss, ibot_loss, koleo, sinkhorn_knopp
from biovfm_lib.ssl.mae import masked_patch_loss
from biovfm_lib.ssl.masking import batch_seed, ibot_masks, random_token_mask
from biovfm_lib.ssl.vit import require_fused_attention, vit_flops

# lightly's DINOv2 head uses torch's older weight_norm (as DINOv2 does, same state-dict keys).
pytestmark = [pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

# nano ViT (dim 96, depth 4, patch 4) on 32 px global / 16 px local crops: 8x8 and 4x4 grids.
DINO_TINY = {"global_crop_size": 32, "local_crop_size": 16, "n_local_crops": 2,
             "n_prototypes": 128, "head_hidden_dim": 64, "head_bottleneck_dim": 256,
             "drop_path_rate": 0.0, "warmup_frac": 0.0}
MAE_TINY = {"img_size": 32, "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 2,
            "warmup_frac": 0.0}
BATCH = 8




def make_dinov2(**overrides) -> DINOv2:
    """The dinov2_p14 recipe (Sinkhorn-Knopp targets, which several tests below rely on); the
    study recipe's own mechanics are pinned in test_study_recipe.py."""
    torch.manual_seed(0)
    return DINOv2(DINOv2Config.for_size("nano", "dinov2_p14", **{**DINO_TINY, **overrides}),
                  total_steps=100)


def make_mae(**overrides) -> MAE:
    torch.manual_seed(0)
    return MAE(MAEConfig.for_size("nano", **{**MAE_TINY, **overrides}), total_steps=100)


def dino_batch(method: DINOv2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = method.cfg
    samples = [[torch.randn(3, cfg.global_crop_size, cfg.global_crop_size, generator=g)
                for _ in range(2)]
               + [torch.randn(3, cfg.local_crop_size, cfg.local_crop_size, generator=g)
                  for _ in range(cfg.n_local_crops)] for _ in range(BATCH)]
    return method.collate(samples)


def mae_batch(method: MAE, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = method.cfg.img_size
    return method.collate([torch.randn(3, size, size, generator=g) for _ in range(BATCH)])


def train_step(method, opt: torch.optim.Optimizer, batch: dict, step: int) -> torch.Tensor:
    """One iteration as the training loop runs it."""
    for group in opt.param_groups:
        frozen = step < group.get("frozen_steps", 0)
        group["lr"] = 0.0 if frozen else method.lr(step) * group["lr_scale"]
        group["weight_decay"] = method.weight_decay(step) * group["wd_scale"]
    out = method(batch, step)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    if method.clip_grad:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                       method.clip_grad)
    method.before_optimizer_step(step)
    opt.step()
    method.after_optimizer_step(step)
    return out["loss"].detach()


def eval_loss(method, batch: dict) -> float:
    with torch.no_grad():
        return float(method.eval()(batch, 0)["loss"])


def counted_flops(method, batch: dict) -> float:
    """torch's FlopCounterMode over forward + backward, with the CPU fused-attention kernel
    (which it does not count by itself) mapped to its own SDPA formulas."""
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *args, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v),
    }
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        method(batch, 0)["loss"].backward()
    return counter.get_total_flops()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ============================================================================ schedules, masks
def test_cosine_schedule_warmup_then_half_cosine():
    assert cosine(0, 100, 1.0, 0.0, warmup_steps=10, warmup_start=0.2) == pytest.approx(0.2)
    assert cosine(5, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine(10, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine(55, 100, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine(100, 100, 1.0, 0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine(500, 100, 1.0, 0.1) == pytest.approx(0.1)  # held after the end
    # start == end: warm-up then constant (DINOv2's teacher temperature)
    assert [cosine(s, 100, 0.07, 0.07, 30, 0.04) for s in (0, 15, 30, 99)] == \
        pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_ibot_masks_share_ratio_range_and_stratification():
    grid, n, lo, hi = 8, 64, 0.1, 0.5
    rng = random.Random(0)
    ratios = []
    for _ in range(40):
        masks = ibot_masks(16, grid, 0.5, (lo, hi), rng)
        counts = masks.sum(1)
        assert masks.shape == (16, n) and (counts > 0).sum() == 8  # int(16 * 0.5) masked
        ratios += (counts[counts > 0] / n).tolist()
    ratios = torch.tensor(ratios)
    assert ratios.max() <= hi  # blocks never overshoot the drawn target
    # the target is int(n * U(lo, hi)); a crowded grid may end a block short of it
    assert (ratios >= int(n * lo) / n).float().mean() > 0.95
    assert ratios.mean() == pytest.approx((lo + hi) / 2, abs=0.03)  # stratified draws
    assert ratios.min() < lo + 0.05 and ratios.max() > hi - 0.05


def test_masks_are_reproducible_from_seed_and_content():
    images = torch.randn(4, 3, 32, 32)
    assert batch_seed(0, images) == batch_seed(0, images.clone())
    assert batch_seed(0, images) != batch_seed(1, images)
    assert batch_seed(0, images) != batch_seed(0, images + 1)
    a = ibot_masks(16, 8, 0.5, (0.1, 0.5), random.Random(7))
    assert torch.equal(a, ibot_masks(16, 8, 0.5, (0.1, 0.5), random.Random(7)))
    assert not torch.equal(a, ibot_masks(16, 8, 0.5, (0.1, 0.5), random.Random(8)))

    method = make_dinov2()
    b1, b2 = dino_batch(method), dino_batch(method)
    assert torch.equal(b1["masks"], b2["masks"])  # same batch, same masks (any worker)
    assert not torch.equal(b1["masks"], dino_batch(method, seed=1)["masks"])
    assert torch.equal(b1["mask_indices"], b1["masks"].flatten().nonzero().squeeze(1))
    mae = make_mae()
    assert torch.equal(mae_batch(mae)["idx_keep"], mae_batch(mae)["idx_keep"])
    other = MAE(MAEConfig.for_size("nano", **MAE_TINY, mask_seed=1), total_steps=100)
    assert not torch.equal(mae_batch(mae)["idx_keep"], mae_batch(other)["idx_keep"])


def test_random_token_mask_keeps_exactly_a_quarter():
    idx_keep, mask = random_token_mask(6, 64, 0.75, torch.Generator().manual_seed(0))
    assert idx_keep.shape == (6, 16) and (mask.sum(1) == 48).all()
    for row_keep, row_mask in zip(idx_keep, mask, strict=True):
        assert len(set(row_keep.tolist())) == 16 and not row_mask[row_keep].any()


# ============================================================================ DINOv2
def test_sinkhorn_matches_dinov2_and_normalises():
    def official(logits, temp, n_iterations):  # dinov2/loss/dino_clstoken_loss.py, 1 process
        q = torch.exp(logits / temp).t()
        n_samples, k = q.shape[1], q.shape[0]
        q /= q.sum()
        for _ in range(n_iterations):
            q /= q.sum(dim=1, keepdim=True)
            q /= k
            q /= q.sum(dim=0, keepdim=True)
            q /= n_samples
        return (q * n_samples).t()

    # cosine-similarity-sized logits (|logit| <= 1 for a weight-normed head)
    logits = 0.2 * torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    q = sinkhorn_knopp(logits, 0.07, 3)
    torch.testing.assert_close(q, official(logits, 0.07, 3), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(1), torch.ones(32))  # each sample a distribution
    # each prototype tends to B/K of the mass: exactly in the limit, and after DINOv2's 3
    # iterations much closer to it than the plain softmax
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.07, 100).sum(0), torch.full((16,), 2.0))
    spread = (q.sum(0) / 2 - 1).abs().max()
    assert spread < 0.5 * (F.softmax(logits / 0.07, dim=1).sum(0) / 2 - 1).abs().max()
    # logits / temp beyond fp32's exp range: the official form overflows, this one does not
    big = logits * 20
    assert not official(big, 0.04, 3).isfinite().all()
    torch.testing.assert_close(sinkhorn_knopp(big, 0.04, 3).sum(1), torch.ones(32))
    torch.testing.assert_close(sinkhorn_knopp(big, 0.04, 3),  # fp64 still holds these
                               official(big.double(), 0.04, 3).float(), rtol=1e-4, atol=1e-6)


def _sinkhorn_on_rank(rank: int, parts: list, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=len(parts))
    torch.save(sinkhorn_knopp(parts[rank], 0.05, 3), f"{out}{rank}.pt")
    dist.destroy_process_group()


def test_sinkhorn_across_ranks_equals_one_process(tmp_path):
    full = 0.3 * torch.randn(12, 10, generator=torch.Generator().manual_seed(0))
    parts = list(full.split([5, 7]))  # unequal shares, as iBOT's masked tokens are
    mp.spawn(_sinkhorn_on_rank, args=(parts, str(tmp_path / "rdv"), str(tmp_path / "q")),
             nprocs=2)
    gathered = torch.cat([torch.load(tmp_path / f"q{rank}.pt") for rank in range(2)])
    torch.testing.assert_close(gathered, sinkhorn_knopp(full, 0.05, 3))


def test_dino_and_ibot_losses_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    batch, k, n_local, temp = 5, 12, 3, 0.1
    teacher = F.softmax(torch.randn(2, batch, k, generator=g), dim=-1)
    student = torch.randn(2 + n_local, batch, k, generator=g)
    pairs = [(t, s) for t in range(2) for s in range(2 + n_local) if s != t]
    assert len(pairs) == 2 * n_local + 2
    direct = sum(-(teacher[t] * F.log_softmax(student[s] / temp, dim=-1)).sum(-1).mean()
                 for t, s in pairs) / len(pairs)
    global_part, local_part = dino_loss(teacher, student, temp)
    torch.testing.assert_close(global_part + local_part, direct)

    masks = torch.rand(6, 9, generator=g) < 0.4
    masks[0] = False  # an unmasked crop still counts in the denominator
    idx = masks.flatten().nonzero().squeeze(1)
    t_patch = F.softmax(torch.randn(len(idx), k, generator=g), dim=-1)
    s_patch = torch.randn(len(idx), k, generator=g)
    ce = -(t_patch * F.log_softmax(s_patch / temp, dim=-1)).sum(-1)
    image = idx // 9
    direct = sum(ce[image == i].mean() for i in range(6) if masks[i].any()) / 6
    torch.testing.assert_close(ibot_loss(t_patch, s_patch, masks, idx, temp), direct)


def test_koleo_matches_direct_computation():
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    unit = F.normalize(x, dim=-1)
    dist = torch.cdist(unit, unit).fill_diagonal_(float("inf"))
    direct = -torch.log(dist.min(dim=1).values + 1e-8).mean()
    torch.testing.assert_close(koleo(x), direct, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = koleo(x.bfloat16())  # computed in fp32 even under autocast
    assert in_bf16.dtype == torch.float32


def test_dinov2_initial_losses():
    method = make_dinov2()
    batch = dino_batch(method)
    cls = []
    hook = method.student.backbone.vit.norm.register_forward_hook(
        lambda mod, inp, out: cls.append(out[:, 0]))
    with torch.no_grad():
        out = method(batch, 0)
    hook.remove()
    assert all(out[k].isfinite() for k in ("loss", "dino_global_loss", "dino_local_loss",
                                           "ibot_loss", "koleo_loss"))
    # At init (layer scale 1e-5) the teacher sees near-identical features, so Sinkhorn makes its
    # targets uniform and the DINO term is log K plus the spread of the student's logits
    # (~ 1 / (2 * bottleneck * student_temp**2) = 0.2 here); never below log K.
    dino = float(out["dino_global_loss"] + out["dino_local_loss"])
    assert math.log(128) <= dino < math.log(128) + 0.3
    assert float(out["teacher_entropy"]) == pytest.approx(1.0, abs=1e-3)
    global_cls = cls[0]  # the student's first norm call is on the global crops
    direct = 0.1 * (koleo(global_cls[:BATCH]) + koleo(global_cls[BATCH:]))
    torch.testing.assert_close(out["koleo_loss"], direct)
    assert set(method.collapse_stats(out)) == {
        "teacher_entropy", "teacher_marginal_entropy", "student_feature_std"}


def test_student_feature_std_is_reported_after_the_warmup():
    method = make_dinov2(warmup_frac=0.1)  # 10 of 100 steps
    batch = dino_batch(method)
    with torch.no_grad():
        early, late = method(batch, 0), method(batch, 10)
    # input-independent at init (layer scale 1e-5): not a collapse signal yet
    assert float(early["student_feature_std"]) < 1e-3
    assert "student_feature_std" not in method.collapse_stats(early)
    assert set(method.collapse_stats(late)) == {
        "teacher_entropy", "teacher_marginal_entropy", "student_feature_std"}


def test_ibot_loss_only_counts_masked_tokens():
    method = make_dinov2().eval()
    batch = dino_batch(method)
    masks = batch["masks"]
    base = method(batch, 0)

    def perturbed(where: torch.Tensor) -> dict:
        def hook(module, inp, out):
            if out.shape[1] != masks.shape[1] + 1:  # a local-crop call
                return None
            out = out.clone()
            out[:, 1:][where] += torch.randn_like(out[:, 1:][where])
            return out
        handle = method.student.backbone.vit.norm.register_forward_hook(hook)
        with torch.no_grad():
            result = method(batch, 0)
        handle.remove()
        return result

    unmasked = perturbed(~masks)
    for key in ("ibot_loss", "dino_global_loss", "dino_local_loss"):
        torch.testing.assert_close(unmasked[key], base[key].detach())
    assert not torch.allclose(perturbed(masks)["ibot_loss"], base["ibot_loss"])


def test_dinov2_training_steps_lower_loss_and_teacher_is_ema():
    method = make_dinov2(batch_size=1024)
    for t, s in zip(method.teacher.parameters(), method.student.parameters(), strict=True):
        assert torch.equal(t, s)  # they start identical
    batch = dino_batch(method)
    before = eval_loss(method, batch)
    method.train()
    opt = torch.optim.AdamW(method.param_groups(), betas=method.betas)
    student0 = [p.detach().clone() for p in method.student.parameters()]
    for step in range(6):
        teacher_old = [p.detach().clone() for p in method.teacher.parameters()]
        train_step(method, opt, batch, step)
        m = method.momentum(step)
        assert 0.992 <= m < 1
        for t_old, t, s in zip(teacher_old, method.teacher.parameters(),
                               method.student.parameters(), strict=True):
            assert t.grad is None and not t.requires_grad
            torch.testing.assert_close(t, m * t_old + (1 - m) * s.detach())
    assert eval_loss(method, batch) < before - 0.5
    moved = [not torch.equal(a, b) for a, b in zip(student0, method.student.parameters(),
                                                      strict=True)]
    assert sum(moved) > 0.9 * len(moved)


def test_last_layer_frozen_only_in_first_steps():
    method = make_dinov2(freeze_last_layer_frac=0.02, batch_size=1024)  # 2 of 100 steps
    batch = dino_batch(method)
    opt = torch.optim.AdamW(method.param_groups(), betas=method.betas)
    last = list(method.student.dino_head.last_layer.parameters())
    for step in range(3):
        before = [p.detach().clone() for p in last]
        train_step(method, opt, batch, step)
        frozen = step < 2
        assert all(p.grad is not None for p in last)  # lr 0, not a dropped gradient
        assert all(torch.equal(b, p) == frozen for b, p in zip(before, last, strict=True))
    assert method.student.dino_head.layers[0].weight.grad is not None


def test_dinov2_param_groups_layer_decay_and_no_decay():
    method = make_dinov2()
    groups = method.param_groups()
    scale = {id(p): (g["lr_scale"], g["wd_scale"]) for g in groups for p in g["params"]}
    trainable = [p for p in method.student.parameters() if p.requires_grad]
    assert len(scale) == len(trainable) == sum(len(g["params"]) for g in groups)
    assert not any(id(p) in scale for p in method.teacher.parameters())
    vit, depth = method.student.backbone.vit, 4
    lr = [scale[id(vit.patch_embed.proj.weight)][0], scale[id(vit.cls_token)][0]]
    lr += [scale[id(block.attn.qkv.weight)][0] for block in vit.blocks]
    lr += [scale[id(vit.norm.weight)][0], scale[id(method.student.dino_head.layers[0].weight)][0]]
    assert lr == pytest.approx([0.2 * 0.9 ** 5, 0.9 ** 5, 0.9 ** 4, 0.9 ** 3, 0.9 ** 2, 0.9, 1, 1])
    assert lr == sorted(lr)  # increasing from the patch embedding to the last block and heads
    assert scale[id(method.student.backbone.mask_token)][0] == pytest.approx(0.9 ** (depth + 1))
    no_decay = [vit.cls_token, vit.pos_embed, method.student.backbone.mask_token,
                vit.blocks[0].attn.qkv.bias, vit.blocks[0].norm1.weight, vit.blocks[0].ls1.gamma,
                vit.norm.bias]
    decay = [vit.patch_embed.proj.weight, vit.blocks[0].mlp.fc1.weight,
             method.student.dino_head.layers[0].weight,
             method.student.dino_head.last_layer.weight_v]
    assert all(scale[id(p)][1] == 0 for p in no_decay)
    assert all(scale[id(p)][1] == 1 for p in decay)


def test_dinov2_schedules_follow_the_recipe():
    method = DINOv2(DINOv2Config.for_size("nano", "dinov2_p14",
                                          **{**DINO_TINY, "warmup_frac": 0.1}, batch_size=256),
                    total_steps=1000)
    peak = 4e-3 * math.sqrt(256 / 1024)
    assert method.lr(0) == 0 and method.lr(100) == pytest.approx(peak)
    assert method.lr(1000) == pytest.approx(1e-6)
    assert (method.weight_decay(0), method.weight_decay(1000)) == pytest.approx((0.04, 0.2))
    assert (method.momentum(0), method.momentum(1000)) == pytest.approx((0.992, 1.0))
    temps = [method.teacher_temp(s) for s in (0, 150, 300, 999)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])
    assert (method.clip_grad, method.betas) == (3.0, (0.9, 0.999))


@pytest.mark.parametrize("variant", [
    {"centering": "centering"},
    {"ibot_separate_head": True, "ibot_n_prototypes": 64, "ibot_bottleneck_dim": 32},
    {"n_local_crops": 0},
    {"ffn_layer": "swiglufused"},  # the study's ViT-H feed-forward, at smoke size
])
def test_dinov2_variants_train(variant):
    method = make_dinov2(batch_size=1024, **variant)
    batch = dino_batch(method)
    opt = torch.optim.AdamW(method.param_groups(), betas=method.betas)
    for step in range(2):
        assert train_step(method, opt, batch, step).isfinite()
    if variant.get("centering") == "centering":
        assert method.dino_center.value.abs().sum() > 0  # the EMA centre moved
    assert method.flops_per_sample() == pytest.approx(counted_flops(method, batch) / BATCH,
                                                      rel=0.05)


# ============================================================================ MAE
def test_mae_masking_encoder_sees_only_visible_patches():
    method = make_mae()
    batch = mae_batch(method)
    assert batch["idx_keep"].shape == (BATCH, 16) and (batch["mask"].sum(1) == 48).all()
    seen = []
    hook = method.backbone.vit.blocks[0].register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].shape))
    method(batch, 0)
    hook.remove()
    assert seen == [(BATCH, 1 + 16, 96)]


def test_mae_loss_ignores_visible_patches_and_uses_norm_pix_targets():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 8, 8, generator=g)  # 2x2 patches of 4 px
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    pred = torch.randn(2, 4, 48, generator=g)
    loss = masked_patch_loss(pred, images, mask, 4)

    errors = []  # direct: slice each patch, standardise it, compare in (row, col, channel) order
    for b in range(2):
        for i in range(4):
            if mask[b, i]:
                r, c = divmod(i, 2)
                patch = images[b, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].permute(1, 2, 0).flatten()
                target = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
                errors.append((pred[b, i] - target).pow(2).mean())
    torch.testing.assert_close(loss, torch.stack(errors).mean())

    visible_pixels = (~mask).view(2, 1, 2, 2).repeat_interleave(4, 2).repeat_interleave(4, 3)
    noisy_pred = pred.clone()
    noisy_pred[~mask] += torch.randn(int((~mask).sum()), 48, generator=g)
    noisy_images = images + visible_pixels * torch.randn(images.shape, generator=g)
    torch.testing.assert_close(masked_patch_loss(noisy_pred, noisy_images, mask, 4), loss)
    hidden_noise = images + ~visible_pixels * torch.randn(images.shape, generator=g)
    assert not torch.allclose(masked_patch_loss(pred, hidden_noise, mask, 4), loss)


def test_mae_training_steps_lower_loss():
    method = make_mae(batch_size=4096)
    batch = mae_batch(method)
    before = eval_loss(method, batch)
    method.train()
    opt = torch.optim.AdamW(method.param_groups(), betas=method.betas)
    encoder0 = [p.detach().clone() for p in method.backbone.parameters()]
    for step in range(8):
        train_step(method, opt, batch, step)
    assert eval_loss(method, batch) < 0.9 * before
    changed = [not torch.equal(a, b)
               for a, b in zip(encoder0, method.backbone.parameters(), strict=True)]
    assert sum(changed) == sum(p.requires_grad for p in method.backbone.parameters())


def test_mae_recipe_sincos_schedules_and_groups():
    method = MAE(MAEConfig.for_size("nano", **{**MAE_TINY, "warmup_frac": 0.05}, batch_size=512),
                 total_steps=800)
    vit = method.backbone.vit
    for pos, dim in ((vit.pos_embed, 96), (method.decoder.pos_embed, 64)):
        assert not pos.requires_grad
        expected = get_2d_sine_cosine_positional_embedding(dim, 8, cls_token=True)
        torch.testing.assert_close(pos[0], torch.from_numpy(expected).float())
    peak = 1.5e-4 * 512 / 256
    assert method.lr(0) == 0 and method.lr(40) == pytest.approx(peak) and method.lr(800) == 0
    assert method.weight_decay(0) == method.weight_decay(800) == 0.05
    assert (method.betas, method.clip_grad) == ((0.9, 0.95), None)
    groups = method.param_groups()
    assert {g["lr_scale"] for g in groups} == {1.0}  # no layer decay
    wd = {id(p): g["wd_scale"] for g in groups for p in g["params"]}
    assert wd[id(vit.blocks[0].attn.qkv.weight)] == 1 and wd[id(vit.blocks[0].attn.qkv.bias)] == 0
    # MAE's add_weight_decay skips no names: the tokens decay (test_study_pretrain_mechanics)
    assert wd[id(vit.cls_token)] == 1 and wd[id(method.decoder.mask_token)] == 1
    assert id(vit.pos_embed) not in wd and id(method.backbone.mask_token) not in wd


# ============================================================================ both
@pytest.mark.parametrize("make", [make_dinov2, make_mae,
                                  functools.partial(make_dinov2, ffn_layer="swiglufused")])
def test_export_loads_strictly_into_spec(make, tmp_path):
    method = make()
    batch = dino_batch(method) if isinstance(method, DINOv2) else mae_batch(method)
    opt = torch.optim.AdamW(method.param_groups())
    train_step(method, opt, batch, 0)
    exported = method.backbone_for_export()
    if isinstance(method, DINOv2):  # the EMA teacher, which now differs from the student
        assert exported is method.teacher.backbone.vit
        assert not torch.equal(exported.cls_token, method.student.backbone.vit.cls_token)
    weights, _ = export_backbone(exported, method.spec, tmp_path / "backbone")
    rebuilt = method.spec.create()
    rebuilt.load_state_dict(safetensors.torch.load_file(weights), strict=True)
    image = torch.randn(2, 3, method.spec.timm_kwargs["img_size"],
                        method.spec.timm_kwargs["img_size"])
    torch.testing.assert_close(rebuilt.eval()(image), exported.eval()(image))


@pytest.mark.parametrize("make", [make_dinov2, make_mae])
def test_bf16_autocast_forward_backward(make):
    method = make()
    batch = dino_batch(method) if isinstance(method, DINOv2) else mae_batch(method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(batch, 0)
    assert out["loss"].dtype == torch.float32 and out["loss"].isfinite()
    out["loss"].backward()
    assert all(p.grad.isfinite().all() for g in method.param_groups() for p in g["params"]
               if p.grad is not None)


@pytest.mark.parametrize("make", [make_dinov2, make_mae])
def test_attention_is_fused(make, monkeypatch):
    method = make()
    batch = dino_batch(method) if isinstance(method, DINOv2) else mae_batch(method)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    method(batch, 0)
    # DINOv2: teacher + student global + student local passes; MAE: encoder + decoder
    assert len(calls) == (3 * 4 if isinstance(method, DINOv2) else 4 + 2)
    method.backbone_for_export().blocks[0].attn.fused_attn = False
    with pytest.raises(RuntimeError, match="not fused"):
        require_fused_attention(method)


@pytest.mark.parametrize("make", [make_dinov2, make_mae])
def test_timm_grad_checkpointing_switch_takes_effect(make, monkeypatch):
    method = make()
    batch = dino_batch(method) if isinstance(method, DINOv2) else mae_batch(method)
    method(batch, 0)["loss"].backward()
    reference = [p.grad.clone() for p in method.parameters() if p.grad is not None]
    calls = []
    checkpoint_seq = timm.models._manipulate.checkpoint_seq
    monkeypatch.setattr(timm.models._manipulate, "checkpoint_seq",
                        lambda *a, **kw: calls.append(1) or checkpoint_seq(*a, **kw))
    method.zero_grad()
    for vit in (m for m in method.modules() if isinstance(m, timm.models.VisionTransformer)):
        vit.set_grad_checkpointing(True)  # what the training loop calls
    method(batch, 0)["loss"].backward()
    assert calls  # the trainable ViT's blocks ran checkpointed
    grads = [p.grad for p in method.parameters() if p.grad is not None]
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("make", [make_dinov2, make_mae])
def test_flops_per_sample_matches_flop_counter(make):
    """Measured agreement: within 1% for both (the analytic count leaves out the input-grad
    matmul of the patch embedding, which is never computed, and counts attention's backward
    as 2x forward where torch counts 2.5x)."""
    method = make()
    batch = dino_batch(method) if isinstance(method, DINOv2) else mae_batch(method)
    measured = counted_flops(method, batch) / BATCH
    assert method.flops_per_sample() == pytest.approx(measured, rel=0.05)


def test_flops_scale_with_crops_and_size():
    with torch.device("meta"):
        per_crops = [DINOv2(DINOv2Config.for_size("large", "dinov2_p14", n_local_crops=n), 100)
                     for n in (2, 3, 4)]
        f2, f3, f4 = (m.flops_per_sample() for m in per_crops)
        assert f4 - f3 == pytest.approx(f3 - f2) and f3 > f2  # affine in the local-crop count
        local_tokens = (98 // 14) ** 2 + 1
        vit = per_crops[0].student.backbone.vit
        head = per_crops[0].student.dino_head
        head_flops = 2 * (n_params(head) - head.last_layer.weight_g.numel())  # biases ~ 0
        per_crop = vit_flops(vit, local_tokens, local_tokens - 1) + head_flops
        assert f3 - f2 == pytest.approx(3 * per_crop, rel=1e-3)
        for recipe in ("study", "dinov2_p14"):
            dino = [DINOv2(DINOv2Config.for_size(s, recipe), 100).flops_per_sample()
                    for s in ("small", "base", "large", "huge")]
            assert dino == sorted(dino)
        for size in ("base", "large", "huge"):
            mae = MAE(MAEConfig.for_size(size), 100)
            n_patches = mae.backbone.vit.patch_embed.num_patches
            visible = int(n_patches * 0.25) + 1
            # 6 x params x tokens over the blocks: attention and embeddings add a few percent
            rule = 6 * (n_params(mae.backbone.vit.blocks) * visible
                        + n_params(mae.decoder.blocks) * (n_patches + 1))
            assert 1.0 < mae.flops_per_sample() / rule < 1.15


def test_for_size_builds_official_architectures():
    def timm_count(name, **kw):
        with torch.device("meta"):
            return n_params(timm.create_model(name, num_classes=0, **kw))

    with torch.device("meta"):
        for size in ("small", "base", "large"):
            method = DINOv2(DINOv2Config.for_size(size, "dinov2_p14"), 100)
            assert n_params(method.backbone_for_export()) == \
                timm_count(f"vit_{size}_patch14_dinov2", img_size=224)
        # ViT-H/14 plus DINOv2's layer scale (two gammas per block), with its MLP swapped for
        # SwiGLUFFNFused (vitg14.yaml's, and the study builder's for ViT-H): w12 and w3 of
        # hidden width 3416 instead of fc1 and fc2 of 5120
        swiglu = 1280 * 2 * 3416 + 2 * 3416 + 3416 * 1280 + 1280
        mlp = 1280 * 5120 + 5120 + 5120 * 1280 + 1280
        for recipe in ("study", "dinov2_p14"):
            huge = DINOv2(DINOv2Config.for_size("huge", recipe), 100)
            assert n_params(huge.backbone_for_export()) == \
                timm_count("vit_huge_patch14_224") + 2 * 32 * 1280 + 32 * (swiglu - mlp)
        with_mlp = DINOv2(DINOv2Config.for_size("huge", ffn_layer="mlp"), 100)
        assert n_params(with_mlp.backbone_for_export()) == \
            timm_count("vit_huge_patch14_224") + 2 * 32 * 1280
        assert huge.cfg.ibot_separate_head and huge.cfg.n_prototypes == 131072
        assert huge.cfg.layer_decay == 1.0 and huge.cfg.drop_path_rate == 0.4
        large = DINOv2(DINOv2Config.for_size("large", "dinov2_p14"), 100)
        assert {b.drop_path1.drop_prob for b in large.student.backbone.vit.blocks} == {0.3}
        assert all(isinstance(b.drop_path1, torch.nn.Identity)
                   for b in large.teacher.backbone.vit.blocks)
        for size, name in (("base", "vit_base_patch16_224"), ("large", "vit_large_patch16_224"),
                           ("huge", "vit_huge_patch14_224")):
            method = MAE(MAEConfig.for_size(size), 100)
            assert n_params(method.backbone_for_export()) == timm_count(name)
            assert method.spec.timm_kwargs["patch_size"] == (14 if size == "huge" else 16)

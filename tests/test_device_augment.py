"""DINOv2's batched photometric augmentation against torchvision's per-image functional ops
with the same drawn parameters, its probabilities, its determinism, and a real training run
that uses it."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from biovfm_lib.data.device_augment import (
    HUE,
    DINOv2Photometric,
    adjust_hue,
    color_jitter,
    draw_params,
    gaussian_blur,
    grayscale,
    solarize,
)
from biovfm_lib.data.ssl_transforms import (
    DINOV2_CODE_BLUR_P,
    DINOV2_RECIPE_BLUR_P,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DINOv2Augmentation,
)
from biovfm_lib.params import PretrainParams
from biovfm_lib.train.config import resolve_config, run_name
from biovfm_lib.train.distributed import DistEnv
from biovfm_lib.train.loop import device_augmentation
from biovfm_lib.train.report import read_log

JITTER_OPS = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
DTYPES = [torch.uint8, torch.float32]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n: int, size: int = 20, dtype: torch.dtype = torch.uint8, seed: int = 0
           ) -> torch.Tensor:
    """Colourful noise over smooth gradients: every op changes it, clipping happens."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 255, size).expand(size, size)
    base = torch.stack([ramp, ramp.T, ramp.flip(1)]) * torch.rand(n, 3, 1, 1, generator=g)
    x = (base + 90 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
    return F.to_dtype(x, dtype, scale=True)


def drawn(n: int, blur_p: float = 0.5, solarize_p: float = 0.5, seed: int = 1):
    return draw_params(n, torch.Generator().manual_seed(seed), blur_p, solarize_p)


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Float: within rounding of the last bit; uint8: equal (an off-by-one allowed on one
    value in 10^4, for a sum rounded in another order landing on the other side of .5)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if out.is_floating_point():
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    else:
        diff = (out.int() - ref.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-4


def torchvision_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor
                       ) -> torch.Tensor:
    for op in order.tolist():
        x = JITTER_OPS[op](x, float(factors[op]))
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_colour_jitter_is_torchvisions_per_sample(dtype):
    x, p = images(48, dtype=dtype), drawn(48)
    assert p.jitter.any() and not p.jitter.all()
    out = color_jitter(x, p.factors, p.order, p.jitter)
    ref = torch.stack([torchvision_jitter(x[i], p.factors[i], p.order[i]) if p.jitter[i]
                       else x[i] for i in range(len(x))])
    assert_matches(out, ref)
    assert torch.equal(out[~p.jitter], x[~p.jitter])  # skipped samples untouched, bit for bit


@pytest.mark.parametrize("dtype", DTYPES)
def test_hue_shift_is_torchvisions_over_the_full_range(dtype):
    x = images(11, dtype=dtype)
    factors = torch.linspace(-0.5, 0.5, 11)
    ref = torch.stack([F.adjust_hue(x[i], float(f)) for i, f in enumerate(factors)])
    assert_matches(adjust_hue(x, factors), ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grey_blur_and_solarise_are_torchvisions_per_sample(dtype):
    x, p = images(32, dtype=dtype), drawn(32)
    sigma = p.sigma.clone()
    sigma[:2] = torch.tensor([0.1, 2.0])  # the ends of the recipe's range
    grey = torch.stack([F.rgb_to_grayscale(x[i], 3) if p.grey[i] else x[i] for i in range(32)])
    assert_matches(grayscale(x, p.grey), grey)
    blurred = torch.stack([F.gaussian_blur(x[i], [9, 9], [float(sigma[i])] * 2) if p.blur[i]
                           else x[i] for i in range(32)])
    assert_matches(gaussian_blur(x, sigma, p.blur), blurred)
    threshold = 128 if dtype == torch.uint8 else 128 / 255
    solarised = torch.stack([F.solarize(x[i], threshold) if p.solarize[i] else x[i]
                             for i in range(32)])
    assert_matches(solarize(x, threshold, p.solarize), solarised)


@pytest.mark.parametrize("blur_p", [DINOV2_RECIPE_BLUR_P, DINOV2_CODE_BLUR_P])
def test_dinov2_photometric_is_the_cpu_recipe_with_the_same_draws(blur_p):
    """Each crop type, through torchvision's functional ops one image at a time in the CPU
    recipe's order (jitter, grey, blur, solarise on global 2, to float, normalise)."""
    aug = DINOv2Photometric(seed=3, blur_p=blur_p)
    groups = [images(16, 28, seed=1), images(16, 28, seed=2), images(32, 12, seed=3)]
    params = aug.draw([16, 16, 32], step=5, device=torch.device("cpu"))
    out = aug.apply(groups, params)
    for x, p, y in zip(groups, params, out, strict=True):
        ref = []
        for i in range(len(x)):
            img = torchvision_jitter(x[i], p.factors[i], p.order[i]) if p.jitter[i] else x[i]
            img = F.rgb_to_grayscale(img, 3) if p.grey[i] else img
            img = F.gaussian_blur(img, [9, 9], [float(p.sigma[i])] * 2) if p.blur[i] else img
            img = F.solarize(img, 128) if p.solarize[i] else img
            ref.append(F.normalize(F.to_dtype(img, torch.float32, scale=True),
                                   list(IMAGENET_MEAN), list(IMAGENET_STD)))
        # 1/255 over std: an off-by-one uint8 value (a rounding tie, see assert_matches)
        torch.testing.assert_close(y, torch.stack(ref), rtol=0, atol=1.01 / 255 / 0.224)
    assert not params[0].solarize.any() and not params[2].solarize.any()  # global 2 only


def test_probabilities_and_ranges_are_the_recipes():
    """Over 20 000 draws each coin's frequency lies within 5 binomial standard deviations of
    its probability (a coin with p swapped for 1 - p, or for another crop's p, is 10+ off)."""
    n = 20_000
    aug = DINOv2Photometric(seed=0)
    params = aug.draw([n, n, n], step=0, device=torch.device("cpu"))
    for p, blur_p, solarize_p in zip(params, DINOV2_RECIPE_BLUR_P, (0.0, 0.2, 0.0),
                                     strict=True):
        for flags, prob in [(p.jitter, 0.8), (p.grey, 0.2), (p.blur, blur_p),
                            (p.solarize, solarize_p)]:
            tol = 5 * math.sqrt(prob * (1 - prob) / n)
            assert abs(flags.float().mean().item() - prob) <= tol, (prob, flags.float().mean())
        low, high = torch.tensor([0.6, 0.6, 0.8, -0.1]), torch.tensor([1.4, 1.4, 1.2, 0.1])
        assert ((p.factors >= low) & (p.factors <= high)).all()
        assert torch.allclose(p.factors.mean(0), (low + high) / 2, atol=0.01)
        assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0
        assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(n, 4))
        # all 24 orders, uniformly: each within 5 sd of n / 24
        _, counts = torch.unique(p.order, dim=0, return_counts=True)
        assert len(counts) == 24
        assert (counts - n / 24).abs().max() <= 5 * math.sqrt(n / 24 * 23 / 24)
        hue_at = (p.order == HUE).int().argmax(1)
        assert torch.bincount(hue_at, minlength=4).min() > n / 4 * 0.9


def test_output_greyscale_fraction_is_the_recipes():
    """End to end: about 20 % of each crop type's outputs come back grey (R = G = B), which a
    mask wired to the wrong samples or crops would not give."""
    n = 2000
    groups = [images(n, 8, seed=s) for s in range(3)]
    aug = DINOv2Photometric(seed=1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for out in aug(groups, step=0):
        grey = ((out[:, 0] == out[:, 1]) & (out[:, 1] == out[:, 2])).flatten(1).all(1)
        assert abs(grey.float().mean().item() - 0.2) <= 5 * math.sqrt(0.2 * 0.8 / n)


def collated(n: int = 4, n_local: int = 3) -> dict[str, torch.Tensor]:
    return {"global_crops": images(2 * n, 28, seed=7),
            "local_crops": images(n_local * n, 12, seed=8),
            "masks": torch.zeros(2 * n, 7, 7, dtype=torch.bool)}


def test_same_seed_step_and_rank_replay_and_others_differ():
    batch = collated()
    out = DINOv2Photometric(seed=4, rank=1).on_batch(batch, step=10)
    again = DINOv2Photometric(seed=4, rank=1).on_batch(batch, step=10)
    assert all(torch.equal(out[k], again[k]) for k in out)
    for other in [DINOv2Photometric(seed=4, rank=1).on_batch(batch, step=11),
                  DINOv2Photometric(seed=4, rank=0).on_batch(batch, step=10),
                  DINOv2Photometric(seed=5, rank=1).on_batch(batch, step=10)]:
        assert not torch.equal(out["global_crops"], other["global_crops"])
        assert not torch.equal(out["local_crops"], other["local_crops"])


def test_crop_lists_and_batches_keep_their_shapes():
    aug = DINOv2Photometric(seed=0)
    crops = [images(4, 28), images(4, 28), *(images(4, 12, seed=s) for s in range(3))]
    out = aug(crops, step=0)
    assert [o.shape for o in out] == [c.shape for c in crops]
    assert all(o.dtype == torch.float32 for o in out)
    assert all(o.min() < -1 and o.max() > 1 for o in out)  # normalised, not [0, 1]
    assert [o.shape for o in aug(crops[:2], step=0)] == [c.shape for c in crops[:2]]

    batch = collated(n_local=0)
    batch["local_crops"] = torch.zeros(0, 3, 12, 12, dtype=torch.uint8)
    out = aug.on_batch(batch, step=0)
    assert out.keys() == batch.keys() and out["local_crops"].shape == (0, 3, 12, 12)
    assert out["global_crops"].dtype == torch.float32 and out["masks"] is batch["masks"]


def test_geometric_only_views_are_uint8_crops():
    image = images(1, 40)[0]
    views = DINOv2Augmentation(28, 12, 3, photometric=False)(image)
    assert [v.shape for v in views] == [(3, 28, 28)] * 2 + [(3, 12, 12)] * 3
    assert all(v.dtype == torch.uint8 for v in views)


def test_auto_puts_the_augmentation_on_a_gpu_only(tmp_path):
    base = {"data": "synthetic", "data_root": str(tmp_path / "d"), "data_size": 28,
            "tasks": ["breastmnist"], "synthetic_scale": 0.01, "out_root": str(tmp_path)}

    def config(**kw):
        return resolve_config(PretrainParams.validate_mapping({**base, **kw}))

    cpu, gpu = DistEnv(0, 0, 1, torch.device("cpu")), DistEnv(0, 0, 1, torch.device("cuda"))
    assert device_augmentation(config(), cpu) is None
    assert isinstance(device_augmentation(config(), gpu), DINOv2Photometric)
    assert isinstance(device_augmentation(config(augment_on="device"), cpu), DINOv2Photometric)
    assert device_augmentation(config(augment_on="loader"), gpu) is None
    assert device_augmentation(config(algorithm="mae", augment_on="device"), gpu) is None
    # another random stream, so another run
    p = PretrainParams.validate_mapping(base)
    assert run_name(p) != run_name(p.model_copy(update={"augment_on": "device"}))


def test_a_run_trains_with_the_augmentation_on_the_device(tmp_path, monkeypatch):
    """A few real DINOv2 steps in-process (no torchrun), the loader handing over uint8 crops."""
    from biovfm_lib.train.launch import prepare
    from biovfm_lib.train.loop import train

    seen = []
    original = DINOv2Photometric.on_batch

    def spy(self, batch, step):
        seen.append((step, batch["global_crops"].dtype))
        return original(self, batch, step)

    monkeypatch.setattr(DINOv2Photometric, "on_batch", spy)
    p = PretrainParams.validate_mapping({
        "data": "synthetic", "data_root": str(tmp_path / "d"), "data_size": 28,
        "tasks": ["breastmnist", "retinamnist"], "synthetic_scale": 0.01, "encoder": "nano",
        "patch_size": 4, "img_size": 28, "local_size": 12, "n_local": 2, "epochs": 2,
        "max_steps": 3, "batch_size": 8, "num_workers": 0, "log_every": 1, "checkpoint_every": 10,
        "augment_on": "device", "out_root": str(tmp_path / "runs")})
    cfg, _ = prepare(p)
    export = train(cfg)
    assert export is not None and export.exists()
    assert seen == [(0, torch.uint8), (1, torch.uint8), (2, torch.uint8)]
    log = read_log(cfg.dir / "log.jsonl")
    assert log.step.tolist() == [1, 2, 3] and log.loss.notna().all()


def test_augment_benchmark_records_both_ways(isolated_outputs):
    from biovfm_lib.train.bench import bench_augment

    result = bench_augment(28, 12, 2, n_images=4, batch_size=4, repeats=1, device="cpu")
    (path,) = (isolated_outputs / "bench").glob("augment_dinov2_28px_cpu_*.json")
    assert json.loads(path.read_text())["device_photometric_images_per_s"] == \
        result["device_photometric_images_per_s"] > 0
    assert result["cpu_full_images_per_s_per_core"] > 0
    assert result["cpu_crops_only_images_per_s_per_core"] > 0

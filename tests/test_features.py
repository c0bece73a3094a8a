import numpy as np
import torch
import torch.nn.functional as F

from biovfm_lib.data.transforms import AugmentedImages, to_model_input
from biovfm_lib.models.factory import create_vit, vit_spec
from biovfm_lib.models.sizes import VIT_SIZES
from biovfm_lib.probe.features import FeatureCache, encode, extract_features


def test_model_input_repeats_grey_and_normalises():
    grey = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8)
    x = to_model_input(grey)
    assert x.shape == (1, 3, 2, 2)
    assert torch.equal(x[0, 0], torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
    assert torch.equal(x[0, 0], x[0, 2])
    rgb = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    rgb[..., 1] = 255
    x = to_model_input(rgb)
    assert x.shape == (2, 3, 4, 4) and x[:, 1].eq(1).all() and x[:, 0].eq(-1).all()


def test_augmentation_keeps_shape_and_dtype():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    img, i = AugmentedImages(imgs, 28)[2]
    assert img.shape == (28, 28, 3) and img.dtype == torch.uint8 and i == 2
    grey = AugmentedImages(imgs[..., 0], 28)[0][0]
    assert grey.shape == (28, 28)


def test_mean_patch_features_match_a_hand_computation():
    torch.manual_seed(0)
    model = create_vit("nano", img_size=28, reg_tokens=2).eval()
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        t = model.blocks(t)
        patches = t[:, model.num_prefix_tokens:]  # drop CLS and register tokens
        assert patches.shape[1] == (28 // 4) ** 2
        expected = F.layer_norm(patches.mean(1), (patches.shape[-1],), eps=1e-6)  # the study's
        cls = model.norm(t)[:, 0]
    assert torch.allclose(encode(model, x), expected, atol=1e-5)
    assert torch.allclose(encode(model, x, "cls"), cls, atol=1e-5)


def test_extract_features_is_batch_size_invariant():
    torch.manual_seed(0)
    model = create_vit("nano", img_size=28).eval()
    imgs = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    a = extract_features(model, imgs, torch.device("cpu"), batch_size=3)
    b = extract_features(model, imgs, torch.device("cpu"), batch_size=10)
    assert a.shape == (10, VIT_SIZES["nano"].embed_dim) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_cache_roundtrip_and_keys(tmp_path):
    cache = FeatureCache(tmp_path)
    k1 = cache.key(encoder={"sha256": "a"}, split="train")
    assert k1 == cache.key(split="train", encoder={"sha256": "a"})  # order-free
    assert k1 != cache.key(encoder={"sha256": "b"}, split="train")
    assert cache.get(k1) is None
    feats = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache.put(k1, feats, note="x")
    np.testing.assert_array_equal(cache.get(k1), feats)


def test_size_registry_matches_the_study():
    assert vit_spec("huge").timm_kwargs["patch_size"] == 14
    with torch.device("meta"):  # count without allocating 2.5 GB
        n = sum(p.numel() for p in vit_spec("huge").create().parameters())
    assert 625e6 < n < 640e6  # ViT-H/14, ~630M parameters

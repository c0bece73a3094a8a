"""Per-block features: one forward pass, today's last-block features, DINOv2's last4_avgpool."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biovfm_lib.data.medmnist import load_task, prepare_tasks
from biovfm_lib.data.transforms import to_model_input
from biovfm_lib.models.factory import create_vit
from biovfm_lib.params import ProbeParams
from biovfm_lib.probe import layers as layers_module
from biovfm_lib.probe.features import (
    FeatureCache,
    encode,
    encode_layers,
    extract_features,
    extract_layer_features,
)
from biovfm_lib.probe.layers import layer_features, probed_layers
from biovfm_lib.probe.pipeline import build_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_vit("nano", img_size=28, reg_tokens=2).eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 28, 28, 3), dtype=np.uint8)


@torch.no_grad()
def todays_features(model, images, kind):
    """The extractor as it was before blocks were named (biovfm_lib 6d3dde9), as the oracle."""
    x = to_model_input(torch.from_numpy(images))
    if kind == "cls":
        return model.forward_features(x)[:, 0].float().numpy()
    (last,) = model.forward_intermediates(x, indices=1, norm=False, output_fmt="NLC",
                                          intermediates_only=True)
    pooled = last.float().mean(dim=1)
    return F.layer_norm(pooled, pooled.shape[-1:], eps=1e-6).numpy()


@pytest.mark.parametrize("kind", ["mean_patch", "cls"])
def test_the_last_block_is_todays_features_exactly(model, images, kind):
    blocks = extract_layer_features(model, images, torch.device("cpu"), [0, 2, 3], kind,
                                    batch_size=10)
    np.testing.assert_array_equal(blocks[3], todays_features(model, images, kind))
    np.testing.assert_array_equal(extract_features(model, images, torch.device("cpu"), kind,
                                                   batch_size=10), blocks[3])


@torch.no_grad()
def test_an_earlier_block_pools_that_blocks_own_output(model, images):
    x = to_model_input(torch.from_numpy(images))
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for block in model.blocks[:2]:
        tokens = block(tokens)
    patches = tokens[:, model.num_prefix_tokens:]
    expected = F.layer_norm(patches.mean(1), (patches.shape[-1],), eps=1e-6)
    got = encode_layers(model, x, [1, 3])
    torch.testing.assert_close(got[1], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(encode_layers(model, x, [1], "cls")[1],
                               model.norm(tokens)[:, 0], atol=1e-5, rtol=0)


def test_several_blocks_cost_one_forward_pass(model, images):
    calls = []
    hook = model.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        extract_layer_features(model, images, torch.device("cpu"), [0, 1, 2, 3], batch_size=5)
    finally:
        hook.remove()
    assert len(calls) == 2  # one per batch, not one per block


@torch.no_grad()
def test_last4_avgpool_is_dinov2s_linear_eval_feature(model, images):
    """dinov2/eval/linear.py: the CLS tokens of get_intermediate_layers(n=4, norm=True) and
    the mean of the last one's patch tokens, concatenated."""
    x = to_model_input(torch.from_numpy(images))
    tokens, outputs = model.norm_pre(model._pos_embed(model.patch_embed(x))), []
    for block in model.blocks:
        tokens = block(tokens)
        outputs.append(model.norm(tokens))
    cls = [out[:, 0] for out in outputs[-4:]]
    patches = outputs[-1][:, model.num_prefix_tokens:]  # no CLS, no registers
    expected = torch.cat([*cls, patches.mean(1)], dim=-1)
    got = encode_layers(model, x, [3], "last4_avgpool")[3]
    assert got.shape == (10, 5 * 96)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(encode(model, x, "last4_avgpool"), got, atol=0, rtol=0)
    with pytest.raises(ValueError, match="4 blocks"):
        encode_layers(model, x, [2], "last4_avgpool")
    with pytest.raises(ValueError, match="not both"):
        encode_layers(model, x, [0, -1])


def test_probed_layers():
    assert probed_layers("last", 4) == [3]
    assert probed_layers("all", 4) == [0, 1, 2, 3]
    assert probed_layers([2, 0], 4) == [0, 2, 3]  # the last is always probed
    with pytest.raises(ValueError, match=r"layers: block\(s\) \[4\] do not exist"):
        probed_layers([1, 4], 4)


def test_cached_layers_key_the_block_and_keep_todays_key_for_the_last(tmp_path, monkeypatch):
    root = prepare_tasks(tmp_path / "data", 28, ["breastmnist"], True, 0.02, 0, False)
    data = load_task("breastmnist", root, 28)
    p = ProbeParams.validate_mapping({"encoder": "nano", "size": 28, "device": "cpu",
                                      "layers": "all"})
    enc, identity = build_encoder(p)
    cache = FeatureCache(tmp_path / "cache")
    got = layer_features(enc, identity, data, "test", p, torch.device("cpu"), cache, [1, 3])
    np.testing.assert_array_equal(got[3], extract_features(enc.model, data.images["test"],
                                                           torch.device("cpu")))
    sidecars = sorted(f.read_text() for f in (tmp_path / "cache").glob("*.json"))
    assert len(sidecars) == 2 and sum('"layer": 1' in s for s in sidecars) == 1
    today = cache.key(encoder=identity, data=layers_module.file_identity(data.file),
                      flag="breastmnist", split="test", size=28, features="mean_patch",
                      precision="fp32")
    assert cache.path(today).is_file()  # the main probe's entry, under its old key

    def no_extraction(*args, **kwargs):
        raise AssertionError("served from the cache, nothing to extract")

    monkeypatch.setattr(layers_module, "extract_layer_features", no_extraction)
    again = layer_features(enc, identity, data, "test", p, torch.device("cpu"), cache, [1, 3])
    np.testing.assert_array_equal(again[1], got[1])

"""The ViT factory's feed-forwards: the MLP, and DINOv2's SwiGLU (the study's DINOv2 ViT-H)."""
import pytest
import timm
import torch
import torch.nn.functional as F

from biovfm_lib.models.factory import mlp_ratio, swiglu_hidden, vit_spec
from biovfm_lib.models.sizes import VIT_SIZES


@pytest.mark.parametrize(("embed_dim", "hidden"), [(1280, 3416), (1536, 4096), (96, 256)])
def test_swiglu_width_is_dinov2s_rounding(embed_dim, hidden):
    """SwiGLUFFNFused: (int(4d * 2 / 3) + 7) // 8 * 8; 4096 is DINOv2 ViT-g's published width."""
    assert swiglu_hidden(embed_dim) == hidden


@pytest.mark.parametrize("hidden", [6832, 8192, 1536, 383])
def test_mlp_ratio_builds_exactly_that_width(hidden):
    ratio = mlp_ratio(hidden, 1280)
    assert int(1280 * ratio) == hidden


def test_the_swiglu_feed_forward_is_silu_gate_times_value_then_w3():
    torch.manual_seed(0)
    spec = vit_spec("nano", ffn="swiglufused", img_size=28)
    vit = spec.create().eval()
    mlp = vit.blocks[0].mlp
    dim, hidden = VIT_SIZES["nano"].embed_dim, swiglu_hidden(VIT_SIZES["nano"].embed_dim)
    assert mlp.fc1.weight.shape == (2 * hidden, dim) and mlp.fc2.weight.shape == (dim, hidden)
    x = torch.randn(3, 5, dim)
    w1, w2 = mlp.fc1.weight.chunk(2)  # DINOv2's w12: the gate's rows first
    b1, b2 = mlp.fc1.bias.chunk(2)
    by_hand = F.linear(F.silu(F.linear(x, w1, b1)) * F.linear(x, w2, b2), mlp.fc2.weight,
                       mlp.fc2.bias)
    torch.testing.assert_close(mlp(x), by_hand)
    # the record alone rebuilds it with plain timm, weights and all
    twin = timm.create_model(spec.timm_name, **spec.timm_kwargs).eval()
    twin.load_state_dict(vit.state_dict())
    images = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(twin(images), vit(images))
    assert spec.timm_kwargs["init_values"] is None  # no layer scale unless asked for


def test_the_mlp_spec_is_unchanged_and_a_bad_feed_forward_is_named():
    assert vit_spec("base") == vit_spec("base", ffn="mlp")
    assert vit_spec("base").timm_name == "vit_base_patch16_224"
    with pytest.raises(ValueError, match="feed-forward 'glu'"):
        vit_spec("base", ffn="glu")

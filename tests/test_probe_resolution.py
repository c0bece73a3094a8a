"""Probing at another resolution than the encoder's input: MedMNIST+'s padding, or resizing."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from biovfm_lib import runs
from biovfm_lib.data.medmnist import load_task
from biovfm_lib.data.transforms import fit_to_input, to_model_input
from biovfm_lib.params import ParamError, ProbeParams
from biovfm_lib.probe.features import extract_features
from biovfm_lib.probe.pipeline import build_encoder, run_probe


def medmnist_plus_input(images: np.ndarray, side: int = 224) -> torch.Tensor:
    """What MedMNIST+'s feature extraction feeds a ViT: ToTensor, Normalize, then Pad (fill 0)
    to 224 with the left / top margin ``total // 2`` (as_rgb images, mean = std = 0.5 here)."""
    total = max(0, side - images.shape[1])
    pad = (total // 2, total // 2, total - total // 2, total - total // 2)
    chain = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3),
                       T.Pad(pad, fill=0, padding_mode="constant")])
    return torch.stack([chain(Image.fromarray(img).convert("RGB")) for img in images])


@pytest.mark.parametrize("shape", [(3, 28, 28), (2, 64, 64, 3), (2, 128, 128)])
def test_padding_is_medmnist_plus_padding_after_normalisation(shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ours = to_model_input(torch.from_numpy(images), 224, "pad")
    torch.testing.assert_close(ours, medmnist_plus_input(images), rtol=0, atol=1e-6)


def test_an_odd_margin_puts_the_extra_pixel_right_and_below():
    x = torch.ones(1, 3, 5, 5)
    out = fit_to_input(x, 8, "pad")
    rows, cols = torch.nonzero(out[0, 0], as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (
        1, 5, 1, 5)
    assert out.sum().item() == 3 * 25  # the border is the normalised value 0 (mid-grey)


def test_resize_is_antialiased_bilinear_both_ways():
    stripes = torch.zeros(1, 3, 64, 64)
    stripes[..., ::4] = 1.0  # every 4th column: plain bilinear at 1/4 would see none of them
    small = fit_to_input(stripes, 16, "resize")
    assert small.shape == (1, 3, 16, 16)
    inner = small[..., 1:-1]  # away from the edges, every output averages one stripe period
    torch.testing.assert_close(inner, torch.full_like(inner, 0.25), rtol=0, atol=1e-5)
    big = fit_to_input(torch.arange(4.0).view(1, 1, 2, 2).expand(1, 3, 2, 2), 4, "resize")
    assert big[0, 0, 0, 0].item() == 0.0 and big[0, 0, -1, -1].item() == 3.0
    assert fit_to_input(stripes, 64, "resize") is stripes  # its own size: untouched


def test_padding_cannot_shrink(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        fit_to_input(torch.zeros(1, 3, 64, 64), 32, "pad")
    with pytest.raises(ParamError, match="input_size: padding cannot shrink a 224 px image"):
        ProbeParams.validate_mapping({"size": 224, "input_size": 64})
    assert ProbeParams.validate_mapping({"size": 224, "input_size": 64,
                                         "input_fit": "resize"}).encoder_input == 64


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


def params(data_root, cache, **kw):
    base = {"data_root": str(data_root), "data": "synthetic", "size": 28, "encoder": "nano",
            "tasks": ["breastmnist"], "epochs": 3, "lrs": [0.01], "bootstrap": 0,
            "device": "cpu", "cache_dir": str(cache), "protocol": "cached"}
    return ProbeParams.validate_mapping({**base, **kw})


def probe(p):
    return run_probe(p, runs.open_run("03_probe", p)).results


def test_the_default_is_the_native_probe_and_its_cache(data_root, tmp_path):
    """input_size equal to the file's size is the study's probe: same rows, same cache."""
    cache = tmp_path / "cache"
    native = probe(params(data_root, cache))
    keys = sorted(f.name for f in cache.glob("*.npy"))
    same = probe(params(data_root, cache, input_size=28, input_fit="resize"))
    assert sorted(f.name for f in cache.glob("*.npy")) == keys
    assert native.value.tolist() == same.value.tolist()
    assert native.img_size.eq(28).all() and native.input_size.eq(28).all()
    assert native.input_fit.eq("none").all()


def test_a_padded_probe_encodes_padded_images(data_root, tmp_path):
    cache = tmp_path / "cache"
    p = params(data_root, cache, input_size=56, input_fit="pad")
    rows = probe(p)
    assert rows.img_size.eq(28).all() and rows.input_size.eq(56).all()
    assert rows.input_fit.eq("pad").all()
    enc, _ = build_encoder(p)
    assert enc.model.patch_embed.img_size == (56, 56)  # the encoder is built at its input
    data = load_task("breastmnist", data_root, 28)
    padded = extract_features(enc.model, data.images["test"], torch.device("cpu"),
                              input_size=56, input_fit="pad")
    np.testing.assert_allclose(padded, direct_on_padded(enc, data, 56), rtol=0, atol=1e-5)
    # three cache entries of their own beside the native probe's three
    assert len(list(cache.glob("*.npy"))) == 3
    native = probe(params(data_root, cache))
    assert len(list(cache.glob("*.npy"))) == 6
    assert not np.allclose(native.value, rows.value)


def direct_on_padded(enc, data, side):
    """The same features by hand: MedMNIST+'s padded input straight through the model."""
    from biovfm_lib.probe.features import encode

    x = medmnist_plus_input(data.images["test"], side)
    with torch.no_grad():
        return encode(enc.model.eval(), x).numpy()


def test_the_official_protocol_augments_at_the_files_size_then_pads(data_root, tmp_path):
    """RandomCrop(padding 4) acts on the 28 px image, as the study's; then MedMNIST+'s pad."""
    rows = probe(params(data_root, tmp_path / "cache", protocol="official", epochs=1,
                        batch_size=32, input_size=56))
    assert rows.protocol.eq("official").all() and rows.input_size.eq(56).all()
    assert rows.value.notna().all()

"""Reading pretraining images, seeded augmentation, and the DINOv2/MAE transforms."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from biovfm_lib.data.pretrain import PretrainImages, index_images
from biovfm_lib.data.sampler import ResumableDistributedSampler
from biovfm_lib.data.ssl_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DINOv2Augmentation,
    MAEAugmentation,
)

RNG = np.random.default_rng(7)
GREY = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
_Y, _X = np.mgrid[0:16, 0:16]
SMOOTH = np.dstack([_X * 16, _Y * 12, 255 - _X * 8 - _Y * 6]).astype(np.uint8)  # for JPEG
DEEP = np.array([[100, 1000, 4095], [2000, 3000, 100]], dtype=np.uint16)  # a 12-bit range
DEEP_8BIT = np.rint((DEEP.astype(float) - 100) * 255 / 3995).astype(np.uint8)


def write_medmnist(path, train: np.ndarray, compressed: bool) -> None:
    """A file in MedMNIST's own layout: <split>_images uint8 and <split>_labels (N, 1)."""
    arrays = {}
    for split, images in (("train", train), ("val", train[:2]), ("test", train[:3])):
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.zeros((len(images), 1), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """The expected (3, H, W) of grey or HWC pixels."""
    return np.stack([pixels] * 3) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    Image.fromarray(GREY).save(root / "grey.png")
    Image.fromarray(RGB).save(root / "rgb.png")
    Image.fromarray(np.dstack([RGB, ALPHA])).save(root / "rgba.png")
    Image.fromarray(DEEP).save(root / "deep.png")
    Image.fromarray(DEEP).save(root / "deep.tif")
    Image.fromarray(RGB).save(root / "rgb.tif")
    Image.fromarray(RGB).save(root / "rgb.bmp")
    Image.fromarray(SMOOTH).save(root / "smooth.jpg", quality=95, subsampling=0)
    return root


def test_deep_test_files_really_are_16_bit(files):
    for name in ("deep.png", "deep.tif"):
        with Image.open(files / name) as im:
            assert np.asarray(im).dtype.itemsize == 2 and np.asarray(im).max() == 4095


def test_every_file_format_reads_as_rgb_uint8(files):
    index = index_images([{"name": "f", "kind": "folder", "modality": "x", "root": str(files)}])
    ds = PretrainImages(index)
    got = {loc.rsplit("/", 1)[1]: ds[i] for i, loc in enumerate(index["location"])}
    assert all(t.dtype == torch.uint8 and t.shape[0] == 3 for t in got.values())
    expected = {"grey.png": GREY, "rgb.png": RGB, "rgba.png": RGB, "deep.png": DEEP_8BIT,
                "deep.tif": DEEP_8BIT, "rgb.tif": RGB, "rgb.bmp": RGB}
    for name, pixels in expected.items():
        np.testing.assert_array_equal(got[name].numpy(), as_rgb(pixels), err_msg=name)
    jpeg_error = np.abs(got["smooth.jpg"].numpy().astype(int) - as_rgb(SMOOTH))
    assert jpeg_error.mean() < 3 and jpeg_error.max() < 20  # lossy, but the same picture


def test_medmnist_rows_read_from_compressed_and_stored_npz(tmp_path, monkeypatch):
    rgb = RNG.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8)
    grey = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    write_medmnist(tmp_path / "bloodmnist.npz", rgb, compressed=True)
    write_medmnist(tmp_path / "breastmnist.npz", grey, compressed=False)
    index = index_images([{"name": f, "kind": "medmnist", "root": str(tmp_path), "flag": f,
                           "size": 28} for f in ("bloodmnist", "breastmnist")])
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    ds = PretrainImages(index)
    images = [ds[i].numpy() for i in range(len(ds))] + [ds[0].numpy()]
    expected = [as_rgb(x) for x in rgb] + [as_rgb(x) for x in grey] + [as_rgb(rgb[0])]
    for got, want in zip(images, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(loads) == 1  # the compressed file, once; the stored one is memory-mapped
    assert len(pickle.dumps(ds)) < rgb.nbytes  # workers get no copy of the arrays


def test_augmentation_is_a_function_of_seed_epoch_and_index(files):
    index = index_images([{"name": "f", "kind": "folder", "modality": "x", "root": str(files),
                           "glob": "rgb.png"}])
    index = index.loc[[0, 0, 0]].reset_index(drop=True)  # one image under three indices
    ds = PretrainImages(index, DINOv2Augmentation(28, 14, 2), seed=5)
    first = ds[(3, 1)]
    torch.manual_seed(123)
    random.seed(9)
    np.random.seed(9)
    state = torch.get_rng_state()
    again = ds[(3, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    for other in (ds[(4, 1)], ds[(3, 2)], PretrainImages(index, ds.transform, seed=6)[(3, 1)]):
        assert not torch.equal(first[0], other[0])
    assert all(torch.equal(a, b) for a, b in zip(ds[2], ds[(0, 2)], strict=True))


def test_dataloader_batches_do_not_depend_on_the_number_of_workers(files):
    index = index_images([{"name": "f", "kind": "folder", "modality": "x", "root": str(files)}])
    ds = PretrainImages(index, DINOv2Augmentation(28, 14, 2), seed=1)
    sampler = ResumableDistributedSampler(len(ds), seed=2)
    sampler.set_epoch(1)
    runs = [list(DataLoader(ds, batch_size=3, sampler=sampler, num_workers=w))
            for w in (0, 2)]
    assert len(runs[0]) == 3 and len(runs[0][0]) == 4
    for batch0, batch2 in zip(*runs, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(batch0, batch2, strict=True))


# --------------------------------------------------------------------------- transforms

def test_dinov2_gives_two_global_and_n_local_normalised_crops():
    image = torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8)
    crops = DINOv2Augmentation(global_size=28, local_size=14, n_local=3)(image)
    assert [tuple(c.shape) for c in crops] == [(3, 28, 28)] * 2 + [(3, 14, 14)] * 3
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None], torch.tensor(IMAGENET_STD)[:, None]
    for crop in crops:
        assert crop.dtype == torch.float32
        pixels = crop.flatten(1) * std + mean  # undo the normalisation: back in [0, 1]
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert len(DINOv2Augmentation(28, 14)(image)) == 10  # eight local crops by default


def sharpness(image: torch.Tensor) -> float:
    return (image[..., 1:] - image[..., :-1]).abs().mean().item()


def test_dinov2_blurs_the_crops_that_blur_p_names():
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 255
    board = board.to(torch.uint8).expand(3, -1, -1)
    torch.manual_seed(0)

    def mean_sharpness(blur_p: tuple[float, float, float], crop: int) -> float:
        aug = DINOv2Augmentation(16, 16, 1, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0),
                                 blur_p=blur_p)
        return float(np.mean([sharpness(aug(board)[crop]) for _ in range(30)]))

    assert mean_sharpness((1.0, 0.0, 0.0), 0) < 0.6 * mean_sharpness((0.0, 0.0, 0.0), 0)
    assert mean_sharpness((0.0, 1.0, 0.0), 1) < 0.6 * mean_sharpness((0.0, 0.0, 0.0), 1)
    assert mean_sharpness((0.0, 0.0, 1.0), 2) < 0.6 * mean_sharpness((0.0, 0.0, 0.0), 2)


def test_mae_gives_one_normalised_crop():
    image = torch.full((3, 50, 40), 200, dtype=torch.uint8)
    crop = MAEAugmentation(size=32)(image)
    assert crop.shape == (3, 32, 32) and crop.dtype == torch.float32
    expected = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(crop, expected[:, None, None].expand(3, 32, 32))
    assert MAEAugmentation(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)(image).shape == (3, 16, 16)

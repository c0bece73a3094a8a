"""``biovfm bench curate``: how fast raw files become corpus images, and how fast the
pretraining dataset reads them back from the shards.

Inputs are generated from a real file (pydicom's ``CT_small.dcm``, a 16-bit CT with rescale
and window tags) scaled up to ``size`` pixels with per-image noise, so every image is distinct
(no dedup shortcut) and each DICOM goes through the whole modality-LUT/window path; the PNG
inputs are 8-bit RGB. Rates are per core: one worker process staging one format.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from biovfm_lib.curation.pipeline import curate, load_manifest
from biovfm_lib.curation.process import Settings
from biovfm_lib.curation.sources import Source


def write_dicoms(folder: Path, n: int, size: int, seed: int = 0) -> None:
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = np.asarray(Image.fromarray(template.pixel_array.astype(np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = (base + rng.normal(0, 20, base.shape)).clip(0, 4000).astype(np.int16)
        template.Rows, template.Columns = size, size
        template.PixelData = pixels.tobytes()
        template.SOPInstanceUID = generate_uid()
        template.save_as(folder / f"{i:06d}.dcm", enforce_file_format=True)


def write_pngs(folder: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    for i in range(n):
        rgb = ramp[None, :, None] + rng.normal(0, 25, (size, size, 3))
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def _stage_rate(raw: Path, out: Path, name: str, modality: str, settings: Settings) -> float:
    source = Source(name=name, modality=modality, root=str(raw))
    result = curate([source], out, settings, near_distance=-1, workers=1,
                    files_per_part=64, progress=False)
    return float(result.images_per_second_per_core)


def _read_rate(corpus: Path, repeats: int = 2) -> float:
    from biovfm_lib.data.pretrain import PretrainImages

    dataset = PretrainImages(load_manifest(corpus))
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(dataset)):
            dataset.read(i)
    return repeats * len(dataset) / (time.perf_counter() - start)


def bench_curate(images: int = 400, size: int = 512, short_side: int = 256) -> dict:
    """Print and record (outputs/bench/curate.json) staging images/s per core for DICOM and
    PNG inputs, and the shard read rate of the pretraining dataset (one process)."""
    from biovfm_lib.runs import record_benchmark

    settings = Settings(short_side=short_side)
    with tempfile.TemporaryDirectory(prefix="biovfm-bench-curate-") as tmp:
        tmp = Path(tmp)
        write_dicoms(tmp / "raw" / "dicom", images, size)
        write_pngs(tmp / "raw" / "png", images, size)
        jpeg = Settings(short_side=short_side, image_format="jpeg")
        result = {
            "images_per_format": images, "raw_size": size, "short_side": short_side,
            "dicom_images_per_s_per_core": _stage_rate(
                tmp / "raw" / "dicom", tmp / "dicom", "bench-dicom", "ct", settings),
            "png_images_per_s_per_core": _stage_rate(
                tmp / "raw" / "png", tmp / "png", "bench-png", "microscopy", settings),
            "shard_read_png_images_per_s": _read_rate(tmp / "png"),
        }
        _stage_rate(tmp / "raw" / "png", tmp / "jpeg", "bench-jpeg", "microscopy", jpeg)
        result["shard_read_jpeg_images_per_s"] = _read_rate(tmp / "jpeg")
    for key, value in result.items():
        print(f"{key:32s} {value:10.1f}" if isinstance(value, float) else f"{key:32s} {value}")
    _compare_with_pretraining(result["shard_read_png_images_per_s"])
    record_benchmark("curate", result)
    return result


def _compare_with_pretraining(read_rate: float) -> None:
    """Set the loader's rate beside every pretraining rate recorded on this machine's outputs:
    one loader process should match one training process, or workers must make up the gap."""
    from biovfm_lib.runs import outputs_root

    for path in sorted((outputs_root() / "bench").glob("pretrain_*.json")):
        run = json.loads(path.read_text())
        need = run["images_per_s"]
        print(f"pretraining {run['algorithm']} {run['size']} {run['img_size']} px on "
              f"{run['device']}: {need:.1f} images/s -> {need / read_rate:.2f} loader "
              f"processes at {read_rate:.0f} images/s each")

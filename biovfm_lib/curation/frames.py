"""What a reader hands the pipeline: 8-bit frames, or a reason why a file gives none.

Every reader (DICOM, NIfTI, raster images, MedMNIST npz) maps its format's intensities to
8 bits in the way that format calls for (a DICOM window, a NIfTI percentile clip), and yields
one :class:`Frame` per 2D image it holds. Everything after that is format-free: the pipeline
checks each frame with :func:`check_frame`, resizes it with :func:`standardise`, hashes it and
writes it to a shard. A file that yields nothing usable raises :class:`Unusable` with a short,
stable ``reason`` (a rejects-table category) and a ``detail`` for the person reading it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: The rejects table's reason codes, so users can filter on them.
REASONS = {
    "empty": "the file has no bytes, or no pixel data",
    "corrupt": "the file is truncated or its content does not parse as its format",
    "unsupported_format": "no reader recognises the file's content",
    "unsupported_syntax": "the format is known but its encoding (e.g. a DICOM transfer "
                          "syntax without an installed pixel handler) cannot be decoded",
    "not_an_image": "the file parses but holds no 2D image (e.g. a DICOM structured report)",
    "zero_variance": "every pixel has the same value",
    "too_small": "the shorter side is below the minimum size",
    "unreadable_folder": "a folder under the source root that the process may not list",
    "unreadable_file": "a file under the source root that the process may not even stat",
    "symlink_loop": "a link that leads back to a folder on its own path, or to itself",
    "broken_symlink": "a link whose target does not exist",
    "reader_error": "the reader failed in a way no check foresaw (the detail holds the "
                    "exception): a file variant or a bug to look into",
}


class Unusable(Exception):
    """A file (or one frame of it) that gives no usable image, with a category and details."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; known: {sorted(REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Frame:
    """One 2D image of a raw file, already mapped to 8 bits but not yet resized.

    ``pixels`` is uint8 (H, W) for grey or (H, W, 3) for colour. ``index`` numbers the frame
    (DICOM frame, NIfTI slice as ``axis * 100000 + slice``, npz row) and is -1 for a file that
    holds exactly one image. ``bit_depth`` is what the raw file stores per sample (8, 12, 16...),
    and ``original_size`` its (H, W), so the manifest records where each image came from.
    """

    pixels: np.ndarray
    index: int
    bit_depth: int
    original_size: tuple[int, int]

    def __post_init__(self) -> None:
        p = self.pixels
        if p.dtype != np.uint8 or not (p.ndim == 2 or (p.ndim == 3 and p.shape[2] == 3)):
            raise ValueError(f"frame pixels must be uint8 (H, W) or (H, W, 3), got "
                             f"{p.dtype} {p.shape}")


def check_frame(frame: Frame, min_size: int) -> None:
    """Raise :class:`Unusable` for a frame no model should see: constant or too small."""
    h, w = frame.pixels.shape[:2]
    if min(h, w) < min_size:
        raise Unusable("too_small", f"{h}x{w} is below the minimum side of {min_size}")
    if frame.pixels.min() == frame.pixels.max():
        raise Unusable("zero_variance", f"every pixel is {int(frame.pixels.flat[0])}")


def standardise(pixels: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so the shorter side is ``short_side`` (aspect kept; Lanczos when shrinking,
    bicubic when growing). Grey stays grey and colour stays colour: the training transforms
    decide whether a model sees one channel or three, not the corpus."""
    h, w = pixels.shape[:2]
    scale = short_side / min(h, w)
    if scale == 1:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL wants (W, H)
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(pixels).resize(size, resample))


def stretch_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly to 0..255, clipping outside: the shared last step of every
    window and percentile rule. A degenerate window (high <= low) gives zeros, which the
    zero-variance check then rejects."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def percentile_window(values: np.ndarray, low: float = 0.5, high: float = 99.5
                      ) -> tuple[float, float]:
    """A robust window for images that carry none: clipping the extreme tails keeps one hot
    pixel (or a padding value of -2000 around a CT) from flattening everything else."""
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)

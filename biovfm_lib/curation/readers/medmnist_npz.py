"""A MedMNIST-format ``.npz`` as a source of frames, one per row of an image array.

MedMNIST files are already 8-bit and small per image, but a split can hold 100k+ images
(hundreds of MB once decompressed), so rows are streamed from the archive member one at a
time instead of loading the array: curation then needs one image in memory, like any other
format.
"""
from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from biovfm_lib.curation.frames import Frame, Unusable

_SPLITS = ("train", "val", "test")


def read_medmnist(path: str | Path, *, split: str = "train") -> Iterator[Frame]:
    """The images of one split (``split``: "train", "val" or "test"; the option is checked
    now, the file while iterating). ``Frame.index`` is the row, ``bit_depth`` 8; rows of
    shape (H, W) or (H, W, 1) come out grey, (H, W, 3) RGB."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    return _rows(Path(path), f"{split}_images.npy")


def _rows(path: Path, member: str) -> Iterator[Frame]:
    try:
        with zipfile.ZipFile(path) as zf:
            if member not in zf.namelist():
                raise Unusable("empty", f"{path.name} has no {member}")
            with zf.open(member) as f:
                count, frame_shape = _header(f, path, member)
                row_bytes = int(np.prod(frame_shape))
                for row in range(count):
                    buf = f.read(row_bytes)
                    if len(buf) < row_bytes:
                        raise Unusable("corrupt", f"{path.name}: {member} ends at row {row} "
                                                  f"of {count}")
                    pixels = np.frombuffer(buf, dtype=np.uint8).reshape(frame_shape)
                    yield Frame(pixels, row, 8, pixels.shape[:2])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
        raise Unusable("corrupt", f"{path.name}: {member} does not read ({err})") from None


def _header(f: IO[bytes], path: Path, member: str) -> tuple[int, tuple[int, ...]]:
    """Row count and frame shape ((H, W) or (H, W, 3)) of an array member, refusing what is
    not 2D uint8 images."""
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read(f)
    if dtype != np.uint8 or fortran:
        raise Unusable("unsupported_syntax", f"{path.name}: {member} is {dtype}"
                                             f"{' Fortran-ordered' if fortran else ''}, "
                                             f"not C-ordered uint8")
    grey_or_rgb = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
    if not grey_or_rgb:
        raise Unusable("not_an_image", f"{path.name}: {member} has shape {shape}, not (N, H, W)"
                                       f" or (N, H, W, 3)")
    if shape[0] == 0:
        raise Unusable("empty", f"{path.name}: {member} has no rows")
    return shape[0], tuple(shape[1:3]) if shape[-1] == 1 else tuple(shape[1:])

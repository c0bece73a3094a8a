"""PNG, JPEG, TIFF, BMP and GIF files as 8-bit frames, through Pillow.

Photographs (dermoscopy, fundus, pathology tiles) arrive as ordinary image files in every
storage variant Pillow knows: palettes, alpha, CMYK, 16-bit and float grey from microscopes
and scanners. Grey stays grey and colour stays colour, so no channel is invented or lost;
8-bit data is kept exactly, while 16-bit and float grey, which seldom fill their nominal
range, get the same robust percentile window as volumes without a window of their own.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from biovfm_lib.curation.frames import Frame, Unusable, percentile_window, stretch_to_uint8

#: Leading bytes -> Pillow format name, for the formats this reader is meant for.
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"II+\x00": "TIFF", b"MM\x00+": "TIFF",
    b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"BM": "BMP",
}
_BMP_INFO_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})  # the DIB header versions
_FRAME_CHOICES = ("all", "first")
_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_DEEP_GREY_DEPTH = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
#: Words Pillow uses when a file is well-formed but its encoding is beyond it
_UNSUPPORTED_WORDS = ("unsupported", "unknown", "not supported", "not available")


def image_format(head: bytes) -> str | None:
    """The Pillow format name whose signature ``head`` starts with, or None. A BMP must also
    have a known DIB header size, since two bytes of "BM" alone match too much text."""
    for magic, fmt in SIGNATURES.items():
        if head.startswith(magic):
            if fmt == "BMP" and int.from_bytes(head[14:18], "little") not in _BMP_INFO_SIZES:
                return None
            return fmt
    return None


def read_raster(path: str | Path, *, frames: str = "all") -> Iterator[Frame]:
    """The frames of an image file (the option is checked now, the file while iterating).

    ``frames``: "all" pages of a multi-page TIFF or animated GIF, or only the "first".
    ``Frame.index`` is the page number, or -1 for a single-image file; ``bit_depth`` is the
    stored depth per sample (1, 8, 16 or 32).
    """
    if frames not in _FRAME_CHOICES:
        raise ValueError(f"frames must be one of {list(_FRAME_CHOICES)}, got {frames!r}")
    return _raster_frames(Path(path), frames)


def _raster_frames(path: Path, frames: str) -> Iterator[Frame]:
    with _open(path) as im:
        count = getattr(im, "n_frames", 1)
        for page in range(count if frames == "all" else 1):
            try:
                im.seek(page)
                pixels, depth = _to_uint8(ImageOps.exif_transpose(im))
            except (OSError, EOFError, ValueError, SyntaxError) as err:
                raise _failure(path, err) from None
            yield Frame(pixels, page if count > 1 else -1, depth, pixels.shape[:2])


def _open(path: Path) -> Image.Image:
    """Open with Pillow, which hides why no plugin took a file; asking the plugin that owns
    the signature tells a broken header ("corrupt") from an encoding Pillow lacks."""
    with path.open("rb") as f:
        fmt = image_format(f.read(32))
    try:
        return Image.open(path, formats=[fmt] if fmt else None)
    except Image.DecompressionBombError as err:
        raise Unusable("unsupported_syntax", f"{path.name}: {err} (whole-slide images need a "
                                             f"tiled reader)") from None
    except UnidentifiedImageError as err:
        cause: Exception = err
        if fmt is not None:
            try:
                Image.OPEN[fmt][0](str(path)).close()
            except Exception as plugin_err:  # noqa: BLE001 - only read for its message
                cause = plugin_err
        raise _failure(path, cause) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise _failure(path, err) from None


def _failure(path: Path, err: Exception) -> Unusable:
    message = str(err)
    reason = ("unsupported_syntax" if any(w in message.lower() for w in _UNSUPPORTED_WORDS)
              else "corrupt")
    return Unusable(reason, f"{path.name}: {message or type(err).__name__}")


def _to_uint8(im: Image.Image) -> tuple[np.ndarray, int]:
    """(pixels, stored bit depth) of one loaded page."""
    mode = im.mode
    if mode in _GREY_MODES:
        return np.asarray(im.convert("L")), 1 if mode == "1" else 8
    if mode in _DEEP_GREY_DEPTH:
        values = np.asarray(im)
        return stretch_to_uint8(values, *percentile_window(values)), _DEEP_GREY_DEPTH[mode]
    if mode in ("P", "PA") and _grey_palette(im):
        return np.asarray(im.convert("L")), 8
    return np.asarray(im.convert("RGB")), 8


def _grey_palette(im: Image.Image) -> bool:
    """Whether every palette entry is grey, as in many scanners' 8-bit "indexed" output."""
    palette = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool((palette == palette[:, :1]).all())

"""DICOM files as 8-bit frames shown the way the modality meant them to be seen.

A stored DICOM value is not an intensity: the modality LUT (rescale slope/intercept, e.g. to
Hounsfield units) gives the physical value, and the VOI LUT or window chosen at acquisition
says which part of that range matters. Following both, rather than min-max stretching the raw
values, is what keeps a CT lung window or a mammogram's dense tissue visible after the drop
to 8 bits. MONOCHROME1 (radiographs stored with white = low values) is inverted so every grey
frame has bright = dense, palette images go through their palette, and YBR colour ends up
RGB. All pixel maths is pydicom's (:mod:`pydicom.pixels`); this module only picks the steps.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from biovfm_lib.curation.frames import Frame, Unusable, percentile_window, stretch_to_uint8

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import Decoder

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: (implicit VR, little endian) -> the native syntax a file without file meta was parsed as
_NATIVE_SYNTAX = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
                  (False, False): ExplicitVRBigEndian}
#: Elements pydicom's modality/VOI helpers read; copied into a per-frame view (see _lut_view)
_LUT_KEYWORDS = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation",
                 "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "WindowCenter",
                 "WindowWidth", "VOILUTFunction", "VOILUTSequence")
#: Functional-group macros of enhanced multi-frame files that carry rescale and window
_LUT_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_PALETTE_COLOURS = ("Red", "Green", "Blue", "Alpha")
_YBR = frozenset({"YBR_FULL", "YBR_FULL_422"})
_FRAME_CHOICES = ("all", "middle")
_WINDOW_CHOICES = ("auto", "percentile")


def parses_as_dicom(path: str | Path) -> bool:
    """Whether a file without any signature is DICOM without its preamble (old PACS exports).

    pydicom's forced parse accepts almost any bytes, so it only counts when the result holds
    image tags, or when the extension already says DICOM (then a non-image such as an RT plan
    is rejected by the reader as "not_an_image", the more useful category).
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=True, defer_size=1024)
    except Exception:  # noqa: BLE001 - garbage fails in any of a dozen ways; all mean "no"
        return False
    if not ds:
        return False
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS) or ("Rows" in ds and "Columns" in ds)
    return has_pixels or path.suffix.lower() in _DICOM_SUFFIXES


def read_dicom(path: str | Path, *, frames: str | list[int] = "all", window: str = "auto"
               ) -> Iterator[Frame]:
    """The frames of a DICOM file (options are checked now, the file while iterating).

    ``frames``: "all", "middle" (one representative frame of a cine loop or an enhanced
    volume) or a list of 0-based frame numbers (numbers past the file's last frame are
    skipped). ``window``: "auto" uses the file's VOI LUT or window and falls back to
    percentiles when it has none (or a broken one); "percentile" ignores the file's window,
    for collections whose windows are known to be poor. ``Frame.index`` is the frame number,
    or -1 for a single-frame file, and ``bit_depth`` is BitsStored.
    """
    _check_frames(frames)
    if window not in _WINDOW_CHOICES:
        raise ValueError(f"window must be one of {list(_WINDOW_CHOICES)}, got {window!r}")
    return _dicom_frames(Path(path), frames, window)


def _check_frames(frames: object) -> None:
    if frames in _FRAME_CHOICES:
        return
    if (isinstance(frames, (list, tuple)) and frames
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in frames)):
        return
    raise ValueError(f"frames must be one of {list(_FRAME_CHOICES)} or a non-empty list of "
                     f"frame numbers >= 0, got {frames!r}")


def _dicom_frames(path: Path, frames: str | list[int], window: str) -> Iterator[Frame]:
    ds = _parse(path)
    options = _pixel_options(ds, path)
    count = options["number_of_frames"]
    indices = _frame_indices(frames, count, path)
    depth = int(options.get("bits_stored", options.get("bits_allocated", 0)))
    decoded = _decoder(ds).iter_array(ds, indices=indices, raw=False, **options)
    for index in indices:
        arr, meta = _next_frame(decoded, path, index)
        try:
            pixels = _to_uint8(arr, str(meta["photometric_interpretation"]), ds, index, window)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise Unusable("corrupt", f"{path.name}: frame {index}: malformed LUT or palette "
                                      f"({err})") from None
        yield Frame(pixels, index if count > 1 else -1, depth, pixels.shape[:2])


#: SOP classes whose pixel data decode but are not images a model should pretrain on:
#: segmentation label masks and radiotherapy dose grids.
DERIVED_NOT_IMAGES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose Storage
})


def _parse(path: Path) -> Dataset:
    """The whole dataset; ``force`` because detection has already vouched for files that lack
    the preamble, and a missing transfer syntax is filled in from how pydicom parsed it."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as err:  # noqa: BLE001 - truncated/garbled input fails in many ways
        raise Unusable("corrupt", f"{path.name}: does not parse as DICOM ({err})") from None
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _NATIVE_SYNTAX[ds.original_encoding]
    return ds


def _pixel_options(ds: Dataset, path: Path) -> dict:
    if len(ds) == 0:  # what pydicom leaves of a truncated dataset it could not read
        raise Unusable("corrupt", f"{path.name}: no data elements after the file meta")
    sop = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise Unusable("not_an_image", f"{path.name}: {sop} without pixel data")
    if ds.get("SOPClassUID") in DERIVED_NOT_IMAGES:
        raise Unusable("not_an_image", f"{path.name}: a {sop} has pixels, but they are "
                                       f"derived maps (labels, dose), not an acquired image")
    try:
        return as_pixel_options(ds)
    except (ValueError, TypeError) as err:  # e.g. NumberOfFrames "1A"
        raise Unusable("corrupt", f"{path.name}: bad image pixel module ({err})") from None


def _frame_indices(frames: str | list[int], count: int, path: Path) -> list[int]:
    if frames == "all":
        return list(range(count))
    if frames == "middle":
        return [count // 2]
    indices = [i for i in frames if i < count]
    if not indices:
        raise Unusable("empty", f"{path.name}: none of frames {list(frames)} exist (the file "
                                f"has {count})")
    return indices


def _decoder(ds: Dataset) -> Decoder:
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise Unusable("unsupported_syntax", f"no pixel decoder for transfer syntax "
                                             f"{syntax.name} ({syntax})") from None
    if not decoder.is_available:
        raise Unusable("unsupported_syntax", f"{syntax.name}: needs one of "
                                             f"{decoder.missing_dependencies}")
    return decoder


def _next_frame(decoded: Iterator, path: Path, index: int) -> tuple[np.ndarray, dict]:
    try:
        return next(decoded)
    except Exception as err:  # noqa: BLE001 - the C decoders signal bad data in many ways
        raise Unusable("corrupt", f"{path.name}: frame {index} does not decode ({err})"
                       ) from None


def _to_uint8(arr: np.ndarray, photometric: str, ds: Dataset, index: int, window: str
              ) -> np.ndarray:
    """One decoded frame to uint8; ``photometric`` is the decoder's output interpretation
    (pydicom has already turned YBR JPEG/JPEG 2000 data into RGB)."""
    if photometric == "PALETTE COLOR":
        return _full_range(apply_color_lut(arr, _native_palette(ds))[..., :3])
    if arr.ndim == 3:
        if photometric in _YBR:
            arr = convert_color_space(arr, photometric, "RGB")
        elif photometric != "RGB":
            raise Unusable("unsupported_syntax", f"photometric interpretation {photometric}")
        return _full_range(arr, ds.get("BitsStored"))
    attrs = _lut_view(ds, index)
    values = apply_modality_lut(arr, attrs)
    windowed = _apply_window(values, attrs) if window == "auto" else None
    if windowed is None:
        windowed = (values, *percentile_window(values))
    pixels = stretch_to_uint8(*windowed)
    return 255 - pixels if photometric == "MONOCHROME1" else pixels


def _native_palette(ds: Dataset) -> Dataset:
    """``ds``, or a view of its palette with the LUT data in this machine's byte order.

    pydicom 3.0's apply_color_lut reads non-segmented palette data in the machine's order,
    so a big-endian file's palette comes out byte-swapped on x86 (near-black frames).
    """
    if (ds.original_encoding[1] == (sys.byteorder == "little")
            or "RedPaletteColorLookupTableData" not in ds):
        return ds
    entries = ds.RedPaletteColorLookupTableDescriptor[0]
    view = Dataset()
    view.add(ds["RedPaletteColorLookupTableDescriptor"])
    for colour in _PALETTE_COLOURS:
        keyword = f"{colour}PaletteColorLookupTableData"
        if keyword in ds:
            view.add_new(keyword, "OW", _swap_words(ds[keyword].value, entries))
    return view


def _swap_words(data: bytes, entries: int) -> bytes:
    """16-bit LUT entries byte-swapped; 8-bit entries (one byte each) need nothing."""
    if len(data) != 2 * (entries or 2 ** 16):
        return data
    return np.frombuffer(data, dtype=np.uint16).byteswap().tobytes()


def _full_range(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Colour samples (or palette entries) span their whole nominal range, so scale that."""
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    bits = bits or 8 * arr.dtype.itemsize
    return stretch_to_uint8(arr, 0, 2 ** bits - 1)


def _lut_view(ds: Dataset, index: int) -> Dataset:
    """The elements the LUT helpers read, with this frame's functional groups laid over them.

    Enhanced multi-frame files (enhanced CT/MR) keep rescale and window per frame in
    functional-group sequences, where pydicom's helpers do not look; a small view with those
    values at the top level lets the same helpers serve both layouts without touching ``ds``.
    """
    view = Dataset()
    view.file_meta = ds.file_meta  # the helpers read LUT data's byte order from it
    for keyword in _LUT_KEYWORDS:
        if keyword in ds:
            view.add(ds[keyword])
    groups = list(ds.get("SharedFunctionalGroupsSequence", []))[:1]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for macro in _LUT_MACROS:
            for item in list(group.get(macro, []))[:1]:
                for elem in item:
                    view.add(elem)
    return view


def _apply_window(values: np.ndarray, attrs: Dataset
                  ) -> tuple[np.ndarray, float, float] | None:
    """The VOI LUT (preferred, as the standard says) or window applied to modality values,
    with the range its output spans; None when the file has neither or a broken one, so the
    caller falls back to percentiles instead of rejecting an image over a bad header."""
    try:
        if _has_voi_lut(attrs):
            table = apply_voi(_lut_inputs(attrs.VOILUTSequence[0]), attrs)
            return (apply_voi(np.rint(values).astype(np.int64), attrs),
                    float(table.min()), float(table.max()))
        if "WindowCenter" in attrs and "WindowWidth" in attrs:
            # The output range depends on BitsStored, signedness and rescale; pydicom knows
            # it, and the extremes of the input land exactly on it.
            low, high = apply_windowing(np.array([-np.inf, np.inf]), attrs)
            return apply_windowing(values, attrs), float(low), float(high)
    except (AttributeError, IndexError, NotImplementedError, TypeError, ValueError):
        return None
    return None


def _has_voi_lut(attrs: Dataset) -> bool:
    items = attrs.get("VOILUTSequence")
    return bool(items) and "LUTDescriptor" in items[0] and "LUTData" in items[0]


def _lut_inputs(item: Dataset) -> np.ndarray:
    """Every input value a LUT maps, so its output range can be read off the mapped table."""
    entries, first = int(item.LUTDescriptor[0]) or 2 ** 16, int(item.LUTDescriptor[1])
    return np.arange(first, first + entries, dtype=np.int64)

"""NIfTI (and ANALYZE) volumes as 2D slices, through nibabel.

Volumes carry no display window, and a CT's air padding or an MRI's bright fat would flatten
everything else under a min-max stretch, so intensities are clipped to percentiles. They are
computed once per 3D volume, not per slice, so neighbouring slices keep the same mapping (a
slice through a ventricle is not re-stretched to look like one through grey matter). Slices
are cut along RAS axes found from the affine (0 sagittal, 1 coronal, 2 axial), whatever order
the file stores its voxels in, and shown the usual way: superior or anterior at the top,
patient left on the image left. Uncompressed files are memory-mapped and read one slice at a
time; compressed ones cannot seek cheaply, so each 3D volume is decompressed once.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, io_orientation

from biovfm_lib.curation.frames import Frame, Unusable, percentile_window, stretch_to_uint8

_VOLUME_CHOICES = ("first", "all")
_SLICE_LIMIT = 100_000  # one index digit block per axis, see _frame_index
_SAMPLE_VOXELS = 1 << 24  # percentiles come from at most ~16M voxels (every k-th axial plane)
_COMPRESSED_SUFFIXES = frozenset({".gz", ".bz2", ".zst"})
_READ_ERRORS = (OSError, EOFError, ValueError, ImageFileError, zlib.error)

Plane = tuple[slice | int, slice | int, slice | int]


def read_nifti(path: str | Path, *, axes: Sequence[int] = (2,), stride: int = 1,
               volumes: str = "first", percentiles: Sequence[float] = (0.5, 99.5)
               ) -> Iterator[Frame]:
    """The non-empty slices of a NIfTI file (options are checked now, the file while iterating).

    ``axes``: RAS axes to slice along (0 sagittal, 1 coronal, 2 axial). ``stride``: keep
    every n-th slice (neighbours are near-duplicates). ``volumes``: for 4D data, the "first"
    volume or "all". ``percentiles``: the (low, high) clip of each volume's intensities.
    Slices that are constant after the mapping (background, padding) are skipped; a file left
    with none raises "zero_variance". ``Frame.index`` packs where a slice came from into one
    int, unique within the file: ``volume * 1_000_000 + axis * 100_000 + slice``, with
    ``slice`` counted along the RAS axis (e.g. inferior to superior); ``bit_depth`` is the
    header's bitpix.
    """
    axes = _check_axes(axes)
    if not (isinstance(stride, int) and not isinstance(stride, bool) and stride >= 1):
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if volumes not in _VOLUME_CHOICES:
        raise ValueError(f"volumes must be one of {list(_VOLUME_CHOICES)}, got {volumes!r}")
    low, high = _check_percentiles(percentiles)
    return _nifti_frames(Path(path), axes, stride, volumes == "all", (low, high))


def _check_axes(axes: Sequence[int]) -> tuple[int, ...]:
    if (isinstance(axes, (list, tuple)) and axes and len(set(axes)) == len(axes)
            and all(a in (0, 1, 2) and not isinstance(a, bool) for a in axes)):
        return tuple(axes)
    raise ValueError(f"axes must be a non-empty list of distinct axes from 0, 1, 2, got {axes!r}")


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    if isinstance(percentiles, (list, tuple)) and len(percentiles) == 2:
        low, high = percentiles
        if (all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in percentiles)
                and 0 <= low < high <= 100):
            return float(low), float(high)
    raise ValueError(f"percentiles must be [low, high] with 0 <= low < high <= 100, got "
                     f"{percentiles!r}")


def _nifti_frames(path: Path, axes: tuple[int, ...], stride: int, all_volumes: bool,
                  percentiles: tuple[float, float]) -> Iterator[Frame]:
    img = _load(path)
    shape, n_volumes = _layout(img, path)
    ornt = _orientation(img)
    depth = int(img.header["bitpix"])
    yielded = 0
    for volume in range(n_volumes if all_volumes else 1):
        read = _volume_reader(img, shape, volume, path)
        low, high = _window(read, shape, percentiles)
        for axis in axes:
            for i in range(0, shape[_stored_axis(ornt, axis)], stride):
                plane = _canonical_plane(read(_plane_slicer(ornt, axis, i, shape)), ornt, axis)
                values = np.nan_to_num(plane, nan=low, posinf=high, neginf=low)
                pixels = stretch_to_uint8(values, low, high)
                if pixels.min() == pixels.max():
                    continue
                yielded += 1
                yield Frame(pixels, _frame_index(volume, axis, i), depth, pixels.shape)
    if not yielded:
        raise Unusable("zero_variance", f"{path.name}: every slice is constant after the "
                                        f"percentile mapping")


def _load(path: Path) -> nib.AnalyzeImage:
    try:
        img = nib.load(path)
    except _READ_ERRORS as err:  # FileNotFoundError too: a .hdr whose .img is missing
        raise Unusable("corrupt", f"{path.name}: does not load as NIfTI ({err})") from None
    if not isinstance(img, nib.AnalyzeImage):  # NIfTI-1/2 subclass it; CIFTI matrices do not
        raise Unusable("not_an_image", f"{path.name}: {type(img).__name__} is not a volume")
    if img.get_data_dtype().kind not in "biuf":
        raise Unusable("unsupported_syntax", f"{path.name}: voxel type "
                                             f"{img.get_data_dtype()} (complex or RGB)")
    return img


def _layout(img: nib.AnalyzeImage, path: Path) -> tuple[tuple[int, int, int], int]:
    """The 3D shape (2D files get a depth of 1) and the number of volumes; dimensions past
    the 4th are accepted only when they are 1 (vector/tensor fields are not images)."""
    shape = tuple(img.shape) + (1,) * (3 - len(img.shape))
    extra = shape[3:]
    if any(n > 1 for n in extra[1:]):
        raise Unusable("not_an_image", f"{path.name}: {len(shape)}-D data of shape {shape}")
    if max(shape[:3]) >= _SLICE_LIMIT:
        raise Unusable("unsupported_syntax", f"{path.name}: an axis of {max(shape[:3])} "
                                             f"voxels exceeds the frame index encoding")
    return shape[:3], (extra[0] if extra else 1)


def _orientation(img: nib.AnalyzeImage) -> np.ndarray:
    """For each stored axis, (RAS axis, flip); the identity for an affine too degenerate to
    say (nibabel leaves such axes NaN)."""
    ornt = io_orientation(img.affine)
    return np.array([[0, 1], [1, 1], [2, 1]]) if np.isnan(ornt).any() else ornt


def _stored_axis(ornt: np.ndarray, axis: int) -> int:
    return int(np.flatnonzero(ornt[:, 0] == axis)[0])


def _plane_slicer(ornt: np.ndarray, axis: int, i: int, shape: tuple[int, int, int]) -> Plane:
    """Where RAS slice ``i`` along ``axis`` lies in the stored array."""
    stored = _stored_axis(ornt, axis)
    slicer: list[slice | int] = [slice(None)] * 3
    slicer[stored] = shape[stored] - 1 - i if ornt[stored, 1] < 0 else i
    return tuple(slicer)


def _canonical_plane(plane: np.ndarray, ornt: np.ndarray, axis: int) -> np.ndarray:
    """A stored 2D plane reordered and flipped to RAS, then rotated for display."""
    others = [k for k in range(3) if k != _stored_axis(ornt, axis)]
    in_plane = ornt[others].copy()
    in_plane[:, 0] = np.argsort(np.argsort(in_plane[:, 0]))
    return np.rot90(apply_orientation(plane, in_plane))


def _volume_reader(img: nib.AnalyzeImage, shape: tuple[int, int, int], volume: int, path: Path
                   ) -> Callable[[Plane], np.ndarray]:
    """A function returning float32 voxels of one 3D volume for a 3-axis slicer."""
    proxy = img.dataobj
    tail = (volume,) + (0,) * (len(img.shape) - 4) if len(img.shape) > 3 else ()
    compressed = Path(img.file_map["image"].filename).suffix in _COMPRESSED_SUFFIXES
    if len(img.shape) >= 3 and not compressed:
        def read(slicer: Plane) -> np.ndarray:
            return _checked(lambda: np.asarray(proxy[slicer + tail], dtype=np.float32), path)
        return read
    full = (slice(None),) * min(len(img.shape), 3) + tail
    data = _checked(lambda: np.asarray(proxy[full], dtype=np.float32), path).reshape(shape)
    return lambda slicer: data[slicer]


def _checked(read: Callable[[], np.ndarray], path: Path) -> np.ndarray:
    try:
        return read()
    except _READ_ERRORS as err:
        raise Unusable("corrupt", f"{path.name}: voxel data does not read ({err})") from None


def _window(read: Callable[[Plane], np.ndarray], shape: tuple[int, int, int],
            percentiles: tuple[float, float]) -> tuple[float, float]:
    """The volume's percentile clip, from every k-th stored plane of a huge volume."""
    step = max(1, math.ceil(math.prod(shape) / _SAMPLE_VOXELS))
    sample = read((slice(None), slice(None), slice(None, None, step)))
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 0.0  # every slice then maps to zeros and is skipped
    return percentile_window(finite, *percentiles)


def _frame_index(volume: int, axis: int, i: int) -> int:
    return volume * 1_000_000 + axis * _SLICE_LIMIT + i

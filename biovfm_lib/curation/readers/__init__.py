"""Format readers of the curation pipeline, and the choice of reader by a file's content.

Raw collections mislabel files all the time (a PACS export of ``.dcm`` files that are really
PNG screenshots, DICOM files with no extension at all, ``.nii`` files that are gzipped), so
:func:`detect_reader` looks at magic bytes and uses the extension only where content cannot
decide: a DICOM file without its 128-byte preamble has no signature, and is recognised by
parsing it. Every reader yields :class:`~biovfm_lib.curation.frames.Frame` objects and raises
:class:`~biovfm_lib.curation.frames.Unusable` for a file that gives none; a bad reader name or
option is the user's configuration error and raises ``ValueError`` instead, so it stops a run
rather than quietly rejecting every file.
"""
from __future__ import annotations

import gzip
import inspect
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from biovfm_lib.curation.frames import Frame, Unusable
from biovfm_lib.curation.readers.dicom import parses_as_dicom, read_dicom
from biovfm_lib.curation.readers.medmnist_npz import read_medmnist
from biovfm_lib.curation.readers.nifti import read_nifti
from biovfm_lib.curation.readers.raster import image_format, read_raster

#: Reader name -> function(path, **options). Options are each function's keyword-only
#: parameters, so :func:`reader_options` and the validation in :func:`read_frames` cannot
#: drift from what the readers accept.
READERS: dict[str, Callable[..., Iterator[Frame]]] = {
    "dicom": read_dicom,
    "nifti": read_nifti,
    "image": read_raster,
    "medmnist": read_medmnist,
}

_HEAD_BYTES = 512  # covers the DICOM preamble (132) and the NIfTI-1 magic (344..348)


def reader_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults (for config validation and docs)."""
    _check_reader(name)
    params = inspect.signature(READERS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def read_frames(path: str | Path, reader: str = "auto", options: dict | None = None
                ) -> Iterator[Frame]:
    """The frames of one file, read by ``reader`` (or the one :func:`detect_reader` picks).

    Detection, option checks and an empty file are dealt with before this returns; everything
    else (parsing, decoding) happens while iterating, so wrap both the call and the loop when
    rejecting files. With ``"auto"``, ``options`` must suit the detected reader: a folder that
    mixes formats needs options every one of its readers accepts (usually none).
    """
    options = dict(options or {})
    if reader != "auto":
        _check_options(reader, options)
    path = Path(path)
    if path.stat().st_size == 0:
        raise Unusable("empty", f"{path.name} has no bytes")
    name = reader
    if reader == "auto":
        name = detect_reader(path)
        _check_options(name, options)
    return READERS[name](path, **options)


def detect_reader(path: str | Path) -> str:
    """The name of the reader for ``path``, judged by its content (see the module docstring).

    Raises :class:`Unusable` ("empty" for a zero-byte file, "corrupt" for a gzip or zip
    container that does not open, "unsupported_format" for anything no reader recognises).
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        raise Unusable("empty", f"{path.name} has no bytes")
    name = _by_signature(head)
    if name == "gzip":
        name = _gzip_content(path)
    elif name == "zip":
        name = _zip_content(path)
    elif name is None and parses_as_dicom(path):
        name = "dicom"
    if name is None:
        raise Unusable("unsupported_format", f"{path.name}: content not recognised (starts "
                                             f"with {head[:8]!r})")
    return name


def _check_reader(name: str) -> None:
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; valid readers: {['auto', *sorted(READERS)]}")


def _check_options(name: str, options: dict) -> None:
    """Unknown option keys; their values are checked by the reader itself."""
    valid = reader_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for reader {name!r}; valid options: "
                         f"{sorted(valid)}")


def _by_signature(head: bytes) -> str | None:
    """A reader name, "gzip"/"zip" for containers that need a look inside, or None. DICOM
    comes first: its preamble is free-form and may itself hold another format's header
    (dual-personality TIFF/DICOM files)."""
    if head[128:132] == b"DICM":
        return "dicom"
    if head[344:348] in (b"n+1\0", b"ni1\0") or head[4:8] in (b"n+2\0", b"ni2\0"):
        return "nifti"
    if image_format(head) is not None:
        return "image"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return None


def _gzip_content(path: Path) -> str | None:
    """The reader for a gzip's content: only NIfTI (the usual ``.nii.gz``) is read inside
    gzip, since every NIfTI reader supports it; None for anything else."""
    try:
        with gzip.open(path) as f:
            head = f.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as err:
        raise Unusable("corrupt", f"{path.name}: gzip stream does not decompress ({err})"
                       ) from None
    return "nifti" if _by_signature(head) == "nifti" else None


def _zip_content(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        raise Unusable("corrupt", f"{path.name}: zip archive does not open ({err})") from None
    return "medmnist" if "train_images.npy" in names else None

"""Tar shards in the WebDataset layout, with random access by byte offset.

Why tar: it is the format streaming loaders already read (``webdataset.WebDataset`` iterates a
shard's ``<key>.png`` + ``<key>.json`` pairs as samples, shuffles with a buffer and splits
shards across ranks and workers), it needs no index server, and a plain ``tar tf`` inspects it.
The manifest records each image's data offset, so the pretraining dataset can also read any
image directly with one seek, which keeps our resumable, exactly replayable sampler.

A member's 512-byte header sits right before its data when names are short (< 100 bytes, no
PAX/GNU long-name records), which :class:`ShardWriter` guarantees; :func:`read_member` reads the
size from that header, so an (offset) pair alone locates an image.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

BLOCK = 512
_MAX_NAME = 99


class ShardWriter:
    """Writes members into ``<folder>/<prefix>-NNNNNN.tar``, starting a new shard after
    ``max_members`` members or ``max_bytes`` bytes. Each shard is written under a temporary
    name and renamed when complete, so a reader never sees half a shard."""

    def __init__(self, folder: str | Path, prefix: str, max_members: int = 10_000,
                 max_bytes: int = 512 * 2**20):
        self.folder, self.prefix = Path(folder), prefix
        self.max_members, self.max_bytes = max_members, max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._members = self._bytes = 0

    def add(self, name: str, data: bytes) -> tuple[str, int]:
        """Store ``data`` as member ``name``; returns (shard file name, data offset)."""
        if len(name.encode()) > _MAX_NAME:
            raise ValueError(f"member name {name!r} is longer than {_MAX_NAME} bytes")
        if self._tar is None or self._members >= self.max_members \
                or self._bytes >= self.max_bytes:
            self._roll()
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        offset = self._tar.offset + BLOCK  # one header block: USTAR with a short name
        self._tar.addfile(info, io.BytesIO(data))
        self._members += 1
        self._bytes += len(data) + BLOCK
        return self._current.name, offset

    def close(self) -> list[Path]:
        """Finish the open shard; returns every shard written."""
        if self._tar is not None:
            self._tar.close()
            os.replace(self._partial, self._current)
            self._tar = None
        return self.written

    def __enter__(self) -> ShardWriter:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # leave no half shard behind on failure
            self._tar.close()
            self._partial.unlink(missing_ok=True)

    def _roll(self) -> None:
        self.close()
        self._current = self.folder / f"{self.prefix}-{len(self.written):06d}.tar"
        self._partial = self._current.with_name(self._current.name + ".partial")
        # open across add() calls; closed by close()/__exit__
        self._tar = tarfile.open(self._partial, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.written.append(self._current)
        self._members = self._bytes = 0


def read_member(shard: str | Path, offset: int) -> bytes:
    """The data of the member whose data starts at ``offset`` in ``shard``."""
    with open(shard, "rb") as f:
        f.seek(offset - BLOCK)
        header = f.read(BLOCK)
        size = _header_size(header, shard, offset)
        data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{shard}: member at offset {offset} is truncated "
                         f"({len(data)} of {size} bytes)")
    return data


def _header_size(header: bytes, shard: str | Path, offset: int) -> int:
    if len(header) != BLOCK or header[257:262] != b"ustar":
        raise ValueError(f"{shard}: no tar member header before offset {offset}")
    return int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)

"""Reader of Qt binary resource files (``.rcc``, written by ``rcc -binary``).

Layout, as written by Qt's ``rcc`` tool (``src/tools/rcc/rcc.cpp`` in qtbase),
all integers big-endian:

- header: the magic ``qres``, a 4-byte format version (1, 2 or 3), and the
  4-byte offsets of the tree, data and names sections. Version 3 adds a
  4-byte field of global flags.
- tree: fixed-size nodes, 14 bytes in version 1 and 22 bytes from version 2
  (an 8-byte modification time in milliseconds is appended). Node 0 is the
  root folder. Each node starts with a 4-byte offset into the names section
  and 2 bytes of flags. A folder continues with a 4-byte child count and the
  4-byte index of its first child node. A file continues with 2-byte
  territory and 2-byte language codes and a 4-byte offset into the data
  section.
- names: a 2-byte length in UTF-16 code units, a 4-byte hash, then the name in
  UTF-16BE.
- data: a 4-byte length, then the bytes. A zlib-compressed entry (flag 0x01)
  contains ``qCompress`` output: a 4-byte uncompressed length, then a zlib
  stream. Flag 0x04 marks a zstd-compressed entry.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from cast.errors import DataError

MAGIC = b"qres"
FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04


@dataclass(frozen=True)
class ResourceFile:
    """One file stored in a resource archive."""

    path: str  # POSIX path inside the archive, without the leading ':/'
    compression: str  # "none", "zlib" or "zstd"
    stored_size: int  # bytes in the archive, after compression
    data_offset: int  # absolute offset of the 4-byte length that precedes the stored bytes


class RccArchive:
    """A parsed ``.rcc`` file: its list of files and access to their decompressed bytes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.blob = self.path.read_bytes()
        self.version, self.tree_offset, self.data_offset, self.names_offset, self.global_flags = self._read_header()
        self.node_size = 14 if self.version == 1 else 22
        self.files: dict[str, ResourceFile] = {}
        self._walk(0, "", depth=0)

    def _fail(self, detail: str) -> DataError:
        return DataError(f"{self.path}: not a valid Qt resource file ({detail}). Re-extract it from the package.")

    def _unpack(self, fmt: str, offset: int) -> tuple:
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.blob):
            raise self._fail(f"read of {size} bytes at offset {offset} is past the end of the {len(self.blob)}-byte file")
        return struct.unpack_from(fmt, self.blob, offset)

    def _read_header(self) -> tuple[int, int, int, int, int]:
        if self.blob[:4] != MAGIC:
            raise self._fail(f"magic is {self.blob[:4]!r}, expected {MAGIC!r}")
        version, tree, data, names = self._unpack(">IIII", 4)
        if version not in (1, 2, 3):
            raise self._fail(f"format version {version} is not supported (1, 2 and 3 are)")
        flags = self._unpack(">I", 20)[0] if version >= 3 else 0
        return version, tree, data, names, flags

    def _name(self, name_offset: int) -> str:
        offset = self.names_offset + name_offset
        (length,) = self._unpack(">H", offset)
        start = offset + 6  # skip the length and the 4-byte hash
        raw = self.blob[start : start + 2 * length]
        if len(raw) != 2 * length:
            raise self._fail(f"name at offset {offset} is cut off")
        return raw.decode("utf-16-be")

    def _walk(self, node: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise self._fail("folder tree is deeper than 64 levels, which suggests a cycle")
        offset = self.tree_offset + node * self.node_size
        name_offset, flags = self._unpack(">IH", offset)
        name = "" if node == 0 else self._name(name_offset)
        path = f"{prefix}/{name}" if prefix else name
        if flags & FLAG_DIRECTORY:
            count, first = self._unpack(">II", offset + 6)
            for child in range(first, first + count):
                if child <= node:
                    raise self._fail(f"folder node {node} points back to node {child}")
                self._walk(child, path, depth + 1)
            return
        (data_offset,) = self._unpack(">I", offset + 10)
        absolute = self.data_offset + data_offset
        (stored_size,) = self._unpack(">I", absolute)
        if flags & FLAG_COMPRESSED_ZSTD:
            compression = "zstd"
        elif flags & FLAG_COMPRESSED:
            compression = "zlib"
        else:
            compression = "none"
        self.files[path] = ResourceFile(path, compression, stored_size, absolute)

    def read(self, path: str) -> bytes:
        """Return the decompressed bytes of the file at ``path`` (as listed in ``files``)."""
        entry = self.files.get(path)
        if entry is None:
            raise DataError(f"{self.path}: no file {path!r} in this resource archive.")
        start = entry.data_offset + 4
        stored = self.blob[start : start + entry.stored_size]
        if len(stored) != entry.stored_size:
            raise self._fail(f"data of {path!r} is cut off")
        if entry.compression == "none":
            return stored
        if entry.compression == "zstd":
            raise DataError(
                f"{self.path}: {path!r} is zstd-compressed, which this reader does not decode. "
                "Use a package version whose resources are zlib-compressed or uncompressed."
            )
        (expected,) = struct.unpack_from(">I", stored, 0)
        try:
            data = zlib.decompress(stored[4:])
        except zlib.error as error:
            raise self._fail(f"zlib data of {path!r} is corrupt: {error}") from error
        if len(data) != expected:
            raise self._fail(f"{path!r} decompressed to {len(data)} bytes, but its stored length is {expected}")
        return data

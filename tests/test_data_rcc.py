"""Tests of the Qt binary resource reader on archives written by the test in the ``rcc -binary`` layout."""

from __future__ import annotations

import struct
import zlib

import pytest

from cast.data.rcc import FLAG_COMPRESSED, FLAG_COMPRESSED_ZSTD, FLAG_DIRECTORY, RccArchive
from cast.errors import DataError

PHOTO = bytes(range(256)) * 40
TEXT = "Copyright: Someone\nLicense: CC0-1.0\n".encode()


def write_rcc(path, files: list[tuple[str, bytes, str]], version: int = 3) -> None:
    """Write an archive with one folder ``img`` that contains ``files`` as (name, content, compression) entries."""
    names = ["img"] + [name for name, _, _ in files]
    names_blob = b""
    name_offsets = []
    for name in names:
        encoded = name.encode("utf-16-be")
        name_offsets.append(len(names_blob))
        names_blob += struct.pack(">HI", len(encoded) // 2, 0) + encoded

    data_blob = b""
    data_offsets = []
    flags = []
    for _, content, compression in files:
        if compression == "zlib":
            stored, flag = struct.pack(">I", len(content)) + zlib.compress(content), FLAG_COMPRESSED
        elif compression == "zstd":
            stored, flag = b"\x28\xb5\x2f\xfd" + content[:16], FLAG_COMPRESSED_ZSTD
        else:
            stored, flag = content, 0
        data_offsets.append(len(data_blob))
        flags.append(flag)
        data_blob += struct.pack(">I", len(stored)) + stored

    timestamp = struct.pack(">Q", 0) if version >= 2 else b""
    tree = struct.pack(">IHII", 0, FLAG_DIRECTORY, 1, 1) + timestamp  # root: one child, node 1
    tree += struct.pack(">IHII", name_offsets[0], FLAG_DIRECTORY, len(files), 2) + timestamp  # img
    for index in range(len(files)):
        tree += struct.pack(">IHHHI", name_offsets[index + 1], flags[index], 0, 0, data_offsets[index]) + timestamp

    header_size = 24 if version >= 3 else 20
    data_offset = header_size
    names_offset = data_offset + len(data_blob)
    tree_offset = names_offset + len(names_blob)
    header = b"qres" + struct.pack(">IIII", version, tree_offset, data_offset, names_offset)
    if version >= 3:
        header += struct.pack(">I", 0)
    path.write_bytes(header + data_blob + names_blob + tree)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_lists_and_reads_files(tmp_path, version):
    archive_path = tmp_path / "photos.rcc"
    write_rcc(archive_path, [("README", TEXT, "none"), ("café.webp", PHOTO, "zlib")], version)
    archive = RccArchive(archive_path)
    assert sorted(archive.files) == ["img/README", "img/café.webp"]
    assert archive.files["img/café.webp"].compression == "zlib"
    assert archive.read("img/README") == TEXT
    assert archive.read("img/café.webp") == PHOTO


def test_rcc_zstd_entry_is_reported(tmp_path):
    archive_path = tmp_path / "new.rcc"
    write_rcc(archive_path, [("a.webp", PHOTO, "zstd")])
    archive = RccArchive(archive_path)
    assert archive.files["img/a.webp"].compression == "zstd"
    with pytest.raises(DataError, match="zstd-compressed"):
        archive.read("img/a.webp")


def test_rcc_rejects_other_files(tmp_path):
    path = tmp_path / "not.rcc"
    path.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(DataError, match="magic is b'PK"):
        RccArchive(path)


def test_rcc_rejects_truncated_archive(tmp_path):
    path = tmp_path / "cut.rcc"
    write_rcc(path, [("README", TEXT, "none")])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="past the end"):
        RccArchive(path)


def test_rcc_rejects_wrong_uncompressed_length(tmp_path):
    path = tmp_path / "bad.rcc"
    write_rcc(path, [("a.webp", PHOTO, "zlib")])
    blob = bytearray(path.read_bytes())
    # The stored length prefix sits right after the data entry's own 4-byte size, at offset 24 + 4.
    blob[28:32] = struct.pack(">I", len(PHOTO) + 1)
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="stored length is"):
        RccArchive(path).read("img/a.webp")


def test_rcc_unknown_path(tmp_path):
    path = tmp_path / "a.rcc"
    write_rcc(path, [("README", TEXT, "none")])
    with pytest.raises(DataError, match="no file 'img/other'"):
        RccArchive(path).read("img/other")

"""An image file's size from its header: (height, width) as ``fair_edge.images.decode_file`` gives it, read from
the first bytes of a PNG, JPEG, BMP, TIFF or WebP without decoding a pixel (``stored_size``: how training counts a
tiled folder's tiles before it reads them)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from fair_edge.images import JPEG_SIGNATURE

HEADER_BYTES = 32   # a file's first bytes: its format's signature and, for PNG, BMP and WebP, its size
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # SOF0..SOF15 (not DHT, JPG, DAC)
JPEG_SEGMENTS_AT_MOST = 1000   # segments a JPEG's frame header is looked for in (APPn, DQT, DHT come first)
TIFF_WIDTH_TAG, TIFF_HEIGHT_TAG = 256, 257   # TIFF tags ImageWidth, ImageLength
TIFF_VALUE_FORMATS = {3: "H", 4: "I", 16: "Q"}   # TIFF field types SHORT, LONG, LONG8 (BigTIFF) -> struct format
TIFF_ENTRIES_AT_MOST = 4096   # entries of a first IFD read looking for its size


def stored_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) in pixels of the image file ``path`` as ``images.decode_file`` gives it (as stored: an
    orientation tag, EXIF or TIFF, is ignored), read from its header without decoding a pixel: a few bytes of a PNG,
    JPEG, BMP, TIFF or WebP (``HEADER_READERS``), read by Python under any file name. None when the header does not
    say: the file cannot be read, is of another format, or its header is cut short or holds a size of 0 (decode the
    file to know; ``images.decode_file`` names what is wrong with it)."""
    try:
        with open(path, "rb") as file:
            head = file.read(HEADER_BYTES)
            reader = next((read for signature, read in HEADER_READERS if head.startswith(signature)), None)
            return reader(file, head) if reader is not None else None
    except (OSError, struct.error):   # unreadable, or a header cut short
        return None


def _size_or_none(height: int, width: int) -> tuple[int, int] | None:
    """(height, width) when both are above 0, else None (a header that does not say)."""
    return (height, width) if height > 0 and width > 0 else None


def _png_size(file, head: bytes) -> tuple[int, int] | None:
    """A PNG's (height, width): its IHDR chunk, first after the signature (big-endian width, height)."""
    if head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", head, 16)
    return _size_or_none(height, width)


def _bmp_size(file, head: bytes) -> tuple[int, int] | None:
    """A BMP's (height, width): 16-bit in an OS/2 core header (12 bytes), else signed 32-bit, a negative height
    marking rows stored top-down."""
    header_size = struct.unpack_from("<I", head, 14)[0]
    width, height = struct.unpack_from("<HH" if header_size == 12 else "<ii", head, 18)
    return _size_or_none(abs(height), width)


def _webp_size(file, head: bytes) -> tuple[int, int] | None:
    """A WebP's (height, width) from its first chunk: lossy (VP8: 14-bit sizes after the key frame's start code),
    lossless (VP8L: 14-bit sizes - 1 after its signature byte 0x2F) or extended (VP8X: the canvas, 24-bit - 1)."""
    chunk = head[12:16]
    if head[8:12] != b"WEBP":
        return None
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", head, 26)
        return _size_or_none(height & 0x3FFF, width & 0x3FFF)
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = struct.unpack_from("<I", head, 21)[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[27:30], "little") + 1, int.from_bytes(head[24:27], "little") + 1
    return None


def _jpeg_size(file, head: bytes) -> tuple[int, int] | None:
    """A JPEG's (height, width): its frame header (SOFn), found by stepping over the segments before it (APPn,
    EXIF with its thumbnail, DQT, DHT) by their lengths; None at a scan or the end before one."""
    file.seek(2)
    for _ in range(JPEG_SEGMENTS_AT_MOST):
        marker = _next_jpeg_marker(file)
        if marker is None or marker in (0xD9, 0xDA):   # not a marker, end of image, start of scan
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # TEM, RSTn, SOI: no length follows
            continue
        length = struct.unpack(">H", file.read(2))[0]
        if marker in JPEG_FRAME_MARKERS:
            height, width = struct.unpack(">xHH", file.read(5))   # precision, then lines and samples per line
            return _size_or_none(height, width)
        if length < 2:
            return None
        file.seek(length - 2, os.SEEK_CUR)
    return None


def _next_jpeg_marker(file) -> int | None:
    """The code of the JPEG marker at ``file``'s position (after its 0xFF and any 0xFF fill bytes), None when no
    marker starts there."""
    byte = file.read(1)
    if byte != b"\xff":
        return None
    while byte == b"\xff":
        byte = file.read(1)
    return byte[0] if byte else None


def _tiff_size(file, head: bytes) -> tuple[int, int] | None:
    """A TIFF's (height, width): the ImageLength and ImageWidth tags of its first IFD (the page OpenCV decodes),
    classic or BigTIFF, either byte order; the IFD is read where the header points (often after the pixels)."""
    order = {b"II": "<", b"MM": ">"}[head[:2]]
    big = struct.unpack_from(order + "H", head, 2)[0] == 43   # 42: classic TIFF, 43: BigTIFF
    count_fmt, entry_size, value_at = ("Q", 20, 12) if big else ("H", 12, 8)
    file.seek(struct.unpack_from(order + ("Q" if big else "I"), head, 8 if big else 4)[0])
    count = struct.unpack(order + count_fmt, file.read(struct.calcsize(count_fmt)))[0]
    entries = file.read(min(count, TIFF_ENTRIES_AT_MOST) * entry_size)
    found = {}
    for entry in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind = struct.unpack_from(order + "HH", entries, entry)
        if tag in (TIFF_WIDTH_TAG, TIFF_HEIGHT_TAG) and kind in TIFF_VALUE_FORMATS:
            found[tag] = struct.unpack_from(order + TIFF_VALUE_FORMATS[kind], entries, entry + value_at)[0]
    return _size_or_none(found.get(TIFF_HEIGHT_TAG, 0), found.get(TIFF_WIDTH_TAG, 0))


# (signature a file starts with, the reader of its size from the open file and its first HEADER_BYTES)
HEADER_READERS = ((b"\x89PNG\r\n\x1a\n", _png_size), (JPEG_SIGNATURE, _jpeg_size), (b"BM", _bmp_size),
                  (b"II*\x00", _tiff_size), (b"MM\x00*", _tiff_size), (b"II+\x00", _tiff_size),
                  (b"MM\x00+", _tiff_size), (b"RIFF", _webp_size))

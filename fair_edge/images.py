"""Image files -> frames: the one decoder every reader of an image file uses (training, eval, build, the station's
folder replay; ground-truth, ROI and zone masks through ``read_mask_pixels``), so a file gives the same pixels on
every path and a bad file is a DataError naming it, never an OpenCV exception; the one image writer (``write_png``,
``write_image``; ``encode_image`` + ``write_whole`` for a caller that counts encoder and disk failures apart: whole or
not at all, any file name); and the one rule of which files of a folder are images (``image_files``, with
``left_out_images`` naming the image files a listing leaves out for their suffix, and ``unread_text`` the subfolders
holding images and the broken links it leaves unread: training's image folders and the station's folder replay).

A JPEG whose data is damaged (bytes overwritten mid-file, or cut short) is a DataError naming it too, when the
caller asks (``check_damage``: the training-side readers, ``fair_edge.training.data``): libjpeg decodes such a file
anyway, with blocks of garbage or grey, and says so only in an unnamed line on stderr, which ``decode_file`` then
reads (``stderr_lines``: it points fd 2 of the whole process at a private file while the JPEG decodes, so the
station's readers, the folder replay and the console, never ask for it).

One orientation policy: pixels are taken as stored. An EXIF orientation tag (JPEG, PNG, WebP) is ignored
(``IMREAD_IGNORE_ORIENTATION``), and so is a TIFF's Orientation tag, which OpenCV's TIFF decoder applies whatever
the flags (``tiff_as_stored``).

No file name reaches OpenCV: its readers and writers take a ``str``, and a name that is not UTF-8 (a Latin-1 folder
from a Windows share: surrogate escapes in Python) crashes the process (segfault) there. Files are read and written
by Python and decoded / encoded in memory; a video, which only OpenCV can open by name, is checked first
(``utf8_problem``)."""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from fair_edge.disk import write_whole
from fair_edge.errors import DataError

MAX_PIXELS = 2**30  # OpenCV's limit on a decoded image (CV_IO_MAX_IMAGE_PIXELS), pixels; larger ones are refused
# a mask file (ground-truth, ROI, zone) decoded as stored: its depth and channels, alpha included (``mask_planes``)
MASK_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
# a colour mask's grey plane: one channel, its luminance at its stored depth (alpha dropped), as OpenCV decodes it
MASK_GREY_FLAGS = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
# a drawn mask (ROI, zone: white = inside) at 8 bits: a pixel is inside from this value up (half scale), so the grey
# fringe a JPEG rings around white and the near-black of an editor's "black" stay outside
DRAWN_MASK_FROM = 128
# how a drawn mask marks its pixels, for messages: what "white" means
DRAWN_MASK_RULE = ("128 or more in an 8-bit mask, any nonzero value in a 16-bit or float one; transparent "
                   "pixels are outside")
TIFF_ORIENTATION_TAG = 274   # TIFF tag Orientation; value 1 = rows top to bottom, columns left to right (as stored)
# image formats whose suffix is in no fair-edge image list (lower-case): a folder listing names the files it leaves
# out for that reason (``left_out_images``). OpenCV reads JPEG / BMP aliases, Netpbm, JPEG 2000, float (PFM,
# OpenEXR, Radiance), Sun raster, AVIF, GIF, JPEG XL; a phone's photos (HEIC / HEIF, the iPhone's default) and
# camera RAW files (DNG, Canon CR2, Nikon NEF, Sony ARW) it does not.
OTHER_IMAGE_SUFFIXES = (".jpe", ".jfif", ".dib", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".jp2", ".pfm", ".exr",
                        ".hdr", ".pic", ".sr", ".ras", ".avif", ".gif", ".jxl",
                        ".heic", ".heif", ".dng", ".cr2", ".nef", ".arw")
JPEG_SIGNATURE = b"\xff\xd8\xff"   # SOI and the next marker's 0xFF: the first bytes of every JPEG file
# libjpeg's warnings (its lines on stderr: OpenCV passes none on) that mean the decoded pixels are wrong: the
# entropy-coded data is damaged (bytes overwritten: blocks of garbage, the rest of a scan grey) or cut short.
# Any other line (extraneous bytes before a marker outside a scan, SOS 0xda or EOI 0xd9; a bad ICC marker; an
# unknown JFIF revision) leaves the pixels as they were written, and the file is read.
JPEG_DAMAGE_WARNINGS = ("Corrupt JPEG data: premature end of data segment", "Corrupt JPEG data: bad Huffman code",
                        "Premature end of JPEG file", "Inconsistent progression sequence")
JPEG_EXTRANEOUS_BYTES = "Corrupt JPEG data: "   # + "N extraneous bytes before marker 0x.."
JPEG_RESTART_MARKERS = tuple(f"0x{marker:02x}" for marker in range(0xD0, 0xD8))   # RST0..RST7: inside a scan
_STDERR_LOCK = threading.Lock()   # one ``stderr_lines`` block at a time redirects stderr (fd 2)


def decode_file(path: str | Path, flags: int = cv2.IMREAD_UNCHANGED, what: str = "image",
                check_damage: bool = False) -> np.ndarray:
    """Read a file and decode it with OpenCV's ``imdecode(flags)``: the one decoder of every image file fair-edge
    reads (images, ground-truth masks, the station's ROI and zone masks). what: the file's role, for messages.

    Pixels come as stored, in every format: an orientation tag is ignored (EXIF: ``IMREAD_IGNORE_ORIENTATION`` is
    added to ``flags``; a TIFF's: ``tiff_as_stored``). Otherwise the decoded array is as OpenCV gives it (depth,
    channels in OpenCV's order). Raises DataError naming the file when it is missing, unreadable,
    empty (0 bytes), truncated or of an unsupported format, or when OpenCV refuses it (what OpenCV said; an image
    over MAX_PIXELS = 2^30 pixels, e.g. a header declaring 100000 x 100000, is refused that way), never cv2.error;
    and, with ``check_damage``, when it is a JPEG whose data is damaged (``is_jpeg_damage``: bytes overwritten
    mid-file, by a bad SD card or a flaky share, decode with blocks of garbage and only an unnamed libjpeg line on
    stderr says so; read here by ``stderr_lines``: about 0.03 ms a JPEG, beside 1.3 ms to decode one of
    320 x 240 px). The check points fd 2 of the whole process at a private file, one decode at a time, so another
    thread's stderr line written meanwhile could be taken for the file's: training-side readers only (one thread
    reading a dataset); the station's (folder replay, console) leave it off (default).
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    if not data.size:
        raise DataError(f"{what} {path} is empty (0 bytes); replace it with the image file.")
    tiff_as_stored(data)
    is_jpeg = bytes(data[:3]) == JPEG_SIGNATURE
    try:
        checked = check_damage and is_jpeg
        with stderr_lines(is_jpeg_damage) if checked else contextlib.nullcontext([]) as damage:
            image = cv2.imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        said = " ".join(str(exc).split()).split("error: ", 1)[-1]   # without OpenCV's version and source line
        raise DataError(f"{what} {path} could not be decoded; OpenCV said: {said}. Images over 2^30 pixels "
                        f"({MAX_PIXELS} px, e.g. a header declaring 100000 x 100000) are refused; check the file "
                        "is the image you meant (not damaged) and save it at its real size.") from exc
    if image is None:
        raise DataError(f"{path} is not a readable {what} (truncated or an unsupported format).")
    if damage:
        raise DataError(f"{what} {path} is a damaged JPEG: libjpeg decoded it with the warning \"{damage[0]}\", so "
                        "some of its pixels are wrong (bytes overwritten or cut short on the card or share it came "
                        "from); expected a JPEG that decodes without one. Copy the image again from its source, or "
                        "remove it.")
    return image


def is_jpeg_damage(line: str) -> bool:
    """True for a line libjpeg writes to stderr when a JPEG's pixels come out wrong (``JPEG_DAMAGE_WARNINGS``:
    "Corrupt JPEG data: premature end of data segment", "Premature end of JPEG file", ...; or extraneous bytes
    before a restart marker 0xd0..0xd7, inside a scan); False for any other line (extraneous bytes before SOS 0xda
    or EOI 0xd9, a bad ICC marker: the pixels are right; another thread's log line)."""
    return line.startswith(JPEG_DAMAGE_WARNINGS) or _is_extraneous_in_scan(line)


def _is_extraneous_in_scan(line: str) -> bool:
    """True for libjpeg's "Corrupt JPEG data: N extraneous bytes before marker 0xd0".."0xd7": bytes lost inside
    a scan, between restart intervals (the MCUs around them decode wrong)."""
    head, _, marker = line.rpartition(" extraneous bytes before marker ")
    return (head.startswith(JPEG_EXTRANEOUS_BYTES) and head[len(JPEG_EXTRANEOUS_BYTES):].isdigit()
            and marker.strip().lower() in JPEG_RESTART_MARKERS)


@contextlib.contextmanager
def stderr_lines(keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """Send stderr (file descriptor 2, where C libraries such as libjpeg write) to a private file while the block
    runs; yields a list that holds, once the block is done, the lines written meanwhile that ``keep`` (line ->
    bool) accepts, without their newline. The other lines (another thread's log line, a decoder's harmless
    warning) are written on to stderr as they came, once the block is done, before stderr is pointed back (so
    they come before any line written after the block). One block at a time in the process
    (a lock), so a kept line is this block's or another thread's, never another block's. Where there is no stderr
    (closed) or no private file can be made, the block runs as it is and the list stays empty."""
    kept: list[str] = []
    with _STDERR_LOCK, _private_file() as sink:
        saved = _redirect_stderr(sink)
        try:
            yield kept
        finally:
            if saved is not None:
                _flush_python_stderr()
                read_to = _pass_lines_on(sink, 0, keep, saved, kept, whole_lines=True)
                _restore_stderr(saved)
                _pass_lines_on(sink, read_to, keep, 2, kept, whole_lines=False)   # written while passing on


def _pass_lines_on(sink, start: int, keep: Callable[[str], bool], fd: int, kept: list[str],
                   whole_lines: bool) -> int:
    """Read the lines written to ``sink`` (a file) from byte ``start`` on: those ``keep`` accepts are appended to
    ``kept`` as text without their line end, the others written on to file descriptor ``fd`` byte for byte
    (``_write_fd``). whole_lines: stop after the last line end, leaving a line still being written. Returns the
    byte offset read to. Read by offset (``os.pread``): fd 2 shares the file's position while it points there."""
    size = os.fstat(sink.fileno()).st_size
    data = os.pread(sink.fileno(), max(size - start, 0), start)
    if whole_lines:
        data = data[:data.rfind(b"\n") + 1]
    lines = [(raw, raw.decode("utf-8", "replace").rstrip("\r\n")) for raw in data.splitlines(keepends=True)]
    _write_fd(fd, b"".join(raw for raw, text in lines if not keep(text)))
    kept.extend(text for _, text in lines if keep(text))
    return start + len(data)


def _private_file():
    """A file of this process only, gone once closed (binary, read and write): in memory on Linux
    (``memfd_create``), else a temporary file; ``contextlib.nullcontext(None)`` when neither can be made (no
    memfd and no writable temporary folder)."""
    with contextlib.suppress(OSError, AttributeError):   # AttributeError: no memfd_create (not Linux)
        return open(os.memfd_create("fair-edge-stderr", os.MFD_CLOEXEC), "w+b")
    with contextlib.suppress(OSError):
        return tempfile.TemporaryFile()
    return contextlib.nullcontext(None)


def _redirect_stderr(sink) -> int | None:
    """Point file descriptor 2 at ``sink`` (a file, or None: nothing done) and return a descriptor of what it
    pointed at (``_restore_stderr`` takes it back); None when ``sink`` is None or stderr is closed. Python's own
    stderr is flushed first, so text written before goes where it was meant to."""
    if sink is None:
        return None
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:   # stderr closed: nothing to read libjpeg's lines from
        return None
    os.dup2(sink.fileno(), 2)
    return saved


def _restore_stderr(saved: int) -> None:
    """Point file descriptor 2 back at what ``saved`` (``_redirect_stderr``) holds, flushing Python's stderr first
    (text written during the block belongs to it), and close ``saved``."""
    _flush_python_stderr()
    os.dup2(saved, 2)
    os.close(saved)


def _write_fd(fd: int, data: bytes) -> None:
    """Write ``data`` to file descriptor ``fd`` (stderr, or a copy of it) in full (b"" writes nothing); a stderr
    that takes nothing (a broken pipe) is let be, as a C library's write to it would be."""
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data):]


def _flush_python_stderr() -> None:
    """Flush ``sys.stderr`` (a Python-level buffer), when there is one that can be flushed: none (None, pythonw),
    closed (ValueError) or a broken pipe (OSError) are let be, as for any write to it."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()


def tiff_as_stored(data: np.ndarray) -> None:
    """Set the Orientation tag of a TIFF's first IFD to 1 (as stored) in ``data``, the file's bytes (uint8, written
    in place), so OpenCV decodes its pixels as stored: its TIFF decoder turns and flips them by that tag whatever
    the flags (``IMREAD_UNCHANGED`` and ``IMREAD_IGNORE_ORIENTATION`` included; a tag of 6 turned a stored 96 x 64
    image into 64 x 96). Nothing else changes; data that is not a TIFF (classic or BigTIFF, either byte order), or
    has no such tag, is left as it is."""
    found = tiff_orientation_value(data)
    if found is not None:
        offset, fmt = found
        struct.pack_into(fmt, data, offset, 1)


def tiff_orientation_value(data: np.ndarray) -> tuple[int, str] | None:
    """Where a TIFF's first IFD holds its Orientation value: (byte offset in ``data``, struct format of the value:
    byte order + "H" for a SHORT as the standard has it, "I" for a LONG); None when ``data`` (a file's bytes) is not
    a TIFF, has no Orientation tag, or its header or first IFD is cut short (the decoder then names the file)."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None or data.size < 16:
        return None
    version = struct.unpack_from(order + "H", data, 2)[0]
    if version not in (42, 43):   # 42: classic TIFF, 43: BigTIFF (64-bit offsets)
        return None
    big = version == 43
    count_fmt, entry_size, value_at = ("Q", 20, 12) if big else ("H", 12, 8)
    first_ifd = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    entries_at = first_ifd + struct.calcsize(count_fmt)
    if entries_at > data.size:
        return None
    count = min(struct.unpack_from(order + count_fmt, data, first_ifd)[0], (data.size - entries_at) // entry_size)
    for entry in range(entries_at, entries_at + count * entry_size, entry_size):
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag == TIFF_ORIENTATION_TAG:
            fmt = {3: "H", 4: "I"}.get(kind)   # TIFF field types 3 SHORT, 4 LONG
            return (entry + value_at, order + fmt) if fmt else None
    return None


def read_mask_pixels(path: str | Path, what: str = "mask", drawn: bool = False) -> np.ndarray:
    """A mask image file -> (H, W) bool, True where it marks a pixel: the one reader of ground-truth, ROI and zone
    masks. what: the file's role, for messages ("ROI mask", "zone mask"). drawn: the mask is drawn white on black
    (ROI and zone masks: white = inside), not a label array (ground truth: any nonzero value marks a defect).

    A pixel is marked when its grey value and, where the file has one, its alpha both pass the rule (``marked``):
    any nonzero value; for a ``drawn`` mask at 8 bits, ``DRAWN_MASK_FROM`` (128) or more, so a JPEG's ringing
    around a white shape is not inside. Transparent pixels (alpha 0) are never marked: a shape drawn on a
    transparent layer (RGBA or grey + alpha PNG) is the shape, whatever colour its transparent pixels hold (white,
    as PIL and Photoshop leave them, read as the whole frame when alpha was dropped).

    Read at the file's own depth (``MASK_FLAGS``): a 16-bit mask holding 0 / 1 or 0 / 255 (a uint16 label array
    saved as PNG) keeps its pixels (cut to its high byte it read all zero). A colour mask is read by its luminance
    (0.299 R + 0.587 G + 0.114 B, rounded, at its depth: ``MASK_GREY_FLAGS``). Pixels as stored (``decode_file``):
    an orientation tag, EXIF or TIFF, is ignored, as for the images the mask is drawn on. A mask with no pixel set
    is returned as it is (the caller decides what that means). Raises DataError naming the file when it is missing,
    empty, unreadable or too large (``decode_file``)."""
    grey, alpha = mask_planes(path, what)
    pixels = marked(grey, drawn)
    return pixels if alpha is None else pixels & marked(alpha, drawn)


def mask_planes(path: str | Path, what: str = "mask") -> tuple[np.ndarray, np.ndarray | None]:
    """A mask file's (grey, alpha) planes, each (H, W) at the file's depth; alpha None when it has none. A grey file
    is decoded once; a colour one's grey plane is its luminance as OpenCV's grey decode gives it (decoded again:
    ``MASK_GREY_FLAGS``). Raises DataError naming the file as ``decode_file`` does."""
    stored = decode_file(path, MASK_FLAGS, what)
    if stored.ndim == 2 or stored.shape[2] == 1:
        return stored.reshape(stored.shape[:2]), None
    alpha = stored[:, :, -1] if stored.shape[2] in (2, 4) else None   # grey + alpha, or BGRA
    grey = stored[:, :, 0] if stored.shape[2] == 2 else decode_file(path, MASK_GREY_FLAGS, what)
    return grey, alpha


def marked(plane: np.ndarray, drawn: bool) -> np.ndarray:
    """(H, W) bool: the pixels of a mask plane (grey or alpha, any depth) that mark: nonzero, or for a ``drawn``
    8-bit plane ``DRAWN_MASK_FROM`` (128) or more (16-bit and float planes: nonzero, label arrays of 0 / 1)."""
    if drawn and plane.dtype == np.uint8:
        return plane >= DRAWN_MASK_FROM
    return plane > 0


def read_image(path: str | Path, check_damage: bool = False) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR (gray replicated, alpha dropped, 16-bit scaled).

    Pixels are taken as stored: an orientation tag, EXIF or a TIFF's, is ignored (``decode_file``). This is
    the one orientation policy of fair-edge, and 16-bit pixels are scaled by 1/257 (rounded): every model was
    trained on images read here, and the station's folder replay (``fair_edge.cameras.replay``) decodes with this
    same function and the masks (``read_mask_pixels``) the same way, so a part is inspected and
    scored as it was trained. A camera frame carries no EXIF.
    Raises DataError naming the file when it is missing, unreadable, empty, truncated or too large, and with
    ``check_damage`` when it is a damaged JPEG (``decode_file``: training-side readers only).
    """
    path = Path(path)
    image = decode_file(path, cv2.IMREAD_UNCHANGED, "image", check_damage)
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: expected 8- or 16-bit pixels; found {image.dtype}.")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


# ----------------------------------------------------------------------------- an image file's size from its header
HEADER_BYTES = 32   # a file's first bytes: its format's signature and, for PNG, BMP and WebP, its size
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # SOF0..SOF15 (not DHT, JPG, DAC)
JPEG_SEGMENTS_AT_MOST = 1000   # segments a JPEG's frame header is looked for in (APPn, DQT, DHT come first)
TIFF_WIDTH_TAG, TIFF_HEIGHT_TAG = 256, 257   # TIFF tags ImageWidth, ImageLength
TIFF_VALUE_FORMATS = {3: "H", 4: "I", 16: "Q"}   # TIFF field types SHORT, LONG, LONG8 (BigTIFF) -> struct format
TIFF_ENTRIES_AT_MOST = 4096   # entries of a first IFD read looking for its size


def stored_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) in pixels of the image file ``path`` as ``decode_file`` gives it (as stored: an orientation
    tag, EXIF or TIFF, is ignored), read from its header without decoding a pixel: a few bytes of a PNG, JPEG, BMP,
    TIFF or WebP (``HEADER_READERS``), read by Python under any file name. None when the header does not say: the
    file cannot be read, is of another format, or its header is cut short or holds a size of 0 (decode the file
    to know; ``decode_file`` names what is wrong with it)."""
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


def gray_2d(frame: np.ndarray) -> np.ndarray:
    """``frame`` with a trailing channel of 1 dropped: an (H, W, 1) gray frame, as a mono camera driver may hand it,
    -> its (H, W) view (no copy); any other array is returned as it is. ``preprocess.check_frame`` accepts such
    frames by this rule (written inline there: the frame path runs no code of this file, tests/test_frame_path.py);
    every drawer or checker of a frame that turns (H, W) gray into BGR or reads it as gray (the recorder's NG
    images, the console's overlay, ``collect``'s quality checks) uses this function, so a frame the station
    inspects is drawn and checked too."""
    return frame[:, :, 0] if frame.ndim == 3 and frame.shape[2] == 1 else frame


def encode_image(image: np.ndarray, suffix: str = ".png") -> bytes:
    """``image`` ((H, W, 3) or (H, W) uint8) encoded as the format ``suffix`` names (".png", ".jpg"; OpenCV's
    defaults: JPEG quality 95). Raises DataError naming the image's shape and dtype when OpenCV refuses it."""
    try:
        ok, data = cv2.imencode(suffix, image)
        said = "" if ok else "it returned no data"
    except cv2.error as exc:
        ok, said = False, " ".join(str(exc).split()).split("error: ", 1)[-1]
    if not ok:
        raise DataError(f"OpenCV could not encode the image ({shape_text(image)}) as {suffix}: {said}; expected "
                        "(H, W, 3) or (H, W) uint8 pixels")
    return data.tobytes()


def write_image(path: str | Path, image: np.ndarray, suffix: str | None = None) -> None:
    """Write ``image`` ((H, W, 3) or (H, W) uint8) as the file ``path``, in the format ``suffix`` names (None: the
    path's own suffix, ".png" or ".jpg"), whole or not at all and under any file name (``disk.write_whole``; OpenCV's own
    writer crashes on a name that is not UTF-8). Missing parent folders are made. Raises DataError naming the file
    when it cannot be encoded or written."""
    path = Path(path)
    try:
        data = encode_image(image, suffix or path.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, data, "image", durable=False)
    except (OSError, DataError) as exc:
        raise DataError(f"could not write {path} ({getattr(exc, 'strerror', None) or exc}); expected a writable "
                        "folder with free space; an earlier file of that name is left as it was") from None


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write ``image`` ((H, W, 3) or (H, W) uint8) as the PNG ``path`` (whatever its suffix), whole or not at all,
    under any file name (``write_image``). Raises DataError naming the file when it cannot be encoded or written."""
    write_image(path, image, ".png")


def shape_text(image: object) -> str:
    """``(H, W, C) dtype`` of an array for a message; the type's name for anything else (``NoneType``: none)."""
    return f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__


def read_stored(path: str | Path, what: str) -> np.ndarray | None:
    """An image fair-edge stored (an NG frame, a reviewed part) as written, (H, W) or (H, W, C) uint8 as a rule,
    read under any file name (``decode_file``: OpenCV's reader crashes on a name that is not UTF-8); None when it
    is gone or unreadable. what: the image's role, for the log."""
    try:
        return decode_file(path, cv2.IMREAD_UNCHANGED, what)
    except DataError:
        return None


def utf8_problem(path: str | Path) -> str:
    """"" when ``path`` can be handed to OpenCV by name (it is UTF-8), else what is wrong, for a message: the path
    with its bytes that are not UTF-8 written \\xNN and the first of them, e.g. "clip\\xe9.avi is not UTF-8 (byte
    0xe9 at byte offset 4)". OpenCV crashes the process (segfault) on a name that is not UTF-8."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", "backslashreplace")
        return f"{shown} is not UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start})"
    return ""


def is_hidden_name(name: str) -> bool:
    """True for a hidden file name, one starting with ".": a macOS AppleDouble ``._NAME.png`` (the Finder's
    metadata, not an image, left on a USB stick or share a Mac wrote to), ``.DS_Store``, an editor's ``.NAME.swp``.
    No such file is ever taken for an image."""
    return name.startswith(".")


def image_files(folder: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name: files whose suffix is one of ``suffixes``
    (lower-case, compared case-insensitively) and whose name is not hidden (``is_hidden_name``: no ``._NAME.png``).
    The one rule of which files of a folder are images (training, eval, build, the station's folder replay).
    Raises OSError when the folder cannot be read."""
    return sorted(p for p in Path(folder).iterdir()
                  if not is_hidden_name(p.name) and p.suffix.lower() in suffixes and p.is_file())


def left_out_images(folder: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The image files directly inside ``folder`` that ``image_files(folder, suffixes)`` leaves out for their suffix,
    sorted by name: files (not hidden) whose suffix, compared case-insensitively, is an image format OpenCV reads
    that ``suffixes`` (lower-case) does not hold (``OTHER_IMAGE_SUFFIXES``: a ``.pgm``, ``.jp2``, ``.gif``).
    Any other file (a ``README.txt``, a ``labels.csv``) is no image and not named. Raises OSError when the folder
    cannot be read."""
    other = set(OTHER_IMAGE_SUFFIXES) - set(suffixes)
    return sorted(p for p in Path(folder).iterdir()
                  if not is_hidden_name(p.name) and p.suffix.lower() in other and p.is_file())


# ----------------------------------------------------------------------------- what a folder listing leaves out
NAMED_AT_MOST = 5  # how many files (or CSV rows) one message names; the rest are counted
SCANNED_AT_MOST = 10_000  # entries one subfolder's image count visits (os.walk), so a listing stays quick on a NAS


def is_dataset_folder(name: str) -> bool:
    """False for a folder no dataset keeps images in: a hidden one (``.ipynb_checkpoints``, ``.Trashes``) or a NAS's
    "@" folder (Synology's ``@eaDir`` thumbnails, ``@Recycle``); True for any other name."""
    return not (is_hidden_name(name) or name.startswith("@"))


LEFT_OUT_FIX = "save them as PNG to use them, or move them out of the folder"   # files left out for their suffix


def left_out_text(left_out, suffixes) -> str:
    """The image files a listing by ``suffixes`` leaves out for their suffix (``left_out_images``: a ``.pgm``, a
    ``.gif``; Paths), for a message: "2 image file(s) left out: their suffix is none of those fair-edge reads as
    images (.png, ...): f0.pgm, f1.pgm" (``named_text``); the caller adds ``LEFT_OUT_FIX``."""
    return (f"{len(left_out)} image file(s) left out: their suffix is none of those fair-edge reads as images "
            f"({', '.join(suffixes)}): {named_text(p.name for p in left_out)}")


def named_text(items) -> str:
    """The first NAMED_AT_MOST of ``items`` (strings) joined by commas, and "and N more"."""
    items = list(items)
    more = f" and {len(items) - NAMED_AT_MOST} more" if len(items) > NAMED_AT_MOST else ""
    return ", ".join(items[:NAMED_AT_MOST]) + more


def unread_text(folder: str | Path, suffixes: tuple[str, ...], scanned_at_most: int = SCANNED_AT_MOST) -> str:
    """What a listing of ``folder`` (``image_files(folder, suffixes)``) leaves out that may be images
    (``unread_entries``), for a message: "; not read: lot2/ (25 images): ... flatten them ... or pass the subfolder;
    3 broken link(s): img1.png -> /mnt/nas/img1.png ...". "" when there is nothing of the kind (or the folder cannot
    be read). The one wording of training's image folders and the station's folder replay."""
    folder = Path(folder)
    try:
        subfolders, links = unread_entries(folder, suffixes, scanned_at_most)
    except OSError:
        return ""
    text = ""
    if subfolders:
        text += (f"; not read: {named_text(f'{p.name}/ ({n} images)' for p, n in subfolders)}: images in subfolders "
                 f"are not read; flatten them into {folder} or pass the subfolder")
    if links:
        text += (f"; {len(links)} broken link(s): {named_text(f'{p.name} -> {target}' for p, target in links)}: "
                 "their targets do not exist (a share not mounted, a moved folder?); mount the share or copy the "
                 "images in")
    return text


def unread_entries(folder: str | Path, suffixes: tuple[str, ...], scanned_at_most: int = SCANNED_AT_MOST
                   ) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """What ``folder`` holds besides its files that may be images, each list sorted by name:

    - (subfolder, how many images it holds: "25", or "10000+" past ``scanned_at_most`` entries) for each subfolder
      holding images (``suffixes``, lower-case) in it or below (``count_images_below``); hidden and NAS folders
      (``is_dataset_folder``) are left out;
    - (link, its target) for each symbolic link whose target does not exist (a NAS share not mounted), named as an
      image (``suffixes`` or any other suffix OpenCV reads) or with no suffix (a folder); hidden names are left out.

    One ``os.scandir`` pass (entry types from the directory listing: no extra call per image file on most file
    systems). Raises OSError when ``folder`` cannot be read."""
    link_suffixes = (*suffixes, *OTHER_IMAGE_SUFFIXES, "")
    subfolders, links = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if is_hidden_name(entry.name):
                continue
            if entry.is_symlink() and path.suffix.lower() in link_suffixes and not os.path.exists(entry.path):
                links.append((path, os.readlink(entry.path)))
            elif is_dataset_folder(entry.name) and entry.is_dir():
                count, complete = count_images_below(path, suffixes, scanned_at_most)
                if count:
                    subfolders.append((path, f"{count}" if complete else f"{count}+"))
    return sorted(subfolders), sorted(links)


def count_images_below(folder: str | Path, suffixes: tuple[str, ...], scanned_at_most: int = SCANNED_AT_MOST
                       ) -> tuple[int, bool]:
    """(image files in ``folder`` and its subfolders, whether all were counted): names with a suffix of ``suffixes``
    (lower-case) that are not hidden; hidden and NAS folders are skipped, links to folders not followed, and the
    count stops after ``scanned_at_most`` entries (complete False). Unreadable folders count 0."""
    count, seen = 0, 0
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if is_dataset_folder(d)]
        seen += len(dirs) + len(files)
        count += sum(1 for f in files if not is_hidden_name(f) and Path(f).suffix.lower() in suffixes)
        if seen > scanned_at_most:
            return count, False
    return count, True

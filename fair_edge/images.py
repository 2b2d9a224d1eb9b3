"""Image files -> frames: the one decoder every reader of an image file uses (training, eval, build, the station's
folder replay; ground-truth, ROI and zone masks through ``read_mask_pixels``), so a file gives the same pixels on
every path and a bad file is a DataError naming it, never an OpenCV exception; and the one image writer
(``write_png``, ``write_image``; ``encode_image`` + ``write_whole`` for a caller that counts encoder and disk failures
apart: whole or not at all, any file name). Which files of a folder are images is ``fair_edge.image_folders``'s
job, an image file's size from its header ``fair_edge.image_size``'s.

A JPEG whose data is damaged (bytes overwritten mid-file, or cut short) is a DataError naming it too, when the
caller asks (``check_damage``: the training-side readers, ``fair_edge.training.pixels``): libjpeg decodes such a file
anyway, with blocks of garbage or grey, and says so only in an unnamed line on stderr, which ``decode_file`` then
reads (``fair_edge.jpeg_damage.stderr_lines``: it points fd 2 of the whole process at a private file while the JPEG
decodes, so the station's readers, the folder replay and the console, never ask for it).

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
from pathlib import Path

import cv2
import numpy as np

from fair_edge.disk import write_whole
from fair_edge.errors import DataError
from fair_edge.jpeg_damage import is_jpeg_damage, stderr_lines

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
JPEG_SIGNATURE = b"\xff\xd8\xff"   # SOI and the next marker's 0xFF: the first bytes of every JPEG file


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

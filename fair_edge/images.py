"""Image files -> frames: the one decoder every reader of an image file uses (training, eval, build, the station's
folder replay; ground-truth, ROI and zone masks through ``read_mask_pixels``), so a file gives the same pixels on
every path and a bad file is a DataError naming it, never an OpenCV exception; the one image writer (``write_png``,
``write_image``; ``encode_image`` + ``write_whole`` for a caller that counts encoder and disk failures apart: whole or
not at all, any file name); and the one rule of which files of a folder are images (``image_files``, with
``left_out_images`` naming the image files a listing leaves out for their suffix, and ``unread_text`` the subfolders
holding images and the broken links it leaves unread: training's image folders and the station's folder replay).

One orientation policy: pixels are taken as stored. An EXIF orientation tag (JPEG, PNG, WebP) is ignored
(``IMREAD_IGNORE_ORIENTATION``), and so is a TIFF's Orientation tag, which OpenCV's TIFF decoder applies whatever
the flags (``tiff_as_stored``).

No file name reaches OpenCV: its readers and writers take a ``str``, and a name that is not UTF-8 (a Latin-1 folder
from a Windows share: surrogate escapes in Python) crashes the process (segfault) there. Files are read and written
by Python and decoded / encoded in memory; a video, which only OpenCV can open by name, is checked first
(``utf8_problem``)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from fair_edge.errors import DataError

MAX_PIXELS = 2**30  # OpenCV's limit on a decoded image (CV_IO_MAX_IMAGE_PIXELS), pixels; larger ones are refused
# a mask file (ground-truth, ROI, zone) decoded: one channel (a colour mask by its luminance), at its stored depth
MASK_FLAGS = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
TIFF_ORIENTATION_TAG = 274   # TIFF tag Orientation; value 1 = rows top to bottom, columns left to right (as stored)
# image formats OpenCV reads whose suffix is in no fair-edge image list (lower-case): a folder listing names the
# files it leaves out for that reason (``left_out_images``). JPEG / BMP aliases, Netpbm, JPEG 2000, float (PFM,
# OpenEXR, Radiance), Sun raster, AVIF, GIF, JPEG XL.
OTHER_IMAGE_SUFFIXES = (".jpe", ".jfif", ".dib", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".jp2", ".pfm", ".exr",
                        ".hdr", ".pic", ".sr", ".ras", ".avif", ".gif", ".jxl")


def decode_file(path: str | Path, flags: int = cv2.IMREAD_UNCHANGED, what: str = "image") -> np.ndarray:
    """Read a file and decode it with OpenCV's ``imdecode(flags)``: the one decoder of every image file fair-edge
    reads (images, ground-truth masks, the station's ROI and zone masks). what: the file's role, for messages.

    Pixels come as stored, in every format: an orientation tag is ignored (EXIF: ``IMREAD_IGNORE_ORIENTATION`` is
    added to ``flags``; a TIFF's: ``tiff_as_stored``). Otherwise the decoded array is as OpenCV gives it (depth,
    channels in OpenCV's order). Raises DataError naming the file when it is missing, unreadable,
    empty (0 bytes), truncated or of an unsupported format, or when OpenCV refuses it (what OpenCV said; an image
    over MAX_PIXELS = 2^30 pixels, e.g. a header declaring 100000 x 100000, is refused that way), never cv2.error.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    if not data.size:
        raise DataError(f"{what} {path} is empty (0 bytes); replace it with the image file.")
    tiff_as_stored(data)
    try:
        image = cv2.imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        said = " ".join(str(exc).split()).split("error: ", 1)[-1]   # without OpenCV's version and source line
        raise DataError(f"{what} {path} could not be decoded; OpenCV said: {said}. Images over 2^30 pixels "
                        f"({MAX_PIXELS} px, e.g. a header declaring 100000 x 100000) are refused; check the file "
                        "is the image you meant (not damaged) and save it at its real size.") from exc
    if image is None:
        raise DataError(f"{path} is not a readable {what} (truncated or an unsupported format).")
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


def read_mask_pixels(path: str | Path, what: str = "mask") -> np.ndarray:
    """A mask image file -> (H, W) bool, True where its stored value is nonzero: the one reader of ground-truth,
    ROI and zone masks. what: the file's role, for messages ("ROI mask", "zone mask").

    Read at the file's own depth (``MASK_FLAGS``): a 16-bit mask holding 0 / 1 or 0 / 255 (a uint16 label array
    saved as PNG) keeps its pixels (cut to its high byte it read all zero). A colour mask is read by its luminance
    (0.299 R + 0.587 G + 0.114 B, rounded, at its depth). Pixels as stored (``decode_file``): an orientation tag,
    EXIF or TIFF, is ignored, as for the images the mask is drawn on. A mask with no pixel set is returned as it is
    (the caller decides what that means). Raises DataError naming the file when it is missing, empty, unreadable
    or too large (``decode_file``)."""
    return decode_file(path, MASK_FLAGS, what) > 0


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR (gray replicated, alpha dropped, 16-bit scaled).

    Pixels are taken as stored: an orientation tag, EXIF or a TIFF's, is ignored (``decode_file``). This is
    the one orientation policy of fair-edge, and 16-bit pixels are scaled by 1/257 (rounded): every model was
    trained on images read here, and the station's folder replay (``fair_edge.cameras.replay``) decodes with this
    same function and the masks (``read_mask_pixels``) the same way, so a part is inspected and
    scored as it was trained. A camera frame carries no EXIF.
    Raises DataError naming the file when it is missing, unreadable, empty, truncated or too large (``decode_file``).
    """
    path = Path(path)
    image = decode_file(path, cv2.IMREAD_UNCHANGED, "image")
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


def write_whole(path: str | Path, data: bytes) -> None:
    """Write ``data`` as the file ``path`` in full or not at all: by Python to ``PATH.tmp`` (any name Python can open,
    UTF-8 or not) and renamed over ``path``, so an earlier file of that name stays whole until the new one is
    complete. The folder must exist. Raises OSError (``PATH.tmp`` removed) when it cannot be written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_image(path: str | Path, image: np.ndarray, suffix: str | None = None) -> None:
    """Write ``image`` ((H, W, 3) or (H, W) uint8) as the file ``path``, in the format ``suffix`` names (None: the
    path's own suffix, ".png" or ".jpg"), whole or not at all and under any file name (``write_whole``; OpenCV's own
    writer crashes on a name that is not UTF-8). Missing parent folders are made. Raises DataError naming the file
    when it cannot be encoded or written."""
    path = Path(path)
    try:
        data = encode_image(image, suffix or path.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, data)
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

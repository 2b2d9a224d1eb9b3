"""Which files of a folder are images: the one rule (``image_files``: by suffix, hidden names left out), with
``left_out_images`` naming the image files a listing leaves out for their suffix, and ``unread_text`` the
subfolders holding images and the broken links it leaves unread: training's image folders and the station's folder
replay say the same."""

from __future__ import annotations

import os
from pathlib import Path

# image formats whose suffix is in no fair-edge image list (lower-case): a folder listing names the files it leaves
# out for that reason (``left_out_images``). OpenCV reads JPEG / BMP aliases, Netpbm, JPEG 2000, float (PFM,
# OpenEXR, Radiance), Sun raster, AVIF, GIF, JPEG XL; a phone's photos (HEIC / HEIF, the iPhone's default) and
# camera RAW files (DNG, Canon CR2, Nikon NEF, Sony ARW) it does not.
OTHER_IMAGE_SUFFIXES = (".jpe", ".jfif", ".dib", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".jp2", ".pfm", ".exr",
                        ".hdr", ".pic", ".sr", ".ras", ".avif", ".gif", ".jxl",
                        ".heic", ".heif", ".dng", ".cr2", ".nef", ".arw")


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

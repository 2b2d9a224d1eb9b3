"""The files the console serves: ``/files/`` from the station's output folder and ``/records/`` from the recorder's
folder (``record.dir``, where it is elsewhere), and only the kinds of file the console links to or names
(``SERVED_SUFFIXES``: NG and review images, the JSONL logs and their rotations, JSON and CSV tables). A path that
resolves outside the folder (``..``, an absolute path, a symlink) or to a file of another kind (a copy of the station
file: ``station.yaml.bak``, ``old/station.yml``, an editor's ``station.yaml~``) is refused with 404, and so is the
station file itself (it holds ``console.token``) and a temporary copy of it where a folder served holds it (a warning
at start names a station file inside a folder served: ``station_file_warning``); a file is streamed in chunks, up to
its size when opened. The checks hold for the file opened, not only for its name: the path checked (``safe_file``)
is opened without following a link and checked again once open (``open_file_part``: a regular file, its real path
inside the folder, not the station file), so a file or a folder above it swapped for a link (or a FIFO) between the
check and the open is 404 too."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from pathlib import Path
from typing import BinaryIO

from starlette.responses import Response, StreamingResponse

from fair_edge.disk import is_temporary_of
from fair_edge.line.settings import IMAGE_FORMATS

FILE_CHUNK_BYTES = 64 * 1024   # /files/ and /records/ send a file in pieces this size, never whole
# what /files/ and /records/ serve, by the file's suffix (case-insensitive): the kinds the console links to or names,
# NG overlays and frames (record.image_format), review images (.png), the logs (verdicts, gate, reviews, audit: .jsonl,
# with their rotations NAME.jsonl.N), summary.json and tune.json, tune.csv; any other file is 404 whatever it holds (a
# copy of the station file, console.token in it: station.yaml.bak, station.yml, station.yaml~)
SERVED_SUFFIXES = frozenset({*(f".{ext}" for ext in IMAGE_FORMATS), ".png", ".json", ".jsonl", ".csv"})
ROTATED_LOG_SUFFIX = ".jsonl"   # a log rotated by line.jsonl.RotatingJsonl: NAME.jsonl.1 .. NAME.jsonl.N
# how /files/ and /records/ open the file ``safe_file`` checked (``open_file_part``): never through a link (one
# swapped in after the check fails to open: ELOOP), never waiting (a FIFO swapped in opens at once, and is then
# refused), not inherited by a child process; each flag 0 where the OS has none
OPEN_SERVED = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
OPEN_FD_LINKS = "/proc/self/fd"   # Linux: each open descriptor as a link to the real path of its file


def safe_file(root: Path, rel: str, station_file: Path | None = None) -> Path | None:
    """``root / rel`` if it is a file inside ``root`` after resolving links and ``..``, of a kind the console serves
    (``served_kind``, judged by the name of the file a link leads to) and not the station file (``withheld``: it
    holds ``console.token``); else None."""
    root = root.resolve()
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not served_kind(path.name) or not path.is_file() \
            or withheld(path, station_file):
        return None
    return path


def served_kind(name: str) -> bool:
    """Whether a file named ``name`` is of a kind /files/ and /records/ serve: its suffix one of ``SERVED_SUFFIXES``
    (any case), or a rotated log's ``NAME.jsonl.N`` (N: ASCII digits). ``station.yaml``, ``station.yaml.bak``,
    ``station.yaml~`` and ``station.yaml.1`` are not."""
    stem, dot, last = name.rpartition(".")
    if dot and last.isascii() and last.isdigit() and stem.lower().endswith(ROTATED_LOG_SUFFIX):
        return True
    return Path(name).suffix.lower() in SERVED_SUFFIXES


def withheld(path: Path, station_file: Path | None) -> bool:
    """Whether resolved ``path`` is the station file (through a link: its target) or one of the temporary copies a
    threshold's write leaves beside it for a moment (``.XXXXXXXX.NAME.tmp``, ``disk.is_temporary_of``,
    ``tuning.write_station_threshold``): never served, whatever folder holds them (``console.token`` is in it)."""
    if station_file is None:
        return False
    try:
        target = Path(station_file).resolve()
    except (OSError, RuntimeError):   # a link loop: compare with the name as given
        target = Path(os.path.abspath(station_file))
    if path == target:
        return True
    return path.parent == target.parent and is_temporary_of(path.name, target.name)


def station_file_warning(station_file: Path | None, folders: dict[str, Path | None]) -> str:
    """The warning at start for a station file inside a folder the console serves (``folders``: what it is -> the
    folder, None: none): neither it (``withheld``) nor a copy of it under another name (``station.yaml.bak``,
    ``station.yaml~``: not of a kind served, ``served_kind``) is served, but a copy saved as one of the kinds served
    (``SERVED_SUFFIXES``) would be, with ``console.token``; "" when it is in none of them."""
    if station_file is None:
        return ""
    target = Path(station_file).resolve()
    held: dict[Path, list[str]] = {}   # folder -> what it is (the record folder is often the output folder)
    for what, folder in folders.items():
        if folder is not None and target.is_relative_to(Path(folder).resolve()):
            held.setdefault(Path(folder).resolve(), []).append(what)
    if not held:
        return ""
    named = " and ".join(f"{' and '.join(whats)} {folder}" for folder, whats in held.items())
    kinds = ", ".join(sorted(SERVED_SUFFIXES))
    return (f"station file {station_file} is inside the console's {named}, whose images, logs and tables ({kinds} "
            "files) anyone who reaches the console reads without the token: the station file itself is not served "
            "(it holds console.token), nor is a copy of it under another name (station.yaml.bak, an editor's "
            "station.yaml~), but a copy saved there as one of those kinds (station.json) would be; move the station "
            "file out of the output and record folders")


def open_file_part(path: Path, root: Path, station_file: Path | None = None) -> tuple[BinaryIO, int] | None:
    """(binary file object, its size in bytes now) of ``path``, the file ``safe_file`` checked by name under ``root``:
    what a response sends of a file that may grow. None when what opens there now is not a file it would serve:
    the name is opened without following a link or waiting (``OPEN_SERVED``: a link swapped in after the check does
    not open, a FIFO opens at once) and the checks are made again on the file opened (``opened_is_served``), so a
    file or a folder above it swapped for a link between the check and the open serves nothing. Raises OSError
    when ``path`` cannot be opened (gone, a link now)."""
    fd = os.open(path, OPEN_SERVED)
    try:
        info = os.fstat(fd)
        if not opened_is_served(fd, info, path, root, station_file):
            os.close(fd)
            return None
        if OPEN_SERVED & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return handle, info.st_size


def opened_is_served(fd: int, info: os.stat_result, path: Path, root: Path, station_file: Path | None) -> bool:
    """Whether the file open as ``fd`` (``info``: its fstat) passes ``safe_file``'s checks itself, not only its
    name did: a regular file (no FIFO, device or folder), whose real path (``opened_path``) is inside ``root``
    resolved, of a kind served (``served_kind``) and not the station file (``withheld``: by its path, and by its
    device and inode, a hard link to it too)."""
    if not stat.S_ISREG(info.st_mode):
        return False
    real = opened_path(fd, info, path)
    if real is None or not real.is_relative_to(Path(root).resolve()) or not served_kind(real.name):
        return False
    return not withheld(real, station_file) and not same_file(info, station_file)


def opened_path(fd: int, info: os.stat_result, path: Path) -> Path | None:
    """The real path of the file open as ``fd`` (``info``: its fstat): the kernel's own (``OPEN_FD_LINKS``, Linux);
    where there is none, ``path`` resolved again when that is the same file (device and inode). None when it cannot
    be told: the file was removed or replaced since it was opened."""
    try:
        real = os.readlink(f"{OPEN_FD_LINKS}/{fd}")
    except OSError:   # no /proc (macOS, a container without it)
        try:
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return resolved if same_file(info, resolved) else None
    return Path(real) if os.path.isabs(real) and not real.endswith(" (deleted)") else None


def same_file(info: os.stat_result, other: Path | None) -> bool:
    """Whether ``other`` (links followed) is the file whose stat is ``info`` (the same device and inode); False for
    None or a path that cannot be read."""
    if other is None:
        return False
    try:
        named = os.stat(other)
    except (OSError, ValueError):
        return False
    return (named.st_dev, named.st_ino) == (info.st_dev, info.st_ino)


def file_chunks(handle: BinaryIO, size: int, chunk: int = FILE_CHUNK_BYTES):
    """The first ``size`` bytes of open binary ``handle``, ``chunk`` bytes at a time (closed at the end or when
    the client leaves): memory per download is one chunk, however large the file."""
    with handle:
        left = size
        while left > 0:
            data = handle.read(min(chunk, left))
            if not data:   # truncated meanwhile (a log rotated): the client sees a short body, not garbage
                return
            left -= len(data)
            yield data


async def serve_file(root: Path | None, rel: str, station_file: Path | None = None) -> Response:
    """``rel`` under ``root`` (traversal-safe, of a kind served, never the station file: ``safe_file``; else 404)
    streamed up to its size when opened: the station may be appending to it, and a body longer than its
    Content-Length is a broken response. The file sent is the one opened, checked again once open
    (``open_file_part``): one swapped for a link or a FIFO after the check is 404."""
    path = None if root is None else safe_file(root, rel, station_file)
    if path is None:
        return Response("not found", status_code=404)
    try:
        opened = await asyncio.to_thread(open_file_part, path, root, station_file)
    except OSError:
        return Response("not found", status_code=404)
    if opened is None:   # not what was checked: swapped meanwhile
        return Response("not found", status_code=404)
    handle, size = opened
    return StreamingResponse(file_chunks(handle, size), headers={"Content-Length": str(size)},
                             media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

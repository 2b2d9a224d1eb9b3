"""What a `fair-edge collect` killed while saving a frame (kill -9, a power cut) leaves in its output folder, found
and removed by the next collect into it (``Collector``):

- part files: each frame is written whole to a hidden ``.STEM.<16 hex>.part`` first (``collect.write_part``), then
  linked to its name; killed in between, the part file stays (``remove_stale_parts``);
- empty PNGs: on a file system without hard links (FAT / exFAT) the frame's name is created empty and the part file
  renamed over it (``collect._link_or_move``); killed in between, an empty ``NAME.png`` stays, which a later
  ``train`` lists and meets as an unreadable image (``remove_empty_pngs``).

Only files unchanged for over ``PART_STALE_S`` go: a live collect writing into the same folder holds either for
milliseconds. A file that cannot be removed, or a folder that cannot be listed, is a warning naming it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"   # a frame being written: ``.STEM.<16 hex>.part``, hidden and no image suffix, so no listing of
                        # images (``image_folders.image_files``: train, eval, build) takes one a crash left behind
PART_NAME = re.compile(r"\..+\.[0-9a-f]{16}" + re.escape(PART_SUFFIX))   # write_part's names, and only those
PART_STALE_S = 60.0   # s unchanged after which a part file (or an empty reserved PNG) is one a killed collect left: a
                      # live collect writes a frame's part file in one write and links it at once (milliseconds)


def remove_stale_parts(folder: Path, now: Callable[[], float] = time.time, stale_s: float = PART_STALE_S) -> int:
    """Remove the part files (``.STEM.<16 hex>.part``, ``PART_NAME``; no other name) directly in ``folder`` whose
    modification time is more than ``stale_s`` seconds before ``now()`` (s since the epoch, the clock file times
    use): a second collect writing into the same folder keeps its own. Returns how many were removed."""
    found = _stale_files(folder, lambda entry: PART_NAME.fullmatch(entry.name) is not None, now() - stale_s,
                         ".NAME.XXXXXXXXXXXXXXXX.part")
    return sum(_removed(path, "the part file") for path in found)


def remove_empty_pngs(folder: Path, now: Callable[[], float] = time.time, stale_s: float = PART_STALE_S) -> list[Path]:
    """Remove the empty ``.png`` files directly in ``folder`` unchanged for more than ``stale_s`` seconds before
    ``now()``: names a collect killed on a file system without hard links had reserved. An empty file holds no
    image, so nothing is lost; a live collect's reserved name is milliseconds old, and no collect takes an existing
    name (O_EXCL). Returns the paths removed."""
    def empty_png(entry: os.DirEntry) -> bool:
        return entry.name.lower().endswith(".png") and entry.stat(follow_symlinks=False).st_size == 0

    found = _stale_files(folder, empty_png, now() - stale_s, "empty NAME.png")
    return [path for path in found if _removed(path, "the empty PNG")]


def _stale_files(folder: Path, wanted: Callable[[os.DirEntry], bool], cutoff: float, kind: str) -> list[Path]:
    """The regular files directly in ``folder`` that ``wanted`` takes, last modified before ``cutoff`` (s since the
    epoch); one that goes while this looks is left out. [] with a warning when the folder cannot be listed."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and wanted(entry) and \
                            entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        found.append(Path(entry.path))
                except FileNotFoundError:
                    continue
    except OSError as exc:
        log.warning("could not look for what a killed collect left in %s (%s); delete any %s there by hand",
                    folder, exc.strerror or exc, kind)
    return found


def _removed(path: Path, what: str) -> bool:
    """Remove the leftover ``path`` (``what``: "the part file"): True when this call removed it; False when it is gone
    already (another collect's sweep) or cannot be removed (logged)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not remove %s %s a killed collect left (%s); it holds no image, delete it by hand", what,
                    path, exc.strerror or exc)
        return False
    return True

"""The recorder's disk guard: whether NG images may be saved under ``record.dir`` now.

When the free space under ``record.dir`` falls below ``min_free_mb`` plus what verdicts.jsonl and gate.jsonl may
still grow into before their rotation caps them (``(keep_files + 1) x max_log_mb`` each, less what they hold), or its
free inodes (files, ``df -i``) below what the logs' rotation may still make (``keep_files + 1`` each) plus
``MIN_FREE_INODES``, images are no longer saved (counted ``images_skipped`` by the image writer, one warning naming
bytes or inodes) while the verdict log goes on; saving resumes when room is back. Both are re-read at most every
``DISK_CHECK_S``, on the image writer's thread (``line.image_writer``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import RecordSettings

# the recorder's logger: these lines were the recorder's before its disk guard had a module of its own (journal
# filters and tests select them by name)
log = logging.getLogger("fair_edge.line.recorder")

DISK_CHECK_S = 1.0   # re-read free space (bytes and inodes) at most this often
# inodes (files) kept free under record.dir beside the ones the logs' rotation may still need ((keep_files + 1) per
# log): the NG images saved between two checks (DISK_CHECK_S apart, 2 files per NG part: 1000 covers 500 NG parts a
# second), the temporaries of summary.json and the console's files, and anything else the station creates there
MIN_FREE_INODES = 1000
LOGS = 2              # the JSONL logs in record.dir: verdicts.jsonl, gate.jsonl


class DiskRoom:
    """Whether NG images may take room under ``record.dir`` (``has_room``), leaving what the logs need free.

    folder: ``record.dir``; settings: its ``min_free_mb`` and ``keep_files``. logs_room_mb: MB the verdict and gate
    logs may still grow into before rotation caps them (``RowLogs.room_mb``). disk_usage:
    ``shutil.disk_usage``-like; inodes: ``disk.free_inodes``-like, free inodes (files) under a folder or None where
    the file system has no fixed number; clock: monotonic seconds (tests hand in fakes of all three). check_s: both are
    re-read at most this often, seconds. warn_once: the recorder's once-per-kind warning (a free space that cannot be
    read).
    """

    def __init__(self, folder: Path, settings: RecordSettings, logs_room_mb: Callable[[], float],
                 disk_usage: Callable[[Path], Any], inodes: Callable[[Path], int | None], clock: Callable[[], float],
                 check_s: float, warn_once: Callable[..., None]) -> None:
        self.dir, self.settings = folder, settings
        self._logs_room_mb = logs_room_mb
        self._disk_usage, self._inodes, self._clock = disk_usage, inodes, clock
        self._check_s = check_s
        self._warn_once = warn_once
        self._ok = True
        self._checked = float("-inf")

    def has_room(self) -> bool:
        """Whether NG images may be saved: under ``record.dir`` (both re-read at most every ``check_s``) the free
        space is at least ``min_free_mb`` plus what the logs may still grow into (``_logs_room_mb``), and the free
        inodes (files) at least what the logs' rotation may still make plus ``MIN_FREE_INODES`` (``_inodes_needed``),
        so images never take the room, bytes or files, the logs' own rotation needs; one warning when that stops
        (``_warn_no_room``: naming inodes, ``df -i``, where they are short), one line when it resumes."""
        now = self._clock()
        if now - self._checked < self._check_s:
            return self._ok
        self._checked = now
        try:
            free_mb = self._disk_usage(self.dir).free / (1024 * 1024)
        except OSError as exc:
            self._warn_once("disk-usage", "cannot read free space of %s: %s", self.dir, exc)
            return self._ok
        inodes = self._inodes(self.dir)
        logs_mb = self._logs_room_mb()
        bytes_ok = free_mb >= self.settings.min_free_mb + logs_mb
        ok = bytes_ok and (inodes is None or inodes >= self._inodes_needed())
        if not ok and self._ok:
            self._warn_no_room(free_mb, logs_mb, inodes, bytes_ok)
        elif ok and not self._ok:
            log.info("%.0f MB%s free under %s again: saving NG images", free_mb,
                     "" if inodes is None else f" and {inodes} inodes (files)", self.dir)
        self._ok = ok
        return ok

    def _inodes_needed(self) -> int:
        """Free inodes (files) under ``record.dir`` below which NG images stop: the files the verdict and gate logs
        may still make, ``keep_files + 1`` each (their rotation's), plus ``MIN_FREE_INODES``."""
        return LOGS * (self.settings.keep_files + 1) + MIN_FREE_INODES

    def _warn_no_room(self, free_mb: float, logs_mb: float, inodes: int | None, bytes_ok: bool) -> None:
        """The one warning when NG images stop for want of room: the bytes free against what is kept, or, where the
        bytes are there, the inodes (files) free against what is kept (``df -i`` shows them)."""
        if not bytes_ok:
            short_inodes = inodes is not None and inodes < self._inodes_needed()
            log.warning("only %.0f MB free under %s (< record.min_free_mb = %.0f + %.0f MB the verdict and gate logs "
                        "may still grow into, (keep_files + 1) x max_log_mb each)%s: NG images are no longer saved, "
                        "the verdict log goes on", free_mb, self.dir, self.settings.min_free_mb, logs_mb,
                        f" and only {inodes} free inodes (files) (`df -i`)" if short_inodes else "")
            return
        log.warning("only %d free inodes (files) left on the disk of %s (`df -i`; %.0f MB free) (< %d: the %d files "
                    "the verdict and gate logs' rotation may still make, (keep_files + 1) each, + %d kept free): NG "
                    "images are no longer saved, the verdict log goes on; delete files on that disk (e.g. old NG "
                    "images under %s)", inodes, self.dir, free_mb, self._inodes_needed(),
                    LOGS * (self.settings.keep_files + 1), MIN_FREE_INODES, self.dir / "ng")

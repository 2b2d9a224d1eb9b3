"""Append-only, crash-safe JSONL logs: operator reviews (``reviews.jsonl``) and the audit trail of
changes (``audit.jsonl``), next to ``verdicts.jsonl`` in the station's output folder.

Each entry is one line, written at the end of a file opened for appending (again for the rest when a
nearly full disk takes only part of it), flushed and ``fsync``-ed before the call returns (its folder
too when the call created the file), so an acknowledged review survives a crash or power cut. An
entry that cannot be written whole is cut off again and raises RecorderError: nothing half-written
is ever confirmed.
Nothing is ever rewritten: a corrected review is a newer line for the same part (the newest wins). The audit row
of a change already made is written with ``append_made``: a row that fails then is a warning, never an error.
A torn last line (power lost mid-write) is skipped on reading and counted.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fair_edge.disk import free_bytes, free_space, fsync
from fair_edge.errors import RecorderError

log = logging.getLogger(__name__)
MIN_FREE_BYTES = 64 * 1024   # check_writable: room for the next entry (one is under 1 KiB) and then some
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)   # a link in a journal's place is never written through (ELOOP: refused)

REVIEWS = "reviews.jsonl"
AUDIT = "audit.jsonl"


def utc_now() -> str:
    """ISO 8601 UTC time with milliseconds, e.g. 2026-11-29T13:05:01.123Z."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    """One append-only JSONL file. ``append`` is thread-safe and durable when it returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.torn_lines = 0

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Write ``entry`` (a ``time`` field in UTC is added if missing); returns what was written."""
        entry = {"time": utc_now(), **entry}
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                created = not self.path.exists()
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | NO_FOLLOW, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # a torn last line stays torn; this entry starts on its own line
                    _append_whole(fd, line, size, self.path)
                finally:
                    os.close(fd)
                if created:   # the file's name lives in its folder: durable only once the folder is too
                    fsync(self.path.parent)
            except OSError as exc:
                raise RecorderError(f"{self.path}: expected a writable log file, found {exc}; "
                                    "free disk space or fix the folder's permissions") from exc
        return entry

    def append_made(self, row: dict[str, Any]) -> dict[str, Any]:
        """Append the audit ``row`` of a change already made; returns what was written. A log that fails now (the
        disk filled since ``check_writable``) cannot undo the change: logged as an error, and the row is returned
        with a ``warning`` ("made but not audited: <the log's error>") so the answer says what happened."""
        try:
            return self.append(row)
        except RecorderError as exc:
            warning = f"made but not audited: {exc}"
            log.error("console %s by %s %s", row.get("action", "change"), row.get("who", "?"), warning)
            return {"time": utc_now(), **row, "warning": warning}

    def check_writable(self) -> None:
        """Raise RecorderError (as ``append`` does) unless the file can be opened for appending now: a cheap check
        (one open and close, no byte written; a file the check had to create is removed again, so a change refused
        for another reason leaves no empty log) made before a change that must be logged, so one that could not be
        is refused before anything changes; so is a disk with less than ``MIN_FREE_BYTES`` free (an existing file
        opens on a full disk). A disk that fills between this check and ``append`` is found by ``append``."""
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                created = not self.path.exists()
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NO_FOLLOW, 0o644))
                if created:
                    self.path.unlink()
            except OSError as exc:   # the text of ``append``'s
                raise RecorderError(f"{self.path}: expected a writable log file, found {exc}; "
                                    "free disk space or fix the folder's permissions") from exc
            try:
                free = free_bytes(self.path.parent)
            except OSError:
                free = None   # cannot be told: ``append`` finds a full disk
            if free is not None and free < MIN_FREE_BYTES:   # a full disk opens an existing file, then takes no row
                raise RecorderError(f"{self.path}: expected at least {MIN_FREE_BYTES // 1024} KiB free for its next "
                                    f"entry, found {free} bytes ({free_space(self.path.parent)}); free disk space")

    def read(self) -> list[dict[str, Any]]:
        """Every complete entry in order (a torn or unreadable line is skipped and counted)."""
        if not self.path.is_file():
            return []
        entries, torn = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if isinstance(item, dict):
                entries.append(item)
        if torn and torn != self.torn_lines:
            log.warning("%s: %d unreadable line(s) skipped (a crash mid-write?)", self.path, torn)
        self.torn_lines = torn
        return entries


def warning_of(rows: list[dict[str, Any]]) -> dict[str, str]:
    """{"warning": the distinct warnings of audit ``rows`` (``Journal.append_made``), joined} where any has one,
    else {}."""
    warnings = list(dict.fromkeys(row["warning"] for row in rows if "warning" in row))
    return {"warning": "; ".join(warnings)} if warnings else {}


def _append_whole(fd: int, line: bytes, size: int, path: Path) -> None:
    """Write all of ``line`` at the end of the file open on ``fd`` (``size`` bytes before it) and fsync it, or leave
    the file as it was. A nearly full disk takes only part of a write and says so by a short count, not an error:
    the rest is written again until all is there; a write that makes no progress, or any OSError (ENOSPC, EIO, a
    failed fsync), truncates the file back to ``size`` bytes and raises RecorderError naming the file, the bytes
    written of those expected and the free space, so a caller never confirms an entry that a reader would skip."""
    written = 0
    try:
        while written < len(line):
            n = os.write(fd, line[written:])
            if n <= 0:
                raise OSError(errno.ENOSPC, "the disk took no more bytes (a write returned 0)")
            written += n
        os.fsync(fd)
    except OSError as exc:
        undone = _truncate(fd, size)
        raise RecorderError(
            f"{path}: wrote {written} of {len(line)} bytes of a new entry ({exc.strerror or exc}; "
            f"{free_space(path.parent)}); expected the whole line. {undone} The entry was not "
            "recorded: free disk space or fix the disk, then repeat the action.") from exc


def _truncate(fd: int, size: int) -> str:
    """Cut the file on ``fd`` back to ``size`` bytes (its length before a failed append); a sentence saying so."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:
        return (f"The file could not be cut back to its {size} bytes ({exc.strerror or exc}): it may end in a "
                "partial line, which reading skips.")
    return f"The file was cut back to its {size} bytes, as before."




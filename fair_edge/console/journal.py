"""Append-only, crash-safe JSONL logs: operator reviews (``reviews.jsonl``) and the audit trail of
changes (``audit.jsonl``), next to ``verdicts.jsonl`` in the station's output folder.

Each entry is one line, written with a single ``write`` on a file opened for appending, flushed
and ``fsync``-ed before the call returns (its folder too when the call created the file), so an
acknowledged review survives a crash or power cut.
Nothing is ever rewritten: a corrected review is a newer line for the same part (the newest wins).
A torn last line (power lost mid-write) is skipped on reading and counted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fair_edge.errors import RecorderError

log = logging.getLogger(__name__)

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
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # a torn last line stays torn; this entry starts on its own line
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if created:   # the file's name lives in its folder: durable only once the folder is too
                    _fsync_folder(self.path.parent)
            except OSError as exc:
                raise RecorderError(f"{self.path}: expected a writable log file, found {exc}; "
                                    "free disk space or fix the folder's permissions") from exc
        return entry

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


def _fsync_folder(folder: Path) -> None:
    """fsync a folder, so a file just created in it survives a power cut (its entry is in the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""An append-only JSONL file with size-based rotation (``name.jsonl`` -> ``name.jsonl.1`` ...)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RotatingJsonl:
    """Writes one JSON object per line, flushed after each line.

    max_bytes: rotate before a line would take the file past this size.
    keep: rotated files kept (``.1`` newest .. ``.keep`` oldest); 0 = start over in place.
    Raises ``OSError`` from ``write`` (the caller counts it); the next write reopens the file.
    """

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.keep = int(keep)
        self._f = None
        self.rotations = 0

    def write(self, obj: dict[str, Any]) -> None:
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        if self._f is None:
            self._f = open(self.path, "ab")
        if self._f.tell() > 0 and self._f.tell() + len(line) > self.max_bytes:
            self._rotate()
        try:
            self._f.write(line)
            self._f.flush()
        except OSError:
            self._close_quietly()
            raise

    def _rotate(self) -> None:
        self._close_quietly()
        if self.keep > 0:
            oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
            if oldest.exists():
                oldest.unlink()
            for i in range(self.keep - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self.rotations += 1
        self._f = open(self.path, "ab")

    def _close_quietly(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                log.warning("closing %s failed", self.path, exc_info=True)

    def close(self) -> None:
        self._close_quietly()

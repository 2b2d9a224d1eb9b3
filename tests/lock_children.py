"""A child process that holds locks for a test: the lock tests' one way to have "another station" running."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def holding_child(script: str, *args: str) -> Iterator[int]:
    """A child Python process running ``script`` (``python -c``) with ``args``, which prints "held" once it holds
    its locks and holds them until its stdin closes; the block runs while it holds them, then its stdin is closed
    and it is waited for. Yields its pid."""
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(60)

"""The process's standard streams, made usable before anything else of the command line is imported."""

from __future__ import annotations

import os
import sys

STANDARD_STREAMS = ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w"))


def reopen_closed_streams() -> None:
    """Put /dev/null on a standard stream's file descriptor (0, 1, 2) that was closed when fair-edge started (a
    supervisor or shell's ``2>&-``). Otherwise the first file opened takes that descriptor: a library's read-only
    /dev/null does during the imports, and every write to stderr fails (EBADF); a file opened for writing (the
    verdict log) would receive what C libraries print to stderr. Called by ``fair_edge.cli`` before it imports
    anything else."""
    for fd, name, mode in STANDARD_STREAMS:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:   # Python found the descriptor closed at start-up
            setattr(sys, name, open(fd, mode, closefd=False, buffering=1 if mode == "w" else -1))

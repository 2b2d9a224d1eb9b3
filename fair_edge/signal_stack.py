"""Keep the calling thread's alternate signal stack across a library call that replaces it.

OpenVINO's CPU plugin, compiling a model, points the compiling thread's alternate signal stack (``sigaltstack``)
at memory of its own (about 20 KB) and puts back, when its ``Core`` is freed, the stack it found at the compile.
Python runs its signal handlers with ``SA_ONSTACK``, so once that memory is freed while the thread still points at
it (two graphs compiled, the first freed first; a swap; a build that calibrates several graphs), the next Ctrl-C or
SIGTERM on that thread jumps onto freed memory and the process dies with SIGSEGV, with no traceback and nothing
written. ``kept_signal_stack()`` around the compile puts the thread's own stack back at once, so each ``Core``
later restores that same stack. Linux and other POSIX C libraries with ``sigaltstack``; elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from typing import Iterator


class _StackT(ctypes.Structure):
    """The C library's ``stack_t``: base, flags (``SS_DISABLE``, ...), size in bytes."""
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack():
    """The C library's ``sigaltstack(new, old)``, None where it has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        call = libc.sigaltstack
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.POINTER(_StackT), ctypes.POINTER(_StackT))
    call.restype = ctypes.c_int
    return call


_SIGALTSTACK = _sigaltstack()


def signal_stack() -> tuple[int, int, int] | None:
    """This thread's alternate signal stack as (base address, flags, size in bytes); None where it cannot be read."""
    if _SIGALTSTACK is None:
        return None
    now = _StackT()
    if _SIGALTSTACK(None, ctypes.byref(now)) != 0:
        return None
    return now.ss_sp or 0, now.ss_flags, now.ss_size


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the body, then give this thread back the alternate signal stack it had before (see the module doc)."""
    if _SIGALTSTACK is None:
        yield
        return
    before = _StackT()
    known = _SIGALTSTACK(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if known:
            _SIGALTSTACK(ctypes.byref(before), None)

"""A damaged JPEG, told by libjpeg's own words: which of the lines libjpeg writes to stderr mean the decoded pixels
are wrong (``is_jpeg_damage``), and the block that catches the lines written to stderr (file descriptor 2) while a
JPEG decodes (``stderr_lines``). ``fair_edge.images.decode_file`` uses both when its caller asks (``check_damage``:
the training-side readers); the station's readers never do, since the block points fd 2 of the whole process at a
private file."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Callable, Iterator

# libjpeg's warnings (its lines on stderr: OpenCV passes none on) that mean the decoded pixels are wrong: the
# entropy-coded data is damaged (bytes overwritten: blocks of garbage, the rest of a scan grey) or cut short.
# Any other line (extraneous bytes before a marker outside a scan, SOS 0xda or EOI 0xd9; a bad ICC marker; an
# unknown JFIF revision) leaves the pixels as they were written, and the file is read.
JPEG_DAMAGE_WARNINGS = ("Corrupt JPEG data: premature end of data segment", "Corrupt JPEG data: bad Huffman code",
                        "Premature end of JPEG file", "Inconsistent progression sequence")
JPEG_EXTRANEOUS_BYTES = "Corrupt JPEG data: "   # + "N extraneous bytes before marker 0x.."
JPEG_RESTART_MARKERS = tuple(f"0x{marker:02x}" for marker in range(0xD0, 0xD8))   # RST0..RST7: inside a scan
_STDERR_LOCK = threading.Lock()   # one ``stderr_lines`` block at a time redirects stderr (fd 2)


def is_jpeg_damage(line: str) -> bool:
    """True for a line libjpeg writes to stderr when a JPEG's pixels come out wrong (``JPEG_DAMAGE_WARNINGS``:
    "Corrupt JPEG data: premature end of data segment", "Premature end of JPEG file", ...; or extraneous bytes
    before a restart marker 0xd0..0xd7, inside a scan); False for any other line (extraneous bytes before SOS 0xda
    or EOI 0xd9, a bad ICC marker: the pixels are right; another thread's log line)."""
    return line.startswith(JPEG_DAMAGE_WARNINGS) or _is_extraneous_in_scan(line)


def _is_extraneous_in_scan(line: str) -> bool:
    """True for libjpeg's "Corrupt JPEG data: N extraneous bytes before marker 0xd0".."0xd7": bytes lost inside
    a scan, between restart intervals (the MCUs around them decode wrong)."""
    head, _, marker = line.rpartition(" extraneous bytes before marker ")
    return (head.startswith(JPEG_EXTRANEOUS_BYTES) and head[len(JPEG_EXTRANEOUS_BYTES):].isdigit()
            and marker.strip().lower() in JPEG_RESTART_MARKERS)


@contextlib.contextmanager
def stderr_lines(keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """Send stderr (file descriptor 2, where C libraries such as libjpeg write) to a private file while the block
    runs; yields a list that holds, once the block is done, the lines written meanwhile that ``keep`` (line ->
    bool) accepts, without their newline. The other lines (another thread's log line, a decoder's harmless
    warning) are written on to stderr as they came, once the block is done, before stderr is pointed back (so
    they come before any line written after the block). One block at a time in the process
    (a lock), so a kept line is this block's or another thread's, never another block's. Where there is no stderr
    (closed) or no private file can be made, the block runs as it is and the list stays empty."""
    kept: list[str] = []
    with _STDERR_LOCK, _private_file() as sink:
        saved = _redirect_stderr(sink)
        try:
            yield kept
        finally:
            if saved is not None:
                _flush_python_stderr()
                read_to = _pass_lines_on(sink, 0, keep, saved, kept, whole_lines=True)
                _restore_stderr(saved)
                _pass_lines_on(sink, read_to, keep, 2, kept, whole_lines=False)   # written while passing on


def _pass_lines_on(sink, start: int, keep: Callable[[str], bool], fd: int, kept: list[str],
                   whole_lines: bool) -> int:
    """Read the lines written to ``sink`` (a file) from byte ``start`` on: those ``keep`` accepts are appended to
    ``kept`` as text without their line end, the others written on to file descriptor ``fd`` byte for byte
    (``_write_fd``). whole_lines: stop after the last line end, leaving a line still being written. Returns the
    byte offset read to. Read by offset (``os.pread``): fd 2 shares the file's position while it points there."""
    size = os.fstat(sink.fileno()).st_size
    data = os.pread(sink.fileno(), max(size - start, 0), start)
    if whole_lines:
        data = data[:data.rfind(b"\n") + 1]
    lines = [(raw, raw.decode("utf-8", "replace").rstrip("\r\n")) for raw in data.splitlines(keepends=True)]
    _write_fd(fd, b"".join(raw for raw, text in lines if not keep(text)))
    kept.extend(text for _, text in lines if keep(text))
    return start + len(data)


def _private_file():
    """A file of this process only, gone once closed (binary, read and write): in memory on Linux
    (``memfd_create``), else a temporary file; ``contextlib.nullcontext(None)`` when neither can be made (no
    memfd and no writable temporary folder)."""
    with contextlib.suppress(OSError, AttributeError):   # AttributeError: no memfd_create (not Linux)
        return open(os.memfd_create("fair-edge-stderr", os.MFD_CLOEXEC), "w+b")
    with contextlib.suppress(OSError):
        return tempfile.TemporaryFile()
    return contextlib.nullcontext(None)


def _redirect_stderr(sink) -> int | None:
    """Point file descriptor 2 at ``sink`` (a file, or None: nothing done) and return a descriptor of what it
    pointed at (``_restore_stderr`` takes it back); None when ``sink`` is None or stderr is closed. Python's own
    stderr is flushed first, so text written before goes where it was meant to."""
    if sink is None:
        return None
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:   # stderr closed: nothing to read libjpeg's lines from
        return None
    os.dup2(sink.fileno(), 2)
    return saved


def _restore_stderr(saved: int) -> None:
    """Point file descriptor 2 back at what ``saved`` (``_redirect_stderr``) holds, flushing Python's stderr first
    (text written during the block belongs to it), and close ``saved``."""
    _flush_python_stderr()
    os.dup2(saved, 2)
    os.close(saved)


def _write_fd(fd: int, data: bytes) -> None:
    """Write ``data`` to file descriptor ``fd`` (stderr, or a copy of it) in full (b"" writes nothing); a stderr
    that takes nothing (a broken pipe) is let be, as a C library's write to it would be."""
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data):]


def _flush_python_stderr() -> None:
    """Flush ``sys.stderr`` (a Python-level buffer), when there is one that can be flushed: none (None, pythonw),
    closed (ValueError) or a broken pipe (OSError) are let be, as for any write to it."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()

"""What a failed write means and its fix, in one wording for every writer (checkpoints, bundles, reports, logs,
unit files): the free space on a disk (``free_space``) and its free inodes (``free_inodes``), the cause and fix of a
write that failed (``write_failure``, by errno: full, out of inodes, over quota, read-only, not this account's), and
the removal of what it left half-written (``discard_unfinished``); whether a folder can be written at all
(``unwritable_folder``; a read-only mount: ``read_only_mount``); where this account's caches go (``user_cache``);
forcing a file or a folder to the disk (``fsync``); writing a file whole or not at all (``write_whole``,
``write_text_whole``); holding Ctrl-C and SIGTERM back while a result is moved into place (``stops_deferred``)."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

# errnos whose text libraries that keep no errno (torch.save's RuntimeError: "open file failed with strerror:
# Read-only file system") still show: found by their os.strerror text
_KNOWN = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# ENOSPC with at most this many free inodes (files) left on the disk is read as out of inodes, not of bytes: a write
# needs a few new files at once (a temporary beside its target, a folder), and other writers take or free some
# between the failed write and the look at the disk
INODES_SHORT = 16


def fsync(path: str | Path, flags: int = os.O_RDONLY) -> None:
    """Force ``path`` (a file, or a folder: the entries of files just created or renamed in it) to the disk, so it
    survives a power cut; ``flags``: how to open it (``os.O_RDWR`` for a file some systems sync only when writable).
    Raises OSError as the system does."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)   # Ctrl-C; kill, systemctl stop, a CI timeout


@contextmanager
def stops_deferred(signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """For the duration, each of ``signums`` that arrives is noted, not acted on, and raised again once the block
    ends, after the handlers in place before are back: then its own handler runs (Ctrl-C's KeyboardInterrupt, or
    ``cli.common.Terminated``, raised just after the block; SIGTERM without a handler ends the process). For a step
    that must not be cut in two, such as the two renames that swap a finished folder for the previous one.
    The Python handlers are swapped rather than the signal mask changed (``signal.pthread_sigmask``): the mask is
    per thread, and the kernel hands a signal sent to the process to any thread that does not block it (a progress
    bar's, a library's worker), whose C handler then has the main thread run the Python handler all the same.
    A signal handled outside Python (``signal.getsignal`` gives None) or ignored (SIG_IGN) is left as it is.
    Outside the main thread (which alone runs Python's handlers and may set them) nothing is deferred."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous: dict[int, object] = {}

    def note(signum: int, _frame) -> None:
        arrived.append(signum)

    try:
        for signum in signums:
            handler = signal.getsignal(signum)
            if handler is not None and handler is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, note)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):   # each once, in the order they came
            signal.raise_signal(signum)


def user_cache() -> Path:
    """This account's cache folder for fair-edge: ``~/.cache/fair-edge``, or ``<tempdir>/fair-edge-<uid>`` when there
    is no home folder (HOME unset and a uid without a passwd entry, as in many containers: ``Path.home()`` raises)."""
    try:
        return Path.home() / ".cache" / "fair-edge"
    except RuntimeError:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        return Path(tempfile.gettempdir()) / f"fair-edge-{uid}"


def nearest_existing(path: str | Path) -> Path:
    """``path``, or its nearest existing folder above (a folder not made yet is on the disk of that one)."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    return where


def read_only_mount(path: str | Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (no account may write it, root neither); False when
    that cannot be told (no ``statvfs``: not POSIX)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):   # AttributeError: no statvfs (not POSIX)
        return False


def unwritable_folder(path: str | Path) -> str | None:
    """Why this account could not write in the folder ``path`` (nor make it, where it is missing), checked without
    creating anything: "F is a file, not a folder", "F is on a read-only file system", "this account cannot write in
    F", F being ``path`` or the nearest existing folder above it, where it would be made; None when it could (a full
    disk is found by the write itself)."""
    where = nearest_existing(path)
    if not where.is_dir():
        return f"{where} is a file, not a folder"
    if read_only_mount(where):
        return f"{where} is on a read-only file system"
    if not os.access(where, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"this account cannot write in {where}"
    return None


def free_bytes(path: str | Path) -> int:
    """Bytes this account may still write on the disk of ``path`` or of its nearest existing folder above; raises
    OSError when that cannot be read."""
    return shutil.disk_usage(nearest_existing(path)).free


def free_inodes(path: str | Path) -> int | None:
    """Inodes (new files and folders) this account may still create on the disk of ``path`` or of its nearest
    existing folder above (``os.statvfs``'s ``f_favail``, what ``df -i`` shows free); None where the file system
    keeps no fixed number of them (``f_files`` 0: btrfs, vfat), where it cannot be read, and where the system has no
    ``statvfs`` (Windows): no shortage of inodes is ever read from None."""
    statvfs = getattr(os, "statvfs", None)
    if statvfs is None:
        return None
    try:
        info = statvfs(nearest_existing(path))
    except OSError:
        return None
    total, available = getattr(info, "f_files", 0), getattr(info, "f_favail", None)
    return None if not total or available is None else int(available)


def out_of_inodes(path: str | Path) -> bool:
    """Whether the disk of ``path`` has at most ``INODES_SHORT`` free inodes left (``free_inodes``): a failed write's
    "no space left on device" (ENOSPC) then means no file could be created, whatever the bytes free."""
    available = free_inodes(path)
    return available is not None and available <= INODES_SHORT


def no_inodes_text(path: str | Path, named: str | None = None) -> str:
    """"no free inodes (files) left on the disk of NAME (`df -i`; 200.0 MB free on the disk of PATH)": a disk out of
    inodes in words, its free bytes beside, so a disk with bytes free is not read as full."""
    name = str(path) if named is None else named
    return f"no free inodes (files) left on the disk of {name} (`df -i`; {free_space(Path(path))})"


def free_space(path: Path) -> str:
    """"12.3 MB free on the disk of PATH" (MB = 2**20 bytes, ``free_bytes``), or "free space on the disk of PATH
    unknown (reason)"."""
    try:
        free = free_bytes(path)
    except OSError as exc:
        return f"free space on the disk of {path} unknown ({exc.strerror or exc})"
    return f"{free / 2**20:.1f} MB free on the disk of {path}"


def _failed_errno(exc: BaseException) -> int | None:
    """The errno of a failed write: the OSError's, else the one whose text (``os.strerror``) the error shows (torch
    reports a read-only disk as RuntimeError "... strerror: Read-only file system"); None where there is neither
    (torch's "unexpected pos", numpy's "6144 requested and 4064 written": a short write)."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = str(exc)
    return next((code for code in _KNOWN if os.strerror(code) in text), None)


def write_failure(path: str | Path, exc: BaseException, out_flag: str | None = "--out", *,
                  named: str | None = None) -> str:
    """The cause of a write into the folder ``path`` that failed with ``exc`` and its fix, as one clause without
    the final period, for a message that has already named the file and the error ("cannot write X (reason): "
    + this + ", then run again."). By errno (``_failed_errno``):
      ENOSPC / EDQUOT: "the disk of PATH is full (12.0 MB free on the disk of PATH). Free space on that disk or
        choose an --out on another disk" ("is over this account's quota" for EDQUOT);
      ENOSPC on a disk out of inodes (``out_of_inodes``: bytes free, no file can be made): "no free inodes (files)
        left on the disk of PATH (`df -i`; 200.0 MB free on the disk of PATH): delete files there or choose an
        --out on another disk";
      EROFS: "PATH is on a read-only file system. Choose an --out on a writable disk, or remount that disk read-write";
      EACCES / EPERM: "this account cannot write in PATH. Choose an --out you can write, or make that folder writable";
      none (a short write): "the disk of PATH may be full (...)" and the full disk's fix;
      any other: "fix PATH or choose another --out".
    ``out_flag``: the option that chooses another folder (None where there is none: only the disk's own fix is
    given). ``named``: how the message names ``path`` (e.g. "--out runs/b"); the free space is always ``path``'s."""
    name = str(path) if named is None else named
    code = _failed_errno(exc)
    flag = f" or choose an {out_flag} on another disk" if out_flag else ""
    if code == errno.ENOSPC and out_of_inodes(path):
        return f"{no_inodes_text(path, name)}: delete files there{flag}"
    if code in (errno.ENOSPC, errno.EDQUOT, None):
        state = {errno.ENOSPC: "is full", errno.EDQUOT: "is over this account's quota", None: "may be full"}[code]
        return f"the disk of {name} {state} ({free_space(Path(path))}). Free space on that disk{flag}"
    if code == errno.EROFS:
        fix = f"Choose an {out_flag} on a writable disk, or remount that disk" if out_flag else "Remount that disk"
        return f"{name} is on a read-only file system. {fix} read-write"
    if code in (errno.EACCES, errno.EPERM):
        fix = f"Choose an {out_flag} you can write, or make that folder writable" if out_flag else "Make it writable"
        return f"this account cannot write in {name}. {fix}"
    return f"fix {name} or choose another {out_flag}" if out_flag else f"fix {name}"


def discard_unfinished(path: str | Path, what: str = "file") -> None:
    """Remove the half-written ``path`` (a ``what``: "checkpoint", "ONNX graph") of a failed write, so it does not
    keep filling the disk. One that was never made is fine: on a read-only file system even unlinking a missing
    file fails (EROFS). One that exists and cannot be removed is a warning naming it ("...: delete it")."""
    path = Path(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        if os.path.lexists(path):
            log.warning("could not remove the unfinished %s %s (%s): delete it", what, path, exc.strerror or exc)


NAME_MAX_BYTES = 255   # the longest file name (one path component) Linux file systems take, in bytes
TEMPORARY_NAME = re.compile(r"\.[0-9a-f]{8}\.(.+)\.tmp", re.DOTALL)   # ``temporary_name``'s names; group 1: NAME
TEMPORARY_TRIES = 100  # unique names tried for a temporary before giving up (each 32 random bits: one try, as a rule)


def temporary_name(target_name: str) -> str:
    """A fresh hidden name for the temporary file of ``target_name``: ``.1a2b3c4d.NAME.tmp`` (8 random hex digits),
    NAME cut at a whole character where the whole would pass NAME_MAX_BYTES (a name of 251 bytes, e.g. a heat-map
    panel's, leaves room only for ``.tmp``). Unique per call, so two writers of one path never share a temporary."""
    tag = os.urandom(4).hex()
    room = NAME_MAX_BYTES - len(f".{tag}..tmp")
    name = target_name
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{tag}.{name}.tmp"


def is_temporary_of(name: str, target_name: str) -> bool:
    """Whether the file name ``name`` is one ``temporary_name(target_name)`` gives (its NAME cut short included)."""
    found = TEMPORARY_NAME.fullmatch(name)
    return found is not None and target_name.startswith(found[1])


def create_temporary(target: Path, mode: int = 0o666) -> tuple[int, Path]:
    """Create a new empty temporary file beside ``target`` (``temporary_name``) and open it for writing: (file
    descriptor, its path). O_EXCL: never an existing file, nor a link planted under that name; ``mode`` less the
    umask: 0o666, as a plain ``open(path, "w")`` makes it (the file the rename puts in place keeps it); 0o600 for a
    file that will hold a secret, so no other account can open it before its writer sets the mode it is to keep.
    Raises OSError as the system does (FileExistsError after TEMPORARY_TRIES names taken)."""
    for _ in range(TEMPORARY_TRIES):
        tmp = target.with_name(temporary_name(target.name))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {TEMPORARY_TRIES} tries", str(tmp))


def write_whole(path: str | Path, data: bytes, what: str = "file", durable: bool = True, *, mode: int | None = None,
                through_links: bool = True) -> None:
    """Write ``data`` as the file ``path`` whole or not at all: to a temporary of its own beside it
    (``.1a2b3c4d.NAME.tmp``, ``create_temporary``; any name Python can open, UTF-8 or not), renamed over ``path`` (a
    symlink: over its target; with ``through_links`` False the link itself is replaced by the file, as for a unit
    file, whose name is what systemd reads). An earlier file at ``path`` stays whole until the new one is complete, so
    a full disk never leaves half a file under its name; two writers of the same path at once (two ``bench --json
    same.json``) each rename a whole file of their own, the last rename's stays. durable: the file fsync'd before the
    rename and the folder after it where it can be (a report, a summary: the rename survives a power cut); False for
    a stream of files where a lost last one costs nothing (NG images). mode: the file's permission bits (0o644: a
    unit file readable by all whatever the umask); None: 0o666 less the umask. The folder must exist. Raises OSError
    as the system does; on any failure (Ctrl-C included) the temporary is removed (``discard_unfinished``, ``what``:
    the file's kind for its warning, e.g. "JSON report")."""
    target = Path(os.path.realpath(path)) if through_links else Path(path)
    fd, tmp = create_temporary(target)
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())   # its bytes on the disk before the rename puts it in place
        os.replace(tmp, target)
    except BaseException:
        discard_unfinished(tmp, what)
        raise
    if durable:
        try:
            fsync(target.parent)   # the rename itself survives a power cut
        except OSError:
            pass                    # a file system that cannot sync a folder: the file itself is on the disk


def write_text_whole(path: str | Path, text: str, what: str = "file") -> None:
    """``write_whole`` of ``text`` in UTF-8, durably."""
    write_whole(path, text.encode("utf-8"), what)

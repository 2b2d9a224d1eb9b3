"""One process at a time per folder: an exclusive ``flock`` on a lock file in the folder a run writes.

A station (``OUTPUT/.station.lock``, ``station.locks.station_lock``) and a training run (``OUT/.train.lock``,
``training.runs.hold_run_lock``) hold one for as long as they run, taken before they open or write anything, so
a second process started on the same folder is refused naming the first one's pid instead of pulsing the same
PLC output or writing the same files. The lock file holds the holder's pid, what it runs and, when it runs as a
systemd service, its unit (one line each; ``LockHolder``: a file without the unit's line, of an older version, reads
as one without a unit), written once the lock is held; it is removed when the lock is let go (a lock file left by a
process killed outright holds no lock: the kernel let go of it with the process, and the next run takes it over).

The lock is the kernel's (``fcntl.flock``): it goes with the process however the process ends, on a local disk and
on NFS (as a POSIX lock). Within one process the same thread may take a folder's lock again (a no-op inside the
outer hold); another thread of the same process is refused like another process. Where the OS has no ``fcntl``
(Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator

from fair_edge.errors import ConfigError
from fair_edge.systemd_unit import ServiceUnit, own_unit

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_HELD: dict[Path, int] = {}   # lock file -> the thread (id) of this process holding it
# (lock file, thread id) of a block running unlocked (its lock file could not be made, warned once): the same thread
# taking it again inside neither tries again nor warns again
_UNLOCKED: set[tuple[Path, int]] = set()
_HELD_GUARD = threading.Lock()


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock file, from what it holds (``holder_of``): ``pid`` (None: not written yet, or the file cannot
    be read: ``unread``), ``what`` it runs (the station file, ...) and the systemd ``unit`` it runs as (None: none,
    or a lock file written by a version that did not record it). ``str()``: ``pid N, WHAT``, as refusals name it."""

    pid: int | None
    what: str = ""
    unit: ServiceUnit | None = None
    unread: bool = False

    def __str__(self) -> str:
        if self.unread:
            return "a process whose pid cannot be read"
        if self.pid is None:
            return "a process whose pid is not written yet"
        return f"pid {self.pid}" + (f", {self.what}" if self.what else "")

    def stop_command(self) -> str:
        """The command that stops the holder: ``systemctl stop UNIT`` when it runs as a service (stopping it by pid
        would have systemd start it again, or leave the unit failed), else ``kill -TERM PID``; "" when its pid is
        not known."""
        if self.unit is not None:
            return self.unit.command("stop")
        return "" if self.pid is None else f"kill -TERM {self.pid}"


def holder_of(path: Path) -> LockHolder:
    """Who holds the lock file ``path``, from what it holds (``lock_text``'s lines: pid, what, the unit if any)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return LockHolder(None, unread=True)
    pid = lines[0].strip() if lines else ""
    if not pid.isdigit():
        return LockHolder(None)
    what = lines[1].strip() if len(lines) > 1 else ""
    unit = ServiceUnit.from_words(lines[2]) if len(lines) > 2 else None
    return LockHolder(int(pid), what, unit)


def lock_text(what: str) -> str:
    """What a lock file holds: this process's pid, ``what`` and, when it runs as a systemd service, its unit
    (``systemd_unit.own_unit``; ``ServiceUnit.words``), one line each."""
    unit = own_unit()
    return f"{os.getpid()}\n{what}\n" + (f"{unit.words()}\n" if unit is not None else "")


@contextlib.contextmanager
def hold_lock(folder: Path, name: str, what: str, busy: Callable[[LockHolder], str],
              shared: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/name`` while the block runs (the folder is made if missing, and removed
    again at the end when the lock made it and it is still empty). ``what``: written beside the pid (e.g. the
    station file). ``busy(holder)``: the refusal's text for the holder (``holder_of``: its pid, what it runs, its unit),
    raised as ConfigError when another process (or another thread of this one) holds the lock. ``shared``: a lock
    stations of several accounts take (``_open_shared``). A lock file that
    cannot be made (a read-only or full disk) is logged and the block runs unlocked: what the run writes next meets
    the same disk and reports it in its own words; the same thread taking it again inside the block is not warned
    about it again. Yields the lock file's path."""
    folder = Path(folder)
    path = folder.resolve() / name
    me = threading.get_ident()
    with _HELD_GUARD:
        holder, unlocked = _HELD.get(path), (path, me) in _UNLOCKED
    if holder == me or unlocked:   # this thread holds it already (or runs unlocked there): nothing more to take
        yield path
        return
    if holder is not None:
        raise ConfigError(busy(holder_of(path)))
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    fd = _acquire(path, what, busy, shared)
    with _HELD_GUARD:
        if fd is not None:
            _HELD[path] = me
        else:
            _UNLOCKED.add((path, me))
    try:
        yield path
    finally:
        with _HELD_GUARD:
            if fd is not None:
                _HELD.pop(path, None)
            else:
                _UNLOCKED.discard((path, me))
        if fd is not None:
            _release(path, fd, made)


def _acquire(path: Path, what: str, busy: Callable[[LockHolder], str], shared: bool = False) -> int | None:
    """The open, locked lock file's descriptor with this process's pid and ``what`` written in it; None when the
    OS has no flock or the file cannot be made (logged). ConfigError (``busy``) when another process holds it.
    ``shared``: a lock taken by stations of several accounts (``_open_shared``)."""
    if fcntl is None:
        return None
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_shared(path) if shared else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.warning("no run lock %s (%s): a second station on what it locks would not be refused", path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(busy(holder_of(path))) from None
        except OSError as exc:   # a file system without locks
            os.close(fd)
            log.warning("no run lock %s (%s): a second station on what it locks would not be refused", path, exc)
            return None
        if _same_file(fd, path):
            break
        os.close(fd)   # the holder before let go and removed the file after we opened it: open the new one
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, lock_text(what).encode())
    return fd


def _open_shared(path: Path) -> int:
    """The lock file ``path`` opened for a lock that stations of several accounts take (a PLC output's, in the
    sticky folder ``/run/lock/fair-edge``): made readable and writable by every account whatever the umask (the
    unit's 0027 made it 0640: another account's station could not open it and ran unlocked); another account's
    file that is not is opened read-only, which flock needs no more than (its pid is then not written)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        try:
            return os.open(path, os.O_RDWR)
        except PermissionError:
            return os.open(path, os.O_RDONLY)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd`` (a lock file removed by its last holder does not)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _release(path: Path, fd: int, made: list[Path]) -> None:
    """Remove the lock file (still locked, so no one takes the old file), let go, then remove the folders the lock
    made (``made``, deepest first) that are still empty."""
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break

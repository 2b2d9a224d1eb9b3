"""An append-only JSONL file with size-based rotation (``name.jsonl`` -> ``name.jsonl.1`` ...)."""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..disk import create_temporary, discard_unfinished, no_inodes_text, out_of_inodes
from ..records import json_safe

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)   # a write failed for want of space: rotated files can make room
PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM)   # refused: e.g. another account's file in a sticky folder
ROTATE_RETRY_S = 1.0   # a rotation put off (it failed: no free inode, a file it may not move) is retried this often, s
# how a log is opened (``open_log``): for appending, created if missing, never through a link (a link put in the
# output folder in its place fails the open: ELOOP, counted as a failed write), never waiting (a FIFO put there opens
# at once, and is then refused), not inherited by a child process; each flag 0 where the OS has none
NON_BLOCK = getattr(os, "O_NONBLOCK", 0)
NOT_THROUGH_LINKS = getattr(os, "O_NOFOLLOW", 0) | NON_BLOCK | getattr(os, "O_CLOEXEC", 0)
OPEN_LOG = os.O_RDWR | os.O_APPEND | os.O_CREAT | NOT_THROUGH_LINKS


def json_line(obj: dict[str, Any]) -> bytes:
    """One row as a compact line of strict JSON, newline-terminated, UTF-8: a NaN or infinite number is written as
    null (``records.json_safe``), never a bare NaN / Infinity that JavaScript's JSON.parse and strict readers refuse."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:   # NaN or inf somewhere: rare, so the common row pays no walk through it
        text = json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode("utf-8")


def rotated_names(name: str, keep: int) -> list[str]:
    """The names of the rotated files of the log ``name`` that keeps ``keep``: ``name.1`` (newest) .. ``name.keep``."""
    return [f"{name}.{i}" for i in range(1, keep + 1)]


class RotatingJsonl:
    """Writes one JSON object per line (strict JSON: ``json_line``), flushed after each line.

    max_bytes: rotate before a line would take the file past this size.
    keep: rotated files kept (``.1`` newest .. ``.keep`` oldest); 0 = start over in place.
    Raises ``OSError`` from ``write`` (the caller counts it); the next write reopens the file.
    Every line of the file is a whole row: a write that fails part-way (a full disk takes half a line) is cut
    back off the file, and a file found not ending in a newline when it is (re)opened (a cut that failed
    too, a crash mid-line) has its torn last line cut off, so no row is ever glued onto a piece of another.
    A full disk (``ENOSPC``, ``EDQUOT``) deletes this log's oldest rotated file (``.N``, the highest number
    first) and writes the row again, until it is written or no rotated file is left: the newest rows are
    kept, not the oldest. Each file deleted is logged (name and size: its rows are gone) and counted in
    ``files_dropped`` / ``bytes_dropped``; a log without rotated files left raises as before.
    A disk out of inodes (bytes free, but no file can be made: ``disk.out_of_inodes``; NG images may hold them) never
    deletes a row: a rotation makes the log's next file before it moves anything, and where that fails the log is not
    rotated but grows past ``max_bytes`` (one warning; tried again every ``ROTATE_RETRY_S``; each such spell, from its
    first refused try until a rotation goes through, counted once in ``rotations_put_off``); a log file that cannot be
    created raises ENOSPC in those words and deletes no rotated file to make room for it. Any other rotation that fails
    is put off alike, the row written to the current file: e.g. another account's ``.N`` in a sticky (1777) folder,
    which this one may not move or delete (the warning names the files, their owner and the ``chown``). A log whose
    rotation is put off grows at most to what its rotated files would hold: with them it stays within ``(keep + 1) x
    max_bytes`` (``room_to_grow``, which the disk guard keeps free), and never less than ``max_bytes`` (a row a working
    rotation would write is always written); a row past that raises ``EFBIG`` (the caller counts it failed) until a
    rotation goes through. The grown file then keeps its excess as ``.1`` .. ``.keep`` until it ages out, which
    ``room_to_grow`` counts.
    clock: monotonic seconds (tests hand in a fake one), read only while a rotation is put off.
    """

    def __init__(self, path: Path, max_bytes: int, keep: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.keep = int(keep)
        self._f = None
        self._clock = clock
        self._put_off_at: float | None = None   # when a rotation was last put off (it failed), else None
        self._grow_limit = 0       # while put off: the most bytes the file may hold (``_put_off``)
        self._blocked_by = ("", "")  # while put off: (what stopped the rotation, the fix), ``_rotation_blocked``
        self.rotations_put_off = 0   # spells of refused rotations (``_put_off``), not their retries
        self.rotations = 0
        self.torn_cut = 0          # torn (partly written) lines cut off the file
        self.files_dropped = 0     # rotated files deleted to write on a full disk
        self.bytes_dropped = 0     # their bytes
        self._close_failed = False  # a failed close was logged (once)
        self._undeletable_logged: set[str] = set()   # rotated logs whose deletion on a full disk failed (logged)

    def write(self, obj: dict[str, Any]) -> None:
        """Append one row; on a full disk delete the oldest rotated file and try again (see the class doc); a log
        file that cannot be created on a disk out of inodes raises ENOSPC, deleting nothing."""
        line = json_line(obj)
        while True:
            try:
                self._write_line(line)
                return
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS:
                    raise
                if self._no_inode_for_file():
                    raise OSError(exc.errno, f"{no_inodes_text(self.path.parent)}: {self.path.name} cannot be "
                                  "created; no rotated log is deleted to make room for it (its rows would be gone): "
                                  "delete files there", str(self.path)) from exc
                if not self._drop_oldest(exc):
                    raise

    def _no_inode_for_file(self) -> bool:
        """After a failed write for want of space: whether it was the log's file that could not be created (it is
        missing) on a disk out of inodes, where deleting a rotated log would lose its rows for a file's inode only."""
        return not os.path.lexists(self.path) and out_of_inodes(self.path.parent)

    def _write_line(self, line: bytes) -> None:
        """Append ``line`` (whole, newline-terminated), rotating first when it would pass ``max_bytes`` (unless a
        rotation put off is not yet due again: ``_rotation_due``); a write that fails is cut back off the file and
        raised."""
        if self._f is None:
            self._open()
        if self._f.tell() > 0 and self._f.tell() + len(line) > self.max_bytes and self._rotation_due():
            self._rotate()
        if self._put_off_at is not None and self._f.tell() + len(line) > self._grow_limit:
            self._refuse_past_limit()
        start = self._f.tell()
        try:
            self._f.write(line)
            self._f.flush()
        except OSError:
            self._close_quietly()
            self._cut_back(start)
            raise

    def rotated_files(self) -> list[Path]:
        """This log's rotated files on disk, oldest first (``name.N`` .. ``name.1``; numbers past ``keep`` too,
        e.g. left by a run with a larger ``keep_files``)."""
        numbered = []
        for path in self.path.parent.glob(f"{glob.escape(self.path.name)}.*"):
            suffix = path.name[len(self.path.name) + 1:]
            if suffix.isdigit() and int(suffix) >= 1:
                numbered.append((int(suffix), path))
        return [path for _, path in sorted(numbered, reverse=True)]

    def _drop_oldest(self, exc: OSError) -> bool:
        """Delete the oldest rotated file it may delete to make room after ``exc`` (a full disk): one it may not
        (another account's in a sticky folder) is passed over for the next, logged once per file; False when none
        is left to delete, so the caller raises ``exc``."""
        files = self.rotated_files()
        for index, oldest in enumerate(files):
            try:
                size = oldest.stat().st_size
                oldest.unlink()
            except OSError as unlink_exc:
                self._undeletable(oldest, exc, unlink_exc)
                continue
            self._dropped(oldest, size, exc, len(files) - index - 1)
            return True
        return False

    def _undeletable(self, path: Path, exc: OSError, unlink_exc: OSError) -> None:
        """Deleting the rotated log ``path`` after ``exc`` (a full disk) failed (``unlink_exc``): one error per file
        name and object, later ones at debug level."""
        if path.name in self._undeletable_logged:
            log.debug("%s: deleting %s failed again: %s", self.path, path.name, unlink_exc)
            return
        self._undeletable_logged.add(path.name)
        log.error("%s: disk full (%s) and deleting the rotated log %s failed: %s; passed over for the next (rows "
                  "are not written once none is left until space is freed under %s)", self.path,
                  exc.strerror or exc, path.name, unlink_exc, self.path.parent)

    def _dropped(self, oldest: Path, size: int, exc: OSError, left: int) -> None:
        """The rotated log ``oldest`` (``size`` bytes) was deleted after ``exc`` (a full disk), ``left`` rotated
        files remain: counted and logged."""
        self.files_dropped += 1
        self.bytes_dropped += size
        log.warning("%s: disk full (%s): deleted the oldest rotated log %s (%.2f MB; its rows are gone) to write "
                    "on, %d rotated file(s) left (%d deleted so far, %.2f MB); free space under %s or lower "
                    "record.max_log_mb / keep_files", self.path, exc.strerror or exc, oldest.name, size / 2**20,
                    left, self.files_dropped, self.bytes_dropped / 2**20, self.path.parent)

    def room_to_grow(self) -> int:
        """Bytes this log may still take before its rotation caps it: what each of its ``keep + 1`` places (its file,
        ``.1`` .. ``.keep``) lacks of ``max_bytes``, its file's of ``_grow_limit`` while a rotation is put off.
        With every file within ``max_bytes`` that is ``(keep + 1) x max_bytes`` less what they hold; a file grown
        past it (a spell of rotations put off) keeps its excess until it ages out past ``.keep``, as the new files
        fill the other places, so that excess is not counted as room taken."""
        ceiling = self.max_bytes if self._put_off_at is None else self._grow_limit
        room = 0
        for path, limit in [(self.path, ceiling), *((p, self.max_bytes) for p in self._numbered())]:
            try:
                room += max(0, limit - path.stat().st_size)
            except OSError:   # not there (yet), or rotated away meanwhile
                room += limit
        return room

    def _numbered(self) -> list[Path]:
        """The rotated files this log keeps: ``name.1`` .. ``name.keep`` (``rotated_names``)."""
        return [self.path.with_name(name) for name in rotated_names(self.path.name, self.keep)]

    def _open(self) -> None:
        """Open for appending (``open_log``: never through a link), first cutting off a torn last line (the file
        does not end in a newline)."""
        fd = open_log(self.path)
        try:
            end = _whole_lines_end(fd)
            if end is not None:
                os.ftruncate(fd, end)
                self.torn_cut += 1
                log.warning("%s: cut off a torn last line at byte %d (a write had failed part-way)", self.path, end)
            self._f = open(fd, "ab")   # the descriptor: closed with the file object
        except BaseException:
            os.close(fd)
            raise

    def _cut_back(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (its length before a write that failed part-way), never through a
        link; if that fails too, the next ``_open`` cuts the torn line."""
        try:
            fd = os.open(self.path, os.O_WRONLY | NOT_THROUGH_LINKS)
            try:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode) and info.st_size > size:
                    os.ftruncate(fd, size)
                    self.torn_cut += 1
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("%s: cutting a failed write back to %d bytes failed: %s", self.path, size, exc)

    def _rotate(self) -> None:
        """Move the file to ``.1`` (``_move_to_rotated``; keep 0: start over in place) and open a new one. A rotation
        that fails (``OSError``: no free inode for the next file, another account's file in a sticky folder that
        this account may not move or delete, ...) moves nothing more and the log goes on in its file (``_put_off``):
        no rotated file is deleted for a rotation found refused before it began (``_move_to_rotated``)."""
        self._close_quietly()
        try:
            if self.keep > 0:
                self._move_to_rotated()
            else:
                self.path.unlink()
        except OSError as exc:
            self._put_off(exc)
            self._open()
            return
        self.rotations += 1
        self._resumed()
        self._open()

    def _move_to_rotated(self) -> None:
        """Shift the rotated files up one number as far as the first free one (``.1`` to ``.2`` ..; none free: the
        oldest, ``.keep``, is deleted first), move the file to ``.1`` and put a new empty file in its place, made
        before anything moves (``_next_file``). First the files it would move or delete are checked against the
        sticky folder's rule (``_refuse_unmovable``): one this process may not move raises EPERM before anything is
        deleted. A rotation that failed part-way anyway (a refusal the check cannot foresee) leaves a free number
        where it stopped: a retry moves files into it and deletes no further rotated file."""
        numbered = self._numbered()
        free = next((i for i, path in enumerate(numbered) if not os.path.lexists(path)), None)
        _refuse_unmovable([self.path, *numbered[:self.keep if free is None else free]])
        if free is None:
            numbered[-1].unlink()   # rotation's own loss; its inode is the one the new file takes
            free = self.keep - 1
        fresh = self._next_file()
        try:
            for i in range(free, 0, -1):
                os.replace(numbered[i - 1], numbered[i])
            os.replace(self.path, numbered[0])
            os.replace(fresh, self.path)
        except BaseException:
            discard_unfinished(fresh, "log file")
            raise

    def _next_file(self) -> Path:
        """The log's next file, made empty under a temporary name beside it (``disk.create_temporary``: mode 0o666
        less the umask, as ``open_log`` makes it); raises OSError (ENOSPC on a disk out of inodes)."""
        fd, fresh = create_temporary(self.path)
        os.close(fd)
        return fresh

    def _rotation_due(self) -> bool:
        """Whether the log may rotate now: always, unless a rotation was put off less than ``ROTATE_RETRY_S`` ago."""
        return self._put_off_at is None or self._clock() - self._put_off_at >= ROTATE_RETRY_S

    def _put_off(self, exc: OSError) -> None:
        """A rotation failed (``exc``): the log goes on past ``max_bytes`` up to ``_grow_limit`` (bytes: the room
        ``(keep + 1) x max_bytes`` less what its rotated files hold now, never less than ``max_bytes``, so a row that
        a working rotation would write is never refused; re-read at each retry, as its cause); one warning per
        spell, naming its cause (``_rotation_blocked``), counted once a spell in ``rotations_put_off``."""
        first = self._put_off_at is None
        self._put_off_at = self._clock()
        self.rotations_put_off += first   # counted once a spell: from its first refused try until a rotation
        rotated_held = sum(st.st_size for _, st in _stats(self._numbered()))
        self._grow_limit = max(self.max_bytes, (self.keep + 1) * self.max_bytes - rotated_held)
        self._blocked_by = cause, fix = self._rotation_blocked(exc)
        if not first:
            return
        log.warning("%s: %s, so it is not rotated: it grows past its %.3g MB (record.max_log_mb), at most to what its "
                    "rotated files would hold ((record.keep_files + 1) x max_log_mb), rotating again once it can "
                    "(tried every %g s); rows past that are not written (counted rows_failed); %s", self.path, cause,
                    self.max_bytes / 2**20, ROTATE_RETRY_S, fix)

    def _refuse_past_limit(self) -> None:
        """Raise ``EFBIG`` for a row that would take a log whose rotation is put off past ``_grow_limit``, in words:
        what stopped the rotation at its last try and the fix."""
        cause, fix = self._blocked_by
        raise OSError(errno.EFBIG, f"not rotated ({cause}): the row would take it past {self._grow_limit / 2**20:.3g} "
                      "MB (record.max_log_mb, or what its rotated files leave of (record.keep_files + 1) x "
                      "record.max_log_mb): rows are not written until it rotates (tried again every "
                      f"{ROTATE_RETRY_S:g} s); {fix}", str(self.path))

    def _rotation_blocked(self, exc: OSError) -> tuple[str, str]:
        """(what stopped the rotation, the fix) for the ``OSError`` ``exc`` it raised: no room for the log's next file
        (inodes: ``df -i``); a file of the log this process may not move or delete (``PERMISSION_ERRNOS``: another
        account's, named with its owner, in a sticky folder, as a trial `sudo fair-edge run` leaves them; the fix
        is its ``chown``); else the error as it came."""
        if exc.errno in DISK_FULL_ERRNOS:
            cause = (no_inodes_text(self.path.parent) if out_of_inodes(self.path.parent)
                     else f"disk full ({exc.strerror or exc})")
            return f"{cause}: the log's next file cannot be made", "delete files on that disk (e.g. old NG images)"
        if exc.errno not in PERMISSION_ERRNOS:
            return f"rotating it failed ({exc})", f"check {self.path.parent} and its files"
        theirs = [(p, _owner_name(st.st_uid)) for p, st in _stats([self.path, *self._numbered()])
                  if st.st_uid != os.geteuid()]
        me = _owner_name(os.geteuid())
        if not theirs:
            return (f"rotating it was refused ({exc})",
                    f"let {me} write {self.path.parent} (`sudo chown -R {me}: {self.path.parent}`)")
        named = ", ".join(f"{p.name} ({owner})" for p, owner in theirs)
        paths = [p for p, _ in theirs]
        return (f"rotating it was refused ({exc}): another account's files are in the way ({named}), as a run as "
                f"another account leaves them (e.g. a trial `sudo fair-edge run`), and {me} cannot move or delete "
                f"them in {self.path.parent}", f"give them to {me} (`sudo chown {me}: {' '.join(map(str, paths))}`)")

    def _resumed(self) -> None:
        """A rotation went through: a spell of rotations put off (``_put_off``) is over (one line)."""
        if self._put_off_at is not None:
            self._put_off_at = None
            log.info("%s: rotated again (its rotation put off %d time(s) so far)", self.path,
                     self.rotations_put_off)

    def _close_quietly(self) -> None:
        """Close the file; a failure (the unwritten rest of a line on a full disk) is logged once per
        object, later ones at debug level (the caller counts the write errors)."""
        f, self._f = self._f, None
        if f is None:
            return
        try:
            f.close()
        except OSError as exc:
            if not self._close_failed:
                self._close_failed = True
                log.warning("closing %s failed: %s (further close failures are not logged)", self.path, exc)
            else:
                log.debug("closing %s failed again: %s", self.path, exc)

    def close(self) -> None:
        self._close_quietly()


def open_log(path: Path) -> int:
    """A descriptor of the log ``path`` open for appending (``OPEN_LOG``; made with mode 0o666 less the umask when
    missing, as ``open(path, "ab")`` made it), blocking as usual once open. Raises OSError when ``path`` is a link
    (ELOOP: a link put in the output folder is never written through) or no regular file (a FIFO, a folder)."""
    try:
        fd = os.open(path, OPEN_LOG, 0o666)
    except OSError as exc:
        if os.path.islink(path):   # ELOOP (Linux), EMLINK (BSD): said in words
            raise OSError(exc.errno, f"a symbolic link (to {_link_target(path)}) is in the log's place; the station "
                          "never writes through a link in its output folder: remove the link", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"expected a regular file for the log, found {_kind(mode)}; remove it",
                          str(path))
        if NON_BLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse_unmovable(paths: list[Path]) -> None:
    """Raise ``PermissionError`` (EPERM) naming the first of ``paths`` (files of one folder) that this process may not
    move or delete by the sticky-bit rule: in a sticky (1777) folder only a file's owner, the folder's owner or root
    may. Other refusals (a folder it may not write) are left to the move itself."""
    folder = os.stat(paths[0].parent)
    me = os.geteuid()
    if me == 0 or not folder.st_mode & stat.S_ISVTX or folder.st_uid == me:
        return
    for path, info in _stats(paths):
        if info.st_uid != me:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(path))


def _stats(paths: list[Path]) -> list[tuple[Path, os.stat_result]]:
    """(path, its lstat) of each of ``paths`` that can be examined (one gone meanwhile is left out)."""
    found = []
    for path in paths:
        try:
            found.append((path, os.lstat(path)))
        except OSError:
            continue
    return found


def _owner_name(uid: int) -> str:
    """The account name of ``uid``, or the number where it names none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _link_target(path: Path) -> str:
    """Where the symbolic link ``path`` leads, as written; "?" when it cannot be read (removed meanwhile)."""
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _kind(mode: int) -> str:
    """What a file of ``mode`` (st_mode) is, in words: a FIFO, a folder, a device, a socket."""
    for test, words in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "a device"


def _whole_lines_end(fd: int, block: int = 4096) -> int | None:
    """None when the file open as ``fd`` is empty or ends in a newline; else the length of its whole lines (the
    byte after its last newline, 0 when it has none): where a torn last line begins."""
    size = os.fstat(fd).st_size
    pos = size
    while pos > 0:
        start = max(0, pos - block)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = os.read(fd, pos - start)
        if pos == size and chunk.endswith(b"\n"):
            return None
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return None if size == 0 else 0

"""The recorder: a JSONL log of every verdict and NG frames saved with heatmap overlays.

All writing happens on the recorder's own two threads, each behind its own bounded queue; ``record()`` never
blocks. The row writer (here) writes rows (verdicts.jsonl, gate.jsonl) from a queue of ``row_limit`` rows (16384, of
any kind: rows are small, so a burst of gate rows, one per part when the run ends with parts on the belt or when an
encoder loses the belt position, fits beside the verdicts; past it, the newest row is dropped, counted ``dropped``,
and the warning names the disk only when the row writer has written nothing for ``WRITER_STUCK_S``). The image
writer (``line.image_writer``) saves NG parts' images from a queue of its own, bounded by ``record.queue_size`` and
``record.queue_mb``; past them an NG part is logged without its images, counted ``images_skipped``. An NG part's row
and its images are queued apart when it is recorded, so no row ever waits behind an image write (a slow ``ng/`` disk
delayed verdicts.jsonl and gate.jsonl by minutes); its images may be saved before or after its row is written, and
neither is written twice. Disk guard (``line.disk_room``): while the free space or the free inodes under
``record.dir`` leave too little for what the logs' rotation may still need, images are no longer saved while the
verdict log goes on. A log that finds the disk full anyway (filled by something else) deletes its own oldest rotated
file and writes on (``RotatingJsonl``; logged, counted ``log_files_deleted``); one on a disk out of inodes deletes
nothing: it is not rotated but grows past ``max_log_mb`` until a file can be made, at most to what its rotated files
would hold (then its rows fail; ``log_rotations_put_off``). Rows falling more than
``BACKLOG_WARN_S`` of writing behind (a slow disk) are warned of once, naming the disk. An ``OSError`` (full disk,
unplugged drive) is counted in ``write_errors`` and logged once per kind; it never reaches the inspection loop.

Files: ``DIR/verdicts.jsonl`` and ``DIR/gate.jsonl`` (``line.row_logs``: rotation, what a row holds) and the NG
images ``DIR/ng/RUNID_SEQ_frame.EXT`` and ``DIR/ng/RUNID_SEQ_overlay.EXT`` (``line.ng_images``).

Closing: every row queued is written, NG images only for up to ``images_s`` (5 s): past it (or once
``stop_images`` was called) the image writer stops saving them (counted ``images_skipped``). The rows are waited for
while the writer keeps writing them: only one that writes no row for ``rows_s`` (5 s: a hung disk), or one still
writing ``rows_max_s`` after the close began (``CLOSE_ROWS_MAX_S``, 15 s, within the service's stop timeout: a disk
too slow for what is queued) leaves rows unwritten: counted ``lost_at_close`` and logged as an error saying which, as
is a row handed in after close; an image writer stuck past ``rows_s`` (inside one image's write) leaves the NG images
still queued counted ``images_skipped``, logged as an error. Rows are closed first, then images.

Counters (``stats()``): every row handed in is ``queued`` or ``dropped`` (``row_limit`` reached, never queued);
each queued row ends as exactly one of ``logged`` (verdicts.jsonl), ``gate_logged`` (gate.jsonl),
``rows_failed`` (its write raised) or ``lost_at_close``; ``pending`` (a gauge) is the rest, still
queued or being written, 0 after close:
``queued = logged + gate_logged + rows_failed + lost_at_close + pending``. ``images``: NG parts whose
images were saved; ``images_skipped``: not saved (disk guard, ``queue_size`` reached, close deadline);
``images_failed``: not saved because the frame or map could not be drawn or encoded (a frame the overlay refuses,
e.g. a bad shape: a bug upstream, not the disk; the part's row is logged); ``write_errors``: every failed write to
the disk, rows (= ``rows_failed``) and NG images; ``log_files_deleted``: rotated log files deleted to write rows on a
full disk (their rows are gone); ``log_rotations_put_off``: times a rotation of the logs was refused (another
account's rotated log in a sticky folder, no free inode) and put off (once a spell, until it rotates, not each
retry): the log grows past ``max_log_mb``, and once it holds what its rotated files would its rows fail
(``rows_failed``) until it rotates.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RecorderError
from ..disk import free_inodes
from ..records import Frame, Verdict, WallClock, new_run_id
from .close_cut import cut_reason
from .disk_room import DISK_CHECK_S, DiskRoom
from .image_writer import IDLE_POLL_S, IMAGE_BOUNDS, ImageWriter
from .row_logs import RowLogs
from .settings import RecordSettings
from .sinks.base import Counters

log = logging.getLogger(__name__)

RECORDER_COUNTERS = ("queued", "logged", "gate_logged", "rows_failed", "lost_at_close", "dropped",
                     "images", "images_skipped", "images_failed", "write_errors")
ROW_OUTCOMES = ("logged", "gate_logged", "rows_failed", "lost_at_close")   # each queued row ends as one
GATE_LOG = "gate"     # a queue item for gate.jsonl (record_gate)
CLOSE_IMAGES_S = 5.0  # close(): NG images still queued are saved for at most this long, seconds
CLOSE_ROWS_S = 5.0    # close(): then the writer is given up on after this long without writing a row (a hung disk)
# close(): the remaining rows get at most this long while the writer keeps writing (a slow disk), seconds. A station's
# stop gives it at most what is left of its one deadline (station/stop_deadline.py: the unit's TimeoutStopSec less
# 33 s, 32 of them held for a bundle loading); with only the disk slow, all of it (tests/test_recorder_disk_limits.py
# checks the sum)
CLOSE_ROWS_MAX_S = 15.0
CLOSE_POLL_S = 0.05   # close() looks at the writer's progress this often while it waits, seconds
BACKLOG_WARN_S = 3.0  # rows waiting that take longer than this to write at the writer's pace: one warning
BACKLOG_WINDOW_S = 1.0  # the writer's pace is measured over windows of at least this long, seconds
ROW_LIMIT = 16384     # queued rows at most (NG images queue apart): 16 x reject.max_pending's default
WRITER_STUCK_S = 1.0  # a full row queue whose writer wrote nothing for this long names the disk, seconds


def dropped_row(frame: Frame, reason: str = "dropped: capture queue full") -> dict:
    """The verdict log's row for a captured frame that was never inspected."""
    return {"seq": frame.seq, "t_capture": frame.t_capture, "inspected": False, "reason": reason,
            "source": frame.source, **({"camera": frame.camera} if frame.camera else {})}


def rows_deadline(start: float, last_row: float, rows_s: float, rows_max_s: float) -> float:
    """When close gives up on the row writer (seconds on the clock of ``start``, close's start): ``rows_s`` after its
    last row written (``last_row``; close's start when that was before), never past ``rows_max_s`` after the start."""
    return min(start + rows_max_s, max(start, last_row) + rows_s)


class Recorder:
    """Records verdicts and NG images on a writer thread.

    disk_usage: ``shutil.disk_usage``-like callable (tests hand in a fake one).
    disk_check_s: free space is re-read at most this often, seconds.
    row_limit: rows queued at most (at least ``settings.queue_size``); NG parts' images queue apart, at most
    ``settings.queue_size`` parts and ``settings.queue_mb``.
    run_id: written in every row and NG image name (a new one when None).
    timer: seconds, ``time.perf_counter``-like (tests hand in a fake clock): times each NG part's images (drawing
    the overlay; encoding and writing them) for the warning of a full image queue.
    inodes: ``disk.free_inodes``-like callable, free inodes (files) under a folder or None where the file system has
    no fixed number (tests hand in a fake one); read with the free space, at most every ``disk_check_s``.
    clock: monotonic seconds, ``time.monotonic``-like (tests hand in a fake clock): the free-space checks, the row
    writer's pace (the backlog warning) and close's wait for rows.
    ``images_off``: set once NG images are no longer saved (``stop_images``, or close past its deadline).
    """

    def __init__(self, settings: RecordSettings,
                 disk_usage: Callable[[Path], Any] = shutil.disk_usage,
                 disk_check_s: float = DISK_CHECK_S, run_id: str | None = None,
                 row_limit: int = ROW_LIMIT, timer: Callable[[], float] = time.perf_counter,
                 inodes: Callable[[Path], int | None] = free_inodes,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.run_id = run_id or new_run_id()
        self.clock = WallClock()
        self.dir = Path(settings.dir)
        try:
            (self.dir / "ng").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecorderError(f"record.dir: expected a writable folder, found {self.dir} "
                                f"({exc}); pick another dir or fix its permissions") from exc
        self._warned: set[str] = set()
        self._counters = Counters(RECORDER_COUNTERS)
        self._logs = RowLogs(self.dir, settings, self.run_id, self.clock, clock, self._counters, self._warn_once,
                             self._error_once)
        self._clock = clock
        # two queues, each bounded in _put under _lock: rows (row, extra) here, NG images (verdict, frame, map) in
        # the image writer's
        self._q: queue.Queue = queue.Queue()
        self._row_limit = max(int(row_limit), settings.queue_size)
        self._writer_seen = clock()         # when the row writer last wrote a row or found nothing to write
        self._pace = (self._writer_seen, 0)  # (row writer) the window its pace is measured over: start, rows written
        self._stop = threading.Event()
        self.images_off = threading.Event()
        self._closed = False
        # _lock: a row is counted queued, taken by the writer, settled and given up on under it, so each
        # queued row ends as exactly one ROW_OUTCOMES counter
        self._lock = threading.Lock()
        self._accepting = True              # False once the writer has stopped (or close gave up on it)
        self._abandoned = False             # close gave up on a stuck writer (it counted the writer's rows)
        self._row_settled = False           # the writer's item in hand has its row counted (images next)
        self._wakes = 0                     # close's wake-ups (None items) queued or in the writer's hand
        self._on_close: list[Callable[[dict[str, int]], None]] = []
        self._finished = False              # close() is done: on_close calls at once
        self._disk_room = DiskRoom(self.dir, settings, self._logs.room_mb, disk_usage, inodes, clock, disk_check_s,
                                   self._warn_once)
        self._images = ImageWriter(settings, self.dir, self.run_id, self._disk_room, lock=self._lock,
                                   counters=self._counters, stop=self._stop, images_off=self.images_off,
                                   warn_once=self._warn_once, error_once=self._error_once, timer=timer)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        self._images.start()

    def show_zones(self, outlines: list[np.ndarray]) -> None:
        """Draw these zone outlines ((K, 2) int32 (x, y) frame pixels each) on every NG overlay."""
        self._images.show_zones(outlines)

    def record(self, frame: Frame | None, verdict: Verdict,
               anomaly_map: np.ndarray | None = None, extra: dict | None = None) -> bool:
        """Queue one verdict (and, for an NG part, its frame and map) for writing.

        frame.image: (H, W, 3) uint8 BGR or (H, W) uint8; anomaly_map: (h, w) float32, any
        size (resized to the frame). Pass frame=None to log the verdict only. extra: fields added to
        the row (``verdict_late``, ``gate``).
        Returns False when the row was dropped (``row_limit`` reached, counted ``dropped``); an NG part past
        ``record.queue_size`` images waiting is still logged, without its images (counted ``images_skipped``).
        """
        keep_image = verdict.ng and self.settings.save_ng_images and frame is not None
        return self._put(verdict, extra, (verdict, frame, anomaly_map) if keep_image else None)

    def record_row(self, row: dict) -> bool:
        """Log a row that is no single frame's verdict (a multi-camera part: ``fair_edge.station.parts``); it
        needs ``t_capture`` (monotonic s)."""
        return self._put(row, None)

    def record_gate(self, row: dict) -> bool:
        """Log one reject-gate event in ``gate.jsonl`` (``RejectScheduler``'s ``on_part``): row holds
        seq, event, t (monotonic s) and the event's fields."""
        return self._put(row, GATE_LOG)

    def _put(self, row: Verdict | dict, extra: dict | str | None, images: tuple | None = None) -> bool:
        """Queue one row, and an NG part's ``images`` ``(verdict, frame, map)`` on the image queue (never blocks):
        False when the row was dropped (``row_limit`` reached; its images with it) or came late. An NG part whose
        images do not fit (``ImageWriter.offer``) is queued without them (``images_skipped``): the row is what
        accounts for the part, the images are what a slow disk cannot keep up with."""
        full = refused = None
        with self._lock:
            late = not self._accepting
            if late:
                self._counters.add("queued")
                self._counters.add("lost_at_close")
            elif self._q.qsize() >= self._row_limit:
                full = "rows"
                self._counters.add("dropped")
            else:
                self._q.put_nowait((row, extra))
                self._counters.add("queued")
                refused = self._images.offer(images) if images is not None else None
        if refused in IMAGE_BOUNDS:
            self._images.warn_full(refused)
        if full is not None:
            self._warn_full_rows()
            return False
        if late:
            self._error_once("late", "recorder: a row came after the recorder closed (seq %s): not written, "
                             "counted lost_at_close; close the recorder after what feeds it",
                             row.get("seq") if isinstance(row, dict) else getattr(row, "seq", None))
            return False
        return True

    def _warn_full_rows(self) -> None:
        """The one warning for rows dropped at ``row_limit`` (NG images at theirs: ``ImageWriter.warn_full``): it
        names the writer's last write, so a burst (the writer busy) is not blamed on the disk (the writer stuck)."""
        idle_s = self._clock() - self._writer_seen
        why = (f"the writer has written nothing for {idle_s:.1f} s: the disk under {self.dir} is hung or far too slow"
               if idle_s >= WRITER_STUCK_S else
               "the writer is writing: rows come in faster than it writes them (a burst larger than the bound)")
        self._warn_once("dropped-rows", "recorder: %d rows waiting to be written (the most it holds): dropping "
                        "rows, counted dropped; %s", self._row_limit, why)

    def stats(self) -> dict[str, int]:
        """The counters (see the module doc) and ``pending``: rows queued and not yet settled (a gauge)."""
        out = self._counters.snapshot()
        out["pending"] = out["queued"] - sum(out[k] for k in ROW_OUTCOMES)
        out["log_files_deleted"] = self._logs.files_deleted()
        out["log_rotations_put_off"] = self._logs.rotations_put_off()
        return out

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (rows and NG images), at most ``timeout`` s (tests,
        shutdown). True if done."""
        end = time.monotonic() + timeout
        while True:
            if self._q.unfinished_tasks == 0 and self._images.done():
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)

    def stop_images(self, reason: str) -> None:
        """From now on write rows only: NG images still queued or recorded later are skipped (counted
        ``images_skipped``); reason: why, for the one warning (e.g. the run ended with images unsaved)."""
        self._images.stop(reason)

    def on_close(self, fn: Callable[[dict[str, int]], None]) -> None:
        """Call ``fn(stats())`` when the recorder has closed (its final counters; at once when it already has):
        a run summary takes its counters from here, after the last row."""
        with self._lock:
            if not self._finished:
                self._on_close.append(fn)
                return
        self._call_on_close(fn)

    def close(self, images_s: float = CLOSE_IMAGES_S, rows_s: float = CLOSE_ROWS_S,
              rows_max_s: float = CLOSE_ROWS_MAX_S) -> None:
        """Write what is queued and stop the writer; safe twice.

        images_s: NG images are saved for at most this long, seconds (none when ``stop_images`` was called);
        then the remaining rows only (images counted ``images_skipped``). rows_s: the writer is then waited for as
        long as it keeps writing rows, until it has written none for this long, seconds (a hung disk), and for at
        most rows_max_s in all (a disk too slow for what is queued; ``CLOSE_ROWS_MAX_S`` fits the service's stop
        timeout): rows it still holds are counted ``lost_at_close`` and logged as an error, naming the disk, or the
        ``line.close_cut`` reason the close runs under (rows_max_s materially less than ``CLOSE_ROWS_MAX_S``: a
        station's stop deadline spent by earlier waits, ``station.line_side.close_recorder``). A writer holding no
        row is never given up on (woken by the close, it exits on its own: nothing lost, however little time there
        was). The image writer gets what is left of rows_s. Then the ``on_close`` callbacks get the final counters.
        """
        if self._closed:
            return
        self._closed = True
        if not self.images_off.is_set() and not self.flush(images_s):
            self.stop_images(f"closing, NG images still unsaved after {images_s:g} s")
        self.images_off.set()   # rows handed in from now on are written without images: close stays bounded
        self._stop.set()
        with self._lock:
            self._wakes += 1
            self._q.put_nowait(None)   # the row writer sees the stop now, not at its next idle poll
        self._images.wake()   # the image writer sees the stop
        waited_s = self._wait_rows(rows_s, rows_max_s)
        if self._thread.is_alive():
            self._abandon(waited_s, rows_s, rows_max_s)
        self._images.join(max(0.0, rows_s - waited_s), rows_s)
        with self._lock:
            self._finished = True
            hooks, self._on_close = self._on_close, []
        for fn in hooks:
            self._call_on_close(fn)

    def _wait_rows(self, rows_s: float, rows_max_s: float) -> float:
        """Wait for the row writer to finish what is queued (``close``): while it has written a row within the last
        ``rows_s``, at most ``rows_max_s`` in all (``rows_deadline``); returns the seconds waited (``clock``)."""
        start = self._clock()
        while True:
            now = self._clock()
            deadline = rows_deadline(start, self._writer_seen, rows_s, rows_max_s)
            if now >= deadline:
                return now - start
            self._thread.join(timeout=min(deadline - now, CLOSE_POLL_S))
            if not self._thread.is_alive():
                return self._clock() - start

    def _abandon(self, waited_s: float, rows_s: float, rows_max_s: float) -> None:
        """Give up on a writer stuck past close's deadline: the rows it holds and those queued are counted
        ``lost_at_close`` (if it finishes one later, that row is in the file but stays counted lost). The error
        says which deadline: no row written for ``rows_s`` (a hung disk), ``rows_max_s`` in all (a slow one), or
        rows_max_s cut short by a station's stop (``close_cut.cut_reason``: logged in the closing thread, where that
        reason is set). A writer holding no row loses nothing: no error (it was woken and exits on its own)."""
        with self._lock:
            self._accepting = False
            self._abandoned = True
            lost = 0
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                self._q.task_done()
                if item is None:
                    self._wakes -= 1
                else:
                    lost += 1
            in_hand = self._q.unfinished_tasks - self._wakes   # the writer's row (0 or 1): taken, not yet done
            if in_hand and not self._row_settled:
                lost += in_hand
            self._counters.add("lost_at_close", lost)
        if not lost:
            return
        cut_short_because = cut_reason()
        if waited_s >= rows_max_s and cut_short_because:
            log.error("recorder: %d row(s) not written when the close's %g s for them ended, counted lost_at_close: "
                      "%s", lost, rows_max_s, cut_short_because)
        elif waited_s >= rows_max_s:
            log.error("recorder: the writer was still writing rows %g s after closing (the most a stop waits for "
                      "them, so the service's stop timeout is kept): %d row(s) not written, counted lost_at_close; "
                      "the disk under %s is too slow for the rows (see the backlog warning): give record.dir a "
                      "faster disk", rows_max_s, lost, self.dir)
        else:
            log.error("recorder: the writer wrote no row for %g s while closing (a hung disk?): %d row(s) not "
                      "written, counted lost_at_close; check the disk under %s", rows_s, lost, self.dir)

    def _call_on_close(self, fn: Callable[[dict[str, int]], None]) -> None:
        try:
            fn(self.stats())
        except Exception:  # noqa: BLE001 - a summary hook must not break the shutdown
            log.exception("recorder: on_close callback %r failed", fn)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the row writer's thread ---------------------------------------------------------------
    def _run(self) -> None:
        """The row writer: write queued rows until stopped and nothing is queued; then close the log files."""
        try:
            while True:
                try:
                    item = self._q.get(timeout=IDLE_POLL_S)
                except queue.Empty:
                    item = None
                else:
                    if item is None:   # close's wake-up
                        with self._lock:
                            self._wakes -= 1
                            self._q.task_done()
                if item is None:
                    self._writer_seen = self._clock()
                    self._pace = (self._writer_seen, 0)   # idle: its pace is measured afresh
                    if self._stop.is_set() and self._stopped_idle():
                        return
                    continue
                try:
                    self._write_item(item)
                except Exception:  # noqa: BLE001 - a bug in one item must never stop the writer
                    self._counters.add("write_errors")
                    self._error_once("item", "recorder: writing an item failed", exc_info=True)
                finally:
                    with self._lock:   # with _row_settled, so close's _abandon sees one consistent state
                        self._row_settled = False
                        self._q.task_done()
        finally:
            self._logs.close()

    def _stopped_idle(self) -> bool:
        """Stopped and nothing queued: accept no more rows (a later one is counted lost_at_close). True to exit."""
        with self._lock:
            if self._q.empty():
                self._accepting = False
                return True
        return False

    def _write_item(self, item: tuple) -> None:
        """One queued row ``(row, extra)``, settled as one ROW_OUTCOMES counter."""
        row, extra = item
        with self._lock:
            if self._abandoned:   # close gave up on this writer and counted this row lost_at_close
                return
        outcome = self._logs.write_gate(row) if extra is GATE_LOG else self._logs.write_verdict(row, extra)
        now = self._clock()
        with self._lock:
            late = self._abandoned
            if not late:
                self._counters.add(outcome)
                self._row_settled = True
                self._writer_seen = now
        self._note_pace(now)
        if late:
            log.warning("recorder: row seq %s was %s after close gave up on it (counted lost_at_close)",
                        row.get("seq") if isinstance(row, dict) else getattr(row, "seq", None),
                        "written" if outcome != "rows_failed" else "tried")

    def _note_pace(self, now: float) -> None:
        """(row writer, after each row) Count the row in the current pace window; once the window is
        ``BACKLOG_WINDOW_S`` long, warn once when the rows waiting take more than ``BACKLOG_WARN_S`` to write at the
        pace it measured (``_warn_backlog``), and start the next window. One comparison per row otherwise."""
        start, rows = self._pace
        rows += 1
        if now - start < BACKLOG_WINDOW_S:
            self._pace = (start, rows)
            return
        self._pace = (now, 0)
        waiting = self._q.qsize()
        rows_per_s = rows / (now - start)
        if waiting > rows_per_s * BACKLOG_WARN_S:
            self._warn_backlog(waiting, rows_per_s)

    def _warn_backlog(self, waiting: int, rows_per_s: float) -> None:
        """The one warning of rows falling behind a slow disk: how many wait, how long they take at the writer's
        pace, and what happens to those still waiting at the stop."""
        if "rows-backlog" in self._warned:
            return
        self._warned.add("rows-backlog")
        log.warning("recorder: %d rows waiting to be written to the verdict and gate logs, about %.0f s of writing at "
                    "the %.3g rows/s the disk under %s takes: that disk is too slow for the rows (this warning is "
                    "given once); at the stop they are written for as long as it keeps writing, at most %g s, the "
                    "rest counted lost_at_close; give record.dir a faster disk", waiting, waiting / rows_per_s,
                    rows_per_s, self.dir, CLOSE_ROWS_MAX_S)

    def log_row(self, verdict: Verdict | dict) -> dict:
        """The verdict log's row for a verdict (or a dropped frame's row): run id and UTC time first
        (``RowLogs.row``; MQTT publishes the same row)."""
        return self._logs.row(verdict)

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg + " (further occurrences only counted)", *args)

    def _error_once(self, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.error(msg + " (further occurrences only counted)", *args, exc_info=exc_info)

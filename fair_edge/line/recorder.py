"""The recorder: a JSONL log of every verdict and NG frames saved with heatmap overlays.

All writing happens on the recorder's own two threads, each behind its own bounded queue; ``record()`` never
blocks. The row writer writes rows (verdicts.jsonl, gate.jsonl) from a queue of ``row_limit`` rows (16384, of any
kind: rows are small, so a burst of gate rows, one per part when the run ends with parts on the belt or when an
encoder loses the belt position, fits beside the verdicts; past it, the newest row is dropped, counted ``dropped``,
and the warning names the disk only when the row writer has written nothing for ``WRITER_STUCK_S``). The image
writer saves NG parts' images from a queue bounded by ``record.queue_size`` (64 NG parts) and ``record.queue_mb``
(1024 MB of their frames and maps; an NG part is always taken when none waits): an image is large and slow to
draw, encode and write; one more NG part is logged without its images, counted ``images_skipped``, and the one
warning says how long an NG part's images take to save here, so a PNG encoder too slow for the rate of NG images
is not blamed on the disk. An NG part's row and its images are queued apart when it is recorded, so no row ever
waits behind an image write (a slow ``ng/`` disk delayed verdicts.jsonl and gate.jsonl by minutes); its images
may be saved before or after its row is written, and neither is written twice. Disk guard: when
the free space under ``record.dir`` falls below ``min_free_mb`` plus what verdicts.jsonl and gate.jsonl may still
grow into before their rotation caps them (``(keep_files + 1) x max_log_mb`` each, less what they hold), or its free
inodes (files, ``df -i``) below what the logs' rotation may still make (``keep_files + 1`` each) plus
``MIN_FREE_INODES``, images are no longer saved (counted ``images_skipped``, one warning naming bytes or inodes) while
the verdict log goes on; saving resumes when room is back. A log that finds the disk full anyway (filled by something
else) deletes its own oldest rotated file and writes on (``RotatingJsonl``; logged, counted ``log_files_deleted``);
one on a disk out of inodes deletes nothing: it is not rotated but grows past ``max_log_mb`` until a file can be made.
Rows falling more than ``BACKLOG_WARN_S`` of writing behind (a slow disk) are warned of once, naming the disk. An
``OSError`` (full disk, unplugged drive) is counted in ``write_errors`` and logged once per kind; it never reaches the
inspection loop.

Files: ``DIR/verdicts.jsonl`` (+ ``.1`` .. ``.keep_files`` after rotation; gate.jsonl alike),
``DIR/ng/RUNID_SEQ_frame.EXT`` (the frame as captured) and ``DIR/ng/RUNID_SEQ_overlay.EXT`` (the
heat map over the frame, its colour scale, and the score, threshold, source and sequence number
written above; defect region boxes (red: fired a rule) and zone outlines drawn on it, the reason
written above). Every row carries the run id and the capture time in UTC (``time_utc``) beside
the monotonic one, so runs appended to one folder stay apart and a row can be traced to a real
moment. A frame the capture queue dropped gets a row too (``inspected: false``, ``reason``):
every captured part is accounted for in the log. A verdict that came after its part was decided
at the reject gate says what the gate did instead (``verdict_late: true``, ``gate``: e.g.
``rejected_uninspected``), so an OK verdict of a part rejected fail-safe is never read as a pass.

``DIR/gate.jsonl`` (with reject sinks): what happened to each part at the reject gate, one row per
event (``RejectScheduler(on_part=recorder.record_gate)``): ``event: gate`` with ``gate`` (passed,
rejected_ng, rejected_uninspected, passed_uninspected, gap_missed, position_lost: encoder mode, the
gate could not know where the part was, no pulse, ``reason`` says why) and ``verdict`` (ng, ok, none =
not in by the due time), and ``event: pulse`` per reject sink with ``pulse`` (delivered, late,
missed).

Closing: every row queued is written, NG images only for up to ``images_s`` (5 s): past it (or once
``stop_images`` was called) the images still queued are skipped and NG parts recorded later are logged without
theirs (counted ``images_skipped``, one warning); the images being saved then are finished. The rows are waited for
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
full disk (their rows are gone).
"""

from __future__ import annotations

import functools
import logging
import queue
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import FairEdgeError, RecorderError
from ..disk import free_inodes, write_whole
from ..images import encode_image, gray_2d, shape_text
from ..records import Frame, Verdict, WallClock, new_run_id
from .jsonl import RotatingJsonl
from ..plots import heat_scale, heatmap_panel, threshold_mark
from ..regions import draw_regions
from .settings import RecordSettings
from .sinks.base import Counters

log = logging.getLogger(__name__)

RECORDER_COUNTERS = ("queued", "logged", "gate_logged", "rows_failed", "lost_at_close", "dropped",
                     "images", "images_skipped", "images_failed", "write_errors")
ROW_OUTCOMES = ("logged", "gate_logged", "rows_failed", "lost_at_close")   # each queued row ends as one
GATE_LOG = "gate"     # a queue item for gate.jsonl (record_gate)
DISK_CHECK_S = 1.0   # re-read free space (bytes and inodes) at most this often
# inodes (files) kept free under record.dir beside the ones the logs' rotation may still need ((keep_files + 1) per
# log): the NG images saved between two checks (DISK_CHECK_S apart, 2 files per NG part: 1000 covers 500 NG parts a
# second), the temporaries of summary.json and the console's files, and anything else the station creates there
MIN_FREE_INODES = 1000
LOGS = 2              # the JSONL logs in record.dir: verdicts.jsonl, gate.jsonl
CLOSE_IMAGES_S = 5.0  # close(): NG images still queued are saved for at most this long, seconds
CLOSE_ROWS_S = 5.0    # close(): then the writer is given up on after this long without writing a row (a hung disk)
# close(): the remaining rows get at most this long while the writer keeps writing (a slow disk), seconds. Fits the
# systemd unit's stop timeout: TimeoutStopSec (station/service_unit.py: the belt's drain + STOP_MARGIN_S, 30 s) leaves
# the stop 30 s past the drain for CLOSE_IMAGES_S + 1 s of NG images (station/line_side.py finish_line), then this, the
# sinks' CLOSE_DRAIN_S (2 s) and the rest (tests/test_recorder_disk_limits.py checks the sum)
CLOSE_ROWS_MAX_S = 15.0
CLOSE_POLL_S = 0.05   # close() looks at the writer's progress this often while it waits, seconds
BACKLOG_WARN_S = 3.0  # rows waiting that take longer than this to write at the writer's pace: one warning
BACKLOG_WINDOW_S = 1.0  # the writer's pace is measured over windows of at least this long, seconds
ROW_LIMIT = 16384     # queued rows at most (NG images queue apart): 16 x reject.max_pending's default
WRITER_STUCK_S = 1.0  # a full row queue whose writer wrote nothing for this long names the disk, seconds
IMAGE_BOUNDS = ("images", "image_bytes")   # the bounds of NG images waiting: record.queue_size, .queue_mb
IMAGES_OFF = "off"    # _image_refusal: NG images are no longer saved (stop_images, close)
IDLE_POLL_S = 0.1     # a writer with nothing queued looks for the stop this often, seconds


def dropped_row(frame: Frame, reason: str = "dropped: capture queue full") -> dict:
    """The verdict log's row for a captured frame that was never inspected."""
    return {"seq": frame.seq, "t_capture": frame.t_capture, "inspected": False, "reason": reason,
            "source": frame.source, **({"camera": frame.camera} if frame.camera else {})}


def rows_deadline(start: float, last_row: float, rows_s: float, rows_max_s: float) -> float:
    """When close gives up on the row writer (seconds on the clock of ``start``, close's start): ``rows_s`` after its
    last row written (``last_row``; close's start when that was before), never past ``rows_max_s`` after the start."""
    return min(start + rows_max_s, max(start, last_row) + rows_s)


def _image_bytes(item: tuple | None) -> int:
    """Bytes an image queue item ``(verdict, frame, map)`` holds: its frame's and its map's (0 for None)."""
    if item is None:
        return 0
    frame, amap = item[1], item[2]
    return int(getattr(frame.image, "nbytes", 0)) + int(getattr(amap, "nbytes", 0))


def image_array(image: object) -> np.ndarray:
    """A frame's image to save as it is; ``RecorderError`` for one that is no numpy array (a malformed frame's None
    or list, which the station judged NG, not inspected): ``_write_images`` counts it ``images_failed``."""
    if isinstance(image, np.ndarray):
        return image
    raise RecorderError(f"expected the frame's image as a numpy array; found {type(image).__name__}")


def _ascii(text: str) -> str:
    """The reason as the image font (ASCII only) can draw it: mm² -> mm2, ≥ -> >=, letters with accents without
    them (a zone named Dichtfläche -> Dichtflache: NFKD, combining marks dropped) and any other character '?'."""
    plain = unicodedata.normalize("NFKD", text.replace("²", "2").replace("≥", ">="))
    return "".join("?" if not c.isascii() else c for c in plain if not unicodedata.combining(c))


def score_line(verdict: Verdict) -> str:
    """An NG image's first line: its score against the threshold. "> threshold T" only when the score is over it; a
    part NG at or under it says why: "<= threshold T, NG by rule" (the rule's reason is written below) or, for a
    frame that could not be judged (``Verdict.error``, NG fail-safe), "NG: not inspected". The score alone where
    there is no finite threshold, "-" for a frame not scored."""
    if verdict.score is None:
        return "NG  score -"
    text = f"NG  score {verdict.score:.4f}"
    if not np.isfinite(verdict.threshold):
        return text
    if verdict.score > verdict.threshold:
        return text + f" > threshold {verdict.threshold:.4f}"
    why = "NG by rule" if verdict.hits else ("NG: not inspected" if verdict.error else "NG")
    return text + f" <= threshold {verdict.threshold:.4f}, {why}"


def ng_image_path(folder: Path, run_id: str, seq: int, kind: str, ext: str, camera: str = "") -> Path:
    """Where the recorder saves an NG part's image (``ng/RUN_SEQ_KIND.EXT``, so a later run into the
    same folder overwrites nothing; ``ng/RUN_CAMERA_SEQ_KIND.EXT`` for a camera of several, whose
    sequence numbers are its own); kind: ``frame`` (as captured) or ``overlay``."""
    return Path(folder) / "ng" / f"{run_id}_{camera + '_' if camera else ''}{seq:08d}_{kind}.{ext}"


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
        self._log = RotatingJsonl(self.dir / "verdicts.jsonl",
                                  int(settings.max_log_mb * 1024 * 1024), settings.keep_files, clock)
        self._gate_log: RotatingJsonl | None = None   # opened with the first gate event
        self._disk_usage = disk_usage
        self._inodes = inodes
        self._clock = clock
        self._disk_ok = True
        self._disk_checked = float("-inf")
        self._disk_check_s = disk_check_s
        self._warned: set[str] = set()
        self._counters = Counters(RECORDER_COUNTERS)
        # two queues, each bounded in _put under _lock: rows (row, extra) and NG images (verdict, frame, map)
        self._q: queue.Queue = queue.Queue()
        self._images_q: queue.Queue = queue.Queue()
        self._row_limit = max(int(row_limit), settings.queue_size)
        self._images_waiting = 0            # NG parts in _images_q (not yet taken by the image writer)
        self._image_bytes = 0               # their frames' and maps' bytes (record.queue_mb)
        self._image_budget = int(settings.queue_mb * 1024 * 1024)
        self._saving = False                # (under _lock) the image writer saves a part's images now (finished
                                            # whatever stop_images says)
        self._images_open = True            # False once the image writer has stopped (or close gave up on it)
        self._timer = timer
        self._image_times = (0, 0.0, 0.0)   # NG parts saved, seconds drawing overlays, seconds encoding + writing
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
        self._on_close: list[Callable[[dict[str, int]], None]] = []
        self._finished = False              # close() is done: on_close calls at once
        self.zone_outlines: list[np.ndarray] = []
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._image_thread = threading.Thread(target=self._run_images, name="recorder-images", daemon=True)
        self._thread.start()
        self._image_thread.start()

    def show_zones(self, outlines: list[np.ndarray]) -> None:
        """Draw these zone outlines ((K, 2) int32 (x, y) frame pixels each) on every NG overlay."""
        self.zone_outlines = list(outlines)

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
        images do not fit (``_image_refusal``) is queued without them (``images_skipped``): the row is what
        accounts for the part, the images are what a slow disk cannot keep up with."""
        size = _image_bytes(images)
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
                refused = self._image_refusal(size) if images is not None else None
                self._q.put_nowait((row, extra))
                self._counters.add("queued")
                if refused is not None:
                    self._counters.add("images_skipped")
                elif images is not None:
                    self._images_q.put_nowait(images)
                    self._images_waiting += 1
                    self._image_bytes += size
        if refused in IMAGE_BOUNDS:
            self._warn_full(refused)
        if full is not None:
            self._warn_full(full)
            return False
        if late:
            self._error_once("late", "recorder: a row came after the recorder closed (seq %s): not written, "
                             "counted lost_at_close; close the recorder after what feeds it",
                             row.get("seq") if isinstance(row, dict) else getattr(row, "seq", None))
            return False
        return True

    def _image_refusal(self, size: int) -> str | None:
        """(under self._lock) Why an NG part's images of ``size`` bytes are not queued: ``IMAGES_OFF`` (images are
        no longer saved: ``stop_images``, close), ``images`` (``settings.queue_size`` NG parts' images waiting),
        ``image_bytes`` (its bytes would pass ``settings.queue_mb`` of images waiting; an NG part with none waiting
        always fits), or None when they fit."""
        if self.images_off.is_set() or not self._images_open:
            return IMAGES_OFF
        if self._images_waiting >= self.settings.queue_size:
            return "images"
        if self._images_waiting and self._image_bytes + size > self._image_budget:
            return "image_bytes"
        return None

    def _warn_full(self, bound: str) -> None:
        """The one warning per bound for items dropped there (one for both image bounds); a full image queue says
        how long an NG part's images take to save here (``_images_slow``); a full row queue names the writer's
        last write, so a burst (the writer busy) is not blamed on the disk (the writer stuck)."""
        if bound in IMAGE_BOUNDS:
            waiting = (f"{self.settings.queue_size} NG images waiting to be saved (record.queue_size)"
                       if bound == "images" else
                       f"NG images of {self._image_bytes / 2**20:.0f} MB waiting to be saved (record.queue_mb: "
                       f"{self.settings.queue_mb:g})")
            self._warn_once("dropped-images", "recorder: %s: logging NG parts without their images (counted "
                            "images_skipped); %s", waiting, self._images_slow())
            return
        idle_s = self._clock() - self._writer_seen
        why = (f"the writer has written nothing for {idle_s:.1f} s: the disk under {self.dir} is hung or far too slow"
               if idle_s >= WRITER_STUCK_S else
               "the writer is writing: rows come in faster than it writes them (a burst larger than the bound)")
        self._warn_once("dropped-rows", "recorder: %d rows waiting to be written (the most it holds): dropping "
                        "rows, counted dropped; %s", self._row_limit, why)

    def _images_slow(self) -> str:
        """Why NG images fall behind, in words: the seconds an NG part's images take to save here (drawing the
        overlay; encoding and writing both images), measured by the writer, and what makes them faster. The disk
        is not blamed: drawing and PNG-encoding the images of a 20 MP frame alone take about 1 s a part."""
        saved, draw_s, save_s = self._image_times
        fmt = self.settings.image_format
        fix = ("set record.image_format: jpg (it encodes large frames about 5x faster than png, into smaller files) "
               "or save none (record.save_ng_images: false)" if fmt == "png" else
               "save none (record.save_ng_images: false), or give record.dir a faster disk")
        if not saved:
            return (f"NG parts come faster than their images are saved (none saved yet: large frames take long "
                    f"to encode as {fmt}); {fix}")
        each_s = (draw_s + save_s) / saved
        return (f"each NG part's images take {each_s:.2f} s to save here ({draw_s / saved:.2f} s drawing the overlay, "
                f"{save_s / saved:.2f} s encoding {fmt} and writing, mean of {saved}): at most "
                f"{1 / max(each_s, 1e-9):.2g} NG parts a second keep their images; {fix}")

    def stats(self) -> dict[str, int]:
        """The counters (see the module doc) and ``pending``: rows queued and not yet settled (a gauge)."""
        out = self._counters.snapshot()
        out["pending"] = out["queued"] - sum(out[k] for k in ROW_OUTCOMES)
        out["log_files_deleted"] = sum(f.files_dropped for f in self._log_files())
        return out

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (rows and NG images), at most ``timeout`` s (tests,
        shutdown). True if done."""
        end = time.monotonic() + timeout
        while True:
            if self._q.unfinished_tasks == 0 and self._images_q.unfinished_tasks == 0:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)

    def stop_images(self, reason: str) -> None:
        """From now on write rows only: NG images still queued or recorded later are skipped (counted
        ``images_skipped``); reason: why, for the one warning (e.g. the run ended with images unsaved)."""
        with self._lock:   # with the writer's choice for its item in hand: the count below is exact
            if self.images_off.is_set():
                return
            self.images_off.set()
            skipped, saving = self._images_waiting, self._saving
        log.warning("recorder: NG images no longer saved (%s): %d NG part(s) still queued are logged without their "
                    "images (counted images_skipped)%s", reason, skipped,
                    "; the NG part whose images are being saved now is finished" if saving else "")

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
        timeout): rows it still holds are counted ``lost_at_close`` and logged as an error. The image writer gets
        what is left of rows_s. Then the ``on_close`` callbacks get the final counters.
        """
        if self._closed:
            return
        self._closed = True
        if not self.images_off.is_set() and not self.flush(images_s):
            self.stop_images(f"closing, NG images still unsaved after {images_s:g} s")
        self.images_off.set()   # rows handed in from now on are written without images: close stays bounded
        self._stop.set()
        self._images_q.put_nowait(None)   # wakes the image writer to see the stop (taken and done like an item)
        waited_s = self._wait_rows(rows_s, rows_max_s)
        if self._thread.is_alive():
            self._abandon(waited_s, rows_s, rows_max_s)
        self._image_thread.join(timeout=max(0.0, rows_s - waited_s))
        if self._image_thread.is_alive():
            self._abandon_images(rows_s)
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
        says which deadline: no row written for ``rows_s`` (a hung disk), or ``rows_max_s`` in all (a slow one)."""
        with self._lock:
            self._accepting = False
            self._abandoned = True
            lost = 0
            while True:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break
                self._q.task_done()
                lost += 1
            in_hand = self._q.unfinished_tasks   # the writer's item (0 or 1): taken, not yet done
            if in_hand and not self._row_settled:
                lost += in_hand
            self._counters.add("lost_at_close", lost)
        if waited_s >= rows_max_s:
            log.error("recorder: the writer was still writing rows %g s after closing (the most a stop waits for "
                      "them, so the service's stop timeout is kept): %d row(s) not written, counted lost_at_close; "
                      "the disk under %s is too slow for the rows (see the backlog warning): give record.dir a "
                      "faster disk", rows_max_s, lost, self.dir)
        else:
            log.error("recorder: the writer wrote no row for %g s while closing (a hung disk?): %d row(s) not "
                      "written, counted lost_at_close; check the disk under %s", rows_s, lost, self.dir)

    def _abandon_images(self, waited_s: float) -> None:
        """Give up on an image writer still running at close's deadline: the NG images still queued are counted
        ``images_skipped``; a part in hand (its write stuck) is counted when (if) its write returns. Logged as an error
        when there was either (an idle writer that has not yet seen the stop exits on its own)."""
        with self._lock:
            self._images_open = False
            skipped, stuck = 0, self._saving
            while True:
                try:
                    item = self._images_q.get_nowait()
                except queue.Empty:
                    break
                self._images_q.task_done()
                if item is not None:
                    self._images_waiting -= 1
                    self._image_bytes -= _image_bytes(item)
                    skipped += 1
            self._counters.add("images_skipped", skipped)
        if skipped or stuck:
            log.error("recorder: the image writer did not finish within %g s of closing (a hung disk?): %d NG "
                      "part(s)' images not saved, counted images_skipped; check the disk under %s", waited_s, skipped,
                      self.dir)

    def _call_on_close(self, fn: Callable[[dict[str, int]], None]) -> None:
        try:
            fn(self.stats())
        except Exception:  # noqa: BLE001 - a summary hook must not break the shutdown
            log.exception("recorder: on_close callback %r failed", fn)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer threads: rows, NG images -------------------------------------------------------
    def _run(self) -> None:
        """The row writer: write queued rows until stopped and nothing is queued; then close the log files."""
        try:
            while True:
                try:
                    item = self._q.get(timeout=IDLE_POLL_S)
                except queue.Empty:
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
            self._log.close()
            if self._gate_log is not None:
                self._gate_log.close()

    def _run_images(self) -> None:
        """The image writer: save queued NG parts' images until stopped and nothing is queued (a ``None`` item only
        wakes it to see the stop)."""
        while True:
            try:
                item = self._images_q.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                item = None
            else:
                try:
                    if item is not None:
                        self._save_item(item)
                except Exception:  # noqa: BLE001 - a bug in one item must never stop the writer
                    self._counters.add("write_errors")
                    self._error_once("image-item", "recorder: saving an NG part's images failed", exc_info=True)
                finally:
                    with self._lock:   # with _saving, so stop_images and close's _abandon_images see one state
                        self._saving = False
                        self._images_q.task_done()
            if self._stop.is_set() and self._images_stopped_idle():
                return

    def _images_stopped_idle(self) -> bool:
        """Stopped and no NG image queued: take no more images (a later NG part is logged without them). True to
        exit."""
        with self._lock:
            if self._images_q.empty():
                self._images_open = False
                return True
        return False

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
        outcome = self._write_gate(row) if extra is GATE_LOG else self._write_log(row, extra)
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

    def _save_item(self, item: tuple) -> None:
        """One queued NG part's images ``(verdict, frame, map)``: saved, or skipped once images are off."""
        verdict, frame, amap = item
        with self._lock:   # decided with stop_images, which counts the images skipped
            self._images_waiting -= 1
            self._image_bytes -= _image_bytes(item)
            skip = self.images_off.is_set()
            self._saving = not skip
        if skip:
            self._counters.add("images_skipped")
            return
        self._write_images(frame, verdict, amap)

    def log_row(self, verdict: Verdict | dict) -> dict:
        """The verdict log's row for a verdict (or a dropped frame's row): run id and UTC time first."""
        row = verdict.to_json_dict() if isinstance(verdict, Verdict) else verdict
        return {"run_id": self.run_id, "time_utc": self.clock.iso(row["t_capture"]), **row}

    def _write_gate(self, row: dict) -> str:
        """Write one gate.jsonl row; returns its outcome: ``gate_logged`` or ``rows_failed`` (counted, logged once)."""
        if self._gate_log is None:
            self._gate_log = RotatingJsonl(self.dir / "gate.jsonl", int(self.settings.max_log_mb * 1024 * 1024),
                                           self.settings.keep_files, self._clock)
        make = lambda: {"run_id": self.run_id, "time_utc": self.clock.iso(row["t"]), **row}  # noqa: E731
        return self._write_row(self._gate_log, make, "gate", "a JSON-able row with 't' (monotonic s)", row,
                               "gate_logged")

    def _write_log(self, verdict: Verdict | dict, extra: dict | None = None) -> str:
        """Write one verdicts.jsonl row; returns its outcome: ``logged`` or ``rows_failed`` (counted, logged once)."""
        return self._write_row(self._log, lambda: {**self.log_row(verdict), **(extra or {})}, "verdict",
                               "a Verdict or a JSON-able row with 't_capture' (monotonic s)", verdict, "logged")

    def _write_row(self, log_file: RotatingJsonl, make: Callable[[], dict], kind: str, needs: str, given: object,
                   done: str) -> str:
        """Write the row ``make()`` builds to ``log_file``; ``done`` when written, else ``rows_failed``: an
        ``OSError`` (full disk) or a malformed row (a bug upstream: ``needs`` names what a row must hold), each
        counted in ``write_errors`` and logged once per kind; the writer thread never stops for either."""
        try:
            log_file.write(make())
        except OSError as exc:
            self._counters.add("write_errors")
            self._warn_once(f"{kind}-oserror", "%s log write failed: %s", kind, exc)
            return "rows_failed"
        except Exception:  # noqa: BLE001 - see the docstring
            self._counters.add("write_errors")
            self._error_once(f"{kind}-bad", "%s row not written: expected %s, found %r", kind, needs, given,
                             exc_info=True)
            return "rows_failed"
        return done

    def _overlay(self, image: np.ndarray, amap: np.ndarray, verdict: Verdict) -> np.ndarray:
        """Heatmap over the frame on the station's scale (``plots.heat_scale``: 0 .. 2 x threshold on every image,
        or for a fused bundle's map, ``Verdict.fused``, threshold -/+ its half scale), so the threshold is the middle
        of the colour map (green) and hot spots of NG parts show red; above it the score against the threshold
        (``score_line``), source and sequence number, beside it the colour scale."""
        image = gray_2d(image)
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
        threshold = verdict.threshold
        known = bool(np.isfinite(threshold))
        mark, why = threshold_mark(verdict.score, amap, threshold if known else None)
        lines = [score_line(verdict), f"seq {verdict.seq}  source {verdict.source or '-'}", *why] + (
            [_ascii(verdict.reason)] if verdict.hits else [])
        return heatmap_panel(bgr, amap, *heat_scale(amap, threshold, verdict.fused), lines, threshold=mark,
                             show_original=False, alpha=self.settings.overlay_alpha, min_side=0,
                             marks=self._marks(verdict))

    def _marks(self, verdict: Verdict) -> Callable[[np.ndarray], np.ndarray] | None:
        """Draws the verdict's regions and the zone outlines on the overlay, or None when there is neither."""
        if not verdict.regions and not self.zone_outlines:
            return None
        fired = {h.region for h in verdict.hits if h.region is not None}
        return functools.partial(draw_regions, regions=verdict.regions, fired=fired, zone_outlines=self.zone_outlines)

    def _write_images(self, frame: Frame, verdict: Verdict, amap: np.ndarray | None) -> None:
        """Save an NG part's frame and overlay. Neither a bad frame nor a full disk stops the writer: a frame or map
        that cannot be drawn or encoded is counted ``images_failed``, a failed disk write ``write_errors``, each
        warned once."""
        if not self._disk_has_room():
            self._counters.add("images_skipped")
            return
        ext = self.settings.image_format
        start = self._timer()
        try:
            images = [(ng_image_path(self.dir, self.run_id, verdict.seq, "frame", ext, verdict.camera),
                       gray_2d(image_array(frame.image)))]
            if amap is not None:
                images.append((ng_image_path(self.dir, self.run_id, verdict.seq, "overlay", ext, verdict.camera),
                               self._overlay(frame.image, amap, verdict)))
            drawn = self._timer()
            for path, img in images:
                # any file name (OpenCV's writer crashes on non-UTF-8); no fsync per image on the line
                write_whole(path, encode_image(img, f".{ext}"), "NG image", durable=False)
        except OSError as exc:
            self._counters.add("write_errors")
            self._warn_once("image-oserror", "saving NG image failed: %s; check the disk under %s", exc, self.dir)
            return
        except (cv2.error, FairEdgeError) as exc:   # what the overlay or the encoder refuses
            self._counters.add("images_failed")
            self._warn_once("image-bad", "NG image seq %d not saved: its frame %s or map %s could not be drawn or "
                            "encoded (%s); the part is in the verdict log", verdict.seq, shape_text(frame.image),
                            shape_text(amap), " ".join(str(exc).split()))
            return
        saved, draw_s, save_s = self._image_times
        self._image_times = (saved + 1, draw_s + drawn - start, save_s + self._timer() - drawn)   # one writer
        self._counters.add("images")

    def _logs_room_mb(self) -> float:
        """MB the logs may still grow into before rotation caps them (``RotatingJsonl.room_to_grow``): the verdict
        log's, and the gate log's once it is written; NG images leave it to them."""
        return sum(f.room_to_grow() for f in self._log_files()) / (1024 * 1024)

    def _log_files(self) -> list[RotatingJsonl]:
        """The JSONL logs: verdicts.jsonl, and gate.jsonl once its first row came."""
        return [self._log] + ([self._gate_log] if self._gate_log is not None else [])

    def _disk_has_room(self) -> bool:
        """Whether NG images may be saved: under ``record.dir`` (both re-read at most every ``disk_check_s``) the free
        space is at least ``min_free_mb`` plus what the logs may still grow into (``_logs_room_mb``), and the free
        inodes (files) at least what the logs' rotation may still make plus ``MIN_FREE_INODES`` (``_inodes_needed``),
        so images never take the room, bytes or files, the logs' own rotation needs; one warning when that stops
        (``_warn_no_room``: naming inodes, ``df -i``, where they are short), one line when it resumes."""
        now = self._clock()
        if now - self._disk_checked < self._disk_check_s:
            return self._disk_ok
        self._disk_checked = now
        try:
            free_mb = self._disk_usage(self.dir).free / (1024 * 1024)
        except OSError as exc:
            self._warn_once("disk-usage", "cannot read free space of %s: %s", self.dir, exc)
            return self._disk_ok
        inodes = self._inodes(self.dir)
        logs_mb = self._logs_room_mb()
        bytes_ok = free_mb >= self.settings.min_free_mb + logs_mb
        ok = bytes_ok and (inodes is None or inodes >= self._inodes_needed())
        if not ok and self._disk_ok:
            self._warn_no_room(free_mb, logs_mb, inodes, bytes_ok)
        elif ok and not self._disk_ok:
            log.info("%.0f MB%s free under %s again: saving NG images", free_mb,
                     "" if inodes is None else f" and {inodes} inodes (files)", self.dir)
        self._disk_ok = ok
        return ok

    def _inodes_needed(self) -> int:
        """Free inodes (files) under ``record.dir`` below which NG images stop: the files the verdict and gate logs
        may still make, ``keep_files + 1`` each (their rotation's), plus ``MIN_FREE_INODES``."""
        return LOGS * (self.settings.keep_files + 1) + MIN_FREE_INODES

    def _warn_no_room(self, free_mb: float, logs_mb: float, inodes: int | None, bytes_ok: bool) -> None:
        """The one warning when NG images stop for want of room: the bytes free against what is kept, or, where the
        bytes are there, the inodes (files) free against what is kept (``df -i`` shows them)."""
        if not bytes_ok:
            short_inodes = inodes is not None and inodes < self._inodes_needed()
            log.warning("only %.0f MB free under %s (< record.min_free_mb = %.0f + %.0f MB the verdict and gate logs "
                        "may still grow into, (keep_files + 1) x max_log_mb each)%s: NG images are no longer saved, "
                        "the verdict log goes on", free_mb, self.dir, self.settings.min_free_mb, logs_mb,
                        f" and only {inodes} free inodes (files) (`df -i`)" if short_inodes else "")
            return
        log.warning("only %d free inodes (files) left on the disk of %s (`df -i`; %.0f MB free) (< %d: the %d files "
                    "the verdict and gate logs' rotation may still make, (keep_files + 1) each, + %d kept free): NG "
                    "images are no longer saved, the verdict log goes on; delete files on that disk (e.g. old NG "
                    "images under %s)", inodes, self.dir, free_mb, self._inodes_needed(),
                    LOGS * (self.settings.keep_files + 1), MIN_FREE_INODES, self.dir / "ng")

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg + " (further occurrences only counted)", *args)

    def _error_once(self, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.error(msg + " (further occurrences only counted)", *args, exc_info=exc_info)

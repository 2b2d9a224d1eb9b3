"""The recorder's NG image writer: saves NG parts' frames and overlays (``line.ng_images``) on its own thread.

It takes NG parts' images from a queue bounded by ``record.queue_size`` (64 NG parts) and ``record.queue_mb`` (1024 MB
of their frames and maps; an NG part is always taken when none waits): an image is large and slow to draw, encode and
write; one more NG part is logged without its images, counted ``images_skipped``, and the one warning says how long an
NG part's images take to save here, so a PNG encoder too slow for the rate of NG images is not blamed on the disk.
The recorder queues an NG part's row and its images apart, so no row ever waits behind an image write. Images are
saved only while the disk guard (``line.disk_room``) finds room. Closing: once ``stop`` is called (``stop_images``,
or the recorder's close past its ``images_s``) the images still queued are skipped and NG parts recorded later are
logged without theirs (counted ``images_skipped``, one warning); the images being saved then are finished. A writer
still stuck in one image's write at close's deadline leaves the NG images still queued counted ``images_skipped``,
logged as an error. Counters (the recorder's): ``images``, ``images_skipped``, ``images_failed`` (a frame or map
that could not be drawn or encoded), ``write_errors`` (a failed disk write).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..disk import write_whole
from ..errors import FairEdgeError
from ..images import encode_image, gray_2d, shape_text
from .ng_images import draw_overlay, image_array, ng_image_path

if TYPE_CHECKING:
    from ..records import Frame, Verdict
    from .disk_room import DiskRoom
    from .settings import RecordSettings
    from .sinks.base import Counters

# the recorder's logger: these lines were the recorder's before its image writer had a module of its own (journal
# filters and tests select them by name)
log = logging.getLogger("fair_edge.line.recorder")

IMAGE_BOUNDS = ("images", "image_bytes")   # the bounds of NG images waiting: record.queue_size, .queue_mb
IMAGES_OFF = "off"    # _refusal: NG images are no longer saved (stop, close)
IDLE_POLL_S = 0.1     # a writer with nothing queued looks for the stop this often, seconds


def image_bytes(item: tuple | None) -> int:
    """Bytes an image queue item ``(verdict, frame, map)`` holds: its frame's and its map's (0 for None)."""
    if item is None:
        return 0
    frame, amap = item[1], item[2]
    return int(getattr(frame.image, "nbytes", 0)) + int(getattr(amap, "nbytes", 0))


class ImageWriter:
    """Saves queued NG parts' images for a ``Recorder`` on the thread "recorder-images".

    The recorder owns what its two writers share: ``lock`` (an NG part's row and its images are queued, taken and
    given up on under it), ``counters``, ``stop`` (set when it closes), ``images_off`` (set once NG images are no
    longer saved) and its once-per-kind log lines (``warn_once``, ``error_once``). folder: ``record.dir``; run_id: in
    every image name; room: the disk guard; timer: seconds, ``time.perf_counter``-like (tests hand in a fake clock):
    times each NG part's images (drawing the overlay; encoding and writing them) for the warning of a full queue.
    """

    def __init__(self, settings: RecordSettings, folder: Path, run_id: str, room: DiskRoom, *,
                 lock: threading.Lock, counters: Counters, stop: threading.Event, images_off: threading.Event,
                 warn_once: Callable[..., None], error_once: Callable[..., None],
                 timer: Callable[[], float]) -> None:
        self.settings, self.dir, self.run_id, self._room = settings, folder, run_id, room
        self._lock, self._counters, self._stop, self.images_off = lock, counters, stop, images_off
        self._warn_once, self._error_once = warn_once, error_once
        self._timer = timer
        self._q: queue.Queue = queue.Queue()   # (verdict, frame, map) items, bounded in offer under the lock
        self._waiting = 0                      # NG parts in _q (not yet taken by the writer)
        self._bytes = 0                        # their frames' and maps' bytes (record.queue_mb)
        self._budget = int(settings.queue_mb * 1024 * 1024)
        self._saving = False                   # (under the lock) the writer saves a part's images now (finished
                                               # whatever stop says)
        self._open = True                      # False once the writer has stopped (or close gave up on it)
        self._times = (0, 0.0, 0.0)            # NG parts saved, seconds drawing overlays, seconds encoding + writing
        self.zone_outlines: list[np.ndarray] = []
        self._thread = threading.Thread(target=self._run, name="recorder-images", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def show_zones(self, outlines: list[np.ndarray]) -> None:
        """Draw these zone outlines ((K, 2) int32 (x, y) frame pixels each) on every NG overlay."""
        self.zone_outlines = list(outlines)

    def offer(self, images: tuple) -> str | None:
        """(under the recorder's lock, the part's row queued) Queue one NG part's images ``(verdict, frame, map)``;
        when they do not fit (``_refusal``), count them ``images_skipped`` and return why, else None."""
        size = image_bytes(images)
        refused = self._refusal(size)
        if refused is not None:
            self._counters.add("images_skipped")
            return refused
        self._q.put_nowait(images)
        self._waiting += 1
        self._bytes += size
        return None

    def _refusal(self, size: int) -> str | None:
        """(under the lock) Why an NG part's images of ``size`` bytes are not queued: ``IMAGES_OFF`` (images are
        no longer saved: ``stop``, close), ``images`` (``settings.queue_size`` NG parts' images waiting),
        ``image_bytes`` (its bytes would pass ``settings.queue_mb`` of images waiting; an NG part with none waiting
        always fits), or None when they fit."""
        if self.images_off.is_set() or not self._open:
            return IMAGES_OFF
        if self._waiting >= self.settings.queue_size:
            return "images"
        if self._waiting and self._bytes + size > self._budget:
            return "image_bytes"
        return None

    def warn_full(self, bound: str) -> None:
        """The one warning for NG parts logged without their images at a bound (``IMAGE_BOUNDS``, one for both):
        how long an NG part's images take to save here (``_slow``)."""
        waiting = (f"{self.settings.queue_size} NG images waiting to be saved (record.queue_size)"
                   if bound == "images" else
                   f"NG images of {self._bytes / 2**20:.0f} MB waiting to be saved (record.queue_mb: "
                   f"{self.settings.queue_mb:g})")
        self._warn_once("dropped-images", "recorder: %s: logging NG parts without their images (counted "
                        "images_skipped); %s", waiting, self._slow())

    def _slow(self) -> str:
        """Why NG images fall behind, in words: the seconds an NG part's images take to save here (drawing the
        overlay; encoding and writing both images), measured by the writer, and what makes them faster. The disk
        is not blamed: drawing and PNG-encoding the images of a 20 MP frame alone take about 1 s a part."""
        saved, draw_s, save_s = self._times
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

    def done(self) -> bool:
        """Whether every NG part queued so far has been saved or skipped (``Recorder.flush``)."""
        return self._q.unfinished_tasks == 0

    def stop(self, reason: str) -> None:
        """From now on NG images still queued or recorded later are skipped (counted ``images_skipped``); reason:
        why, for the one warning (e.g. the run ended with images unsaved)."""
        with self._lock:   # with the writer's choice for its item in hand: the count below is exact
            if self.images_off.is_set():
                return
            self.images_off.set()
            skipped, saving = self._waiting, self._saving
        log.warning("recorder: NG images no longer saved (%s): %d NG part(s) still queued are logged without their "
                    "images (counted images_skipped)%s", reason, skipped,
                    "; the NG part whose images are being saved now is finished" if saving else "")

    def wake(self) -> None:
        """(close, after ``stop`` was set) Wake the writer to see the stop (a ``None`` item, taken and done like an
        NG part's)."""
        self._q.put_nowait(None)

    def join(self, timeout_s: float, closing_s: float) -> None:
        """(close) Wait up to ``timeout_s`` for the writer to finish; one still running then is given up on
        (``_abandon``; ``closing_s``: the seconds after close began that its error names)."""
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            self._abandon(closing_s)

    def _abandon(self, waited_s: float) -> None:
        """Give up on a writer still running at close's deadline: the NG images still queued are counted
        ``images_skipped``; a part in hand (its write stuck) is counted when (if) its write returns. Logged as an error
        when there was either (an idle writer that has not yet seen the stop exits on its own)."""
        with self._lock:
            self._open = False
            skipped, stuck = 0, self._saving
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                self._q.task_done()
                if item is not None:
                    self._waiting -= 1
                    self._bytes -= image_bytes(item)
                    skipped += 1
            self._counters.add("images_skipped", skipped)
        if skipped or stuck:
            log.error("recorder: the image writer did not finish within %g s of closing (a hung disk?): %d NG "
                      "part(s)' images not saved, counted images_skipped; check the disk under %s", waited_s, skipped,
                      self.dir)

    def _run(self) -> None:
        """The writer: save queued NG parts' images until stopped and nothing is queued (a ``None`` item only wakes
        it to see the stop)."""
        while True:
            try:
                item = self._q.get(timeout=IDLE_POLL_S)
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
                    with self._lock:   # with _saving, so stop and close's _abandon see one state
                        self._saving = False
                        self._q.task_done()
            if self._stop.is_set() and self._stopped_idle():
                return

    def _stopped_idle(self) -> bool:
        """Stopped and no NG image queued: take no more images (a later NG part is logged without them). True to
        exit."""
        with self._lock:
            if self._q.empty():
                self._open = False
                return True
        return False

    def _save_item(self, item: tuple) -> None:
        """One queued NG part's images ``(verdict, frame, map)``: saved, or skipped once images are off."""
        verdict, frame, amap = item
        with self._lock:   # decided with stop, which counts the images skipped
            self._waiting -= 1
            self._bytes -= image_bytes(item)
            skip = self.images_off.is_set()
            self._saving = not skip
        if skip:
            self._counters.add("images_skipped")
            return
        self._write_images(frame, verdict, amap)

    def _overlay(self, image: np.ndarray, amap: np.ndarray, verdict: Verdict) -> np.ndarray:
        """The NG part's overlay (``ng_images.draw_overlay``) with ``record.overlay_alpha`` and the zone outlines."""
        return draw_overlay(image, amap, verdict, self.settings.overlay_alpha, self.zone_outlines)

    def _write_images(self, frame: Frame, verdict: Verdict, amap: np.ndarray | None) -> None:
        """Save an NG part's frame and overlay. Neither a bad frame nor a full disk stops the writer: a frame or map
        that cannot be drawn or encoded is counted ``images_failed``, a failed disk write ``write_errors``, each
        warned once."""
        if not self._room.has_room():
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
        saved, draw_s, save_s = self._times
        self._times = (saved + 1, draw_s + drawn - start, save_s + self._timer() - drawn)   # one writer
        self._counters.add("images")

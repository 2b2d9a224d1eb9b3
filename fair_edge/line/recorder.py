"""The recorder: a JSONL log of every verdict and NG frames saved with heatmap overlays.

All writing happens on the recorder's own thread behind a bounded queue; ``record()`` never
blocks. Full queue: the newest item is dropped and counted (``dropped``). Disk guard: when the
free space under ``record.dir`` falls below ``min_free_mb``, images are no longer saved (counted
``images_skipped``, one warning) while the verdict log goes on; saving resumes when space is
back. An ``OSError`` (full disk, unplugged drive) is counted in ``write_errors`` and logged once
per kind; it never reaches the inspection loop.

Files: ``DIR/verdicts.jsonl`` (+ ``.1`` .. ``.keep_files`` after rotation),
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
"""

from __future__ import annotations

import functools
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import FairEdgeError, RecorderError
from ..records import Frame, Verdict, WallClock, new_run_id
from .jsonl import RotatingJsonl
from ..plots import heatmap_panel
from ..regions import draw_regions
from .settings import RecordSettings
from .sinks.base import Counters

log = logging.getLogger(__name__)

RECORDER_COUNTERS = ("queued", "logged", "images", "dropped", "images_skipped", "write_errors")
GATE_LOG = "gate"     # a queue item for gate.jsonl (record_gate)
DISK_CHECK_S = 1.0   # re-read free space at most this often


def dropped_row(frame: Frame, reason: str = "dropped: capture queue full") -> dict:
    """The verdict log's row for a captured frame that was never inspected."""
    return {"seq": frame.seq, "t_capture": frame.t_capture, "inspected": False, "reason": reason,
            "source": frame.source, **({"camera": frame.camera} if frame.camera else {})}


def _ascii(text: str) -> str:
    """The reason as the image font can draw it (mm² -> mm2, ≥ -> >=)."""
    return text.replace("²", "2").replace("≥", ">=")


def ng_image_path(folder: Path, run_id: str, seq: int, kind: str, ext: str, camera: str = "") -> Path:
    """Where the recorder saves an NG part's image (``ng/RUN_SEQ_KIND.EXT``, so a later run into the
    same folder overwrites nothing; ``ng/RUN_CAMERA_SEQ_KIND.EXT`` for a camera of several, whose
    sequence numbers are its own); kind: ``frame`` (as captured) or ``overlay``."""
    return Path(folder) / "ng" / f"{run_id}_{camera + '_' if camera else ''}{seq:08d}_{kind}.{ext}"


class Recorder:
    """Records verdicts and NG images on a writer thread.

    disk_usage: ``shutil.disk_usage``-like callable (tests hand in a fake one).
    disk_check_s: free space is re-read at most this often, seconds.
    run_id: written in every row and NG image name (a new one when None).
    """

    def __init__(self, settings: RecordSettings,
                 disk_usage: Callable[[Path], Any] = shutil.disk_usage,
                 disk_check_s: float = DISK_CHECK_S, run_id: str | None = None) -> None:
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
                                  int(settings.max_log_mb * 1024 * 1024), settings.keep_files)
        self._gate_log: RotatingJsonl | None = None   # opened with the first gate event
        self._disk_usage = disk_usage
        self._disk_ok = True
        self._disk_checked = float("-inf")
        self._disk_check_s = disk_check_s
        self._warned: set[str] = set()
        self._counters = Counters(RECORDER_COUNTERS)
        self._q: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self._stop = threading.Event()
        self._closed = False
        self.zone_outlines: list[np.ndarray] = []
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def show_zones(self, outlines: list[np.ndarray]) -> None:
        """Draw these zone outlines ((K, 2) int32 (x, y) frame pixels each) on every NG overlay."""
        self.zone_outlines = list(outlines)

    def record(self, frame: Frame | None, verdict: Verdict,
               anomaly_map: np.ndarray | None = None, extra: dict | None = None) -> bool:
        """Queue one verdict (and, for an NG part, its frame and map) for writing.

        frame.image: (H, W, 3) uint8 BGR or (H, W) uint8; anomaly_map: (h, w) float32, any
        size (resized to the frame). Pass frame=None to log the verdict only. extra: fields added to
        the row (``verdict_late``, ``gate``).
        Returns False when the queue was full and the item was dropped (counted).
        """
        keep_image = verdict.ng and self.settings.save_ng_images and frame is not None
        return self._put((verdict, frame if keep_image else None, anomaly_map if keep_image else None, extra))

    def record_row(self, row: dict) -> bool:
        """Log a row that is no single frame's verdict (a multi-camera part: ``fair_edge.station.parts``); it
        needs ``t_capture`` (monotonic s)."""
        return self._put((row, None, None, None))

    def record_gate(self, row: dict) -> bool:
        """Log one reject-gate event in ``gate.jsonl`` (``RejectScheduler``'s ``on_part``): row holds
        seq, event, t (monotonic s) and the event's fields."""
        return self._put((row, None, None, GATE_LOG))

    def _put(self, item: tuple) -> bool:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self._counters.add("dropped")
            self._warn_once("dropped", "recorder queue full (%d): dropping verdicts; the disk "
                            "is too slow for this frame rate", self._q.maxsize)
            return False
        self._counters.add("queued")
        return True

    def record_dropped(self, frame: Frame, reason: str = "dropped: capture queue full") -> bool:
        """Log a captured frame that will never be inspected (``CaptureThread(on_drop=...)``)."""
        return self._put((dropped_row(frame, reason), None, None, None))

    def stats(self) -> dict[str, int]:
        return self._counters.snapshot()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown). True if done."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._q.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return False

    def close(self) -> None:
        """Write what is queued (up to 5 s), stop the thread, close the log; safe twice."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            log.error("recorder thread did not stop within 5 s")
        self._log.close()
        if self._gate_log is not None:
            self._gate_log.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                verdict, frame, amap, extra = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if extra is GATE_LOG:
                    self._write_gate(verdict)
                    continue
                self._write_log(verdict, extra)
                if frame is not None:
                    self._write_images(frame, verdict, amap)
            finally:
                self._q.task_done()

    def log_row(self, verdict: Verdict | dict) -> dict:
        """The verdict log's row for a verdict (or a dropped frame's row): run id and UTC time first."""
        row = verdict.to_json_dict() if isinstance(verdict, Verdict) else verdict
        return {"run_id": self.run_id, "time_utc": self.clock.iso(row["t_capture"]), **row}

    def _write_gate(self, row: dict) -> None:
        if self._gate_log is None:
            self._gate_log = RotatingJsonl(self.dir / "gate.jsonl", int(self.settings.max_log_mb * 1024 * 1024),
                                           self.settings.keep_files)
        try:
            self._gate_log.write({"run_id": self.run_id, "time_utc": self.clock.iso(row["t"]), **row})
        except OSError as exc:
            self._counters.add("write_errors")
            self._warn_once("gate-oserror", "gate log write failed: %s", exc)

    def _write_log(self, verdict: Verdict | dict, extra: dict | None = None) -> None:
        row = self.log_row(verdict)
        if extra:
            row.update(extra)
        try:
            self._log.write(row)
            self._counters.add("logged")
        except OSError as exc:
            self._counters.add("write_errors")
            self._warn_once("log-oserror", "verdict log write failed: %s", exc)

    def _overlay(self, image: np.ndarray, amap: np.ndarray, verdict: Verdict) -> np.ndarray:
        """Heatmap over the frame on a fixed scale, 0 .. 2 x threshold, so the threshold is the
        middle of the colour map (green) and hot spots of NG parts show red on every image; above it
        the score, threshold, source and sequence number, beside it the colour scale."""
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
        threshold = verdict.threshold
        known = bool(np.isfinite(threshold) and threshold > 0)
        vmax = 2.0 * threshold if known else float(np.nanmax(amap)) + 1e-6
        lines = [f"NG  score {verdict.score:.4f}" + (f" > threshold {threshold:.4f}" if known else ""),
                 f"seq {verdict.seq}  source {verdict.source or '-'}"] + ([_ascii(verdict.reason)] if verdict.hits else [])
        return heatmap_panel(bgr, amap, 0.0, vmax, lines, threshold=threshold if known else None,
                             show_original=False, alpha=self.settings.overlay_alpha, min_side=0,
                             marks=self._marks(verdict))

    def _marks(self, verdict: Verdict) -> Callable[[np.ndarray], np.ndarray] | None:
        """Draws the verdict's regions and the zone outlines on the overlay, or None when there is neither."""
        if not verdict.regions and not self.zone_outlines:
            return None
        fired = {h.region for h in verdict.hits if h.region is not None}
        return functools.partial(draw_regions, regions=verdict.regions, fired=fired, zone_outlines=self.zone_outlines)

    def _write_images(self, frame: Frame, verdict: Verdict, amap: np.ndarray | None) -> None:
        if not self._disk_has_room():
            self._counters.add("images_skipped")
            return
        ext = self.settings.image_format
        try:
            images = [(ng_image_path(self.dir, self.run_id, verdict.seq, "frame", ext, verdict.camera), frame.image)]
            if amap is not None:
                images.append((ng_image_path(self.dir, self.run_id, verdict.seq, "overlay", ext, verdict.camera),
                               self._overlay(frame.image, amap, verdict)))
            for path, img in images:
                if not cv2.imwrite(str(path), img):
                    raise OSError(f"cv2.imwrite returned False for {path}")
            self._counters.add("images")
        except (OSError, cv2.error, FairEdgeError) as exc:  # a bad frame or full disk never stops the writer
            self._counters.add("write_errors")
            self._warn_once("image-oserror", "saving NG image failed: %s", exc)
        except (RecorderError, cv2.error) as exc:
            self._counters.add("write_errors")
            self._warn_once("image-bad", "NG image seq %d not saved: %s", verdict.seq, exc)

    def _disk_has_room(self) -> bool:
        now = time.monotonic()
        if now - self._disk_checked < self._disk_check_s:
            return self._disk_ok
        self._disk_checked = now
        try:
            free_mb = self._disk_usage(self.dir).free / (1024 * 1024)
        except OSError as exc:
            self._warn_once("disk-usage", "cannot read free space of %s: %s", self.dir, exc)
            return self._disk_ok
        ok = free_mb >= self.settings.min_free_mb
        if not ok and self._disk_ok:
            log.warning("only %.0f MB free under %s (< record.min_free_mb = %.0f): NG images are "
                        "no longer saved, the verdict log goes on", free_mb, self.dir,
                        self.settings.min_free_mb)
        elif ok and not self._disk_ok:
            log.info("%.0f MB free under %s again: saving NG images", free_mb, self.dir)
        self._disk_ok = ok
        return ok

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg + " (further occurrences only counted)", *args)

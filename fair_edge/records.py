"""The records that flow through a station: frames from a camera, verdicts to the line."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np


def new_run_id() -> str:
    """A run id that sorts by start time and does not repeat: ``20261129T134000Z-3f2a``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


class WallClock:
    """Turns ``time.monotonic()`` seconds into UTC wall-clock time, with the offset read once
    (at construction) so all times of a run share one clock and NTP steps do not reorder them."""

    def __init__(self) -> None:
        self.offset_s = time.time() - time.monotonic()

    def iso(self, t_monotonic: float) -> str:
        """ISO 8601 UTC with milliseconds, e.g. ``2026-11-29T13:40:00.123Z``."""
        t = datetime.fromtimestamp(t_monotonic + self.offset_s, timezone.utc)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Frame:
    """One camera frame.

    seq: sequence number assigned by the source, strictly increasing (gaps = frames lost).
    t_capture: ``time.monotonic()`` seconds when the frame was captured (or read).
    image: (H, W, 3) uint8 BGR or (H, W) uint8 gray, host memory; never mutated after creation.
    source: what produced it (camera name, file name of a replayed image).
    """

    seq: int
    t_capture: float
    image: np.ndarray = field(repr=False)
    source: str = ""


@dataclass(frozen=True)
class Verdict:
    """The decision for one frame.

    seq, t_capture, source: copied from the frame. score: image anomaly score (max of the map), None
    when the frame was not scored. threshold: the decision threshold in force. ng: score > threshold
    (True = reject the part). t_verdict: ``time.monotonic()`` seconds when the decision was made.
    error: why the frame could not be inspected ("" when it was). Fail-safe rule: a frame that
    cannot be inspected (malformed image, inference failure) gets score None and ng=True, so its
    part is rejected rather than passed unseen. model: id of the model that decided it
    (``fair_edge.runtime.hotswap.model_id``; "" when unknown).
    """

    seq: int
    t_capture: float
    score: float | None
    threshold: float
    ng: bool
    t_verdict: float
    source: str = ""
    error: str = ""
    model: str = ""

    @property
    def latency_ms(self) -> float:
        """Capture -> verdict latency in milliseconds."""
        return (self.t_verdict - self.t_capture) * 1000.0

    def to_json_dict(self) -> dict:
        return {
            "seq": self.seq,
            "t_capture": self.t_capture,
            "t_verdict": self.t_verdict,
            "latency_ms": round(self.latency_ms, 3),
            "score": self.score,
            "threshold": self.threshold,
            "ng": self.ng,
            "source": self.source,
            **({"error": self.error} if self.error else {}),
            **({"model": self.model} if self.model else {}),
        }

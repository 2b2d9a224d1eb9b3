"""The records that flow through a station: frames from a camera, verdicts to the line."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

    seq, t_capture, source: copied from the frame. score: image anomaly score (max of the map).
    threshold: the decision threshold in force. ng: score > threshold (True = reject the part).
    t_verdict: ``time.monotonic()`` seconds when the decision was made.
    error: why the frame could not be inspected ("" when it was). Fail-safe rule: a frame that
    cannot be inspected (malformed image, inference failure) gets score NaN and ng=True, so its
    part is rejected rather than passed unseen. model: id of the model that decided it
    (``fair_edge.hotswap.model_id``; "" when unknown).
    """

    seq: int
    t_capture: float
    score: float
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

"""What the reject scheduler hands to signal sinks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RejectEvent:
    """One reject pulse for one part.

    seq: the part's frame sequence number (one pulse per seq, never two).
    t_due: ``time.monotonic()`` seconds when the part is at the gate (rising edge wanted then).
    t_edge: monotonic seconds when the rising edge must be written: t_due, or up to late_ms
        later when min_gap_ms shifts it. The scheduler hands the event to the sinks a few
        ms early (``DISPATCH_LEAD_S``) and each sink waits for t_edge itself, so the thread hop
        scheduler -> sink is off the timing path.
    deadline: monotonic seconds after which a rising edge no longer hits the part; a sink that
        cannot write by then gives up and reports the miss (a stale pulse is never replayed:
        it would kick another part).
    uninspected: no verdict came by the due time and the ``reject`` fail-safe fired it anyway.
    score: the anomaly score, for logs (None when uninspected or not scored).
    count: the encoder count at capture (encoder mode), else None.
    """

    seq: int
    t_due: float
    t_edge: float
    deadline: float
    uninspected: bool = False
    score: float | None = None
    count: int | None = None

"""What the reject scheduler hands to signal sinks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RejectEvent:
    """One reject pulse for one part.

    seq: the verdict's sequence number (one pulse per NG seq, never two).
    t_due: ``time.monotonic()`` seconds when the part is at the gate (rising edge wanted then).
    t_edge: monotonic seconds when the rising edge must be written: t_due, or later when the
        reject is late or shifted by min_gap_ms. The scheduler hands the event to the sinks a few
        ms early (``DISPATCH_LEAD_S``) and each sink waits for t_edge itself, so the thread hop
        scheduler -> sink is off the timing path.
    deadline: monotonic seconds after which a rising edge no longer hits the part; a sink that
        cannot write by then gives up and reports the miss (a stale pulse is never replayed:
        it would kick another part).
    late: the verdict came too late for t_due and the ``reject`` fail-safe fired it anyway.
    score: the anomaly score, for logs.
    """

    seq: int
    t_due: float
    t_edge: float
    deadline: float
    late: bool = False
    score: float = float("nan")

"""What the reject scheduler hands to signal sinks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RejectEvent:
    """One reject pulse for one part.

    seq: the verdict's sequence number (one pulse per NG seq, never two).
    t_due: ``time.monotonic()`` seconds when the part is at the gate (rising edge wanted then).
    t_fire: monotonic seconds when the scheduler released it (>= t_due - ~1 ms).
    deadline: monotonic seconds after which a rising edge no longer hits the part; a sink that
        cannot write by then gives up and reports the miss (a stale pulse is never replayed:
        it would kick another part).
    late: the verdict came too late for t_due and the ``reject`` fail-safe fired it anyway.
    score: the anomaly score, for logs.
    """

    seq: int
    t_due: float
    t_fire: float
    deadline: float
    late: bool = False
    score: float = float("nan")

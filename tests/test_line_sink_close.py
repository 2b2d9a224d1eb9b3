"""A sink closed while pulses are queued or in progress finishes them: no output is left on."""

import threading
import time

from fair_edge.line.events import RejectEvent
from fair_edge.line.sinks.base import WorkerSink


class RecordingOutput:
    """Stands in for a PLC coil / GPIO line: records (time, level) of every write."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bool]] = []
        self.lock = threading.Lock()

    def open(self) -> None:
        pass

    def set(self, on: bool) -> None:
        with self.lock:
            self.writes.append((time.monotonic(), on))

    def close(self) -> None:
        pass


def test_close_finishes_queued_and_running_pulses():
    out = RecordingOutput()
    sink = WorkerSink("coil", out, pulse_ms=30)
    now = time.monotonic()
    events = [RejectEvent(seq=i, t_due=now + delay, t_edge=now + delay, deadline=now + delay + 1.0)
              for i, delay in enumerate((0.02, 0.08))]   # deadlines a loaded machine cannot miss: close is tested
    for event in events:
        sink.pulse(event)
    sink.close()  # both pulses are still ahead of us
    levels = [on for _, on in out.writes]
    rises = [t for t, on in out.writes if on]
    falls = [t for t, on in out.writes if not on]
    assert levels.count(True) == 2 and levels[-1] is False  # both pulsed, and the line ends off
    for event, rise in zip(events, rises):   # each at its edge time, never early; written before its deadline
        assert event.t_edge <= rise <= event.deadline, (event.seq, 1000 * (rise - event.t_edge))
        assert min(f for f in falls if f > rise) - rise >= 0.030   # a full pulse_ms, not cut short by close()
    assert sink.stats()["delivered"] == 2 and sink.stats()["missed"] == 0
    sink.close()  # twice is safe

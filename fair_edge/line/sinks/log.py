"""A sink that only writes log lines: the audit trail of every reject and fault change.

URL: ``log://`` (logger ``fair_edge.line.rejects``) or ``log://NAME`` (logger NAME). The sink writes through a
logger of its own named NAME, at INFO (``sink_logger``): a configured ``log://`` prints its lines at the station's
default level (WARNING, no ``-v``), as the docs promise one line per reject and fault change, to the handlers the
process gave logger NAME and its ancestors, and no logger's level is changed: ``log://fair_edge`` prints the sink's
lines under that name, not every module's INFO lines with them.
"""

from __future__ import annotations

import logging

from ..events import RejectEvent
from .base import Counters, Reporter, SINK_COUNTERS, SinkReport
from .urls import SinkUrl


class LogSink:
    """Writes one INFO line per pulse (WARNING when rejected uninspected) and one per fault change; inline and
    cheap, so it cannot lose an event while another sink's link is down."""

    def __init__(self, logger: logging.Logger | None = None, reporter: Reporter | None = None) -> None:
        self._log = logger or logging.getLogger("fair_edge.line.rejects")
        self.name = f"log {self._log.name}"
        self._counters = Counters(SINK_COUNTERS)
        self._report = reporter

    def pulse(self, event: RejectEvent) -> None:
        self._counters.add("pulses")
        shift_ms = (event.t_edge - event.t_due) * 1000.0
        self._log.log(logging.WARNING if event.uninspected else logging.INFO,
                      "reject seq=%d score=%s due=%.6f edge_shift_ms=%.2f%s%s", event.seq,
                      "none" if event.score is None else f"{event.score:.4g}", event.t_due, shift_ms,
                      "" if event.count is None else f" encoder_count={event.count}",
                      " UNINSPECTED" if event.uninspected else "",
                      extra={"reject_seq": event.seq, "reject_uninspected": event.uninspected})
        self._counters.add("delivered")
        if self._report is not None:
            self._report(SinkReport(self.name, "delivered", event.seq, "logged"))

    def set_fault(self, active: bool, reason: str) -> None:
        self._log.log(logging.WARNING if active else logging.INFO, "fault %s: %s",
                      "ON" if active else "off", reason,
                      extra={"fault_active": active})

    def stats(self) -> dict[str, int]:
        return self._counters.snapshot()

    def close(self) -> None:
        return None


def open_log_sink(url: SinkUrl, pulse_ms: float, reporter=None) -> LogSink:
    """The sink of a ``log://[NAME]`` URL, writing through a logger of its own (``sink_logger``)."""
    url.check_query(())
    return LogSink(sink_logger(url.netloc or "fair_edge.line.rejects"), reporter)


def sink_logger(name: str) -> logging.Logger:
    """A logger for one ``log://`` sink: named ``name``, at INFO (the station's default level is WARNING: at that a
    sink's pulses and "fault off" printed nothing), its records passed to the handlers of the process's logger
    ``name`` and that logger's ancestors (its ``parent``), as a record of logger ``name`` is. It is the sink's own,
    not the process's logger ``name`` (``logging.getLogger``), whose level, and so that of every logger under it, is
    left as it is: ``log://fair_edge`` setting ``fair_edge`` to INFO printed every module's INFO lines too."""
    logger = logging.Logger(name, logging.INFO)
    logger.parent = logging.getLogger(name)
    return logger

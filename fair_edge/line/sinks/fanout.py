"""Several sinks driven as one (e.g. PLC reject coil + stack light + log)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..events import RejectEvent
from .base import SignalSink

log = logging.getLogger(__name__)


class FanOut:
    """Calls every sink in turn; a sink that raises is logged and counted in ``errors`` and the
    others still get the call. ``close()`` closes each sink once (failures logged)."""

    def __init__(self, sinks: Iterable[SignalSink], name: str = "fan-out") -> None:
        self.sinks = list(sinks)
        self.name = name
        self.errors = 0
        self._closed = False

    def pulse(self, event: RejectEvent) -> None:
        for sink in self.sinks:
            try:
                sink.pulse(event)
            except Exception:  # noqa: BLE001 - one broken sink must not stop the others
                self.errors += 1
                log.exception("sink %s failed on reject seq %d", sink.name, event.seq)

    def set_fault(self, active: bool, reason: str) -> None:
        for sink in self.sinks:
            try:
                sink.set_fault(active, reason)
            except Exception:  # noqa: BLE001
                self.errors += 1
                log.exception("sink %s failed on fault=%s", sink.name, active)

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for sink in self.sinks:
            for key, value in sink.stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def per_sink_stats(self) -> dict[str, dict[str, int]]:
        return {sink.name: sink.stats() for sink in self.sinks}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - close the rest anyway
                log.exception("closing sink %s failed", sink.name)

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

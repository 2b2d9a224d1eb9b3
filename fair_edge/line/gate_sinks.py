"""The reject gate's outputs: the reject and fault sinks it is handed or opens from URLs (and then owns), the pulse
width they drive (the gate's slot span), and what a station asks of them at start (connected?), on its tick (per-sink
counters) and at the end (drained, closed).

Beside the path: a reject pulse goes from the gate's thread straight to the reject fan-out (``GateSinks.rejects``).
"""

from __future__ import annotations

import time

from ..errors import PlcError
from .settings import RejectSettings
from .sinks import CloseBy, FanOut, Reporter, SignalSink, begin_close, close_by, open_fanout


def sink_pulse_widths_ms(sink: SignalSink) -> list[float]:
    """The pulse widths, ms, that ``sink`` drives: its ``pulse_ms`` (a URL's own, else ``reject.pulse_ms``), or each
    of a fan-out's sinks'; none for a sink that does not say (a log sink: no timed output)."""
    members = getattr(sink, "sinks", None)
    if members is not None:
        return [width for member in members for width in sink_pulse_widths_ms(member)]
    width = getattr(sink, "pulse_ms", None)
    return [] if width is None else [float(width)]


def slot_span_s(settings: RejectSettings, sinks: SignalSink) -> float:
    """The gate's pulse slot width, s: the widest pulse any reject sink drives + ``reject.min_gap_ms``, so an
    output whose URL sets a longer pulse is never overlapped and one with a shorter pulse is not spaced for
    ``reject.pulse_ms``. ``reject.pulse_ms`` when no sink says its width (log or in-memory sinks only)."""
    widths = sink_pulse_widths_ms(sinks)
    return ((max(widths) if widths else settings.pulse_ms) + settings.min_gap_ms) / 1000.0


class GateSinks:
    """The gate's reject sinks (``rejects``) and fault sinks (``faults``): anything with the ``SignalSink`` methods
    (usually a ``FanOut``); when not handed in (None) they are opened from ``settings.sinks`` /
    ``settings.fault_sinks`` with ``reporter`` as their listener, and owned: closed by ``close()`` (and at once
    when a later one fails to open).
    """

    def __init__(self, settings: RejectSettings, reporter: Reporter, sinks: SignalSink | None = None,
                 fault_sinks: SignalSink | None = None) -> None:
        self.settings, self._reporter = settings, reporter
        self._owned: list[SignalSink] = []
        try:
            self.rejects = sinks if sinks is not None else self._own(settings.sinks, "rejects")
            self.faults = fault_sinks if fault_sinks is not None else self._own(settings.fault_sinks, "fault")
        except BaseException:
            self.close()
            raise

    def link_up(self, name: str) -> bool:
        """Whether sink ``name`` says its link is up (``connected``); True for a sink that does not say
        (in-memory sinks, a name no sink of ours has)."""
        for fan in (self.rejects, self.faults):
            for sink in getattr(fan, "sinks", [fan]):
                if getattr(sink, "name", None) == name:
                    return bool(getattr(sink, "connected", True))
        return True

    def per_sink_stats(self) -> dict[str, dict[str, int]]:
        """Per reject sink: pulses handed in, delivered, missed, ... (see ``SINK_COUNTERS``)."""
        per_sink = getattr(self.rejects, "per_sink_stats", None)
        return per_sink() if per_sink is not None else {self.rejects.name: self.rejects.stats()}

    def check_connected(self, timeout_s: float) -> None:
        """Raise ``PlcError`` naming each reject or fault sink not connected within ``timeout_s``
        (``reject.require_sinks_at_start``)."""
        down = []
        for fan in (self.rejects, self.faults):
            for sink in getattr(fan, "sinks", [fan]):
                wait = getattr(sink, "wait_connected", None)
                if wait is not None and not wait(timeout_s):
                    down.append(sink.name)
        if down:
            raise PlcError(f"reject.require_sinks_at_start: expected every sink to connect within "
                           f"{timeout_s:g} s, found {', '.join(down)} unreachable; check the PLC and "
                           f"its address, or set require_sinks_at_start: false")

    def drain(self, timeout_s: float) -> None:
        """Wait until pulses handed to the reject sinks are written, at most ``timeout_s`` (s) in all: one deadline
        the sinks share, each waited on for what is left of it (0 once it has passed: a look, no wait), so a stop
        with several stuck outputs waits ``timeout_s``, not ``timeout_s`` per output."""
        deadline = time.monotonic() + timeout_s
        for sink in getattr(self.rejects, "sinks", [self.rejects]):
            drain = getattr(sink, "drain", None)
            if drain is not None:
                drain(max(0.0, deadline - time.monotonic()))

    def begin_close(self, by: CloseBy) -> None:
        """Tell the sinks opened here to stop once their pulses are written (``sinks.begin_close``), waiting for none."""
        for sink in self._owned:
            begin_close(sink, by)

    def close(self, by: CloseBy | None = None) -> None:
        """Close the sinks opened here (the ones handed in are their owner's to close) within one ``by``
        (``CloseBy.from_now()`` when None): reject and fault outputs all told to stop before any is waited for."""
        by = by or CloseBy.from_now()
        self.begin_close(by)
        for sink in self._owned:
            close_by(sink, by)

    def _own(self, urls: tuple[str, ...], name: str) -> FanOut:
        fan = open_fanout(urls, self.settings.pulse_ms, self._reporter, name)
        self._owned.append(fan)
        return fan

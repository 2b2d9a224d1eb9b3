"""Signal sinks, opened from URLs through one registry keyed by scheme.

>>> sink = open_sink("modbus://10.0.0.5:502?unit=1&coil=0", pulse_ms=50)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .base import FanOut, Reporter, SignalSink, SinkReport, WorkerSink, log_reporter
from .gpio import open_gpio_sink
from .log import LogSink, open_log_sink
from .modbus import open_modbus_sink
from .opcua import open_opcua_sink
from .urls import SinkUrl, parse_sink_url, scheme_entry

SinkOpener = Callable[[SinkUrl, float, Reporter], SignalSink]

SINK_SCHEMES: dict[str, SinkOpener] = {
    "modbus": open_modbus_sink,
    "opcua": open_opcua_sink,
    "gpio": open_gpio_sink,
    "jetson": open_gpio_sink,
    "log": open_log_sink,
}


def open_sink(url: str, pulse_ms: float = 50.0, reporter: Reporter = log_reporter) -> SignalSink:
    """Open the sink ``url`` names. pulse_ms: default pulse width, ms (the URL may override).
    Raises ``SinkError`` for an unknown scheme (with the valid list) or a malformed URL."""
    parsed = parse_sink_url(url)
    return scheme_entry(SINK_SCHEMES, parsed, "sink")(parsed, pulse_ms, reporter)


def open_fanout(urls: Iterable[str], pulse_ms: float = 50.0,
                reporter: Reporter = log_reporter, name: str = "fan-out") -> FanOut:
    """Open every URL (closing the ones already open if a later one fails) into a ``FanOut``."""
    sinks: list[SignalSink] = []
    try:
        for url in urls:
            sinks.append(open_sink(url, pulse_ms, reporter))
    except BaseException:
        FanOut(sinks).close()
        raise
    return FanOut(sinks, name)


__all__ = ["SINK_SCHEMES", "FanOut", "LogSink", "SignalSink", "SinkReport", "WorkerSink",
           "open_fanout", "open_sink", "parse_sink_url"]

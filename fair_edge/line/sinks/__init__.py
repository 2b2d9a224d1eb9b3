"""Signal sinks, opened from URLs through one registry keyed by scheme.

>>> sink = open_sink("modbus://10.0.0.5:502?unit=1&coil=0", pulse_ms=50)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .base import CloseBy, FanOut, Reporter, SignalSink, SinkReport, WorkerSink, begin_close, close_by, log_reporter
from .gpio import open_gpio_sink, parse_gpio_url
from .log import LogSink, open_log_sink
from .modbus import open_modbus_sink, parse_modbus_url
from .opcua import open_opcua_sink, parse_opcua_url
from .urls import SinkUrl, parse_sink_url, scheme_entry

SinkOpener = Callable[[SinkUrl, float, Reporter], SignalSink]

SINK_SCHEMES: dict[str, SinkOpener] = {
    "modbus": open_modbus_sink,
    "opcua": open_opcua_sink,
    "gpio": open_gpio_sink,
    "jetson": open_gpio_sink,
    "log": open_log_sink,
}


# what each opener reads from its URL (scheme, host, options), without opening anything: one entry per scheme of
# SINK_SCHEMES (tests hold the two tables to the same schemes); ``parse_sink`` checks a URL so on load
SINK_URL_PARSERS: dict[str, Callable[[SinkUrl], object]] = {
    "modbus": parse_modbus_url,
    "opcua": parse_opcua_url,
    "gpio": parse_gpio_url,
    "jetson": parse_gpio_url,
    "log": lambda url: url.check_query(()),
}


def parse_sink(url: str) -> None:
    """Read ``url`` as ``open_sink`` will (``SINK_URL_PARSERS``), opening nothing; ``SinkError`` as it would raise."""
    parsed = parse_sink_url(url)
    scheme_entry(SINK_URL_PARSERS, parsed, "sink")(parsed)


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


__all__ = ["SINK_SCHEMES", "SINK_URL_PARSERS", "CloseBy", "FanOut", "LogSink", "SignalSink", "SinkReport", "WorkerSink",
           "begin_close", "close_by", "open_fanout", "open_sink", "parse_sink", "parse_sink_url"]

"""GPIO and log sinks: URL parsing and the missing-package path (no GPIO hardware here)."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from fair_edge.errors import SinkError
from fair_edge.line.events import RejectEvent
from fair_edge.line.sinks import open_sink, parse_sink_url
from fair_edge.line.sinks.gpio import parse_gpio_url


def test_gpiod_url():
    target, pulse = parse_gpio_url(parse_sink_url("gpio://gpiochip0/17?active=low&pulse_ms=30"))
    assert (target.kind, target.chip, target.line, target.active_low) == (
        "gpiod", "/dev/gpiochip0", 17, True)
    assert pulse == 30.0


def test_jetson_url():
    target, pulse = parse_gpio_url(parse_sink_url("jetson://BOARD/12"))
    assert (target.kind, target.chip, target.line, target.active_low) == (
        "jetson", "BOARD", 12, False)
    assert pulse is None


@pytest.mark.parametrize("url, line", [("jetson://CVM/GPIO09", "GPIO09"), ("jetson://tegra_soc/DAP4_SCLK", "DAP4_SCLK"),
                                       ("jetson://BCM/18", 18)])
def test_jetson_pins_are_numbers_in_board_and_bcm_and_names_in_cvm_and_tegra_soc(url, line):
    """Jetson.GPIO's CVM and TEGRA_SOC channels are names ('GPIO09'): the URL took only digits there, so the
    documented modes could not be used (a number never matches such a channel)."""
    target, _ = parse_gpio_url(parse_sink_url(url))
    assert target.line == line and target.chip in ("CVM", "TEGRA_SOC", "BCM")


@pytest.mark.parametrize("url, message", [
    ("gpio://gpiochip0/x", "expected gpio://gpiochip0/17"),
    ("jetson://CVM/12", "CVM names its pins; expected a pin name such as jetson://CVM/GPIO09"),
    ("jetson://BOARD/GPIO09", "BOARD numbers its pins; expected jetson://BOARD/12"),
    ("jetson://PHYS/12", "expected numbering BOARD | BCM"),
    ("gpio://gpiochip0/17?active=maybe", "active: expected one of high | low"),
    ("gpio://gpiochip0/17?pulse_ms=inf", "pulse_ms: expected a finite number >= 0, found 'inf'"),   # was taken
    ("gpio://gpiochip0/17?pulse_ms=nan", "pulse_ms: expected a finite number >= 0, found 'nan'"),
])
def test_bad_gpio_urls(url, message):
    with pytest.raises(SinkError, match=message):
        open_sink(url)


@pytest.mark.skipif(importlib.util.find_spec("gpiod") is not None, reason="gpiod installed")
def test_missing_gpiod_names_package_and_permissions():
    with pytest.raises(SinkError) as err:
        open_sink("gpio://gpiochip0/17")
    assert "'gpiod' package" in str(err.value) and "gpio' group" in str(err.value)


def test_missing_jetson_gpio_names_package():
    if importlib.util.find_spec("Jetson") is not None:
        pytest.skip("Jetson.GPIO installed")
    with pytest.raises(SinkError, match="'Jetson.GPIO' package"):
        open_sink("jetson://BOARD/12")


def test_log_sink(caplog):
    sink = open_sink("log://station.rejects")
    with caplog.at_level(logging.INFO, logger="station.rejects"):
        sink.pulse(RejectEvent(3, 1.0, 1.0, 1.01, uninspected=True, score=0.7, count=1234))
        sink.set_fault(True, "camera gone")
    assert "reject seq=3" in caplog.text and "UNINSPECTED" in caplog.text and "encoder_count=1234" in caplog.text and "fault ON" in caplog.text
    assert sink.stats()["delivered"] == 1
    sink.close()
    sink.close()


def test_bad_port_and_repeated_option():
    with pytest.raises(SinkError, match="port number"):
        parse_sink_url("modbus://127.0.0.1:99999?coil=0")
    with pytest.raises(SinkError, match="given twice"):
        parse_sink_url("modbus://127.0.0.1:502?coil=0&coil=1")


def test_gpiod_output_drives_the_line_through_the_v2_api(monkeypatch):
    """A stand-in for libgpiod v2 with its API names (request_lines, LineSettings,
    line.Direction/Value, LineRequest.set_value/release): the pulse reaches the line."""
    import enum
    import sys
    import time
    import types

    calls = []

    class Direction(enum.Enum):
        OUTPUT = 2

    class Value(enum.Enum):
        INACTIVE = 0
        ACTIVE = 1

    class Request:
        def set_value(self, offset, value):
            calls.append((offset, value))

        def release(self):
            calls.append("release")

    def request_lines(path, consumer=None, config=None):
        calls.append((path, consumer, sorted(config)))
        return Request()

    fake = types.ModuleType("gpiod")
    fake.line = types.SimpleNamespace(Direction=Direction, Value=Value)
    fake.LineSettings = lambda **kw: kw
    fake.request_lines = request_lines
    monkeypatch.setitem(sys.modules, "gpiod", fake)
    sink = open_sink("gpio://gpiochip0/17?pulse_ms=5")
    sink.pulse(RejectEvent(1, time.monotonic(), time.monotonic(), time.monotonic() + 1))
    end = time.monotonic() + 2

    def pulse_done():
        on = (17, Value.ACTIVE)
        return on in calls and (17, Value.INACTIVE) in calls[calls.index(on) + 1:]

    while not pulse_done() and time.monotonic() < end:
        time.sleep(0.01)
    sink.close()
    assert calls[0] == ("/dev/gpiochip0", "fair-edge", [17])
    assert pulse_done() and calls[-1] == "release"

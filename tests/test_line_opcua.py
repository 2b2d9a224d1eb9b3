"""Reject pulses over OPC UA against a real asyncua server on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("asyncua")

from fair_edge.errors import PlcDeviceError, SinkError  # noqa: E402
from fair_edge.line.scheduler import RejectScheduler  # noqa: E402
from fair_edge.line.settings import RejectSettings  # noqa: E402
from fair_edge.line.sinks import open_sink, parse_sink_url  # noqa: E402
from fair_edge.line.sinks.opcua import OpcUaOutput, parse_opcua_url  # noqa: E402
from line_replay import match_pulses, replay, report_timing, timing_errors_ms  # noqa: E402
from line_servers import OpcUaTestServer  # noqa: E402

PITCH_S = 0.040
DELAY_S = 0.200


@pytest.fixture(scope="module")
def server():
    srv = OpcUaTestServer().start()
    yield srv
    srv.close()


def _wait_connected(sink, timeout=10.0):
    end = time.monotonic() + timeout
    while not sink.connected and time.monotonic() < end:
        time.sleep(0.02)
    assert sink.connected


def test_pulse_mode_one_pulse_per_defective_part(server):
    defective = {0, 3, 4, 9, 12}
    sink = open_sink(server.url("ns=2;s=Reject"), pulse_ms=20)
    _wait_connected(sink)
    server.changes["Reject"].clear()
    with RejectScheduler(RejectSettings(delay_ms=DELAY_S * 1000, pulse_ms=20), sinks=sink) as s:
        run = replay(s, n=15, pitch_s=PITCH_S, defective=defective, delay_s=DELAY_S, seed=5)
        time.sleep(DELAY_S + 0.1)
    sink.close()
    rises = [t for t, v in server.changes["Reject"] if v is True]
    matched = match_pulses(rises, run.dues, PITCH_S / 2)
    assert all(len(m) == 1 for m in matched.values()) and len(rises) == len(defective)
    errors = timing_errors_ms(rises, run.dues, PITCH_S / 2)
    report_timing("opcua_pulse", errors)
    assert max(abs(e) for e in errors) <= 10.0, errors


def test_counter_mode_counts_rejects(server):
    sink = open_sink(server.url("ns=2;s=RejectCount", mode="counter"))
    _wait_connected(sink)
    # verdicts take up to 60 ms here: the gate must be further than that (a later verdict never fires)
    with RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=10), sinks=sink) as s:
        replay(s, n=6, pitch_s=PITCH_S, defective={1, 2, 4}, delay_s=0.1, seed=6)
        time.sleep(0.2)
    sink.close()
    values = [v for _, v in server.changes["RejectCount"]]
    assert values[-3:] == [values[-3], values[-3] + 1, values[-3] + 2] and len(values) >= 3


def test_writing_a_read_only_or_missing_node_is_a_device_error(server):
    target, _ = parse_opcua_url(parse_sink_url(server.url("ns=2;s=Reject")))
    out = OpcUaOutput(target)
    out.open()
    out._node = out._client.get_node("ns=2;s=NoSuchNode")  # the server answers BadNodeIdUnknown
    with pytest.raises(PlcDeviceError, match="server refused"):
        out.set(True)
    out.close()
    out.close()


def test_bad_opcua_url():
    with pytest.raises(SinkError, match="node="):
        open_sink("opcua://127.0.0.1:4840/fair/")
    with pytest.raises(SinkError, match="mode: expected one of pulse | counter"):
        open_sink("opcua://127.0.0.1:4840/?node=ns=2;s=X&mode=toggle")

"""Reject pulses over OPC UA against a real asyncua server on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("asyncua")

from fair_edge.errors import PlcBindingError, PlcDeviceError, PlcError, SinkError  # noqa: E402
from fair_edge.line.sinks import base  # noqa: E402
from fair_edge.line.scheduler import DISPATCH_LEAD_S, RejectScheduler  # noqa: E402
from fair_edge.line.settings import RejectSettings  # noqa: E402
from fair_edge.line.sinks import open_sink, parse_sink_url  # noqa: E402
from fair_edge.line.sinks.opcua import OpcUaOutput, parse_opcua_url  # noqa: E402
from line_replay import PulseAccount, check_plc_pulses, check_submits, replay, report_timing  # noqa: E402
from line_replay import timing_errors_ms  # noqa: E402
from line_servers import OpcUaTestServer, wait_for  # noqa: E402

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
    """One pulse per NG part whose verdict was in time (by the run's submit times), in part order; each pulse the
    sink reports delivered is a True write on the server's clock in [due, due + late_ms] (the server records it
    before it replies), >= pulse_ms wide; the sink's counters equal its reports. (How close to due:
    report_timing, BENCHMARKS.)"""
    defective = {0, 3, 4, 9, 12}
    account = PulseAccount()
    sink = open_sink(server.url("ns=2;s=Reject"), pulse_ms=20, reporter=account.report)
    _wait_connected(sink)
    server.changes["Reject"].clear()
    settings = RejectSettings(delay_ms=DELAY_S * 1000, pulse_ms=20)
    with RejectScheduler(settings, sinks=sink) as s:
        run = replay(s, n=15, pitch_s=PITCH_S, defective=defective, delay_s=DELAY_S, seed=5)
        scheduled = check_submits(run, DISPATCH_LEAD_S)
        assert account.wait_reported(scheduled, "opcua")
        stats = s.stats()
    sink.close()
    changes = list(server.changes["Reject"])
    rises, falls = [t for t, v in changes if v is True], [t for t, v in changes if v is False]
    assert sorted(account.results("opcua")) == scheduled == account.order("opcua")
    kinds = check_plc_pulses(rises, falls, account.results("opcua"), run.dues, late_ms=settings.late_ms,
                             pulse_ms=20, io_errors=sink.stats()["io_errors"])
    st = sink.stats()
    assert st["pulses"] == stats["fired"] == len(scheduled) and st["late_writes"] == len(kinds.get("late", ()))
    assert st["delivered"] == len(kinds.get("delivered", ())) + len(kinds.get("late", ()))
    report_timing("opcua_pulse", timing_errors_ms(rises, {q: run.dues[q] for q in kinds.get("delivered", ())},
                                                  PITCH_S / 2))


def test_counter_mode_counts_rejects(server):
    """Counter mode: the node goes up by one per pulse written, in order, never twice for one pulse."""
    account = PulseAccount()
    sink = open_sink(server.url("ns=2;s=RejectCount", mode="counter"), reporter=account.report)
    _wait_connected(sink)
    server.changes["RejectCount"].clear()
    with RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=10), sinks=sink) as s:
        run = replay(s, n=6, pitch_s=PITCH_S, defective={1, 2, 4}, delay_s=0.1, seed=6)
        scheduled = check_submits(run, DISPATCH_LEAD_S)   # a verdict after its part's cut-off never fires
        assert account.wait_reported(scheduled, "opcua")
    sink.close()
    values = [v for _, v in server.changes["RejectCount"]]
    results = account.results("opcua")
    assert sorted(results) == scheduled and all(len(r) == 1 for r in results.values())
    written = sum(r[0] in ("delivered", "late") for r in results.values())
    io_errors = sink.stats()["io_errors"]
    assert written <= len(values) <= written + io_errors, (values, results)
    steps = [b - a for a, b in zip(values, values[1:])]
    assert set(steps) <= {0, 1} and steps.count(0) <= io_errors, values   # +1 per pulse (a repeat: a lost reply)


def test_writing_a_read_only_or_missing_node_is_a_device_error(server):
    target, _ = parse_opcua_url(parse_sink_url(server.url("ns=2;s=Reject")))
    out = OpcUaOutput(target)
    out.open()
    out._node = out._client.get_node("ns=2;s=NoSuchNode")  # the server answers BadNodeIdUnknown
    with pytest.raises(PlcDeviceError, match="server refused"):
        out.set(True)
    out.close()
    out.close()


def test_the_probe_reads_the_node_and_never_writes_it(server):
    """``OpcUaOutput.probe`` (the idle link check) reads the node: the server sees no write, a node left True
    stays True; a Bad status reply is a ``PlcDeviceError`` (the server answered), a node that is gone a
    ``PlcBindingError`` (re-bind: a link failure), a dead client a ``PlcError``."""
    target, _ = parse_opcua_url(parse_sink_url(server.url("ns=2;s=Reject")))
    out = OpcUaOutput(target)
    out.open()
    try:
        out.set(True)
        written = len(server.changes["Reject"])   # (the server records each write before it replies)
        for _ in range(3):
            out.probe()
        assert len(server.changes["Reject"]) == written and out._node.read_value() is True
        out.set(False)
        node = out._node
        out._node = out._client.get_node("i=85")   # the Objects folder: no Value attribute (BadAttributeIdInvalid)
        with pytest.raises(PlcDeviceError, match="server refused the read"):
            out.probe()
        out._node = out._client.get_node("ns=2;s=NoSuchNode")
        with pytest.raises(PlcBindingError, match="BadNodeIdUnknown: the node is gone"):
            out.probe()
        out._node = node
    finally:
        out.close()
    with pytest.raises(PlcError, match="not connected"):
        out.probe()


def test_an_opcua_server_that_goes_away_while_idle_is_reported_link_down(monkeypatch):
    """Audit (line safety): the server stops while no pulse is due; the idle sink's probe finds it and reports
    ``link_down`` (the scheduler's fault output), once."""
    monkeypatch.setattr(base, "PROBE_S", 0.05)
    srv = OpcUaTestServer().start()
    kinds: list[str] = []
    sink = open_sink(srv.url("ns=2;s=Reject"), pulse_ms=20, reporter=lambda r: kinds.append(r.kind))
    try:
        _wait_connected(sink)
        assert kinds == []
    finally:
        srv.close()   # (once: the test server's close is not safe twice)
    try:
        assert wait_for(lambda: "link_down" in kinds, 10.0), kinds
        assert kinds.count("link_down") == 1 and sink.stats()["link_downs"] == 1
    finally:
        sink.close()


def test_bad_opcua_url():
    with pytest.raises(SinkError, match="node="):
        open_sink("opcua://127.0.0.1:4840/fair/")
    with pytest.raises(SinkError, match="mode: expected one of pulse | counter"):
        open_sink("opcua://127.0.0.1:4840/?node=ns=2;s=X&mode=toggle")

"""OPC UA nodes that change under a connected station, against a real asyncua server on 127.0.0.1 (audit 6,
OPC UA items 1, 2, 5, 6, 8, 9): a handshake result whose Result node refuses the write never shows Results Ready = 1
(and the heartbeat and Error still go out); a node retyped or deleted by a PLC program download is bound again (the
sink and the handshake reconnect and read it again), and a deleted reject node raises the fault while idle; a
password in the URL reaches the client only; a timeout is logged by its type's name and asyncua's teardown
traceback is quiet; ``nsu=`` node ids follow a namespace whose index changes across a server restart.

The handshake runs poll by poll (``Handshake._cycle`` / ``_poll``) on a fake clock; the sinks run their own worker
threads, watched with ``wait_for``."""

from __future__ import annotations

import logging
import re
import time

import pytest

pytest.importorskip("asyncua")

from fair_edge.errors import ConfigError, PlcBindingError, PlcError, SinkError  # noqa: E402
from fair_edge.line.events import RejectEvent  # noqa: E402
from fair_edge.line.handshake.engine import Handshake  # noqa: E402
from fair_edge.line.handshake.opcua import OpcUaLink  # noqa: E402
from fair_edge.line.handshake.settings import (ERROR_RESULT_TIMEOUT, HandshakeSettings,  # noqa: E402
                                               OpcUaSignals)
from fair_edge.line.handshake.sim_handshake_plc import OPCUA_TYPES  # noqa: E402
from fair_edge.line.sinks import base, open_sink, parse_sink_url  # noqa: E402
from fair_edge.line.sinks.opcua import OpcUaOutput, parse_opcua_url  # noqa: E402
from fair_edge.records import Frame, Verdict  # noqa: E402
from line_servers import FakeClock, NodeServer, free_port, wait_for  # noqa: E402

URI = NodeServer.URI

SECRET = "s3cr3t-pw"


def handshake_nodes() -> dict[str, tuple[str, object]]:
    """The handshake's nodes (``OpcUaSignals()``'s names, the test PLC's types)."""
    signals, out = OpcUaSignals(), {}
    for signal, type_name in OPCUA_TYPES.items():
        out[getattr(signals, signal).partition(";s=")[2]] = (type_name, False if type_name == "Boolean" else 0)
    return out


def handshake_on(srv: NodeServer, clock: FakeClock, signals: OpcUaSignals | None = None, **settings) -> Handshake:
    """A handshake over an ``OpcUaLink`` to ``srv``, connected and inspecting, its polls run by the test."""
    hs_settings = HandshakeSettings(url=srv.url(), poll_ms=5, heartbeat_ms=50, **settings)
    hs = Handshake(hs_settings, OpcUaLink(parse_sink_url(hs_settings.url), signals or OpcUaSignals()), clock=clock)
    assert hs._connect()
    hs.begin()
    hs._cycle(clock.advance(0.005))   # the first poll (a trigger already 1 then is left over: answered 3)
    return hs


def trigger_and_answer(hs: Handshake, srv: NodeServer, clock: FakeClock, seq: int, part_id: int, ng: bool) -> None:
    """The PLC triggers ``part_id``; one poll takes it, frame ``seq`` inspects it and its verdict comes (its result
    goes out at a later poll)."""
    srv.set("PartId", part_id)
    srv.set("Trigger", True)
    hs._cycle(clock.advance(0.005))
    ticket = hs.next_trigger(0.0)
    assert ticket is not None and ticket.part_id == part_id
    hs.bind(seq, ticket)
    hs.on_verdict(Frame(seq, 0.0, None, "line"), Verdict(seq, 0.0, 0.9 if ng else 0.1, 0.5, ng, 0.0, "line"))


def pulse_now(sink, seq: int) -> None:
    now = time.monotonic()
    sink.pulse(RejectEvent(seq=seq, t_due=now, t_edge=now, deadline=now + 10.0))


# ----------------------------------------------------------------------------- 1: a refused result write
def test_a_result_node_that_refuses_the_write_never_shows_results_ready_with_the_last_parts_data():
    """Audit t7: the Result node was made read-only holding part 1001's OK; the station's one Write of ResultPartId,
    Result, Score and Results Ready = 1 landed node by node, so the PLC saw Results Ready = 1 and part 1002's id next
    to Result = 1: an NG part taken as OK. And each poll raised before the heartbeat and Error were written. Now the
    data goes first, every node's status checked, and Results Ready = 1 only once all of it was written; the
    heartbeat and Error keep going out, and the part expires (Error 11)."""
    clock = FakeClock()
    with NodeServer(handshake_nodes()) as srv:
        hs = handshake_on(srv, clock, result_timeout_ms=100)
        try:
            trigger_and_answer(hs, srv, clock, 1, 1001, ng=False)
            hs._cycle(clock.advance(0.005))
            assert srv.value("ResultsReady") is True and srv.value("Result") == 1   # part 1001: OK, up
            srv.set("Ack", True)
            for _ in range(3):                          # acked; results_ready rests at 0 for two polls
                hs._cycle(clock.advance(0.005))
            assert srv.value("ResultsReady") is False
            srv.read_only("Result")                     # a PLC program download: the tag no longer writable
            flags_before, beats_before = len(srv.changes["ResultsReady"]), len(srv.changes["Heartbeat"])
            trigger_and_answer(hs, srv, clock, 2, 1002, ng=True)
            for _ in range(12):                         # 12 polls, 11 ms apart (a beat is due every 10 ms)
                hs._poll(clock.advance(0.011))          # (a poll: a device's refusal is counted, not raised)
            stats = hs.stats()
        finally:
            hs.close()
        flags_after = srv.changes["ResultsReady"][flags_before:]
        beats = len(srv.changes["Heartbeat"]) - beats_before
        error, result = srv.value("Error"), srv.value("Result")
    assert True not in flags_after, (flags_after, stats)     # the PLC never saw part 1002 "ready" with Result 1
    assert result == 1 and stats["device_errors"] >= 1 and stats["expired"] == 1, stats
    assert beats >= 10, beats                                # the heartbeat kept going out while refused
    assert error == ERROR_RESULT_TIMEOUT and stats["stale_acks"] == 0, (error, stats)


# ----------------------------------------------------------------------------- 2 + 5: nodes that change
def test_a_handshake_node_retyped_by_a_program_download_is_bound_again():
    """Audit t6: Result UInt16 -> Int16 while connected: every write BadTypeMismatch, counted device_errors for
    ever, every part expired. Now it is a binding error: the link is reopened (with the back-off), the nodes and
    their types read again, and the part's result goes out on the retyped node."""
    clock = FakeClock()
    with NodeServer(handshake_nodes()) as srv:
        hs = handshake_on(srv, clock, result_timeout_ms=5000)
        try:
            srv.retype("Result", "Int16")
            trigger_and_answer(hs, srv, clock, 1, 1001, ng=True)
            hs._poll(clock.advance(0.005))              # the result write meets BadTypeMismatch
            after_failure = hs.stats()
            assert not after_failure["connected"] and hs._next_try > 0.0, after_failure
            hs._next_try = 0.0                          # (the back-off's wait, not timed here)
            assert hs._connect()                        # reads the nodes and their types again
            hs._poll(clock.advance(0.005))
            stats = hs.stats()
        finally:
            hs.close()
        result, flag, part = srv.value("Result"), srv.value("ResultsReady"), srv.value("ResultPartId")
    assert after_failure["io_errors"] == 1 and after_failure["device_errors"] == 0, after_failure
    assert (result, flag, part) == (2, True, 1001), (result, flag, part, stats)
    assert stats["results"] == 1 and stats["reconnects"] == 1, stats


def test_a_reject_node_retyped_by_a_program_download_is_bound_again_and_the_pulse_delivered():
    """Audit t3: Reject Boolean -> Int16 while connected: every NG pulse a device_error BadTypeMismatch, missed, no
    reconnect. Now the write's BadTypeMismatch reconnects, the connect reads the new type, and the pulse is written
    (1, then 0, on the Int16 node) within its deadline."""
    kinds: list[str] = []
    with NodeServer({"Reject": ("Boolean", False)}) as srv:
        sink = open_sink(srv.url("node=ns=2;s=Reject"), pulse_ms=10, reporter=lambda r: kinds.append(r.kind))
        try:
            assert sink.wait_connected(10)
            srv.retype("Reject", "Int16")
            pulse_now(sink, 1)
            assert sink.drain(15)
            stats = sink.stats()
        finally:
            sink.close()
        written = list(srv.changes["Reject"])
    assert written[-2:] == [1, 0], (written, kinds)
    assert stats["delivered"] == 1 and stats["missed"] == stats["device_errors"] == 0, (stats, kinds)
    assert "io_error" in kinds, kinds   # the write's BadTypeMismatch (or a probe that read the new type first)


def test_the_probe_finds_a_node_whose_data_type_changed():
    """The idle probe reads the node's data type with its value: a tag retyped while idle is a binding error
    naming both types (the worker reconnects and reads it again), not a good read."""
    with NodeServer({"Reject": ("Boolean", False)}) as srv:
        target, _ = parse_opcua_url(parse_sink_url(srv.url("node=ns=2;s=Reject")))
        out = OpcUaOutput(target)
        out.open()
        try:
            out.probe()
            srv.retype("Reject", "Int16")
            with pytest.raises(PlcBindingError, match="data type changed from Boolean to Int16"):
                out.probe()
        finally:
            out.close()


def test_a_reject_node_deleted_while_idle_raises_the_fault_at_once(monkeypatch):
    """Audit t3: the Reject node deleted while no part was due: probes answered BadNodeIdUnknown, taken for "the
    link is up", no link_down until the next NG part's pulse failed. Now the probe's BadNodeIdUnknown re-binds, the
    reconnect cannot read the node: link_down (the fault output) with the node's status, before any pulse; the node
    back, the sink reconnects."""
    monkeypatch.setattr(base, "PROBE_S", 0.05)
    reports = []
    with NodeServer({"Reject": ("Boolean", False)}) as srv:
        sink = open_sink(srv.url("node=ns=2;s=Reject"), pulse_ms=10, reporter=reports.append)
        try:
            assert sink.wait_connected(10)
            srv.delete("Reject")
            assert wait_for(lambda: any(r.kind == "link_down" for r in reports), 10), [r.kind for r in reports]
            down = next(r for r in reports if r.kind == "link_down")
            srv.retype("Reject", "Boolean", False)
            assert wait_for(lambda: any(r.kind == "reconnected" for r in reports), 10), [r.kind for r in reports]
            stats = sink.stats()
        finally:
            sink.close()
    assert "BadNodeIdUnknown" in down.detail, down.detail
    assert stats["pulses"] == 0 and stats["link_downs"] == 1, stats


# ----------------------------------------------------------------------------- 6: a password in the URL
def test_a_password_in_the_url_reaches_the_client_and_nothing_else(caplog):
    """Audit t13: opcua://op:pw@host/... logged in, and printed the password in the sink's name (warnings, the
    fault reason, summary keys) and the handshake's. Now the user and password go to the client only."""
    reports = []
    caplog.set_level(logging.INFO)                      # (asyncua's own debug lines dump its requests, login too)
    caplog.set_level(logging.DEBUG, logger="fair_edge")
    with NodeServer(handshake_nodes() | {"Reject": ("Boolean", False)}, users={"op": SECRET}) as srv:
        sink = open_sink(srv.url("node=ns=2;s=Reject", userinfo=f"op:{SECRET}@"), pulse_ms=10,
                         reporter=reports.append)
        try:
            assert sink.wait_connected(10)            # the login worked
            pulse_now(sink, 1)
            assert sink.drain(15)
            name, stats = sink.name, sink.stats()
        finally:
            sink.close()
        link = OpcUaLink(parse_sink_url(srv.url(userinfo=f"op:{SECRET}@")), OpcUaSignals())
        link.open()
        try:
            link.write([("heartbeat", 7)])
        finally:
            link.close()
        beats = list(srv.changes["Heartbeat"])
        refused = OpcUaLink(parse_sink_url(srv.url(userinfo="op:wrong@")), OpcUaSignals())
        with pytest.raises(PlcError) as login_failed:
            refused.open()
    dead = open_sink(f"opcua://op:{SECRET}@127.0.0.1:{free_port()}/fair/?node=ns=2;s=Reject", pulse_ms=10,
                     reporter=reports.append)
    try:
        assert wait_for(lambda: any(r.kind == "link_down" for r in reports), 10)
    finally:
        dead.close()
    with pytest.raises(SinkError) as bad_option:
        open_sink(f"opcua://op:{SECRET}@127.0.0.1:4840/fair/?node=ns=2;s=Reject&nod=1")
    with pytest.raises(ConfigError) as bad_handshake:
        HandshakeSettings.from_dict({"url": f"opcua://op:{SECRET}@127.0.0.1:4840/fair/?timeout=1"})
    assert stats["delivered"] == 1 and beats == [7], (stats, beats)
    texts = [name, link.name, dead.name, str(login_failed.value), str(bad_option.value), str(bad_handshake.value),
             *(r.detail for r in reports), *(r.sink for r in reports), caplog.text]
    leaks = [t[:200] for t in texts if SECRET in t or "op:wrong" in t]
    assert not leaks, leaks
    assert name == f"opcua opc.tcp://127.0.0.1:{srv.port}/fair/ ns=2;s=Reject", name
    assert SECRET not in repr(parse_opcua_url(parse_sink_url(f"opcua://op:{SECRET}@h:1/?node=x"))[0])


# ----------------------------------------------------------------------------- 8: empty error texts, asyncua's teardown
def test_an_error_with_no_text_is_named_by_its_type():
    from fair_edge.line.sinks.opcua import error_text

    assert error_text(TimeoutError()) == "TimeoutError"
    assert error_text(TimeoutError(), timeout_s=1.0) == "TimeoutError (no reply within 1 s)"
    assert error_text(ConnectionRefusedError(111, "Connect call failed")) == \
        "ConnectionRefusedError: [Errno 111] Connect call failed"


def test_a_write_that_times_out_says_so_and_asyncuas_teardown_is_quiet(caplog):
    """Audit t4 / t5: a write with no reply was logged "write failed: " (str(TimeoutError()) is empty), and each
    loss printed asyncua's "close_session raised during disconnect" with a 30-line traceback. Now the timeout is
    named, and asyncua's teardown record is kept at debug level under our logger, not as an error."""
    with caplog.at_level(logging.DEBUG):
        with NodeServer({"Reject": ("Boolean", False)}, write_delay_s=1.0) as srv:
            target, _ = parse_opcua_url(parse_sink_url(srv.url("node=ns=2;s=Reject&timeout_ms=200")))
            out = OpcUaOutput(target)
            out.open()
            try:
                with pytest.raises(PlcError) as timed_out:
                    out.set(True)
            finally:
                out.close()              # the session's close waits behind the slow write: asyncua's times out
    assert str(timed_out.value).endswith("write failed: TimeoutError (no reply within 0.2 s)"), str(timed_out.value)
    loud = [r for r in caplog.records if r.name.startswith("asyncua") and r.levelno >= logging.ERROR]
    assert not loud, [r.getMessage() for r in loud]
    assert any(r.name == "fair_edge.line.sinks.opcua" and "raised during disconnect" in r.getMessage()
               and r.levelno == logging.DEBUG for r in caplog.records)


# ----------------------------------------------------------------------------- 9: nsu= node ids
def test_an_nsu_node_id_follows_its_namespace_across_a_server_restart():
    """Audit t1 / t2: nsu= node ids were accepted and never resolved (BadNodeIdUnknown for ever), and a server
    that came back with its namespace at another index left an ns=2 sink dead. An nsu= id is resolved against
    the server's NamespaceArray at each connect: the sink follows ns=2 -> ns=3."""
    reports = []
    with NodeServer({"Reject": ("Boolean", False)}) as first:
        port = first.port
        sink = open_sink(first.url(f"node=nsu={URI};s=Reject"), pulse_ms=10, reporter=reports.append)
        try:
            assert sink.wait_connected(10), [r.detail for r in reports]
            pulse_now(sink, 1)
            assert sink.drain(15)
            before, first_idx = list(first.changes["Reject"]), first.idx
        except BaseException:
            sink.close()
            raise
    try:
        with NodeServer({"Reject": ("Boolean", False)}, port=port, first=("urn:other:first",)) as second:
            assert wait_for(lambda: sink.connected and any(r.kind == "reconnected" for r in reports), 15), \
                [(r.kind, r.detail[:120]) for r in reports]
            pulse_now(sink, 2)
            assert sink.drain(15)
            after, second_idx = list(second.changes["Reject"]), second.idx
    finally:
        sink.close()
    assert (first_idx, second_idx) == (2, 3)
    assert before[-2:] == [True, False] and after[-2:] == [True, False], (before, after)


def test_handshake_nsu_node_ids_are_resolved_and_an_unknown_uri_is_named():
    """The handshake's nodes given as nsu= ids, on a server where their namespace has index 3: bound and written;
    an URI the server does not have is refused naming it and the server's NamespaceArray."""
    with NodeServer(handshake_nodes(), first=("urn:other:first",)) as srv:
        signals = OpcUaSignals(**{name: f"nsu={URI};s={node}" for name, node in
                                  ((n, getattr(OpcUaSignals(), n).partition(";s=")[2]) for n in OPCUA_TYPES)})
        link = OpcUaLink(parse_sink_url(srv.url()), signals)
        link.open()
        try:
            link.write([("heartbeat", 3), ("results_ready", 0)])
        finally:
            link.close()
        unknown = OpcUaLink(parse_sink_url(srv.url()), OpcUaSignals(trigger="nsu=urn:nobody;s=Trigger"))
        with pytest.raises(PlcError, match=r"expected namespace 'urn:nobody' in the server's NamespaceArray, "
                                           rf"found \[.*'{re.escape(URI)}'\]"):
            unknown.open()
        beats, idx = list(srv.changes["Heartbeat"]), srv.idx
    assert idx == 3 and beats == [3]


def test_a_binding_error_is_a_link_failure_never_a_refusal():
    """PlcBindingError is a PlcError (the sink's worker and the handshake reconnect) and no PlcDeviceError."""
    from fair_edge.errors import PlcDeviceError

    assert issubclass(PlcBindingError, PlcError) and not issubclass(PlcBindingError, PlcDeviceError)

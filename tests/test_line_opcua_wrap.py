"""OPC UA integer nodes at the end of their range, against a real asyncua server on 127.0.0.1: a counter reject sink
wraps within its node's type (Int16 32767 -> -32768, UInt16 65535 -> 0), the handshake's heartbeat wraps within an
Int16 node, a value a node cannot hold is a device error naming the node (never a link failure), and a handshake
node whose type can never hold its signal is refused at connect (never retried write by write)."""

from __future__ import annotations

import logging
import time

import pytest

pytest.importorskip("asyncua")

from fair_edge.errors import ConfigError, PlcDeviceError  # noqa: E402
from fair_edge.line.events import RejectEvent  # noqa: E402
from fair_edge.line.handshake.engine import Handshake  # noqa: E402
from fair_edge.line.handshake.opcua import OpcUaLink  # noqa: E402
from fair_edge.line.handshake.settings import HEARTBEAT_MODULUS, HandshakeSettings, OpcUaSignals  # noqa: E402
from fair_edge.line.handshake.sim_handshake_plc import OPCUA_TYPES  # noqa: E402
from fair_edge.line.sinks import open_sink, parse_sink_url  # noqa: E402
from fair_edge.line.sinks.opcua import OpcUaOutput, parse_opcua_url  # noqa: E402
from line_servers import NodeServer, wait_for  # noqa: E402

INT_MAX = {"SByte": 127, "Byte": 255, "Int16": 32767, "UInt16": 65535, "Int32": 2**31 - 1, "UInt32": 2**32 - 1}
INT_MIN = {"SByte": -128, "Byte": 0, "Int16": -32768, "UInt16": 0, "Int32": -(2**31), "UInt32": 0}


def handshake_nodes() -> dict[str, tuple[str, object]]:
    """The handshake's nodes (``OpcUaSignals()``'s ids, the test PLC's types)."""
    signals, out = OpcUaSignals(), {}
    for signal, type_name in OPCUA_TYPES.items():
        out[getattr(signals, signal).partition(";s=")[2]] = (type_name, False if type_name == "Boolean" else 0)
    return out


# nodes beside the handshake's: counters just below their type's maximum, and nodes of a type a signal cannot use
EXTRA_NODES = {**{f"Count{t}": (t, INT_MAX[t] - 1) for t in INT_MAX}, "SinkCount": ("Int16", 32766),
               "Label": ("String", ""), "Flag": ("Boolean", False), "HeartbeatInt16": ("Int16", 0),
               "BeatInt16": ("Int16", 0), "HeartbeatString": ("String", ""), "ResultBoolean": ("Boolean", False),
               "ScoreInt16": ("Int16", 0), "ResultPartIdUInt16": ("UInt16", 0)}


@pytest.fixture(scope="module")
def server():
    """One server for the module (an asyncua server takes seconds to start); each test uses its own nodes."""
    with NodeServer({**handshake_nodes(), **EXTRA_NODES}) as srv:
        yield srv


# ----------------------------------------------------------------------------- the counter reject sink
def test_wrap_integer_is_the_plcs_twos_complement_wrap():
    from asyncua import ua

    from fair_edge.line.sinks.opcua import wrap_integer

    assert wrap_integer(32768, ua.VariantType.Int16) == -32768 and wrap_integer(-32768, ua.VariantType.Int16) == -32768
    assert wrap_integer(65536, ua.VariantType.UInt16) == 0 and wrap_integer(256, ua.VariantType.Byte) == 0
    assert wrap_integer(2**31, ua.VariantType.Int32) == -(2**31) and wrap_integer(0, ua.VariantType.Int16) == 0
    assert wrap_integer(70000, ua.VariantType.Double) == 70000   # not an integer type: as is


@pytest.mark.parametrize("type_name", ["Int16", "UInt16", "Int32", "SByte"])
def test_a_counter_node_at_its_types_maximum_wraps_to_the_types_minimum(server, type_name):
    """Audit (opcua_counter_wrap.py): a counter at its type's maximum stopped counting for good (the write of
    max + 1 failed, was taken for a link failure, and the maxed value was read back at each reconnect)."""
    top, bottom = INT_MAX[type_name], INT_MIN[type_name]
    target, _ = parse_opcua_url(parse_sink_url(server.url(f"node=ns=2;s=Count{type_name}&mode=counter")))
    out = OpcUaOutput(target)
    out.open()   # reads the count back: top - 1
    try:
        for _ in range(3):
            out.set(True)
            out.set(False)   # (counter mode writes nothing for the falling edge)
    finally:
        out.close()
    assert server.changes[f"Count{type_name}"] == [top, bottom, bottom + 1]


def test_a_counter_sink_keeps_rejecting_across_the_wrap(server):
    """Through the sink's worker: every pulse across the Int16 wrap is delivered, no io_error, no link_down."""
    kinds: list[str] = []
    sink = open_sink(server.url("node=ns=2;s=SinkCount&mode=counter"), reporter=lambda r: kinds.append(r.kind))
    try:
        assert sink.wait_connected(10)
        for seq in range(4):
            now = time.monotonic()
            sink.pulse(RejectEvent(seq=seq, t_due=now, t_edge=now, deadline=now + 10.0))
        assert sink.drain(20)
        stats = sink.stats()
    finally:
        sink.close()
    assert server.changes["SinkCount"] == [32767, -32768, -32767, -32766], (server.changes["SinkCount"], kinds)
    assert stats["delivered"] == 4 and stats["io_errors"] == stats["link_downs"] == 0, (stats, kinds)
    assert kinds.count("delivered") == 4 and "link_down" not in kinds


def test_a_value_the_node_cannot_hold_is_a_device_error_naming_the_node_and_type(server):
    """Pulse mode on a String node: True cannot be encoded; that is the node's fault (device_error), not the link's
    (found before the write: the server sees nothing). Counter mode on a Boolean node is refused at connect."""
    target, _ = parse_opcua_url(parse_sink_url(server.url("node=ns=2;s=Label")))
    out = OpcUaOutput(target)
    out.open()
    try:
        with pytest.raises(PlcDeviceError, match=r"cannot write True to node ns=2;s=Label of data type String"):
            out.set(True)
    finally:
        out.close()
    assert server.changes["Label"] == []
    target, _ = parse_opcua_url(parse_sink_url(server.url("node=ns=2;s=Flag&mode=counter")))
    out = OpcUaOutput(target)
    try:
        with pytest.raises(PlcDeviceError, match=r"mode=counter expected an integer node .*found data type Boolean"):
            out.open()
        assert out._client is None   # the refused connection is closed
    finally:
        out.close()


# ----------------------------------------------------------------------------- the handshake
def test_the_handshake_heartbeat_wraps_within_an_int16_node(server):
    """Audit (opcua_heartbeat_int16.py): heartbeat 32768 to an Int16 node (a Siemens INT) failed, and every
    reconnect rewrote it. Now the counter is written in the node's own range: 32767 -> -32768 ... -1 -> 0."""
    link = OpcUaLink(parse_sink_url(server.url()), OpcUaSignals(heartbeat="ns=2;s=HeartbeatInt16"))
    link.open()
    try:
        for beat in (32766, 32767, 32768, 32769, HEARTBEAT_MODULUS - 1, 0):
            link.write([("heartbeat", beat)])
    finally:
        link.close()
    assert server.changes["HeartbeatInt16"] == [32766, 32767, -32768, -32767, -1, 0]


def test_the_handshake_thread_beats_past_32767_on_an_int16_node(server):
    """The running handshake, its counter started just below the Int16 wrap: the node keeps changing across it, no
    link error, no reconnect."""
    settings = HandshakeSettings(url=server.url(), poll_ms=10, heartbeat_ms=50,
                                 opcua=OpcUaSignals(heartbeat="ns=2;s=BeatInt16"))
    hs = Handshake(settings, OpcUaLink(parse_sink_url(settings.url), settings.opcua))
    hs._heartbeat = HEARTBEAT_MODULUS // 2 - 3   # (the beat 32765 + 1 comes first)
    with hs:
        assert wait_for(lambda: -32766 in server.changes["BeatInt16"], 30), server.changes["BeatInt16"][-5:]
        stats = hs.stats()
    beats = server.changes["BeatInt16"]
    assert beats[beats.index(32767) + 1] == -32768, beats
    assert stats["connected"] and stats["io_errors"] == stats["device_errors"] == stats["reconnects"] == 0, stats


class CountingLink(OpcUaLink):
    """An ``OpcUaLink`` counting its connect attempts (``opens``)."""

    opens = 0

    def open(self) -> None:
        self.opens += 1
        super().open()


@pytest.mark.parametrize("signal, node, found", [
    ("heartbeat", "HeartbeatString", "String"),
    ("result", "ResultBoolean", "Boolean"),
    ("score", "ScoreInt16", "Int16"),
    ("result_part_id", "ResultPartIdUInt16", "UInt16"),   # PartId is UInt32: ids above 65535 could never be echoed
], ids=["string-heartbeat", "boolean-result", "integer-score", "narrow-result-part-id"])
def test_a_handshake_node_that_cannot_hold_its_signal_is_refused_at_connect(server, signal, node, found):
    link = OpcUaLink(parse_sink_url(server.url()), OpcUaSignals(**{signal: f"ns=2;s={node}"}))
    try:
        with pytest.raises(ConfigError, match=rf"reject\.handshake\.opcua\.{signal}: node 'ns=2;s={node}' has data "
                                              rf"type {found}, expected a type that holds .*change the PLC tag's type"):
            link.open()
        assert link._client is None   # the refused connection is closed
    finally:
        link.close()


def test_the_handshake_thread_logs_a_refused_setup_once_and_stays_not_ready(server, caplog):
    """A refused node type leaves the handshake down (never ready, nothing written), logged as an error once
    though the connect is retried; the thread keeps running (a fixed PLC program would be picked up)."""
    settings = HandshakeSettings(url=server.url(), poll_ms=10, heartbeat_ms=50,
                                 opcua=OpcUaSignals(heartbeat="ns=2;s=HeartbeatString"))
    link = CountingLink(parse_sink_url(settings.url), settings.opcua)
    hs = Handshake(settings, link)
    written = {name: len(values) for name, values in server.changes.items()}
    with caplog.at_level(logging.ERROR, logger="fair_edge.line.handshake.engine"), hs:
        hs.begin()
        assert wait_for(lambda: link.opens >= 3, 30), link.opens   # retried (with the back-off)
        alive, stats = hs._thread.is_alive(), hs.stats()
    refusals = [r for r in caplog.records if "cannot carry the handshake" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert "heartbeat: node 'ns=2;s=HeartbeatString' has data type String" in refusals[0].getMessage()
    assert alive and not stats["connected"] and not hs.ready
    assert {name: len(values) for name, values in server.changes.items()} == written   # nothing written

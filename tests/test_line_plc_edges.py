"""PLC protocol edges from the audit (plc-edges):

* a device that refuses the sink's resting-level write had it rewritten every 50 ms forever (one warning and one
  ``device_errors`` each, ~1.7 M log lines a day): now it is written once and again only after a reconnect or a
  change of the level;
* a Modbus gateway's exception 0x0A / 0x0B (the PLC behind it is off) counted as "the link answered": now a link
  failure, so ``link_down`` and the fault output show the dead PLC (sinks and the handshake alike);
* one "device busy" reply to a handshake poll was handled as a link outage: the result that was up was withdrawn and
  the PLC's ack for it reset as stale; now the link and the result stay, the poll is retried;
* unit / coil / register / value out of their Modbus ranges were accepted when the station file was read (unit 256
  made hundreds of TCP connections a second at run time).

Phases follow the fakes' own calls (probes, reads, writes) and reports, never timers: order, not speed."""

from __future__ import annotations

import threading
import time

import pytest

from fair_edge.errors import ConfigError, PlcDeviceError, PlcError
from fair_edge.line.handshake import HandshakeSettings
from fair_edge.line.handshake.engine import Handshake
from fair_edge.line.settings import check_sink_url
from fair_edge.line.sinks.base import WorkerSink
from fair_edge.line.sinks.modbus import ModbusOutput, ModbusTarget
from fair_edge.records import Frame, Verdict

pytest.importorskip("pymodbus")
from pymodbus.pdu import ExceptionResponse  # noqa: E402

from fair_edge.line.handshake.modbus import ModbusLink  # noqa: E402
from fair_edge.line.handshake.settings import ModbusSignals  # noqa: E402
from fair_edge.line.sinks.urls import parse_sink_url  # noqa: E402

WAIT_S = 10.0   # upper bound for a step to happen on a loaded machine (a passing test returns as soon as it does)
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "probe_s": 0.005}


# ----------------------------------------------------------------------------- 1. the sink's resting level
class RefusingOutput:
    """An ``Output`` whose device refuses every write (``PlcDeviceError``) and answers every probe. Counts opens,
    probes and writes (``sets``: the level of each) under one condition; ``glitch()`` makes the next probe fail as
    a link failure (the sink then reconnects)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.opens = self.probes = 0
        self.sets: list[bool] = []
        self.glitched = False

    def open(self) -> None:
        with self.cond:
            self.opens += 1
            self.cond.notify_all()

    def set(self, on: bool) -> None:
        with self.cond:
            self.sets.append(on)
            self.cond.notify_all()
        raise PlcDeviceError(f"fake plc: the write of {on}: device refused it: ExceptionResponse(exception_code=2)")

    def probe(self) -> None:
        with self.cond:
            self.probes += 1
            self.cond.notify_all()
            if self.glitched:
                self.glitched = False
                raise PlcError("fake plc: probe failed: timeout")

    def close(self) -> None:
        pass

    def glitch(self) -> None:
        with self.cond:
            self.glitched = True

    def wait(self, cond) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: cond(self), WAIT_S)

    def probes_later(self, n: int) -> bool:
        """Wait until ``n`` more probes were made: the worker went ``n`` idle steps further (each would have
        rewritten a pending resting level)."""
        with self.cond:
            target = self.probes + n
            return self.cond.wait_for(lambda: self.probes >= target, WAIT_S)


def test_a_refused_resting_level_is_written_once_until_a_reconnect_or_a_new_level():
    out, kinds = RefusingOutput(), []
    sink = WorkerSink("plc", out, 50.0, reporter=lambda r: kinds.append(r.kind), **FAST)
    try:
        assert out.wait(lambda o: o.sets == [False])            # the resting level after the connect: refused
        assert out.probes_later(5)                               # five idle steps later: not rewritten
        assert out.sets == [False], out.sets
        assert sink.stats()["device_errors"] == 1 and kinds.count("device_error") == 1, (sink.stats(), kinds)

        sink.set_fault(True, "camera gone")                     # a new level: written (and refused) once
        assert out.wait(lambda o: len(o.sets) == 2) and out.sets[1] is True
        sink.set_fault(True, "camera still gone")               # the same level again: no new write
        assert out.probes_later(5)
        assert out.sets == [False, True], out.sets

        out.glitch()                                             # a link failure: the reconnect writes it again
        assert out.wait(lambda o: o.opens == 2 and len(o.sets) == 3)
        assert out.probes_later(5)
        assert out.sets == [False, True, True], out.sets
        assert sink.stats()["device_errors"] == 3 and sink.stats()["link_downs"] == 0
    finally:
        sink.close()


# ----------------------------------------------------------------------------- 1. + 2. a gateway's 0x0A / 0x0B
class ExceptionClient:
    """A pymodbus client stand-in: connects, and answers every request with exception ``code`` (pymodbus's own
    ``ExceptionResponse``, as the real client returns it)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def connect(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def _reply(self, fc: int, *args, **kwargs) -> ExceptionResponse:
        return ExceptionResponse(fc, self.code)

    def write_coil(self, *args, **kwargs):
        return self._reply(5)

    def read_coils(self, *args, **kwargs):
        return self._reply(1)

    def read_holding_registers(self, *args, **kwargs):
        return self._reply(3)

    def write_register(self, *args, **kwargs):
        return self._reply(6)

    def write_registers(self, *args, **kwargs):
        return self._reply(16)


def raised(fn) -> Exception:
    with pytest.raises(PlcError) as info:
        fn()
    return info.value


@pytest.mark.parametrize("code", [0x0A, 0x0B])
def test_a_gateway_whose_plc_is_off_is_a_link_failure_not_a_refusal(code):
    target = ModbusTarget("10.0.0.5", 502, coil=0)
    out = ModbusOutput(target, lambda t: ExceptionClient(code))
    out.open()
    for exc in (raised(lambda: out.set(True)), raised(out.probe)):
        assert not isinstance(exc, PlcDeviceError), exc
        assert f"exception 0x{code:02X}" in str(exc) and "gateway" in str(exc)
    link = ModbusLink(parse_sink_url("modbus://10.0.0.5:502?unit=1"), ModbusSignals(), 1000.0,
                      client_factory=lambda *a, **k: ExceptionClient(code))
    link.open()
    for exc in (raised(link.read_inputs), raised(lambda: link.write([("ready", 1)]))):
        assert not isinstance(exc, PlcDeviceError), exc
    kinds: list[str] = []
    done = threading.Event()

    def listen(report) -> None:
        kinds.append(report.kind)
        if report.kind == "link_down":
            done.set()

    sink = WorkerSink(target.label, ModbusOutput(target, lambda t: ExceptionClient(code)), 50.0, reporter=listen,
                      **FAST)
    try:
        assert done.wait(WAIT_S), kinds                         # the fault output shows the PLC behind it is off
        assert sink.stats()["device_errors"] == 0 and sink.stats()["io_errors"] >= 2
    finally:
        sink.close()


@pytest.mark.parametrize("code", [0x01, 0x02, 0x04, 0x06])
def test_other_exception_codes_are_the_devices_refusal(code):
    out = ModbusOutput(ModbusTarget("10.0.0.5", 502, register=10), lambda t: ExceptionClient(code))
    out.open()
    with pytest.raises(PlcDeviceError, match="device refused"):
        out.set(True)
    with pytest.raises(PlcDeviceError, match="device refused"):
        out.probe()


# ----------------------------------------------------------------------------- 2. the handshake and a busy PLC
class BusyPlc:
    """A ``HandshakeLink`` over a dict of signals the test sets as the PLC would. ``busy_reads``: the next reads the
    device refuses (``PlcDeviceError``, Modbus 0x06 busy). ``busy_clear``: the next write that sets results_ready
    back to 0 is refused after its other signals landed (two Modbus requests, the second refused). Every call is
    counted under one condition."""

    name = "busy plc"

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.signals: dict[str, object] = {"trigger": 0, "part_id": 0, "ack": 0}
        self.opens = self.reads = 0
        self.busy_reads = 0
        self.busy_clear = False

    def open(self) -> None:
        with self.cond:
            self.opens += 1
            self.cond.notify_all()

    def read_inputs(self) -> dict[str, int]:
        with self.cond:
            self.reads += 1
            self.cond.notify_all()
            if self.busy_reads:
                self.busy_reads -= 1
                raise PlcDeviceError("busy plc: the read at register 0: device refused it: "
                                     "ExceptionResponse(dev_id=1, function_code=131, exception_code=6)")
            return {k: int(self.signals[k]) for k in ("trigger", "part_id", "ack")}

    def write(self, values) -> None:
        with self.cond:
            self.cond.notify_all()
            if self.busy_clear and values[-1] == ("results_ready", 0):
                self.busy_clear = False
                self.signals.update(values[:-1])
                raise PlcDeviceError("busy plc: the write at register 7: device refused it: exception_code=6")
            self.signals.update(values)

    def close(self) -> None:
        pass

    def set(self, **signals) -> None:
        with self.cond:
            self.signals.update(signals)

    def wait(self, cond) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: cond(self), WAIT_S)

    def reads_later(self, n: int) -> bool:
        with self.cond:
            target = self.reads + n
            return self.cond.wait_for(lambda: self.reads >= target, WAIT_S)


def result_up(hs: Handshake, plc: BusyPlc, part_id: int) -> None:
    """The PLC triggers ``part_id``; the station takes it, inspects it (NG) and writes its result."""
    plc.set(part_id=part_id, trigger=1)
    ticket = hs.next_trigger(WAIT_S)
    assert ticket is not None and ticket.part_id == part_id
    hs.bind(part_id, ticket)
    hs.on_verdict(Frame(part_id, 0.0, None, "line"), Verdict(part_id, 0.0, 0.9, 0.5, True, 0.0, "line"))
    assert plc.wait(lambda p: p.signals.get("results_ready") == 1 and p.signals.get("result_part_id") == part_id)


@pytest.fixture
def busy_handshake():
    """(handshake running over a ``BusyPlc``, the plc). Its clock stands still an hour ahead of the real one: no
    ack or result timeout ever passes, so only the refusals act."""
    plc = BusyPlc()
    t_fixed = time.monotonic() + 3600.0
    hs = Handshake(HandshakeSettings(url="modbus://127.0.0.1:1", poll_ms=5, ack_timeout_ms=50), plc,
                   clock=lambda: t_fixed).start()
    hs.begin()
    yield hs, plc
    hs.close()


def test_one_busy_reply_to_a_poll_keeps_the_link_and_the_result_that_is_up(busy_handshake):
    hs, plc = busy_handshake
    result_up(hs, plc, 1007)
    with plc.cond:
        plc.busy_reads = 1
    assert plc.reads_later(3)                                    # the refused poll and two after it
    stats = hs.stats()
    assert stats["device_errors"] == 1 and stats["io_errors"] == 0 and stats["withdrawn"] == 0, stats
    assert stats["reconnects"] == 0 and plc.opens == 1 and stats["connected"]
    assert plc.signals["results_ready"] == 1 and plc.signals["result_part_id"] == 1007
    plc.set(ack=1)                                               # the PLC reads part 1007 and acks it: counted
    assert plc.wait(lambda p: p.signals["results_ready"] == 0 and p.signals["ack"] == 0)
    stats = hs.stats()
    assert stats["acked"] == 1 and stats["stale_acks"] == 0, stats


def test_an_ack_whose_clearing_write_is_refused_is_still_acknowledged(busy_handshake):
    """The ack's ack = 0 landed, results_ready = 0 was refused: the next poll reads ack 0, yet the result is acked
    (not left up until its ack timeout)."""
    hs, plc = busy_handshake
    result_up(hs, plc, 1008)
    with plc.cond:
        plc.busy_clear = True
    plc.set(ack=1)
    assert plc.wait(lambda p: p.signals["results_ready"] == 0)
    stats = hs.stats()
    assert stats["acked"] == 1 and stats["device_errors"] == 1 and stats["withdrawn"] == 0, stats
    assert plc.opens == 1


# ----------------------------------------------------------------------------- 3. URL ranges at load
@pytest.mark.parametrize("query, field, found", [
    ("unit=256&coil=0", "unit", "256"), ("unit=1000&coil=0", "unit", "1000"), ("unit=-1&coil=0", "unit", "-1"),
    ("coil=65536", "coil", "65536"), ("register=70000", "register", "70000"),
    ("register=1&value=70000", "value", "70000")])
def test_sink_urls_out_of_modbus_range_are_refused_when_the_station_file_is_read(query, field, found):
    wanted = "0..255" if field == "unit" else "0..65535"
    with pytest.raises(ConfigError, match=rf"reject\.sinks\[0\]: .*: {field}: expected an integer in "
                                          rf"{wanted}, found '{found}'"):
        check_sink_url("reject.sinks[0]", f"modbus://10.0.0.5:502?{query}")


def test_handshake_url_unit_out_of_range_is_refused_and_the_edges_are_accepted():
    with pytest.raises(ConfigError, match=r"reject\.handshake\.url: .*: unit: expected an integer in 0\.\.255, "
                                          r"found '256'"):
        HandshakeSettings.from_dict({"url": "modbus://10.0.0.5:502?unit=256"})
    assert HandshakeSettings.from_dict({"url": "modbus://10.0.0.5:502?unit=0"}).enabled   # broadcast: allowed
    assert HandshakeSettings.from_dict({"url": "modbus://10.0.0.5:502?unit=255"}).enabled
    for url in ("modbus://h?unit=0&coil=65535", "modbus://h?unit=255&register=65535&value=65535"):
        assert check_sink_url("reject.sinks[0]", url) == url

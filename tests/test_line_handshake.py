"""The PLC handshake against real loopback servers acting as the PLC: a pymodbus Modbus TCP server
and an asyncua OPC UA server, each with a PLC program (fair_edge/line/handshake/sim_handshake_plc.py) that
triggers parts with ids, reads results and acknowledges them. The station side here is the real
handshake thread and triggered capture over a synthetic line, with a stand-in for the inspector
(the whole station is in tests/test_station_handshake.py)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from fair_edge.cameras import LineSource
from fair_edge.cameras.base import CaptureSettings
from fair_edge.cameras.triggered import triggered_capture
from fair_edge.errors import ConfigError
from fair_edge.line.handshake import HandshakeSettings, Ticket, open_handshake
from fair_edge.line.handshake.engine import Handshake
from fair_edge.line.handshake.modbus import encode, runs
from fair_edge.line.handshake.settings import (ERROR_ACK_TIMEOUT, ERROR_NONE, ERROR_STATION_FAULT,
                                               RESULT_NG, RESULT_NOT_INSPECTED, RESULT_OK, ModbusSignals)
from fair_edge.line.settings import RejectSettings
from fair_edge.records import Frame, Verdict

pytest.importorskip("pymodbus")
from line_servers import FakeClock, ScriptedPlc, wait_for  # noqa: E402
from fair_edge.line.handshake.sim_handshake_plc import ModbusHandshakePlc, OpcUaHandshakePlc  # noqa: E402

IMAGES = [np.full((16, 16, 3), v, np.uint8) for v in (10, 200, 30, 40, 220)]


class StandInStation:
    """The handshake, the triggered capture over a synthetic line and a scorer standing in for the
    inspector: every third triggered frame (seq 1, 4, 7, ...) scores 2.0 + mean pixel / 1000 and is NG (above
    1.0), the others mean pixel / 1000. Which image a trigger meets depends on timing (the line runs at 200
    frames/s, 10 per trigger at 20 Hz, so on a steady machine every trigger meets the same image); NG by the
    trigger count makes both answers occur however the machine is loaded."""

    def __init__(self, settings: HandshakeSettings) -> None:
        self.hs = open_handshake(settings).start()
        self.capture = triggered_capture(LineSource(IMAGES, fps=200, loop=True), self.hs, CaptureSettings(queue_size=4),
                                         on_drop=self.hs.on_drop).start()
        self.hs.begin()
        self.verdicts: list[Verdict] = []
        self.parts: dict[int, int] = {}   # frame seq -> the part id it was bound to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inspect, daemon=True)
        self._thread.start()

    def _inspect(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.capture.get(timeout=0.05)
            except Exception:  # noqa: BLE001 - queue.Empty / end of stream: look again or stop
                continue
            score = float(frame.image.mean()) / 1000.0 + (2.0 if frame.seq % 3 == 1 else 0.0)
            verdict = Verdict(frame.seq, frame.t_capture, score, 1.0, score > 1.0, time.monotonic(), frame.source)
            ticket = self.hs._by_seq.get(frame.seq)   # (None once finish() answered the parts left)
            if ticket is not None:
                self.parts[frame.seq] = ticket.part_id
            self.verdicts.append(verdict)
            self.hs.on_verdict(frame, verdict)

    def close(self) -> None:
        self.hs.finish()
        self._stop.set()
        self.capture.stop()
        self._thread.join(timeout=2)
        self.hs.close()


# ----------------------------------------------------------------------------- settings and encoding
def test_handshake_settings_default_off_and_errors_name_the_field():
    assert not RejectSettings().handshake.enabled
    hs = RejectSettings.from_dict({"handshake": {"url": "modbus://10.0.0.5:502?unit=1",
                                                 "modbus": {"trigger": 20}}}).handshake
    assert hs.enabled and hs.modbus.trigger == 20 and hs.modbus.ack == 3
    with pytest.raises(ConfigError, match=r"reject\.handshake\.modbus\.ack: expected a register no other signal "
                                          r"uses, found 2 \(also part_id\)"):
        HandshakeSettings.from_dict({"modbus": {"ack": 2}})
    with pytest.raises(ConfigError, match=r"modbus\.ack: expected a register no other signal uses, found 4 \(also "
                                          r"ready\)"):   # the setting written named, not the default it meets
        HandshakeSettings.from_dict({"modbus": {"ack": 4}})
    with pytest.raises(ConfigError, match=r"reject\.handshake\.url: expected null, 'modbus://.*found 'tcp://x'"):
        HandshakeSettings.from_dict({"url": "tcp://x"})
    with pytest.raises(ConfigError, match=r"reject\.handshake\.url: modbus://10\.0\.0\.5\?unti=1: unknown option "
                                          r"'unti' \(did you mean 'unit'\?\)"):
        HandshakeSettings.from_dict({"url": "modbus://10.0.0.5?unti=1"})
    with pytest.raises(ConfigError, match=r"reject\.handshake\.ack_timout_ms: unknown setting \(did you mean "
                                          r"'ack_timeout_ms'\?\)"):
        HandshakeSettings.from_dict({"ack_timout_ms": 5})
    with pytest.raises(ConfigError, match=r"reject\.handshake\.heartbeat_ms: expected at least 5 x poll_ms = 100"):
        HandshakeSettings.from_dict({"poll_ms": 20, "heartbeat_ms": 60})
    with pytest.raises(ConfigError, match=r"reject\.handshake\.opcua\.ready: expected a non-empty string, found 4"):
        HandshakeSettings.from_dict({"opcua": {"ready": 4}})


@pytest.mark.parametrize("nodes, refusal", [
    ({"ready": "ns=2;s=Ack"}, "opcua.ready: expected a node no other signal uses, found 'ns=2;s=Ack' (also ack)"),
    ({"error": "ns=2;s=Result"}, "opcua.error: expected a node no other signal uses, found 'ns=2;s=Result' "
                                 "(also result)"),
    ({"zone_id": "ns=2;s=Zone", "largest_area": "ns=2;s=Zone"}, "opcua.zone_id: expected a node no other signal "
                                                                "uses, found 'ns=2;s=Zone' (also largest_area)"),
])
def test_two_opc_ua_signals_on_one_node_are_refused_naming_both(nodes, refusal):
    """Two signals on one node read each other's values (Ready written on Ack's node reads as an ack): refused as
    two Modbus signals on one register are, naming the setting the file wrote, the other signal and the fix."""
    with pytest.raises(ConfigError) as refused:
        HandshakeSettings.from_dict({"url": "opcua://10.0.0.5:4840/", "opcua": nodes})
    assert str(refused.value) == f"reject.handshake.{refusal}; give each signal its own node"


def test_opc_ua_signals_on_their_own_nodes_load():
    """Two signals swapping nodes, and region signals left null, share no node."""
    swapped = HandshakeSettings.from_dict({"url": "opcua://10.0.0.5:4840/",
                                           "opcua": {"ready": "ns=2;s=Ack", "ack": "ns=2;s=Ready"}}).opcua
    assert (swapped.ready, swapped.ack, swapped.zone_id, swapped.largest_area) == ("ns=2;s=Ack", "ns=2;s=Ready",
                                                                                    None, None)


@pytest.mark.parametrize("handshake", [
    {"url": "modbus://10.0.0.5:502?unit=1", "opcua": {"ready": "ns=2;s=Ack"}},
    {"url": "opcua://10.0.0.5:4840/", "modbus": {"ack": 2}},
])
def test_the_block_the_url_does_not_use_is_not_checked_for_shared_places(handshake):
    """A Modbus station file keeping an ``opcua:`` template block (or the other way round) loaded before two OPC UA
    signals on one node were refused; that block is written nowhere, so only the block the URL's scheme uses is
    checked for two signals on one place."""
    settings = HandshakeSettings.from_dict(handshake)
    used = "opcua" if handshake["url"].startswith("opcua://") else "modbus"
    with pytest.raises(ConfigError, match=rf"reject\.handshake\.{used}\..*no other signal uses"):
        HandshakeSettings.from_dict({**handshake, used: {"ready": settings.signals.ack}})


def test_modbus_encoding_scales_and_saturates_the_score_and_splits_part_ids():
    assert encode("score", 0.4567, 1000.0) == [457]
    assert encode("score", 123.0, 1000.0) == [65535] and encode("score", math.nan, 1000.0) == [65535]
    assert encode("score", -1.0, 1000.0) == [0]
    assert encode("part_id", 0x0001_0002, 1000.0) == [1, 2] and encode("heartbeat", 65537, 1000.0) == [1]
    assert runs({8: 1, 9: 2, 7: 5, 11: 3}) == [(7, [5, 1, 2]), (11, [3])]


# ----------------------------------------------------------------------------- the main path
def test_an_unscored_verdict_answers_its_part_not_inspected():
    """A malformed frame's verdict has score None (no score): its part is answered NG not inspected,
    score register SCORE_MAX (the 30-minute soak found the handshake raising on it, leaving the part
    unanswered until its result timeout)."""
    hs = open_handshake(HandshakeSettings(url="modbus://127.0.0.1:1"))   # not started: no link needed
    ticket = Ticket(part_id=7, t_trigger=0.0, deadline=1e9)
    hs.bind(3, ticket)
    hs.on_verdict(None, Verdict(3, 0.0, None, 1.0, True, 0.0, "line", error="malformed frame"))
    assert ticket.result == RESULT_NOT_INSPECTED and ticket.score is None
    assert encode("score", ticket.score, 1000.0) == [65535]
    assert hs.stats()["not_inspected"] == 1


@pytest.mark.parametrize("make_plc", [ModbusHandshakePlc, OpcUaHandshakePlc], ids=["modbus", "opcua"])
def test_every_part_id_gets_one_result_in_order(make_plc):
    plc = make_plc().start(rate_hz=20, parts=40)
    station = StandInStation(HandshakeSettings(url=plc.url))
    try:
        assert wait_for(lambda: len(plc.program.results) >= 40, 30)
        assert wait_for(lambda: len(plc.program.ack_round_trips) >= 40, 5)   # the last ack's round trip too
        check = plc.program.check()
        ready_while_running = plc.memory.get("ready")
    finally:
        station.close()
        wait_for(lambda: plc.program.ready_changes[-1][1] == 0, 2)   # the PLC's scan sees it
        plc.close()
    assert check["triggered"] == check["answered"] == check["unique"] == 40 and check["in_order"]
    assert check["missing"] == check["unknown"] == check["duplicates"] == 0
    assert ready_while_running == 1 and plc.program.ready_changes[-1][1] == 0   # stop cleared Ready
    assert check["ack_round_trip_ms"]["n"] == 40
    # each part's result is the verdict of the frame taken for it; a part whose frame came after the next part's
    # trigger (a capture thread held up on a loaded machine: counted late_frames) is answered 3, not inspected
    by_part = {station.parts[v.seq]: v for v in station.verdicts if v.seq in station.parts}
    late = 0
    for k, (_, part, result, score) in enumerate(plc.program.results):
        assert part == plc.program.triggers[k][0]
        if part not in by_part:
            assert result == RESULT_NOT_INSPECTED
            late += 1
            continue
        v = by_part[part]
        assert result == (RESULT_NG if v.ng else RESULT_OK)
        tol = 0.0006 if make_plc is ModbusHandshakePlc else 1e-9    # Modbus: round(score * 1000)
        assert score == pytest.approx(v.score, abs=tol)
    assert {RESULT_OK, RESULT_NG} <= {r for _, _, r, _ in plc.program.results}
    assert late == station.hs.stats()["late_frames"], (late, station.hs.stats())
    assert station.hs.stats()["acked"] == 40 and station.hs.stats()["ack_timeouts"] == 0


# ----------------------------------------------------------------------------- failures (Modbus)
class RequestLog:
    """The test PLC's own record of the station's requests, in the order its server handled them: (monotonic s,
    ``{register: value}`` written, or None for a read). Installed before ``start()`` (the server takes the
    memory's ``action`` when it starts)."""

    def __init__(self, memory) -> None:
        self.entries: list[tuple[float, dict[int, int] | None]] = []
        self._action = memory.action
        memory.action = self.action

    async def action(self, fc, start, address, count, regs, set_values):
        words = None if set_values is None else {address + i: int(v) for i, v in enumerate(set_values)}
        self.entries.append((time.monotonic(), words))
        return await self._action(fc, start, address, count, regs, set_values)

    def first(self, register: int, value: int, after: int = 0) -> int:
        """Index of the first write (from ``after`` on) that set ``register`` to ``value``."""
        return next(i for i, (_, words) in enumerate(self.entries) if i >= after and words
                    and words.get(register) == value)


def test_a_plc_that_never_acknowledges_raises_the_ack_timeout_fault():
    """No ack: the first result is withdrawn and error 10 raised not before ack_timeout_ms after it was written,
    and in the poll that found the time up (no poll of the station in between). Both read from the PLC server's
    own record of the station's writes, so neither the PLC program's scan lag nor a slow machine moves them;
    how long after the timeout that poll came is a matter of load, not asserted."""
    plc = ModbusHandshakePlc()
    requests = RequestLog(plc.memory)
    plc.start(rate_hz=10, parts=3, ack=False)
    station = StandInStation(HandshakeSettings(url=plc.url, ack_timeout_ms=300))
    try:
        assert wait_for(lambda: plc.program.results, 10)
        # the PLC program's scan records the change (the register alone can be seen a scan earlier)
        assert wait_for(lambda: any(code == ERROR_ACK_TIMEOUT for _, code in plc.program.error_changes), 5)
        assert wait_for(lambda: station.hs.stats()["ack_timeouts"] >= 3, 5)
        answered = len(plc.program.results)
    finally:
        station.close()
        plc.close()
    stats = station.hs.stats()
    regs, log = ModbusSignals(), requests.entries
    written = requests.first(regs.results_ready, 1)
    withdrawn = requests.first(regs.results_ready, 0, after=written)
    raised = requests.first(regs.error, ERROR_ACK_TIMEOUT)
    # not before the timeout: the station's clock starts when the write's reply came, after the server took it
    assert log[withdrawn][0] - log[written][0] >= 0.3, (log[withdrawn][0] - log[written][0], stats)
    # raised with the withdrawal, in the same poll: no read (the start of a poll) between them
    assert withdrawn < raised and all(words is not None for _, words in log[withdrawn:raised]), log[written:raised + 1]
    assert answered == 3, (plc.program.results, stats)   # each withdrawn result let the next one out, once
    assert [p for _, p, _, _ in plc.program.results] == [p for p, _ in plc.program.triggers]
    assert stats["acked"] == 0


def test_station_fault_drops_ready_holds_error_and_answers_triggers_not_inspected():
    plc = ModbusHandshakePlc().start(rate_hz=0)
    station = StandInStation(HandshakeSettings(url=plc.url))
    try:
        assert wait_for(lambda: plc.memory.get("ready") == 1, 5)
        station.hs.fault(True, "camera reconnecting")
        assert wait_for(lambda: plc.memory.get("ready") == 0 and plc.memory.get("error") == ERROR_STATION_FAULT, 2)
        plc._lt.call(plc.memory.set("part_id", 77))   # a PLC that triggers anyway
        plc._lt.call(plc.memory.set("trigger", 1))
        assert wait_for(lambda: plc.program.results, 2)
        answer = (plc.program.results[0][1], plc.program.results[0][2], plc.memory.get("trigger"))
        station.hs.fault(False)
        assert wait_for(lambda: plc.memory.get("ready") == 1 and plc.memory.get("error") == ERROR_NONE, 2)
    finally:
        station.close()
        plc.close()
    assert answer == (77, RESULT_NOT_INSPECTED, 0)
    assert station.verdicts == []                   # no frame was taken for it


def test_plc_restart_reconnects_and_never_replays_a_stale_result():
    first = ModbusHandshakePlc().start(rate_hz=10, parts=1, ack=False)   # part 1000's result stays up ...
    port = first.port
    station = StandInStation(HandshakeSettings(url=first.url, result_timeout_ms=300))
    try:
        assert wait_for(lambda: first.program.results, 5)
        first.close()                               # ... when the PLC goes away
        time.sleep(0.8)
        plc = ModbusHandshakePlc(port).start(rate_hz=10, parts=5, first_id=2000)   # back, memory cleared
        assert wait_for(lambda: len(plc.program.results) >= 5, 15)
        time.sleep(0.2)
        check = plc.program.check()
        stats = station.hs.stats()
    finally:
        station.close()
        plc.close()
    assert [p for _, p, _, _ in first.program.results] == [1000]
    assert stats["reconnects"] >= 1 and stats["io_errors"] >= 1 and stats["withdrawn"] == 1
    assert check["answered"] == check["triggered"] == 5 and check["in_order"]
    assert check["unknown"] == 0                    # part 1000's result was not written again


def test_an_ack_left_over_from_before_the_station_connected_acknowledges_nothing():
    plc = ModbusHandshakePlc().start(rate_hz=0, ack=False)
    plc._lt.call(plc.memory.set("ack", 1))          # stale: no result was up
    station = StandInStation(HandshakeSettings(url=plc.url, ack_timeout_ms=5000))
    try:
        assert wait_for(lambda: plc.memory.get("ready") == 1, 5)
        plc._lt.call(plc.memory.set("part_id", 5))
        plc._lt.call(plc.memory.set("trigger", 1))
        assert wait_for(lambda: plc.program.results, 5)
        time.sleep(0.3)                              # many polls with the result up
        up, stats = plc.memory.get("results_ready"), station.hs.stats()
    finally:
        station.close()
        plc.close()
    assert up == 1 and stats["acked"] == 0 and plc.program.results[0][1] == 5


# ----------------------------------------------------------------------------- a late ack (scripted PLC, fake clock)
def trigger_and_answer(hs: Handshake, plc: ScriptedPlc, clock: FakeClock, seq: int, part_id: int, ng: bool) -> None:
    """The PLC triggers ``part_id``; the station takes it (one poll), frame ``seq`` inspects it, its verdict
    comes, and the next poll writes its result."""
    plc.signals.update(part_id=part_id, trigger=1)
    hs._cycle(clock.advance(0.005))
    ticket = hs.next_trigger(0.0)
    assert ticket is not None and ticket.part_id == part_id
    hs.bind(seq, ticket)
    hs.on_verdict(Frame(seq, 0.0, None, "line"), Verdict(seq, 0.0, 0.9 if ng else 0.1, 0.5, ng, 0.0, "line"))
    hs._cycle(clock.advance(0.005))
    assert plc.signals["results_ready"] == 1 and plc.signals["result_part_id"] == part_id


def test_a_late_ack_for_a_withdrawn_result_never_acknowledges_the_next_one():
    """The audit's case: part 1001's result is withdrawn after ack_timeout_ms; the PLC's ack for it comes late.
    That ack stayed 1 and acknowledged part 1002's result on the next poll (counted acked, error 10 cleared)
    although the PLC never read it. Now the withdrawal writes ack = 0 with results_ready = 0, a stale ack is set
    back to 0, and a result is written with ack = 0 before results_ready = 1: only an ack that rises after it
    counts."""
    plc, clock = ScriptedPlc(), FakeClock()
    hs = Handshake(HandshakeSettings(url="modbus://127.0.0.1:1", poll_ms=5, ack_timeout_ms=50), plc, clock=clock)
    assert hs._connect()                       # no thread: the test runs each poll (_cycle) at a time it sets
    hs.begin()
    hs._cycle(clock.advance(0.005))            # the first poll (a trigger already 1 then is left over: answered 3)
    trigger_and_answer(hs, plc, clock, 0, 1001, ng=False)
    hs._cycle(clock.advance(0.051))            # no ack within 50 ms: withdrawn
    withdrawal = next(w for w in reversed(plc.writes) if ("results_ready", 0) in w)
    assert ("ack", 0) in withdrawal and withdrawal[-1] == ("results_ready", 0), withdrawal
    assert hs.error_code == ERROR_ACK_TIMEOUT and hs.stats()["ack_timeouts"] == 1
    plc.signals["ack"] = 1                     # the PLC's late ack for part 1001
    trigger_and_answer(hs, plc, clock, 1, 1002, ng=True)
    for _ in range(3):                         # polls with part 1002's result up; the PLC has not acked it
        hs._cycle(clock.advance(0.005))
    stats = hs.stats()
    assert plc.signals["results_ready"] == 1 and plc.signals["result_part_id"] == 1002, plc.writes[-3:]
    assert stats["acked"] == 0 and stats["stale_acks"] == 1 and hs.error_code == ERROR_ACK_TIMEOUT, stats
    result_write = next(w for w in plc.writes if ("result_part_id", 1002) in w)
    assert result_write[0] == ("ack", 0) and result_write[-1] == ("results_ready", 1)
    plc.signals["ack"] = 1                     # now the PLC reads part 1002 and acks it
    hs._cycle(clock.advance(0.005))
    stats = hs.stats()
    assert stats["acked"] == 1 and hs.error_code == ERROR_NONE and plc.signals["results_ready"] == 0
    assert plc.signals["ack"] == 0

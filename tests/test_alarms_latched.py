"""What an audit of the reject alarms found (its scripts exp5b, exp4 and exp8): a gate held only its latest alarm,
each written over the last, so NG part 5 not rejected (``gap_missed``) and part 6 passing uninspected 0 ms later
showed only part 6 on the page, the fault output, STATUS and MQTT, and the acknowledgement cleared and audited that
one: the operator pulled part 6 and let NG part 5 ship. And an acknowledgement cleared missed-pulse faults the page
never showed, on other lanes too, without auditing them: lane b's coil missed the pulse of NG part 7 after the page
showed lane a's alarm, and acknowledging lane a's cleared lane b's fault as well.

Now every alarm latched since the last acknowledgement stays latched, named in one bounded text
(``line.latched_alarms``); the missed pulses an acknowledgement clears are shown with the alarms and checked against
what the page showed; only the gates the page showed are acknowledged, and the audit names all that was cleared."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from line_replay import RecordingSink
from test_console_units import api
from fair_edge.console.alarm_ack import acknowledge_gates
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.station_hook import StationConsole
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sinks import FanOut
from fair_edge.line.sinks.base import SinkReport
from fair_edge.records import Verdict
from fair_edge.runtime.hotswap import ModelSwitch
from fair_edge.station.cell_lanes import LaneWatch
from fair_edge.station.config import StationConfig
from fair_edge.station.inspector import RunSummary

WAIT_S = 10.0


def console_of(tmp_path, scheduler=None, lanes=None) -> StationConsole:
    """A console over the station's gate ``scheduler`` and / or the lanes' gates ``lanes`` ({camera: gate}), as
    ``station.run`` / ``station.cell`` hand them in."""
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b", threshold=None))
    console.attach(SimpleNamespace(model="m", threshold=1.0, switch=ModelSwitch(), summary=RunSummary()), None,
                   scheduler, None, None)
    if lanes:
        console.feed.attach_lanes(lanes)
    return console


def shown_alarm(console) -> str:
    """The alarm text the live page shows now (``/api/state``'s ``plc.alarm``, without its shared snapshot's
    period)."""
    return console.feed.state()["plc"]["alarm"]


def wait_until(done, timeout_s: float = WAIT_S) -> bool:
    """Whether ``done()`` came true within ``timeout_s`` (polled every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def audited(console) -> list[tuple[str, str]]:
    return [(row["who"], row["old"]) for row in console.actions.audit.read()]


# ----------------------------------------------------------------------------- 1. every alarm stays latched
def test_an_ng_part_not_rejected_stays_named_after_a_later_alarm_until_the_acknowledgement(tmp_path):
    """exp5b: parts 4 and 5 NG 0 ms apart (5 gets no pulse slot: ``gap_missed``), part 6 no verdict (``fail_safe:
    alarm``: passes uninspected). The page, the fault output's reason and the fault sink name both parts, each by what
    became of it; an alarm latched after the page was drawn is refused (409, nothing cleared, nothing audited); the
    acknowledgement of the text shown clears them all and the audit row names them all. Counted two alarms."""
    rows, faults = [], RecordingSink("fault")
    gate = RejectScheduler(RejectSettings(delay_ms=300, pulse_ms=50, min_gap_ms=20, late_ms=5, fail_safe="alarm"),
                           sinks=RecordingSink("rej"), fault_sinks=faults, on_part=rows.append)
    with gate:
        console = console_of(tmp_path, scheduler=gate)
        client = api(console)
        t = time.monotonic()
        for seq in (4, 5):
            gate.note_capture(seq, t_capture=t)
            gate.submit(Verdict(seq, t, 9.0, 1.0, True, 0.0))
        gate.note_capture(6, t_capture=t + 0.2)
        assert gate.wait_idle(WAIT_S)
        decided = [(r["seq"], r["gate"], r["verdict"]) for r in rows if r["event"] == "gate"]
        assert decided == [(4, "rejected_ng", "ng"), (5, "gap_missed", "ng"), (6, "passed_uninspected", "none")]
        shown = shown_alarm(console)
        assert shown.startswith("2 alarms since the last acknowledgement, parts seq 5 .. 6; "), shown
        assert "not rejected (gap_missed): seq 5;" in shown and "passed uninspected: seq 6;" in shown, shown
        assert "first: part seq 5 not rejected" in shown and "latest: part seq 6 passed the gate uninspected" in shown
        assert gate.alarm == shown and gate.fault_reason == shown and faults.faults[-1] == (True, shown)
        assert gate.stats()["alarms"] == 2

        gate.note_capture(7, t_capture=time.monotonic() - 60.0)   # passes uninspected after the page was drawn
        assert gate.wait_idle(WAIT_S)
        r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
        assert r.status_code == 409 and "3 alarms" in r.json()["error"], r.text
        assert "passed uninspected: 2 parts, seq 6, 7;" in gate.alarm and audited(console) == []

        shown = shown_alarm(console)
        r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
        assert r.status_code == 200 and r.json()["old"] == shown, r.text
        assert gate.alarm is None and gate.fault_reason is None and faults.faults[-1] == (False, "cleared")
        assert audited(console) == [("ann", shown)] and "seq 5" in shown and "seq 7" in shown
        assert gate.stats()["alarms"] == 3


def test_the_alarm_text_of_a_long_outage_is_bounded_and_names_every_group():
    """exp4: a camera out for a while lets a part pass uninspected (``fail_safe: alarm``) after another, each an
    alarm. The text counts them all, spans their sequence numbers and names the first 20 and how many more, whatever
    their number (50 or 1050 parts: about as long). Each alarm counted once."""
    gate = RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm", max_pending=5000),
                           sinks=RecordingSink("rej"), fault_sinks=RecordingSink("fault"))
    with gate:
        past = time.monotonic() - 60.0
        for seq in range(100, 150):
            gate.note_capture(seq, t_capture=past)   # long past its gate: no verdict by its due time
        assert gate.wait_idle(WAIT_S)
        fifty = gate.alarm
        for seq in range(150, 1150):
            gate.note_capture(seq, t_capture=past)
        assert gate.wait_idle(WAIT_S)
        text = gate.alarm
    assert text.startswith("1050 alarms since the last acknowledgement, parts seq 100 .. 1149; ")
    assert "passed uninspected: 1050 parts, seq 100, 101, 102," in text and ", 119 and 1030 more" in text, text
    assert ", 120" not in text and "first: part seq 100 passed" in text and "latest: part seq 1149 passed" in text
    assert len(text) < 2 * len(fifty) and gate.stats()["alarms"] == 1050


def test_each_lane_keeps_every_alarm_and_the_station_names_them_all(tmp_path):
    """``group.by: lane``: a lane's two alarms are both on the page (named by lane) and in the reason the station's
    tick gives the fault output, STATUS and MQTT (``LaneWatch``); the acknowledgement clears both."""
    lanes = {name: RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm"),
                                   sinks=RecordingSink(name)) for name in ("left", "right")}
    try:
        console = console_of(tmp_path, lanes=lanes)
        client = api(console)
        watch = LaneWatch("left", lanes["left"], None)
        lanes["left"].submit(Verdict(5, time.monotonic() - 60.0, 9.0, 1.0, True, 0.0))   # NG, its part went by
        lanes["left"].note_capture(6, t_capture=time.monotonic() - 60.0)                  # passes uninspected
        assert lanes["left"].wait_idle(WAIT_S)
        shown = shown_alarm(console)
        assert shown.startswith("lane left: 2 alarms since the last acknowledgement, parts seq 5 .. 6; "), shown
        assert "not rejected (verdict after the part passed the gate): seq 5" in shown, shown
        assert watch() == shown and "passed uninspected: seq 6" in watch()
        r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
        assert r.status_code == 200 and r.json()["old"] == shown, r.text
        assert lanes["left"].alarm is None and watch() == "" and audited(console) == [("ann", shown)]
    finally:
        for gate in lanes.values():
            gate.close()


# ----------------------------------------------------------------------------- 2. only the missed pulses shown
class _LinkSink(RecordingSink):
    """A recording sink that says whether its link is up (``connected``, as ``WorkerSink`` does)."""

    def __init__(self, name: str, connected: bool = True) -> None:
        super().__init__(name)
        self.connected = connected


def test_a_missed_pulse_on_another_lane_is_shown_and_not_cleared_unseen(tmp_path):
    """exp8 with real Modbus coils: two lanes (``fail_safe: reject``); lane b's coil does not exist, so the PLC
    refuses its write while the link stays up. The page shows lane a's alarm; lane b then misses the pulse of NG
    part 7. Acknowledging the text shown is refused (409, lane b's fault named, kept, nothing audited); the page then
    shows lane b's missed pulse beside lane a's alarm, and acknowledging that clears both, audited with both."""
    from fair_edge.line.sim_sink_plc import SimulatedPlc

    plc = SimulatedPlc().start()
    try:
        lanes = {name: RejectScheduler(RejectSettings(delay_ms=300, pulse_ms=20, late_ms=20, fail_safe="reject",
                                                      sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil={coil}",)))
                 for name, coil in (("a", 0), ("b", 200))}
        try:
            for gate in lanes.values():
                gate.check_sinks(WAIT_S)
            console = console_of(tmp_path, lanes=lanes)
            client = api(console)
            watch = LaneWatch("b", lanes["b"], None)
            lanes["a"].submit(Verdict(5, time.monotonic() - 10, 9.0, 1.0, True, 0.0))   # NG, its part went by
            shown = shown_alarm(console)
            assert shown == "lane a: NG part seq 5: verdict came after the part passed the gate", shown
            t = time.monotonic()
            lanes["b"].note_capture(7, t_capture=t)
            lanes["b"].submit(Verdict(7, t, 9.0, 1.0, True, 0.0))
            assert wait_until(lambda: lanes["b"].stats()["sink_missed"] == 1)
            missed = lanes["b"].fault_reason
            assert missed and "coil 200 missed reject seq 7" in missed and watch() == f"lane b: {missed}"

            r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
            assert r.status_code == 409 and f"lane b: {missed}" in r.json()["error"], r.text
            assert lanes["b"].fault_reason == missed and lanes["a"].alarm and audited(console) == []

            shown = shown_alarm(console)
            assert shown == f"lane a: NG part seq 5: verdict came after the part passed the gate; lane b: {missed}"
            r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
            assert r.status_code == 200 and r.json()["old"] == shown, r.text
            assert lanes["b"].fault_reason is None and watch() == "" and audited(console) == [("ann", shown)]
        finally:
            for gate in lanes.values():
                gate.close()
    finally:
        plc.close()


def test_the_station_gates_missed_pulse_is_shown_checked_and_audited(tmp_path):
    """The station's own gate (``fail_safe: reject``): a pulse its PLC coil missed (refused, link up) holds the fault
    output and is shown with the alarm; a miss after the page was drawn is refused (409), the one shown cleared with
    the alarm and audited. A miss of a sink whose link is down is not shown (an acknowledgement does not clear it:
    the reconnect does)."""
    faults = RecordingSink("fault")
    sinks = FanOut([_LinkSink("plc"), _LinkSink("plc-down", connected=False)])
    with RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=sinks, fault_sinks=faults) as gate:
        console = console_of(tmp_path, scheduler=gate)
        client = api(console)
        gate.submit(Verdict(5, time.monotonic() - 10, 9.0, 1.0, True, 0.0))   # NG, its part went by: the alarm
        shown = shown_alarm(console)
        gate.handle_report(SinkReport("plc", "missed", 8, "device refused"))
        gate.handle_report(SinkReport("plc-down", "missed", 9, "link down"))
        assert shown_alarm(console) == f"{gate.alarm}; plc missed reject seq 8" and "seq 9" in gate.fault_reason
        r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
        assert r.status_code == 409 and "plc missed reject seq 8" in r.json()["error"], r.text
        assert "plc missed reject seq 8" in gate.fault_reason and audited(console) == []

        shown = shown_alarm(console)
        r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
        assert r.status_code == 200 and r.json()["old"] == shown and "plc missed reject seq 8" in shown, r.text
        assert r.json()["fault"] == "plc-down missed reject seq 9" and gate.to_acknowledge is None
        assert audited(console) == [("ann", shown)] and faults.faults[-1][0] is True


def test_a_gate_whose_text_changed_since_the_page_keeps_it_and_no_gate_is_acknowledged():
    """``acknowledge_gates`` with the text the page showed (lane a's alarm): a pulse lane b missed after the page was
    drawn is refused, naming it, and nothing is cleared, lane a's alarm neither (all or nothing); before, every gate
    was acknowledged against "", which cleared b's missed pulse unseen."""
    from fair_edge.console.refusals import AlarmChanged

    gates = {name: RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=_LinkSink(f"plc-{name}"))
             for name in ("a", "b")}
    try:
        gates["a"].submit(Verdict(5, time.monotonic() - 10, 9.0, 1.0, True, 0.0))
        shown = f"lane a: {gates['a'].alarm}"
        gates["b"].handle_report(SinkReport("plc-b", "missed", 7, "device refused"))
        with pytest.raises(AlarmChanged, match="lane b: plc-b missed reject seq 7.*nothing was cleared"):
            acknowledge_gates(gates, shown)
        assert gates["a"].alarm is not None and f"lane a: {gates['a'].to_acknowledge}" == shown
        assert gates["b"].fault_reason == "plc-b missed reject seq 7"   # before: None, cleared unseen
        assert gates["b"].to_acknowledge == "plc-b missed reject seq 7"
    finally:
        for gate in gates.values():
            gate.close()


@pytest.mark.parametrize("link_up_at_ack", [True, False])
def test_a_missed_pulse_with_fail_safe_alarm_is_named_once(tmp_path, link_up_at_ack):
    """``fail_safe: alarm``: a missed pulse latches an alarm naming it, so the operator is shown it once (the alarm),
    not twice. Acknowledged while its sink's link is down, the miss stays (the reconnect clears it); a link back
    without a reconnect report leaves it to the operator: shown again, on its own, and acknowledged, audited."""
    sink = _LinkSink("plc", connected=link_up_at_ack)
    with RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm"), sinks=sink,
                         fault_sinks=RecordingSink("fault")) as gate:
        console = console_of(tmp_path, scheduler=gate)
        client = api(console)
        gate.handle_report(SinkReport("plc", "missed", 4, "device refused"))
        assert gate.alarm == "plc missed reject seq 4" == shown_alarm(console)
        r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": gate.alarm})
        assert r.status_code == 200 and r.json()["old"] == "plc missed reject seq 4" and gate.alarm is None, r.text
        if link_up_at_ack:
            assert gate.fault_reason is None and shown_alarm(console) == ""
            return
        assert gate.fault_reason == "plc missed reject seq 4" and shown_alarm(console) == ""
        sink.connected = True
        assert shown_alarm(console) == "plc missed reject seq 4"
        r = client.post("/api/acknowledge_alarm", json={"who": "bob", "alarm": "plc missed reject seq 4"})
        assert r.status_code == 200 and gate.fault_reason is None, r.text
        assert audited(console) == [("ann", "plc missed reject seq 4"), ("bob", "plc missed reject seq 4")]


def test_every_missed_pulse_of_a_sink_stays_named_until_the_acknowledgement():
    """Review of eca8201: a sink's pulse fault held its latest miss only: NG part 7's missed pulse, then part 8's
    unconfirmed one and part 9's miss showed and audited "plc missed reject seq 9" alone (``fail_safe: reject``
    latches no alarm for them), and parts 7 and 8 shipped unnamed. Each miss is kept until the acknowledgement."""
    with RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=_LinkSink("plc"),
                         fault_sinks=RecordingSink("fault")) as gate:
        for kind, seq in (("missed", 7), ("unconfirmed", 8), ("missed", 9)):
            gate.handle_report(SinkReport("plc", kind, seq, "device refused"))
        shown = gate.to_acknowledge
        assert shown.startswith("3 pulse faults of plc since the last acknowledgement, parts seq 7 .. 9"), shown
        assert "not rejected (reject pulse missed): 2 parts, seq 7, 9" in shown and "unconfirmed: seq 8" in shown
        assert gate.fault_reason == shown and gate.alarm is None
        assert gate.acknowledge_alarm(shown) == shown and gate.fault_reason is None
        gate.handle_report(SinkReport("plc", "missed", 10, "device refused"))   # a new spell: as raised
        assert gate.to_acknowledge == "plc missed reject seq 10"


def test_a_sink_whose_link_is_down_is_not_offered_while_its_socket_reconnects():
    """Review of eca8201: a sink counted as up when its socket was connected, before any write was answered (a
    gateway that accepts TCP and answers nothing): its miss flickered onto the page after each reconnect attempt and
    an acknowledgement then cleared it while the link was still down. Down until it reports ``reconnected``."""
    sink = _LinkSink("plc", connected=True)   # the socket is connected again
    with RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=sink,
                         fault_sinks=RecordingSink("fault")) as gate:
        gate.handle_report(SinkReport("plc", "unconfirmed", 7, "no reply"))
        gate.handle_report(SinkReport("plc", "link_down", None, "no reply"))
        assert gate.to_acknowledge is None and gate.acknowledge_alarm() is None
        assert "reject seq 7 unconfirmed" in gate.fault_reason
        gate.handle_report(SinkReport("plc", "reconnected", None, "answered"))
        assert gate.fault_reason is None and gate.to_acknowledge is None

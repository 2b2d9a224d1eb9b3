"""What an audit of alarms and faults found: a lane's latched alarm (``group.by: lane``) could not be acknowledged
from the console (it read the station's gate only: "(none latched)", the fault output on until a restart); a SIGHUP
reload of the same model cleared an active drift alarm (and the fault output it held); the console's fault pill said
"none" while the fault output was on for a PLC link down (it showed only a fault that stopped the inspection); at the
default log level (WARNING) a sink's "reconnected" / "released" and the gate's "fault cleared" were never logged (the
journal showed faults raised, never cleared), and a ``log://`` sink printed nothing at all."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from console_station import RunningStation, station_config
from line_replay import ListHandler
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.station_hook import StationConsole
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.records import Verdict
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.station.config import StationConfig
from fair_edge.station.inspector import RunSummary
from fair_edge.station.views import GroupSettings, ViewSettings

LEFT_OLD = "part seq 2 passed the gate uninspected (fail_safe: alarm)"
LEFT_NEW = "part seq 9 passed the gate uninspected (fail_safe: alarm)"
RIGHT = "part seq 4 not rejected: too close to the previous reject (gap_missed)"


# ----------------------------------------------------------------------------- 1. a lane's alarm, acknowledged
@pytest.fixture
def lanes():
    """Two lanes' reject gates ("left", "right"), as ``station.cell_line.open_cell_line`` opens them: fail_safe alarm,
    the lane's own sinks, no fault sinks (the station's fault output is held through the tick's ``LaneWatch``)."""
    from line_replay import RecordingSink

    from fair_edge.line.scheduler import RejectScheduler

    gates = {name: RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm"),
                                   sinks=RecordingSink(name)) for name in ("left", "right")}
    yield gates
    for gate in gates.values():
        gate.close()


def lane_console(tmp_path, lanes) -> StationConsole:
    """A console of a lane station without ``reject.fault_sinks`` (no gate of the station's own), handed its lanes'
    gates as ``station.cell`` hands them."""
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b", threshold=None))
    console.attach(SimpleNamespace(model="m", threshold=1.0, switch=ModelSwitch(), summary=RunSummary()), None, None,
                   None, None)
    console.feed.attach_lanes(lanes)
    return console


def test_a_lanes_alarm_is_shown_named_and_the_acknowledge_clears_the_alarms_the_page_showed(tmp_path, lanes):
    """A lane's latched alarm is on the page named by its lane, with the acknowledge button (plc.alarm); acknowledging
    the alarm shown clears it on that lane (its fault output lets go), audited with it. An alarm latched on another
    lane since the page showed its own is refused (409, naming it, nothing cleared); acknowledging what the page
    shows then clears both lanes'. Before, the console read only the station's gate: "(none latched)" (or, without
    reject.fault_sinks, "no reject gate") and the lamp stayed on until a restart."""
    from test_console_units import api

    left, right = lanes["left"], lanes["right"]
    console = lane_console(tmp_path, lanes)
    client = api(console)
    left._raise_alarm(LEFT_OLD)
    shown = client.get("/api/state").json()["plc"]["alarm"]
    assert shown == f"lane left: {LEFT_OLD}"
    r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": shown})
    assert r.status_code == 200 and r.json()["old"] == shown and r.json()["fault"] == "", r.text
    assert left.alarm is None and left.fault_reason is None
    assert client.get("/api/state").json()["plc"]["alarm"] == ""

    left._raise_alarm(LEFT_NEW)
    shown = client.get("/api/state").json()["plc"]["alarm"]
    right._raise_alarm(RIGHT)   # latched after the page showed left's
    r = client.post("/api/acknowledge_alarm", json={"who": "bob", "alarm": shown})
    assert r.status_code == 409 and f"lane right: {RIGHT}" in r.json()["error"], r.text
    assert (left.alarm, right.alarm) == (LEFT_NEW, RIGHT)   # nothing cleared
    shown = client.get("/api/state").json()["plc"]["alarm"]
    assert shown == f"lane left: {LEFT_NEW}; lane right: {RIGHT}"
    r = client.post("/api/acknowledge_alarm", json={"who": "bob", "alarm": shown})
    assert r.status_code == 200 and r.json()["old"] == shown and (left.alarm, right.alarm) == (None, None)
    assert [(e["who"], e["old"]) for e in console.actions.audit.read()] == [
        ("ann", f"lane left: {LEFT_OLD}"), ("bob", f"lane left: {LEFT_NEW}; lane right: {RIGHT}")]


def test_a_lanes_alarm_is_acknowledged_in_a_running_cell_and_the_fault_output_drops(station_bundles, scored,
                                                                                   tmp_path):
    """The wiring: a running ``group.by: lane`` cell, no reject.fault_sinks. Lane a's part passes its gate
    uninspected (fail_safe: alarm): the page shows the lane's alarm, named, and its fault pill the reason MQTT and
    STATUS show; the acknowledge clears it and the fault drops at the next tick. Before, the console had no gate at
    all: 400 "no reject gate", the alarm latched until a restart."""
    from fair_edge.cameras import LineSource

    images, threshold = scored
    sources = {c: LineSource(images[:4], fps=10, loop=True, name=c) for c in ("a", "b")}
    out = tmp_path / "out"
    cfg = StationConfig(
        bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=out,
        cameras=tuple(ViewSettings(c, c, reject=(f"log://test.alarms.lane.{c}",)) for c in sources),
        group=GroupSettings(by="lane"), record=RecordSettings(dir=out), console=ConsoleSettings(port=0),
        reject=RejectSettings(delay_ms=3000.0, fail_safe="alarm")).checked()
    with RunningStation(cfg, sources=sources) as st:
        state = lambda: httpx.get(st.url + "api/state", timeout=30).json()  # noqa: E731
        # lane a's gate, as the station's tick watches it (``LaneWatch``)
        lane = next(w.lane for w in st.console.feed.camera_watch.watches if getattr(w, "lane", None) and w.name == "a")
        st.wait_for(lambda: st.console.feed.count >= 2, what="verdicts")
        lane.note_capture(10**9, t_capture=time.monotonic() - 60.0)   # a part lane a saw, long past its gate
        alarm = st.wait_for(lambda: lane.alarm, what="lane a's alarm")
        assert "passed the gate uninspected" in alarm
        shown = st.wait_for(lambda: (s := state())["plc"] and s["plc"]["alarm"] and s, what="the lane's alarm shown")
        assert shown["plc"]["alarm"] == f"lane a: {alarm}"
        fault = st.wait_for(lambda: state()["fault"], what="the fault pill")   # from the station's next tick
        assert fault == f"lane a: {alarm}"
        r = httpx.post(st.url + "api/acknowledge_alarm", json={"who": "ann", "alarm": shown["plc"]["alarm"]},
                       timeout=30)
        assert r.status_code == 200 and r.json()["old"] == f"lane a: {alarm}", r.text
        assert lane.alarm is None
        st.wait_for(lambda: state()["fault"] == "", what="the fault output to drop")


# ----------------------------------------------------------------------------- 2. a reload of the same model
def drifted_console(tmp_path, calls):
    """One camera running model "m-1", calibrated on N(0, 1) scores, its drift alarm held on the fault output
    (``calls``): 500 parts scored N(3, 1)."""
    from test_console_units import calibrated

    rng = np.random.default_rng(7)
    calibration = calibrated(rng, 0.0)
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False, drift_min_parts=20, drift_fault=True))
    target = SimpleNamespace(fault=lambda active, reason="": calls.append((active, reason)))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b1", threshold=calibration), fault=target)
    console.attach(SimpleNamespace(model="m-1", threshold=1.0, switch=ModelSwitch(), regions=None), None, None,
                   None, None)
    for i, s in enumerate(rng.normal(3.0, 1.0, 500)):
        console.observe(None, Verdict(i, 0.0, float(s), 9.0, False, 0.01, model="m-1"), None)
    return console, calibration


def test_a_reload_of_the_same_model_keeps_the_drift_alarm_and_another_model_starts_over(tmp_path, inline_swaps,
                                                                                     monkeypatch):
    """SIGHUP with the station file unchanged (or its threshold edited) loads the same model again: its scores are
    those the drift watch holds, so they stay, and so do the alarm and the fault output it holds. Before, every
    swap reset the watch (no parts, no alarm: the fault output dropped though nothing changed on the line). A swap to
    another model still starts over on that model's calibration."""
    from test_console_units import Backend

    from fair_edge.console import station_hook
    from fair_edge.console.actions import StationLinks

    monkeypatch.setattr(station_hook, "DRIFT_EVERY_S", 0.0)   # every tick checks: no clock in the test
    calls = []
    console, calibration = drifted_console(tmp_path, calls)
    console.tick()
    assert calls and calls[-1][0] is True
    model = {"id": "m-1"}

    def load_model(bundle, threshold=None, **_):
        return ModelChange(scorer=SimpleNamespace(backend=Backend(model["id"], [])), model=model["id"],
                           threshold=threshold or 2.5, bundle=SimpleNamespace(root=bundle, threshold=calibration),
                           calibration=calibration)

    console.actions.links = StationLinks(load_model=load_model)
    console.actions.swap(str(tmp_path / "b1"), "SIGHUP", threshold=2.0)   # the same model, a threshold edited
    assert console.actions.swap_status["state"] == "done", console.actions.swap_status
    state = console.feed.drift.state()
    assert state.parts == 500 and state.alarm
    console.tick()
    assert calls[-1][0] is True and len(calls) == 1   # the fault output held, never dropped

    model["id"] = "m-2"
    console.actions.swap(str(tmp_path / "b2"), "ann")   # another model: its own scores, the watch starts over
    assert console.feed.drift.state().parts == 0
    console.tick()
    assert calls[-1] == (False, "")


def test_a_cameras_reload_of_the_same_model_keeps_its_drift_watch(tmp_path):
    """Several cameras: camera b reloaded with the model it runs keeps its drift parts; swapped to another model,
    its watch starts over (camera a's is never touched)."""
    from test_console_units import calibrated, scored_two_camera_console

    from fair_edge.console.actions import StationActions, StationLinks

    rng = np.random.default_rng(8)
    console = scored_two_camera_console(tmp_path, rng)
    feed = console.feed
    new = calibrated(rng, 5.0)
    for model, parts in (("m-b", 50), ("m-other", 0)):
        change = ModelChange(model=model, threshold=8.0, bundle=SimpleNamespace(root=tmp_path / model, threshold=new),
                             calibration=new)
        links = StationLinks(load_views=lambda bundle, cameras, thresholds, change=change: {c: change for c in cameras})
        StationActions(feed, None, links).swaps.load_views({tmp_path / model: ("b",)}, "SIGHUP", {})
        assert (feed.drift.states()["a"].parts, feed.drift.states()["b"].parts) == (50, parts), model


@pytest.fixture
def inline_swaps(monkeypatch):
    from inline_swaps import InlineThread

    from fair_edge.console import swaps

    monkeypatch.setattr(swaps, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))


# ----------------------------------------------------------------------------- 3. the fault pill
def test_the_fault_pill_shows_a_reject_plc_link_down_as_mqtt_and_status_do(station_bundles, conveyor_dir, tmp_path):
    """One camera whose reject PLC does not answer: the fault output is on ("... link down since ..."), and the
    console's fault pill says so, the same text as MQTT and systemd's STATUS (``LineSide.fault_reason``). Before, it
    showed only a fault that stopped the inspection: "none" while the lamp was on."""
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    reject = RejectSettings(sinks=(f"modbus://127.0.0.1:{dead}?unit=1&coil=0",), delay_ms=3000.0)
    cfg = station_config(station_bundles[0].root, conveyor_dir, tmp_path / "out", fps=5, reject=reject,
                         console=ConsoleSettings(port=0))
    with RunningStation(cfg) as st:
        scheduler = st.console.feed.scheduler
        reason = st.wait_for(lambda: scheduler.fault_reason, what="the sink's link down")
        assert "link down" in reason
        fault = st.wait_for(lambda: httpx.get(st.url + "api/state", timeout=30).json()["fault"], what="the fault pill")
        assert "link down" in fault and fault.split(";")[0] in (scheduler.fault_reason or "")


def test_the_fault_pill_names_a_handshake_error(tmp_path):
    """The handshake's Error 10 (a result not acknowledged) holds the PLC's Error register: the pill names it as
    STATUS does."""
    from fair_edge.station.line_side import LineSide

    line = LineSide(recorder=None, scheduler=None, encoder=None, mqtt=None, callbacks=[],
                    handshake=SimpleNamespace(error_code=10))
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b", threshold=None))
    console.feed.read_fault_from(line.fault_reason)
    fault = console.feed.state()["fault"]
    assert fault.startswith("handshake error 10: ") and fault == line.fault_reason()


# ----------------------------------------------------------------------------- 4, 5. the journal at the default level
@pytest.fixture
def default_level():
    """Logging as `fair-edge run` sets it without -v (systemd): the root at WARNING, a handler that takes all that
    reaches it, no level of the package's own (restored after)."""
    root, package = logging.getLogger(), logging.getLogger("fair_edge")
    kept = root.level, package.level
    lines = ListHandler()   # what the journal gets: every record that reaches the root's handlers
    root.setLevel(logging.WARNING)
    package.setLevel(logging.NOTSET)
    root.addHandler(lines)
    yield lines
    root.removeHandler(lines)
    root.setLevel(kept[0])
    package.setLevel(kept[1])


def test_recoveries_are_logged_at_the_level_their_faults_were(default_level):
    """A sink's link down and missed pulses were WARNING, its "reconnected" / "released" and the gate's "fault
    cleared" INFO: at the default level the journal showed faults raised and never cleared."""
    from line_replay import RecordingSink

    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.line.sinks import SinkReport

    gate = RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20), sinks=RecordingSink("plc"))
    try:
        for kind in ("link_down", "reconnected", "stuck", "released"):
            gate.handle_report(SinkReport("plc", kind, None, kind))
        gate._encoder = SimpleNamespace(fault_reason="encoder e: link down")
        gate._check_encoder_fault()
        gate._encoder.fault_reason = None
        gate._check_encoder_fault()
    finally:
        gate.close()
    lines = [r.getMessage() for r in default_level.records if r.levelno >= logging.WARNING]
    for said in ("sink plc: reconnected", "sink plc: released", "reject sink plc: link fault cleared",
                 "reject sink plc: stuck fault cleared", "reject gate: encoder fault cleared"):
        assert any(line.startswith(said) for line in lines), (said, lines)
    assert gate.fault_reason is None


def test_a_log_sink_prints_its_rejects_and_fault_changes_at_the_default_level(default_level):
    """``log://NAME``: one line per reject and per fault change, as the docs promise (and tell engineers to tune
    delay_ms with); at the default level its pulses and "fault off" (INFO) printed nothing."""
    from fair_edge.line.events import RejectEvent
    from fair_edge.line.sinks import open_sink

    name = "test.alarms.logsink"
    logger = logging.getLogger(name)
    logger.setLevel(logging.NOTSET)   # as a fresh process has it: the root's WARNING
    sink = open_sink(f"log://{name}")
    try:
        sink.pulse(RejectEvent(seq=3, t_due=1.0, t_edge=1.0, deadline=1.05, score=0.9))
        sink.set_fault(True, "camera gone")
        sink.set_fault(False, "cleared")
    finally:
        sink.close()
        logger.setLevel(logging.NOTSET)
    lines = [r.getMessage() for r in default_level.records if r.name == name]
    assert [line.split()[0:2] for line in lines] == [["reject", "seq=3"], ["fault", "ON:"], ["fault", "off:"]], lines


def test_a_log_sink_named_after_a_shared_logger_prints_its_lines_and_leaves_that_loggers_level(default_level):
    """``log://fair_edge``: opening the sink set the ``fair_edge`` logger to INFO, so every module of the station
    printed its INFO lines too (docs said to give the sink a logger of its own, nothing enforced it). Now the sink
    writes through a logger of its own named ``fair_edge``: its lines print, under that name, at the default level,
    and ``fair_edge``'s level (and so every other module's output) is unchanged."""
    from fair_edge.line.events import RejectEvent
    from fair_edge.line.sinks import open_sink

    package = logging.getLogger("fair_edge")
    sink = open_sink("log://fair_edge")
    try:
        sink.pulse(RejectEvent(seq=4, t_due=1.0, t_edge=1.0, deadline=1.05, score=0.9))
        sink.set_fault(False, "cleared")
        logging.getLogger("fair_edge.station.inspector").info("an inspector line at INFO")
    finally:
        sink.close()
    assert package.level == logging.NOTSET
    said = [r.getMessage().split()[0] for r in default_level.records if r.name == "fair_edge"]
    assert said == ["reject", "fault"], said
    leaked = [r.getMessage() for r in default_level.records if r.name == "fair_edge.station.inspector"]
    assert leaked == []

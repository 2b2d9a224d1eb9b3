"""What /metrics and MQTT consumers read (the consumer audit): a lane station's gates labelled by lane, a cell's parts
beside its views, the capture-queue drop series from the start, a drift PSI with no sample until it has a value, and a
handshake station's drift fault on MQTT as the PLC sees it. The line side is opened as a station opens it
(``open_cell_line``, ``LineSide``) and driven by hand: no model, no camera, no bound that hopes the machine is idle."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from fair_edge.line.metrics import Metrics  # noqa: E402
from fair_edge.line.settings import MetricsSettings, RecordSettings, RejectSettings  # noqa: E402
from fair_edge.records import Frame, Verdict  # noqa: E402
from fair_edge.station.config import ConsoleSettings, StationConfig  # noqa: E402
from fair_edge.station.views import GroupSettings, ViewSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60.0   # a bound on waiting for the gate and the sinks, never a sleep: a loaded machine only takes longer


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """The exposition parsed by prometheus_client's own parser: (sample name, sorted label pairs) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}


def dead_port() -> int:
    """A loopback port nothing listens on (a PLC that is off)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cell_config(tmp_path: Path, cameras: tuple, group: GroupSettings, reject: RejectSettings) -> StationConfig:
    """A station of several cameras with metrics on a free port, no console, no NG images (the frames are stand-ins)."""
    return StationConfig(console=ConsoleSettings(enabled=False), output=tmp_path / "out", cameras=cameras, group=group,
                         record=RecordSettings(dir=tmp_path / "out", save_ng_images=False), reject=reject,
                         metrics=MetricsSettings(enabled=True, port=0)).checked()


# ----------------------------------------------------------------------------- 1. each lane's gate, labelled
def test_each_lanes_reject_counters_are_exported_with_its_lane_label(tmp_path):
    """Audit s3: with group.by: lane, each camera's gate kept its counters in summary.json (rejects.lanes) only;
    /metrics exported the station's own gate, which with reject.fault_sinks gates no part: all zeros, so the
    documented alert on fair_edge_reject_total{event="sink_missed"} never fired while lane left missed its pulses.
    Now each lane's counters carry its camera (lane="left"), and the station's gate, holding only the fault output,
    is its fault sinks' counters (fair_edge_fault_output_total), no reject gate."""
    from fair_edge.station.cell_line import open_cell_line

    cameras = (ViewSettings("top", "unused-top", fps=10, reject=("log://",)),
               ViewSettings("left", "unused-left", fps=10, reject=(f"modbus://127.0.0.1:{dead_port()}?unit=1&coil=0",)))
    cfg = cell_config(tmp_path, cameras, GroupSettings(by="lane"),
                      RejectSettings(delay_ms=50, pulse_ms=20, late_ms=10, min_gap_ms=10, fault_sinks=("log://",)))
    with contextlib.ExitStack() as stack:
        cell = open_cell_line(cfg, stack, "run-lanes")
        for seq, (name, lane) in enumerate(cell.lanes.items()):
            t = time.monotonic()
            lane.note_capture(seq, t)
            lane.submit(Verdict(seq, t, 9.0, 1.0, True, time.monotonic(), camera=name))   # NG: a pulse is due
        for lane in cell.lanes.values():
            assert lane.wait_idle(WAIT_S)
            lane.drain_sinks(WAIT_S)
        scraped = samples(cell.line.metrics)
        lanes = cell.reject_stats()["lanes"]

    def reject(lane: str, event: str) -> float:
        return scraped[("fair_edge_reject_total", (("event", event), ("lane", lane)))]

    assert lanes["left"]["sink_missed"] == 1                           # the summary's count ...
    assert reject("left", "sink_missed") == 1                          # ... is on /metrics, named by its lane
    assert reject("top", "sink_missed") == 0 and reject("top", "fired") == lanes["top"]["fired"] == 1
    assert reject("left", "captured") == reject("top", "captured") == 1
    assert scraped[("fair_edge_reject_pending", (("lane", "left"),))] == 0
    assert not [key for key in scraped if key[0] == "fair_edge_reject_total" and "lane" not in dict(key[1])]
    fault_output = {dict(labels)["event"] for name, labels in scraped if name == "fair_edge_fault_output_total"}
    assert fault_output and all(event.startswith("sink_") for event in fault_output)


# ----------------------------------------------------------------------------- 5. a cell's parts beside its views
def test_a_part_cells_metrics_count_parts_beside_views(tmp_path):
    """Audit s2: in a cell fair_edge_frames_total / _ng_total count views (120 / 30 for 60 parts, 15 NG) while the
    console and summary.json count parts, and no metric counted parts. Now fair_edge_parts_total{event} reads the
    summary's parts counters: 3 parts of 2 views, 1 of them NG by one view, move it by 3 parts and 1 NG."""
    from fair_edge.station.cell_line import open_cell_line

    cameras = (ViewSettings("top", "unused-top", fps=10), ViewSettings("left", "unused-left", fps=10))
    cfg = cell_config(tmp_path, cameras, GroupSettings(by="part", match="sequence"), RejectSettings())
    with contextlib.ExitStack() as stack:
        cell = open_cell_line(cfg, stack, "run-parts")
        before = samples(cell.line.metrics)
        for seq in range(3):
            for name in ("top", "left"):
                frame = Frame(seq, time.monotonic(), np.zeros((4, 4, 3), np.uint8), camera=name)
                cell.assembler.on_capture(name, frame)
                ng = name == "left" and seq == 1
                verdict = Verdict(seq, frame.t_capture, 9.0 if ng else 0.1, 1.0, ng, time.monotonic(), camera=name)
                for callback in cell.line.callbacks:   # as the inspector calls them
                    callback(frame, verdict, None)
        after = samples(cell.line.metrics)
        parts = dict(cell.assembler.stats)   # what summary.json's parts gets

    def part(scraped: dict, event: str) -> float:
        return scraped[("fair_edge_parts_total", (("event", event),))]

    assert part(before, "parts") == part(before, "ng") == 0
    assert part(after, "parts") == parts["parts"] == 3 and part(after, "ng") == parts["ng"] == 1
    assert part(after, "ok") == 2 and part(after, "not_inspected") == 0
    assert after[("fair_edge_frames_total", ())] == 6 and after[("fair_edge_ng_total", ())] == 1   # views


# ----------------------------------------------------------------------------- 3. the drop series from the start
def test_the_capture_queue_drop_series_has_a_sample_before_the_first_drop():
    """Audit s7: fair_edge_dropped_total{stage="camera_queue"} had no sample until the first drop, so rate() and an
    alert on it read nothing on a healthy station. It starts at 0 now, and a drop moves it."""
    metrics = Metrics(MetricsSettings(port=0))
    key = ("fair_edge_dropped_total", (("stage", "camera_queue"),))   # the name dashboards and docs use
    assert samples(metrics)[key] == 0
    metrics.count_drop("camera_queue", 2)
    assert samples(metrics)[key] == 2


# ----------------------------------------------------------------------------- 4. names and values the docs give
def test_the_reject_events_the_docs_name_are_the_gates_counters():
    """metrics.py's docstring named fair_edge_reject_total{event="late"}, an event no gate counts (it is
    late_verdicts): every reject event the module and docs/line-integration.md name is one the gate counts."""
    from fair_edge.line import metrics as metrics_module
    from fair_edge.line.scheduler import SCHEDULER_COUNTERS

    named = r'fair_edge_reject_total\{[^}]*event="(\w+)"'
    in_module = re.findall(named, metrics_module.__doc__)
    in_docs = re.findall(named, (ROOT / "docs" / "line-integration.md").read_text())
    assert in_module and in_docs
    assert set(in_module + in_docs) <= set(SCHEDULER_COUNTERS), set(in_module + in_docs) - set(SCHEDULER_COUNTERS)


def test_a_drift_psi_has_no_sample_until_it_has_a_value(tmp_path):
    """The drift PSI gauges read -1 before the watch had drift_min_parts parts: a number that is no PSI, which a
    dashboard drew and an avg() over cameras took in. Until there is a value the gauge has no sample; alarm and
    parts have theirs from the start; once there is a value it is exported."""
    from fair_edge.console.station_hook import StationConsole

    rng = np.random.default_rng(4)
    calibration = SimpleNamespace(normal_quantiles=tuple(np.percentile(rng.normal(0, 1, 2000), np.arange(101))),
                                  n_normal=2000)
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False, drift_min_parts=20))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path, threshold=calibration),
                             calibrations={"a": calibration, "b": calibration})
    metrics = Metrics(MetricsSettings(port=0))
    metrics.watch("drift", console.drift_metrics, gauges=("psi", "alarm", "parts"))
    metrics.watch_by("drift_camera", "camera", console.camera_drift_metrics)
    for i, score in enumerate(rng.normal(0, 1, 5)):
        console.observe(None, Verdict(i, 0.0, float(score), 9.0, False, 0.01, camera="a"), None)
    early = samples(metrics)
    assert ("fair_edge_drift_psi", ()) not in early
    assert not [key for key in early if key[0] == "fair_edge_drift_camera_psi"]
    assert early[("fair_edge_drift_parts", ())] == 5 and early[("fair_edge_drift_alarm", ())] == 0
    assert early[("fair_edge_drift_camera_parts", (("camera", "a"),))] == 5
    for i, score in enumerate(rng.normal(0, 1, 40)):
        console.observe(None, Verdict(10 + i, 0.0, float(score), 9.0, False, 0.01, camera="a"), None)
    later = samples(metrics)
    assert later[("fair_edge_drift_camera_psi", (("camera", "a"),))] >= 0
    assert ("fair_edge_drift_camera_psi", (("camera", "b"),)) not in later   # camera b has no value yet


def test_a_component_watched_twice_is_refused():
    """Two families of one name (a station gate and a lane gate both as "reject") make an exposition scrapers
    reject: a second watch of a name is a MetricsError naming it."""
    from fair_edge.errors import MetricsError

    metrics = Metrics(MetricsSettings(port=0))
    metrics.watch("reject", lambda: {"fired": 0})
    with pytest.raises(MetricsError, match="'reject'.*watched twice"):
        metrics.watch_counters_by("reject", "lane", lambda: {"left": {"fired": 0}})


# ----------------------------------------------------------------------------- 2. a handshake station's faults
class RecordingPublisher:
    """Stands in for ``MqttPublisher`` (the broker is not what is tested here): keeps each PREFIX/faults message."""

    def __init__(self) -> None:
        self.faults: list[tuple[bool, str]] = []

    def publish_fault(self, active: bool, reason: str, time_utc: str) -> None:
        self.faults.append((active, reason))


def test_a_handshake_stations_drift_fault_is_published_as_the_plc_sees_it(tmp_path):
    """Audit s6: a station with the PLC handshake and no reject sinks, console.drift_fault on: the drift alarm held
    Ready 0 / Error 1 at the PLC while MQTT PREFIX/faults said "cleared" and systemd's STATUS showed no fault
    (LineSide.fault_reason read the camera and the reject gate only). Now it publishes the FaultBoard's reason, then
    the handshake's latched ack timeout (Error 10) while the PLC sees it, and "cleared" once Error is 0."""
    pytest.importorskip("pymodbus")
    from line_servers import FakeClock, ScriptedPlc

    from fair_edge.line.handshake import HandshakeSettings
    from fair_edge.line.handshake.engine import Handshake
    from fair_edge.line.recorder import Recorder
    from fair_edge.station.faults import FaultBoard
    from fair_edge.station.line_side import LineSide

    plc, clock, mqtt = ScriptedPlc(), FakeClock(), RecordingPublisher()
    hs = Handshake(HandshakeSettings(url="modbus://127.0.0.1:1", poll_ms=5, ack_timeout_ms=50), plc, clock=clock)
    assert hs._connect()                       # no thread: the test runs each poll (_cycle) at a time it sets
    hs.begin()
    with Recorder(RecordSettings(dir=tmp_path, save_ng_images=False), run_id="run-hs") as recorder:
        line = LineSide(recorder, None, None, mqtt, [], handshake=hs)
        drift = FaultBoard(line).channel("drift")
        line.publish_fault("")                                          # the first tick: nothing wrong
        drift.fault(True, "drift: PSI 0.412 >= 0.25")                   # StationConsole.tick on a drift alarm
        hs._cycle(clock.advance(0.005))
        assert (plc.signals["ready"], plc.signals["error"]) == (0, 1)   # what the PLC sees ...
        line.publish_fault("")
        assert line.fault_reason() == "drift: PSI 0.412 >= 0.25"       # ... systemd's STATUS and MQTT say
        drift.fault(False)
        hs._cycle(clock.advance(0.005))
        line.publish_fault("")
        plc.signals.update(part_id=1001, trigger=1)                     # a part the PLC never acknowledges
        hs._cycle(clock.advance(0.005))
        ticket = hs.next_trigger(0.0)
        hs.bind(0, ticket)
        hs.on_verdict(Frame(0, 0.0, None, "line"), Verdict(0, 0.0, 0.1, 0.5, False, 0.0, "line"))
        hs._cycle(clock.advance(0.005))
        hs._cycle(clock.advance(0.051))                                 # no ack within 50 ms: Error 10
        assert plc.signals["error"] == 10 and plc.signals["ready"] == 1
        line.publish_fault("")
    assert mqtt.faults[0] == (False, "cleared")
    assert mqtt.faults[1] == (True, "drift: PSI 0.412 >= 0.25")
    assert mqtt.faults[2] == (False, "cleared")
    assert mqtt.faults[3][0] is True and mqtt.faults[3][1].startswith("handshake error 10: ack timeout")
    assert len(mqtt.faults) == 4

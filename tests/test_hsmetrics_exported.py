"""The PLC handshake's counters on /metrics and in `fair-edge run`'s live table (task hsmetrics). They were in
summary.json (``rejects.handshake``) only: /metrics exported no handshake series, so an alert on parts answered 3
(not inspected), on late camera frames or on the PLC link could not be written, and the live table showed triggers,
results, acks, ack timeouts, expired parts and the error code, not the answers, the late frames or the link.

Now a station's handshake is ``fair_edge_handshake_total{event}`` (every ``HANDSHAKE_COUNTERS`` key; a cell's adds
its trigger fanout's ``fanout_expired`` / ``fanout_overflow``) with the gauges ``fair_edge_handshake_connected``
(0/1), ``_error`` and ``_open_parts``. The line side is opened as a station opens it (``open_line_side``,
``open_cell_line``) over a scripted PLC: no thread, each poll run by the test on a fake clock, no model, no camera."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from line_servers import FakeClock, ScriptedPlc  # noqa: E402
from test_consoleui_live_parts import rendered, stand_in_inspector  # noqa: E402
from test_metrics_consumers import cell_config, samples  # noqa: E402

from fair_edge.errors import PlcError  # noqa: E402
from fair_edge.line.handshake import HandshakeSettings  # noqa: E402
from fair_edge.line.handshake.engine import HANDSHAKE_COUNTERS, Handshake  # noqa: E402
from fair_edge.line.settings import MetricsSettings, RecordSettings, RejectSettings  # noqa: E402
from fair_edge.records import Frame, Verdict  # noqa: E402
from fair_edge.station.config import ConsoleSettings, StationConfig  # noqa: E402
from fair_edge.station.views import GroupSettings, ViewSettings  # noqa: E402

POLL_S = 0.005
# timeouts no step of a test comes near on the fake clock: a part is answered and acked when the test says
SETTINGS = dict(url="modbus://127.0.0.1:1", poll_ms=POLL_S * 1000, result_timeout_ms=60_000, ack_timeout_ms=60_000)


def scripted_handshakes(monkeypatch, clock: FakeClock) -> dict[str, ScriptedPlc]:
    """Make the station's ``open_handshake`` return a ``Handshake`` over a ``ScriptedPlc`` on ``clock`` whose thread
    never starts (the test runs each poll: ``connect``, ``poll``). Returns {"plc": the scripted PLC} once opened."""
    opened: dict[str, ScriptedPlc] = {}

    def open_scripted(settings: HandshakeSettings) -> Handshake:
        opened["plc"] = ScriptedPlc()
        hs = Handshake(settings, opened["plc"], clock=clock)
        hs.start = lambda: hs   # entered as the station enters it, without its thread
        return hs

    monkeypatch.setattr("fair_edge.line.handshake.open_handshake", open_scripted)
    return opened


def connect(hs: Handshake, clock: FakeClock) -> None:
    """The link comes up, the station inspects, the first poll runs (Trigger 0)."""
    assert hs._connect()
    hs.begin()
    poll(hs, clock)


def poll(hs: Handshake, clock: FakeClock) -> None:
    hs._cycle(clock.advance(POLL_S))


def trigger(hs: Handshake, plc: ScriptedPlc, clock: FakeClock, part_id: int) -> None:
    """The PLC triggers ``part_id``; the next poll takes it."""
    plc.signals.update(part_id=part_id, trigger=1)
    poll(hs, clock)
    assert plc.signals["trigger"] == 0


def ack(hs: Handshake, plc: ScriptedPlc, clock: FakeClock) -> None:
    """The PLC acks the result that is up; the next poll takes the ack."""
    assert plc.signals.get("results_ready") == 1
    plc.signals["ack"] = 1
    poll(hs, clock)


def handshake_samples(scraped: dict) -> dict[str, float]:
    """The handshake's samples of a scrape: event -> value for ``fair_edge_handshake_total``, gauge key -> value
    for ``fair_edge_handshake_<key>``."""
    out = {}
    for (name, labels), value in scraped.items():
        if name == "fair_edge_handshake_total":
            out[dict(labels)["event"]] = value
        elif name.startswith("fair_edge_handshake_") and not name.endswith("_created"):
            out[name.removeprefix("fair_edge_handshake_")] = value
    return out


def station_config(tmp_path: Path, **handshake) -> StationConfig:
    """One camera, the handshake at ``SETTINGS`` and ``handshake`` (HandshakeSettings fields), metrics on."""
    return StationConfig(console=ConsoleSettings(enabled=False), output=tmp_path / "out",
                         record=RecordSettings(dir=tmp_path / "out", save_ng_images=False),
                         reject=RejectSettings(handshake=HandshakeSettings(**SETTINGS, **handshake)),
                         metrics=MetricsSettings(enabled=True, port=0)).checked()


def live_rows(rejects: dict) -> str:
    """``fair-edge run``'s live table, its summary's ``rejects`` as ``station_tick`` puts them, whitespace folded."""
    inspector = stand_in_inspector()
    inspector.summary.rejects = rejects
    return rendered(inspector)


def test_a_stations_handshake_counters_are_on_metrics_and_in_the_live_table_as_they_move(tmp_path, monkeypatch):
    """One camera: an OK part answered and acked, a part whose camera read failed (answered 3), a late frame, a
    reconnect that withdraws the result up and finds a trigger set during the outage (stale, answered 3), then a link
    failure. After each, the scrape holds exactly ``Handshake.stats()`` (the numbers summary.json gets) and the
    live table shows them."""
    from fair_edge.station.line_side import open_line_side

    clock = FakeClock()
    opened = scripted_handshakes(monkeypatch, clock)
    with contextlib.ExitStack() as stack:
        line = open_line_side(station_config(tmp_path), stack, "run-hs")
        hs, plc = line.handshake, opened["plc"]
        assert handshake_samples(samples(line.metrics)) == {**dict.fromkeys(HANDSHAKE_COUNTERS, 0), "connected": 0,
                                                            "error": 0, "open_parts": 0}
        connect(hs, clock)
        scrapes = []

        def scrape() -> dict[str, float]:
            scraped = handshake_samples(samples(line.metrics))
            assert scraped == {key: float(v) for key, v in hs.stats().items()}   # every key, exactly
            scrapes.append(scraped)
            return scraped

        assert scrape()["connected"] == 1                          # a bool gauge: 1 ...
        trigger(hs, plc, clock, 1001)
        ticket = hs.next_trigger(0.0)
        hs.bind(0, ticket)
        hs.on_verdict(Frame(0, clock(), None, "line"), Verdict(0, clock(), 0.1, 0.5, False, clock(), "line"))
        poll(hs, clock)
        moved = scrape()
        assert moved["results"] == moved["ok"] == 1 and moved["open_parts"] == 1   # up, not acked yet
        ack(hs, plc, clock)
        moved = scrape()
        assert moved["acked"] == 1 and moved["open_parts"] == 0
        trigger(hs, plc, clock, 1002)
        hs.answer_not_inspected(hs.next_trigger(0.0))              # the camera's read failed (TriggeredSource)
        hs.count_late_frame()                                      # a frame exposed after the next trigger
        poll(hs, clock)
        moved = scrape()
        assert (moved["triggers"], moved["results"], moved["not_inspected"], moved["late_frames"]) == (2, 2, 1, 1)
        rows = live_rows(line.reject_stats())
        assert "handshake: triggers / results / acked │ 2 / 2 / 1" in rows, rows
        assert "handshake: OK / NG / not inspected │ 1 / 0 / 1" in rows, rows
        assert "handshake: late frames / stale triggers / stale acks │ 1 / 0 / 0" in rows, rows
        link = "handshake: link (I/O errors / refused / reconnects / results withdrawn)"
        assert f"{link} │ up: 0 / 0 / 0 / 0" in rows, rows

        plc.signals.update(part_id=1003, trigger=1)                # set while the link was down
        assert hs._connect()                                       # the reconnect: 1002's result withdrawn
        poll(hs, clock)
        moved = scrape()
        assert (moved["reconnects"], moved["withdrawn"], moved["stale_triggers"], moved["not_inspected"]) == \
            (1, 1, 1, 2)
        hs._link_failed(PlcError("connection reset"))
        moved = scrape()
        assert moved["connected"] == 0 and moved["io_errors"] == 1  # ... and 0
        rows = live_rows(line.reject_stats())
        assert "handshake: OK / NG / not inspected │ 1 / 0 / 2" in rows, rows
        assert "handshake: late frames / stale triggers / stale acks │ 1 / 1 / 0" in rows, rows
        assert f"{link} │ down: 1 / 0 / 1 / 1" in rows, rows
    assert [s["triggers"] for s in scrapes] == [0, 1, 1, 2, 3, 3]   # the series moved with the counter



class Frames:
    """A camera that hands out ``frames`` in order (what ``TriggeredSource`` reads of its inner source)."""

    name = "line"

    def __init__(self, frames: list[Frame]) -> None:
        self._frames = iter(frames)

    def read(self) -> Frame:
        return next(self._frames)

    def close(self) -> None: ...


def test_overruns_withdrawn_results_and_stale_frames_move_in_the_live_table(tmp_path, monkeypatch):
    """The three handshake counters the live table left out (on /metrics and in summary.json already): a frame
    exposed before its part's trigger, skipped by the triggered camera (stale_frames); a trigger while max_parts=1
    part waits for its frame (overruns, error 12); a result up when the link is reopened (withdrawn). After each,
    the table shows the count summary.json gets (``Handshake.stats()``)."""
    from fair_edge.cameras.triggered import TriggeredSource
    from fair_edge.station.line_side import open_line_side

    clock = FakeClock()
    opened = scripted_handshakes(monkeypatch, clock)
    image = np.zeros((4, 4, 3), np.uint8)
    with contextlib.ExitStack() as stack:
        line = open_line_side(station_config(tmp_path, max_parts=1), stack, "run-hs-rows")
        hs, plc = line.handshake, opened["plc"]
        connect(hs, clock)

        def shown(label: str, value: str) -> None:
            rows = live_rows(line.reject_stats())
            assert f"handshake: {label} │ {value}" in rows, rows

        trigger(hs, plc, clock, 1001)
        camera = TriggeredSource(Frames([Frame(0, clock() - 1.0, image, "line"), Frame(1, clock(), image, "line")]), hs)
        frame = camera.read()                                      # the first frame predates the trigger: skipped
        assert frame.seq == 0 and hs.stats()["stale_frames"] == 1
        shown("stale frames (taken before the trigger, skipped)", "1")
        shown("ack timeouts / expired / overruns / error", "0 / 0 / 0 / 0")
        trigger(hs, plc, clock, 1002)                              # waits for its frame: max_parts reached
        trigger(hs, plc, clock, 1003)                              # answered 3 at once
        assert hs.stats()["overruns"] == 1
        shown("ack timeouts / expired / overruns / error", "0 / 0 / 1 / 12")
        hs.on_verdict(frame, Verdict(0, frame.t_capture, 0.1, 0.5, False, clock(), "line"))
        poll(hs, clock)
        assert plc.signals["results_ready"] == 1 and plc.signals["result_part_id"] == 1001
        shown("link (I/O errors / refused / reconnects / results withdrawn)", "up: 0 / 0 / 0 / 0")
        assert hs._connect()                                       # reopened: 1001's ack is unknown, withdrawn
        assert (hs.stats()["withdrawn"], hs.stats()["reconnects"]) == (1, 1)
        shown("link (I/O errors / refused / reconnects / results withdrawn)", "up: 0 / 0 / 1 / 1")
        shown("stale frames (taken before the trigger, skipped)", "1")


def test_every_handshake_counter_has_its_place_in_the_live_table():
    """Each ``HANDSHAKE_COUNTERS`` key at a value of its own: the table shows each value exactly once (none left
    out, as overruns, withdrawn and stale_frames were, none shown twice)."""
    from fair_edge.cli.run import handshake_rows

    stats = {key: 101 + i for i, key in enumerate(HANDSHAKE_COUNTERS)}
    text = " ".join(str(value) for _, value in handshake_rows({**stats, "connected": True, "error": 0}))
    assert sorted(int(n) for n in re.findall(r"\d+", text) if int(n) > 100) == sorted(stats.values()), text

def test_a_cells_handshake_counters_and_its_fanouts_are_on_metrics(tmp_path, monkeypatch):
    """Two cameras, group.match: handshake: the cell watches the handshake itself (open_line_side leaves it, or the
    name would be watched twice), with its trigger fanout's dropped tickets. A part both cameras inspect OK, one
    whose left frame was dropped from its queue (answered 3), then left not reading while three parts queue past
    max_parts=2 for it (one overflows)."""
    from fair_edge.station.cell_line import open_cell_line

    clock = FakeClock()
    opened = scripted_handshakes(monkeypatch, clock)
    cameras = (ViewSettings("top", "unused-top"), ViewSettings("left", "unused-left"))
    cfg = cell_config(tmp_path, cameras, GroupSettings(match="handshake", part_timeout_ms=30_000),
                      RejectSettings(handshake=HandshakeSettings(**SETTINGS, max_parts=2)))
    with contextlib.ExitStack() as stack:
        cell = open_cell_line(cfg, stack, "run-cell-hs")
        hs, plc, fan = cell.line.handshake, opened["plc"], cell.triggers
        connect(hs, clock)

        def view(camera: str, seq: int, ticket) -> None:
            frame = Frame(seq, clock(), np.zeros((4, 4, 3), np.uint8), camera=camera)
            fan.port(camera).bind(seq, ticket)
            cell.hooks(camera)["on_capture"](frame)
            for callback in cell.line.callbacks:   # as the inspector calls them
                callback(frame, Verdict(seq, frame.t_capture, 0.1, 1.0, False, clock(), camera=camera), None)

        trigger(hs, plc, clock, 2001)
        view("top", 0, fan.port("top").next_trigger(0.0))
        view("left", 0, fan.port("left").next_trigger(0.0))
        poll(hs, clock)
        ack(hs, plc, clock)
        trigger(hs, plc, clock, 2002)
        view("top", 1, fan.port("top").next_trigger(0.0))
        dropped = Frame(1, clock(), np.zeros((4, 4, 3), np.uint8), camera="left")
        fan.port("left").bind(1, fan.port("left").next_trigger(0.0))
        cell.hooks("left")["on_capture"](dropped)
        cell.hooks("left")["on_drop"](dropped)                      # left's capture queue dropped its frame
        poll(hs, clock)
        ack(hs, plc, clock)
        first = handshake_samples(samples(cell.line.metrics))
        for part_id in (2003, 2004, 2005):                          # left is not reading: its queue of 2 overflows
            trigger(hs, plc, clock, part_id)
            fan.port("top").next_trigger(0.0)
        later = handshake_samples(samples(cell.line.metrics))
        summary = cell.reject_stats()["handshake"]   # what summary.json's rejects.handshake gets
    fanout = summary.pop("fanout")
    assert later == {**{key: float(v) for key, v in summary.items()},
                     **{f"fanout_{key}": float(v) for key, v in fanout.items()}}
    assert set(later) == {*HANDSHAKE_COUNTERS, "fanout_expired", "fanout_overflow", "connected", "error", "open_parts"}
    assert (first["results"], first["ok"], first["not_inspected"], first["acked"]) == (2, 1, 1, 2)
    assert first["fanout_overflow"] == 0 and first["connected"] == 1 and first["open_parts"] == 0
    assert later["triggers"] == 5 and later["fanout_overflow"] == 1 and later["fanout_expired"] == 0

"""The console of a station that talks to the PLC by the handshake (``reject.handshake``) and has no reject or fault
output said "PLC: none configured" and showed no handshake figure: its feed read the reject gate only (``plc`` None
without one), and the station never handed it the handshake, so an operator at the browser would think the PLC was
not wired while it triggered and was answered.

Now the station hands the console the handshake's own ``stats`` (``Handshake.stats``: the numbers the live table,
summary.json and /metrics show; a cell's ``CellLine.handshake_stats``, with its fanout's), read when the page asks;
the live state carries them as ``handshake``, and the page's PLC pill and handshake card show them. Here: every
figure the page shows moves as the handshake's counters move, over a scripted PLC on a fake clock (no thread); and a
real one-camera station and a real cell of two, each answering a real Modbus PLC program, give their console the
handshake (not "none configured") with the counters their summary ends with."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from line_servers import FakeClock, ScriptedPlc
from test_console_units import api, one_camera_console

from fair_edge.errors import PlcDeviceError, PlcError
from fair_edge.line.handshake.engine import HANDSHAKE_COUNTERS, Handshake
from fair_edge.line.handshake.settings import HandshakeSettings
from fair_edge.records import Frame, Verdict

LIVE_PAGE = Path(__file__).resolve().parents[1] / "fair_edge" / "console" / "static" / "live.html"
FANOUT_SHOWN = {"fanout_expired", "fanout_overflow"}   # a cell's only (CellLine.handshake_stats): "–" with one camera
ANSWERS_AND_STALE_SHOWN = ("ok", "ng", "withdrawn", "stale_acks", "stale_frames")   # moved in a test of their own
POLL_S = 0.005
ACK_TIMEOUT_S, RESULT_TIMEOUT_S = 1.0, 5.0   # the fake clock passes them only when the test says


def shown_keys() -> list[str]:
    """The handshake figures the live page shows: its ``<b data-hs=KEY>`` (live.js fills each from ``KEY``)."""
    return re.findall(r'data-hs="(\w+)"', LIVE_PAGE.read_text())


class ScriptedHandshake:
    """A ``Handshake`` over a ``ScriptedPlc`` on a fake clock, its thread never started: each poll is the test's."""

    def __init__(self) -> None:
        self.clock, self.plc = FakeClock(), ScriptedPlc()
        settings = HandshakeSettings(url="modbus://127.0.0.1:1", poll_ms=POLL_S * 1000, max_parts=1,
                                     ack_timeout_ms=ACK_TIMEOUT_S * 1000, result_timeout_ms=RESULT_TIMEOUT_S * 1000)
        self.hs = Handshake(settings, self.plc, clock=self.clock)

    def poll(self, n: int = 1, after_s: float = POLL_S) -> None:
        """``n`` poll cycles, the first ``after_s`` after the last, as the thread runs them (``_poll``: a refusal or a
        link failure is handled as on the line)."""
        for i in range(n):
            self.hs._poll(self.clock.advance(after_s if i == 0 else POLL_S))

    def connect(self) -> None:
        """The link comes up, the station inspects, the first poll runs (Trigger 0)."""
        assert self.hs._connect()
        self.hs.begin()
        self.poll()

    def trigger(self, part_id: int) -> None:
        self.plc.signals.update(part_id=part_id, trigger=1)
        self.poll()

    def fail_next_read(self, error: PlcError) -> None:
        """The PLC's next read raises ``error`` (a device's refusal, or a link failure)."""
        read = self.plc.read_inputs

        def failing() -> dict[str, int]:
            self.plc.read_inputs = read
            raise error

        self.plc.read_inputs = failing


def test_every_handshake_figure_the_live_page_shows_moves_as_the_handshake_counts(tmp_path):
    """A one-camera console handed a handshake station's ``stats`` (no reject gate): after each step the live state's
    handshake is exactly ``Handshake.stats()``, ``plc`` stays None (the pill would say "none configured" with neither),
    and by the end every figure the page shows, and the link, has moved."""
    scripted = ScriptedHandshake()
    hs, plc = scripted.hs, scripted.plc
    console, _ = one_camera_console(tmp_path, live_fps=1e9)   # a snapshot per read
    client = api(console)
    assert client.get("/api/state").json()["handshake"] is None   # a station without the handshake
    console.feed.read_handshake_from(hs.stats)
    seen: dict[str, list] = {}

    def shown() -> dict:
        state = client.get("/api/state").json()
        assert state["plc"] is None and state["handshake"] == hs.stats(), (state["plc"], state["handshake"])
        for key, value in state["handshake"].items():
            seen.setdefault(key, []).append(value)
        return state["handshake"]

    assert shown()["connected"] is False
    scripted.connect()
    assert shown()["connected"] is True
    scripted.trigger(1001)                                          # OK, written, acked
    hs.bind(0, hs.next_trigger(0.0))
    hs.on_verdict(Frame(0, scripted.clock(), None), Verdict(0, scripted.clock(), 0.1, 0.5, False, scripted.clock()))
    scripted.poll()
    plc.signals["ack"] = 1
    scripted.poll()
    assert (shown()["results"], shown()["acked"]) == (1, 1)
    scripted.trigger(1002)                                          # no frame: answered 3; then never acked
    hs.answer_not_inspected(hs.next_trigger(0.0))
    hs.count_late_frame()
    scripted.poll(3)
    scripted.poll(after_s=2 * ACK_TIMEOUT_S)
    assert (shown()["not_inspected"], shown()["ack_timeouts"], shown()["error"]) == (1, 1, 10)
    scripted.trigger(1003)                                          # taken for its frame, never answered
    hs.next_trigger(0.0)
    scripted.poll(3, after_s=2 * RESULT_TIMEOUT_S)
    assert (shown()["expired"], shown()["error"]) == (1, 11)
    scripted.trigger(1004)                                          # waits for its frame: max_parts 1 reached
    scripted.trigger(1005)
    assert (shown()["overruns"], shown()["error"]) == (1, 12)
    scripted.fail_next_read(PlcDeviceError("exception 0x06: device busy"))
    scripted.poll()
    assert (shown()["device_errors"], shown()["connected"]) == (1, True)
    plc.signals.update(part_id=1006, trigger=1)                     # set while the link was being reopened
    assert hs._connect()
    scripted.poll()
    assert (shown()["reconnects"], shown()["stale_triggers"], shown()["late_frames"]) == (1, 1, 1)
    scripted.fail_next_read(PlcError("connection reset"))
    scripted.poll()
    assert (shown()["io_errors"], shown()["connected"]) == (1, False)

    keys = shown_keys()
    assert {"triggers", "results", "not_inspected", "ack_timeouts", "overruns", "io_errors"} <= set(keys), keys
    one_camera = set(keys) - FANOUT_SHOWN                           # a cell's fanout counts: "–" here, moved below
    assert FANOUT_SHOWN <= set(keys) and one_camera <= set(hs.stats()), one_camera - set(hs.stats())
    still = [key for key in [*one_camera - set(ANSWERS_AND_STALE_SHOWN), "connected"] if len(set(seen[key])) < 2]
    assert not still, f"shown but never moved: {still}"


def test_every_handshake_counter_the_live_table_shows_is_on_the_card():
    """The card left out the answers OK / NG, withdrawn results, stale acks and stale frames, which the live table
    (``handshake_rows``) and /metrics show: every ``HANDSHAKE_COUNTERS`` key has its ``<b data-hs>``, once."""
    keys = shown_keys()
    assert sorted(key for key in keys if key in HANDSHAKE_COUNTERS) == sorted(HANDSHAKE_COUNTERS), \
        sorted(set(HANDSHAKE_COUNTERS) - set(keys))


def test_the_answers_withdrawn_results_stale_acks_and_frames_on_the_card_move(tmp_path):
    """The five figures the card left out, read from the live state by live.html's data-hs keys as live.js does,
    move with the handshake over a scripted PLC: a frame exposed before its part's trigger is skipped by the
    triggered camera (stale_frames), that part answered OK and acked (ok), the next answered NG and left up when the
    link is reopened (ng, withdrawn), then an ack the PLC sets with no result up (stale_acks)."""
    from test_hsmetrics_exported import Frames

    from fair_edge.cameras.triggered import TriggeredSource

    scripted = ScriptedHandshake()
    hs, plc, clock = scripted.hs, scripted.plc, scripted.clock
    console, _ = one_camera_console(tmp_path, live_fps=1e9)   # a snapshot per read
    client = api(console)
    console.feed.read_handshake_from(hs.stats)

    def shown() -> tuple:
        state = client.get("/api/state").json()["handshake"]
        assert set(ANSWERS_AND_STALE_SHOWN) <= set(shown_keys()) and state == hs.stats(), state
        return tuple(state[key] for key in ANSWERS_AND_STALE_SHOWN)   # ok, ng, withdrawn, stale_acks, stale_frames

    scripted.connect()
    assert shown() == (0, 0, 0, 0, 0)
    scripted.trigger(1001)
    camera = TriggeredSource(Frames([Frame(0, clock() - 1.0, None, "line"), Frame(1, clock(), None, "line")]), hs)
    frame = camera.read()                                           # the first frame predates the trigger: skipped
    assert shown() == (0, 0, 0, 0, 1)
    hs.on_verdict(frame, Verdict(frame.seq, frame.t_capture, 0.1, 0.5, False, clock(), "line"))
    scripted.poll()
    plc.signals["ack"] = 1
    scripted.poll()
    assert shown() == (1, 0, 0, 0, 1) and hs.stats()["acked"] == 1
    scripted.trigger(1002)                                          # NG, written, not acked before the reconnect
    hs.bind(1, hs.next_trigger(0.0))
    hs.on_verdict(Frame(1, clock(), None), Verdict(1, clock(), 2.0, 1.0, True, clock()))
    scripted.poll(3)
    assert (plc.signals["results_ready"], plc.signals["result_part_id"]) == (1, 1002)
    assert shown() == (1, 1, 0, 0, 1)
    assert hs._connect()                                            # reopened: 1002's ack is unknown, withdrawn
    assert shown() == (1, 1, 1, 0, 1)
    plc.signals["ack"] = 1                                          # the PLC acks the withdrawn result, late
    scripted.poll()
    assert shown() == (1, 1, 1, 1, 1) and plc.signals["ack"] == 0


def test_a_cells_fanout_figures_on_the_card_move_as_its_cameras_miss_triggers(tmp_path):
    """The card left out a cell's fanout counts (``CellLine.handshake_stats``: fanout_expired / fanout_overflow, the
    live table's "handshake: camera triggers expired / overflow"). Now the page shows them: camera b, not reading,
    has part 1 pushed out of its queue of one (overflow), then part 3 past its deadline when it asks (expired)."""
    from test_cameras_triggered import FakeHandshake

    from fair_edge.cameras.triggered import TriggerFanout
    from fair_edge.station.cell_line import CellLine

    now = [0.0]
    plc = FakeHandshake(max_parts=1)
    fanout = TriggerFanout(plc, ["a", "b"], clock=lambda: now[0])
    counts = {"triggers": 0, "connected": True}
    cell = CellLine(SimpleNamespace(handshake=SimpleNamespace(stats=lambda: dict(counts))), triggers=fanout)
    console, _ = one_camera_console(tmp_path, live_fps=1e9)
    client = api(console)
    console.feed.read_handshake_from(cell.handshake_stats)

    def shown() -> tuple:
        state = client.get("/api/state").json()["handshake"]
        assert FANOUT_SHOWN <= set(shown_keys()) and state == cell.handshake_stats(), state
        return tuple(state[key] for key in ("fanout_expired", "fanout_overflow"))

    assert shown() == (0, 0)
    for part in (1, 2):                                    # a takes both; b's queue of one holds 2, part 1 dropped
        plc.trigger(part, t_trigger=0.0, deadline=10.0)
        fanout.next_trigger("a", 0.0)
    assert shown() == (0, 1)
    assert fanout.next_trigger("b", 0.0).part_id == 2
    plc.trigger(3, t_trigger=0.0, deadline=10.0)
    fanout.next_trigger("a", 0.0)
    now[0] = 11.0                                          # part 3 has left when b asks
    fanout.next_trigger("b", 0.0)
    assert shown() == (1, 1)


def run_handshake_station(cfg, parts: int):
    """Run ``cfg`` (its handshake's url set here) against a Modbus PLC program that triggers ``parts`` parts; once it
    acknowledged them all, the console's live state then. Returns (that handshake state, the run's summary)."""
    from console_station import RunningStation

    from fair_edge.line.handshake.sim_handshake_plc import ModbusHandshakePlc
    from fair_edge.line.settings import RejectSettings

    plc = ModbusHandshakePlc().start(rate_hz=5, parts=parts)
    try:
        cfg = dataclasses.replace(cfg, reject=RejectSettings(handshake=HandshakeSettings(url=plc.url))).checked()
        with RunningStation(cfg) as st:
            def acked() -> dict | None:
                state = httpx.get(st.url + "api/state", timeout=30).json()
                assert state["plc"] is None, state["plc"]   # no reject gate: the handshake is the PLC
                assert state["handshake"] is not None, "no handshake on the console: the pill says none configured"
                return state if state["handshake"]["acked"] == parts else None

            state = st.wait_for(acked, 90, "every part acknowledged, on the console")
    finally:
        plc.close()
    return state["handshake"], st.summary


@pytest.mark.parametrize("cameras", [1, 2], ids=["one camera", "cell"])
def test_a_running_handshake_station_gives_its_console_the_handshake(cameras, station_bundles, conveyor_dir,
                                                                     tmp_path):
    """A station with the handshake and no reject or fault output, one camera or a cell of two matched by the PLC's
    part id: its console's live state has the handshake (the pill is not "none configured"), link up, with the
    counts the run summary ends with (``rejects.handshake``: the same ``Handshake.stats``); a cell's with its
    fanout's."""
    from console_station import station_config

    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.station.views import GroupSettings, ViewSettings

    cfg = station_config(station_bundles[0].root, conveyor_dir, tmp_path / "out", console=ConsoleSettings(port=0))
    if cameras == 2:
        cfg = dataclasses.replace(cfg, group=GroupSettings(match="handshake"),
                                  cameras=tuple(ViewSettings(c, str(conveyor_dir), loop=True) for c in ("top", "left")))
    parts = 4
    shown, summary = run_handshake_station(cfg, parts)
    fanout = {"fanout_expired", "fanout_overflow"} if cameras == 2 else set()
    assert set(shown) == {*HANDSHAKE_COUNTERS, "connected", "error", "open_parts", *fanout}, set(shown)
    assert shown["connected"] is True and shown["error"] == 0
    ended = summary.rejects["handshake"]
    assert {k: shown[k] for k in ("triggers", "results", "acked", "ok", "ng", "not_inspected")} == \
        {k: ended[k] for k in ("triggers", "results", "acked", "ok", "ng", "not_inspected")} and ended["acked"] == parts

"""When a cell of several cameras decides a part, which view its row names, and the part of a dropped view
(fair_edge.station.parts, fair_edge.station.cell). The assembler runs on a fake clock: every time bound is the fake
clock's, none hopes the machine is idle."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from fair_edge.line.scheduler import DISPATCH_LEAD_S
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.records import Frame, Verdict
from fair_edge.station.cell_line import CellLine
from fair_edge.station.cell_timing import part_timeout_s
from fair_edge.station.config import StationConfig
from fair_edge.station.part_rows import NOT_AWAITED
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings, ViewSettings

CAMERAS = ("top", "left", "right")
LOOP_POLL_S = 0.05   # an idle inspection loop sweeps the parts at least this often (Inspector.run's frame wait)


def view(camera: str, seq: int, score: float, ng: bool, threshold: float = 0.5, error: str = "") -> Verdict:
    return Verdict(seq, 0.0, score, threshold, ng, 0.0, error=error, camera=camera)


class Gate:
    """The reject gate as the assembler's listener: each part's verdict (or None) and row, with the fake clock's
    time it came."""

    def __init__(self, now: list[float]) -> None:
        self.now, self.parts = now, []

    def __call__(self, verdict: Verdict | None, row: dict) -> None:
        self.parts.append((self.now[0], verdict, row))


def gated_cell(delay_ms: float) -> StationConfig:
    """Three cameras on a time-based gate, group.part_timeout_ms unset (the default)."""
    return StationConfig(cameras=tuple(ViewSettings(c, c) for c in CAMERAS),
                         reject=RejectSettings(sinks=("log://",), delay_ms=delay_ms))


# ----------------------------------------------------------------------------- item 1: when a part is decided
def test_a_part_ng_by_its_views_in_hand_is_decided_at_once_not_when_its_missing_view_times_out():
    """``right`` is dead (no frame), ``left`` sees a defect: the part is NG whatever right would say, so its NG
    verdict goes to the gate when left's verdict comes, long before the gate's cut-off. Views that come after the
    decision still join the part (no part of their own, none counted late) and decide nothing again."""
    now = [10.0]
    gate = Gate(now)
    cfg = gated_cell(800)
    asm = PartAssembler(list(CAMERAS), GroupSettings(match="window", window_ms=60), part_timeout_s(cfg),
                        on_part=gate, clock=lambda: now[0])
    assert asm.on_capture("top", Frame(0, 10.0, np.zeros(1))) == 0
    assert asm.on_capture("left", Frame(0, 10.01, np.zeros(1))) == 0
    now[0] = 10.05
    asm.on_verdict(None, view("left", 0, 0.9, True))
    assert len(gate.parts) == 1                                    # decided now, not at the timeout
    t, verdict, row = gate.parts[0]
    assert t < 10.0 + cfg.reject.delay_ms / 1000 - DISPATCH_LEAD_S
    assert verdict.ng and (verdict.seq, verdict.camera, verdict.score) == (0, "left", 0.9)
    assert row["ng"] and row["inspected"] and row["ng_views"] == ["left"] and row["missing"] == []
    assert row["views"]["top"] == {"missing": NOT_AWAITED, "seq": 0} and row["views"]["right"] == {"missing": NOT_AWAITED}

    assert asm.on_capture("right", Frame(0, 10.03, np.zeros(1))) == 0   # a late frame still joins its part
    asm.on_verdict(None, view("top", 0, 0.1, False))
    asm.on_verdict(None, view("right", 0, 0.2, False))             # the last view: the part closes, no 2nd verdict
    now[0] = 20.0
    asm.sweep()
    asm.close_all()
    assert len(gate.parts) == 1
    assert asm.stats == {"parts": 1, "ng": 1, "ok": 0, "not_inspected": 0, "late_views": 0}


def test_a_part_decided_ng_early_closes_silently_at_its_timeout():
    """count>=2 of three: two NG views decide the part before the third; the part then times out with the third
    view never taken, and says nothing more (it was decided)."""
    now = [0.0]
    gate = Gate(now)
    asm = PartAssembler(list(CAMERAS), GroupSettings(match="sequence", rule="count>=2"), 0.5, on_part=gate,
                        clock=lambda: now[0])
    for camera in CAMERAS:
        asm.on_capture(camera, Frame(0, 0.0, np.zeros(1)))
    asm.on_verdict(None, view("top", 0, 0.9, True))
    assert gate.parts == []                                        # one NG view of two needed: wait for the others
    asm.on_verdict(None, view("left", 0, 0.7, True))
    (_, verdict, row), = gate.parts
    assert verdict.ng and verdict.camera == "top" and row["views"]["right"] == {"missing": NOT_AWAITED, "seq": 0}
    assert row["missing"] == [] and "reason" not in row                # right was not needed, not missing
    now[0] = 1.0
    asm.sweep()
    assert len(gate.parts) == 1 and asm.stats["not_inspected"] == 0


class _PlcLink:
    name = "scripted plc"

    def write(self, values) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_handshake_part_ng_by_one_view_is_answered_at_once_and_a_later_frame_lets_go_of_its_ticket():
    """match: handshake, PLC part 7: top's view is NG before left's frame is even taken. The PLC gets NG for part 7
    at once; left's frame, taken later, joins part 7 (no part of its own) and its ticket is forgotten (it is not
    held until the run ends)."""
    import time

    from fair_edge.cameras.triggered import TriggerFanout
    from fair_edge.line.handshake import Handshake
    from fair_edge.line.handshake.settings import RESULT_NG, HandshakeSettings

    hs = Handshake(HandshakeSettings(url="modbus://127.0.0.1:1"), _PlcLink())
    hs._connected = True
    hs.begin()
    fan = TriggerFanout(hs, ["top", "left"])
    rows: list = []
    line = SimpleNamespace(scheduler=None, part_gate=None, mqtt=None, handshake=hs,
                           recorder=SimpleNamespace(record_row=rows.append, log_row=lambda r: r))
    cell = CellLine(line, triggers=fan)
    cell.assembler = PartAssembler(["top", "left"], GroupSettings(match="handshake"), 0.5, on_part=cell.on_part,
                                   plc_part=lambda cam, fr: fan.part_id(cam, fr.seq), clock=lambda: 0.0)
    hs._take_trigger(7, time.monotonic())
    tickets = {c: fan.port(c).next_trigger(0.1) for c in ("top", "left")}
    fan.port("top").bind(0, tickets["top"])
    cell.hooks("top")["on_capture"](Frame(0, 0.0, np.zeros(1)))
    cell.assembler.on_verdict(None, view("top", 0, 0.9, True))
    (row,) = rows
    assert row["plc_part_id"] == 7 and row["ng"] and tickets["top"].result == RESULT_NG
    fan.port("left").bind(0, tickets["left"])
    cell.hooks("left")["on_capture"](Frame(0, 0.01, np.zeros(1)))
    assert cell.assembler.part_of("left", 0) == 0 and fan.ticket("left", 0) is None
    cell.assembler.on_verdict(None, view("left", 0, 0.1, False))
    assert len(rows) == 1 and cell.assembler.stats["late_views"] == 0


@pytest.mark.parametrize("delay_ms, view_ms", [(150, 100), (420, 350)])
def test_the_default_part_timeout_waits_for_a_view_that_comes_before_the_gates_cut_off(delay_ms, view_ms):
    """group.part_timeout_ms unset: a part waits for its views until its due time. A view inspected before the
    gate's cut-off (due time - DISPATCH_LEAD_S) completes the part in time, with its verdict; a part closed earlier
    (a margin before the due time, as one version did) turned such good parts into fail-safe rejects, and gained
    nothing: a view still missing at the cut-off leaves the gate without a verdict, which it decides fail-safe."""
    cfg = gated_cell(delay_ms)
    assert part_timeout_s(cfg) == pytest.approx(delay_ms / 1000)
    now = [100.0]
    gate = Gate(now)
    asm = PartAssembler(list(CAMERAS), GroupSettings(match="window", window_ms=60), part_timeout_s(cfg),
                        on_part=gate, clock=lambda: now[0])
    for camera in CAMERAS:
        asm.on_capture(camera, Frame(0, 100.0, np.zeros(1)))
    asm.on_verdict(None, view("top", 0, 0.1, False))
    asm.on_verdict(None, view("left", 0, 0.2, False))
    sweeps = [100.0 + i * LOOP_POLL_S for i in range(int(view_ms / 1000 / LOOP_POLL_S))]
    for t in sweeps + [100.0 + (view_ms - 5) / 1000]:   # the loop sweeps while the last view is inspected
        now[0] = t
        asm.sweep()
    now[0] = 100.0 + view_ms / 1000
    asm.on_verdict(None, view("right", 0, 0.3, False))
    (t_decided, verdict, row), = gate.parts
    assert t_decided < 100.0 + delay_ms / 1000 - DISPATCH_LEAD_S
    assert verdict is not None and not verdict.ng and row["inspected"] and row["missing"] == []


# ----------------------------------------------------------------------------- item 4: the view a part row names
def _two_view_part(left: Verdict, right: Verdict) -> tuple[Verdict | None, dict]:
    parts = []
    asm = PartAssembler(["left", "right"], GroupSettings(match="sequence"), 1.0, clock=lambda: 0.0,
                        on_part=lambda v, row: parts.append((v, row)))
    for camera in ("left", "right"):
        asm.on_capture(camera, Frame(0, 0.0, np.zeros(1)))
    asm.on_verdict(None, left)
    asm.on_verdict(None, right)
    (verdict, row), = parts
    return verdict, row


def test_an_ng_parts_row_names_its_ng_view_not_an_ok_view_that_scored_higher():
    """Region rules decide: left scores 1.0 on a one-pixel speck (OK by the rules), right 0.6 on a large stain (NG).
    The part is NG by right: its row, like its verdict for the gate and the PLC, names right and right's score."""
    verdict, row = _two_view_part(view("left", 0, 1.0, False), view("right", 0, 0.6, True))
    assert (verdict.camera, verdict.score) == ("right", 0.6)
    assert (row["camera"], row["score"], row["ng_views"]) == ("right", 0.6, ["right"])


def test_an_ng_part_with_a_failed_view_names_its_ng_view_and_one_ng_only_by_a_failed_view_names_none():
    """A view whose inspection failed has no score: it never is the view the row names. An NG part with an NG view
    names that; a part NG only because a view failed (fail-safe) names no view (``missing`` says which)."""
    failed = view("left", 0, None, True, error="inference failed: CUDA error")
    verdict, row = _two_view_part(failed, view("right", 0, 0.9, True))
    assert verdict.camera == "right" and (row["camera"], row["score"]) == ("right", 0.9)
    verdict, row = _two_view_part(failed, view("right", 0, 0.2, False))
    assert verdict is None and row["ng"] and not row["inspected"] and row["missing"] == ["left"]
    assert (row["camera"], row["score"]) == (None, None)
    _, row = _two_view_part(view("left", 0, 0.3, False), view("right", 0, 0.4, False))
    assert (row["camera"], row["score"]) == ("right", 0.4)                 # an OK part: its worst view


class _PartCounters:
    def cameras(self) -> dict:
        return {c: {"frames_in": 1, "inspected": 1, "ng": 0, "dropped": 0, "lost": 0, "state": "running",
                    "end_reason": ""} for c in ("left", "right")}

    def parts(self) -> dict:
        return {"parts": 1, "ng": 1, "ok": 0, "not_inspected": 0, "late_views": 0}


def test_the_console_marks_the_ng_view_that_decided_the_part(tmp_path):
    """The gallery and the live page's part head name right (the NG view) and mark its view decided, not left's
    higher-scoring OK view."""
    from fair_edge.console.actions import StationActions
    from fair_edge.console.feed import StationFeed
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.console.views import gallery, live_state

    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    feed.attach_cell(_PartCounters(), {"left": tmp_path / "bundle", "right": tmp_path / "bundle"})
    actions = StationActions(feed, None)
    verdicts = {"left": view("left", 0, 1.0, False), "right": view("right", 0, 0.6, True)}
    for camera, v in verdicts.items():
        feed.observe(Frame(0, 0.0, np.zeros((8, 8, 3), np.uint8), camera=camera), v, None)
    _, row = _two_view_part(verdicts["left"], verdicts["right"])
    feed.observe_part(row)
    actions.observe_part(row)
    part, = gallery(feed, actions)["parts"]
    assert (part["camera"], part["score"]) == ("right", 0.6)
    assert {v["camera"]: v["decided"] for v in part["views"]} == {"left": False, "right": True}
    tiles = live_state(feed, actions)["tiles"]
    assert {t["camera"]: t["decided"] for t in tiles} == {"left": False, "right": True}


# ----------------------------------------------------------------------------- item 7: dropped views' part
def test_a_dropped_views_row_names_its_part_like_an_inspected_ones(tmp_path):
    """A frame the capture queue dropped: its verdict-log row and its MQTT row carry the part id it belongs to."""
    from fair_edge.line.recorder import Recorder
    from fair_edge.station.line_side import LineSide

    published = []
    mqtt = SimpleNamespace(publish_row=published.append, publish_part=lambda row: None)
    with Recorder(RecordSettings(dir=tmp_path), run_id="r") as recorder:
        cell = CellLine(LineSide(recorder, None, None, mqtt, []))
        cell.assembler = PartAssembler(["top", "left"], GroupSettings(match="sequence"), 1.0, on_part=cell.on_part,
                                       clock=lambda: 0.0)
        top, left = cell.hooks("top"), cell.hooks("left")
        for seq in (0, 1):
            top["on_capture"](Frame(seq, 0.1 * seq, np.zeros(1)))
            left["on_capture"](Frame(seq, 0.1 * seq, np.zeros(1)))
        left["on_drop"](Frame(1, 0.1, np.zeros(1)))
        assert recorder.flush(10.0)
    rows = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    dropped, = [r for r in rows if r.get("inspected") is False and r.get("kind") != "part"]
    assert (dropped["camera"], dropped["seq"], dropped.get("part")) == ("left", 1, 1)
    mqtt_dropped, = [r for r in published if r.get("inspected") is False]
    assert mqtt_dropped.get("part") == 1

"""``match: sequence`` when a camera takes one trigger's frame twice (a trigger that bounced, a frame delivered twice):
the second frame is a duplicate, skipped and counted, and no camera falls out of step; frames that every camera took
at once stay a part (parts closer than ``window_ms``: nothing may go by unannounced to the gate). The assembler runs
in-process on a fake clock, driven as a cell's capture threads and inspector drive it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fair_edge.records import Frame, Verdict
from fair_edge.station.cell_line import CellLine
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings

PERIOD_S = 0.1    # one trigger every 100 ms
WINDOW_MS = 30.0
CAMERAS = ("a", "b")


class _Line:
    """Cameras a and b on one trigger clock (fake), each frame's verdict given right after its capture; every view OK
    unless ``ng`` names it. Records the part rows, the parts noted at the gate (``on_open``) and which trigger each
    (camera, seq) was taken at."""

    def __init__(self, *, match: str = "sequence", timeout_s: float = 0.5, ng: frozenset = frozenset(),
                 cameras: tuple[str, ...] = CAMERAS) -> None:
        self.now = 0.0
        self.rows: dict[int, dict] = {}
        self.opened: list[tuple[int, float]] = []
        self.cameras = cameras
        self.asm = PartAssembler(list(cameras), GroupSettings(match=match, window_ms=WINDOW_MS), timeout_s,
                                 on_part=lambda v, row: self.rows.__setitem__(row["part"], row),
                                 on_open=lambda part, t, count: self.opened.append((part, t)), clock=lambda: self.now)
        self.seqs = dict.fromkeys(cameras, 0)
        self.trigger_of: dict[tuple[str, int], int] = {}
        self.ng = ng

    def take(self, camera: str, trigger: int, t_capture: float) -> int | None:
        """``camera`` hands over a frame of ``trigger`` captured at ``t_capture`` (s), then its verdict; returns the
        part ``on_capture`` filed it under."""
        frame = Frame(self.seqs[camera], t_capture, np.zeros(1), camera=camera)
        self.seqs[camera] += 1
        self.trigger_of[(camera, frame.seq)] = trigger
        part = self.asm.on_capture(camera, frame)
        ng = (camera, trigger) in self.ng
        self.asm.on_verdict(frame, Verdict(frame.seq, t_capture, 2.0 if ng else 0.1, 1.0, ng, self.now, camera=camera))
        return part

    def run(self, triggers: int, *, order=None, twice: dict | None = None, at: dict | None = None) -> None:
        """One frame per camera per trigger, in ``order``. twice: (camera, trigger) -> s after its frame that the
        camera hands over that trigger's frame again. at: trigger -> its time (s; default trigger x PERIOD_S)."""
        for trigger in range(triggers):
            self.now = (at or {}).get(trigger, trigger * PERIOD_S)
            self.asm.sweep()
            for camera in order or self.cameras:
                self.take(camera, trigger, self.now)
                again_s = (twice or {}).get((camera, trigger))
                if again_s is not None:
                    self.take(camera, trigger, self.now + again_s)
        self.now += 10.0
        self.asm.sweep()

    def triggers(self, row: dict) -> set[int]:
        """The triggers a part row's views were taken at."""
        return {self.trigger_of[(camera, view["seq"])] for camera, view in row["views"].items() if "seq" in view}


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fair_edge.station.parts"]


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_a_frame_taken_twice_is_skipped_and_counted_and_no_camera_falls_out_of_step(order, caplog):
    """The audit's cell: a and b on one trigger clock; b hands over trigger 20's frame twice, 0.2 ms apart, after 20
    parts in step; trigger 21 carries a defect b sees. b's second frame is a duplicate: in no part, never noted at
    the gate, counted once and logged naming b; b's next frame counts as the next part, so every part pairs one
    trigger's views, trigger 21's part is NG and inspected, and no camera is out of step. Before, b's duplicate
    opened a part of its own (NG, not inspected: 'missing view: a', noted at the gate 0.2 ms after the good part's),
    and a's next frame, which named that part, took a out of step ('camera a: out of step ...') though b was off."""
    caplog.set_level(logging.WARNING, logger="fair_edge.station.parts")
    line = _Line(ng=frozenset({("b", 21)}))
    line.run(40, order=order, twice={("b", 20): 0.0002})
    rows = line.rows
    assert len(rows) == 40 and len(line.opened) == 40, [row.get("reason") for row in rows.values()]
    assert all(len(line.triggers(row)) == 1 and not row["missing"] for row in rows.values())
    assert [sorted(line.triggers(row)) for row in rows.values() if row["ng"]] == [[21]]
    assert all(row["inspected"] for row in rows.values())
    assert line.asm.stats == {"parts": 40, "ng": 1, "ok": 39, "not_inspected": 0, "late_views": 0, "resyncs": 0,
                              "duplicate_views": 1}
    assert line.asm.part_of("b", 21) is None   # the duplicate's view row names no part
    messages = _messages(caplog)
    assert not [m for m in messages if "out of step" in m], messages
    (duplicate,) = messages
    assert duplicate.startswith("camera b frame 21: captured +0.2 ms from its frame 20 (part 20), within "
                                "group.window_ms: one trigger's frame taken twice"), duplicate
    assert CellLine(line=None, assembler=line.asm).part_stats()["duplicate_views"] == 1   # summary, /metrics


def test_a_camera_that_bounces_on_every_trigger_is_logged_once_per_10_s_and_every_duplicate_counted(caplog):
    """b hands over every frame twice from trigger 10 to 249 (24 s): every part still pairs one trigger's views,
    all 240 duplicates are counted, and the log names b's first at once, then gathers the rest in one line per 10 s
    (their count) instead of a line per frame."""
    caplog.set_level(logging.WARNING, logger="fair_edge.station.parts")
    line = _Line()
    line.run(250, twice={("b", trigger): 0.001 for trigger in range(10, 250)})
    assert len(line.rows) == 250 and all(len(line.triggers(row)) == 1 and not row["missing"]
                                         for row in line.rows.values())
    assert line.asm.stats["duplicate_views"] == 240 and line.asm.stats["resyncs"] == 0
    line.asm.close_all()
    messages = _messages(caplog)
    assert messages[0].startswith("camera b frame 11: captured +1.0 ms from its frame 10 (part 10)"), messages
    gathered = [m for m in messages[1:] if m.startswith("camera b: ")]
    assert len(messages) == 1 + len(gathered) and 2 <= len(gathered) <= 3, messages
    assert sum(int(m.split(": ")[1].split(" more")[0]) for m in gathered) == 239, gathered


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
@pytest.mark.parametrize("apart_s", [0.020, 0.0002], ids=["parts 20 ms apart", "every camera bounced"])
def test_frames_every_camera_took_at_once_stay_a_part(order, apart_s, caplog):
    """Trigger 21 comes ``apart_s`` after trigger 20 (parts closer than window_ms: a window set wider than half the
    shortest time between parts; or one trigger that bounced on every camera). Each camera's frame of it repeats its
    last view by time, but the other camera took one beside it: it is a part, not a duplicate (the first camera's
    frame, skipped until the second came, joins it with its verdict), so no trigger goes by unannounced to the gate,
    every part pairs one trigger's views and none misses a view. The first camera's frame is logged as a duplicate when
    it comes, then as not one, naming the window."""
    caplog.set_level(logging.WARNING, logger="fair_edge.station.parts")
    at = {t: t * PERIOD_S if t <= 20 else (t - 1) * PERIOD_S + apart_s for t in range(41)}
    line = _Line(ng=frozenset({(order[0], 21)}))
    line.run(41, order=order, at=at)
    assert len(line.rows) == 41 and len(line.opened) == 41
    assert all(len(line.triggers(row)) == 1 and not row["missing"] for row in line.rows.values())
    assert [sorted(line.triggers(row)) for row in line.rows.values() if row["ng"]] == [[21]]
    assert line.asm.stats["duplicate_views"] == 0 and line.asm.stats["resyncs"] == 0
    skipped, message = _messages(caplog)   # skipped when it came, a part's view when the other camera's came
    assert skipped.startswith(f"camera {order[0]} frame 21: captured +{apart_s * 1000:.1f} ms from its frame 20"), \
        skipped
    assert message.startswith(f"camera {order[0]} frame 21: not a duplicate: the other cameras took a frame beside "
                              "it too, so it is part 21's view"), message
    assert "group.window_ms (30 ms)" in message


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "b", "a")])
def test_with_three_cameras_parts_closer_than_the_window_keep_every_view(order):
    """Three cameras, trigger 21 20 ms after trigger 20: the first camera's frame is skipped until the second's comes
    beside it (it joins their part); the third camera's frame, which repeats its last view by time too, is that
    part's view as well, as the other cameras moved on to the next part: no view missing, none skipped."""
    at = {t: t * PERIOD_S if t <= 20 else (t - 1) * PERIOD_S + 0.020 for t in range(41)}
    line = _Line(cameras=("a", "b", "c"))
    line.run(41, order=order, at=at)
    assert len(line.rows) == 41 and all(len(line.triggers(row)) == 1 and not row["missing"]
                                        for row in line.rows.values())
    assert line.asm.stats["duplicate_views"] == 0 and line.asm.stats["resyncs"] == 0


def test_an_extra_frame_outside_the_window_names_the_camera_whose_view_opened_the_part():
    """b takes an extra frame 50 ms after trigger 20 (half the time between parts: no duplicate by the window): its
    count runs one ahead, and a's next frame names the part b's extra frame opened. One frame cannot tell which
    camera is off; the out-of-step line now names b's view in that part and that b may have taken an extra frame,
    where before it named a alone ('a camera took no frame of one, or an extra one')."""
    line = _Line()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fair_edge.station.parts").addHandler(handler)
    try:
        line.run(40, twice={("b", 20): 0.05})
    finally:
        logging.getLogger("fair_edge.station.parts").removeHandler(handler)
    (out,) = [r.getMessage() for r in records if "out of step" in r.getMessage()]
    assert out.startswith("camera a: out of step: its frame seq 21, captured at 2.100 s, counts as part 21, which "
                          "opened at 2.050 s with the view of camera b: "), out
    assert "(camera a took no frame of one, or camera b took an extra one: " in out
    assert line.asm.stats["duplicate_views"] == 0


@pytest.mark.parametrize("match", ["window", "encoder"])
def test_the_other_match_modes_look_for_no_duplicates(match):
    """Only ``match: sequence`` tells duplicates: the other modes' counters are as before."""
    asm = PartAssembler(list(CAMERAS), GroupSettings(match=match), 0.5, on_part=lambda v, row: None,
                        count=lambda: 0, clock=lambda: 0.0)
    assert asm.stats == {"parts": 0, "ng": 0, "ok": 0, "not_inspected": 0, "late_views": 0}


def test_a_bounce_then_a_part_within_the_window_never_files_the_part_before_s_image(caplog):
    """Review of the duplicate rule: camera a's frame of trigger 20 comes twice (2 ms apart), then trigger 21 comes
    25 ms later (within window_ms 30: parts closer than the window) and only a sees its defect. Both of a's later
    frames were skipped; when b's frame of 21 came, the first skipped one (trigger 20's image) was filed as part 21's
    view: part 21 passed inspected and OK, its defect thrown away as a duplicate. Which skipped frame is part 21's
    cannot be told, so its view is missing now: NG, not inspected (fail-safe), and the pairing goes on in step."""
    line = _Line(ng=frozenset({("a", 21)}))
    for trigger in range(20):
        line.now = trigger * PERIOD_S
        line.asm.sweep()
        for camera in CAMERAS:
            line.take(camera, trigger, line.now)
    line.now = 2.0
    line.asm.sweep()
    line.take("a", 20, 2.0)
    line.take("a", 20, 2.002)   # the bounce
    line.take("b", 20, 2.0)
    line.now = 2.025
    line.take("a", 21, 2.025)   # the defect only a sees
    line.take("b", 21, 2.025)
    for trigger in range(22, 26):
        line.now = 2.2 + (trigger - 22) * PERIOD_S
        line.asm.sweep()
        for camera in CAMERAS:
            line.take(camera, trigger, line.now)
    line.now += 10.0
    line.asm.sweep()
    part = line.rows[21]
    assert part["ng"] and not part["inspected"], part   # before: ng False, inspected True with trigger 20's image
    assert "seq" not in part["views"]["a"] and part["views"]["b"]["seq"] == 21
    assert all(line.triggers(line.rows[p]) == {p} for p in (20, 22, 23, 24, 25)), "the pairing fell out of step"
    assert line.asm.stats["duplicate_views"] == 1 and line.asm.stats["not_inspected"] == 1
    assert "which one cannot be told" in caplog.text


def test_a_frame_delivered_again_under_its_own_seq_is_one_duplicate_and_no_late_view(caplog):
    """Review of the duplicate rule: camera a's frame 20 handed over again (same seq, same capture time) after its
    part closed was counted ``duplicate_views`` and, when its verdict came, ``late_views`` too, logged as "its part
    had closed without it" though a's view is in that part. One of the two verdicts of that frame is dropped now."""
    line = _Line()
    for trigger in range(21):
        line.now = trigger * PERIOD_S
        line.asm.sweep()
        for camera in CAMERAS:
            line.take(camera, trigger, line.now)
    again = Frame(20, 2.0, np.zeros(1), camera="a")
    assert line.asm.on_capture("a", again) is None
    line.asm.on_verdict(again, Verdict(20, 2.0, 0.1, 1.0, False, 2.0, camera="a"))
    line.now += 10.0
    line.asm.sweep()
    assert (line.asm.stats["duplicate_views"], line.asm.stats["late_views"]) == (1, 0)
    assert "closed without it" not in caplog.text
    assert line.rows[20]["views"]["a"]["seq"] == 20 and line.asm.stats["parts"] == 21

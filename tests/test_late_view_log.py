"""A camera that lags for good in a multi-camera cell: each of its views comes after its part closed (a late view).
Every one is counted ``late_views``, but the log names the first at once and then gathers the rest, one WARNING line
per camera per ``LATE_LOG_S`` (it logged one line per view: 20 a second at 20 parts/s). The assembler runs
in-process on a fake clock, so the windows do not depend on the machine's speed."""

from __future__ import annotations

import logging
import re

import numpy as np

from fair_edge.line import grouped_log
from fair_edge.records import Frame, Verdict
from fair_edge.station import parts
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings

PERIOD_MS = 50      # 20 parts a second
TIMEOUT_S = 0.6     # a part closes this long after its first view's capture
LAG = 20            # a lagging camera delivers its frame of trigger i at trigger i + LAG (1 s: after its part closed)
GATHERED = re.compile(r"camera (\w+): (\d+) more late views? in the last [\d.]+ s .* the last frame (\d+) \((.*?)\)")


class _Cell:
    """Cameras fired every ``PERIOD_MS`` on a fake clock (whole ms, so window ends are exact); ``lagging`` ones
    deliver each frame ``LAG`` triggers late. Every view is OK and inspected at once."""

    def __init__(self, cameras: list[str], lagging: set[str]) -> None:
        self.now_ms = 0
        self.lagging = lagging
        self.cameras = cameras
        self.asm = PartAssembler(cameras, GroupSettings(match="window", window_ms=30), TIMEOUT_S,
                                 on_part=lambda verdict, row: None, clock=lambda: self.now_ms / 1000.0)

    def trigger(self, i: int) -> None:
        """Trigger ``i`` fires now: the cameras in step deliver its frame, the lagging ones trigger i - LAG's."""
        self.now_ms = i * PERIOD_MS
        self.asm.sweep()
        for camera in self.cameras:
            seq = i - LAG if camera in self.lagging else i
            if seq >= 0:
                self._view(camera, seq)

    def _view(self, camera: str, seq: int) -> None:
        t_capture = seq * PERIOD_MS / 1000.0
        frame = Frame(seq, t_capture, np.zeros(1), camera=camera)
        self.asm.on_capture(camera, frame)
        self.asm.on_verdict(frame, Verdict(seq, t_capture, 0.1, 1.0, False, self.now_ms / 1000.0, camera=camera))


def _late_lines(caplog, camera: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == parts.__name__ and r.getMessage().startswith(f"camera {camera}")]


def test_a_lagging_camera_logs_its_first_late_view_then_one_line_per_window_each_counted(caplog):
    """Two of three cameras lag for 30 s (600 late views each): each logs its first late view at once, naming frame
    and part, then one line per 10 s window and one at the end of the run; the lines' counts add up to every late
    view, all counted in late_views; the camera in step logs nothing."""
    caplog.set_level(logging.WARNING, logger=parts.__name__)
    cell = _Cell(["top", "left", "right"], lagging={"left", "right"})
    triggers = 600 + LAG
    for i in range(triggers):
        cell.trigger(i)
    cell.asm.close_all()
    assert cell.asm.stats["late_views"] == 2 * 600
    assert _late_lines(caplog, "top") == []
    for camera in ("left", "right"):
        lines = _late_lines(caplog, camera)
        # the run spans 30 s of late views from t = 1 s: windows end at 11, 21 and 31 s (the last at close_all)
        assert len(lines) == 4, f"{len(lines)} lines: {lines[:3]} ..."
        assert lines[0].startswith(f"camera {camera} frame 0: its part 0 had closed without it; further late views"), \
            lines[0]
        gathered = [GATHERED.match(line) for line in lines[1:]]
        assert all(gathered), lines[1:]
        assert 1 + sum(int(m.group(2)) for m in gathered) == 600
        assert gathered[-1].group(3, 4) == ("599", "part 599")


def test_late_views_gathered_are_logged_when_their_window_ends_though_no_more_come(caplog):
    """A lag of 3 s (60 late views): its first is logged at once, the 59 after it by the sweep once its window ends,
    without waiting for the end of the run or another late view; then a quiet window ends the spell, so the next
    late view is logged at once again."""
    caplog.set_level(logging.WARNING, logger=parts.__name__)
    cell = _Cell(["top", "left"], lagging=set())
    for i in range(60):                       # left's frames 0 .. 59 are held ...
        cell.now_ms = i * PERIOD_MS
        cell.asm.sweep()
        cell._view("top", i)
    cell.now_ms = 100 * PERIOD_MS                 # ... and delivered at 5 s, after their parts closed
    cell.asm.sweep()
    for seq in range(60):
        cell._view("left", seq)
    assert cell.asm.stats["late_views"] == 60
    assert len(_late_lines(caplog, "left")) == 1
    cell.now_ms += int(grouped_log.LATE_LOG_S * 1000)   # the window ends: the sweep logs what it gathered
    cell.asm.sweep()
    lines = _late_lines(caplog, "left")
    assert len(lines) == 2 and GATHERED.match(lines[1]).group(2, 3, 4) == ("59", "59", "part 59"), lines
    cell.now_ms += int(grouped_log.LATE_LOG_S * 1000)   # a window with none ends the spell
    cell.asm.sweep()
    assert cell.now_ms == 25_000
    for i in range(600, 600 + LAG + 1):           # 30 s on: left's frame 600 comes 1 s late
        cell.now_ms = i * PERIOD_MS
        cell.asm.sweep()
        cell._view("top", i)
    cell._view("left", 600)
    lines = _late_lines(caplog, "left")
    assert len(lines) == 3 and lines[2].startswith("camera left frame 600: its part 60 had closed"), lines
    assert cell.asm.stats["late_views"] == 61

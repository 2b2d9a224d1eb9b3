"""The table ``fair-edge run`` redraws on a terminal shows a station of several cameras' part counters (parts, NG, not
inspected, OK, views after their part closed) and each camera's, as they move, with the numbers summary.json ends
with. It showed the inspector's view counters only: how many parts passed or were rejected could not be read
while the cell ran. First the counters on a fake clock (each counter moved in turn), then a real cell whose two
replayed cameras let one part through at a time."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from types import SimpleNamespace

import numpy as np
from rich.console import Console

from fair_edge.cameras.base import EndOfStream
from fair_edge.cameras.synthetic import LineSource
from fair_edge.cli.run import live_table
from fair_edge.console.settings import ConsoleSettings
from fair_edge.line.settings import RecordSettings
from fair_edge.records import Frame, Verdict
from fair_edge.station.config import StationConfig
from fair_edge.station.inspector import RunSummary
from fair_edge.station.parts import PartAssembler
from fair_edge.station.run import write_summary
from fair_edge.station.views import GroupSettings, ViewSettings

CAMERAS = ("top", "left")
PARTS_ROW = re.compile(r"parts │ (\d+): (\d+) NG, (\d+) not inspected, (\d+) resyncs \(a camera out of step\), (\d+) duplicate views")
OK_ROW = re.compile(r"parts OK │ (\d+)")
LATE_ROW = re.compile(r"views after their part closed │ (\d+)")


def rendered(inspector) -> str:
    """``live_table(inspector)`` as the terminal shows it, whitespace folded."""
    console = Console(record=True, width=200)
    console.print(live_table(inspector))
    return " ".join(console.export_text().split())


def shown_parts(text: str) -> dict:
    """The part counters a rendered live table shows ({} when it shows none)."""
    parts = PARTS_ROW.search(text)
    if parts is None:
        return {}
    late = LATE_ROW.search(text)
    return {"parts": int(parts[1]), "ng": int(parts[2]), "not_inspected": int(parts[3]), "resyncs": int(parts[4]),
            "duplicate_views": int(parts[5]), "ok": int(OK_ROW.search(text)[1]), "late_views": int(late[1]) if late else 0}


def stand_in_inspector() -> SimpleNamespace:
    """What ``live_table`` reads of an inspector: its summary, latency and the cameras' (mux's) stats."""
    stats = SimpleNamespace(state=SimpleNamespace(value="running"), frames_in=0, dropped_queue_full=0,
                            frames_lost_estimate=0)
    return SimpleNamespace(summary=RunSummary(run_id="r1"), capture=SimpleNamespace(stats=lambda: stats),
                           latency=SimpleNamespace(window=2000, percentiles=lambda window: {"p50_ms": None}))


class Cameras:
    """The capture mux's per-camera stats (``CaptureMux.camera_stats``) of two running cameras."""

    def camera_stats(self) -> dict:
        return {c: SimpleNamespace(frames_in=3, dropped_queue_full=0, frames_lost_estimate=0, unreadable=0,
                                   state=SimpleNamespace(value="running"), end_reason="") for c in CAMERAS}


def test_each_part_counter_moves_in_the_live_table_and_ends_as_summary_json_has_it(tmp_path):
    """An OK part, an NG part, a part whose view never came (not inspected, fail-safe NG), then that view late: after
    each the tick brings the summary up to the cell's counters and the live table shows the new numbers; the last
    table shows what summary.json holds."""
    from fair_edge.station.cell import CellCounters, counting_tick

    now = [0.0]
    asm = PartAssembler(list(CAMERAS), GroupSettings(match="sequence"), 0.5, on_part=lambda v, row: None,
                        clock=lambda: now[0])
    per_camera = {c: Counter() for c in CAMERAS}
    tables: list[str] = []
    cell = SimpleNamespace(assembler=asm, per_camera=per_camera, part_stats=lambda: dict(asm.stats))   # CellLine's
    tick = counting_tick(CellCounters(cell, Cameras()), lambda insp: tables.append(rendered(insp)))
    inspector = stand_in_inspector()

    def view(camera: str, seq: int, ng: bool) -> None:
        per_camera[camera].update(inspected=1, ng=int(ng))
        asm.on_verdict(None, Verdict(seq, float(seq), 2.0 if ng else 0.1, 1.0, ng, now[0], camera=camera))

    def part(seq: int, ng_views=(), inspected=CAMERAS) -> None:
        now[0] = float(seq)
        for camera in CAMERAS:
            asm.on_capture(camera, Frame(seq, now[0], np.zeros(1), camera=camera))
        for camera in inspected:
            view(camera, seq, camera in ng_views)

    moves = [(lambda: part(0), dict(parts=1, ng=0, not_inspected=0, ok=1, late_views=0)),
             (lambda: part(1, ng_views=("left",)), dict(parts=2, ng=1, not_inspected=0, ok=1, late_views=0)),
             (lambda: part(2, inspected=("top",)), dict(parts=2, ng=1, not_inspected=0, ok=1, late_views=0)),
             (lambda: (now.__setitem__(0, 2.6), asm.sweep()), dict(parts=3, ng=2, not_inspected=1, ok=1,
                                                                    late_views=0)),
             (lambda: view("left", 2, False), dict(parts=3, ng=2, not_inspected=1, ok=1, late_views=1))]
    for move, expected in moves:
        move()
        tick(inspector)
        assert shown_parts(tables[-1]) == {**expected, "resyncs": 0, "duplicate_views": 0}, tables[-1]
    assert "camera top │ 3 inspected, 0 NG, 0 dropped, 0 lost" in tables[-1], tables[-1]
    assert "camera left │ 3 inspected, 1 NG, 0 dropped, 0 lost" in tables[-1], tables[-1]
    written = json.loads(write_summary(inspector.summary, tmp_path).read_text())
    assert written["parts"] == shown_parts(tables[-1])


def test_one_camera_shows_no_part_rows():
    assert "parts" not in rendered(stand_in_inspector())


# ----------------------------------------------------------------------------- a real cell, one part at a time
class GatedLine(LineSource):
    """Its images once, the first at once (the camera's open reads it) and each next one when ``admit()`` lets it
    through; after the last it holds until ``release()`` and ends."""

    def __init__(self, images, name: str) -> None:
        super().__init__(images, loop=False, name=name)
        self.gate = threading.Condition()
        self.admitted, self.released = 1, False

    def admit(self) -> None:
        with self.gate:
            self.admitted += 1
            self.gate.notify_all()

    def release(self) -> None:
        with self.gate:
            self.released = True
            self.gate.notify_all()

    def _grab(self):
        with self.gate:
            if not self.gate.wait_for(lambda: self._next_slot < self.admitted or self.released, timeout=600):
                raise EndOfStream(f"{self.name}: never admitted")
        return super()._grab()


class Tables:
    """The live tables a running cell drew (its ``on_tick``), and a wait for one that shows given part counters."""

    def __init__(self) -> None:
        self.drawn: list[str] = []
        self.changed = threading.Condition()

    def draw(self, inspector) -> None:
        text = rendered(inspector)
        with self.changed:
            self.drawn.append(text)
            self.changed.notify_all()

    def wait_for(self, parts: dict, timeout: float = 120.0) -> str:
        with self.changed:
            found = self.changed.wait_for(lambda: self.drawn and shown_parts(self.drawn[-1]) == parts, timeout)
            assert found, f"no live table showed {parts} within {timeout} s; the last: {self.drawn[-1:]}"
            return self.drawn[-1]


def test_a_running_cells_live_table_follows_each_part_and_ends_with_summary_json(station_bundles, scored, tmp_path):
    """Two cameras, three parts let through one at a time (part 1 NG by its left view): the live table shows 1, then
    2 (1 NG), then 3 parts (2 OK) while the cell runs, each camera's row too, and the numbers summary.json ends
    with."""
    from fair_edge.station.cell import run_cell
    from fair_edge.station.inspector import LoopSettings

    images, threshold = scored
    sources = {"top": GatedLine([images[i] for i in (0, 1, 2)], "top"),
               "left": GatedLine([images[i] for i in (3, 11, 4)], "left")}
    out = tmp_path / "out"
    cfg = StationConfig(bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=out,
                        cameras=tuple(ViewSettings(c, c, queue_size=4) for c in sources),
                        group=GroupSettings(match="sequence"), record=RecordSettings(dir=out),
                        console=ConsoleSettings(enabled=False),
                        batching=LoopSettings(max_batch=2, max_wait_ms=20.0)).checked()
    tables, stop, ran = Tables(), threading.Event(), {}
    runner = threading.Thread(target=lambda: ran.setdefault("summary", run_cell(cfg, stop, sources=sources,
                                                                                on_tick=tables.draw)), daemon=True)
    runner.start()
    try:
        tables.wait_for(dict(parts=1, ng=0, not_inspected=0, ok=1, late_views=0, resyncs=0, duplicate_views=0))
        for source in sources.values():
            source.admit()
        tables.wait_for(dict(parts=2, ng=1, not_inspected=0, ok=1, late_views=0, resyncs=0, duplicate_views=0))
        for source in sources.values():
            source.admit()
        last = tables.wait_for(dict(parts=3, ng=1, not_inspected=0, ok=2, late_views=0, resyncs=0, duplicate_views=0))
    finally:
        for source in sources.values():
            source.release()
        runner.join(120)   # the replays end once released
        if runner.is_alive():
            stop.set()
            runner.join(60)
    assert "summary" in ran, "the cell did not end when its cameras' replays did"
    assert "camera top │ 3 inspected, 0 NG" in last and "camera left │ 3 inspected, 1 NG" in last, last
    written = json.loads((out / "summary.json").read_text())
    assert written["parts"] == shown_parts(last)
    assert {c: s["inspected"] for c, s in written["cameras"].items()} == {"top": 3, "left": 3}


def test_the_run_tables_parts_row_shows_the_duplicate_views_skipped():
    """``match: sequence``: a camera's frames taken twice (a trigger bounce) are skipped and counted
    ``duplicate_views`` (``PartAssembler.stats``); the run table shows the count beside the resyncs."""
    from fair_edge.cli.run import cell_rows

    parts = {"parts": 40, "ng": 1, "not_inspected": 0, "ok": 39, "late_views": 0, "resyncs": 0,
             "duplicate_views": 3}
    (row, _ok) = cell_rows(SimpleNamespace(parts=parts, cameras={}))
    assert row == ("parts", "40: 1 NG, 0 not inspected, 0 resyncs (a camera out of step), 3 duplicate views skipped")


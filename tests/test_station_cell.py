"""Several cameras, one part (fair_edge.station.cell): real bundles on ONNX Runtime, replayed cameras, a real
Modbus TCP server for the reject output. Assertions are order and accounting; no bound hopes the machine is idle."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fair_edge.errors import ConfigError
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.records import Frame, Verdict
from fair_edge.station.cell import run_cell
from fair_edge.station.config import ConsoleSettings, StationConfig
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings, ViewSettings

NO_CONSOLE = ConsoleSettings(enabled=False)   # these runs need no console: none binds its fixed port (8765)

pytest.importorskip("pymodbus")


# ----------------------------------------------------------------------------- the assembler alone (fake clock)
def verdict(camera: str, seq: int, ng: bool, score: float = 0.5) -> Verdict:
    return Verdict(seq, 0.0, score, 1.0, ng, 0.0, camera=camera)


def test_window_match_groups_views_and_any_ng_view_makes_the_part_ng():
    parts, opened = [], []
    asm = PartAssembler(["top", "left"], GroupSettings(match="window", window_ms=30), 1.0,
                        on_part=lambda v, row: parts.append((v, row)),
                        on_open=lambda p, t, count: opened.append((p, t, count)),
                        clock=lambda: 0.0)
    assert asm.on_capture("top", Frame(0, 10.000, np.zeros(1))) == 0
    assert asm.on_capture("left", Frame(0, 10.020, np.zeros(1))) == 0     # within 30 ms: the same part
    assert asm.on_capture("top", Frame(1, 10.025, np.zeros(1))) == 1      # top already seen in part 0: a new part
    assert asm.on_capture("left", Frame(1, 10.100, np.zeros(1))) == 2     # outside every window
    assert opened == [(0, 10.0, None), (1, 10.025, None), (2, 10.1, None)]   # no belt count outside match: encoder
    asm.on_verdict(None, verdict("top", 0, False, 0.2))
    assert parts == []                                                     # left still to come
    asm.on_verdict(None, verdict("left", 0, True, 3.0))
    (v, row), = parts
    assert (v.seq, v.ng, v.camera, v.score) == (0, True, "left", 3.0)
    assert row["ng_views"] == ["left"] and row["missing"] == [] and row["inspected"]
    assert row["views"]["top"] == {"seq": 0, "score": 0.2, "ng": False}


def test_count_rule_and_a_missing_view_is_named_and_left_to_the_gate():
    parts = []
    now = [0.0]
    asm = PartAssembler(["a", "b", "c"], GroupSettings(match="sequence", rule="count>=2"), 0.5,
                        on_part=lambda v, row: parts.append((v, row)), clock=lambda: now[0])
    for cam in "abc":
        asm.on_capture(cam, Frame(0, 0.0, np.zeros(1)))
    asm.on_verdict(None, verdict("a", 0, True))
    asm.on_verdict(None, verdict("b", 0, False))
    asm.on_verdict(None, verdict("c", 0, False))
    assert parts[-1][0].ng is False and parts[-1][1]["ng_views"] == ["a"]   # one NG view of three: count>=2 passes
    asm.on_capture("a", Frame(1, 0.1, np.zeros(1)))
    asm.on_capture("b", Frame(1, 0.1, np.zeros(1)))
    asm.on_drop("b", Frame(1, 0.1, np.zeros(1)))
    asm.on_verdict(None, verdict("a", 1, False))
    now[0] = 0.59
    asm.sweep()
    assert len(parts) == 1                      # not yet timed out
    now[0] = 0.61
    asm.sweep()
    v, row = parts[-1]
    assert v is None and row["ng"] and not row["inspected"]   # no verdict for the gate: it rejects fail-safe
    assert row["missing"] == ["b", "c"] and row["views"]["b"] == {"missing": "dropped: capture queue full", "seq": 1}
    assert row["views"]["c"] == {"missing": "no frame"} and "b (dropped" in row["reason"]
    asm.on_verdict(None, verdict("c", 1, False))               # a view after its part closed: counted, ignored
    assert asm.stats == {"parts": 2, "ng": 1, "ok": 1, "not_inspected": 1, "late_views": 0, "resyncs": 0,
                         "duplicate_views": 0}


def _sequence_cell(order: tuple[str, str], outage: set, resumed_at: int, parts: list):
    """Two cameras at match: sequence, a part every 0.1 s (fake clock); ``left`` takes no frame of the physical
    parts in ``outage`` and marks its frame of ``resumed_at`` resumed (as the capture thread does); physical part 9
    is defective on ``left`` only. Returns the assembler and {(camera, seq): physical part}."""
    now = [0.0]
    asm = PartAssembler(["top", "left"], GroupSettings(match="sequence", window_ms=30), 0.4, clock=lambda: now[0],
                        on_part=lambda v, row: parts.append(row))
    seqs, physical_of = {"top": 0, "left": 0}, {}
    for physical in range(12):
        now[0] = physical * 0.1
        asm.sweep()
        for cam in order:
            if cam == "left" and physical in outage:
                continue
            frame = Frame(seqs[cam], now[0] + (0.005 if cam == order[1] else 0.0), np.zeros(1),
                          resumed=cam == "left" and physical == resumed_at)
            physical_of[(cam, frame.seq)] = physical
            seqs[cam] += 1
            asm.on_capture(cam, frame)
            ng = cam == "left" and physical == 9
            asm.on_verdict(frame, Verdict(frame.seq, frame.t_capture, 3.0 if ng else 0.1, 1.0, ng, now[0], camera=cam))
    now[0] = 5.0
    asm.sweep()
    return asm, physical_of


@pytest.mark.parametrize("order", [("top", "left"), ("left", "top")])
def test_sequence_match_after_an_outage_pairs_views_by_capture_time_until_in_step(order):
    """A camera whose seq does not count the frames it lost (a re-opened USB camera) is out of step: its N-th frame
    is no longer part N. Its views are matched by capture time until one joins a part, then its seq offset is
    learned again: the parts it missed are fail-safe rejects, every later part pairs the same physical part, and
    the defect only ``left`` sees is on the right part, whichever camera's frame comes first."""
    parts: list = []
    _, physical_of = _sequence_cell(order, {4, 5}, 6, parts)
    rows = sorted(parts, key=lambda r: r["part"])
    assert len(rows) == 12
    for row in rows:
        seen = {physical_of[(c, v["seq"])] for c, v in row["views"].items() if "seq" in v}
        assert len(seen) == 1, row                                   # never two physical parts in one
    missing = [row["missing"] for row in rows]
    assert missing == [[]] * 4 + [["left"]] * 2 + [[]] * 6
    ng = [physical_of[next((c, v["seq"]) for c, v in row["views"].items() if "seq" in v)]   # decided NG by left:
          for row in rows if row["ng"] and row["inspected"]]                                  # top may not be in
    assert ng == [9]


def test_sequence_match_out_of_step_with_no_part_near_is_a_part_of_its_own_until_one_matches():
    """The resumed frame comes 50 ms after the others (outside window_ms 30): it cannot be placed, so it is a part
    of its own with ``top`` missing (fail-safe), and ``top``'s part misses ``left``; the next frames, in time,
    bring ``left`` back in step. Without the resumed mark, the old code paired left's frames with the wrong parts."""
    parts: list = []
    now = [0.0]
    asm = PartAssembler(["top", "left"], GroupSettings(match="sequence", window_ms=30), 0.4, clock=lambda: now[0],
                        on_part=lambda v, row: parts.append(row))
    asm.on_capture("top", Frame(0, 0.0, np.zeros(1)))
    asm.on_capture("left", Frame(0, 0.0, np.zeros(1)))
    asm.on_capture("top", Frame(1, 0.1, np.zeros(1)))        # left lost this one and the next
    asm.on_capture("top", Frame(2, 0.2, np.zeros(1)))
    assert asm.on_capture("left", Frame(1, 0.25, np.zeros(1), resumed=True)) == 3   # no part near: its own
    assert asm.on_capture("top", Frame(3, 0.3, np.zeros(1))) == 4
    assert asm.on_capture("left", Frame(2, 0.3, np.zeros(1))) == 4                  # in step again: offset 1
    assert asm.on_capture("top", Frame(4, 0.4, np.zeros(1))) == 5
    assert asm.on_capture("left", Frame(3, 0.4, np.zeros(1))) == 5


def test_a_view_whose_inspection_failed_leaves_the_part_uninspected_and_an_ng_part_keeps_its_regions():
    """A view with ``error`` (inference failed: score None, ng True) is not an inspected NG view: the part is not
    inspected (no verdict for the gate: fail-safe), its row names the error and keeps the frame's seq. An NG part
    decided by a rule carries the deciding view's regions and hits (the PLC's region signals) and the rule's reason."""
    from fair_edge.records import RuleHit
    from fair_edge.regions import Region

    parts = []
    asm = PartAssembler(["top", "left"], GroupSettings(match="sequence"), 1.0, clock=lambda: 0.0,
                        on_part=lambda v, row: parts.append((v, row)))
    for cam in ("top", "left"):
        asm.on_capture(cam, Frame(0, 0.0, np.zeros(1)))
    asm.on_verdict(None, Verdict(0, 0.0, None, 1.0, True, 0.0, error="inference failed: CUDA error", camera="top"))
    asm.on_verdict(None, verdict("left", 0, False, 0.2))
    v, row = parts[-1]
    assert v is None and row["ng"] and not row["inspected"] and row["missing"] == ["top"]
    assert row["views"]["top"] == {"missing": "not inspected: inference failed: CUDA error", "seq": 0}
    assert "top (not inspected: inference failed" in row["reason"] and asm.stats["not_inspected"] == 1

    region = Region((1, 1, 4, 4), (3, 3), 16.0, 4.0, 0.9, 0.8, zone="seal", zone_id=2)
    hit = RuleHit("min_area_px", "seal", 2, 16.0, 10.0, "px²", 0)
    for cam in ("top", "left"):
        asm.on_capture(cam, Frame(1, 0.1, np.zeros(1)))
    asm.on_verdict(None, Verdict(1, 0.1, 0.9, 1.0, True, 0.0, regions=(region,), hits=(hit,), camera="top"))
    asm.on_verdict(None, verdict("left", 1, False, 0.2))
    v, row = parts[-1]
    assert v.ng and v.regions == (region,) and v.hits == (hit,) and row["inspected"]
    assert row["reason"] == f"top: {hit.reason}"


class _PlcLink:
    name = "scripted plc"

    def write(self, values) -> None:
        pass

    def close(self) -> None:
        pass


def test_handshake_cell_answers_a_part_whose_views_all_dropped_or_that_no_camera_could_take():
    """match: handshake. Both cameras' frames of PLC part 7 are dropped from their queues: the part closes with both
    views missing and is answered 3 (NG not inspected), its tickets forgotten. Both cameras' reads fail for part 8:
    no part opens, and the fanout answers it 3 once the last camera failed. Before, neither was ever answered, and
    the unanswered part held every later result back until it timed out."""
    from fair_edge.cameras.triggered import TriggerFanout
    from fair_edge.line.handshake import Handshake
    from fair_edge.line.handshake.settings import RESULT_NOT_INSPECTED, HandshakeSettings
    from fair_edge.station.cell_line import CellLine
    from types import SimpleNamespace

    hs = Handshake(HandshakeSettings(url="modbus://127.0.0.1:1"), _PlcLink())
    hs._connected = True
    hs.begin()
    fan = TriggerFanout(hs, ["top", "left"])
    rows: list = []
    line = SimpleNamespace(scheduler=None, part_gate=None, mqtt=None, handshake=hs,
                           recorder=SimpleNamespace(record_row=rows.append, log_row=lambda r: r))
    cell = CellLine(line, triggers=fan)
    asm = PartAssembler(["top", "left"], GroupSettings(match="handshake"), 0.5, on_part=cell.on_part,
                        plc_part=lambda cam, fr: fan.part_id(cam, fr.seq), clock=lambda: 0.0)

    def trigger(part_id):
        hs._take_trigger(part_id, time.monotonic())
        return {c: fan.port(c).next_trigger(0.1) for c in ("top", "left")}

    tickets = trigger(7)
    for cam in ("top", "left"):
        frame = Frame(0, 0.0, np.zeros(1))
        fan.port(cam).bind(0, tickets[cam])
        asm.on_capture(cam, frame)
        asm.on_drop(cam, frame)
    assert rows[-1]["missing"] == ["left", "top"] and rows[-1]["plc_part_id"] == 7
    assert tickets["top"].result == RESULT_NOT_INSPECTED and fan.ticket("top", 0) is None and fan.ticket("left", 0) is None

    tickets = trigger(8)
    fan.port("top").answer_not_inspected(tickets["top"])
    assert tickets["top"].result != RESULT_NOT_INSPECTED          # left may still take the part's frame
    fan.port("left").answer_not_inspected(tickets["left"])
    assert tickets["top"].result == RESULT_NOT_INSPECTED and len(rows) == 1


def test_station_file_with_cameras_is_checked():
    ok = StationConfig.from_dict({"bundle": "b", "cameras": [{"name": "top", "source": "d1"},
                                                              {"name": "left", "source": "d2", "threshold": 2}],
                                  "group": {"match": "sequence", "rule": "count>=2"}})
    assert [v.name for v in ok.cameras] == ["top", "left"] and ok.cameras[1].threshold == 2.0
    bad = [({"camera": {"source": "0"}, "cameras": [{"source": "1"}]}, "either camera"),
           ({"cameras": [{"name": "a", "source": "1"}, {"name": "a", "source": "2"}]}, "a is used more than once"),
           ({"cameras": [{"name": "a b", "source": "1"}]}, r"cameras\[0\]\.name"),
           ({"cameras": [{"name": "a"}]}, r"cameras\[0\]\.source"),
           ({"cameras": [{"source": "1"}], "group": {"rule": "count>=2"}}, "1 <= K <= 1"),
           ({"cameras": [{"source": "1", "reject": ["log://"]}]}, "group.by: lane"),
           ({"cameras": [{"source": "1"}], "group": {"by": "lane"}, "reject": {"sinks": ["log://"]}}, "own reject"),
           ({"cameras": [{"source": "1"}], "group": {"match": "encoder"}}, "reject.encoder"),
           ({"camera": {"source": "1"}, "group": {"by": "lane"}}, "only a station with a cameras"),
           ({"cameras": [{"source": "1"}], "reject": {"handshake": {"url": "modbus://127.0.0.1:502?unit=1"}}},
            "go together"),
           ({"cameras": [{"source": "1"}], "group": {"match": "handshake"}}, "go together")]
    for data, words in bad:
        with pytest.raises(ConfigError, match=words):
            StationConfig.from_dict(data)


# ----------------------------------------------------------------------------- real bundles, replayed cameras
def camera_folders(root: Path, images: list[np.ndarray], plan: dict[str, list[int]]) -> dict[str, Path]:
    """One replay folder per camera: plan[camera] = indices into ``images`` (sorted by score), in order."""
    out = {}
    for cam, idx in plan.items():
        folder = root / cam
        folder.mkdir()
        for k, i in enumerate(idx):
            cv2.imwrite(str(folder / f"{k:03d}.png"), images[i])
        out[cam] = folder
    return out


def rows(out: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("kind") != "part"], [r for r in lines if r.get("kind") == "part"]


class CountingScorer:
    """A frame scorer that records how many frames each inference call took."""

    def __init__(self, inner) -> None:
        self.inner, self.calls, self.shapes = inner, [], []
        self.reason, self.graph_threshold, self.backend = inner.reason, inner.graph_threshold, inner.backend

    def infer_frames(self, frames):
        self.calls.append(len(frames))
        self.shapes.append({f.shape for f in frames})
        return self.inner.infer_frames(frames)


def test_three_cameras_share_one_model_and_batch_across_cameras(station_bundles, scored, tmp_path):
    """Three unpaced replays (every frame inspected): one model loaded, inference calls of several cameras'
    frames, one row per view and one per part; the part is NG exactly when its one bad view is."""
    from fair_edge.station.bundles import open_scorer

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"top": [0, 1, 2, 3], "left": [4, 5, 11, 6], "right": [7, 0, 1, 2]})
    cfg = StationConfig(console=NO_CONSOLE, bundle=station_bundles[0].root, backend="onnxruntime",
                        threshold=threshold, output=tmp_path,
                        cameras=tuple(ViewSettings(c, str(folders[c]), queue_size=4) for c in ("top", "left", "right")),
                        group=GroupSettings(match="sequence"), record=RecordSettings(dir=tmp_path, save_ng_images=True),
                        batching=dataclass_replace_batch(3)).checked()
    scorer = CountingScorer(open_scorer(station_bundles[0], "onnxruntime"))
    summary = run_cell(cfg, threading.Event(), scorer=scorer)
    views, parts = rows(tmp_path)
    assert sum(scorer.calls) == 12 == summary.inspected and max(scorer.calls) > 1   # batched across cameras
    assert len(scorer.calls) < 12
    assert sorted((r["camera"], r["seq"]) for r in views) == sorted((c, s) for c in folders for s in range(4))
    assert all(r["part"] == r["seq"] for r in views)                         # sequence match: frame N = part N
    assert [p["part"] for p in sorted(parts, key=lambda p: p["part"])] == [0, 1, 2, 3]
    assert [p["ng"] for p in sorted(parts, key=lambda p: p["part"])] == [False, False, True, False]
    bad = next(p for p in parts if p["ng"])
    assert bad["ng_views"] == ["left"] and bad["camera"] == "left" and bad["views"]["left"]["ng"]
    assert summary.parts == {"parts": 4, "ng": 1, "ok": 3, "not_inspected": 0, "late_views": 0, "resyncs": 0,
                             "duplicate_views": 0}
    assert {c: s["inspected"] for c, s in summary.cameras.items()} == {"top": 4, "left": 4, "right": 4}
    assert summary.cameras["left"]["ng"] == 1 and summary.ng == 1
    assert sorted(p.name for p in (tmp_path / "ng").iterdir())[0].split("_", 1)[1].startswith("left_00000002")


def test_cameras_of_two_resolutions_share_the_model_one_call_per_frame_size(station_bundles, scored, tmp_path):
    """A side camera of 1.5 times the top camera's resolution: every inference call holds frames of one size (a
    tiled model's frame maps, and the GPU kernel's one upload, need that), and every view of every part is decided."""
    from fair_edge.station.bundles import open_scorer

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"top": [0, 1, 2, 3]})
    side = tmp_path / "side"
    side.mkdir()
    for k, i in enumerate([4, 5, 11, 6]):
        cv2.imwrite(str(side / f"{k:03d}.png"), cv2.resize(images[i], None, fx=1.5, fy=1.5))
    cfg = StationConfig(console=NO_CONSOLE, bundle=station_bundles[0].root, backend="onnxruntime",
                        threshold=threshold, output=tmp_path,
                        cameras=(ViewSettings("top", str(folders["top"]), queue_size=4),
                                 ViewSettings("side", str(side), queue_size=4)),
                        group=GroupSettings(match="sequence"), record=RecordSettings(dir=tmp_path),
                        batching=dataclass_replace_batch(2)).checked()
    scorer = CountingScorer(open_scorer(station_bundles[0], "onnxruntime"))
    summary = run_cell(cfg, threading.Event(), scorer=scorer)
    views, parts = rows(tmp_path)
    assert sum(scorer.calls) == 8 == summary.inspected and all(len(shapes) == 1 for shapes in scorer.shapes)
    assert {next(iter(shapes))[:2] for shapes in scorer.shapes} == {images[0].shape[:2], side_shape(images[4])}
    assert not any(r.get("error") for r in views) and len(views) == 8
    assert [p["ng"] for p in sorted(parts, key=lambda p: p["part"])] == [False, False, True, False]


def side_shape(image: np.ndarray) -> tuple[int, int]:
    return cv2.resize(image, None, fx=1.5, fy=1.5).shape[:2]


def dataclass_replace_batch(n: int):
    from fair_edge.station.inspector import LoopSettings

    return LoopSettings(max_batch=n, max_wait_ms=20.0)


@pytest.fixture
def every_slot(monkeypatch):
    """A paced replay's reader stalled past ``cameras.base.CATCH_UP_S`` (0.5 s) and a period skips the slots it
    missed, their images with them, as a camera loses frames: a 1 s stall of top's capture thread on a loaded
    machine left part 2 without its top view, rejected fail-safe. Raised here, every camera gives every frame,
    stamped at its slot, so the parts these tests name are the parts the station sees."""
    import fair_edge.cameras.base as cameras_base

    monkeypatch.setattr(cameras_base, "CATCH_UP_S", 60.0)


def came_late(part: dict, views: dict[tuple[str, int], dict], due_s: float) -> bool:
    """A part of a paced cell the gate decided fail-safe because the machine was slow, as the station recorded it:
    its verdict came after the gate decided it (``verdict_late``), or a view came after the part closed at its due
    time (``not inspected in time``), checked against that view's own row (``t_verdict``, monotonic s, at least
    ``due_s`` after the part's capture: never a part closed early). views: (camera, seq) -> its verdicts.jsonl row."""
    slow = [views[(cam, v["seq"])] for cam, v in part["views"].items() if v.get("missing") == "not inspected in time"]
    assert all(r["t_verdict"] >= part["t_capture"] + due_s for r in slow), (part, slow)
    return bool(part.get("verdict_late") or slow)


def check_pulses_against_the_plc(sink: dict[str, int], rises: list[float], fired: int) -> None:
    """A reject sink's counters (summary.json's ``rejects.sinks``) against the rising edges its PLC saw: each pulse
    the gate fired ended as delivered, missed, unconfirmed or dropped, and each rise is a pulse the sink wrote
    (``delivered``, a late write included: ``late_writes`` is a part of it, never added to it) or one sent without
    a reply (``unconfirmed``: it may have landed). Holds whether a loaded machine made a write late or not."""
    assert sink["pulses"] == fired
    assert sink["delivered"] + sink["missed"] + sink["unconfirmed"] + sink["dropped"] == fired
    assert sink["dropped"] == 0   # a few pulses never fill the queue: each one was written or tried
    assert sink["late_writes"] <= sink["delivered"]
    assert sink["delivered"] <= len(rises) <= sink["delivered"] + sink["unconfirmed"]


def test_one_ng_view_is_rejected_once_and_a_missing_view_fail_safe_on_a_real_plc(station_bundles, scored, tmp_path,
                                                                               every_slot):
    """Paced replays of three cameras (4 frames/s), the gate 1.2 s after capture, pulses on a Modbus coil:
    part 1 has one NG view (left) and part 3 has no right view (its camera took 3 frames). Each is rejected
    exactly once; the others pass. A part whose verdict or view came after its due time (``came_late``: a slow
    machine) is rejected uninspected (counted); the PLC's rises equal the pulses the sink wrote."""
    from fair_edge.line.sim_sink_plc import SimulatedPlc

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"top": [0, 1, 2, 3], "left": [4, 11, 5, 6], "right": [7, 0, 1]})
    plc = SimulatedPlc().start()
    try:
        cfg = StationConfig(console=NO_CONSOLE,
            bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=tmp_path / "out",
            cameras=tuple(ViewSettings(c, str(folders[c]), fps=4, queue_size=8) for c in ("top", "left", "right")),
            group=GroupSettings(match="sequence"), record=RecordSettings(dir=tmp_path / "out"),
            batching=dataclass_replace_batch(3),
            reject=RejectSettings(sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0",), delay_ms=1200,
                                  pulse_ms=20, min_gap_ms=10, late_ms=10)).checked()
        summary = run_cell(cfg, threading.Event())
        time.sleep(0.1)
        rises = plc.rises(0)
    finally:
        plc.close()
    views, parts = rows(tmp_path / "out")
    by_part = {p["part"]: p for p in parts}
    assert sorted(by_part) == [0, 1, 2, 3]
    by_view = {(r["camera"], r["seq"]): r for r in views}
    late = {i for i, p in by_part.items() if came_late(p, by_view, cfg.reject.delay_ms / 1000.0)}
    on_time = [i for i in range(4) if i not in late]   # all four unless the machine was slow
    assert [by_part[i]["ng"] for i in on_time] == [i in (1, 3) for i in on_time]
    assert 1 in late or by_part[1]["ng_views"] == ["left"]
    assert 3 in late or by_part[3]["missing"] == ["right"]
    assert by_part[3]["views"]["right"] == {"missing": "no frame"} and not by_part[3]["inspected"]
    gate = [json.loads(line) for line in (tmp_path / "out" / "gate.jsonl").read_text().splitlines()]
    decided = {r["seq"]: r["gate"] for r in gate if r["event"] == "gate"}
    assert sorted(decided) == [0, 1, 2, 3]                             # each part decided once at the gate
    for part in range(4):
        want = {1: "rejected_ng", 3: "rejected_uninspected"}.get(part, "passed")
        assert decided[part] == ("rejected_uninspected" if part in late else want), (part, decided, late)
    (sink,) = summary.rejects["sinks"].values()
    fired = summary.rejects["fired"]
    assert fired == sum(g.startswith("rejected") for g in decided.values()) >= 2
    check_pulses_against_the_plc(sink, rises, fired)


def test_a_camera_that_unplugs_faults_the_station_while_the_others_inspect(station_bundles, scored, tmp_path):
    """The right camera's link dies for good after 2 frames: the fault output (a Modbus coil) rises naming no other
    camera, top and left inspect all their frames, and the parts without a right view are rejected fail-safe."""
    from fair_edge.cameras import LineSource
    from fair_edge.line.sim_sink_plc import SimulatedPlc

    images, threshold = scored
    good = images[:4]   # fps 0: each frame when its reader asks (a clocked line skips a slot its late reader missed)
    sources = {"top": LineSource(good, fps=0, loop=False, name="top"),
               "left": LineSource(good, fps=0, loop=False, name="left"),
               "right": LineSource(good, fps=0, loop=False, fail_at={2: "dead"}, name="right")}
    plc = SimulatedPlc().start()
    seen: list[str] = []
    stop = threading.Event()

    def tick(insp):
        seen.append(insp.summary.rejects.get("fault_output", ""))
        if insp.capture.captures["top"].ended and insp.capture.captures["left"].ended and seen[-1]:
            stop.set()

    try:
        cfg = StationConfig(console=NO_CONSOLE,
            bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=tmp_path,
            cameras=tuple(ViewSettings(c, c) for c in sources), group=GroupSettings(match="sequence"),
            record=RecordSettings(dir=tmp_path),
            reject=RejectSettings(sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0",),
                                  fault_sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=1",), delay_ms=1500,
                                  pulse_ms=20, min_gap_ms=10, late_ms=10)).checked()
        summary = run_cell(cfg, stop, sources=sources, on_tick=tick, duration_s=60)
        time.sleep(0.1)
        fault_rises = plc.rises(1)
    finally:
        plc.close()
    assert stop.is_set()                                     # ended by the test on seeing the fault, not the clock
    assert any(s.startswith("camera right: camera reconnecting") for s in seen)
    assert not any("camera top" in s or "camera left" in s for s in seen)
    assert len(fault_rises) >= 1
    assert summary.cameras["top"]["inspected"] == summary.cameras["left"]["inspected"] == 4
    assert summary.cameras["right"]["inspected"] == 2
    _, parts = rows(tmp_path)
    by_part = {p["part"]: p for p in parts}
    assert [by_part[i]["missing"] for i in range(4)] == [[], [], ["right"], ["right"]]


def test_a_lane_station_pulses_each_lanes_own_output(station_bundles, scored, tmp_path, every_slot):
    """group.by: lane: two cameras, each its own line with its own Modbus coil; lane a's NG part (frame 1) pulses
    coil 0 only, lane b's (frame 2) coil 1 only: decided per lane, counted per lane, each rise a written pulse."""
    from fair_edge.line.sim_sink_plc import SimulatedPlc

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"a": [0, 11, 1, 2], "b": [3, 4, 11, 5]})
    plc = SimulatedPlc().start()
    try:
        cfg = StationConfig(console=NO_CONSOLE,
            bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=tmp_path / "out",
            cameras=tuple(ViewSettings(c, str(folders[c]), fps=4, queue_size=8,
                                       reject=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil={i}",))
                          for i, c in enumerate("ab")),
            group=GroupSettings(by="lane"), record=RecordSettings(dir=tmp_path / "out"),
            reject=RejectSettings(delay_ms=1200, pulse_ms=20, min_gap_ms=10, late_ms=10)).checked()
        summary = run_cell(cfg, threading.Event())
        time.sleep(0.1)
        rises = {0: plc.rises(0), 1: plc.rises(1)}
    finally:
        plc.close()
    views, parts = rows(tmp_path / "out")
    assert parts == [] and sorted((r["camera"], r["seq"]) for r in views) == [(c, s) for c in "ab" for s in range(4)]
    gate = [json.loads(line) for line in (tmp_path / "out" / "gate.jsonl").read_text().splitlines()]
    decided = {(r["camera"], r["seq"]): r["gate"] for r in gate if r["event"] == "gate"}
    assert len(decided) == 8
    late = {(r["camera"], r["seq"]) for r in views if r.get("verdict_late")}
    for (cam, seq), outcome in decided.items():
        want = "rejected_ng" if (cam, seq) in {("a", 1), ("b", 2)} else "passed"
        assert outcome == ("rejected_uninspected" if (cam, seq) in late else want), (cam, seq, outcome)
    for i, cam in enumerate("ab"):
        lane = summary.rejects["lanes"][cam]
        (sink,) = lane["sinks"].values()
        assert lane["fired"] == sum(o.startswith("rejected") for (c, _), o in decided.items() if c == cam) >= 1
        check_pulses_against_the_plc(sink, rises[i], lane["fired"])


def test_hot_swap_of_one_cameras_bundle_leaves_the_others_running(station_bundles, scored, tmp_path):
    """Two cameras on the fp32 bundle; mid-run the left camera is swapped to the fp16 bundle: from then on its
    views carry the fp16 model's id, the top camera's all stay on fp32, and no frame goes uninspected."""
    from fair_edge.runtime.hotswap import model_id
    from fair_edge.station.bundles import load_change

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"top": list(range(8)), "left": list(range(8))})
    fp32, fp16 = (model_id(b) for b in station_bundles)
    swapped = []

    def tick(insp):
        if not swapped:
            insp.views["left"].switch.request(load_change(station_bundles[1].root, "onnxruntime", None, threshold))
            swapped.append(insp.summary.inspected)

    cfg = StationConfig(console=NO_CONSOLE, bundle=station_bundles[0].root, backend="onnxruntime",
                        threshold=threshold, output=tmp_path / "o",
                        cameras=tuple(ViewSettings(c, str(folders[c]), fps=3, queue_size=8) for c in ("top", "left")),
                        group=GroupSettings(match="sequence"), record=RecordSettings(dir=tmp_path / "o")).checked()
    summary = run_cell(cfg, threading.Event(), on_tick=tick)
    views, parts = rows(tmp_path / "o")
    top = [r["model"] for r in sorted(views, key=lambda r: r["seq"]) if r["camera"] == "top"]
    left = [r["model"] for r in sorted(views, key=lambda r: r["seq"]) if r["camera"] == "left"]
    assert swapped and fp32 != fp16
    assert top == [fp32] * 8
    assert len(left) == 8 and left[-1] == fp16 and left == sorted(left, key=lambda m: m == fp16)   # fp32 ... fp16
    assert summary.inspected == 16 and len(parts) == 8



def test_a_genicam_camera_and_a_replay_grouped_into_parts(station_bundles, scored, tmp_path):
    """Aravis's simulated GigE camera (5 frames/s) and a replayed camera (5 frames/s) matched by capture time
    within 100 ms (half their period, so every frame has a partner in reach): every view is in exactly one part,
    no part has two views of one camera, complete parts are decided by their views and incomplete ones (at most
    the pairing's first and last) name the missing camera."""
    from test_cameras_aravis import FAKE, FakeCamera, _aravis_importable

    if FAKE is None or not _aravis_importable():
        pytest.skip("needs arv-fake-gv-camera-0.8 (apt: aravis-tools) and gir1.2-aravis-0.8; .ci/run installs them")
    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"belt": [0, 1, 2, 3, 4, 5, 6, 7]})
    camera = FakeCamera("FE0042").start()
    try:
        cfg = StationConfig(console=NO_CONSOLE,
            bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=tmp_path / "o",
            cameras=(ViewSettings("gige", "aravis:Aravis-Fake-FE0042", fps=5, queue_size=8),
                     ViewSettings("belt", str(folders["belt"]), fps=5, queue_size=8)),
            group=GroupSettings(match="window", window_ms=100), record=RecordSettings(dir=tmp_path / "o")).checked()
        stop = threading.Event()

        def tick(insp):
            if insp.capture.captures["belt"].ended:
                stop.set()

        summary = run_cell(cfg, stop, on_tick=tick, duration_s=60)
    finally:
        camera.kill()
    views, parts = rows(tmp_path / "o")
    assert summary.cameras["gige"]["inspected"] >= 5 and summary.cameras["belt"]["inspected"] == 8
    member = [(c, v["seq"]) for p in parts for c, v in p["views"].items() if "seq" in v]
    assert sorted(member) == sorted((r["camera"], r["seq"]) for r in views if "part" in r and r["part"] is not None)
    assert len(member) == len(set(member))                                  # each view in one part only
    complete = [p for p in parts if not p["missing"]]
    assert len(complete) >= 3 and all(p["inspected"] for p in complete)
    assert all(p["ng"] == any(v["ng"] for v in p["views"].values()) for p in complete)
    assert all(p["missing"] in (["gige"], ["belt"]) and not p["inspected"] or p["ng"] for p in parts if p["missing"])


def test_part_rows_reach_mqtt_as_logged(station_bundles, scored, tmp_path):
    """Part rows go to PREFIX/parts (a real mosquitto), field for field as in the verdict log; view rows to
    PREFIX/verdicts with their camera and part."""
    from line_servers import MOSQUITTO, MosquittoBroker, MqttCollector

    pytest.importorskip("paho.mqtt")
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)")
    from fair_edge.line.settings import MqttSettings

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"top": [0, 11], "left": [1, 2]})
    broker = MosquittoBroker(tmp_path).start()
    collector = None
    try:
        collector = MqttCollector(broker.port, "cell/#")
        cfg = StationConfig(console=NO_CONSOLE, bundle=station_bundles[0].root, backend="onnxruntime",
                            threshold=threshold, output=tmp_path / "o", mqtt=MqttSettings(url=f"mqtt://127.0.0.1:{broker.port}/cell"),
                            cameras=tuple(ViewSettings(c, str(folders[c])) for c in ("top", "left")),
                            group=GroupSettings(match="sequence"), record=RecordSettings(dir=tmp_path / "o")).checked()
        run_cell(cfg, threading.Event())
        deadline = time.monotonic() + 10
        while ((len(collector.messages.get("cell/parts", [])) < 2 or not collector.messages.get("cell/summary"))
               and time.monotonic() < deadline):
            time.sleep(0.05)
    finally:
        if collector is not None:
            collector.close()
        broker.close()
    views, parts = rows(tmp_path / "o")
    assert sorted(collector.messages["cell/parts"], key=lambda p: p["part"]) == sorted(parts, key=lambda p: p["part"])
    assert [p["ng"] for p in sorted(parts, key=lambda p: p["part"])] == [False, True]
    on_wire = sorted((r["camera"], r["seq"], r["part"]) for r in collector.messages["cell/verdicts"])
    assert on_wire == sorted((r["camera"], r["seq"], r["part"]) for r in views) and len(on_wire) == 4
    # the retained summary carries the cell's counters as summary.json does (it was published before they were in:
    # cameras {} and parts {})
    on_mqtt, written = collector.messages["cell/summary"][-1], json.loads((tmp_path / "o" / "summary.json").read_text())
    assert on_mqtt["parts"] == written["parts"] and on_mqtt["parts"]["parts"] == 2
    assert on_mqtt["cameras"].keys() == written["cameras"].keys() == {"top", "left"}
    assert on_mqtt["rejects"] == written["rejects"]


def test_fair_edge_run_takes_a_station_file_with_cameras(station_bundles, scored, tmp_path):
    """`fair-edge run --station cell.yaml` runs the cell (summary per camera and per part, exit 0); --camera with
    a cameras: list is refused, naming the file; --fps paces every camera."""
    import yaml
    from typer.testing import CliRunner

    from fair_edge.cli import app

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"top": [0, 1, 11], "left": [2, 3, 4]})
    station = tmp_path / "cell.yaml"
    station.write_text(yaml.safe_dump({
        "bundle": str(station_bundles[0].root), "backend": "onnxruntime", "output": str(tmp_path / "o"),
        "decision": {"threshold": threshold}, "console": {"enabled": False},
        "cameras": [{"name": "top", "source": str(folders["top"])}, {"name": "left", "source": str(folders["left"])}],
        "group": {"match": "sequence"}}))
    result = CliRunner().invoke(app, ["run", "--station", str(station), "--fps", "20"], terminal_width=200)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["parts"]["parts"] == 3 and summary["parts"]["ng"] == 1
    assert {c: s["inspected"] for c, s in summary["cameras"].items()} == {"top": 3, "left": 3}
    text = " ".join(result.output.split())
    assert "3: 1 NG, 0 not inspected" in text
    assert "camera top" in text and "3 inspected, 1 NG, 0" in text and "camera left" in text
    refused = CliRunner().invoke(app, ["run", "--station", str(station), "--camera", "0"], terminal_width=200)
    assert refused.exit_code == 2 and "lists 2 cameras" in " ".join(refused.output.split())


def test_the_plc_handshake_answers_each_part_once_from_all_its_views(station_bundles, scored, tmp_path):
    """group.match: handshake against a real Modbus server whose PLC program triggers 8 parts: each trigger makes
    both cameras take a frame, the views are matched by the PLC's part id, and the PLC reads one result per part id,
    NG exactly when a view was NG, with the worst view's score."""
    from line_servers import wait_for
    from fair_edge.line.handshake.settings import HandshakeSettings, RESULT_NG, RESULT_OK
    from fair_edge.line.handshake.sim_handshake_plc import ModbusHandshakePlc

    images, threshold = scored
    folders = camera_folders(tmp_path, images, {"top": [0, 1, 2, 11], "left": [3, 4, 5, 6]})
    parts = 8
    plc = ModbusHandshakePlc().start(rate_hz=4, parts=parts)
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: wait_for(lambda: len(plc.program.results) >= parts, 90) and stop.set())
    watcher.start()
    try:
        cfg = StationConfig(console=NO_CONSOLE,
            bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=tmp_path / "o",
            cameras=tuple(ViewSettings(c, str(folders[c]), loop=True) for c in ("top", "left")),
            group=GroupSettings(match="handshake"), record=RecordSettings(dir=tmp_path / "o"),
            reject=RejectSettings(handshake=HandshakeSettings(url=plc.url))).checked()
        summary = run_cell(cfg, stop, duration_s=120)
        watcher.join()
        check = plc.program.check()
    finally:
        plc.close()
    assert check["triggered"] == check["answered"] == check["unique"] == parts and check["in_order"]
    assert check["unknown"] == check["duplicates"] == 0 and summary.fault == ""
    views, part_rows = rows(tmp_path / "o")
    by_plc = {p["plc_part_id"]: p for p in part_rows}
    assert len(part_rows) == parts and len(views) == 2 * parts
    for _, plc_part, result, score in plc.program.results:
        row = by_plc[plc_part]
        assert row["missing"] == [] and result == (RESULT_NG if row["ng"] else RESULT_OK)
        assert score == pytest.approx(row["score"], abs=0.0006)
    assert [by_plc[p]["ng"] for p in sorted(by_plc)][:8] == [False, False, False, True] * 2   # top's 4th view is NG
    assert summary.rejects["handshake"]["acked"] == parts


def test_part_timeout_must_end_before_the_gate_and_the_plc_time_out():
    from fair_edge.line.handshake.settings import HandshakeSettings
    from fair_edge.station.cell_timing import part_timeout_s

    cams = (ViewSettings("a", "1"), ViewSettings("b", "2"))
    gate = StationConfig(cameras=cams, reject=RejectSettings(sinks=("log://",), delay_ms=400))
    assert part_timeout_s(gate) == pytest.approx(0.4)                                # unset: the due time
    with pytest.raises(ConfigError, match=r"at most reject.delay_ms \(400\), found 500"):
        part_timeout_s(StationConfig(cameras=cams, group=GroupSettings(part_timeout_ms=500), reject=gate.reject))
    plc = StationConfig(cameras=cams, group=GroupSettings(match="handshake"),
                        reject=RejectSettings(handshake=HandshakeSettings(url="modbus://127.0.0.1:1?unit=1",
                                                                          result_timeout_ms=800)))
    assert part_timeout_s(plc) == pytest.approx(0.4)                                 # half the PLC's time-out
    with pytest.raises(ConfigError, match="the PLC would time the part out first"):
        part_timeout_s(StationConfig(cameras=cams, group=GroupSettings(match="handshake", part_timeout_ms=800),
                                     reject=plc.reject))
    assert part_timeout_s(StationConfig(cameras=cams)) == 1.0                        # no gate: a second


def test_a_lanes_dead_reject_output_holds_the_stations_fault_output(station_bundles, scored, tmp_path):
    """group.by: lane, lane a's coil on a port where no PLC listens: its NG part's pulse is missed, and that lane
    fault reaches the station's fault output (reject.fault_sinks, a coil that rises) and the reason the tick
    shows names the lane, never another lane (lane b is named only for a fault of its own output, which its gate
    counted: a slow machine's late verdict there is a fail-safe pulse that may be missed too). Before, a lane's
    faults reached neither: its rejects were lost with only a log line."""
    import socket

    from fair_edge.line.sim_sink_plc import SimulatedPlc

    images, threshold = scored
    with socket.socket() as s:                          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    folders = camera_folders(tmp_path, images, {"a": [0, 11, 1, 2], "b": [3, 4, 5, 6]})
    plc = SimulatedPlc().start()
    seen: list[str] = []
    stop = threading.Event()

    def tick(insp):
        seen.append(insp.summary.rejects.get("fault_output", ""))
        if "lane a:" in seen[-1]:
            stop.set()

    try:
        cfg = StationConfig(console=NO_CONSOLE,
            bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=tmp_path / "out",
            cameras=(ViewSettings("a", str(folders["a"]), fps=4, loop=True, reject=(f"modbus://127.0.0.1:{dead}?unit=1&coil=0",)),
                     ViewSettings("b", str(folders["b"]), fps=4, loop=True,
                                  reject=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0",))),
            group=GroupSettings(by="lane"), record=RecordSettings(dir=tmp_path / "out"),
            reject=RejectSettings(fault_sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=1",), delay_ms=1200,
                                  pulse_ms=20, min_gap_ms=10, late_ms=10)).checked()
        summary = run_cell(cfg, stop, on_tick=tick, duration_s=60)
        time.sleep(0.1)
        fault_rises = plc.rises(1)
    finally:
        plc.close()
    assert stop.is_set()                                # ended by the test on seeing the lane's fault
    named = [pair for s in seen for pair in lane_reasons(s)]
    assert any(lane == "a" and f":{dead} " in why for lane, why in named)   # lane a, for its dead output
    lane_b = summary.rejects["lanes"]["b"]
    b_faults = lane_b["sink_missed"] + lane_b["sink_unconfirmed"] + lane_b["sink_link_downs"] + lane_b["alarms"]
    assert all(lane == "a" or (f":{dead} " not in why and b_faults) for lane, why in named), (named, lane_b)
    assert len(fault_rises) >= 1


def lane_reasons(text: str) -> list[tuple[str, str]]:
    """A fault-output text split into its lanes' reasons: ``"lane a: R1; camera c: R2; lane b: R3"`` ->
    ``[("a", "R1; camera c: R2"), ("b", "R3")]`` (a reason may hold "; " itself)."""
    pieces = re.split(r"(?:^|; )lane (\w+): ", text)
    return list(zip(pieces[1::2], pieces[2::2]))


def test_a_camera_still_down_when_the_cell_stops_is_the_runs_fault_and_keeps_the_fault_output(station_bundles, scored,
                                                                                             tmp_path, caplog):
    """Audit: finish_cell asked each camera watch after inspection had stopped the cameras, so a camera still
    reconnecting read as back ("camera back", its fault output channel cleared) and was no fault of the run. Now
    it is the run's fault, named (exit code 3), its outage counted in its lost frames, its fault output left on."""
    import logging

    from fair_edge.cameras import CaptureState, LineSource
    from fair_edge.station.run import EXIT_FAULT, exit_code

    images, threshold = scored
    good = images[:4]
    sources = {"top": LineSource(good, fps=10, loop=True, name="top"),
               "right": LineSource(good, fps=10, loop=True, fail_at={3: "dead"}, name="right")}
    stop, down_ticks = threading.Event(), []

    def tick(insp):   # ticks are >= 0.5 s apart: two that see the outage put >= 0.5 s of it before the stop
        if insp.capture.captures["right"].stats().state is CaptureState.RECONNECTING:
            down_ticks.append(insp.summary.rejects.get("fault_output"))
            if len(down_ticks) >= 2:
                stop.set()

    cfg = StationConfig(bundle=station_bundles[0].root, backend="onnxruntime", threshold=threshold, output=tmp_path,
                        cameras=tuple(ViewSettings(c, c) for c in sources), group=GroupSettings(match="sequence"),
                        record=RecordSettings(dir=tmp_path), console=ConsoleSettings(enabled=False),
                        reject=RejectSettings(fault_sinks=("log://test.cell.down.fault",), delay_ms=300)).checked()
    caplog.set_level(logging.INFO, logger="test.cell.down.fault")
    summary = run_cell(cfg, stop, sources=sources, on_tick=tick, duration_s=120)
    assert stop.is_set() and down_ticks[-1].startswith("camera right: camera reconnecting: right: ")   # its cause
    assert summary.fault.startswith("camera right: camera down when the run stopped: reconnecting (right: ")
    assert exit_code(summary) == EXIT_FAULT
    assert summary.cameras["right"]["lost"] >= 4   # >= 0.5 s at 10 fps, minus the frame seen
    assert "camera back" not in caplog.text
    levels = [r.fault_active for r in caplog.records if r.name == "test.cell.down.fault"]
    assert levels and all(levels)
    assert json.loads((tmp_path / "summary.json").read_text())["fault"] == summary.fault

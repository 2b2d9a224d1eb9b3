"""A camera that changes under a running station (audit camerachange): what the station says and does.

- A frame whose image is no numpy array (None, a list) from a source: the station's check made a malformed-frame
  verdict, then ``Inspector._emit`` read ``frame.image.shape`` and the loop died (AttributeError, no summary.json,
  parts abandoned). Now it is an NG verdict like any malformed frame; the recorder counts its NG image
  ``images_failed`` and the console keeps no frame for it.
- A camera replaced by an unsupported model (every reopen refused) showed only "camera reconnecting" as the live
  fault reason; now the outage's cause follows it (``CaptureStats.outage_cause``).
- Malformed frames logged three warnings per frame (inspector, and two per part at the gate); now once per camera
  and frame format (with the pixel-format fix, naming the station's camera), and the gate groups its lines.
- Frames whose map grid differs from the calibration's were NG but counted only in ``ng``; now also ``malformed``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureThread, LineSource, SourceBase
from fair_edge.cameras.base import CaptureState, CaptureStats
from fair_edge.errors import CameraError
from fair_edge.line.gate_alarms import GAP_LOG_S
from fair_edge.line.scheduler import UNINSPECTED, RejectScheduler
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.records import Frame, Verdict
from fair_edge.station.config import CameraSettings, ConsoleSettings, StationConfig
from fair_edge.station.inspector import Inspector
from fair_edge.station.camera import CameraWatch, camera_fault
from fair_edge.tiling import TilingConfig
from line_replay import RecordingSink
from test_inspector_nan_verdict import ValueScorer, tiled_scorer
from test_line_scheduler import _Belt

GOOD = np.full((48, 64, 3), 100, np.uint8)
NO_CONSOLE = ConsoleSettings(enabled=False)


class SwappedLine(LineSource):
    """A ``LineSource`` whose frames at the slots of ``swapped`` carry another image instead (a camera changed under
    the station: None, a list, a 16-bit array), passed on as a source hands them (``capture.freeze``)."""

    def __init__(self, images, swapped: dict, **kw) -> None:
        super().__init__(images, **kw)
        self.swapped = swapped

    def _grab(self):
        image, label = super()._grab()
        return self.swapped.get(self._seq, image), label


# ----------------------------------------------------------------------------- 1. no array: the loop goes on
@pytest.mark.parametrize("odd", [None, GOOD.tolist()], ids=["none", "list"])
def test_a_frame_whose_image_is_no_array_is_a_malformed_verdict_and_the_loop_goes_on(odd):
    shown = []
    inspector = Inspector(capture=None, scorer=ValueScorer(0.1), threshold=0.5,
                          on_verdict=[lambda frame, verdict, amap: shown.append((verdict.seq, amap))])
    verdicts = inspector.inspect([Frame(0, 0.0, np.zeros_like(GOOD)), Frame(1, 0.0, odd)])
    assert verdicts[0].ng is False and verdicts[0].error == ""
    assert verdicts[1].ng is True and verdicts[1].score is None and verdicts[1].error.startswith("malformed frame:")
    assert inspector.summary.malformed == 1 and inspector.summary.callback_errors == 0
    assert dict(shown)[1] is None and dict(shown)[0] is not None   # no map, and no frame size read to place one


def test_the_recorder_counts_an_ng_image_it_cannot_save_for_a_frame_with_no_array(tmp_path, caplog):
    from fair_edge.line.recorder import Recorder

    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0)) as rec:
        for seq, odd in enumerate((None, [[1, 2]])):
            rec.record(Frame(seq, 1.0, odd, "t"), Verdict(seq, 1.0, None, 0.5, True, 0.01, error="malformed frame: x"))
        rec.record(Frame(2, 1.0, GOOD, "t"), Verdict(2, 1.0, 0.9, 0.5, True, 0.01), np.ones((4, 4), np.float32))
        rec.flush()
        counts = rec.stats()
    assert counts["logged"] == 3 and counts["images_failed"] == 2 and counts["images"] == 1
    assert counts["write_errors"] == 0   # not the disk
    assert "found NoneType" in caplog.text and "Traceback" not in caplog.text


def test_the_console_keeps_no_frame_for_an_image_that_is_no_array(tmp_path):
    from fair_edge.console.feed import StationFeed
    from fair_edge.console.render import JpegCache
    from fair_edge.console.views import latest_jpeg

    feed = StationFeed(ConsoleSettings(enabled=False, keep_frames=4), tmp_path)
    feed.observe(Frame(1, 0.0, [[1, 2]]), Verdict(1, 0.0, None, 0.5, True, 0.01, error="malformed frame: x"), None)
    assert feed.latest.verdict.seq == 1 and feed.kept_part(1) is not None and feed.kept_part(1).frame is None
    assert latest_jpeg(feed, JpegCache()) is None


@pytest.mark.parametrize("odd", [np.array(7, np.uint8), np.zeros((0, 0, 3), np.uint8), np.zeros((0, 64), np.uint8),
                                 np.zeros(64, np.uint8), np.zeros((48, 64, 2), np.uint8), np.zeros((48, 64), bool),
                                 np.zeros((48, 64), np.uint16)],
                         ids=["0-d", "empty", "empty-gray", "1-d", "2-channel", "bool", "uint16"])
def test_the_console_keeps_no_frame_for_an_array_it_cannot_draw(tmp_path, odd):
    """A malformed frame that is an array of no frame format was kept as the part's frame: drawing it for the live
    page raised in OpenCV or divided by zero (0-d, empty, 2 channels, bool; a 1-d array longer than 480 too), a 500
    on every poll of live.jpg, or drew a picture of what the station refused to inspect (a short 1-d array, 16 bits).
    Only the format the station inspects is drawn now (``feed.drawable_frame``); any other is kept as no frame, as a
    frame that is no array at all: no picture (404), no traceback."""
    from fair_edge.console.feed import StationFeed
    from fair_edge.console.render import JpegCache
    from fair_edge.console.views import latest_jpeg, part_jpeg

    feed = StationFeed(ConsoleSettings(enabled=False, keep_frames=4), tmp_path)
    feed.observe(Frame(1, 0.0, odd), Verdict(1, 0.0, None, 0.5, True, 0.01, error="malformed frame: x"), None)
    assert feed.kept_part(1) is not None and feed.kept_part(1).frame is None
    assert latest_jpeg(feed, JpegCache()) is None and part_jpeg(feed, JpegCache(), 1) is None


def test_a_frame_with_a_side_that_scales_below_one_pixel_is_still_drawn():
    """A 2 x 2000 px frame (inspected: H, W >= 2) scaled to 480 px had a width of round(0.48) = 0: OpenCV's resize
    raised. Each side is at least 1 px now."""
    from fair_edge.console.render import overlay_jpeg

    data = overlay_jpeg(np.full((2000, 2), 100, np.uint8), None, 0.5)
    assert data[:2] == b"\xff\xd8"   # a JPEG


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from fair_edge.bench.run import synthetic_bundle, synthetic_model

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, GOOD.shape, np.uint8) for _ in range(4)]
    return synthetic_bundle(tmp_path_factory.mktemp("camerain") / "bundle", synthetic_model("fair", 8, 32),
                            calib_frames=frames)


def station(bundle, out, **kw) -> StationConfig:
    """A station on ``bundle`` into ``out``; its camera queue blocks (a loaded machine drops no frame)."""
    return StationConfig(bundle=bundle.root, backend="onnxruntime", output=out, record=RecordSettings(dir=out, min_free_mb=0),
                         camera=CameraSettings(source="given", queue_size=8, full_policy="block"),
                         console=NO_CONSOLE, reject=RejectSettings(sinks=("log://test.camerain.rejects",),
                                                                   delay_ms=300), **kw)


def run_station(cfg, source):
    """``station.run.run_station`` on ``source`` until it ends; its summary."""
    from fair_edge.station.run import run_station as run

    return run(cfg, threading.Event(), source=source)


@pytest.mark.parametrize("odd", [None, GOOD.tolist()], ids=["none", "list"])
def test_a_station_given_a_frame_with_no_array_runs_on_and_writes_its_summary(bundle, tmp_path, odd):
    source = SwappedLine([GOOD] * 6, {3: odd}, fps=0, loop=False)   # fps 0: no slot skipped for a late reader
    summary = run_station(station(bundle, tmp_path), source)
    assert summary.inspected == 6 and summary.malformed == 1 and summary.fault == ""
    assert summary.rejects["abandoned"] == 0 and summary.rejects["error_verdicts"] == 1
    assert summary.recorder["images_failed"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["malformed"] == 1
    rows = [json.loads(line) for line in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in rows if (r.get("error") or "").startswith("malformed frame:")] == [3]


def test_a_cell_whose_camera_gives_a_frame_with_no_array_runs_on(bundle, tmp_path):
    from fair_edge.station.cell import run_cell
    from fair_edge.station.views import GroupSettings, ViewSettings

    # fps 0: each frame when its reader asks (a clocked line skips a slot its late reader missed: 7 inspected of 8)
    sources = {"a": LineSource([GOOD] * 4, fps=0, loop=False, name="a"),
               "b": SwappedLine([GOOD] * 4, {2: None}, fps=0, loop=False, name="b")}
    cfg = station(bundle, tmp_path, cameras=tuple(ViewSettings(c, c) for c in sources),
                  group=GroupSettings(match="sequence")).checked()
    summary = run_cell(cfg, threading.Event(), sources=sources)
    assert summary.inspected == 8 and summary.malformed == 1 and summary.fault == ""
    assert summary.cameras["b"]["inspected"] == 4 and summary.parts["parts"] == 4
    assert json.loads((tmp_path / "summary.json").read_text())["malformed"] == 1


# ----------------------------------------------------------------------------- 2. the live reason names the cause
def test_a_reconnecting_cameras_fault_reason_names_the_outage_cause():
    from fair_edge.station.camera import CAUSE_CHARS

    cause = "top: frame must be a uint8 numpy array (H, W, 3) BGR or (H, W) gray; found uint16. Set the camera ..."
    stats = CaptureStats(state=CaptureState.RECONNECTING, outage_cause=cause)
    assert camera_fault(stats) == f"camera reconnecting: {cause}"
    long = CaptureStats(state=CaptureState.RECONNECTING, outage_cause="link\nlost " + "x" * 500)
    reason = camera_fault(long)
    assert reason.startswith("camera reconnecting: link lost xx") and reason.endswith("...") and "\n" not in reason
    assert len(reason) == len("camera reconnecting: ") + CAUSE_CHARS
    assert camera_fault(CaptureStats(state=CaptureState.RECONNECTING)) == "camera reconnecting"
    assert camera_fault(CaptureStats(state=CaptureState.RUNNING, outage_cause="old")) == ""


class ReplacedCamera(SourceBase):
    """A camera that loses its link after ``good`` frames and comes back as a model delivering 16-bit frames: each
    reopen is refused (``check_image``) naming the dtype found."""

    def __init__(self, good: int = 2) -> None:
        super().__init__()
        self.name, self.good, self.reads, self.opens = "top", good, 0, 0

    @property
    def on_demand(self) -> bool:
        return True

    def _connect(self):
        self.opens += 1
        return (GOOD if self.opens == 1 else GOOD.astype(np.uint16) * 257), self.name

    def _grab(self):
        self.reads += 1
        if self.reads > self.good:
            raise CameraError(f"{self.name}: link lost")
        return GOOD, self.name

    def _release(self) -> None:
        pass


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_a_camera_replaced_by_an_unsupported_model_shows_why_on_the_fault_output():
    faults = RecordingSink("fault")
    settings = CaptureSettings(queue_size=8, backoff_initial_s=0.01, backoff_max_s=0.01)
    with RejectScheduler(RejectSettings(), sinks=RecordingSink(), fault_sinks=faults) as scheduler, \
            CaptureThread(ReplacedCamera(), settings) as capture:
        watch = CameraWatch(capture, scheduler, "top")
        assert wait_for(lambda: "uint16" in watch()), watch.reason
        stats = capture.stats()
        assert stats.state is CaptureState.RECONNECTING and "found uint16" in stats.outage_cause
        assert watch.reason.startswith("camera top: camera reconnecting: top: frame must be a uint8 numpy array")
        assert "8-bit mono or BGR" in watch.reason and scheduler.fault_reason == watch.reason
        assert faults.faults[-1] == (True, watch.reason)


# ----------------------------------------------------------------------------- 3. one line, not three per frame
def station_records(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name and r.levelno >= logging.WARNING]


def test_malformed_frames_are_logged_once_per_camera_and_format_with_the_fix(caplog):
    capture = SimpleNamespace(source=SimpleNamespace(name="folder:/line"))   # the station's one camera
    inspector = Inspector(capture=capture, scorer=ValueScorer(0.1), threshold=0.5)
    u16 = GOOD.astype(np.uint16)
    frames = [Frame(i, 0.0, u16, source=f"{i:03d}.png") for i in range(5)] + [Frame(5, 0.0, None, source="x.png")]
    inspector.inspect(frames)
    assert inspector.summary.malformed == 6 and inspector.summary.ng == 6
    lines = [r.getMessage() for r in station_records(caplog, "fair_edge.station.inspector")]
    assert len(lines) == 2, lines   # uint16 once, None once
    assert all(line.startswith("camera folder:/line: frames rejected as malformed:") for line in lines)
    assert "found uint16" in lines[0] and "found NoneType" in lines[1]
    assert all("Set the camera to an 8-bit mono or BGR pixel format." in line for line in lines)
    assert not any(".png" in line for line in lines)   # the camera, not each frame's source


def test_frames_smaller_than_the_tiles_are_logged_once_per_camera_and_size(caplog):
    inspector = Inspector(capture=None, scorer=tiled_scorer(TilingConfig(tile=64)), threshold=0.5, grid=(24, 24))
    small = np.zeros((48, 48, 3), np.uint8)
    inspector.inspect([Frame(i, 0.0, small, camera="side") for i in range(4)])
    lines = [r.getMessage() for r in station_records(caplog, "fair_edge.station.inspector")]
    assert inspector.summary.malformed == 4 and len(lines) == 1, lines
    assert lines[0].startswith("camera side: frames rejected as malformed: this 48 x 48 px frame is smaller")
    assert "8-bit mono" not in lines[0]   # its own fix: the resolution


@pytest.mark.parametrize("policy", ["reject", "alarm"])
def test_the_gate_groups_the_lines_of_parts_decided_uninspected(policy, caplog):
    belt, sink, rows = _Belt(), RecordingSink(), []
    settings = RejectSettings(delay_ms=0, encoder_distance=100, pulse_ms=1, min_gap_ms=0, late_ms=10_000,
                              fail_safe=policy)
    caplog.set_level(logging.WARNING, logger="fair_edge.line.scheduler")
    with RejectScheduler(settings, sinks=sink, fault_sinks=RecordingSink("fault"), encoder=belt,
                         on_part=rows.append) as s:
        for seq in range(30):
            s.note_capture(seq)
            error = Verdict(seq, 0.0, None, 0.5, True, time.monotonic(), "", "malformed frame: found uint16.")
            assert s.submit(error) == UNINSPECTED
        belt.n = 100
        assert s.wait_idle(10.0)
        stats = s.stats()
    outcome = "rejected_uninspected" if policy == "reject" else "passed_uninspected"
    assert stats[outcome] == 30 and stats["error_verdicts"] == 30   # every part counted and decided
    assert stats["alarms"] == (30 if policy == "alarm" else 0)
    assert len([r for r in rows if r["event"] == "gate"]) == 30
    lines = [r.getMessage() for r in station_records(caplog, "fair_edge.line.scheduler")]
    # the first part at once, the rest together (one line per 10 s window, at close at the latest): not one or two
    # lines per part
    assert 2 <= len(lines) <= 4, lines
    assert lines[0].startswith("reject alarm: part seq 0 " if policy == "alarm" else "reject gate: part seq 0 ")
    assert "verdict error (malformed frame: found uint16.)" in lines[0]
    assert sum(int(re.search(r"(\d+) more parts? ", line).group(1)) for line in lines[1:]) == 29, lines


def test_the_uninspected_log_groups_parts_by_window_naming_the_reasons():
    from fair_edge.line.gate_alarms import UninspectedLog

    now = [0.0]
    grouped = UninspectedLog("reject", clock=lambda: now[0])
    first = grouped.note((1, "verdict error (malformed frame: found uint16.)"))
    assert first.startswith("part seq 1 rejected uninspected (fail_safe: reject): verdict error (malformed")
    assert grouped.note((2, "no verdict by its due time")) is None
    assert grouped.note((3, "no verdict by its due time")) is None
    now[0] = GAP_LOG_S
    line = grouped.note((4, "verdict error (malformed frame: found uint16.)"))
    assert line.startswith("3 more parts rejected uninspected (fail_safe: reject) in the last 10.0 s, "
                           "seq 2 .. 4: 2, 3, 4")
    assert "no verdict by its due time (2)" in line and "found uint16.) (1)" in line
    assert grouped.close() is None


# ----------------------------------------------------------------------------- 4. off the calibrated grid: counted
def test_a_frame_off_the_calibrated_grid_is_counted_malformed():
    inspector = Inspector(capture=None, scorer=tiled_scorer(TilingConfig(tile=64)), threshold=0.5, grid=(24, 24))
    verdicts = inspector.inspect([Frame(0, 0.0, np.zeros((96, 96, 3), np.uint8)),
                                  Frame(1, 0.0, np.zeros((192, 192, 3), np.uint8))])
    assert verdicts[0].error == "" and "threshold calibrated on 24 x 24 maps" in verdicts[1].error
    assert verdicts[1].ng is True
    assert inspector.summary.malformed == 1 and inspector.summary.ng == 1 and inspector.summary.inference_errors == 0

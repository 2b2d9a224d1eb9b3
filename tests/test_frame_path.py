"""docs/architecture.md names the files a frame passes from camera to reject pulse: a real station (an OpenCV
source over a video, ONNX Runtime, a simulated Modbus PLC) runs under a profiler, and the files its threads
enter while frames pass, outside the side work (verdict callbacks, the loop's tick), must be exactly the
documented steps, at most 8. Also: each frame is checked once, the untiled bundle skips the tiler, and the
CPU path hands NumPy arrays to ONNX Runtime without going through torch."""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SOURCES = tuple(f"{ROOT / d}/" for d in ("fair_edge", "cameras", "export", "calibration"))
# beside the path: verdict callbacks (the line side, the recorder and its writers, the console), the loop's ~0.5 s tick
# (its camera watch) and its systemd watchdog call, the reject gate's fault output and alarm journal (on its own and
# the sinks' threads, never deciding a pulse)
SIDE = {"fair_edge/line/recorder.py", "fair_edge/line/row_logs.py", "fair_edge/line/image_writer.py",
        "fair_edge/line/disk_room.py", "fair_edge/line/ng_images.py", "fair_edge/line/jsonl.py", "fair_edge/plots.py",
        "fair_edge/console/station_hook.py", "fair_edge/console/feed.py", "fair_edge/console/drift.py",
        "fair_edge/station/run.py", "fair_edge/station/line_side.py", "fair_edge/station/camera.py",
        "fair_edge/station/notify.py", "fair_edge/line/gate_alarms.py", "fair_edge/line/latched_alarms.py",
        "fair_edge/line/grouped_log.py"}


def documented_steps() -> list[str]:
    """The file column of the doc's step table, in order."""
    rows = re.findall(r"^\| (\d+) \| [^|]+ \| `([^`]+)` \|", DOC.read_text(), re.M)
    assert [int(n) for n, _ in rows] == list(range(1, len(rows) + 1))
    return [f for _, f in rows]


COUNTED = {("fair_edge/preprocess.py", "check_frame"), ("cameras/capture.py", "check_image"),
           ("fair_edge/station/inspector.py", "Inspector._emit"), ("fair_edge/runtime/backends.py", "OnnxRuntimeBackend.infer")}
COUNTED_FILES = {rel for rel, _ in COUNTED}


def repo_file(code) -> str | None:
    """The repository-relative path of a code object's file, or None outside the project's sources."""
    if not code.co_filename.startswith(SOURCES):
        return None
    return Path(code.co_filename).relative_to(ROOT).as_posix()


def qualname(frame) -> str:
    """The qualified name (``Class.method``) of the code a frame runs: ``co_qualname`` from Python 3.11, else
    ``derived_qualname`` (Python 3.10)."""
    return getattr(frame.f_code, "co_qualname", None) or derived_qualname(frame)


def derived_qualname(frame) -> str:
    """``co_qualname`` without Python 3.11: for a method, the class up ``type(self)``'s MRO whose attribute runs this
    very code object, then the name (``Inspector._emit`` for a subclass instance too); else the bare ``co_name``
    (enough for ``COUNTED``'s module-level functions; a nested function's would lack its ``<locals>`` prefix)."""
    code = frame.f_code
    owner = frame.f_locals.get("self") if code.co_argcount else None
    for cls in type(owner).__mro__ if owner is not None else ():
        if getattr(cls.__dict__.get(code.co_name), "__code__", None) is code:
            return f"{cls.__qualname__}.{code.co_name}"
    return code.co_name


def test_derived_qualname_names_the_defining_class_as_co_qualname_does():
    class Base:
        def method(self):
            return sys._getframe()

    class Sub(Base):
        pass

    def plain():
        return sys._getframe()

    frame = Sub().method()
    assert derived_qualname(frame).endswith("<locals>.Base.method") and derived_qualname(plain()) == "plain"
    assert qualname(frame) == derived_qualname(frame)  # co_qualname on 3.11+, the same name


LOOP = "fair_edge/station/inspector.py"  # the inspection loop: what called it (run_station) is not the path
PATH_THREADS = ("capture", "MainThread", "reject", "sink")  # the threads a frame (then its reject event) passes


def on_the_side(frame) -> bool:
    """Whether this call runs on behalf of the side work: a ``SIDE`` file up its stack, below the inspection
    loop's frames (the loop's callbacks and tick; run_station, which started the loop, does not count)."""
    while frame is not None and repo_file(frame.f_code) != LOOP:
        if repo_file(frame.f_code) in SIDE:
            return True
        frame = frame.f_back
    return False


class PathTrace:
    """Calls of the ``COUNTED`` functions over the whole run; while ``on`` (frames passing in steady state),
    per thread the repository files entered on the path (``files``) and on the side (``side``), and the
    calls of ``torch.from_numpy``."""

    def __init__(self) -> None:
        self.on = False
        self.files: dict[str, set[str]] = collections.defaultdict(set)
        self.side: dict[str, set[str]] = collections.defaultdict(set)
        self.calls: collections.Counter = collections.Counter()

    def __call__(self, frame, event, arg) -> None:
        thread = threading.current_thread().name.split("-")[0]
        if event == "c_call" and self.on and getattr(arg, "__name__", "") == "from_numpy":
            self.calls[(thread, "torch.from_numpy")] += 1
        rel = repo_file(frame.f_code) if event == "call" else None
        if rel is None:
            return
        if rel in COUNTED_FILES and (rel, qualname(frame)) in COUNTED:
            self.calls[(rel, qualname(frame))] += 1
        if self.on:
            (self.side if on_the_side(frame) else self.files)[thread].add(rel)


class PacedSource:
    """An OpenCV source read at 10 frames/s (a camera's pace) that switches the trace on for frames 30..39."""

    def __init__(self, source, trace: PathTrace) -> None:
        self.source, self.trace, self.count = source, trace, 0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def read(self):
        time.sleep(0.1)
        self.count += 1
        self.trace.on = 30 <= self.count < 40
        return self.source.read()


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    pytest.importorskip("pymodbus")
    from fair_edge.bench.run import synthetic_bundle, synthetic_model
    from fair_edge.cameras.opencv import OpenCVSource
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.line.settings import RecordSettings, RejectSettings
    from fair_edge.line.sim_sink_plc import SimulatedPlc
    from fair_edge.station.config import CameraSettings, StationConfig
    from fair_edge.station.run import run_station

    work = tmp_path_factory.mktemp("frame-path")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (240, 320, 3), np.uint8) for _ in range(8)]
    bundle = synthetic_bundle(work / "bundle", synthetic_model("fair", 32, 64), calib_frames=frames)
    video = work / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(60):
        writer.write(frames[i % len(frames)])
    writer.release()
    trace = PathTrace()
    plc = SimulatedPlc().start()
    try:
        # full_policy block: a loaded machine slows the loop but drops no frame, so all 50 are inspected
        cfg = StationConfig(camera=CameraSettings(source=str(video), queue_size=8, full_policy="block"),
                            bundle=bundle.root,
                            backend="onnxruntime", threshold=1e-9, output=work / "out",  # every part NG: pulses
                            record=RecordSettings(dir=work / "out"), console=ConsoleSettings(port=0),
                            reject=RejectSettings(sinks=(f"modbus://127.0.0.1:{plc.port}?coil=0",), delay_ms=300.0))
        # a CLI test earlier in the session leaves fair-edge's own stderr handler (cli/root.py) on the root logger: a
        # warning a loaded machine makes in a path thread (a late write) would run it and count cli/root.py on the path
        root_logger = logging.getLogger()
        cli_handlers = [h for h in root_logger.handlers
                        if any(type(part).__module__.startswith("fair_edge.") for part in (h, h.formatter))]
        for handler in cli_handlers:
            root_logger.removeHandler(handler)
        threading.setprofile(trace)
        sys.setprofile(trace)
        try:
            summary = run_station(cfg, threading.Event(), max_frames=50, source=PacedSource(OpenCVSource(str(video)), trace))
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            for handler in cli_handlers:
                root_logger.addHandler(handler)
        writes = list(plc.writes)
    finally:
        plc.stop()
    return trace, summary, writes


def test_the_documented_path_is_the_one_frames_take(traced):
    trace, summary, writes = traced
    steps = documented_steps()
    # every part is NG (threshold 1e-9): each is pulsed, as NG or, when a loaded machine made its verdict late, as
    # uninspected; both run the same scheduler and sink code
    pulsed = summary.rejects["rejected_ng"] + summary.rejects["rejected_uninspected"]
    assert summary.inspected == 50 and pulsed > 0 and writes
    path = set().union(*(files for thread, files in trace.files.items() if thread in PATH_THREADS))
    assert len(steps) == len(set(steps)) <= 10  # 8 before defect regions (issue #30): regions.py, station/zones.py
    assert path == set(steps), (sorted(path - set(steps)), sorted(set(steps) - path))  # no more, no fewer
    assert trace.files["capture"] >= {"cameras/opencv.py", "cameras/capture.py", "fair_edge/line/scheduler.py"}
    assert trace.files["sink"] >= {"fair_edge/line/sinks/base.py", "fair_edge/line/sinks/modbus.py"}
    text = DOC.read_text()
    beside = set().union(*trace.side.values(), *(f for th, f in trace.files.items() if th not in PATH_THREADS)) - path
    named = {f for f in beside if f"`{f}`" in text or f"`{f.split('/', 1)[1]}`" in text}
    assert named == beside, beside - named  # what runs beside the path is named on the page too


def test_each_frame_is_checked_once_and_skips_the_tiler(traced):
    trace, summary, _ = traced
    assert trace.calls[("fair_edge/station/inspector.py", "Inspector._emit")] == summary.inspected == 50
    # once per frame, one rule: the loop checks every frame, the source only its first (at open, same rule)
    assert trace.calls[("fair_edge/preprocess.py", "check_frame")] == summary.inspected + 1
    assert trace.calls[("cameras/capture.py", "check_image")] == 1
    assert "fair_edge/tiling.py" not in trace.files["MainThread"]


def test_the_cpu_path_hands_numpy_to_onnx_runtime(traced):
    trace, _, _ = traced
    assert trace.calls[("fair_edge/runtime/backends.py", "OnnxRuntimeBackend.infer")] >= 1
    assert trace.calls[("MainThread", "torch.from_numpy")] == 0

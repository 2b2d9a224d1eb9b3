"""The inspection loop on the CPU with a real (tiny) model: verdicts, fail-safe rules, drops, reconnects."""

import threading
import time

import numpy as np
import pytest
import torch

from fair_edge.runtime.backends import BundleScorer, CpuPreprocessor
from fair_edge.runtime.pytorch import TorchBackend
from fair_edge.cameras import CaptureSettings, CaptureThread, FolderReplaySource, LineSource
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.evaluate import score_samples
from fair_edge.station.inspector import Inspector, LoopSettings
from fair_edge.records import Frame


@pytest.fixture(scope="module")
def scorer(trained):
    final, _ = trained
    model = load_checkpoint(final).model
    return BundleScorer(TorchBackend(final, torch.device("cpu")), CpuPreprocessor(model), "test: torch cpu")


def test_replayed_sequence_gives_the_eval_scores_in_order(trained, mvtec_dir, scorer, tmp_path):
    final, _ = trained
    split = load_dataset(mvtec_dir)
    folder = tmp_path / "line"
    folder.mkdir()
    for i, sample in enumerate(split.test):  # interleave good and defective parts on the conveyor
        (folder / f"{i:03d}_{sample.defect_type}.png").write_bytes(sample.path.read_bytes())
    expected = score_samples(final, split.test).scores
    threshold = float(np.median(expected))
    got = []
    capture = CaptureThread(FolderReplaySource(folder, fps=0), CaptureSettings(queue_size=64))
    t_start = time.monotonic()
    with capture:
        inspector = Inspector(capture, scorer, threshold, settings=LoopSettings(max_batch=4, max_wait_ms=5),
                              on_verdict=[lambda f, v, m: got.append(v)])
        summary = inspector.run(threading.Event())
    t_end = time.monotonic()
    assert [v.seq for v in got] == sorted(v.seq for v in got) and len(got) == len(expected) == 12
    np.testing.assert_allclose([v.score for v in got], expected, rtol=1e-4, atol=1e-6)
    assert [v.ng for v in got] == [bool(s > threshold) for s in expected]
    assert summary.inspected == 12 and summary.ng == sum(v.ng for v in got) and summary.dropped == 0
    # each frame read during the run and decided after it was read; the summary's percentiles are the verdicts'
    assert all(t_start <= v.t_capture < v.t_verdict <= t_end for v in got), [(v.t_capture, v.t_verdict) for v in got]
    latencies = [v.latency_ms for v in got]
    assert summary.latency == pytest.approx({"p50_ms": np.percentile(latencies, 50),
                                             "p99_ms": np.percentile(latencies, 99), "max_ms": max(latencies)})


def test_malformed_frames_fail_safe(scorer):
    inspector = Inspector(capture=None, scorer=scorer, threshold=1e9)
    good = np.full((40, 40, 3), 128, np.uint8)
    frames = [Frame(0, 0.0, good), Frame(1, 0.0, good.astype(np.float32)), Frame(2, 0.0, np.zeros((40, 40, 4), np.uint8))]
    verdicts = inspector.inspect(frames)
    assert [v.seq for v in verdicts] == [0, 1, 2]
    assert verdicts[0].ng is False and verdicts[0].error == ""
    for v in verdicts[1:]:
        assert v.ng is True and v.score is None and "malformed frame" in v.error
    assert inspector.summary.malformed == 2 and inspector.summary.inspected == 3


class Broken:
    name, device = "broken", torch.device("cpu")

    def infer(self, inputs):
        raise RuntimeError("device lost")

    def close(self):
        pass


def test_backend_failures_reject_parts_and_fault_the_station(scorer):
    images = [np.full((40, 40, 3), 100, np.uint8)] * 3
    capture = CaptureThread(LineSource(images, fps=200, loop=True), CaptureSettings(queue_size=8))
    broken = BundleScorer(Broken(), scorer.preprocess, "broken")
    verdicts = []
    with capture:
        inspector = Inspector(capture, broken, 0.5, settings=LoopSettings(max_consecutive_errors=4),
                              on_verdict=[lambda f, v, m: verdicts.append(v)])
        summary = inspector.run(threading.Event(), duration_s=10)
    assert summary.fault == "4 inference failures in a row" and summary.inference_errors >= 4
    assert verdicts and all(v.ng and "device lost" in v.error for v in verdicts)


def test_callback_failure_does_not_stop_inspection(scorer):
    images = [np.full((40, 40, 3), 100, np.uint8)] * 2

    def bad_sink(frame, verdict, amap):
        raise OSError("disk gone")

    capture = CaptureThread(LineSource(images, fps=0, loop=False), CaptureSettings(queue_size=8))
    with capture:
        summary = Inspector(capture, scorer, 0.5, on_verdict=[bad_sink]).run(threading.Event())
    assert summary.inspected == 2 and summary.callback_errors == 2


def test_queue_overflow_is_counted(scorer):
    images = [np.full((64, 64, 3), v, np.uint8) for v in range(0, 250, 10)]
    capture = CaptureThread(LineSource(images, fps=0, loop=True), CaptureSettings(queue_size=1))
    with capture:
        summary = Inspector(capture, scorer, 0.5).run(threading.Event(), max_frames=20)
    assert summary.inspected == 20 and summary.dropped > 0
    assert summary.frames_in >= summary.inspected + summary.dropped - 1


def test_max_frames_is_exact_with_batches_and_a_blocking_replay_stopped_drops_nothing(scorer):
    """--max-frames 5 with batches of 4 inspects 5 frames, not 8; the blocking replay's reader, stopped while it waits
    for room, gives its frame up: not a queue drop (counted not inspected, no "dropped" row)."""
    images = [np.full((40, 40, 3), v, np.uint8) for v in range(0, 200, 20)]
    dropped = []
    capture = CaptureThread(LineSource(images, fps=0, loop=True), CaptureSettings(queue_size=4, full_policy="block"),
                            on_drop=dropped.append)
    with capture:
        summary = Inspector(capture, scorer, 0.5, settings=LoopSettings(max_batch=4, max_wait_ms=50)).run(
            threading.Event(), max_frames=5)
    assert summary.inspected == 5 and summary.dropped == 0 and dropped == []
    assert summary.not_inspected == summary.frames_in - 5


def test_camera_disconnect_is_survived_and_counted(scorer):
    images = [np.full((40, 40, 3), 90, np.uint8)] * 4
    source = LineSource(images, fps=100, loop=True, fail_at={5: "disconnect"}, down_for=2)
    capture = CaptureThread(source, CaptureSettings(queue_size=16, backoff_initial_s=0.01, backoff_max_s=0.05))
    with capture:
        summary = Inspector(capture, scorer, 0.5).run(threading.Event(), max_frames=15, duration_s=20)
    stats = capture.stats()
    assert summary.inspected == 15 and stats.reconnects >= 1 and summary.lost >= 1


def test_stop_event_drains_frames_in_flight(scorer):
    images = [np.full((40, 40, 3), 90, np.uint8)] * 4
    capture = CaptureThread(LineSource(images, fps=0, loop=True), CaptureSettings(queue_size=6, full_policy="drop_newest"))
    stop = threading.Event()
    seen = []

    def stop_after_first(frame, verdict, amap):
        seen.append(verdict.seq)
        stop.set()

    with capture:
        summary = Inspector(capture, scorer, 0.5, on_verdict=[stop_after_first]).run(stop)
    assert summary.inspected == len(seen) >= 2  # the queued frames were inspected after the stop
    assert capture.qsize() == 0


def test_untiled_frames_skip_the_tiler_with_the_same_maps_scores_and_verdicts(scorer, mvtec_dir, monkeypatch):
    from fair_edge.models.tensors import ANOMALY_MAP, COLOUR, HIGHPASS, SCORE
    from fair_edge.preprocess import frame_to_float, resize_float
    from fair_edge.training.pixels import read_image

    frames = [read_image(s.path) for s in load_dataset(mvtec_dir).test]
    pipeline = scorer.preprocess.pipeline
    # the previous path: identity split, frames checked again while scaled, inference, identity stitch
    colour = np.stack([resize_float(frame_to_float(f), pipeline.cfg.image_size) for f in frames])
    tiles, layouts = scorer.tiler.split(frames)
    assert tiles == frames and layouts == [None] * len(frames)
    inputs = {COLOUR: torch.from_numpy(colour), HIGHPASS: torch.from_numpy(pipeline.highpass_of(colour))}
    out = scorer.backend.infer({name: inputs[name] for name in scorer.preprocess.names})
    old_maps, old_scores = scorer.tiler.stitch(out[ANOMALY_MAP][:, 0], out[SCORE], layouts)

    def no_tiler(*args):
        raise AssertionError("an untiled frame went through the tiler")

    monkeypatch.setattr(scorer.tiler, "split", no_tiler)
    monkeypatch.setattr(scorer.tiler, "stitch", no_tiler)
    maps, scores = scorer.infer_frames(frames)
    np.testing.assert_array_equal(maps, np.stack(old_maps))
    np.testing.assert_array_equal(scores, old_scores)
    assert scores.dtype == old_scores.dtype == np.float32 and maps.dtype == np.float32
    threshold = float(np.median(old_scores))
    verdicts = Inspector(capture=None, scorer=scorer, threshold=threshold).inspect(
        [Frame(i, 0.0, f) for i, f in enumerate(frames)])
    assert [v.score for v in verdicts] == [float(s) for s in old_scores]
    assert [v.ng for v in verdicts] == [bool(s > threshold) for s in old_scores]


class MapScorer:
    """A frame scorer whose anomaly map is handed in (a tiled bundle's frame-sized map): the ROI path alone."""

    reason, graph_threshold = "test: fixed map", None

    def __init__(self, amap: np.ndarray) -> None:
        self.amap = amap

    def infer_frames(self, frames):
        maps = np.stack([self.amap] * len(frames))
        return maps, maps.reshape(len(frames), -1).max(1)


def test_the_roi_is_built_at_the_maps_resolution_not_the_models_input_size(tmp_path):
    """A 4-pixel-wide ROI band on a 256 x 256 frame map (a tiled bundle; model input 32 px): a hot pixel
    3 px beside the band is outside the region and must not decide the score. (Shrinking the mask to the
    model's 32 px first, as the station did, lost the band altogether: 'all black'; a wider band came back
    as whole 8 px cells, counting the pixel beside it.)"""
    import cv2

    from fair_edge.station.bundles import load_roi

    mask = np.zeros((256, 256), np.uint8)
    mask[:, 130:134] = 255
    cv2.imwrite(str(tmp_path / "roi.png"), mask)
    amap = np.full((256, 256), 0.1, np.float32)
    amap[100, 131] = 0.5          # inside the band
    amap[50, 137] = 0.9           # 3 px right of the band, in the same 8 px cell as its right edge
    inspector = Inspector(capture=None, scorer=MapScorer(amap), threshold=0.7, roi=load_roi(tmp_path / "roi.png", None))
    verdict = inspector.inspect([Frame(0, 0.0, np.full((256, 256, 3), 128, np.uint8))])[0]
    assert verdict.score == pytest.approx(0.5) and not verdict.ng


def test_a_frame_off_the_calibrated_grid_is_logged_once_per_pair_of_grids(caplog):
    """The reason is the verdict's error on every such frame and in the log once; after a swap to a bundle calibrated
    on another grid, the same frames are logged again (the reason names the new grid)."""
    from fair_edge.station.inspector import ViewDecider

    decider = ViewDecider(None, 1.0, grid=(77, 77))
    with caplog.at_level("ERROR", logger="fair_edge.station.inspector"):
        reasons = [decider.off_grid((136, 136), (109, 109)) for _ in range(3)]
        decider.grid = (64, 64)                                   # what apply_switch does for a swapped bundle
        swapped = decider.off_grid((136, 136), (109, 109))
    assert all("77 x 77 maps" in r for r in reasons) and "64 x 64 maps" in swapped
    assert [r.getMessage().count("x 77 maps") + r.getMessage().count("x 64 maps") for r in caplog.records] == [1, 1]


def test_a_frame_off_the_calibrated_grid_is_logged_naming_its_camera(caplog):
    """The line said "frames rejected: threshold calibrated on 77 x 77 maps ..." without the camera: in a station of
    several cameras, which one was moved to another frame size was left to guess. It names the camera now, as a
    malformed frame's line does, once for each camera."""
    from fair_edge.station.inspector import ViewDecider

    scorer = MapScorer(np.zeros((109, 109), np.float32))
    views = {c: ViewDecider(scorer, 1.0, grid=(77, 77)) for c in ("left", "right")}
    inspector = Inspector(capture=None, scorer=scorer, threshold=1.0, views=views)
    image = np.zeros((136, 136, 3), np.uint8)
    with caplog.at_level("ERROR", logger="fair_edge.station.inspector"):
        verdicts = inspector.inspect([Frame(seq, 0.0, image, camera=c) for seq, c in enumerate(["left", "right"] * 2)])
    assert all(v.ng and "77 x 77 maps" in v.error for v in verdicts)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(": ")[0] for line in lines] == ["camera left", "camera right"], lines
    assert all(": frames rejected: threshold calibrated on 77 x 77 maps" in line for line in lines), lines



class ClosingBackend:
    """Records its close in ``closed``; a closed one cannot infer (an ONNX Runtime session released)."""

    def __init__(self, name: str, closed: list[str]) -> None:
        self.name, self.closed, self.is_closed = name, closed, False

    def close(self) -> None:
        self.is_closed = True
        self.closed.append(self.name)


class NamedScorer:
    """A frame scorer over a ``ClosingBackend``: zero maps while open, the backend's error once closed."""

    graph_threshold = None

    def __init__(self, name: str, closed: list[str]) -> None:
        self.reason, self.backend = f"test: {name}", ClosingBackend(name, closed)

    def infer_frames(self, frames):
        if self.backend.is_closed:
            raise RuntimeError(f"{self.backend.name}: session closed")
        return np.zeros((len(frames), 8, 8), np.float32), np.zeros(len(frames), np.float32)


def _cell_inspector(first, cameras=("x", "y")):
    """An inspector over views that all run ``first`` (a cell's cameras on one bundle share its scorer)."""
    from fair_edge.station.inspector import ViewDecider

    views = {c: ViewDecider(first, 1.0, model=first.backend.name) for c in cameras}
    inspector = Inspector(capture=None, scorer=first, threshold=1.0, views=views)
    inspector.decider = views[cameras[0]]   # as run_cell does
    return inspector


def test_a_swap_on_one_camera_never_closes_a_scorer_another_cameras_pending_change_holds():
    """Line idle (changes wait for a batch): cameras x and y swap to P (one scorer for both, as the console's
    cell loader gives), then x alone swaps to Q. P must stay open for y; at the next batch y runs P, x runs Q, and
    only the scorer nobody runs any more (A) is closed; P is closed when y leaves it too."""
    from fair_edge.runtime.hotswap import ModelChange

    closed: list[str] = []
    a, p, q, r = (NamedScorer(n, closed) for n in "apqr")
    inspector = _cell_inspector(a)
    x, y = inspector.views["x"], inspector.views["y"]
    x.switch.request(ModelChange(scorer=p, model="p"))
    y.switch.request(ModelChange(scorer=p, model="p"))
    x.switch.request(ModelChange(scorer=q, model="q"))   # replaces x's pending P; y's still holds it
    assert closed == []
    inspector.apply_switch()
    assert (x.model, y.model) == ("q", "p") and closed == ["a"]
    frame = np.full((40, 40, 3), 128, np.uint8)
    verdicts = inspector.inspect([Frame(0, 0.0, frame, camera="x"), Frame(0, 0.0, frame, camera="y")])
    assert [(v.camera, v.model, v.error) for v in verdicts] == [("x", "q", ""), ("y", "p", "")]
    y.switch.request(ModelChange(scorer=r, model="r"))
    inspector.apply_switch()
    assert closed == ["a", "p"] and not q.backend.is_closed and not r.backend.is_closed


def test_a_pending_change_replaced_before_it_ran_is_closed_when_nothing_holds_it():
    """One camera: swap to P, then to Q before a batch came. P never ran and nobody holds it: it is closed (at the
    next batch, or when the run ends without one), exactly once, and the camera's old scorer after its last batch."""
    from fair_edge.runtime.hotswap import ModelChange

    closed: list[str] = []
    a, p, q = (NamedScorer(n, closed) for n in "apq")
    inspector = Inspector(capture=None, scorer=a, threshold=1.0)
    inspector.switch.request(ModelChange(scorer=p, model="p"))
    inspector.switch.request(ModelChange(threshold=2.0))
    inspector.switch.request(ModelChange(scorer=q, model="q"))
    inspector.apply_switch()
    assert sorted(closed) == ["a", "p"] and (inspector.model, inspector.threshold) == ("q", 1.0)
    inspector.apply_switch()   # nothing pending: nothing more closed
    assert sorted(closed) == ["a", "p"]

    closed.clear()
    idle = Inspector(EndedCapture(), a, 1.0)
    idle.switch.request(ModelChange(scorer=p, model="p"))
    idle.switch.request(ModelChange(scorer=q, model="q"))
    idle.run(threading.Event())   # the stream ends before any batch
    assert closed == ["p"] and idle.switch.pending.scorer is q   # the change still waiting keeps its scorer


class IdleCapture:
    """A camera on a line at rest: no frame ever comes (``get`` times out). At its ``snapshot_at``-th call (the loop's
    next iteration, before the run's end closes anything) it calls ``snapshot`` and sets ``stop``."""

    def __init__(self, stop: threading.Event, snapshot, snapshot_at: int = 2) -> None:
        self.stop_event, self.snapshot, self.snapshot_at, self.calls = stop, snapshot, snapshot_at, 0

    def get(self, timeout=None):
        import queue

        self.calls += 1
        if self.calls == self.snapshot_at:
            self.snapshot()
            self.stop_event.set()
        raise queue.Empty

    def stop(self) -> None:
        pass

    def stats(self):
        from types import SimpleNamespace

        return SimpleNamespace(frames_in=0, dropped_queue_full=0, frames_lost_estimate=0)


def test_swaps_on_a_line_at_rest_are_taken_and_the_replaced_models_closed_at_the_next_idle_iteration(monkeypatch):
    """Ten swaps while no frame comes (console swaps, SIGHUPs on a stopped belt): the last change is taken at the loop's
    next idle iteration, not when a part comes (the console refuses a threshold while a loaded bundle waits to be
    taken: on a stopped belt that was forever), and the scorers it replaced (the one that ran, the nine changes
    replaced before they ran) are closed then. With nothing waiting, an idle iteration calls nothing of the swap's
    module (runtime/hotswap.py stays off the loop's idle and frame path)."""
    from fair_edge.runtime.hotswap import ModelChange, ModelSwitch

    closed: list[str] = []
    running = NamedScorer("a", closed)
    loaded = [NamedScorer(f"s{i}", closed) for i in range(10)]
    stop = threading.Event()
    seen: list[list[str]] = []
    inspector = Inspector(IdleCapture(stop, lambda: seen.append(list(closed))), running, 1.0)
    for i, scorer in enumerate(loaded):
        inspector.switch.request(ModelChange(scorer=scorer, model=f"s{i}"))
    inspector.run(stop)
    assert [sorted(x) for x in seen] == [sorted(["a", *(f"s{i}" for i in range(9))])], seen   # at the first idle one
    assert inspector.model == "s9" and inspector.switch.pending is None and inspector.switch.parked == 0
    assert running.backend.is_closed and not loaded[9].backend.is_closed   # s9 runs: the run's end leaves it open

    calls: list[str] = []
    monkeypatch.setattr(ModelSwitch, "take_replaced", lambda self: calls.append("take_replaced") or [])
    stop = threading.Event()
    quiet = Inspector(IdleCapture(stop, lambda: seen.append(list(calls)), snapshot_at=3), NamedScorer("b", closed), 1.0)
    quiet.run(stop)
    assert seen[-1] == []   # two idle iterations with nothing parked: no call into the swap's module


class EndedCapture:
    """A capture whose stream has already ended: the loop stops before any batch."""

    def get(self, timeout):
        from fair_edge.cameras import EndOfStream

        raise EndOfStream("ended")

    def stop(self) -> None:
        pass

    def stats(self):
        from types import SimpleNamespace

        return SimpleNamespace(frames_in=0, dropped_queue_full=0, frames_lost_estimate=0)


class _NoFrames:
    """A camera that ends at once (or never delivered): a run that inspected nothing."""

    def get(self, timeout=None):
        from fair_edge.cameras import EndOfStream
        raise EndOfStream("no frame")

    def stop(self):
        return True

    def stats(self):
        from types import SimpleNamespace
        return SimpleNamespace(frames_in=0, dropped_queue_full=0, frames_lost_estimate=0)


class _NeverCalled:
    reason = "fake"

    def infer_frames(self, images):
        raise AssertionError("no frame to infer")


def test_latency_stats_hold_fixed_memory_the_live_window_exact_and_the_run_within_its_stated_bound():
    """Every latency was kept forever (~32 B a frame: ~166 MB a day at 60 frames/s). Now the memory stays fixed,
    the last 2000 are exact, and the run's p50 / p99 are within RUN_REL_ERROR (max exact)."""
    import tracemalloc

    from fair_edge.station.inspector import LatencyStats

    values = np.random.default_rng(0).lognormal(3.0, 0.8, 60_000)   # ms, a long tail
    stats = LatencyStats()
    for v in values[:10_000]:
        stats.add(float(v))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for v in values[10_000:]:
        stats.add(float(v))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 50_000, f"{grown} bytes more for 50,000 latencies"   # the old list: ~1.6 MB
    window = stats.percentiles(window=2000)
    last = values[-2000:]
    assert window == {"p50_ms": np.percentile(last, 50), "p99_ms": np.percentile(last, 99), "max_ms": last.max()}
    run = stats.percentiles()
    exact = {"p50_ms": np.percentile(values, 50), "p99_ms": np.percentile(values, 99)}
    for key, want in exact.items():
        assert abs(run[key] - want) <= 0.005 * want * (1 + 1e-9), (key, run[key], want)
    assert run["max_ms"] == values.max() and stats.count == 60_000


def test_the_run_percentiles_are_within_half_a_percent_even_at_a_buckets_edges():
    """A latency at either edge of its bucket (the bucket's largest error), low to high: within RUN_REL_ERROR."""
    from fair_edge.station.inspector import RUN_HIGH_MS, RUN_LOW_MS, RUN_REL_ERROR, LatencyStats, LogBuckets

    for i in (1, 2, 700, 1500, LogBuckets.SIZE - 3):   # the last bucket: over RUN_HIGH_MS (27.8 h)
        top = RUN_LOW_MS * LogBuckets.GROWTH ** i
        for edge in (top, top / LogBuckets.GROWTH * (1 + 1e-12)):
            stats = LatencyStats(window=1)   # one kept: the run's p50 comes from the buckets
            for ms in (0.5 * RUN_LOW_MS, edge, 10 * RUN_HIGH_MS):
                stats.add(ms)
            p50 = stats.percentiles()["p50_ms"]
            assert abs(p50 - edge) <= RUN_REL_ERROR * edge * (1 + 1e-9), (i, edge, p50)


@pytest.mark.parametrize("value", [1e-4, 0.0013, 1.0, 7.25, 33.3333, 999.9, 123456.0])
def test_run_latency_percentiles_are_exact_up_to_the_window_and_within_half_a_percent_beyond(value):
    """Exact while every latency is kept; one more: p50 within 0.5 % (0.001 ms under 0.001 ms), max exact."""
    from fair_edge.station.inspector import RUN_LOW_MS, RUN_REL_ERROR, LatencyStats

    stats = LatencyStats(window=10)
    for _ in range(10):
        stats.add(value)
    assert stats.exact and stats.percentiles() == {"p50_ms": value, "p99_ms": value, "max_ms": value}
    stats.add(value)
    got = stats.percentiles()
    assert not stats.exact and got["max_ms"] == value
    assert abs(got["p50_ms"] - value) <= max(RUN_REL_ERROR * value * (1 + 1e-9), RUN_LOW_MS)
    with pytest.raises(ValueError, match="between 1 and the 10 latencies kept; found 11"):
        stats.percentiles(window=11)


def test_a_run_that_inspected_nothing_writes_null_latency_in_strict_json_and_prints_it(monkeypatch):
    """summary.json and the retained MQTT summary held bare NaN (not JSON for Node-RED, jq, Go) when the camera
    never delivered a frame; the summary table printed 'nan'."""
    import json

    from rich.console import Console

    import fair_edge.cli.run as cli_run

    summary = Inspector(_NoFrames(), _NeverCalled(), 1.0).run(threading.Event())
    assert summary.inspected == 0
    text = json.dumps(summary.to_dict(), indent=2, default=str, allow_nan=False)   # raised on NaN
    assert json.loads(text)["latency"] == {"p50_ms": None, "p99_ms": None, "max_ms": None}
    console = Console(record=True, width=200)
    monkeypatch.setattr(cli_run, "Console", lambda: console)   # print_summary's table goes to this console
    cli_run.print_summary(summary, "out")
    printed = " ".join(console.export_text().split())
    assert "latency p50 / p99 / max │ - (no frame inspected)" in printed, printed


@pytest.mark.parametrize("wait", [float("inf"), float("nan"), 1e20, -1.0, 86_400_001])
def test_loop_settings_refuse_a_max_wait_the_station_file_would_refuse(wait):
    """``run --max-wait-ms inf`` (or 1e20) replaced the checked file value and crashed the loop's wait with an
    OverflowError (no summary.json); NaN was taken silently. The settings check it when made, as the file does."""
    from dataclasses import replace

    from fair_edge.errors import ConfigError

    pattern = r"batching\.max_wait_ms \(--max-wait-ms\): expected a (finite )?number in \[0, 86400000\], found "
    with pytest.raises(ConfigError, match=pattern):
        LoopSettings(max_batch=4, max_wait_ms=wait)
    with pytest.raises(ConfigError, match=pattern):
        replace(LoopSettings(), max_wait_ms=wait)
    assert LoopSettings(max_wait_ms=0).max_wait_ms == 0 and LoopSettings(max_wait_ms=86_400_000).max_batch == 1


def test_loop_settings_refuse_a_max_batch_the_station_file_would_refuse():
    """The file caps batching.max_batch at 256; --max-batch replaced it unchecked above that."""
    from fair_edge.errors import ConfigError

    for batch in (0, 257):
        with pytest.raises(ConfigError, match=rf"batching\.max_batch \(--max-batch\): expected an integer in \[1, 256\], found {batch}"):
            LoopSettings(max_batch=batch)
    assert LoopSettings(max_batch=256).max_batch == 256


def _printed_summary(monkeypatch, summary, log_dir=None) -> str:
    """print_summary's table and the lines after it, as one line of text (rich's wrapping undone)."""
    from rich.console import Console

    import fair_edge.cli.run as cli_run

    table, lines = Console(record=True, width=200), Console(record=True, width=400)
    monkeypatch.setattr(cli_run, "Console", lambda: table)   # the table
    monkeypatch.setattr(cli_run, "console", lines)           # the lines after it (stderr)
    cli_run.print_summary(summary, "out", log_dir)
    return " ".join((table.export_text() + lines.export_text()).split())


def test_the_summary_shows_verdict_rows_the_log_could_not_write(monkeypatch):
    """On a full disk 297 of 579 verdict rows were not written and nothing the operator saw said so: the summary
    had no recorder counter (summary.json, the only file holding rows_failed, could not be written to that disk)."""
    from fair_edge.station.inspector import RunSummary

    recorder = {"queued": 5, "logged": 2, "gate_logged": 0, "rows_failed": 3, "lost_at_close": 0, "dropped": 0,
                "images": 0, "images_skipped": 0, "write_errors": 3, "pending": 0}
    printed = _printed_summary(monkeypatch, RunSummary(inspected=5, recorder=recorder), "rec")
    assert "verdict log │ 2 logged, 3 not written (write errors) │" in printed, printed
    assert "3 log row(s) not written (the verdict log row above says why); they are not in the log: check the " \
           "disk under rec (full, unplugged, read-only)." in printed, printed
    assert "NG images" not in printed   # no image was lost: no row for them

    recorder.update(logged=5, rows_failed=0, write_errors=0, gate_logged=4)
    printed = _printed_summary(monkeypatch, RunSummary(inspected=5, recorder=recorder))
    assert "verdict log / gate log │ 5 / 4 logged │" in printed and "not written" not in printed, printed

    recorder.update(rows_failed=1, dropped=2, lost_at_close=4, images=6, images_skipped=7, write_errors=1 + 8)
    printed = _printed_summary(monkeypatch, RunSummary(inspected=5, recorder=recorder))
    assert ("5 / 4 logged, 1 not written (write errors), 2 dropped (writer backlog full), 4 lost at close (disk "
            "hung) │") in printed, printed
    assert "NG images │ 6 saved, 7 skipped, 8 write errors │" in printed and "7 log row(s) not written" \
        in printed, printed
    assert "verdict log" not in _printed_summary(monkeypatch, RunSummary(inspected=5))   # no recorder: no row


def test_the_summary_counts_the_rows_a_failing_disk_kept_out_of_the_log(tmp_path, monkeypatch):
    """The numbers shown are the log's: a disk that refuses three rows (ENOSPC) and then takes the rest leaves
    3 rows in verdicts.jsonl, and the summary, the console counters and the status line say 3 logged, 3 not."""
    import errno
    import json

    from fair_edge.console.feed import StationFeed
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.line.jsonl import RotatingJsonl
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.records import Verdict
    from fair_edge.station.inspector import RunSummary
    from fair_edge.station.notify import status_line

    write = RotatingJsonl.write

    def full_for_some(self, obj):
        if 2 <= obj.get("seq", 0) <= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, obj)

    monkeypatch.setattr(RotatingJsonl, "write", full_for_some)
    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    with Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0)) as rec:
        feed.attach(None, None, None, rec)
        for seq in range(6):
            rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "test"))
        assert rec.flush()
        counters = json.loads(json.dumps(feed.counters()))   # as /api/state serves them
        summary = RunSummary(inspected=6, recorder=rec.stats())
    rows = (tmp_path / "verdicts.jsonl").read_text().splitlines()
    assert [json.loads(r)["seq"] for r in rows] == [0, 1, 5]
    assert "verdict log │ 3 logged, 3 not written (write errors) │" in _printed_summary(monkeypatch, summary)
    assert (counters["rows_logged"], counters["rows_failed"], counters["write_errors"]) == (3, 3, 3)
    assert status_line(summary) == "inspecting: 6 inspected, 0 NG, 0 dropped, 3 log rows not written"

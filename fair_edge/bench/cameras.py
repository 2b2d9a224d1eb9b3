"""``fair-edge bench --mode cameras``: N cameras in one cell against N single-camera stations, in one process.

For each camera count N (``--cameras``) two arrangements are timed, interleaved round by round (``--rounds``:
round r times every N, both arrangements, before round r + 1 starts; the two swap order each round):

- ``cell``: one model; N synthetic cameras, each a ``LineSource`` in its own ``CaptureThread``, read in turn by
  a ``CaptureMux``; one ``Inspector`` with ``LoopSettings(max_batch=N)`` and a ``ViewDecider`` per camera, as
  ``run_cell`` runs a ``cameras:`` station: the frames of several cameras go into one inference call.
- ``stations``: N loaded copies of the model; each camera with its own ``Inspector`` (``max_batch`` 1, a
  single-camera station's default) in its own thread, as one ``fair-edge run`` per camera runs today. These
  are threads of one process, not N processes: they share the GIL and, on torch backends, torch's intra-op
  thread pool (ONNX Runtime and OpenVINO sessions each keep their own pool, as separate processes would).

Each camera is fed as ``--feed`` says, per camera: ``closed`` = at most ``--queue`` (0: 2) of its frames
between capture and verdict, nothing dropped, so frames/s is the arrangement's throughput and latency mostly
the wait behind the frames in flight; ``free`` = read as fast as possible, oldest dropped; a number = each
camera at that many frames/s. In both arrangements every camera is made before the first starts, and they
start one after another, so paced cameras fire at (nearly) the same moments, as cameras triggered by one
part do. Cameras at the same rate out of phase (lines not in step) are not timed: there the stations'
calls would overlap less, and their latency would be lower than with cameras in step.

A row pools its rounds: frames/s = frames inspected / seconds timed (each round: the longest of its loops'
run times), latency = capture -> verdict over every frame. The cell row's ``vs_stations`` = its frames/s /
the stations row's, same N.
"""

from __future__ import annotations

import functools
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from fair_edge.bench.run import (BenchError, BenchReport, CountedPreprocess, bundle_info, capture_for, check_batches,
                                 environment, label, settings_dict, warm)
from fair_edge.bench.settings import BenchSettings
from fair_edge.cameras.mux import CaptureMux
from fair_edge.runtime.backends import BundleScorer, close_scorer
from fair_edge.runtime.pytorch import TorchBackend
from fair_edge.runtime.selection import BackendOptions, select_backend
from fair_edge.station.inspector import Inspector, LoopSettings, RunSummary, ViewDecider, exact_percentiles


PER_CAMERA_QUEUE = 2     # --queue 0: frames of one camera between capture and verdict (2 x its share of a batch)
JOIN_SLACK_S = 30.0      # after the stop: time for a loop to finish its batch, drain its queue and stop its camera


@dataclass(frozen=True)
class CameraRow:
    """One (camera count, arrangement), pooled over its rounds.

    cameras: N. arrangement: ``cell`` or ``stations`` (``ARRANGEMENTS``). models: model copies loaded (1 or N).
    max_batch: the loop's (``cell``: N; ``stations``: 1 each). fps: frames/s of all cameras together.
    p50/p99/max_ms: capture -> verdict, milliseconds, every frame of every round. frames: inspected.
    per_camera: frames inspected per camera name (sums to ``frames``). frames_in / dropped / not_inspected:
    frames read, discarded by a full queue, left queued at the stop (frames_in = frames + dropped +
    not_inspected); lost: frames a paced camera passed while its reader was late (never read). seconds: timed,
    all rounds. mean_batch: frames per inference call. rounds: rounds pooled; round_fps: frames/s of each.
    vs_stations (cell rows): fps / the stations row's fps, same N; round_ratios: the same, round by round."""

    cameras: int
    arrangement: str
    backend: str
    preprocess: str
    models: int
    max_batch: int
    fps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    frames: int
    per_camera: dict
    frames_in: int
    dropped: int
    not_inspected: int
    lost: int
    seconds: float
    mean_batch: float
    rounds: int
    round_fps: list
    vs_stations: float | None = None
    round_ratios: list = field(default_factory=list)

    def line(self) -> str:
        """One line of progress: '2 camera(s), cell: 17.3 frames/s, p50 110.2 ms'."""
        return f"{self.cameras} camera(s), {self.arrangement}: {self.fps:.1f} frames/s, p50 {self.p50_ms:.1f} ms"


@dataclass
class _Tally:
    """What one round, or the rounds of one (camera count, arrangement) together, add up to."""

    frames: int = 0
    frames_in: int = 0
    dropped: int = 0
    not_inspected: int = 0
    lost: int = 0
    seconds: float = 0.0
    calls: int = 0
    per_camera: dict = field(default_factory=dict)
    latency_ms: list = field(default_factory=list)
    round_fps: list = field(default_factory=list)

    @classmethod
    def of_round(cls, loops: list[_Loop]) -> _Tally:
        """One round: its loops' summaries; seconds = the longest loop's run time."""
        summaries = [loop.summary for loop in loops]
        frames, seconds = sum(s.inspected for s in summaries), max(s.duration_s for s in summaries)
        return cls(frames, sum(s.frames_in for s in summaries), sum(s.dropped for s in summaries),
                   sum(s.not_inspected for s in summaries), sum(s.lost for s in summaries), seconds,
                   sum(loop.counted.batches for loop in loops),
                   {name: n for loop in loops for name, n in loop.verdicts.per_camera.items()},
                   [ms for loop in loops for ms in loop.verdicts.latency_ms], [frames / seconds])

    def merge(self, other: _Tally) -> None:
        for key in ("frames", "frames_in", "dropped", "not_inspected", "lost", "seconds", "calls"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for name, n in other.per_camera.items():
            self.per_camera[name] = self.per_camera.get(name, 0) + n
        self.latency_ms += other.latency_ms
        self.round_fps += other.round_fps

    def row(self, count: int, arrangement: str, label: tuple[str, str]) -> CameraRow:
        lat = exact_percentiles(self.latency_ms)
        cell = arrangement == "cell"
        return CameraRow(count, arrangement, *label, models=1 if cell else count, max_batch=count if cell else 1,
                         fps=self.frames / self.seconds, p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"],
                         max_ms=lat["max_ms"], frames=self.frames, per_camera=dict(self.per_camera),
                         frames_in=self.frames_in, dropped=self.dropped, not_inspected=self.not_inspected,
                         lost=self.lost, seconds=self.seconds, mean_batch=self.frames / max(self.calls, 1),
                         rounds=len(self.round_fps), round_fps=list(self.round_fps))


class _Verdicts:
    """The verdict callback of one loop: gives each camera's closed-feed credit back, counts frames per camera,
    keeps every latency (ms: the bench's percentiles are exact, the station's ``LatencyStats`` bounded) and the first
    failed verdict. gives: camera name -> its capture's verdict callbacks; camera: the name a
    single-camera loop's verdicts count under (their ``camera`` is empty)."""

    def __init__(self, gives: dict[str, list], camera: str = "") -> None:
        self.gives, self.camera = gives, camera
        self.per_camera = {name: 0 for name in gives}
        self.errors: list[str] = []
        self.latency_ms: list[float] = []

    def on_verdict(self, frame, verdict, anomaly_map) -> None:
        name = verdict.camera or self.camera
        self.per_camera[name] += 1
        self.latency_ms.append(verdict.latency_ms)
        for give in self.gives[name]:
            give(frame, verdict, anomaly_map)
        if verdict.error and not self.errors:
            self.errors.append(verdict.error)


@dataclass
class _Loop:
    """One inspection loop of an arrangement, and what its run left (summary, or the exception it raised)."""

    inspector: Inspector
    verdicts: _Verdicts
    counted: CountedPreprocess
    summary: RunSummary | None = None
    failure: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            self.summary = self.inspector.run(stop)
        except BaseException as exc:   # raised again as a BenchError by time_arrangement's thread
            self.failure = exc


def camera_names(count: int) -> list[str]:
    return [f"cam{i}" for i in range(count)]


def _loop(scorer: BundleScorer, capture, gives: dict[str, list], threshold: float, settings: BenchSettings,
          max_batch: int, camera: str = "", views: bool = False) -> _Loop:
    counted = CountedPreprocess(scorer.preprocess)
    counting = replace(scorer, preprocess=counted)
    verdicts = _Verdicts(gives, camera)
    deciders = {name: ViewDecider(counting, threshold) for name in gives} if views else None
    inspector = Inspector(capture, counting, threshold, on_verdict=[verdicts.on_verdict], views=deciders,
                          settings=LoopSettings(max_batch=max_batch, max_wait_ms=settings.max_wait_ms))
    return _Loop(inspector, verdicts, counted)


def cell(scorers: list[BundleScorer], frames: list[np.ndarray], count: int, settings: BenchSettings,
         threshold: float, stack: ExitStack) -> list[_Loop]:
    """One Inspector over a CaptureMux of ``count`` cameras (started on ``stack``), max_batch = count, a
    ViewDecider per camera, all on ``scorers[0]``."""
    mux = CaptureMux()
    captures, gives = {}, {}
    for name in camera_names(count):
        captures[name], gives[name] = capture_for(frames, settings.feed, 1, settings.queue_size or PER_CAMERA_QUEUE,
                                                  name=name, on_queued=mux.wake)
    mux.set_captures(captures)
    stack.enter_context(mux)
    return [_loop(scorers[0], mux, gives, threshold, settings, max_batch=count, views=True)]


def stations(scorers: list[BundleScorer], frames: list[np.ndarray], count: int, settings: BenchSettings,
             threshold: float, stack: ExitStack) -> list[_Loop]:
    """``count`` single-camera Inspectors (max_batch 1), camera i on ``scorers[i]``. The cameras are all made,
    then started on ``stack`` one after another, as ``CaptureMux.start`` starts the cell's: paced cameras fire
    together in both arrangements."""
    loops = []
    for name, scorer in zip(camera_names(count), scorers[:count], strict=True):
        capture, gives = capture_for(frames, settings.feed, 1, settings.queue_size or PER_CAMERA_QUEUE, name=name)
        loops.append(_loop(scorer, capture, {name: gives}, threshold, settings, max_batch=1, camera=name))
    for loop in loops:
        stack.enter_context(loop.inspector.capture)
    return loops


ARRANGEMENTS: dict[str, Callable[..., list[_Loop]]] = {"cell": cell, "stations": stations}


def time_arrangement(loops_of: Callable[[ExitStack], list[_Loop]], seconds: float, what: str) -> list[_Loop]:
    """Start the cameras and make the loops (``loops_of``), run each loop in its own thread for ``seconds``,
    stop them together. Raises BenchError when a loop failed, faulted, gave a failed verdict or did not stop."""
    with ExitStack() as stack:
        loops = loops_of(stack)
        stop = threading.Event()
        threads = [threading.Thread(target=loop.run, args=(stop,), name=f"bench-loop-{i}", daemon=True)
                   for i, loop in enumerate(loops)]
        for thread in threads:
            thread.start()
        stop.wait(seconds)
        stop.set()
        for thread in threads:
            thread.join(seconds + JOIN_SLACK_S)
    problems = [f"{t.name} did not stop" for t in threads if t.is_alive()]
    problems += [f"{type(loop.failure).__name__}: {loop.failure}" for loop in loops if loop.failure is not None]
    problems += [loop.summary.fault for loop in loops if loop.summary is not None and loop.summary.fault]
    problems += [f"first failed verdict: {e}" for loop in loops for e in loop.verdicts.errors[:1]]
    problems += [f"no frame inspected in {seconds:g} s (time it for longer: --seconds)" for loop in loops
                 if loop.summary is not None and not loop.verdicts.latency_ms]
    if problems:
        raise BenchError(f"{what}: {problems[0]}; these numbers would not be speeds.")
    return loops


def load_copies(bundle, settings: BenchSettings, count: int) -> list[BundleScorer]:
    """``count`` separately loaded scorers of ``bundle`` on ``settings.backend`` ('auto' chooses once; the
    copies load the backend it chose and carry its reason). The caller closes them."""
    options = BackendOptions(compile=settings.compile)
    scorers = [select_backend(bundle, settings.backend, options)]
    try:
        for _ in range(count - 1):
            scorers.append(replace(select_backend(bundle, backend_key(scorers[0]), options), reason=scorers[0].reason))
    except BaseException:
        for scorer in scorers:
            close_scorer(scorer)
        raise
    return scorers


def backend_key(scorer: BundleScorer) -> str:
    """The ``selection.BACKENDS`` name of the backend ``scorer`` runs on ('torch-cuda', 'onnxruntime', ...)."""
    backend = scorer.backend
    return f"torch-{backend.device.type}" if isinstance(backend, TorchBackend) else backend.name


def with_ratios(rows: list[CameraRow]) -> list[CameraRow]:
    """Each cell row with ``vs_stations`` (and per round) against the stations row of the same camera count."""
    base = {r.cameras: r for r in rows if r.arrangement == "stations"}
    return [replace(r, vs_stations=r.fps / base[r.cameras].fps,
                    round_ratios=[a / b for a, b in zip(r.round_fps, base[r.cameras].round_fps, strict=True)])
            if r.arrangement == "cell" and r.cameras in base else r for r in rows]


def time_cameras(bundle, settings: BenchSettings, frames: list[np.ndarray], threshold: float,
                 on_row: Callable[[CameraRow], None] | None = None) -> tuple[list[CameraRow], BundleScorer]:
    """Every camera count of ``settings.cameras``, both arrangements, ``settings.rounds`` interleaved rounds.

    frames: (H, W, 3) uint8 BGR host frames every camera cycles through. on_row: each round's own row as it is
    timed (progress). Returns the pooled rows (per count: cell, then stations) and the first scorer (closed;
    its reason and device name the backend)."""
    most = max(settings.cameras)
    with ExitStack() as stack:
        scorers = load_copies(bundle, settings, most)
        for scorer in scorers:
            stack.callback(scorer.backend.close)
        check_batches(bundle, scorers[0], settings.cameras, flag="--cameras")
        warm(scorers[0], frames, most, settings.warmup_s, True)   # every batch size the cell can form
        for scorer in scorers[1:]:
            warm(scorer, frames, 1, settings.warmup_s, True)
        names = label(scorers[0])
        pooled = {(n, a): _Tally() for n in settings.cameras for a in ARRANGEMENTS}
        for r in range(settings.rounds):
            order = list(ARRANGEMENTS) if r % 2 == 0 else list(ARRANGEMENTS)[::-1]
            for n in settings.cameras:
                for arrangement in order:
                    build = functools.partial(ARRANGEMENTS[arrangement], scorers, frames, n, settings, threshold)
                    one = _Tally.of_round(time_arrangement(build, settings.seconds, f"{n} camera(s), {arrangement}"))
                    pooled[(n, arrangement)].merge(one)
                    if on_row is not None:
                        on_row(one.row(n, arrangement, names))
        rows = [pooled[(n, a)].row(n, a, names) for n in settings.cameras for a in ARRANGEMENTS]
        return with_ratios(rows), scorers[0]


def cameras_report(bundle, settings: BenchSettings, command: str, frames: list[np.ndarray], threshold: float,
                   on_row: Callable[[CameraRow], None] | None = None) -> BenchReport:
    """``--mode cameras`` (``run_bench``'s ``reports``): one cell of N cameras against N single-camera stations."""
    rows, scorer = time_cameras(bundle, settings, frames, threshold, on_row)
    return BenchReport([], environment({scorer.backend.device.type}), settings_dict(settings), bundle_info(bundle),
                       command, cameras=rows, cameras_backend=scorer.reason)

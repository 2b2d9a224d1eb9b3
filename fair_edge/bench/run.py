"""``fair-edge bench``: sustained frames/s and capture -> verdict latency of one bundle, per batch size.

Two ways to time a (backend, batch) pair:
- ``loop`` mode runs the real station loop: ``LineSource`` (synthetic frames held in memory)
  -> ``CaptureThread`` (bounded queue, ``drop_oldest``) -> ``Inspector`` with
  ``LoopSettings(max_batch=b)``. frames/s = inspected / duration; latency = capture -> verdict.
- ``compute`` mode times ``preprocess(frames) + backend.infer`` on ready lists of b frames, no
  threads: the pure pre-process + device throughput; latency = one batch, pre-process -> host result.

How the loop is fed (``feed``) decides what its latency means:
- ``closed`` (default): at most 2 x b frames are between capture and verdict; the reader waits
  (blocked, GIL released) for a verdict before it takes the next frame. The loop is saturated,
  nothing is dropped, and latency = queueing behind at most one batch + the batch's own work.
- ``free``: ``LineSource(fps=0)`` reads as fast as it can and the queue drops the oldest frame;
  drops are reported. The reader spins in Python and competes for the GIL with the loop, which
  understates small-batch throughput; a real camera blocks in its driver instead.
- a number: a line at that many frames/s (latency at a given line rate; drops if it cannot keep up).

``--mode cameras`` times one cell of N cameras (one model, frames batched across cameras) against N
single-camera stations (N model copies) in the same process, interleaved: ``fair_edge.bench.cameras``.

The baseline, timed in the same run at every batch size: PyTorch eager (no CUDA graphs) on the
selected backend's device with the reference CPU pre-processing. Speed does not depend on the
weights, so ``synthetic_bundle`` (random weights, any family and width) serves when no trained model exists.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import os
import platform
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fair_edge.runtime.backends import BundleScorer, CpuPreprocessor
from fair_edge.runtime.selection import BackendOptions, select_backend
from fair_edge.runtime.pytorch import TorchBackend
from fair_edge.bench.settings import BenchSettings
from fair_edge.cameras import CaptureSettings, CaptureThread, EndOfStream, LineSource
from fair_edge.errors import BundleError, ConfigError, FairEdgeError
from fair_edge.station.inspector import Inspector, LoopSettings, exact_percentiles

log = logging.getLogger(__name__)

NO_THRESHOLD = 1e30  # a bundle without a calibrated threshold: every verdict OK (speed does not depend on it)


class BenchError(FairEdgeError):
    """A benchmark run could not produce an honest number (e.g. the backend failed on frames)."""


# ----------------------------------------------------------------------------- inputs
def synthetic_frames(height: int, width: int, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``count`` distinct frames, each (height, width, 3) uint8 BGR in host memory: a lit gradient with noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 190, width, dtype=np.float32)[None, :, None]
    frames = []
    for _ in range(count):
        noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
        frames.append((ramp + rng.uniform(-20, 20)).clip(0, 215).astype(np.uint8) + noise)
    return frames


def synthetic_model(family: str, width: int | None, image_size: int = 256):
    """The ModelSpec of a random-weight bench bundle: ``family`` with its default settings (and ``width``, when
    given, which the family must have among its settings)."""
    from fair_edge.models.registry import ModelSpec, get_family
    from fair_edge.preprocess import PreprocessConfig

    impl = get_family(family)
    if width is not None and width < 1:
        raise ConfigError(f"--synthetic-width must be >= 1 (the paper's widths are 32, 64, 128); found {width}.")
    if width is not None and "width" not in impl.setting_names():
        raise ConfigError(f"--synthetic-width sets FAIR's UNet width; the {impl.key} family has none. Leave it out.")
    settings = impl.settings_from_options({"width": width})
    return ModelSpec(impl.key, PreprocessConfig(image_size=image_size), settings)


def synthetic_bundle(out: Path, model, precision: str = "fp32", max_batch: int = 16,
                     calib_frames: list[np.ndarray] | None = None, seed: int = 0):
    """A bundle of ``model`` (a ModelSpec) with random weights (no training).

    calib_frames: (H, W, 3) uint8 BGR frames for INT8 calibration and the threshold. Returns the Bundle.
    """
    from fair_edge.models.checkpoint import Checkpoint
    from fair_edge.export.build import BuildOptions, build_bundle

    torch.manual_seed(seed)
    module = model.build()
    ckpt = Checkpoint(model, model.impl.weights(module),
                      {"source": f"random weights (fair-edge bench, {model.describe()}); not a trained model"})
    options = BuildOptions(precision=precision, max_batch=max_batch, engine=False,
                           command=f"fair-edge bench --synthetic-model {model.family} --image-size {model.preprocess.image_size}")
    return build_bundle(ckpt, out, options, calib_frames=calib_frames).bundle


# ----------------------------------------------------------------------------- scorers
def baseline_scorer(bundle, device: torch.device) -> BundleScorer:
    """PyTorch eager (no CUDA graphs) on ``device`` with the reference CPU pre-processing."""
    if bundle.weights_path is None:
        raise BundleError(f"bundle {bundle.root} holds no PyTorch weights for the baseline; rebuild it with "
                          "`fair-edge build`, or pass --baseline none.")
    backend = TorchBackend(bundle.weights_path, device, cuda_graphs=False)
    return BundleScorer(backend, CpuPreprocessor(bundle.model, device),
                         f"baseline: PyTorch eager on {device.type} with CPU pre-processing")


def check_batches(bundle, scorer: BundleScorer, batches: tuple[int, ...], flag: str = "--batches") -> None:
    """A TensorRT engine runs batches up to the bundle's max_batch; ``flag`` names the option that asked for more."""
    if scorer.backend.name == "tensorrt" and max(batches) > bundle.max_batch:
        raise ConfigError(f"{flag} {max(batches)} exceeds the engine's max batch {bundle.max_batch}; "
                          f"pass {flag} up to {bundle.max_batch} or rebuild with a larger --max-batch.")


class CountedPreprocess:
    """Wraps a pre-processor to count the batches it sees (mean batch size of a loop run)."""

    def __init__(self, preprocess: Callable) -> None:
        self.preprocess, self.batches = preprocess, 0

    def __call__(self, frames: list[np.ndarray]):
        self.batches += 1
        return self.preprocess(frames)


def warm(scorer: BundleScorer, frames: list[np.ndarray], batch: int, seconds: float, loop: bool) -> None:
    """Compile / capture every batch size the loop can form (1..b on CUDA, where each is a CUDA graph;
    only b when no loop is timed: compute mode forms full batches alone)."""
    sizes = range(1, batch + 1) if loop and scorer.backend.device.type == "cuda" else (batch,)
    for size in sizes:
        scorer.infer_frames(_take(frames, 0, size))
    _time_batches(scorer, frames, batch, seconds)


def label(scorer: BundleScorer) -> tuple[str, str]:
    """Short names of a scorer's backend (e.g. 'torch-cuda graphs') and pre-processing ('fused' / 'cpu')."""
    b = scorer.backend
    if isinstance(b, TorchBackend):
        name = f"torch-{b.device.type} {'graphs' if b.use_graphs else 'eager'}{' compiled' if b.compiled else ''}"
    else:
        name = b.name
    pre = "fused" if type(scorer.preprocess).__name__ == "FusedGpuPreprocessor" else "cpu"
    return name, pre


def _take(frames: list[np.ndarray], start: int, count: int) -> list[np.ndarray]:
    return [frames[(start + i) % len(frames)] for i in range(count)]


# ----------------------------------------------------------------------------- one timing
@dataclass(frozen=True)
class BenchRow:
    """One timed (role, backend, mode, batch). backend / preprocess: short names; detail: the selection
    reason. fps: frames/s sustained. p50/p99/max_ms: capture ->
    verdict (loop) or one batch's pre-process + infer (compute), milliseconds. dropped: frames the
    capture queue discarded. mean_batch: frames per inference. vs_baseline: fps / baseline fps, same batch."""

    role: str
    backend: str
    preprocess: str
    detail: str
    mode: str
    batch: int
    fps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    frames: int
    dropped: int
    seconds: float
    mean_batch: float
    vs_baseline: float | None = None

    def line(self) -> str:
        """One line of progress: 'backend loop batch 4: 11.2 frames/s'."""
        return f"{self.role} {self.mode} batch {self.batch}: {self.fps:.1f} frames/s"


def _time_batches(scorer: BundleScorer, frames: list[np.ndarray], batch: int, seconds: float) -> list[float]:
    """Seconds per batch of ``preprocess + infer`` (infer returns host arrays, so each is complete)."""
    times, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        scorer.infer_frames(_take(frames, i, batch))
        times.append(time.perf_counter() - t)
        i += batch
    return times


def time_compute(scorer: BundleScorer, frames: list[np.ndarray], batch: int, seconds: float, role: str) -> BenchRow:
    times_ms = [t * 1000.0 for t in _time_batches(scorer, frames, batch, seconds)]
    total_s = sum(times_ms) / 1000.0
    lat = exact_percentiles(times_ms)
    return BenchRow(role, *label(scorer), scorer.reason, "compute", batch, len(times_ms) * batch / total_s,
                    lat["p50_ms"], lat["p99_ms"], lat["max_ms"], len(times_ms) * batch, 0, total_s, float(batch))


class _Gate:
    """Credits for a closed-loop feed: a frame takes one before capture, its verdict gives it back."""

    def __init__(self, credits: int) -> None:
        self._credits = threading.Semaphore(credits)
        self._open = threading.Event()

    def take(self) -> bool:
        """True with a credit; False once the gate is open (timing over)."""
        while not self._credits.acquire(timeout=0.05):  # blocked, GIL released
            if self._open.is_set():
                return False
        return not self._open.is_set()

    def give(self, *_: object) -> None:
        self._credits.release()

    def open(self) -> None:
        self._open.set()


class _GatedLine(LineSource):
    """A LineSource whose next frame waits for a credit (t_capture is taken after the wait)."""

    def __init__(self, images: list[np.ndarray], gate: _Gate, name: str = "bench") -> None:
        super().__init__(images, fps=0.0, loop=True, name=name)
        self.gate = gate

    def _grab(self):
        if not self.gate.take():
            raise EndOfStream("bench: timing over")  # no frame after stop(): it would count as a drop
        return super()._grab()


class _GatedCapture(CaptureThread):
    """Stopping opens the gate first, so a reader waiting for a credit ends at once."""

    def __init__(self, source: _GatedLine, settings: CaptureSettings, **hooks) -> None:
        super().__init__(source, settings, **hooks)
        self.gate = source.gate

    def stop(self) -> bool:
        self.gate.open()
        return super().stop()


def capture_for(frames: list[np.ndarray], feed: str | float, batch: int, queue_size: int, name: str = "bench",
                on_queued: Callable[[], None] | None = None) -> tuple[CaptureThread, list]:
    """The capture thread (not started) of a synthetic camera ``name`` for ``feed``, and the verdict callbacks it
    needs. queue_size: 0 = 2 x batch. on_queued: the ``CaptureThread`` hook (a ``CaptureMux``'s ``wake``)."""
    settings = CaptureSettings(queue_size=queue_size or 2 * batch, full_policy="drop_oldest")
    if feed == "closed":
        gate = _Gate(settings.queue_size)
        return _GatedCapture(_GatedLine(frames, gate, name), settings, on_queued=on_queued), [gate.give]
    fps = 0.0 if feed == "free" else float(feed)
    return CaptureThread(LineSource(frames, fps=fps, loop=True, name=name), settings, on_queued=on_queued), []


def time_loop(scorer: BundleScorer, frames: list[np.ndarray], batch: int, settings: BenchSettings,
              threshold: float, role: str) -> BenchRow:
    errors: list[str] = []
    latency_ms: list[float] = []   # every frame's: the bench's percentiles are exact (the station's are bounded)

    def on_verdict(frame, verdict, amap) -> None:   # every latency, and the first failed verdict
        latency_ms.append(verdict.latency_ms)
        if verdict.error and not errors:
            errors.append(verdict.error)

    counted = CountedPreprocess(scorer.preprocess)
    capture, callbacks = capture_for(frames, settings.feed, batch, settings.queue_size)
    loop = LoopSettings(max_batch=batch, max_wait_ms=settings.max_wait_ms)
    with capture:
        inspector = Inspector(capture, replace(scorer, preprocess=counted), threshold, settings=loop,
                              on_verdict=[*callbacks, on_verdict])
        summary = inspector.run(threading.Event(), duration_s=settings.seconds)
    if errors or summary.fault:
        raise BenchError(f"{scorer.reason}, batch {batch}: {summary.inference_errors} failed batch(es), "
                         f"first error: {errors[0] if errors else summary.fault}; these numbers would not be speeds.")
    if not latency_ms:
        raise BenchError(f"{scorer.reason}, batch {batch}: no frame inspected in {settings.seconds:g} s; "
                         "time it for longer (--seconds).")
    lat = exact_percentiles(latency_ms)
    return BenchRow(role, *label(scorer), scorer.reason, "loop", batch, summary.fps,
                    lat["p50_ms"], lat["p99_ms"], lat["max_ms"], summary.inspected, summary.dropped,
                    summary.duration_s, summary.inspected / max(counted.batches, 1))


# ----------------------------------------------------------------------------- the run
@dataclass
class BenchReport:
    """Everything a BENCHMARKS.md entry needs: rows, environment, settings, command, bundle.
    stages: ``--mode stages`` rows. compile_seconds: torch.compile wall time per batch size (``--compile``).
    cameras: ``--mode cameras`` rows (``fair_edge.bench.cameras.CameraRow``); cameras_backend: their backend's
    selection reason. warnings: what the bench warned of beside the figures, one line each (a tiled bundle timed on
    frames its station decides NG: ``cli.bench.off_grid_note``), so the JSON says what the printed table does."""

    rows: list[BenchRow]
    environment: dict
    settings: dict
    bundle: dict
    command: str = ""
    best: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)
    compile_seconds: dict = field(default_factory=dict)
    cameras: list = field(default_factory=list)
    cameras_backend: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"command": self.command, "environment": self.environment, "settings": self.settings,
                "bundle": self.bundle, "best_batch": self.best, "results": [asdict(r) for r in self.rows],
                "stages": [r.to_dict() for r in self.stages], "compile_seconds": self.compile_seconds,
                "cameras": {"backend": self.cameras_backend, "rows": [asdict(r) for r in self.cameras]},
                "warnings": list(self.warnings)}


def environment(devices: set[str]) -> dict:
    """Device names, library versions and the date (UTC) of this run."""
    versions: dict[str, str | None] = {}
    for dist in ("fair-edge", "torch", "onnxruntime", "numpy", "tensorrt", "cuda-python"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "versions": versions,
           "torch_cuda": torch.version.cuda, "gpu": None}
    if "cuda" in devices:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError as exc:
        log.debug("cannot read /proc/cpuinfo: %s", exc)
    return platform.processor() or platform.machine()


def _with_ratios(rows: list[BenchRow]) -> list[BenchRow]:
    base = {(r.mode, r.batch): r.fps for r in rows if r.role == "baseline"}
    return [replace(r, vs_baseline=r.fps / base[(r.mode, r.batch)]) if (r.mode, r.batch) in base else r
            for r in rows]


def _best(rows: list[BenchRow]) -> dict:
    best: dict = {}
    for r in rows:
        key = f"{r.role}/{r.mode}"
        if key not in best or r.fps > best[key]["fps"]:
            best[key] = {"batch": r.batch, "fps": r.fps}
    return best


# a mode timed by a module above this one (``--mode cameras``: ``fair_edge.bench.cameras.cameras_report``), handed in
# by the caller: (bundle, settings, command, frames, threshold, on_row) -> BenchReport
ModeReport = Callable[..., "BenchReport"]


def run_bench(bundle, settings: BenchSettings, command: str = "",
              on_row: Callable[[BenchRow], None] | None = None,
              reports: dict[str, ModeReport] | None = None) -> BenchReport:
    """Time ``bundle`` with ``settings``: per batch, the backend then the baseline, per mode. reports: mode ->
    its ``ModeReport`` for the modes timed elsewhere (ConfigError when ``settings.mode`` needs one not given)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    frames = synthetic_frames(*settings.frame_hw, count=settings.distinct_frames)
    threshold = bundle.threshold.value if bundle.threshold is not None else NO_THRESHOLD
    if settings.mode == "stages":
        return _stages_report(bundle, settings, command, frames, threshold)
    if settings.mode in (reports or {}):
        return reports[settings.mode](bundle, settings, command, frames, threshold, on_row)
    if settings.mode == "cameras":
        raise ConfigError("--mode cameras is timed by fair_edge.bench.cameras.cameras_report; pass it in reports= "
                          "(`fair-edge bench` does).")
    rows: list[BenchRow] = []
    with ExitStack() as stack:
        scorer = select_backend(bundle, settings.backend, BackendOptions(compile=settings.compile))
        stack.callback(scorer.backend.close)
        scorers = [("backend", scorer)]
        if settings.baseline != "none":
            base = baseline_scorer(bundle, scorer.backend.device)
            stack.callback(base.backend.close)
            scorers.append(("baseline", base))
        check_batches(bundle, scorer, settings.batches)
        for batch in settings.batches:
            for role, sc in scorers:
                warm(sc, frames, batch, settings.warmup_s, "loop" in settings.modes)
                for mode in settings.modes:
                    row = (time_loop(sc, frames, batch, settings, threshold, role) if mode == "loop"
                           else time_compute(sc, frames, batch, settings.seconds, role))
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
        devices = {sc.backend.device.type for _, sc in scorers}
        compile_s = getattr(scorer.backend, "compile_seconds", {})
    rows = _with_ratios(rows)
    report = BenchReport(rows, environment(devices), settings_dict(settings), bundle_info(bundle), command, _best(rows))
    report.compile_seconds = compile_s
    return report


def bundle_info(bundle) -> dict:
    return {"root": str(bundle.root), "model": bundle.model.describe(), "image_size": bundle.image_size,
            "precision": bundle.precision, "max_batch": bundle.max_batch, "training": dict(bundle.training),
            "facts": dict(bundle.facts)}


def settings_dict(settings: BenchSettings) -> dict:
    out = asdict(settings)
    out["frames"] = f"{settings.frame_hw[1]}x{settings.frame_hw[0]}"
    return out


def _stages_report(bundle, settings: BenchSettings, command: str, frames: list[np.ndarray],
                   threshold: float) -> BenchReport:
    """``--mode stages``: per-stage times of the CPU path, every batch, both CPU high-pass methods."""
    from fair_edge.bench.stages import time_stages

    backend = "onnxruntime" if settings.backend == "auto" else settings.backend
    stages = [row for batch in settings.batches
              for row in time_stages(bundle, backend, frames, batch, settings.seconds, threshold,
                                     threads=settings.torch_threads)]
    return BenchReport([], environment({"cpu"}), settings_dict(settings), bundle_info(bundle), command,
                       stages=stages)


def run_synthetic_bench(model, precision: str, settings: BenchSettings, command: str = "",
                        on_row: Callable[[BenchRow], None] | None = None,
                        reports: dict[str, ModeReport] | None = None) -> BenchReport:
    """Build a random-weight bundle of ``model`` (``synthetic_model``) in a temporary folder, bench it, delete it."""
    calib = synthetic_frames(*settings.frame_hw, count=settings.distinct_frames, seed=1)
    with tempfile.TemporaryDirectory(prefix="fair-edge-bench-") as tmp:
        most = max(settings.cameras) if settings.mode == "cameras" else max(settings.batches)
        bundle = synthetic_bundle(Path(tmp) / "bundle", model, precision, max_batch=most, calib_frames=calib)
        report = run_bench(bundle, settings, command, on_row, reports)
    report.bundle["synthetic"] = True
    return report

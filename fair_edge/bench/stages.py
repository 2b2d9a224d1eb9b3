"""``fair-edge bench --mode stages``: where the CPU path's time goes, per frame and stage.

Stages: copy (uint8 -> float32), resize, highpass (gray + high-pass, both ``HIGHPASS_METHODS``),
inference (the UNet), scoring (MSGMS + colour + mean filter + max), decision (ROI-weighted max of
the anomaly map, the worst case of ``Inspector.inspect``, and the threshold compare), regions (defect
regions of every map above the bundle's pixel threshold: connected components, sizes, rotated boxes;
``fair_edge.regions``; a bundle without one uses the 99th percentile of the first batch's maps).

Inference and scoring run as one ONNX Runtime graph: the session is profiled and each batch's wall
time is split in proportion to the kernel time of the nodes in the model family's network scope
(``network_scope``, FAIR's ``/unet/``: inference) and all others (scoring). INT8 bundles run their CPU graph.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fair_edge.errors import ConfigError
from fair_edge.models.tensors import OUTPUT_NAMES
from fair_edge.preprocess import StageClock
from fair_edge.regions import MapGeometry, extract_regions
from fair_edge.runtime.backends import HIGHPASS_METHODS, CpuPreprocessor, cpu_graph

log = logging.getLogger(__name__)
STAGE_NAMES = ("copy", "resize", "highpass", "inference", "scoring", "decision", "regions")


@dataclass(frozen=True)
class StageRow:
    """Mean milliseconds per frame of each stage for one (backend, high-pass method, batch)."""

    backend: str
    highpass: str
    batch: int
    batches: int
    ms_per_frame: dict

    @property
    def total_ms(self) -> float:
        return sum(self.ms_per_frame.values())

    def to_dict(self) -> dict:
        return {"backend": self.backend, "highpass": self.highpass, "batch": self.batch, "batches": self.batches,
                "ms_per_frame": self.ms_per_frame, "total_ms": self.total_ms,
                "frames_per_s": 1000.0 / self.total_ms if self.total_ms > 0 else 0.0}


class _OrtSplit:
    """Runs the bundle's ONNX graph with profiling; charges each run's wall time to inference / scoring."""

    def __init__(self, onnx_path: Path, scope: tuple[str, ...], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = threads, 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "fair-edge-stages")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.wall, self.scope = 0.0, scope

    def __call__(self, inputs: dict[str, np.ndarray], clock: StageClock) -> np.ndarray:
        t = time.perf_counter()
        maps, _ = self.session.run(list(OUTPUT_NAMES), {i.name: inputs[i.name] for i in self.session.get_inputs()})
        self.wall += time.perf_counter() - t
        clock.start()
        return maps[:, 0]

    def split(self, clock: StageClock) -> None:
        profile = Path(self.session.end_profiling())
        events = json.loads(profile.read_text())
        profile.unlink()
        kernel = {"inference": 0.0, "scoring": 0.0}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                kernel["inference" if e["name"].startswith(self.scope) else "scoring"] += e["dur"]
        total = sum(kernel.values()) or 1.0
        for stage, dur in kernel.items():
            clock.seconds[stage] = self.wall * dur / total


def _runner(bundle, backend: str, threads: int):
    if backend == "onnxruntime":
        return _OrtSplit(cpu_graph(bundle)[0], bundle.model.impl.network_scope, threads)
    raise ConfigError(f"--mode stages times the CPU station's path: --backend onnxruntime (or auto); found {backend!r}.")


def time_stages(bundle, backend: str, frames: list[np.ndarray], batch: int, seconds: float, threshold: float,
                threads: int = 0, methods: tuple[str, ...] = HIGHPASS_METHODS) -> list[StageRow]:
    """One row per high-pass method: stage times of ``batch``-frame batches for ``seconds`` each.

    frames: (H, W, 3) uint8 BGR host frames, cycled. threshold: the decision threshold (any float)."""
    rows = []
    roi = np.ones((bundle.image_size, bundle.image_size), np.float32)
    for method in methods:
        try:
            pipeline = CpuPreprocessor(bundle.model, highpass=method)
        except ConfigError as exc:  # e.g. no compact separable kernel for this filter: time the others
            log.warning("stages: %s high-pass not timed: %s", method, str(exc).split(". ")[0])
            continue
        run = _runner(bundle, backend, threads)
        warm = run(_host(pipeline(frames[:batch])), StageClock())  # warm-up, untimed
        pixel = _pixel_threshold(bundle, warm)
        run.wall, clock, n, start = 0.0, StageClock(), 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            take = [frames[(n * batch + i) % len(frames)] for i in range(batch)]
            maps = run(_host(pipeline(take, clock)), clock)
            _decide(maps, roi, threshold)
            clock.lap("decision")
            for frame, amap in zip(take, maps):
                extract_regions(amap, pixel, MapGeometry.of(frame.shape[:2], amap.shape), mm_per_px=0.05)
            clock.lap("regions")
            n += 1
        run.split(clock)
        per_frame = {s: 1000.0 * clock.seconds.get(s, 0.0) / (n * batch) for s in STAGE_NAMES}
        rows.append(StageRow(backend, method, batch, n, per_frame))
    return rows


def _pixel_threshold(bundle, maps: np.ndarray) -> float:
    """The bundle's pixel threshold, else the 99th percentile of ``maps`` ((B, S, S) float32)."""
    calibrated = getattr(bundle, "pixel_threshold", None)
    return calibrated.value if calibrated is not None else float(np.percentile(maps, 99))


def _host(inputs: dict) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in inputs.items()}


def _decide(maps: np.ndarray, roi: np.ndarray, threshold: float) -> np.ndarray:
    """(B, S, S) maps -> (B,) bool NG, as ``Inspector.inspect`` decides with a region of interest."""
    return (maps * roi).reshape(len(maps), -1).max(axis=1) > threshold


def stage_table(rows: list[StageRow], say: Callable[[str], None]) -> None:
    """Print ``rows`` as a plain table: ms per frame per stage, total and frames/s."""
    say(f"{'backend':<12} {'highpass':<10} {'batch':>5} " + " ".join(f"{s:>10}" for s in STAGE_NAMES)
        + f" {'total ms':>9} {'frames/s':>9}")
    for r in rows:
        d = r.to_dict()
        say(f"{r.backend:<12} {r.highpass:<10} {r.batch:>5} " + " ".join(f"{r.ms_per_frame[s]:>10.2f}" for s in STAGE_NAMES)
            + f" {r.total_ms:>9.2f} {d['frames_per_s']:>9.1f}")

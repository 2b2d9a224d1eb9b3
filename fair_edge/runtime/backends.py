"""Inference backends over one bundle, the pre-processing that feeds them, and ``BundleScorer``, the
whole frames -> scores path of one bundle.

One contract for every backend and every model family:
  infer({input name: (B, C, S, S) float32 tensor on the backend's device})
    -> {anomaly_map: (B, 1, S, S) float32, score: (B,) float32} host NumPy arrays.
The input names are the bundle model's (``bundle.model.input_names``); the pre-processors make
exactly those from uint8 frames. ONNX Runtime, the CPU default that every bundle's graph runs on, is
defined here over ``calibration.onnx_graph.OnnxGraph`` (which the build checks its graphs with); PyTorch (``pytorch``), TensorRT (``tensorrt``)
and OpenVINO (``openvino``) each have a module, and ``selection.select_backend`` picks one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from fair_edge.calibration.onnx_graph import Inputs, OnnxGraph
from fair_edge.calibration.threshold import Threshold
from fair_edge.errors import ConfigError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.tensors import ANOMALY_MAP, OUTPUT_NAMES, SCORE
from fair_edge.preprocess import CpuPipeline, ModelInputs, PreprocessConfig
from fair_edge.tiling import FrameTiler

log = logging.getLogger(__name__)

Preprocess = Callable[[list[np.ndarray]], "dict[str, torch.Tensor | np.ndarray]"]


class Backend(Protocol):
    name: str
    device: torch.device

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Closable(Protocol):
    name: str

    def close(self) -> None: ...


@runtime_checkable
class FrameScorer(Protocol):
    """What the inspection loop runs and a hot swap hands over: whole frames in, maps and scores out.
    ``BundleScorer`` (one bundle) and ``fusion.FusedScorer`` (several, one fused score) are the two.

    infer_frames(frames: list of (H, W, 3) uint8 BGR or (H, W) gray host arrays) -> (maps (N, h, w)
    float32, scores (N,) float32). backend: what to close when the scorer is retired. reason: which
    backend runs and why (shown in the summary and the console). graph_threshold: the threshold
    calibrated on the graph this scorer runs when that is not the bundle's (None: the bundle's)."""

    backend: Closable
    reason: str
    graph_threshold: Threshold | None

    def infer_frames(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


# ----------------------------------------------------------------------------- ONNX Runtime (the CPU default)
def host_array(value: "np.ndarray | torch.Tensor") -> np.ndarray:
    """A contiguous float32 host array of ``value`` (a NumPy array or a tensor on any device). The same as
    ``calibration.onnx_graph.host_array``, written here too so that a frame's path stays in this file (the 8
    files of docs/architecture.md, checked by tests/test_frame_path.py)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


class OnnxRuntimeBackend(OnnxGraph):
    """A bundle's ONNX graph on ONNX Runtime as a backend: ``calibration.onnx_graph.OnnxGraph`` (the CPU graph
    runner the build checks its graphs with: session, input check, ``infer_batched``) with the backend's name
    and device, and ``infer`` on the frame path.

    infer({input name: (B, C, S, S) float32}) -> {anomaly_map: (B, 1, S, S), score: (B,)} float32 host arrays.
    """

    name = "onnxruntime"
    device = torch.device("cpu")

    @classmethod
    def from_bundle(cls, bundle, threads: int = 0) -> "OnnxRuntimeBackend":
        """The backend for ``bundle.onnx_path`` (the graph of the bundle's precision)."""
        return cls(bundle.onnx_path, bundle.model.input_names, threads=threads)

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        feeds = {name: host_array(inputs[name]) for name in self.input_names}
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))


# ----------------------------------------------------------------------------- pre-processing
HIGHPASS_METHODS = ("fft", "separable")
DEFAULT_HIGHPASS = "fft"  # measured faster than "separable" at 256 x 256 (BENCHMARKS.md, per-stage table)


def cpu_pipeline(cfg: PreprocessConfig, method: str = DEFAULT_HIGHPASS) -> CpuPipeline:
    """The CPU pipeline of ``cfg`` with its high-pass by ``method``: ``fft`` (exact) or ``separable`` (the
    fused CUDA kernel's taps, ``runtime.highpass_plan.separable_highpass``; ConfigError for filters with no
    compact kernel, e.g. 'ideal'). ``sobel_xy`` is spatial for both."""
    if method not in HIGHPASS_METHODS:
        raise ConfigError(f"CPU high-pass method must be one of {', '.join(HIGHPASS_METHODS)}; found {method!r}.")
    if method == "separable" and cfg.filter != "sobel_xy":
        from fair_edge.runtime.highpass_plan import separable_highpass

        return CpuPipeline(cfg, separable_highpass(cfg))
    return CpuPipeline(cfg)


class CpuPreprocessor(ModelInputs):
    """The CPU pre-processing: frames -> the model's named inputs (``preprocess.ModelInputs``, the
    build's too), with the high-pass by ``highpass``: fft (exact) or the fused kernel's separable taps.

    host: for engines that run on host arrays (ONNX Runtime, OpenVINO): when the pipeline makes every input,
    they are handed on as the NumPy arrays it wrote (no torch on that path); otherwise tensors on ``device``.
    """

    def __init__(self, model: ModelSpec, device: torch.device = torch.device("cpu"),
                 highpass: str = DEFAULT_HIGHPASS, host: bool = False) -> None:
        super().__init__(model, device, cpu_pipeline(model.preprocess, highpass), host)


# ----------------------------------------------------------------------------- one bundle's frames -> scores
def whole_frames() -> FrameTiler:
    """The identity tiler of an untiled bundle (``BundleScorer``'s default)."""
    return FrameTiler(None, 0)


@dataclass(frozen=True)
class BundleScorer:
    """A backend, the pre-processing that feeds it, why it was chosen, and the bundle's tiling
    (identity for whole-frame bundles): ``infer_frames`` is the whole frames -> verdict-scores path.
    graph_threshold: the decision threshold calibrated on the graph this backend runs, where that is
    not the bundle's main graph (the CPU INT8 graph; the FP32 reference graph for the PyTorch backends on an
    FP16/INT8 bundle, whose FP32 weights reproduce it).
    max_batch: frames (tiles) per backend call: the TensorRT engine profile's limit (every bundle), the bundle's
    ``max_batch`` for a tiled one; None = all at once.
    backend_name: the ``selection.BACKENDS`` name that made it ('' when made by hand). graph: the file name of
    the bundle's ONNX graph whose numbers this backend reproduces, and on which its threshold is calibrated: the
    precision's graph (its TensorRT engine; the CPU engines on FP32/FP16), the INT8 CPU graph, or the FP32
    reference graph (the PyTorch backends' weights.pt, parity-checked against it); '' when made by hand."""

    backend: Backend
    preprocess: Preprocess
    reason: str
    graph_threshold: Threshold | None = None
    tiler: FrameTiler = field(default_factory=whole_frames)
    max_batch: int | None = None  # frames or tiles per backend call; None = all at once
    backend_name: str = ""
    graph: str = ""

    def infer_frames(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """frames: list of (H, W, 3) uint8 BGR (or (H, W) gray), checked by ``preprocess.check_frame``,
        one size per batch when tiled (ConfigError naming two frames otherwise: their stitched maps differ in size).

        Returns (maps (N, h, w) float32: the model's map, or the stitched frame map of a tiled bundle;
        scores (N,) float32). Whole frames go straight to pre-processing and the backend. Tiles of
        same-sized frames go to a pre-processing that crops them itself (``tiles``: the fused GPU kernel,
        all tiles in one launch) in one call; otherwise they are cut on the host (views) and
        pre-processed like frames, ``max_batch`` at a time."""
        if self.tiler.tiling is None:
            return self._infer_whole(frames)
        tiles, layouts = self.tiler.split(frames)
        other = next((i for i, lay in enumerate(layouts) if lay.map_hw != layouts[0].map_hw), None)
        if other is not None:
            (h0, w0), (h1, w1) = layouts[0].frame_hw, layouts[other].frame_hw
            raise ConfigError(f"a tiled bundle scores frames of one size per call (their stitched maps are returned as one "
                              f"array); found frame 0 of {w0} x {h0} px and frame {other} of {w1} x {h1} px, whose maps "
                              f"are {layouts[0].map_hw[1]} x {layouts[0].map_hw[0]} and {layouts[other].map_hw[1]} x "
                              f"{layouts[other].map_hw[0]}. Call infer_frames once per frame size, as the station does.")
        step = self.max_batch or len(tiles)
        crops_itself = hasattr(self.preprocess, "tiles") and layouts[0] is not None and len(set(layouts)) == 1
        if crops_itself:
            inputs = self.preprocess.tiles(frames, layouts[0])
            parts = [self.backend.infer({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, len(tiles), step)]
        else:
            parts = [self.backend.infer(self.preprocess(tiles[i : i + step])) for i in range(0, len(tiles), step)]
        maps = np.concatenate([p[ANOMALY_MAP][:, 0] for p in parts])
        scores = np.concatenate([p[SCORE] for p in parts])
        frame_maps, frame_scores = self.tiler.stitch(maps, scores, layouts)
        return np.stack(frame_maps), frame_scores

    def _infer_whole(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Untiled bundles: frames -> inputs -> backend, ``max_batch`` at a time; no split, no stitch."""
        step = self.max_batch or len(frames)
        parts = [self.backend.infer(self.preprocess(frames[i : i + step])) for i in range(0, len(frames), step)]
        # copies: a backend may hand out views of buffers it reuses for the next batch
        maps = np.concatenate([p[ANOMALY_MAP][:, 0] for p in parts])
        return maps, np.asarray(np.concatenate([p[SCORE] for p in parts]), np.float32)


def cpu_graph(bundle) -> tuple[Path, Threshold | None, str]:
    """The graph CPU engines run: an INT8 bundle's CPU graph (with its own threshold, calibrated on ONNX Runtime's
    scores; OpenVINO's on its own: ``selection.openvino_graph``), else the bundle's graph (None: the bundle's)."""
    if bundle.cpu_onnx_path is not None:
        return bundle.cpu_onnx_path, bundle.cpu_threshold, "int8 CPU graph"
    return bundle.onnx_path, None, f"{bundle.precision} graph"


def close_scorer(scorer: FrameScorer) -> None:
    """Close what a model that is no longer used holds (after a swap, a pending one replaced before it ran, a load
    that failed, the station's exit): its backend, then its pre-processing where that has a ``close`` (the fused
    GPU kernel: its CUDA module, staging buffer and context retain). Each failing close is logged, never raised,
    and does not keep the other from closing. Safe to call twice on one scorer."""
    _close(scorer.backend, "backend")
    preprocess = getattr(scorer, "preprocess", None)   # a fused scorer has none: its members close with its backend
    if callable(getattr(preprocess, "close", None)):
        _close(preprocess, "pre-processing")


def _close(part, what: str) -> None:
    try:
        part.close()
    except Exception:  # noqa: BLE001 - see close_scorer's docstring
        log.exception("closing the %s (%s) of a model no longer used failed", what, type(part).__name__)

"""Inference backends over one bundle, and the pre-processing that feeds them.

One contract for every backend and every model family:
  infer({input name: (B, C, S, S) float32 tensor on the backend's device})
    -> {anomaly_map: (B, 1, S, S) float32, score: (B,) float32} host NumPy arrays.
The input names are the bundle model's (``bundle.model.input_names``); the pre-processors make
exactly those from uint8 frames. ``select_backend(bundle, "auto")`` picks TensorRT (an engine built
for this GPU), then PyTorch on CUDA (CUDA graphs), then ONNX Runtime on the CPU, and says why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from fair_edge.calibration.threshold import Threshold
from fair_edge.errors import BundleError, ConfigError, FairEdgeError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.tensors import ANOMALY_MAP, COLOUR, HIGHPASS, OUTPUT_NAMES, SCORE
from fair_edge.runtime.compiled import CompiledModule
from fair_edge.runtime.preprocess_cpu import DEFAULT_HIGHPASS, CpuPipeline, StageClock
from fair_edge.tiling import FrameTiler, TileLayout

log = logging.getLogger(__name__)
Inputs = Mapping[str, "torch.Tensor | np.ndarray"]  # host engines (ONNX Runtime, OpenVINO) take NumPy arrays too
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
    ``BackendChoice`` (one bundle) and ``fusion.FusedChoice`` (several, one fused score) are the two.

    infer_frames(frames: list of (H, W, 3) uint8 BGR or (H, W) gray host arrays) -> (maps (N, h, w)
    float32, scores (N,) float32). backend: what to close when the scorer is retired. reason: which
    backend runs and why (shown in the summary and the console). graph_threshold: the threshold
    calibrated on the graph this scorer runs when that is not the bundle's (None: the bundle's)."""

    backend: Closable
    reason: str
    graph_threshold: Threshold | None

    def infer_frames(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


# ----------------------------------------------------------------------------- backends
class TorchBackend:
    """The bundle's FP32 weights in PyTorch; on CUDA each batch size runs as a captured CUDA graph.

    compile: run the model through ``torch.compile`` (inductor; ``fair_edge.runtime.compiled``)."""

    name = "torch"

    def __init__(self, weights, device: torch.device, cuda_graphs: bool = True, compile: bool = False) -> None:
        from fair_edge.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(weights)
        self.device, self.input_names = device, ckpt.model.input_names
        self.detector = ckpt.build_detector(device)
        self.compiled = CompiledModule(self.detector) if compile else None
        self.use_graphs = cuda_graphs and device.type == "cuda"
        self.graphs: dict[int, tuple] = {}

    @property
    def compile_seconds(self) -> dict[int, float]:
        """Seconds torch.compile took per batch size (first call of each shape); empty when not compiled."""
        return dict(self.compiled.seconds) if self.compiled else {}

    def _forward(self, *inputs: torch.Tensor):
        return (self.compiled or self.detector)(*inputs)

    @torch.no_grad()
    def _capture(self, inputs: Inputs) -> tuple:
        static_in = [torch.zeros_like(inputs[n], device=self.device) for n in self.input_names]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up before capture, as CUDA graphs require (and compilation, if any)
                self._forward(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(*static_in)
        return graph, static_in, static_out

    @torch.no_grad()
    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        if not self.use_graphs:
            outputs = self._forward(*(inputs[n].to(self.device) for n in self.input_names))
        else:
            batch = inputs[self.input_names[0]].shape[0]
            if batch not in self.graphs:
                self.graphs[batch] = self._capture(inputs)
            graph, static_in, outputs = self.graphs[batch]
            for buffer, name in zip(static_in, self.input_names):
                buffer.copy_(inputs[name])
            graph.replay()
        return {name: t.float().cpu().numpy() for name, t in zip(OUTPUT_NAMES, outputs)}

    def close(self) -> None:
        self.graphs.clear()


# ----------------------------------------------------------------------------- pre-processing
class CpuPreprocessor:
    """The CPU pre-processing: frames -> the model's named inputs (float32 tensors on ``device``).

    frames: (H, W, 3) uint8 BGR (or (H, W) gray) host arrays; each input is (B, C, S, S). The colour
    image and a ``highpass`` input come from ``preprocess_cpu.CpuPipeline`` (NumPy / OpenCV; high-pass
    method ``highpass``: fft or the fused kernel's separable taps); any other input from the family's
    input maker applied to the colour image.

    host: for engines that run on host arrays (ONNX Runtime, OpenVINO): when the pipeline makes every input,
    they are handed on as the NumPy arrays it wrote (no torch on that path); otherwise tensors on ``device``.
    """

    def __init__(self, model: ModelSpec, device: torch.device = torch.device("cpu"),
                 highpass: str = DEFAULT_HIGHPASS, host: bool = False) -> None:
        self.names, self.device = model.input_names, device
        self.pipeline = CpuPipeline(model.preprocess, highpass)
        self.make_inputs = model.input_maker("cpu")
        self.host = host and set(self.names) <= {COLOUR, HIGHPASS}

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray], clock: StageClock | None = None) -> dict[str, torch.Tensor | np.ndarray]:
        colour = self.pipeline.colour(frames, clock)
        arrays = {COLOUR: colour}
        if HIGHPASS in self.names:
            arrays[HIGHPASS] = self.pipeline.highpass_of(colour, clock)
        if self.host:
            return {name: arrays[name] for name in self.names}
        inputs = {name: torch.from_numpy(a) for name, a in arrays.items() if name in self.names}
        if len(inputs) < len(self.names):
            inputs = {**self.make_inputs(torch.from_numpy(colour)), **inputs}
        return {name: inputs[name].to(self.device) for name in self.names}


class FusedGpuPreprocessor:
    """The fused CUDA kernel (resize, gray, high-pass; one launch): same-sized host frames -> CUDA inputs.

    Serves models whose inputs are among (highpass, colour); ConfigError for any other.
    """

    def __init__(self, model: ModelSpec) -> None:
        if not set(model.input_names) <= {HIGHPASS, COLOUR} or HIGHPASS not in model.input_names:
            raise ConfigError(f"the fused kernel makes highpass and colour; {model.describe()} takes {list(model.input_names)}.")
        from fair_edge.export.preprocess_gpu import FusedPreprocessor

        self.model, self.cfg = model, model.preprocess
        self.kernel = FusedPreprocessor(self.cfg, half=False)

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray]) -> dict[str, torch.Tensor]:
        if len({f.shape for f in frames}) > 1:
            return CpuPreprocessor(self.model, torch.device("cuda"))(frames)  # mixed sizes: rare, reference path
        highpass, colour = self._outputs(len(frames))
        self.kernel.run(np.stack(frames), highpass, colour, stream=torch.cuda.current_stream().cuda_stream)
        return self._inputs(highpass, colour)

    @torch.no_grad()
    def tiles(self, frames: list[np.ndarray], layout: TileLayout) -> dict[str, torch.Tensor]:
        """Every tile of ``layout`` of every frame (same-sized frames), cropped and resized in one kernel
        launch from the whole frames: inputs of len(frames) * layout.count items, frame by frame."""
        highpass, colour = self._outputs(len(frames) * layout.count)
        self.kernel.run_tiles(np.stack(frames), layout.crops, layout.tiling.tile, highpass, colour,
                              stream=torch.cuda.current_stream().cuda_stream)
        return self._inputs(highpass, colour)

    def _outputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh CUDA (highpass (batch, C, S, S), colour (batch, 3, S, S)) float32 buffers for the kernel."""
        size = self.cfg.image_size
        return (torch.empty(batch, self.cfg.in_channels, size, size, device="cuda"),
                torch.empty(batch, 3, size, size, device="cuda"))

    def _inputs(self, highpass: torch.Tensor, colour: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: t for name, t in ((HIGHPASS, highpass), (COLOUR, colour)) if name in self.model.input_names}


# ----------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class BackendOptions:
    """compile: torch.compile the PyTorch backends (``fair_edge.runtime.compiled``); the others ignore it."""

    compile: bool = False


def whole_frames() -> FrameTiler:
    """The identity tiler of an untiled bundle (``BackendChoice``'s default)."""
    return FrameTiler(None, 0)


@dataclass(frozen=True)
class BackendChoice:
    """A backend, the pre-processing that feeds it, why it was chosen, and the bundle's tiling
    (identity for whole-frame bundles): ``infer_frames`` is the whole frames -> verdict-scores path.
    graph_threshold: the decision threshold calibrated on the graph this backend runs, where that is
    not the bundle's main graph (the CPU INT8 graph)."""

    backend: Backend
    preprocess: Preprocess
    reason: str
    graph_threshold: Threshold | None = None
    tiler: FrameTiler = field(default_factory=whole_frames)
    max_batch: int | None = None  # tiles per backend call (a TensorRT engine's profile); None = all at once

    def infer_frames(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """frames: list of (H, W, 3) uint8 BGR (or (H, W) gray), checked by ``preprocess.check_frame``,
        one size per batch when tiled.

        Returns (maps (N, h, w) float32: the model's map, or the stitched frame map of a tiled bundle;
        scores (N,) float32). Whole frames go straight to pre-processing and the backend. Tiles of
        same-sized frames go to a pre-processing that crops them itself (``tiles``: the fused GPU kernel,
        all tiles in one launch) in one call; otherwise they are cut on the host (views) and
        pre-processed like frames, ``max_batch`` at a time."""
        if self.tiler.tiling is None:
            return self._infer_whole(frames)
        tiles, layouts = self.tiler.split(frames)
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



def _tensorrt(bundle, options: BackendOptions) -> BackendChoice:
    from fair_edge.runtime.tensorrt import TensorRTBackend

    if bundle.engine is None:
        raise ConfigError(f"bundle {bundle.root} has no TensorRT engine; build one with `fair-edge build` on this GPU.")
    return BackendChoice(TensorRTBackend.from_bundle(bundle), _gpu_preprocessor(bundle), "TensorRT engine in the bundle")


def _torch_cuda(bundle, options: BackendOptions) -> BackendChoice:
    if not torch.cuda.is_available():
        raise ConfigError("--backend torch-cuda: PyTorch sees no CUDA GPU. Use --backend onnxruntime or torch-cpu.")
    backend = TorchBackend(_weights(bundle), torch.device("cuda"), compile=options.compile)
    return BackendChoice(backend, _gpu_preprocessor(bundle),
                         f"PyTorch on CUDA with CUDA graphs{' and torch.compile' if options.compile else ''}")


def _torch_cpu(bundle, options: BackendOptions) -> BackendChoice:
    backend = TorchBackend(_weights(bundle), torch.device("cpu"), compile=options.compile)
    return BackendChoice(backend, CpuPreprocessor(bundle.model),
                         f"PyTorch {'torch.compile' if options.compile else 'eager'} on the CPU")


def cpu_graph(bundle) -> tuple[Path, Threshold | None, str]:
    """The graph CPU engines run: an INT8 bundle's CPU graph (with its own threshold), else the bundle's graph."""
    if bundle.cpu_onnx_path is not None:
        return bundle.cpu_onnx_path, bundle.cpu_threshold, "int8 CPU graph"
    return bundle.onnx_path, None, f"{bundle.precision} graph"


def _onnxruntime(bundle, options: BackendOptions) -> BackendChoice:
    from fair_edge.runtime.ort import OnnxRuntimeBackend

    path, threshold, what = cpu_graph(bundle)
    return BackendChoice(OnnxRuntimeBackend(path, bundle.model.input_names), CpuPreprocessor(bundle.model, host=True),
                         f"ONNX Runtime on the CPU ({what})", threshold)


def _openvino(bundle, options: BackendOptions) -> BackendChoice:
    from fair_edge.runtime.openvino import OpenVinoBackend

    path, threshold, what = cpu_graph(bundle)
    return BackendChoice(OpenVinoBackend(path, bundle.model.input_names), CpuPreprocessor(bundle.model, host=True),
                         f"OpenVINO on the CPU ({what})", threshold)


def _weights(bundle):
    if bundle.weights_path is None:
        raise BundleError(f"bundle {bundle.root} holds no PyTorch weights; rebuild it with `fair-edge build`.")
    return bundle.weights_path


def _gpu_preprocessor(bundle) -> Preprocess:
    try:
        return FusedGpuPreprocessor(bundle.model)
    except FairEdgeError as exc:
        log.warning("fused pre-processing kernel not used (%s); using the reference on the CPU", exc)
        return CpuPreprocessor(bundle.model, torch.device("cuda"))


BACKENDS: dict[str, Callable[..., BackendChoice]] = {
    "tensorrt": _tensorrt,
    "torch-cuda": _torch_cuda,
    "torch-cpu": _torch_cpu,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}
BACKEND_NAMES = ("auto", *BACKENDS)  # what --backend and the station file's backend accept: the one list
# CPU engines 'auto' times at start-up; torch-cpu is left out: the slowest on the CPU in every measurement.
CPU_CANDIDATES = ("onnxruntime", "openvino")
UNAVAILABLE = (FairEdgeError, ImportError, OSError, RuntimeError)


def _first_sentence(exc: Exception) -> str:
    return str(exc).split(". ")[0]


def probe_ms(choice: BackendChoice, size: int, repeats: int = 3) -> float:
    """Median milliseconds of pre-processing + inference of one (size, size, 3) frame, after one warm-up."""
    frame = np.full((size, size, 3), 128, np.uint8)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        choice.infer_frames([frame])
        if i:
            times.append(1000.0 * (time.perf_counter() - start))
    return float(np.median(times))


def fastest_cpu(bundle, options: BackendOptions = BackendOptions()) -> BackendChoice:
    """The fastest of the installed ``CPU_CANDIDATES`` on this machine (timed on one frame), saying why."""
    choices, notes = [], []
    for name in CPU_CANDIDATES:
        try:
            choices.append(BACKENDS[name](bundle, options))
        except UNAVAILABLE as exc:
            notes.append(f"{name}: {_first_sentence(exc)}")
    if not choices:
        raise ConfigError(f"no CPU backend could load {bundle.root}: {'; '.join(notes)}.")
    if len(choices) == 1:
        return replace(choices[0], reason=f"{choices[0].reason}, the only CPU engine installed")
    timed = sorted(((probe_ms(c, bundle.image_size), c) for c in choices), key=lambda t: t[0])
    for _, loser in timed[1:]:
        loser.backend.close()
    ms, best = timed[0]
    probe = ", ".join(f"{c.backend.name} {t:.1f} ms" for t, c in timed)
    return replace(best, reason=f"{best.reason}, the fastest CPU engine here (one frame: {probe})")


def select_backend(bundle, name: str = "auto", options: BackendOptions = BackendOptions()) -> BackendChoice:
    """The backend ``name`` for ``bundle``; 'auto' tries TensorRT, PyTorch CUDA, then the fastest CPU engine.
    The choice carries the bundle's tiling (``BackendChoice.infer_frames``)."""
    choice = _select(bundle, name, options)
    if bundle.preprocess.tiling is None:
        return choice
    return replace(choice, tiler=FrameTiler(bundle.preprocess.tiling, bundle.image_size), max_batch=bundle.max_batch)


def _select(bundle, name: str, options: BackendOptions) -> BackendChoice:
    if name != "auto":
        if name not in BACKENDS:
            raise ConfigError(f"backend must be auto or one of {', '.join(BACKENDS)}; found {name!r}.")
        return BACKENDS[name](bundle, options)
    reasons = []
    for candidate in ("tensorrt", "torch-cuda"):
        try:
            choice = BACKENDS[candidate](bundle, options)
            return replace(choice, reason=f"auto: {choice.reason}")
        except UNAVAILABLE as exc:
            reasons.append(f"{candidate}: {_first_sentence(exc)}")
    choice = fastest_cpu(bundle, options)
    return replace(choice, reason=f"auto: {choice.reason} ({'; '.join(reasons)})")

"""Inference backends over one bundle, and the pre-processing that feeds them.

All backends take the network inputs as torch tensors on their own device and return host
NumPy arrays:  infer(highpass (B, C, S, S), colour (B, 3, S, S)) -> (maps (B, S, S) float32,
scores (B,) float32). ``select_backend(bundle, "auto")`` picks TensorRT (an engine built for this
GPU), then PyTorch on CUDA (CUDA graphs), then ONNX Runtime on the CPU, and says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import numpy as np
import torch

from fair_edge.errors import BundleError, ConfigError, FairEdgeError
from fair_edge.preprocess import HighPass, frames_to_batch, to_gray
from fair_edge.tiling import FrameTiler

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    device: torch.device

    def infer(self, highpass: torch.Tensor, colour: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- backends
class OnnxRuntimeCpuBackend:
    """The bundle's ONNX graph (its precision) on ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, bundle, threads: int = 0) -> None:
        from fair_edge.runtime.ort import OnnxRuntimeBackend

        self.session = OnnxRuntimeBackend.from_bundle(bundle, threads=threads)

    def infer(self, highpass: torch.Tensor, colour: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.infer(highpass.numpy(), colour.numpy())
        return maps[:, 0], scores

    def close(self) -> None:
        self.session = None


class TorchBackend:
    """The bundle's FP32 weights in PyTorch; on CUDA each batch size runs as a captured CUDA graph."""

    name = "torch"

    def __init__(self, weights, device: torch.device, cuda_graphs: bool = True) -> None:
        from fair_edge.checkpoint import load_checkpoint

        self.device = device
        self.detector = load_checkpoint(weights).build_detector(device)
        self.use_graphs = cuda_graphs and device.type == "cuda"
        self.graphs: dict[int, tuple] = {}

    @torch.no_grad()
    def _capture(self, batch: int, channels: int, size: int) -> tuple:
        static_hp = torch.zeros(batch, channels, size, size, device=self.device)
        static_col = torch.zeros(batch, 3, size, size, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up before capture, as CUDA graphs require
                self.detector(static_hp, static_col)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_map, static_score = self.detector(static_hp, static_col)
        return graph, static_hp, static_col, static_map, static_score

    @torch.no_grad()
    def infer(self, highpass: torch.Tensor, colour: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if not self.use_graphs:
            amap, score = self.detector(highpass.to(self.device), colour.to(self.device))
            return amap[:, 0].float().cpu().numpy(), score.float().cpu().numpy()
        batch = highpass.shape[0]
        if batch not in self.graphs:
            self.graphs[batch] = self._capture(batch, highpass.shape[1], highpass.shape[-1])
        graph, static_hp, static_col, static_map, static_score = self.graphs[batch]
        static_hp.copy_(highpass)
        static_col.copy_(colour)
        graph.replay()
        return static_map[:, 0].cpu().numpy(), static_score.cpu().numpy()

    def close(self) -> None:
        self.graphs.clear()


class TensorRTBackend:
    """The bundle's TensorRT engine (built for this GPU and TensorRT version) on CUDA."""

    name = "tensorrt"
    device = torch.device("cuda")

    def __init__(self, bundle) -> None:
        from fair_edge.export.tensorrt import EngineRunner

        self.runner = EngineRunner.from_bundle(bundle)  # refuses an engine built for another GPU / TensorRT
        self.size = bundle.image_size

    def infer(self, highpass: torch.Tensor, colour: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        batch = highpass.shape[0]
        amap = torch.empty(batch, 1, self.size, self.size, device="cuda")
        score = torch.empty(batch, device="cuda")
        stream = torch.cuda.current_stream()
        self.runner.infer({"highpass": highpass.contiguous(), "colour": colour.contiguous()},
                          {"anomaly_map": amap, "score": score}, stream.cuda_stream)
        stream.synchronize()
        return amap[:, 0].cpu().numpy(), score.cpu().numpy()

    def close(self) -> None:
        self.runner.close()


# ----------------------------------------------------------------------------- pre-processing
class CpuPreprocessor:
    """The reference pre-processing on the CPU: frames -> (highpass, colour) CPU float32 tensors."""

    def __init__(self, cfg, device: torch.device = torch.device("cpu")) -> None:
        self.cfg, self.device = cfg, device
        self.highpass = HighPass(cfg)

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        colour = frames_to_batch(frames, self.cfg.image_size)
        return self.highpass(to_gray(colour)).to(self.device), colour.to(self.device)


class FusedGpuPreprocessor:
    """The fused CUDA kernel: a batch of same-sized host frames -> CUDA tensors, one launch."""

    def __init__(self, cfg) -> None:
        from fair_edge.export.preprocess_gpu import FusedPreprocessor

        self.cfg = cfg
        self.kernel = FusedPreprocessor(cfg, half=False)

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        if len({f.shape for f in frames}) > 1:
            return CpuPreprocessor(self.cfg, torch.device("cuda"))(frames)  # mixed sizes: rare, reference path
        size, batch = self.cfg.image_size, len(frames)
        highpass = torch.empty(batch, self.cfg.in_channels, size, size, device="cuda")
        colour = torch.empty(batch, 3, size, size, device="cuda")
        self.kernel.run(np.stack(frames), highpass, colour, stream=torch.cuda.current_stream().cuda_stream)
        return highpass, colour


# ----------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class BackendChoice:
    """A backend, the pre-processing that feeds it, why it was chosen, and the bundle's tiling
    (identity for whole-frame bundles): ``infer_frames`` is the whole frames -> verdict-scores path."""

    backend: Backend
    preprocess: Callable[[list[np.ndarray]], tuple[torch.Tensor, torch.Tensor]]
    reason: str
    tiler: FrameTiler = field(default_factory=lambda: FrameTiler(None, 0))
    max_batch: int | None = None  # tiles per backend call (a TensorRT engine's profile); None = all at once

    def infer_frames(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """frames: list of (H, W, 3) uint8 BGR (or (H, W) gray), one size per batch when tiled.

        Returns (maps (N, h, w) float32: the model's map, or the stitched frame map of a tiled bundle;
        scores (N,) float32). Tiles are cut on the host and fed to the same pre-processing and backend
        as whole frames (the fused GPU kernel resizes each tile like a frame)."""
        tiles, layouts = self.tiler.split(frames)
        step = self.max_batch or len(tiles)
        parts = [self.backend.infer(*self.preprocess(tiles[i : i + step])) for i in range(0, len(tiles), step)]
        maps, scores = (np.concatenate(p) for p in zip(*parts))
        frame_maps, frame_scores = self.tiler.stitch(maps, scores, layouts)
        return np.stack(frame_maps), frame_scores


def _tensorrt(bundle) -> BackendChoice:
    if bundle.engine is None:
        raise ConfigError(f"bundle {bundle.root} has no TensorRT engine; build one with `fair-edge build` on this GPU.")
    return BackendChoice(TensorRTBackend(bundle), _gpu_preprocessor(bundle), "TensorRT engine in the bundle")


def _torch_cuda(bundle) -> BackendChoice:
    if not torch.cuda.is_available():
        raise ConfigError("--backend torch-cuda: PyTorch sees no CUDA GPU. Use --backend onnxruntime or torch-cpu.")
    return BackendChoice(TorchBackend(_weights(bundle), torch.device("cuda")), _gpu_preprocessor(bundle),
                         "PyTorch on CUDA with CUDA graphs")


def _torch_cpu(bundle) -> BackendChoice:
    return BackendChoice(TorchBackend(_weights(bundle), torch.device("cpu")), CpuPreprocessor(bundle.preprocess),
                         "PyTorch eager on the CPU")


def _onnxruntime(bundle) -> BackendChoice:
    return BackendChoice(OnnxRuntimeCpuBackend(bundle), CpuPreprocessor(bundle.preprocess),
                         f"ONNX Runtime on the CPU ({bundle.precision} graph)")


def _weights(bundle):
    if bundle.weights_path is None:
        raise BundleError(f"bundle {bundle.root} holds no PyTorch weights; rebuild it with `fair-edge build`.")
    return bundle.weights_path


def _gpu_preprocessor(bundle):
    try:
        return FusedGpuPreprocessor(bundle.preprocess)
    except FairEdgeError as exc:
        log.warning("fused pre-processing kernel unavailable (%s); using the reference on the CPU", exc)
        return CpuPreprocessor(bundle.preprocess, torch.device("cuda"))


BACKENDS: dict[str, Callable] = {
    "tensorrt": _tensorrt,
    "torch-cuda": _torch_cuda,
    "torch-cpu": _torch_cpu,
    "onnxruntime": _onnxruntime,
}


def select_backend(bundle, name: str = "auto") -> BackendChoice:
    """The backend ``name`` for ``bundle``; 'auto' tries TensorRT, PyTorch CUDA, then ONNX Runtime CPU.
    The choice carries the bundle's tiling (``BackendChoice.infer_frames``)."""
    choice = _select(bundle, name)
    if bundle.preprocess.tiling is None:
        return choice
    return replace(choice, tiler=FrameTiler(bundle.preprocess.tiling, bundle.image_size), max_batch=bundle.max_batch)


def _select(bundle, name: str) -> BackendChoice:
    if name != "auto":
        if name not in BACKENDS:
            raise ConfigError(f"backend must be auto or one of {', '.join(BACKENDS)}; found {name!r}.")
        return BACKENDS[name](bundle)
    reasons = []
    for candidate in ("tensorrt", "torch-cuda"):
        try:
            choice = BACKENDS[candidate](bundle)
            return BackendChoice(choice.backend, choice.preprocess, f"auto: {choice.reason}")
        except (FairEdgeError, ImportError, OSError, RuntimeError) as exc:
            reasons.append(f"{candidate}: {str(exc).split('. ')[0]}")
    choice = _onnxruntime(bundle)
    return BackendChoice(choice.backend, choice.preprocess, f"auto: {choice.reason} ({'; '.join(reasons)})")

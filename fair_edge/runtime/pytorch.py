"""The PyTorch backend (CPU eager, CUDA graphs, optionally ``torch.compile``) and the GPU pre-processing
that PyTorch on CUDA and TensorRT share (the fused CUDA kernel, or the CPU reference when it cannot serve
the model). Same contract as every backend (``fair_edge.runtime.backends``)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from fair_edge.errors import ConfigError, FairEdgeError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.tensors import COLOUR, HIGHPASS, OUTPUT_NAMES
from fair_edge.runtime.backends import CpuPreprocessor, Inputs, Preprocess
from fair_edge.runtime.compiled import CompiledModule
from fair_edge.tiling import TileLayout

log = logging.getLogger(__name__)


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


class FusedGpuPreprocessor:
    """The fused CUDA kernel (resize, gray, high-pass; one launch): same-sized host frames -> CUDA inputs.

    Serves models whose inputs are among (highpass, colour); ConfigError for any other.
    """

    def __init__(self, model: ModelSpec) -> None:
        if not set(model.input_names) <= {HIGHPASS, COLOUR} or HIGHPASS not in model.input_names:
            raise ConfigError(f"the fused kernel makes highpass and colour; {model.describe()} takes {list(model.input_names)}.")
        from fair_edge.runtime.preprocess_gpu import FusedPreprocessor

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

    def close(self) -> None:
        """Free the kernel's device memory (the staging buffer of up to max_batch frames: max_batch x H x W x C
        bytes), unload its CUDA module and release its context retain (``FusedPreprocessor.close``). Called when its
        scorer is retired (``runtime.backends.close_scorer``); safe to call twice. The outputs it returned are torch's."""
        self.kernel.close()


def gpu_preprocessor(bundle) -> Preprocess:
    """The fused kernel for ``bundle``'s model, or the CPU reference feeding CUDA tensors (logged)."""
    try:
        return FusedGpuPreprocessor(bundle.model)
    except FairEdgeError as exc:
        log.warning("fused pre-processing kernel not used (%s); using the reference on the CPU", exc)
        return CpuPreprocessor(bundle.model, torch.device("cuda"))

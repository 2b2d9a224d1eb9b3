"""FairDetector -> ONNX: the whole inference after pre-processing, FP32 or FP16.

Graph contract (both precisions):
  inputs   highpass (B, C, S, S) float32, colour (B, 3, S, S) float32 RGB in [0, 1]
  outputs  anomaly_map (B, 1, S, S) float32, score (B,) float32
B is dynamic ("batch"); C and S are fixed by the checkpoint. Opset 17 (TensorRT 10.x and 11.x
parse it). Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, still present
in torch 2.13; it folds BatchNorm into Conv and names nodes by module path (``/unet/...``,
``/scorer/...``), which the INT8 step uses to keep scoring in float32.

FP16 graph: ``highpass`` -> Cast(float16) -> UNet with float16 weights -> Cast(float32) -> scoring
in float32. The casts are explicit nodes, so a strongly typed TensorRT build keeps them.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from fair_edge.models.fair.detector import FairDetector
from fair_edge.errors import ExportError

OPSET = 17
INPUT_NAMES = ("highpass", "colour")
OUTPUT_NAMES = ("anomaly_map", "score")
UNET_SCOPE = "/unet/"  # node-name prefix of every UNet node in the exported graph


class HalfUNetDetector(nn.Module):
    """FairDetector with a float16 UNet and float32 scoring; same inputs and outputs as FairDetector."""

    def __init__(self, detector: FairDetector) -> None:
        super().__init__()
        self.unet = copy.deepcopy(detector.unet).half()
        self.scorer = detector.scorer

    def forward(self, highpass: torch.Tensor, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        restored = self.unet(highpass.to(torch.float16)).to(torch.float32)
        return self.scorer(colour, restored)


def example_inputs(in_channels: int, image_size: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (highpass (B, C, S, S), colour (B, 3, S, S) in [0, 1]) float32 CPU tensors."""
    gen = torch.Generator().manual_seed(seed)
    highpass = 0.1 * torch.randn(batch, in_channels, image_size, image_size, generator=gen)
    colour = torch.rand(batch, 3, image_size, image_size, generator=gen)
    return highpass, colour


def export_onnx(detector: FairDetector, path: str | Path, image_size: int, precision: str = "fp32") -> Path:
    """Write ``detector`` (eval mode, any device) as an ONNX graph at ``path``; fp32 or fp16.

    Raises ExportError naming the failing step. Returns the path.
    """
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"export_onnx writes fp32 or fp16 graphs; found {precision!r} (int8 is made by calibration).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(detector).cpu().float().eval()
    if precision == "fp16":
        model = HalfUNetDetector(model).eval()
    args = example_inputs(model.unet.in_channels, image_size)
    dynamic = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Expected: the exporter's deprecation notice and tracer notes about constant tensors.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model, args, str(path), dynamo=False, opset_version=OPSET,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic, do_constant_folding=True,
            )
        graph = onnx.load(str(path))
        inline_initializer_identities(graph)
        _set_output_shapes(graph, image_size)
        onnx.checker.check_model(graph)
    except Exception as exc:  # the exporter raises many types; we re-raise one of ours with the cause
        raise ExportError(
            f"ONNX export ({precision}, opset {OPSET}) failed: {type(exc).__name__}: {str(exc)[:500]}. "
            "Check that the checkpoint loads with `fair-edge eval`, and report the torch version if it does."
        ) from exc
    graph.producer_name = "fair-edge"
    onnx.save(graph, str(path))
    return path


def _set_output_shapes(graph: onnx.ModelProto, image_size: int) -> None:
    """Declare the output shapes the contract promises (the tracer leaves dims 1..3 symbolic)."""
    shapes = {"anomaly_map": ["batch", 1, image_size, image_size], "score": ["batch"]}
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


def inline_initializer_identities(graph: onnx.ModelProto) -> int:
    """Drop ``Identity(initializer)`` nodes in place; consumers read the initializer directly.

    The TorchScript exporter de-duplicates equal weights (e.g. zero biases) into such Identity nodes,
    which makes biases look like activations to quantisers. Returns the number of nodes removed.
    """
    initializers = {t.name for t in graph.graph.initializer}
    outputs = {o.name for o in graph.graph.output}
    alias = {}
    for node in graph.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
    if not alias:
        return 0
    kept = [n for n in graph.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.graph.node[:]
    graph.graph.node.extend(kept)
    return len(alias)


def unet_node_names(graph: onnx.ModelProto) -> list[str]:
    """Names of the nodes that belong to the UNet (module path ``/unet/...``)."""
    return [n.name for n in graph.graph.node if n.name.startswith(UNET_SCOPE)]


def non_unet_node_names(graph: onnx.ModelProto) -> list[str]:
    """Names of every node outside the UNet: scoring and the top-level casts."""
    return [n.name for n in graph.graph.node if not n.name.startswith(UNET_SCOPE)]


def torch_reference(detector: FairDetector, highpass: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``detector`` on CPU float32. highpass (B, C, S, S), colour (B, 3, S, S) float32 arrays.

    Returns (anomaly_map (B, 1, S, S), score (B,)) float32 arrays.
    """
    model = detector.cpu().float().eval()
    with torch.no_grad():
        amap, score = model(torch.from_numpy(highpass), torch.from_numpy(colour))
    return amap.numpy(), score.numpy()

"""A family's module -> ONNX: the whole inference after pre-processing, FP32 or FP16.

Graph contract (every family, both precisions):
  inputs   the family's named inputs (``ModelSpec.inputs``), each (B, C, S, S) float32
  outputs  anomaly_map (B, 1, S, S) float32, score (B,) float32
B is dynamic ("batch"); C and S are fixed by the checkpoint. Opset 17 (TensorRT 10.x and 11.x
parse it). Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, still present
in torch 2.13; it folds BatchNorm into Conv and names nodes by module path (FAIR: ``/unet/...``,
``/scorer/...``), which the INT8 step uses to quantise only the family's ``int8_scope``.

FP16 graph: the family's ``half`` module, e.g. FAIR: ``highpass`` -> Cast(float16) -> UNet with
float16 weights -> Cast(float32) -> scoring in float32. The casts are explicit nodes, so a strongly
typed TensorRT build keeps them.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from fair_edge.errors import ExportError
from fair_edge.disk import discard_unfinished, write_failure
from fair_edge.models.registry import ModelSpec
from fair_edge.models.tensors import ANOMALY_MAP, BATCH_DIM, OUTPUT_NAMES, SCORE

OPSET = 17


def example_inputs(model: ModelSpec, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic named inputs (each (B, C, S, S) float32, CPU) made from random colour images in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    size = model.preprocess.image_size
    colour = torch.rand(batch, 3, size, size, generator=gen)
    with torch.no_grad():
        return {name: t.contiguous() for name, t in model.input_maker("cpu")(colour).items()}


def export_onnx(model: ModelSpec, module: nn.Module, path: str | Path, precision: str = "fp32") -> Path:
    """Write ``module`` (the family's module for ``model``, eval mode, any device) as ONNX at ``path``.

    precision: fp32 or fp16 (the family's ``half`` module). Raises ExportError naming the failing step; one that
    cannot write ``path`` (a full or read-only disk) names the cause and fix (``_write_failed``) instead of blaming
    the exporter.
    """
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"export_onnx writes fp32 or fp16 graphs; found {precision!r} (int8 is made by calibration).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(module).cpu().float().eval()
    if precision == "fp16":
        net = model.impl.half(net).eval()
    inputs = example_inputs(model)
    names = list(model.input_names)
    dynamic = {name: {0: BATCH_DIM} for name in names + list(OUTPUT_NAMES)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Expected: the exporter's deprecation notice and tracer notes about constant tensors.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # strided slices stay nodes
            torch.onnx.export(
                net, tuple(inputs[n] for n in names), str(path), dynamo=False, opset_version=OPSET,
                input_names=names, output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic, do_constant_folding=True,
            )
        graph = onnx.load(str(path))
        inline_initializer_identities(graph)
        _set_output_shapes(graph, model.preprocess.image_size)
        onnx.checker.check_model(graph)
    except OSError as exc:  # the file could not be written (a full disk): not the exporter's fault
        raise ExportError(_write_failed(path, exc)) from exc
    except Exception as exc:  # the exporter raises many types; we re-raise one of ours with the cause
        raise ExportError(
            f"ONNX export of {model.describe()} ({precision}, opset {OPSET}) failed: {type(exc).__name__}: "
            f"{str(exc)[:500]}. Check that the checkpoint loads with `fair-edge eval`, and report the torch version if it does."
        ) from exc
    graph.producer_name = "fair-edge"
    try:
        onnx.save(graph, str(path))
    except OSError as exc:
        raise ExportError(_write_failed(path, exc)) from exc
    return path


def _write_failed(path: Path, exc: OSError) -> str:
    """The ExportError text of an ONNX file that could not be written: the file, the reason, the cause and fix by
    errno (``disk.write_failure``: a full disk with its free space, a read-only one...; the export itself worked).
    The half-written file is removed."""
    discard_unfinished(path, "ONNX graph")
    return (f"cannot write the ONNX graph {path} ({exc.strerror or exc}): {write_failure(path.parent, exc)}, then "
            "build again.")


def _set_output_shapes(graph: onnx.ModelProto, image_size: int) -> None:
    """Declare the output shapes the contract promises (the tracer leaves dims 1..3 symbolic)."""
    shapes = {ANOMALY_MAP: [BATCH_DIM, 1, image_size, image_size], SCORE: [BATCH_DIM]}
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


def torch_reference(module: nn.Module, inputs: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run ``module`` on CPU float32 with ``inputs`` (named (B, C, S, S) float32 arrays) in ``names`` order.

    Returns {anomaly_map: (B, 1, S, S), score: (B,)} float32 arrays.
    """
    net = module.cpu().float().eval()
    with torch.no_grad():
        amap, score = net(*(torch.from_numpy(inputs[n]) for n in names))
    return {ANOMALY_MAP: amap.numpy(), SCORE: score.numpy()}

"""OpenVINO on the CPU: runs a bundle's ONNX graph (FP32, or the CPU INT8 Q/DQ graph) with Intel's runtime.

Optional (``pip install openvino``). OpenVINO reads the ONNX file directly and turns Q/DQ pairs into its
own int8 kernels. Inputs are bound by name: OpenVINO may rename a graph input (the exporter's ``colour``
reaches it as ``/scorer/Cast_output_0``), so ports are matched on every name they carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from fair_edge.errors import BundleError, ConfigError
from fair_edge.models.tensors import OUTPUT_NAMES
from fair_edge.runtime.backends import Inputs, host_array


def _port(ports, name: str, path: Path):
    for port in ports:
        if name in port.get_names():
            return port
    raise BundleError(f"{path} has no tensor named {name!r} for OpenVINO; found "
                      f"{[sorted(p.get_names()) for p in ports]}. Rebuild the bundle with `fair-edge build`.")


def dequantised_pools(onnx_path: str | Path) -> list[str]:
    """Names of the AveragePool nodes of the ONNX graph at ``onnx_path`` that read a DequantizeLinear of a
    QuantizeLinear output (a Q/DQ copy of their input): the CPU INT8 graph as built before fair-edge bb4c96d, which
    OpenVINO 2026.4 scores 10-20 x too high (it moves the dequantisation behind the pool). Since then the build
    rewires every such pool to the float tensor (``calibration.int8_cpu.pool_float_taps``, the same pattern), so
    a graph built since has none. Reads the graph's nodes only, not its weights' external data: about 2 ms for
    a 1.3 MB PatchCore graph."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    made_by = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        dq = made_by.get(node.input[0]) if node.op_type == "AveragePool" and node.input else None
        q = made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            found.append(node.name or node.output[0])
    return found


class OpenVinoBackend:
    """infer({input name: (B, C, S, S) float32}) -> {anomaly_map: (B, 1, S, S), score: (B,)} float32 host
    arrays, like ``OnnxRuntimeBackend``. input_names: the bundle model's inputs, in order.
    threads: CPU inference threads, 0 = OpenVINO's default. Batch sizes may change between calls.
    """

    name = "openvino"
    device = torch.device("cpu")

    def __init__(self, onnx_path: str | Path, input_names: Sequence[str], threads: int = 0) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ConfigError("the openvino backend needs OpenVINO: pip install openvino "
                              "(or choose --backend onnxruntime).") from exc
        self.path = Path(onnx_path)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.model = ov.Core().compile_model(str(self.path), "CPU", config)
        except RuntimeError as exc:
            raise BundleError(f"OpenVINO cannot load {self.path}: {str(exc)[:300]}. "
                              "Rebuild the bundle with `fair-edge build`.") from exc
        self.inputs = {n: _port(self.model.inputs, n, self.path) for n in input_names}
        self.outputs = {n: _port(self.model.outputs, n, self.path) for n in OUTPUT_NAMES}
        self.request = self.model.create_infer_request()

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        result = self.request.infer({port: host_array(inputs[name]) for name, port in self.inputs.items()})
        return {name: np.array(result[port]) for name, port in self.outputs.items()}

    def close(self) -> None:
        self.request = None

"""OpenVINO on the CPU: runs a bundle's ONNX graph (FP32, or the CPU INT8 Q/DQ graph) with Intel's runtime.

Optional (``pip install openvino``). The backend is ``calibration.openvino_graph.OpenVinoGraph`` (which the build
scores its held-out images with to calibrate OpenVINO's own thresholds: one compile configuration for both) with
the backend's name and device.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from fair_edge.calibration.openvino_graph import OpenVinoGraph


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


class OpenVinoBackend(OpenVinoGraph):
    """infer({input name: (B, C, S, S) float32}) -> {anomaly_map: (B, 1, S, S), score: (B,)} float32 host
    arrays, like ``OnnxRuntimeBackend``. input_names: the bundle model's inputs, in order.
    threads: CPU inference threads, 0 = OpenVINO's default. Batch sizes may change between calls.
    """

    name = "openvino"
    device = torch.device("cpu")

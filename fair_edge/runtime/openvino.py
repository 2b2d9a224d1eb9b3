"""OpenVINO on the CPU: runs a bundle's ONNX graph (FP32, or the CPU INT8 Q/DQ graph) with Intel's runtime.

Optional (``pip install openvino``). OpenVINO reads the ONNX file directly and turns Q/DQ pairs into its
own int8 kernels. Inputs are bound by name: OpenVINO may rename a graph input (the exporter's ``colour``
reaches it as ``/scorer/Cast_output_0``), so ports are matched on every name they carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
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

"""OpenVINO on the CPU: runs a bundle's ONNX graph (FP32, or the CPU INT8 Q/DQ graph) with Intel's runtime.

Optional (``pip install openvino``). OpenVINO reads the ONNX file directly and turns Q/DQ pairs into its
own int8 kernels. Inputs are bound by name: OpenVINO may rename a graph input (the exporter's ``colour``
reaches it as ``/scorer/Cast_output_0``), so ports are matched on every name they carry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fair_edge.errors import BundleError, ConfigError

INPUTS = ("highpass", "colour")
OUTPUTS = ("anomaly_map", "score")


def _port(ports, name: str, path: Path):
    for port in ports:
        if name in port.get_names():
            return port
    raise BundleError(f"{path} has no tensor named {name!r} for OpenVINO; found "
                      f"{[sorted(p.get_names()) for p in ports]}. Rebuild the bundle with `fair-edge build`.")


class OpenVinoBackend:
    """infer(highpass, colour) -> (anomaly_map, score), like ``OnnxRuntimeBackend``.

    highpass: (B, C, S, S) float32, colour: (B, 3, S, S) float32 RGB in [0, 1], host memory.
    Returns anomaly_map (B, 1, S, S) float32 and score (B,) float32, host memory.
    threads: CPU inference threads, 0 = OpenVINO's default. Batch sizes may change between calls.
    """

    def __init__(self, onnx_path: str | Path, threads: int = 0) -> None:
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
        self.inputs = [_port(self.model.inputs, n, self.path) for n in INPUTS]
        self.outputs = [_port(self.model.outputs, n, self.path) for n in OUTPUTS]
        self.request = self.model.create_infer_request()

    def infer(self, highpass: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {self.inputs[0]: np.ascontiguousarray(highpass, dtype=np.float32),
                 self.inputs[1]: np.ascontiguousarray(colour, dtype=np.float32)}
        result = self.request.infer(feeds)
        return np.array(result[self.outputs[0]]), np.array(result[self.outputs[1]])

"""One ONNX graph on OpenVINO's CPU plugin, as ``onnx_graph.OnnxGraph`` runs one on ONNX Runtime: the model's
named inputs in, its named outputs out.

The build scores its held-out images with it to calibrate OpenVINO's own thresholds of an INT8 bundle's CPU graph
(``export.build``: OpenVINO's int8 kernels score that graph up to ~0.9 % apart from ONNX Runtime's), and the
runtime's ``OpenVinoBackend`` (``fair_edge.runtime.openvino``) is this graph run as a bundle's backend, so both
compile it alike (``COMPILE_CONFIG``). Optional (``pip install openvino``). OpenVINO reads the ONNX file directly
and turns Q/DQ pairs into its own int8 kernels. Inputs are bound by name: OpenVINO may rename a graph input (the
exporter's ``colour`` reaches it as ``/scorer/Cast_output_0``), so ports are matched on every name they carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fair_edge.calibration.onnx_graph import Inputs, host_array, infer_in_chunks
from fair_edge.errors import BundleError, ConfigError
from fair_edge.models.tensors import OUTPUT_NAMES
from fair_edge.signal_stack import kept_signal_stack

# how the build and the runtime compile a graph: one frame's latency first, float32 arithmetic outside int8 kernels
COMPILE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def openvino_version() -> str | None:
    """The installed OpenVINO's release ("2026.4.1", its build number left out), None when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return str(ov.get_version()).split("-")[0]


def _port(ports, name: str, path: Path):
    for port in ports:
        if name in port.get_names():
            return port
    raise BundleError(f"{path} has no tensor named {name!r} for OpenVINO; found "
                      f"{[sorted(p.get_names()) for p in ports]}. Rebuild the bundle with `fair-edge build`.")


class OpenVinoGraph:
    """infer({input name: (B, C, S, S) float32}) -> {anomaly_map: (B, 1, S, S), score: (B,)} float32 host
    arrays, like ``OnnxGraph``. input_names: the bundle model's inputs, in order. threads: CPU inference
    threads, 0 = OpenVINO's default. Batch sizes may change between calls. ConfigError when OpenVINO is not
    installed; BundleError when it cannot load the graph."""

    def __init__(self, onnx_path: str | Path, input_names: Sequence[str], threads: int = 0) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ConfigError("the openvino backend needs OpenVINO: pip install openvino "
                              "(or choose --backend onnxruntime).") from exc
        self.path = Path(onnx_path)
        config = dict(COMPILE_CONFIG)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            with kept_signal_stack():   # the CPU plugin swaps in a signal stack it frees later: a Ctrl-C then crashed
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

    def infer_batched(self, inputs: Inputs, batch: int = 8) -> dict[str, np.ndarray]:
        """``infer`` in chunks of ``batch`` images; same names and shapes as ``infer``."""
        return infer_in_chunks(self.infer, inputs, tuple(self.inputs), batch)

    def close(self) -> None:
        self.request = None

"""ONNX Runtime backend: runs a bundle's ONNX graph on the CPU (or any ORT provider).

Used by ``eval``/``bench`` where TensorRT is absent, and by the build to measure accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from fair_edge.errors import BundleError


class OnnxRuntimeBackend:
    """infer(highpass, colour) -> (anomaly_map, score) with ONNX Runtime.

    highpass: (B, C, S, S) float32, colour: (B, 3, S, S) float32 RGB in [0, 1], host memory.
    Returns anomaly_map (B, 1, S, S) float32 and score (B,) float32, host memory.
    """

    def __init__(self, onnx_path: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0) -> None:
        self.path = Path(onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only; ORT warns about fp16 kernels it emulates on CPU
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as exc:  # ORT raises its own pybind exception types
            raise BundleError(
                f"ONNX Runtime cannot load {self.path}: {type(exc).__name__}: {str(exc)[:300]}. "
                "Rebuild the bundle with `fair-edge build`."
            ) from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        if self.input_names != ["highpass", "colour"]:
            raise BundleError(f"{self.path} has inputs {self.input_names}; expected ['highpass', 'colour'].")

    @classmethod
    def from_bundle(cls, bundle, **kwargs) -> "OnnxRuntimeBackend":
        """The backend for ``bundle.onnx_path`` (the graph of the bundle's precision)."""
        return cls(bundle.onnx_path, **kwargs)

    def infer(self, highpass: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {
            "highpass": np.ascontiguousarray(highpass, dtype=np.float32),
            "colour": np.ascontiguousarray(colour, dtype=np.float32),
        }
        amap, score = self.session.run(["anomaly_map", "score"], feeds)
        return amap, score

    def infer_batched(self, highpass: np.ndarray, colour: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """``infer`` in chunks of ``batch`` images; same shapes as ``infer``."""
        maps, scores = [], []
        for i in range(0, len(highpass), batch):
            m, s = self.infer(highpass[i : i + batch], colour[i : i + batch])
            maps.append(m)
            scores.append(s)
        return np.concatenate(maps), np.concatenate(scores)

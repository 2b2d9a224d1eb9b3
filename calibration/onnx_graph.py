"""One ONNX graph on ONNX Runtime's CPU provider: the model's named inputs in, its named outputs out.

The build (``export.build``, ``export.accuracy``) and the INT8 gate check the graphs they write with it;
the runtime's ``OnnxRuntimeBackend`` (``fair_edge.runtime.backends``) is this graph run as a bundle's
backend. It lives in the lowest room that runs graphs, so the rooms above import it downward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch

from fair_edge.errors import BundleError
from fair_edge.models.tensors import OUTPUT_NAMES

Inputs = Mapping[str, "torch.Tensor | np.ndarray"]  # host engines (ONNX Runtime, OpenVINO) take NumPy arrays too


def host_array(value: "np.ndarray | torch.Tensor") -> np.ndarray:
    """A contiguous float32 host array of ``value`` (a NumPy array or a tensor on any device)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


class OnnxGraph:
    """infer({input name: (B, C, S, S) float32}) -> {anomaly_map: (B, 1, S, S), score: (B,)} float32 host arrays.

    input_names: the inputs the graph must declare, in order (a bundle's ``model.input_names``);
    None accepts the graph's own (build-time checks on a graph just written). The outputs must include
    ``OUTPUT_NAMES``. A bundle's graphs were checked against bundle.json's input shapes when it loaded
    (``export.bundle.load_bundle``), so a graph taking other sizes is refused there, before a frame.
    """

    def __init__(self, onnx_path: str | Path, input_names: Sequence[str] | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), threads: int = 0) -> None:
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
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        if input_names is not None and self.input_names != tuple(input_names):
            raise BundleError(f"{self.path} has inputs {list(self.input_names)}; expected {list(input_names)}. "
                              "Rebuild the bundle with `fair-edge build`.")
        output_names = [o.name for o in self.session.get_outputs()]
        if not set(OUTPUT_NAMES) <= set(output_names):
            raise BundleError(f"{self.path} has outputs {output_names}; expected {list(OUTPUT_NAMES)}. "
                              "Rebuild the bundle with `fair-edge build`.")

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        feeds = {name: host_array(inputs[name]) for name in self.input_names}
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def infer_batched(self, inputs: Inputs, batch: int = 8) -> dict[str, np.ndarray]:
        """``infer`` in chunks of ``batch`` images; same names and shapes as ``infer``."""
        return infer_in_chunks(self.infer, inputs, self.input_names, batch)

    def close(self) -> None:
        self.session = None


def infer_in_chunks(infer: Callable[[Inputs], dict[str, np.ndarray]], inputs: Inputs, names: Sequence[str],
                    batch: int) -> dict[str, np.ndarray]:
    """``infer`` (named inputs -> the graph's named outputs, ``OUTPUT_NAMES``) run on ``inputs``' arrays ``names``
    in chunks of ``batch`` images along their first axis, the outputs concatenated: every engine's
    ``infer_batched`` (``OnnxGraph``, ``OpenVinoGraph``)."""
    count = len(next(iter(inputs.values())))
    parts = [infer({n: inputs[n][i : i + batch] for n in names}) for i in range(0, count, batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in OUTPUT_NAMES}

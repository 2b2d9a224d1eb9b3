"""The TensorRT backend: a bundle's engine, its tensors bound by name, run on the caller's stream.

Follows the documented TensorRT 10.x / 11.x Python API: ``Runtime.deserialize_cuda_engine``, one
execution context, ``set_input_shape`` and ``set_tensor_address`` per named I/O tensor, and
``execute_async_v3`` on the current torch CUDA stream. Inputs arrive as device tensors (the fused
pre-processing kernel writes them there); outputs are allocated per batch as torch tensors on the
same device and returned as host arrays. ``tensorrt`` is imported only when a backend is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from fair_edge.errors import BundleError, EngineError
from fair_edge.export.bundle import Bundle, check_engine_target
from fair_edge.export.tensorrt import current_target, import_tensorrt
from fair_edge.models.tensors import OUTPUT_NAMES


class TensorRTBackend:
    """infer({input name: (B, C, S, S) float32 tensor on ``device``}) -> {anomaly_map (B, 1, S, S), score (B,)}
    float32 host arrays. ``device`` is CUDA in production; the tests run the same code against a fake
    TensorRT on CPU tensors (the bindings only need ``data_ptr()``)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, input_names: Sequence[str], device: torch.device = torch.device("cuda")) -> None:
        import_tensorrt()
        import tensorrt as trt

        self.path, self.device = Path(engine_path), device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT {trt.__version__} could not deserialize {self.path} (built by another "
                              "TensorRT version or for another GPU?). Rebuild the bundle with `fair-edge build` here.")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._check_io(names, tuple(input_names), {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names})
        self.max_batch = int(engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])

    def _check_io(self, names: list[str], input_names: tuple[str, ...], dtypes: dict[str, np.dtype]) -> None:
        if set(self.inputs) != set(input_names) or set(names) - set(self.inputs) != set(OUTPUT_NAMES):
            raise BundleError(f"engine {self.path.name} has tensors {names}; the bundle's model needs inputs "
                              f"{list(input_names)} and outputs {list(OUTPUT_NAMES)}. Rebuild the bundle with `fair-edge build`.")
        wrong = {n: str(d) for n, d in dtypes.items() if d != np.float32}
        if wrong:
            raise EngineError(f"engine I/O tensors must be float32 (casts live inside the graph); found {wrong}.")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "TensorRTBackend":
        """The backend for the bundle's engine; BundleError unless it was built for this TensorRT and GPU."""
        return cls(check_engine_target(bundle, current_target()).path, bundle.model.input_names)

    def tensor_shape(self, name: str, batch: int) -> tuple[int, ...]:
        """Shape of I/O tensor ``name`` for ``batch`` images (the engine's dynamic dim is the batch)."""
        dims = self.engine.get_tensor_shape(name)
        return tuple(batch if dims[i] < 0 else int(dims[i]) for i in range(len(dims)))

    def _bind(self, tensors: Mapping[str, torch.Tensor], batch: int) -> None:
        if not 1 <= batch <= self.max_batch:
            raise EngineError(f"batch must be 1..{self.max_batch} (the engine's profile); found {batch}.")
        for name in self.inputs:
            shape = tuple(tensors[name].shape)
            if not self.context.set_input_shape(name, shape):
                raise EngineError(f"set_input_shape({name!r}, {shape}) refused; expected {self.tensor_shape(name, batch)}.")
        for name, tensor in tensors.items():
            if not self.context.set_tensor_address(name, int(tensor.data_ptr())):
                raise EngineError(f"set_tensor_address({name!r}) refused.")

    def _stream(self) -> int:
        return int(torch.cuda.current_stream(self.device).cuda_stream) if self.device.type == "cuda" else 0

    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        missing = sorted(set(self.inputs) - set(inputs))
        if missing:
            raise EngineError(f"inputs {missing} were not given; the engine takes {list(self.inputs)}.")
        batch = int(inputs[self.inputs[0]].shape[0])
        tensors = {n: inputs[n].to(self.device, torch.float32).contiguous() for n in self.inputs}
        tensors.update({n: torch.empty(self.tensor_shape(n, batch), dtype=torch.float32, device=self.device)
                        for n in OUTPUT_NAMES})
        self._bind(tensors, batch)
        if not self.context.execute_async_v3(self._stream()):
            raise EngineError("execute_async_v3 failed; see the TensorRT log above.")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return {n: tensors[n].cpu().numpy() for n in OUTPUT_NAMES}

    def close(self) -> None:
        """Release the context and engine (safe to call twice)."""
        self.context = self.engine = None  # type: ignore[assignment]

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Thin owners of CUDA runtime resources via cuda-python: a stream, device buffers, a CUDA graph.

Every cuda-python call goes through ``fair_edge.export.cuda_api.check`` (the project's one checker:
``(err, *results)`` -> results, or KernelError naming the API). The runtime module is imported lazily
(``cuda.bindings.runtime`` in cuda-python >= 12.6, ``cuda.cudart`` before); TensorRT itself uses the
runtime API, so its primary context is the one these resources live in.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

import numpy as np

from fair_edge.errors import TensorRTMissingError
from fair_edge.export.cuda_api import check as cuda_check

log = logging.getLogger(__name__)

CUDA_PYTHON_HINT = "install cuda-python matching your CUDA driver: `pip install cuda-python` (Jetson: the JetPack CUDA version)."


def import_cudart() -> ModuleType:
    """The cuda-python runtime module; TensorRTMissingError with the install command if absent."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # new layout first, then cuda-python < 12.6
        try:
            return importlib.import_module(name)
        except ImportError:
            log.debug("cuda-python module %s not importable", name)
    raise TensorRTMissingError(f"cuda-python is not installed; {CUDA_PYTHON_HINT}")


class CudaStream:
    """An owned CUDA stream. ``handle`` (int) is what execute_async_v3 takes. close() twice is safe."""

    def __init__(self) -> None:
        self.cudart = import_cudart()
        self._stream: Any = cuda_check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def raw(self) -> Any:
        """The cudaStream_t object (cuda-python calls accept it or its int handle)."""
        return self._stream

    @property
    def handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        cuda_check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            cuda_check(self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def __enter__(self) -> "CudaStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeviceBuffer:
    """``nbytes`` of device memory; ``ptr`` (int) for set_tensor_address. close() twice is safe."""

    def __init__(self, nbytes: int) -> None:
        self.cudart = import_cudart()
        self.nbytes = int(nbytes)
        self.ptr: int = int(cuda_check(self.cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def copy_from_host(self, array: np.ndarray, stream: CudaStream) -> None:
        """Async host -> device copy of a C-contiguous array (no larger than the buffer) on ``stream``."""
        array = np.ascontiguousarray(array)
        if array.nbytes > self.nbytes:
            raise ValueError(f"copy of {array.nbytes} bytes into a {self.nbytes}-byte device buffer.")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_check(self.cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream.raw), "cudaMemcpyAsync H2D")

    def copy_to_host(self, array: np.ndarray, stream: CudaStream) -> None:
        """Async device -> host copy into the C-contiguous ``array`` on ``stream`` (synchronize before reading)."""
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(self.cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream.raw), "cudaMemcpyAsync D2H")

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_check(self.cudart.cudaFree(ptr), "cudaFree")

    def __enter__(self) -> "DeviceBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CudaGraph:
    """A captured and instantiated CUDA graph; launch(stream) replays it. close() twice is safe."""

    def __init__(self, graph: Any, graph_exec: Any) -> None:
        self.cudart = import_cudart()
        self._graph, self._exec = graph, graph_exec

    def launch(self, stream: "CudaStream | int") -> None:
        """Replay on ``stream`` (a CudaStream or a raw cudaStream_t handle, e.g. torch's ``cuda_stream``)."""
        raw = stream.raw if isinstance(stream, CudaStream) else stream
        cuda_check(self.cudart.cudaGraphLaunch(self._exec, raw), "cudaGraphLaunch")

    def close(self) -> None:
        if self._exec is not None:
            graph_exec, graph = self._exec, self._graph
            self._exec = self._graph = None
            cuda_check(self.cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
            cuda_check(self.cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def __enter__(self) -> "CudaGraph":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def device_properties(device: int = 0) -> tuple[str, tuple[int, int]]:
    """(GPU name, (major, minor) compute capability) of CUDA device ``device``."""
    cudart = import_cudart()
    prop = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00").strip(), (int(prop.major), int(prop.minor))

"""TensorRT: build a strongly typed engine from a bundle's ONNX graph, and run it by tensor name.

Supports TensorRT 10.x (JetPack) and 11.x (desktop), following their documented Python API:
- the network is created with ``1 << STRONGLY_TYPED`` (precision comes from the graph's casts and
  Q/DQ nodes; no FP16/INT8 builder flags, which 11.x removed). EXPLICIT_BATCH is never passed: it
  is deprecated and ignored in 10.x and gone in 11.x;
- one optimisation profile over batch 1..max_batch for ``highpass`` and ``colour``;
- a persisted timing cache (``create_timing_cache`` / ``set_timing_cache``), saved after the build;
- ``build_serialized_network`` -> engine bytes stored in the bundle.
``EngineRunner`` deserialises the engine, binds caller-owned device memory by tensor name
(``set_input_shape``, ``set_tensor_address``), enqueues with ``execute_async_v3`` on a caller-given
stream and can capture the enqueue as a CUDA graph; ``TensorRTRunner`` adds owned buffers and host I/O. ``tensorrt`` and cuda-python are imported only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from fair_edge.errors import EngineError, TensorRTMissingError
from fair_edge.export.bundle import Bundle, EngineTarget, check_engine_target
from fair_edge.export.cuda_api import check as cuda_check
from fair_edge.export.cuda_runtime import CudaGraph, CudaStream, DeviceBuffer, device_properties, import_cudart

if TYPE_CHECKING:
    import tensorrt as trt

INSTALL_HINT = (
    "TensorRT is not installed, so no engine was built. Desktop/server GPU: `pip install tensorrt cuda-python` "
    "(or `pip install 'fair-edge[tensorrt,cuda]'`). Jetson: use JetPack's TensorRT, "
    "`sudo apt install python3-libnvinfer`, plus `pip install cuda-python` for JetPack's CUDA version."
)
MIN_MAJOR = 10
INPUTS = ("highpass", "colour")


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module; TensorRTMissingError with what to install when it is absent or a stub."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTMissingError(f"{INSTALL_HINT} (import tensorrt: {exc})") from exc
    if not hasattr(module, "Builder"):  # e.g. only type stubs or an empty namespace package
        raise TensorRTMissingError(f"{INSTALL_HINT} (found a `tensorrt` package without the bindings at {module.__path__}).")
    return module


def tensorrt_major() -> int:
    """Major version of the installed TensorRT; EngineError below 10."""
    import_tensorrt()
    import tensorrt as trt

    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_MAJOR:
        raise EngineError(f"TensorRT {trt.__version__} is too old; fair-edge needs {MIN_MAJOR}.x or newer (strongly typed networks).")
    return major


def network_flags() -> int:
    """Creation flags for a strongly typed network in TensorRT 10.x and 11.x (EXPLICIT_BATCH never set)."""
    major = tensorrt_major()
    import tensorrt as trt

    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        if major >= 11:  # strongly typed is the only mode once weak typing is removed
            return 0
        raise EngineError(f"TensorRT {trt.__version__} has no STRONGLY_TYPED network flag; install TensorRT 10.x or newer.")
    return 1 << int(flag)


def current_target(device: int = 0) -> EngineTarget:
    """This machine as an engine target: TensorRT version, GPU name and compute capability."""
    import_tensorrt()
    import tensorrt as trt

    name, capability = device_properties(device)
    return EngineTarget(tensorrt_version=str(trt.__version__), gpu_name=name, compute_capability=capability)


@dataclass(frozen=True)
class EngineSettings:
    """max_batch: profile max (and buffer size); opt_batch: profile optimum (None = max_batch).
    workspace_mib: workspace pool limit (0 = TensorRT's default). optimization_level: 0..5 (3 default)."""

    max_batch: int = 8
    opt_batch: int | None = None
    workspace_mib: int = 0
    optimization_level: int = 3


def parser_errors(parser: "trt.OnnxParser") -> str:
    """All ONNX parser errors, each with the failing node's index, name and operator."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        lines.append(f"node {err.node()} ({err.node_name() or '?'}, op {err.node_operator() or '?'}): {err.desc()}")
    return "; ".join(lines) or "no error details"


def _load_timing_cache(config: "trt.IBuilderConfig", path: Path | None) -> "trt.ITimingCache":
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        raise EngineError(f"TensorRT rejected the timing cache {path}; delete it and build again.")
    return cache


def build_engine(onnx_path: str | Path, engine_path: str | Path, in_channels: int, image_size: int,
                 settings: EngineSettings = EngineSettings(), timing_cache: str | Path | None = None) -> EngineTarget:
    """Parse ``onnx_path``, build a strongly typed engine, write it to ``engine_path``.

    Profile: batch 1..settings.max_batch for highpass (B, in_channels, S, S) and colour (B, 3, S, S).
    The timing cache is read (if present) and written back. Returns the target it was built for.
    Raises EngineError with the failing node on parser errors, TensorRTMissingError without TensorRT.
    """
    flags = network_flags()
    import tensorrt as trt

    target = current_target()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {parser_errors(parser)}")
    config = builder.create_builder_config()
    config.builder_optimization_level = settings.optimization_level
    if settings.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    opt = settings.opt_batch or settings.max_batch
    for name, channels in zip(INPUTS, (in_channels, 3)):
        def dims(batch: int, c: int = channels) -> trt.Dims:
            return trt.Dims([batch, c, image_size, image_size])
        profile.set_shape(name, dims(1), dims(opt), dims(settings.max_batch))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    _load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path}; see the log above.")
    Path(engine_path).write_bytes(bytes(memoryview(serialized)))
    if cache_path is not None:
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return target


class EngineRunner:
    """An engine and its execution context; binds caller-owned device memory by tensor name.

    infer(inputs, outputs, stream): inputs {"highpass": (B, C, S, S), "colour": (B, 3, S, S)} and outputs
    {"anomaly_map": (B, 1, S, S), "score": (B,)}, each a contiguous float32 CUDA array with ``shape`` and
    ``data_ptr()`` (e.g. torch CUDA tensors) or a ``(pointer, shape)`` pair; stream: a cudaStream_t handle
    (int, e.g. ``torch.cuda.current_stream().cuda_stream``). Enqueues asynchronously; the caller syncs.
    """

    def __init__(self, engine_path: str | Path) -> None:
        import_tensorrt()
        import tensorrt as trt

        self.path = Path(engine_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT {trt.__version__} could not deserialize {self.path} (built by another "
                              "TensorRT version or for another GPU?). Rebuild the bundle with `fair-edge build` here.")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self.names}
        profile_max = engine.get_tensor_profile_shape(self.inputs[0], 0)[2]
        self.max_batch = int(profile_max[0])

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "EngineRunner":
        """Runner for the bundle's engine; BundleError unless it was built for this TensorRT and GPU."""
        return cls(check_engine_target(bundle, current_target()).path)

    def tensor_shape(self, name: str, batch: int) -> tuple[int, ...]:
        """Shape of I/O tensor ``name`` for ``batch`` images (the engine's dynamic dim is the batch)."""
        dims = self.engine.get_tensor_shape(name)
        return tuple(batch if dims[i] < 0 else int(dims[i]) for i in range(len(dims)))

    def bind(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """Set input shapes and every tensor address; EngineError naming a missing or refused tensor."""
        given = {**inputs, **outputs}
        missing = sorted(set(self.names) - set(given))
        if missing:
            raise EngineError(f"engine tensors {missing} have no buffer; expected buffers for {self.names}.")
        for name in self.inputs:
            shape = tuple(int(d) for d in _shape(given[name]))
            if not 1 <= shape[0] <= self.max_batch:
                raise EngineError(f"batch must be 1..{self.max_batch} (the engine's profile); found {shape[0]}.")
            if not self.context.set_input_shape(name, shape):
                raise EngineError(f"set_input_shape({name!r}, {shape}) refused; expected {self.tensor_shape(name, shape[0])}.")
        for name in self.names:
            if not self.context.set_tensor_address(name, _pointer(given[name])):
                raise EngineError(f"set_tensor_address({name!r}) refused.")

    def enqueue(self, stream: int) -> None:
        """Enqueue one inference with the current bindings on ``stream`` (asynchronous)."""
        if not self.context.execute_async_v3(int(stream)):
            raise EngineError("execute_async_v3 failed; see the TensorRT log above.")

    def infer(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any], stream: int) -> None:
        self.bind(inputs, outputs)
        self.enqueue(stream)

    def capture_graph(self, stream: int) -> CudaGraph:
        """Capture one enqueue with the current bindings as a CUDA graph on ``stream``.

        Call after ``infer`` has run once with these shapes (TensorRT allocates on the first run);
        replay with ``graph.launch(stream)``. Changing shapes or addresses needs a new capture.
        """
        cudart = import_cudart()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        ok = self.context.execute_async_v3(int(stream))
        graph = cuda_check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        if not ok:
            cuda_check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
            raise EngineError("execute_async_v3 failed during CUDA graph capture.")
        return CudaGraph(graph, cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))

    def close(self) -> None:
        """Release the context and engine (safe to call twice)."""
        self.context = self.engine = None  # type: ignore[assignment]

    def __enter__(self) -> "EngineRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pointer(buf: Any) -> int:
    return int(buf[0]) if isinstance(buf, tuple) else int(buf.data_ptr())


def _shape(buf: Any) -> tuple[int, ...]:
    return tuple(buf[1]) if isinstance(buf, tuple) else tuple(buf.shape)


class TensorRTRunner:
    """Host-array convenience over EngineRunner: owns device buffers sized for the engine's max batch.

    infer(highpass (B, C, S, S), colour (B, 3, S, S) float32 host) -> (anomaly_map (B, 1, S, S), score (B,))
    float32 host arrays, on the caller's ``stream``. Use EngineRunner directly with CUDA tensors.
    """

    def __init__(self, engine: EngineRunner, stream: CudaStream) -> None:
        self.engine, self.stream = engine, stream
        self.buffers = {}
        for name in engine.names:
            nbytes = int(np.prod(engine.tensor_shape(name, engine.max_batch))) * engine.dtypes[name].itemsize
            self.buffers[name] = DeviceBuffer(nbytes)

    def _bindings(self, batch: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {n: (self.buffers[n].ptr, self.engine.tensor_shape(n, batch)) for n in self.engine.names}

    def infer(self, highpass: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = len(highpass)
        for name, array in zip(INPUTS, (highpass, colour)):
            self.buffers[name].copy_from_host(np.ascontiguousarray(array, dtype=self.engine.dtypes[name]), self.stream)
        self.engine.infer(self._bindings(batch), {}, self.stream.handle)
        out = {n: np.empty(self.engine.tensor_shape(n, batch), dtype=self.engine.dtypes[n]) for n in ("anomaly_map", "score")}
        for name, array in out.items():
            self.buffers[name].copy_to_host(array, self.stream)
        self.stream.synchronize()
        return out["anomaly_map"], out["score"]

    def capture_graph(self, batch: int) -> CudaGraph:
        """Warm up, then capture one inference of ``batch`` on the runner's buffers as a CUDA graph."""
        self.engine.infer(self._bindings(batch), {}, self.stream.handle)
        self.stream.synchronize()
        return self.engine.capture_graph(self.stream.handle)

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.close()

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

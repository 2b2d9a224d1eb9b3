"""TensorRT: build a strongly typed engine from a bundle's ONNX graph (``runtime.tensorrt`` runs it).

Supports TensorRT 10.x (JetPack) and 11.x (desktop), following their documented Python API:
- the network is created with ``1 << STRONGLY_TYPED`` (precision comes from the graph's casts and
  Q/DQ nodes; no FP16/INT8 builder flags, which 11.x removed). EXPLICIT_BATCH is never passed: it
  is deprecated and ignored in 10.x and gone in 11.x;
- one optimisation profile over batch 1..max_batch for each of the model's named inputs;
- a persisted timing cache (``create_timing_cache`` / ``set_timing_cache``), saved after the build;
- ``build_serialized_network`` -> engine bytes stored in the bundle.
``tensorrt`` and cuda-python are imported only when used.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

from fair_edge.errors import EngineError, TensorRTMissingError
from fair_edge.export.bundle import EngineTarget
from fair_edge.export.cuda_runtime import device_properties
from fair_edge.models.tensors import TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

INSTALL_HINT = (
    "TensorRT is not installed, so no engine was built. Desktop/server GPU: `pip install tensorrt cuda-python` "
    "(or `pip install 'fair-edge[tensorrt,cuda]'`). Jetson: use JetPack's TensorRT, "
    "`sudo apt install python3-libnvinfer`, plus `pip install cuda-python` for JetPack's CUDA version."
)
MIN_MAJOR = 10
log = logging.getLogger(__name__)


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
    """Attach the timing cache at ``path`` (absent: a new, empty one) to ``config``. TensorRT refuses a cache made on
    another GPU (``set_timing_cache`` returns False: its CUDA device properties differ): a timing cache only speeds
    builds up, so the build goes on with a fresh one (a warning), which is written back to ``path`` afterwards."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, False):
        return cache
    if data:
        log.warning("TensorRT refused the timing cache %s (made on another GPU or TensorRT version); building with a "
                    "new one, which replaces it. Only this build's speed is affected.", path.name if path else "")
        cache = config.create_timing_cache(b"")
        if config.set_timing_cache(cache, False):
            return cache
    raise EngineError(f"TensorRT {_version()} refused a new, empty timing cache; expected it to accept one. Check the "
                      "TensorRT installation (`python3 -c 'import tensorrt'`) and the GPU driver.")


def _version() -> str:
    import tensorrt as trt

    return str(trt.__version__)


def build_engine(onnx_path: str | Path, engine_path: str | Path, inputs: Sequence[TensorSpec],
                 settings: EngineSettings = EngineSettings(), timing_cache: str | Path | None = None) -> EngineTarget:
    """Parse ``onnx_path``, build a strongly typed engine, write it to ``engine_path``.

    Profile: batch 1..settings.max_batch for each input (B, C, S, S) of ``inputs`` (``ModelSpec.inputs``).
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
    for spec in inputs:
        def dims(batch: int, s: TensorSpec = spec) -> trt.Dims:
            return trt.Dims([batch, s.channels, s.size, s.size])
        profile.set_shape(spec.name, dims(1), dims(opt), dims(settings.max_batch))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    timing = _load_timing_cache(config, cache_path)  # held until the build is done, as TensorRT requires
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path}; see the log above.")
    Path(engine_path).write_bytes(bytes(memoryview(serialized)))
    if cache_path is not None:
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    del timing
    return target

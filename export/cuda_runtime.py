"""The CUDA runtime through cuda-python, for what TensorRT's build needs from it: the GPU's name and
compute capability (the engine is specific to both). The engine runner takes its stream and buffers
from torch (``fair_edge.runtime.tensorrt``), so none are owned here.

Every cuda-python call goes through ``fair_edge.export.cuda_api.check`` (the project's one checker:
``(err, *results)`` -> results, or KernelError naming the API). The runtime module is imported lazily
(``cuda.bindings.runtime`` in cuda-python >= 12.6, ``cuda.cudart`` before); TensorRT itself uses the
runtime API, so its primary context is the one queried here.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

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


def device_properties(device: int = 0) -> tuple[str, tuple[int, int]]:
    """(GPU name, (major, minor) compute capability) of CUDA device ``device``."""
    cudart = import_cudart()
    prop = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00").strip(), (int(prop.major), int(prop.minor))

"""NVIDIA cuda-python access for fair-edge: the two modules we use and the one result checker.

cuda-python (``cuda-bindings``) 12.6+ and 13.x expose ``cuda.bindings.driver`` and
``cuda.bindings.nvrtc``; releases before 12.6 exposed them as ``cuda.cuda`` and ``cuda.nvrtc``
(12.x keeps those as deprecated aliases; 13.x removed them). Both layouts are accepted.

Every call returns a tuple ``(err, *results)``. ``check`` turns it into the result (None, one value,
or a tuple) or raises ``KernelError`` naming the API and the error. It is the only place that
reads an error code; never compare ``err`` anywhere else.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from fair_edge.errors import GpuUnavailableError, KernelError

INSTALL_HINT = (
    "install the cuda extra: pip install 'cuda-bindings>=12.6' 'nvidia-cuda-nvrtc-cu12' "
    "(CUDA 12 drivers) or 'nvidia-cuda-nvrtc' (CUDA 13)"
)


def import_cuda() -> tuple[ModuleType, ModuleType]:
    """Return (driver, nvrtc) modules of cuda-python, or raise GpuUnavailableError with the fix."""
    try:
        from cuda.bindings import driver, nvrtc  # cuda-bindings >= 12.6, 13.x
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6 layout
            from cuda import nvrtc
        except ImportError as exc:
            raise GpuUnavailableError(
                f"cuda-python is not importable (expected module cuda.bindings or cuda.cuda; found: {exc}); "
                f"{INSTALL_HINT}."
            ) from exc
    return driver, nvrtc


def _error_text(err: Any) -> str:
    """'NAME (code): description' for a driver/NVRTC error enum, using the library's own strings."""
    name = getattr(err, "name", str(err))
    code = int(err)
    detail = ""
    try:
        driver, nvrtc = import_cuda()
        if type(err).__name__ == "nvrtcResult":
            detail = nvrtc.nvrtcGetErrorString(err)[1].decode()
        elif type(err).__name__ == "CUresult":
            res = driver.cuGetErrorString(err)
            if int(res[0]) == 0 and res[1] is not None:
                detail = res[1].decode()
    except Exception as exc:  # the message is best-effort; never hide the original error behind it
        detail = f"(no description: {type(exc).__name__})"
    return f"{name} ({code})" + (f": {detail}" if detail else "")


def check(result: Any, api: str) -> Any:
    """Unwrap a cuda-python ``(err, *values)`` tuple.

    result: the call's return value; api: the call's name for the message (e.g. 'cuModuleLoadData').
    Returns None for ``(SUCCESS,)``, the value for ``(SUCCESS, v)``, else the tuple of values.
    Raises KernelError('<api> failed: <NAME (code): description>') when err is not 0 (SUCCESS).
    """
    if not isinstance(result, tuple) or not result:
        raise KernelError(f"{api} returned {result!r}; expected a cuda-python tuple (err, *values).")
    err, values = result[0], result[1:]
    if int(err) != 0:  # CUDA_SUCCESS and NVRTC_SUCCESS are both 0
        raise KernelError(f"{api} failed: {_error_text(err)}.")
    if not values:
        return None
    return values[0] if len(values) == 1 else values

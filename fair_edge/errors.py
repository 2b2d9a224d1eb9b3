"""The exceptions fair-edge raises. Each message names what was expected, what was found, and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


class FairEdgeError(Exception):
    """Base class of every error fair-edge raises on purpose."""


class ConfigError(FairEdgeError, ValueError):
    """A setting (flag, YAML field, checkpoint field) has a value we cannot use."""


class DataError(FairEdgeError):
    """A dataset folder, image or mask is missing, unreadable or inconsistent."""


class CheckpointError(FairEdgeError):
    """A checkpoint file is missing, corrupt, truncated or of another format version."""


class BundleError(FairEdgeError):
    """A model bundle is missing files, fails its checksums, or does not match this machine."""


class CameraError(FairEdgeError):
    """A frame source cannot be opened, lost its connection, or delivered no frame."""


class KernelError(FairEdgeError):
    """A CUDA / NVRTC call failed, or a fused-kernel launch got buffers it cannot use."""


class GpuUnavailableError(KernelError):
    """No usable NVIDIA GPU here: cuda-python missing, no driver, or no device."""


class PlcError(FairEdgeError):
    """A PLC / signal output cannot be reached or refused a write (the link, not the device's reply)."""


class PlcDeviceError(PlcError):
    """The device answered with a Modbus exception reply or an OPC UA bad status (the link is fine)."""


class PlcBindingError(PlcError):
    """The server answered that a node the link bound at connect is gone or changed its data type (OPC UA
    BadNodeIdUnknown, BadNodeIdInvalid, BadTypeMismatch: a PLC program download): nothing was written, and
    the link reconnects to bind its nodes again, as after a link failure."""


class SinkError(FairEdgeError):
    """A signal sink URL is malformed, names an unknown scheme, or its driver package is missing."""


class RecorderError(FairEdgeError):
    """The recorder cannot create its folder or open its log file."""


class MetricsError(FairEdgeError):
    """The metrics HTTP server cannot bind its address."""


class ExportError(FairEdgeError):
    """The PyTorch -> ONNX export, the FP16 conversion or the INT8 quantisation failed."""


class BuildError(ExportError):
    """A build refused by its own checks (the INT8 quality gate): no bundle is left behind."""


class EngineError(FairEdgeError):
    """TensorRT could not parse the ONNX graph, build an engine, or run it."""


class TensorRTMissingError(EngineError, ImportError):
    """The ``tensorrt`` Python package (or cuda-python) is not installed on this machine."""


def lookup(table: Mapping[str, T], key: object, what: str) -> T:
    """``table[key]`` (case and surrounding spaces ignored); ConfigError naming ``what``, the valid keys,
    the value found and the closest key ("did you mean")."""
    name = str(key).strip().lower()
    if name in table:
        return table[name]
    raise ConfigError(f"{what} must be one of {', '.join(table)}; found {key!r}.{did_you_mean(name, table, sentence=True)}")


def did_you_mean(found: object, choices: Iterable[object], *, sentence: bool = False, suffix: str = "") -> str:
    """The "did you mean" hint of every error message: `` (did you mean 'modbus'?)``, or as a sentence
    `` Did you mean 'modbus'?``, for the choice closest to ``found``; "" when none is close. Choices are
    compared as text and shown as written (a string quoted, ``suffix`` inside the quotes: 'modbus://')."""
    options = {str(c): c for c in choices}
    close = difflib.get_close_matches(str(found), list(options), n=1)
    if not close:
        return ""
    best = options[close[0]]
    shown = repr(f"{best}{suffix}") if isinstance(best, str) else f"{best}{suffix}"
    return f" Did you mean {shown}?" if sentence else f" (did you mean {shown}?)"

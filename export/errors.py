"""Errors of the export layer. Bundle problems raise ``fair_edge.errors.BundleError``."""

from fair_edge.errors import FairEdgeError


class ExportError(FairEdgeError):
    """The PyTorch -> ONNX export, the FP16 conversion or the INT8 quantisation failed."""


class EngineError(FairEdgeError):
    """TensorRT could not parse the ONNX graph, build an engine, or run it."""


class TensorRTMissingError(EngineError, ImportError):
    """The ``tensorrt`` Python package (or cuda-python) is not installed on this machine."""

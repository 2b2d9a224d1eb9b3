"""The one table of export precisions and what each allows; "did you mean" for typos.

fp32: the reference graph. fp16: UNet in float16 (explicit Cast nodes), scoring in float32.
int8: UNet convolutions with explicit QuantizeLinear/DequantizeLinear (calibrated), scoring in
float32. Every precision is expressed *inside* the ONNX graph, so TensorRT builds it strongly typed.
"""

from __future__ import annotations

from dataclasses import dataclass

from fair_edge.errors import lookup


@dataclass(frozen=True)
class Precision:
    """name: as in bundle.json and the CLI. needs_calibration: INT8 needs normal images.
    onnx_name: file name of this precision's graph inside the bundle."""

    name: str
    needs_calibration: bool
    onnx_name: str
    description: str


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", False, "model.fp32.onnx", "float32 everywhere (reference)"),
        Precision("fp16", False, "model.fp16.onnx", "UNet float16, scoring float32"),
        Precision("int8", True, "model.int8.onnx", "UNet convs int8 Q/DQ (calibrated), scoring float32"),
    )
}


def get_precision(name: str) -> Precision:
    """The table entry for ``name``; raises ConfigError with "did you mean" and the valid list."""
    return lookup(PRECISIONS, name, "precision")

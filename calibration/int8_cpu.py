"""The INT8 graph for CPU engines (ONNX Runtime, OpenVINO), kept beside the TensorRT Q/DQ graph.

Why a second graph: the TensorRT graph (``calibration.int8``) quantises Conv *inputs* only and keeps
activations symmetric int8, because TensorRT fuses DQ -> Conv -> ReLU -> Q itself. ONNX Runtime's CPU
provider only turns a Conv into ``QLinearConv`` when its output is quantised too (the node unit
DQ(x), DQ(w) -> Conv -> Q(y)); without that it dequantises the weights and runs an FP32 ``FusedConv``
plus the extra Q/DQ passes. Profiled on CPU-2 (c = 32, 256 px): 22 FusedConv + 79 Q/DQ nodes, 0.73x
the FP32 speed (BENCHMARKS.md). This graph quantises the UNet operators ORT has int8 kernels
for (``CPU_INT8_OPS``: Conv, MaxPool, Resize, Add, Concat), inputs *and* outputs inside the UNet, with asymmetric uint8
activations and symmetric per-channel int8 weights (U8S8, the pairing x86 VNNI kernels run fastest),
so the UNet runs QLinearConv end to end; scoring stays FP32 as in the TensorRT graph.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Collection, Mapping

import numpy as np
import onnx

from fair_edge.calibration.int8 import (Int8Settings, _largest_divisor_at_most, _quiet_ort, _reader, cache_key,
                                        calibration_method, excluded_nodes, reusable_cache)
from fair_edge.calibration.ranges import calibrate_ranges, require_int8_onnxruntime
from fair_edge.errors import ExportError

log = logging.getLogger(__name__)
CPU_INT8_ONNX = "model.int8-cpu.onnx"
CPU_CALIB_CACHE = "calibration-cpu.json"
CPU_INT8_OPS = ("Conv", "MaxPool", "Resize", "Add", "Concat")  # the UNet's operators with int8 CPU kernels


def quantize_int8_cpu(fp32_onnx: str | Path, out_onnx: str | Path, inputs: Mapping[str, np.ndarray],
                      scope: tuple[str, ...], settings: Int8Settings, cache_path: str | Path,
                      on_image: Callable[[], None] | None = None, keep_float: Collection[str] = ()) -> bool:
    """Write the CPU INT8 graph of ``fp32_onnx`` to ``out_onnx`` (U8S8 Q/DQ on the ``CPU_INT8_OPS`` in ``scope``).

    inputs: {input name: (N, C, S, S) float32} calibration inputs. scope: node-name prefixes to quantise
    (the family's ``int8_scope``). cache_path: ORT calibration cache, reused when its key file matches.
    keep_float: in-scope nodes to leave float32 (``int8_gate``). Returns True if the cache was reused.
    ExportError on an onnxruntime older than INT8 needs (>= 1.27: ``ranges.require_int8_onnxruntime``).
    """
    require_int8_onnxruntime()
    fp32_onnx, out_onnx, cache_path = Path(fp32_onnx), Path(out_onnx), Path(cache_path)
    key = "cpu-u8s8:" + cache_key(fp32_onnx, settings, inputs)
    key_path = cache_path.with_name(cache_path.name + ".key")
    reused = reusable_cache(cache_path, key)
    try:
        _quantize(fp32_onnx, out_onnx, inputs, scope, settings, cache_path, on_image, keep_float, reused)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ExportError(f"CPU INT8 quantisation of {fp32_onnx} failed: {type(exc).__name__}: {str(exc)[:400]}. "
                          f"Delete {cache_path} and rebuild; if it persists, build with --fp16.") from exc
    # ranges calibrated for a graph with layers kept float lack those layers': never reused for the full scope
    key_path.write_text((key if reused or not keep_float else key + ":partial") + "\n")
    return reused


def _quantize(fp32_onnx: Path, out_onnx: Path, inputs: Mapping[str, np.ndarray], scope: tuple[str, ...],
              settings: Int8Settings, cache_path: Path, on_image: Callable[[], None] | None,
              keep_float: Collection[str], reused: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32_onnx))
    reader, method = _reader(inputs, on_image), calibration_method(settings.method)
    with _quiet_ort():
        if not reused:  # ORT's calibrator defaults (percentile: symmetric |x|, entropy and max: signed), our rule
            calibrate_ranges(fp32_onnx, reader, CPU_INT8_OPS, scope, method, {"percentile": settings.percentile},
                             _largest_divisor_at_most(len(reader), settings.chunk), cache_path)
        quantize_static(
            graph, str(out_onnx), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(CPU_INT8_OPS), per_channel=True, reduce_range=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded_nodes(graph, scope, keep_float), calibrate_method=method,
            extra_options={"WeightSymmetric": True}, calibration_cache_path=str(cache_path),
        )
    pool_float_taps(out_onnx)


def pool_float_taps(path: Path) -> int:
    """Rewrite the graph at ``path`` so that every AveragePool reads the float tensor, not its Q/DQ copy; drop the
    Q/DQ pairs left unread. Returns the number of pools rewired.

    Why: the quantised Add before PatchCore's 3 x 3 local average (zero padding counted) leaves the average reading
    DequantizeLinear's output. ONNX Runtime pools that in float, as written; OpenVINO 2026.4 moves the
    dequantisation behind the pool and scored the graph 10-20 x too high, so every part was NG under `auto` whenever
    OpenVINO timed faster. The pool is cheap and outside ``CPU_INT8_OPS``: in float it is the same on both engines."""
    graph = onnx.load(str(path))
    made_by = {out: node for node in graph.graph.node for out in node.output}
    rewired = 0
    for node in graph.graph.node:
        dq = made_by.get(node.input[0]) if node.op_type == "AveragePool" else None
        q = made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            rewired += 1
    if rewired:
        _drop_unread(graph.graph)
        onnx.save(graph, str(path))
    return rewired


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes whose outputs nothing reads (neither a node nor a graph output), until none is left."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(out in read for out in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)

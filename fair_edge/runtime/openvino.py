"""OpenVINO on the CPU: runs a bundle's ONNX graph (FP32, or the CPU INT8 Q/DQ graph) with Intel's runtime.

Optional (``pip install openvino``). The backend is ``calibration.openvino_graph.OpenVinoGraph`` (which the build
scores its held-out images with to calibrate OpenVINO's own thresholds: one compile configuration for both) with
the backend's name and device. ``warn_other_openvino``: the release running is not the one the build calibrated an
INT8 bundle's OpenVINO thresholds on (said once per bundle at load, never refused).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import torch

from fair_edge.calibration.openvino_graph import OpenVinoGraph, openvino_version

log = logging.getLogger(__name__)

# (bundle folder, recorded release, running release) already warned of by ``warn_other_openvino``
_OTHER_VERSION_SAID: set[tuple[Path, str, str]] = set()


def dequantised_pools(onnx_path: str | Path) -> list[str]:
    """Names of the AveragePool nodes of the ONNX graph at ``onnx_path`` that read a DequantizeLinear of a
    QuantizeLinear output (a Q/DQ copy of their input): the CPU INT8 graph as built before fair-edge bb4c96d, which
    OpenVINO 2026.4 scores 10-20 x too high (it moves the dequantisation behind the pool). Since then the build
    rewires every such pool to the float tensor (``calibration.int8_cpu.pool_float_taps``, the same pattern), so
    a graph built since has none. Reads the graph's nodes only, not its weights' external data: about 2 ms for
    a 1.3 MB PatchCore graph."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    made_by = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        dq = made_by.get(node.input[0]) if node.op_type == "AveragePool" and node.input else None
        q = made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            found.append(node.name or node.output[0])
    return found


class OpenVinoBackend(OpenVinoGraph):
    """infer({input name: (B, C, S, S) float32}) -> {anomaly_map: (B, 1, S, S), score: (B,)} float32 host
    arrays, like ``OnnxRuntimeBackend``. input_names: the bundle model's inputs, in order.
    threads: CPU inference threads, 0 = OpenVINO's default. Batch sizes may change between calls.
    """

    name = "openvino"
    device = torch.device("cpu")


def other_openvino(bundle) -> tuple[str, str] | None:
    """(the OpenVINO release the build calibrated ``bundle``'s INT8 CPU graph's OpenVINO thresholds on, the release
    installed here) when they differ ("2026.4.1" each, build numbers left out); None when they match, or when the
    bundle keeps no OpenVINO thresholds (an FP32/FP16 bundle shares ONNX Runtime's: the engines agree within 2e-6)."""
    own = getattr(bundle, "cpu_openvino", None)
    if own is None or own.threshold is None or not own.version:
        return None
    running = openvino_version()
    return None if running is None or running == own.version else (own.version, running)


def warn_other_openvino(bundle) -> None:
    """Warn, once per bundle folder and pair of releases, that the OpenVINO running ``bundle`` is not the release its
    OpenVINO thresholds were calibrated on (``other_openvino``), with what that risks and the fixes. Not refused: how
    far another release scores that graph from this one is not known here, and the line must not stop for it."""
    pair = other_openvino(bundle)
    if pair is None or (bundle.root, *pair) in _OTHER_VERSION_SAID:
        return
    _OTHER_VERSION_SAID.add((bundle.root, *pair))
    recorded, running = pair
    rebuild = f"`{bundle.build_command}`" if bundle.build_command else "`fair-edge build CHECKPOINT --int8 --out BUNDLE`"
    log.warning("bundle %s: its int8 CPU graph's OpenVINO thresholds (image %.6g) were calibrated on OpenVINO %s's "
                "scores, but this is OpenVINO %s: another release's int8 kernels can score that graph otherwise (two "
                "engines already differ up to about 1 %% on it, more than the threshold's margin), so normal parts "
                "near the threshold can be NG, or defects pass. Running on anyway. Rebuild the bundle here with %s "
                "(it calibrates OpenVINO %s's own thresholds and runs its INT8 quality gate again), install OpenVINO "
                "%s (pip install openvino==%s), or run --backend onnxruntime.", bundle.root,
                bundle.cpu_openvino.threshold.value, recorded, running, rebuild, running, recorded, recorded)

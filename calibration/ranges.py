"""Activation ranges for INT8: ONNX Runtime's calibrators, with one rule of ours for the percentile histogram.

Both INT8 graphs (``calibration.int8`` for TensorRT, ``calibration.int8_cpu`` for the CPU engines) calibrate here
and write ORT's JSON cache; ``quantize_static`` then reads the ranges from that cache instead of calibrating itself.

The rule. ORT's symmetric percentile calibrator histograms ``|x|`` of a tensor's first calibration chunk over
``[min |x|, max |x|]`` in 2048 bins, in the tensor's own dtype. A tensor that is constant to within float32
resolution (spread < ~2.4e-4 of its magnitude: PatchCore's anomaly map on random weights sits at 8.9017 +- 1.2e-4)
has no 2048 distinct float32 edges in that range, and numpy raises "Too many bins for data range"; a merely narrow
first chunk gives bins so fine that a later chunk with a larger ``max |x|`` extends them by millions. Our histograms
span ``[0, max |x|]`` of the first chunk instead (``zero_based_histograms``). The range is symmetric, ``[-t, t]``,
so bins below ``min |x|`` cost nothing; the bin width ``max |x| / 2048`` is 1/16 of the int8 step ``max |x| / 127``
(1/8 of the CPU graph's uint8 step over ``[0, max |x|]``), so the threshold keeps a resolution finer than the
quantisation it sets. ORT takes the lower edge of the percentile's bin, so the largest values may clip by up to
one bin; for a near-constant positive tensor the cache may then read lowest = min > highest, which is harmless:
ORT widens every range to hold 0. A tensor whose ``max |x|`` is below 2048 float32 normals (~2.4e-35) is zero for
int8: its bins span ``[0, 1]`` and its threshold is clipped to its maximum, as ORT clips every threshold. Entropy
and asymmetric percentile histograms (``[-max |x|, max |x|]``) are ORT's own; they never had the zero-width range.

Only the tensors INT8 may quantise are calibrated: inputs and outputs of the quantised op types inside the family's
``int8_scope`` (``scope_tensors``). ORT's calibrator alone takes every node of those types; the failing tensor of
issue #29 was one outside the scope (PatchCore's anomaly map, the output of its blur Conv).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx

from fair_edge.errors import ExportError

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod

# ONNX Runtime's quantization package is imported only inside the INT8 functions (here, ``int8``, ``int8_cpu``): every
# command, inference, FP32/FP16 builds and the CPU engines run without it, on Python 3.10 too, whose newest
# onnxruntime (1.23) lacks the calibration-cache API below and whose quantization needs onnx >= 1.16 to import.
INT8_ORT = "1.27"  # first onnxruntime with the calibration-cache API below (its wheels need Python >= 3.11)
INT8_ONNX = "1.16"  # the onnx that onnxruntime >= 1.19's quantization imports with (TensorProto.INT4)


def require_int8_onnxruntime() -> None:
    """Raise ExportError (one line: the versions found and the fix) unless this onnxruntime's quantization imports
    and has the calibration-cache API INT8 builds use: ``TensorsData``, ``load_tensors_data``, ``save_tensors_data``
    and ``quantize_static(calibration_cache_path=)`` (onnxruntime >= ``INT8_ORT``)."""
    import onnxruntime

    found = getattr(onnxruntime, "__version__", "unknown")
    try:
        from onnxruntime.quantization import calibrate, quantize_static
    except (ImportError, AttributeError) as exc:  # e.g. onnx 1.15 under onnxruntime >= 1.19: no TensorProto.INT4
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
        raise ExportError(f"INT8 calibration needs onnxruntime's quantization package, which does not import here "
                          f"(onnxruntime {found}, onnx {onnx.__version__}: {why}); expected onnx >= {INT8_ONNX}: "
                          "pip install -U onnx.") from exc
    api = ("TensorsData", "load_tensors_data", "save_tensors_data")
    if all(hasattr(calibrate, name) for name in api) and \
            "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        return
    raise ExportError(f"INT8 calibration needs onnxruntime >= {INT8_ORT} (Python >= 3.11); found onnxruntime {found}. "
                      "Build FP32/FP16 bundles here, or build --int8 on a Python 3.11+ machine (the bundle runs on "
                      "this one).")


def _flat(data: "np.ndarray | list[np.ndarray]") -> np.ndarray:
    """One 1-D array of a tensor's collected values (ORT hands a list of per-image arrays)."""
    if isinstance(data, list):
        return np.concatenate([np.asarray(a).ravel() for a in data]) if data else np.zeros(0, np.float32)
    return np.asarray(data).ravel()


def zero_based_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
    """(num_bins + 1,) edges over [0, max |values|] in ``values``' dtype (float32 or float16), strictly increasing."""
    dtype = values.dtype
    top = float(np.nanmax(np.abs(values))) if values.size else 0.0
    if not np.isfinite(top) or top < num_bins * float(np.finfo(dtype).tiny):
        top = 1.0
    return np.linspace(0.0, top, num_bins + 1).astype(dtype)


@functools.lru_cache(maxsize=None)
def zero_based_histograms() -> type:
    """``ZeroBasedHistograms``: ORT's histogram collector whose symmetric (|x|) histograms start at 0 (module
    docstring: the rule). A class made on first use, as ORT's quantization is imported only by INT8 builds."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    class ZeroBasedHistograms(HistogramCollector):
        def collect_absolute_value(self, name_to_arr) -> None:
            for tensor, data in name_to_arr.items():
                values = _flat(data)
                if tensor in self.histogram_dict or values.size == 0:
                    continue
                edges = zero_based_edges(values, self.num_bins)
                # an empty histogram with our edges: ORT then merges this chunk (and later ones) into it
                self.histogram_dict[tensor] = (np.zeros(self.num_bins, np.int64), edges, np.nanmin(values),
                                               np.nanmax(values))
            super().collect_absolute_value(name_to_arr)

    return ZeroBasedHistograms


def scope_tensors(graph: onnx.ModelProto, op_types: Sequence[str], scope: tuple[str, ...]) -> set[str]:
    """Names of the inputs and outputs of the ``op_types`` nodes inside ``scope``: the tensors INT8 may quantise."""
    return {t for n in graph.graph.node if n.op_type in op_types and n.name.startswith(scope)
            for t in itertools.chain(n.input, n.output)}


def calibrate_ranges(fp32_onnx: Path, reader: CalibrationDataReader, op_types: Sequence[str], scope: tuple[str, ...],
                     method: CalibrationMethod, options: dict, chunk: int, cache_path: Path) -> None:
    """Calibrate the float tensors around the ``op_types`` nodes in ``scope`` (node-name prefixes) of ``fp32_onnx``
    and write ORT's cache to ``cache_path``. ORT's calibrator alone takes every node of those types, inside the
    scope or not (PatchCore's blur Conv, whose output is the anomaly map); ranges outside it would never be used.

    reader: one image per ``get_next`` with ``set_range`` (``int8._reader``); chunk: images per pass, dividing its
    length. options: ORT's calibrator options, as ``quantize_static`` would pass them ("symmetric", "percentile").
    """
    require_int8_onnxruntime()
    from onnxruntime.quantization.calibrate import (HistogramCalibrater, TensorsData, create_calibrator,
                                                    save_tensors_data)

    wanted = scope_tensors(onnx.load(str(fp32_onnx), load_external_data=False), op_types, scope)
    with tempfile.TemporaryDirectory(prefix="fair-edge-calib.") as tmp:
        calibrator = create_calibrator(Path(fp32_onnx), list(op_types), str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method, extra_options=options)
        if isinstance(calibrator, HistogramCalibrater):
            calibrator.tensors_to_calibrate &= wanted  # collect_data histograms only these
            calibrator.collector = zero_based_histograms()(
                method=calibrator.method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
                num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,
                scenario=calibrator.scenario)
        for start in range(0, len(reader), chunk):
            reader.set_range(start_index=start, end_index=start + chunk)
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del calibrator  # its session holds the augmented model open until the folder goes
    save_tensors_data(TensorsData(ranges.calibration_method, {k: v for k, v in ranges.items() if k in wanted}),
                      cache_path)

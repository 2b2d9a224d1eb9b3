"""INT8 calibration: explicit Q/DQ on the UNet convolutions, calibrated on normal images.

Library: ONNX Runtime's ``quantize_static`` (QuantFormat.QDQ), configured for TensorRT's explicit
quantisation: symmetric int8 activations (zero point 0), per-channel symmetric int8 weights
(axis 0), Q/DQ on Conv *inputs* only (``OpTypesToExcludeOutputQuantization=['Conv']``, TensorRT
fuses DQ -> Conv -> ReLU -> Q itself), biases kept float32 (``QuantizeBias=False``; TensorRT
has no int32 DequantizeLinear). Only nodes inside the model family's ``int8_scope`` are quantised
(FAIR: ``/unet/``): the scoring subgraph and the final restored image stay float32.

Ranges come from ``calibration.ranges`` (ORT's calibrators; a near-constant tensor's percentile histogram by our
documented rule). They are written to a cache file (ORT's JSON ``TensorsData``) with a key file next
to it; a rebuild with the same fp32 graph, settings and images reuses the ranges exactly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Collection, Mapping

import numpy as np
import onnx

from fair_edge.calibration.ranges import calibrate_ranges, require_int8_onnxruntime
from fair_edge.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

# --calib-method: the name of ORT's CalibrationMethod member (``calibration_method``; ORT's quantization is imported
# only by the INT8 functions, ``ranges.require_int8_onnxruntime``)
METHODS = {"entropy": "Entropy", "percentile": "Percentile", "max": "MinMax"}


def calibration_method(name: str):
    """ORT's ``CalibrationMethod`` for a ``METHODS`` name ('entropy', 'percentile', 'max')."""
    from onnxruntime.quantization import CalibrationMethod

    return CalibrationMethod[METHODS[name]]


@dataclass(frozen=True)
class Int8Settings:
    """method: 'entropy', 'percentile' or 'max' (range of each activation tensor).
    num_images: normal images used (the first N of the folder, sorted). percentile: for 'percentile', in %.
    chunk: images per calibration pass (bounds memory: ORT keeps every activation of a chunk)."""

    method: str = "percentile"
    num_images: int = 64
    percentile: float = 99.99
    chunk: int = 4

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}; found {self.method!r}.")
        if self.num_images < 1:
            raise ConfigError(f"calibration needs at least 1 image; found num_images={self.num_images}.")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"calibration percentile must be in (50, 100]; found {self.percentile}.")
        if self.chunk < 1:
            raise ConfigError(f"calibration chunk must be >= 1; found {self.chunk}.")

    def to_dict(self) -> dict:
        return asdict(self)


class _DropPreprocessAdvice(logging.Filter):
    """Drops ORT's "consider pre-processing before quantization" advice: our graph is already folded."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_ort():
    """Route ORT's calibration prints (stdout) to our debug log and drop its pre-processing advice."""
    root, flt, buf = logging.getLogger(), _DropPreprocessAdvice(), io.StringIO()
    root.addFilter(flt)
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        root.removeFilter(flt)
        if buf.getvalue().strip():
            log.debug("onnxruntime.quantization: %s", buf.getvalue().strip())


def _reader(inputs: Mapping[str, np.ndarray], on_image: Callable[[], None] | None):
    """ORT's ``CalibrationDataReader`` over ``inputs`` ({name: (N, C, S, S) float32}): one image per ``get_next``;
    ``on_image`` called for each. Its class is made on first use (ORT's quantization is imported only by INT8)."""
    return _reader_class()(inputs, on_image)


@functools.lru_cache(maxsize=None)
def _reader_class() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Feeds one image at a time to ORT's calibrator; supports ORT's chunking via set_range."""

        def __init__(self, inputs: Mapping[str, np.ndarray], on_image: Callable[[], None] | None) -> None:
            self.inputs, self.on_image = inputs, on_image
            self.start, self.end = 0, len(self)
            self.pos = 0

        def __len__(self) -> int:
            return len(next(iter(self.inputs.values())))

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end, self.pos = start_index, end_index, start_index

        def get_next(self) -> dict | None:
            if self.pos >= self.end:
                return None
            i = self.pos
            self.pos += 1
            if self.on_image is not None:
                self.on_image()
            return {name: array[i : i + 1] for name, array in self.inputs.items()}

        def rewind(self) -> None:
            self.pos = self.start

    return _Reader


RANGES_VERSION = "2"   # the way ranges are taken (calibration.ranges); a new one makes old caches miss


def cache_key(fp32_onnx: Path, settings: Int8Settings, inputs: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the way ranges are taken (``RANGES_VERSION``), the fp32 graph, the settings and the calibration
    inputs: equal keys, equal ranges."""
    h = hashlib.sha256(f"ranges v{RANGES_VERSION}".encode())
    h.update(Path(fp32_onnx).read_bytes())
    h.update(json.dumps(settings.to_dict(), sort_keys=True).encode())
    for name in sorted(inputs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(inputs[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def reusable_cache(cache_path: Path, key: str) -> bool:
    """True when the calibration cache at ``cache_path`` may be reused: its key file (``NAME.key``) holds ``key`` and
    ONNX Runtime reads the cache. A cache that does not parse (damaged: a disk error, an interrupted copy) is deleted
    with a warning, so that the ranges are calibrated again instead of failing every rebuild; one whose key differs is
    deleted silently (other graph, settings or images). False with no cache. ExportError on an onnxruntime older
    than INT8 needs (``ranges.require_int8_onnxruntime``)."""
    require_int8_onnxruntime()
    from onnxruntime.quantization.calibrate import load_tensors_data

    key_path = cache_path.with_name(cache_path.name + ".key")
    if not (cache_path.is_file() and key_path.is_file() and key_path.read_text().strip() == key):
        cache_path.unlink(missing_ok=True)
        return False
    try:
        load_tensors_data(cache_path)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        log.warning("calibration cache %s does not parse (%s: %s): calibrating again", cache_path.name,
                    type(exc).__name__, str(exc)[:200])
        cache_path.unlink()
        return False
    return True


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def excluded_nodes(graph: onnx.ModelProto, scope: tuple[str, ...], keep_float: Collection[str] = ()) -> list[str]:
    """Node names ``quantize_static`` must leave float: every node outside ``scope``, plus ``keep_float``."""
    return [n.name for n in graph.graph.node if not n.name.startswith(scope) or n.name in keep_float]


def quantize_int8(
    fp32_onnx: str | Path,
    out_onnx: str | Path,
    inputs: Mapping[str, np.ndarray],
    scope: tuple[str, ...],
    settings: Int8Settings,
    cache_path: str | Path,
    on_image: Callable[[], None] | None = None,
    keep_float: Collection[str] = (),
) -> bool:
    """Write the Q/DQ INT8 graph of ``fp32_onnx`` to ``out_onnx``.

    inputs: {input name: (N, C, S, S) float32} calibration inputs (``calibration.frames.preprocess_frames``).
    scope: node-name prefixes whose convolutions get Q/DQ (the family's ``int8_scope``); others stay float32.
    cache_path: ORT calibration cache (JSON); reused when its key file matches, else rewritten.
    on_image: called once per calibration image (progress bars). Returns True if the cache was reused.
    keep_float: names of in-scope nodes to leave float32 (the INT8 quality gate's fallback, ``int8_gate``).
    ExportError on an onnxruntime older than INT8 needs (>= 1.27: ``ranges.require_int8_onnxruntime``).
    """
    require_int8_onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fp32_onnx, out_onnx, cache_path = Path(fp32_onnx), Path(out_onnx), Path(cache_path)
    key = cache_key(fp32_onnx, settings, inputs)
    key_path = cache_path.with_name(cache_path.name + ".key")
    reused = reusable_cache(cache_path, key)
    graph = onnx.load(str(fp32_onnx))
    # quantize_static reads the ranges from the cache calibrate_ranges writes (or a matching earlier one)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
             "OpTypesToExcludeOutputQuantization": ["Conv"]}
    reader, method = _reader(inputs, on_image), calibration_method(settings.method)
    try:
        with _quiet_ort():
            if not reused:
                calibrate_ranges(fp32_onnx, reader, ["Conv"], scope, method,
                                 {"symmetric": True, "percentile": settings.percentile},
                                 _largest_divisor_at_most(len(reader), settings.chunk), cache_path)
            quantize_static(
                graph, str(out_onnx), reader,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True, reduce_range=False,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded_nodes(graph, scope, keep_float), calibrate_method=method,
                extra_options=extra, calibration_cache_path=str(cache_path),
            )
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ExportError(
            f"INT8 quantisation of {fp32_onnx} failed: {type(exc).__name__}: {str(exc)[:400]}. "
            f"Delete {cache_path} and rebuild; if it persists, build with --fp16."
        ) from exc
    # ranges calibrated for a graph with layers kept float lack those layers': never reused for the full scope
    key_path.write_text((key if reused or not keep_float else key + ":partial") + "\n")
    return reused

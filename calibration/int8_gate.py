"""The INT8 quality gate: what quantisation costs on held-out images, and layers kept float until it fits.

``fair-edge build --int8 --max-drop D`` runs it on every INT8 graph of the bundle (the TensorRT Q/DQ
graph and the CPU engines' graph), scored by ONNX Runtime on the CPU against the FP32 graph.

Metrics (``METRICS``; the held-out data decides which one applies):
  image_auroc   held-out normal *and* defective frames (``--normal`` and ``--defects``):
                drop = 100 x (AUROC_fp32 - AUROC_int8), in points of image AUROC (a gain is a negative drop).
  normal_score  held-out normal frames only (``--normal``): drop = mean |s_int8 - s_fp32| / std(s_fp32)
                over those frames' scores, in units of the FP32 normal-score spread (population std,
                ddof 0): the selection signal of BENCHMARKS.md's LGFDR INT8 scope study, where the
                quantised backbone scored 1.74 and the towers + SRH alone 0.02.
Frame scores are whole-frame decision scores (tiles stitched for a tiled model), as the station decides.
Held-out normals whose FP32 scores do not spread (copies of one frame: ``calibration.threshold.check_spread``, the
rule build and fuse refuse them by) are refused with a DataError before any INT8 graph is measured, whatever the
metric: the normal-score spread is the unit of the fallback's ranking too.

Fallback, when the full graph's drop is over the limit:
  1. sensitivity: for every quantised layer (a node of the family's ``int8_scope`` of an operator type
     the graph quantises), a graph with that layer alone quantised; its drop, then its mean |score change|
     over all held-out frames (in normal-score spreads), rank the layers, most sensitive first;
  2. the most sensitive layers are kept float32, one more at a time, until the drop is within the limit,
     at most ``max_float_share`` of the layers; past that the build is refused with a ``BuildError``
     giving the figures (and, being a failed build, leaves no bundle).
Calibration runs once, for the full graph, which writes the range cache; every later graph reuses those
ranges (a subset of them), so each step costs one Q/DQ rewrite and one pass over the held-out frames.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
import onnx
from sklearn.metrics import roc_auc_score

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.calibration.onnx_graph import OnnxGraph
from fair_edge.calibration.threshold import check_spread
from fair_edge.errors import BuildError, ConfigError, DataError, ExportError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.tensors import ANOMALY_MAP, SCORE
from fair_edge.tiling import FrameTiler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualityGate:
    """max_drop: the most an INT8 graph may lose against FP32, in the metric's unit (points of image AUROC,
    or FP32 normal-score spreads; see the module doc). max_float_share: the largest share of the quantised
    layers the fallback may keep float before the build is refused (beyond it INT8 buys little)."""

    max_drop: float
    max_float_share: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise ConfigError(f"--max-drop must be a number >= 0 (points of AUROC, or normal-score spreads); "
                              f"found {self.max_drop}.")
        if not 0 < self.max_float_share <= 1:
            raise ConfigError(f"max_float_share must be in (0, 1]; found {self.max_float_share}.")


def check_gate_inputs(gate: QualityGate | None, precision: str, has_normal: bool) -> None:
    """Refuse, before any work, a gate on a precision it does not apply to, or without held-out normals."""
    if gate is None:
        return
    if precision != "int8":
        raise ConfigError(f"--max-drop gates INT8 builds; this build is {precision}. Add --int8, or leave out --max-drop.")
    if not has_normal:
        raise DataError("--max-drop measures the INT8 graph on held-out normal images; pass --normal (a folder, or a "
                        "dataset with a test split such as elpv:mono), and --defects to gate on image AUROC.")


class HeldOut:
    """Held-out frames, pre-processed once: normal frames first, then defective ones.

    normal, defects: (H, W, 3) uint8 BGR host frames. ``scores(graph)`` -> (n_normal + n_defect,) float64
    whole-frame scores of an ONNX graph (ONNX Runtime, CPU).
    """

    def __init__(self, model: ModelSpec, normal: Sequence[np.ndarray], defects: Sequence[np.ndarray] = ()) -> None:
        self.model, self.n_normal, self.n_defect = model, len(normal), len(defects)
        self.tiler = FrameTiler(model.preprocess.tiling, model.preprocess.image_size)
        tiles, self.layouts = self.tiler.split([*normal, *defects])
        self.n_normal_tiles = len(self.tiler.split(list(normal))[0])
        self.inputs = preprocess_frames(tiles, model)

    @property
    def normal_inputs(self) -> dict[str, np.ndarray]:
        """The normal frames' inputs (their tiles for a tiled model): views of ``inputs``."""
        return {name: value[: self.n_normal_tiles] for name, value in self.inputs.items()}

    def require_for_gate(self) -> None:
        """DataError unless there are enough normal frames for the gate (their score spread is its unit)."""
        if self.n_normal < 2:
            raise DataError(f"the INT8 quality gate needs at least 2 held-out normal images (their score spread is "
                            f"its unit); found {self.n_normal}. Pass more with --normal.")

    @property
    def labels(self) -> np.ndarray:
        """(n_normal + n_defect,) int64: 0 normal, 1 defect."""
        return np.r_[np.zeros(self.n_normal, np.int64), np.ones(self.n_defect, np.int64)]

    def scores(self, graph: Path) -> np.ndarray:
        return self.maps_scores(graph)[1]

    def maps_scores(self, graph: Path, engine: Callable = OnnxGraph) -> tuple[list[np.ndarray], np.ndarray]:
        """(n_normal + n_defect maps (h, w) float32, stitched for a tiled model; their scores (N,) float64).
        engine(graph, input names): opens the graph on the engine that scores it: ``OnnxGraph`` (ONNX Runtime), or
        ``openvino_graph.OpenVinoGraph`` (the build's OpenVINO thresholds)."""
        backend = engine(graph, self.model.input_names)
        try:
            out = backend.infer_batched(self.inputs)
        finally:
            backend.close()
        maps, scores = self.tiler.stitch(out[ANOMALY_MAP][:, 0], out[SCORE], self.layouts)
        scores = scores.astype(np.float64)
        bad = int((~np.isfinite(scores)).sum())
        if bad:
            raise ExportError(f"{graph.name} scores {bad} of {len(scores)} held-out images as NaN or infinite; expected "
                              "finite scores. Delete the bundle's calibration caches and rebuild; if it persists, build "
                              "with --fp16.")
        return maps, scores


@dataclass(frozen=True)
class Measure:
    """One graph against FP32: fp32/int8: the metric's values (AUROCs, or mean normal scores); drop: the loss."""

    fp32: float
    int8: float
    drop: float


def _auroc(held: HeldOut, ref: np.ndarray, got: np.ndarray) -> Measure:
    a, b = float(roc_auc_score(held.labels, ref)), float(roc_auc_score(held.labels, got))
    return Measure(a, b, 100.0 * (a - b))


def _normal_score(held: HeldOut, ref: np.ndarray, got: np.ndarray) -> Measure:
    r, g = ref[: held.n_normal], got[: held.n_normal]
    return Measure(float(r.mean()), float(g.mean()), float(np.abs(g - r).mean() / normal_spread(held, ref)))


def normal_spread(held: HeldOut, ref: np.ndarray) -> float:
    """std (ddof 0, score units) of the FP32 scores of the held-out normals: the gate's unit of score change.
    Raises DataError when they do not spread by the rule build and fuse refuse normals with
    (``calibration.threshold.check_spread``: std over SPREAD_FLOOR of |mean|): copies of one frame score alike to
    float32 rounding, and a score change measured in that std would say nothing."""
    _, spread = check_spread(ref[: held.n_normal], "the FP32 graph's scores", "so the INT8 quality gate has no unit "
                             "to measure score changes in (the spread of normal scores)", "pass images of different "
                             "normal parts that training did not see with --normal (copies of one frame count as one "
                             "image).")
    return spread


@dataclass(frozen=True)
class GateMetric:
    """key: as in bundle.json. unit: of ``drop`` and the limit. needs_defects: applies when defects are given."""

    key: str
    unit: str
    needs_defects: bool
    measure: Callable[[HeldOut, np.ndarray, np.ndarray], Measure]


METRICS: dict[str, GateMetric] = {m.key: m for m in (
    GateMetric("image_auroc", "points of image AUROC", True, _auroc),
    GateMetric("normal_score", "FP32 normal-score spreads (mean |INT8 - FP32| / std)", False, _normal_score),
)}


def metric_for(held: HeldOut) -> GateMetric:
    """image_auroc with defective frames, else normal_score."""
    return next(m for m in METRICS.values() if m.needs_defects == (held.n_defect > 0))


@dataclass(frozen=True)
class LayerSensitivity:
    """A graph with only ``node`` quantised: its drop and mean |score change| (normal-score spreads)."""

    node: str
    drop: float
    score_change: float


@dataclass(frozen=True)
class GraphGate:
    """The gate's result for one graph: ``fp32``/``int8``/``drop`` of the graph kept, ``full_drop`` of the
    all-INT8 graph, ``kept_float`` the layers left float32 (most sensitive first), ``layers`` how many the
    graph quantises in all, ``sensitivity`` per layer (empty when the full graph passed)."""

    graph: str
    fp32: float
    int8: float
    drop: float
    full_drop: float
    kept_float: tuple[str, ...]
    layers: int
    sensitivity: tuple[LayerSensitivity, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kept_float"] = list(self.kept_float)
        data["sensitivity"] = [asdict(s) for s in self.sensitivity]
        return data


@dataclass(frozen=True)
class GateReport:
    """bundle.json's ``quality_gate``: metric, unit, limit, held-out counts and one ``GraphGate`` per graph."""

    metric: str
    unit: str
    limit: float
    n_normal: int
    n_defect: int
    graphs: tuple[GraphGate, ...]

    def to_dict(self) -> dict:
        return {"metric": self.metric, "unit": self.unit, "limit": self.limit, "n_normal": self.n_normal,
                "n_defect": self.n_defect, "graphs": {g.graph: g.to_dict() for g in self.graphs}}


@dataclass(frozen=True)
class Int8Graph:
    """One INT8 graph of the bundle and how it is written: ``write(path, keep_float)`` quantises the FP32
    graph with the given in-scope nodes left float32 (reusing the calibration cache); ``op_types``: the
    operators that graph quantises (with the family's ``scope``, they define its layers)."""

    path: Path
    write: Callable[[Path, Collection[str]], object]
    op_types: tuple[str, ...]

    def layers(self, fp32: Path, scope: tuple[str, ...]) -> tuple[str, ...]:
        graph = onnx.load(str(fp32), load_external_data=False)
        return tuple(n.name for n in graph.graph.node if n.op_type in self.op_types and n.name.startswith(scope))


def _quiet(text: str) -> None:
    log.debug("INT8 quality gate: %s", text)


def _report_leftover(func, path, exc_info) -> None:
    log.warning("could not remove the INT8 quality gate's trial graph %s: %s", path, exc_info[1])


def _refusal(g: Int8Graph, full: Measure, best: Measure, tried: int, layers: int, metric: GateMetric,
             gate: QualityGate, held: HeldOut) -> BuildError:
    return BuildError(
        f"INT8 graph {g.path.name} loses {full.drop:.3g} {metric.unit} against FP32 ({metric.key}: FP32 {full.fp32:.4f}, "
        f"INT8 {full.int8:.4f}; {held.n_normal} normal, {held.n_defect} defective held-out images); the limit "
        f"(--max-drop) is {gate.max_drop:g}. Keeping up to {tried} of its {layers} quantised layers float32, the "
        f"most sensitive first, it still loses {best.drop:.3g} at best (at most {gate.max_float_share:.0%} may stay "
        "float). No bundle was written. Fix: build with --fp16, raise --max-drop, or calibrate on more or more "
        "varied normal images (--calib-images, --calib-method)."
    )


def gate_graph(g: Int8Graph, layers: tuple[str, ...], held: HeldOut, ref: np.ndarray, metric: GateMetric,
               gate: QualityGate, on_step: Callable[[str], None] | None = None) -> GraphGate:
    """Measure ``g.path`` (already written with every layer quantised); when over the limit, rank the layers
    and rewrite it with the fewest most-sensitive ones float32 that bring it within (see the module doc).
    ref: the FP32 graph's ``held.scores``. Raises BuildError when no allowed fallback is within the limit."""
    say = on_step or _quiet
    full = metric.measure(held, ref, held.scores(g.path))
    say(f"{g.path.name}: all {len(layers)} layers INT8, drop {full.drop:.3g} ({metric.key}, limit {gate.max_drop:g})")
    if full.drop <= gate.max_drop:
        return GraphGate(g.path.name, full.fp32, full.int8, full.drop, full.drop, (), len(layers))
    spread = normal_spread(held, ref)
    work = Path(tempfile.mkdtemp(prefix=".gate-", dir=g.path.parent))
    try:
        trial = work / g.path.name
        ranked = []
        for i, layer in enumerate(layers, 1):
            g.write(trial, [other for other in layers if other != layer])
            got = held.scores(trial)
            m = metric.measure(held, ref, got)
            ranked.append(LayerSensitivity(layer, m.drop, float(np.abs(got - ref).mean() / spread)))
            say(f"{g.path.name}: sensitivity {i}/{len(layers)} {layer}: drop {m.drop:.3g}")
        ranked.sort(key=lambda s: (-s.drop, -s.score_change))
        allowed = int(gate.max_float_share * len(layers))
        best = full
        for k in range(1, allowed + 1):
            kept_float = tuple(s.node for s in ranked[:k])
            g.write(trial, kept_float)
            m = metric.measure(held, ref, held.scores(trial))
            say(f"{g.path.name}: {k} layer(s) float, drop {m.drop:.3g}")
            best = min(best, m, key=lambda x: x.drop)
            if m.drop <= gate.max_drop:
                os.replace(trial, g.path)
                log.warning("INT8 quality gate: %s keeps %d of %d layers float32 (drop %.3g -> %.3g %s, limit %g): %s",
                            g.path.name, k, len(layers), full.drop, m.drop, metric.unit, gate.max_drop, ", ".join(kept_float))
                return GraphGate(g.path.name, m.fp32, m.int8, m.drop, full.drop, kept_float, len(layers), tuple(ranked))
        raise _refusal(g, full, best, allowed, len(layers), metric, gate, held)
    finally:
        shutil.rmtree(work, onerror=_report_leftover)


def run_gate(fp32: Path, graphs: Sequence[Int8Graph], scope: tuple[str, ...], held: HeldOut, gate: QualityGate,
             on_step: Callable[[str], None] | None = None) -> GateReport:
    """Gate every graph of ``graphs`` (each already written in full INT8) against the FP32 graph ``fp32``. Raises
    DataError when the held-out normals are too few or their FP32 scores do not spread (``normal_spread``)."""
    held.require_for_gate()
    metric = metric_for(held)
    ref = held.scores(fp32)
    normal_spread(held, ref)   # refused before any graph is measured: every metric's fallback ranks layers in it
    results = tuple(gate_graph(g, g.layers(fp32, scope), held, ref, metric, gate, on_step) for g in graphs)
    return GateReport(metric.key, metric.unit, gate.max_drop, held.n_normal, held.n_defect, results)

"""How far a reduced-precision graph is from the fp32 reference: map/score errors, correlation, AUROC.

Both functions run ONNX Runtime on the CPU, so they work on the build machine without a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.calibration.onnx_graph import OnnxGraph
from fair_edge.errors import DataError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.tensors import ANOMALY_MAP, SCORE


@dataclass(frozen=True)
class GraphDelta:
    """Candidate minus reference on the same inputs. map_*: anomaly-map abs error (score units);
    score_*: image-score abs error; pearson/spearman: score correlation (nan with < 3 images)."""

    n_images: int
    map_max_abs: float
    map_mean_abs: float
    score_max_abs: float
    score_pearson: float
    score_spearman: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PrecisionComparison:
    """Detection quality of one precision vs the fp32 reference on labelled images."""

    precision: str
    auroc_reference: float
    auroc: float
    auroc_delta: float
    delta: GraphDelta
    n_normal: int
    n_defect: int


def _correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    return float(pearsonr(a, b)[0]), float(spearmanr(a, b)[0])


def graph_delta(reference: OnnxGraph, candidate: OnnxGraph, inputs: Mapping[str, np.ndarray],
                batch: int = 8) -> GraphDelta:
    """Run both graphs on the same named inputs ({name: (N, C, S, S) float32}) and compare."""
    ref, got = reference.infer_batched(inputs, batch), candidate.infer_batched(inputs, batch)
    ref_map, ref_score, map_, score = ref[ANOMALY_MAP], ref[SCORE], got[ANOMALY_MAP], got[SCORE]
    err = np.abs(map_.astype(np.float64) - ref_map)
    pearson, spearman = _correlations(ref_score.astype(np.float64), score.astype(np.float64))
    return GraphDelta(
        n_images=len(score), map_max_abs=float(err.max()), map_mean_abs=float(err.mean()),
        score_max_abs=float(np.abs(score.astype(np.float64) - ref_score).max()),
        score_pearson=pearson, score_spearman=spearman,
    )


def compare_precisions(graphs: Mapping[str, str | Path], frames: Sequence[np.ndarray], labels: Sequence[int],
                       model: ModelSpec, reference: str = "fp32") -> dict[str, PrecisionComparison]:
    """AUROC and score agreement of each graph in ``graphs`` against ``graphs[reference]``.

    graphs: precision name -> ONNX path (e.g. a bundle's reference_onnx_path and onnx_path).
    frames: (H, W, 3) uint8 BGR images; labels: 0 = normal, 1 = defect (both classes needed).
    Returns precision -> PrecisionComparison (the reference included, with delta 0).
    """
    y = np.asarray(labels, dtype=np.int64)
    if len(frames) != len(y) or not set(np.unique(y)) == {0, 1}:
        raise DataError(
            f"compare_precisions needs one label per frame and both classes (0 normal, 1 defect); "
            f"found {len(frames)} frames, labels {sorted(set(y.tolist()))}."
        )
    if reference not in graphs:
        raise DataError(f"reference precision {reference!r} not among the graphs {sorted(graphs)}.")
    inputs = preprocess_frames(frames, model)
    ref = OnnxGraph(graphs[reference], model.input_names)
    ref_scores = ref.infer_batched(inputs)[SCORE]
    auroc_ref = float(roc_auc_score(y, ref_scores))
    out = {}
    for name, path in graphs.items():
        cand = ref if name == reference else OnnxGraph(path, model.input_names)
        scores = cand.infer_batched(inputs)[SCORE]
        auroc = float(roc_auc_score(y, scores))
        out[name] = PrecisionComparison(
            precision=name, auroc_reference=auroc_ref, auroc=auroc, auroc_delta=auroc - auroc_ref,
            delta=graph_delta(ref, cand, inputs), n_normal=int((y == 0).sum()), n_defect=int((y == 1).sum()),
        )
    return out


def compare_bundle_precisions(bundle, frames: Sequence[np.ndarray], labels: Sequence[int]) -> PrecisionComparison:
    """``compare_precisions`` for a bundle: its precision's graph against its fp32 reference graph."""
    graphs = {"fp32": bundle.reference_onnx_path, bundle.precision: bundle.onnx_path}
    return compare_precisions(graphs, frames, labels, bundle.model)[bundle.precision]

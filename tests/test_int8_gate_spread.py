"""The INT8 quality gate refuses held-out normals whose FP32 scores do not spread by the rule build and fuse use
(``calibration.threshold.check_spread``: std over SPREAD_FLOOR of |mean|). Before, it asked only std > 0, so copies
of one frame, scored a float32 rounding apart, passed as a unit of score change (and with --defects the gate ran on
them without looking at the spread at all)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fair_edge.calibration.int8_gate import HeldOut, QualityGate, normal_spread, run_gate
from fair_edge.calibration.threshold import SPREAD_FLOOR, check_spread
from fair_edge.errors import DataError

N_NORMAL, N_DEFECT = 10, 4


class ScoredHeldOut(HeldOut):
    """A ``HeldOut`` whose graphs all score ``scores`` ((n_normal + n_defect,) float64): no model, no frames."""

    def __init__(self, scores: np.ndarray, n_defect: int) -> None:
        self.n_normal, self.n_defect, self._scores = scores.size - n_defect, n_defect, scores

    def scores(self, graph: Path) -> np.ndarray:
        return self._scores


class IdenticalInt8Graph:
    """An ``Int8Graph``'s shape whose INT8 graph scores as FP32 (drop 0): within any limit."""

    path = Path("model.int8.onnx")

    def layers(self, fp32: Path, scope: tuple[str, ...]) -> tuple[str, ...]:
        return ("/conv",)


def copies_of_one_frame() -> np.ndarray:
    """(N_NORMAL,) scores of one frame copied: 0.5 each, a few float32 roundings apart (std > 0, not bitwise equal)."""
    rounding = np.float64(np.spacing(np.float32(0.5)))
    return 0.5 + rounding * (np.arange(N_NORMAL) % 3)


def with_defects(normal: np.ndarray) -> np.ndarray:
    return np.r_[normal, np.linspace(2.0, 3.0, N_DEFECT)]


def test_copies_of_one_frame_spread_above_zero_but_under_check_spreads_floor():
    normal = copies_of_one_frame()
    assert normal.std() > 0 and len(set(normal.tolist())) > 1   # the old rule (std > 0) let them through
    assert normal.std() <= SPREAD_FLOOR * abs(normal.mean())
    with pytest.raises(DataError, match="do not spread"):
        check_spread(normal, "w", "y", "f")


@pytest.mark.parametrize("n_defect", [0, N_DEFECT], ids=["normal_score", "image_auroc"])
def test_the_gate_refuses_copies_of_one_frame_as_build_and_fuse_do(n_defect):
    held = ScoredHeldOut(with_defects(copies_of_one_frame()) if n_defect else copies_of_one_frame(), n_defect)
    with pytest.raises(DataError) as err:
        run_gate(Path("model.onnx"), [IdenticalInt8Graph()], (), held, QualityGate(0.5))
    text = str(err.value)
    assert text.startswith(f"the FP32 graph's scores on the {N_NORMAL} held-out normal images do not spread (mean 0.5")
    assert f"expected a std over {SPREAD_FLOOR:g} of the mean" in text and "INT8 quality gate" in text
    assert "--normal" in text and "copies of one frame count as one image" in text
    with pytest.raises(DataError, match="do not spread"):
        normal_spread(held, held.scores(Path("model.onnx")))


def test_normals_that_spread_are_gated_and_their_std_is_the_unit():
    normal = np.linspace(0.4, 0.6, N_NORMAL)
    held = ScoredHeldOut(with_defects(normal), N_DEFECT)
    report = run_gate(Path("model.onnx"), [IdenticalInt8Graph()], (), held, QualityGate(0.5))
    assert report.metric == "image_auroc" and report.graphs[0].drop == 0.0 and report.graphs[0].kept_float == ()
    assert normal_spread(held, held.scores(Path("model.onnx"))) == pytest.approx(normal.std())

"""Inference output that decides nothing, and frames a tiled model cannot cut, are failed inspections, never passes.

A NaN score compared with the threshold is False (NaN > t), so a backend that broke (an FP16 overflow, a corrupt
engine) passed every part as OK; with region rules, a NaN map finds no region and passed too. Such output is now an
inference failure: NG with ``error`` set (the gate's fail_safe decides the part), counted with inference errors and
towards ``max_consecutive_errors``. A frame smaller than a tiled bundle's tiles (a camera switched to binning) is a
malformed frame, not a backend failure that faults the station. The verdict log is strict JSON."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureThread, LineSource
from fair_edge.line.jsonl import RotatingJsonl
from fair_edge.models.tensors import ANOMALY_MAP, SCORE
from fair_edge.records import Frame
from fair_edge.runtime.backends import BundleScorer
from fair_edge.runtime.fusion import _Members
from fair_edge.station.inspector import Inspector, LoopSettings
from fair_edge.station.zones import RegionJudge, RegionSettings
from fair_edge.tiling import FrameTiler, TilingConfig

GOOD = np.full((32, 32, 3), 100, np.uint8)


class ValueScorer:
    """A frame scorer whose map and score are ``value`` for every frame (a broken backend's output); a frame whose
    first pixel is 0 gets a finite, low map and score instead (a good part)."""

    reason, graph_threshold = "test: fixed output", None

    def __init__(self, value: float, map_value: float | None = None) -> None:
        self.value, self.map_value = value, value if map_value is None else map_value

    def infer_frames(self, frames):
        good = np.array([f.reshape(-1)[0] == 0 for f in frames])
        maps = np.where(good[:, None, None], np.float32(0.1), np.full((len(frames), 8, 8), self.map_value, np.float32))
        return maps.astype(np.float32), np.where(good, np.float32(0.1), np.float32(self.value)).astype(np.float32)


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_a_nan_or_minus_inf_score_is_a_failed_inspection_not_an_ok_part(value):
    inspector = Inspector(capture=None, scorer=ValueScorer(value), threshold=0.5)
    verdict = inspector.inspect([Frame(0, 0.0, GOOD)])[0]
    assert verdict.ng is True and verdict.score is None
    assert verdict.error.startswith("inference failed:") and str(value) in verdict.error and "--backend" in verdict.error
    assert inspector.summary.inference_errors == 1 and inspector.summary.ng == 1


def test_a_nan_map_is_a_failed_inspection_also_when_region_rules_decide():
    """The family score is finite (0.1, under the threshold), the map NaN: the rules find no region in it."""
    regions = RegionJudge(RegionSettings.from_dict({"default": {"min_area_px": 1}}), 0.5)
    assert regions.decides
    inspector = Inspector(capture=None, scorer=ValueScorer(0.1, map_value=math.nan), threshold=0.5, regions=regions)
    verdict = inspector.inspect([Frame(0, 0.0, GOOD)])[0]
    assert verdict.ng is True and verdict.score is None and "anomaly map holding nan" in verdict.error
    assert inspector.summary.inference_errors == 1


def test_a_plus_inf_score_stays_an_ng_verdict_and_no_inference_error():
    inspector = Inspector(capture=None, scorer=ValueScorer(math.inf), threshold=0.5)
    verdict = inspector.inspect([Frame(0, 0.0, GOOD)])[0]
    assert verdict.ng is True and verdict.score == math.inf and verdict.error == ""
    assert inspector.summary.inference_errors == 0


def test_a_batch_with_a_nan_frame_counts_once_and_its_good_frames_are_decided():
    good = np.zeros((32, 32, 3), np.uint8)
    inspector = Inspector(capture=None, scorer=ValueScorer(math.nan), threshold=0.5)
    verdicts = inspector.inspect([Frame(0, 0.0, good), Frame(1, 0.0, GOOD), Frame(2, 0.0, good)])
    assert [v.ng for v in verdicts] == [False, True, False] and verdicts[0].score == pytest.approx(0.1)
    assert inspector.summary.inference_errors == 1


def run_line(scorer, images, max_consecutive_errors: int):
    capture = CaptureThread(LineSource(images, fps=0, loop=False), CaptureSettings(queue_size=len(images)))
    verdicts = []
    with capture:
        inspector = Inspector(capture, scorer, 0.5, settings=LoopSettings(max_consecutive_errors=max_consecutive_errors),
                              on_verdict=[lambda f, v, m: verdicts.append(v)])
        return inspector.run(threading.Event()), verdicts


def test_nan_output_in_a_row_faults_the_station_as_other_inference_failures():
    summary, verdicts = run_line(ValueScorer(math.nan), [GOOD] * 6, max_consecutive_errors=3)
    assert summary.fault == "3 inference failures in a row" and summary.inference_errors >= 3   # + the frames drained
    assert verdicts and all(v.ng and v.error for v in verdicts)


def test_a_good_batch_between_nan_batches_ends_the_run_of_failures():
    good = np.zeros((32, 32, 3), np.uint8)
    summary, verdicts = run_line(ValueScorer(math.nan), [GOOD, GOOD, good, GOOD, GOOD], max_consecutive_errors=3)
    assert summary.fault == "" and summary.inference_errors == 4 and len(verdicts) == 5


def test_the_verdict_log_is_strict_json_with_nan_and_inf_as_null(tmp_path):
    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in the log"))

    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=1 << 20, keep=1)
    log.write({"seq": 0, "score": math.nan, "threshold": 0.5})
    log.write({"seq": 1, "score": math.inf, "regions": [{"peak": -math.inf}]})
    log.write({"seq": 2, "score": 0.25})
    log.close()
    rows = [strict(line) for line in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert rows == [{"seq": 0, "score": None, "threshold": 0.5}, {"seq": 1, "score": None, "regions": [{"peak": None}]},
                    {"seq": 2, "score": 0.25}]


class TileBackend:
    """A backend for a tiled bundle of 16 px model input: a zero map per tile; counts its calls."""

    name = "tiles"

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, inputs):
        self.calls += 1
        n = inputs["tiles"]
        return {ANOMALY_MAP: np.zeros((n, 1, 16, 16), np.float32), SCORE: np.zeros(n, np.float32)}

    def close(self) -> None:
        pass


def tiled_scorer(tiling: TilingConfig) -> BundleScorer:
    return BundleScorer(TileBackend(), lambda tiles: {"tiles": len(tiles)}, "test: tiled", tiler=FrameTiler(tiling, 16))


def test_a_frame_smaller_than_the_tile_is_malformed_naming_its_size_and_the_bundles():
    scorer = tiled_scorer(TilingConfig(tile=64))
    inspector = Inspector(capture=None, scorer=scorer, threshold=0.5, grid=(24, 24))   # 96 x 96 px frames at 16 / 64
    verdicts = inspector.inspect([Frame(0, 0.0, np.zeros((96, 96, 3), np.uint8)),
                                  Frame(1, 0.0, np.zeros((48, 48, 3), np.uint8))])
    assert verdicts[0].ng is False and verdicts[0].error == ""
    assert verdicts[1].ng is True and verdicts[1].score is None and verdicts[1].error.startswith("malformed frame:")
    assert "48 x 48 px frame" in verdicts[1].error and "at least 64 x 64 px" in verdicts[1].error
    assert "about 96 x 96 px" in verdicts[1].error
    assert inspector.summary.malformed == 1 and inspector.summary.inference_errors == 0 and scorer.backend.calls == 1


def test_a_frame_the_tiling_roi_does_not_fit_is_malformed_also_for_a_fused_scorers_member():
    member = tiled_scorer(TilingConfig(tile=64, roi=(10, 0, 64, 64)))

    class Fused:   # a FusedScorer's shape: its members' scorers behind ``backend.scorers``
        reason, graph_threshold, backend = "test: fused", None, _Members([member])

        def infer_frames(self, frames):
            return member.infer_frames(frames)

    inspector = Inspector(capture=None, scorer=Fused(), threshold=0.5)
    verdict = inspector.inspect([Frame(0, 0.0, np.zeros((70, 70, 3), np.uint8))])[0]
    assert "70 x 70 px frame" in verdict.error and "at least 74 x 64 px" in verdict.error and "tiling.roi" in verdict.error
    assert inspector.summary.malformed == 1 and inspector.summary.inference_errors == 0


def test_a_camera_dropping_below_the_tile_does_not_fault_the_station():
    images = [np.zeros((96, 96, 3), np.uint8)] + [np.zeros((48, 48, 3), np.uint8)] * 5
    summary, verdicts = run_line(tiled_scorer(TilingConfig(tile=64)), images, max_consecutive_errors=3)
    assert summary.fault == "" and summary.malformed == 5 and summary.inference_errors == 0 and len(verdicts) == 6

"""Bundles built before fair-edge 9850f8b hold each threshold exactly on a held-out normal's score (audit: an INT8
bundle of 99d7d20 ran on torch-cpu rejected its normal 009.png, 5.288575 against 5.288548, 1 of 12 held-out normals
where bundle.json claims 0 %). Such a threshold, on the top normal score its calibration records, now loads moved by
today's build rule (1e-3 relative + 1e-6 above it), per graph (main, graph.cpu, fp32), logged once with both values and
the rebuild command; a threshold on no recorded score is never moved, and a bundle that records too little to apply
the rule is warned about. The start line's reason says where each threshold came from: ONNX Runtime's scores (not
OpenVINO's) where OpenVINO has none of its own, and the margin applied at load.

The old bundles are today's build rewritten as a build before 9850f8b wrote it (thresholds on the top normal score,
no ``graph.cpu.openvino``), re-signed: loading them must give the thresholds today's build computed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import make_frames

from fair_edge.calibration.threshold import Threshold
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import MANIFEST, load_bundle, write_manifest
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.station.decision import decide_threshold

GRAPHS = (("threshold", ("threshold",)), ("cpu_threshold", ("graph", "cpu", "threshold")),
          ("fp32_threshold", ("fp32_threshold",)))   # Bundle field, its path in bundle.json
MARGIN_LOG = "was built before fair-edge 9850f8b"


@pytest.fixture(scope="module")
def int8_bundle(tiny_ckpt_path, tmp_path_factory):
    """The tiny model's INT8 bundle as today's build writes it (thresholds a margin above the top normal)."""
    out = tmp_path_factory.mktemp("margin") / "int8"
    options = BuildOptions(precision="int8", engine=False, command=f"fair-edge build {tiny_ckpt_path} --int8 --out {out}")
    return build_bundle(load_checkpoint(tiny_ckpt_path), out, options, calib_frames=make_frames(16, seed=100),
                        normal_frames=make_frames(12, seed=5)).bundle


def entry(data: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        data = data[key]
    return data


def rewritten(bundle, out: Path, edit) -> Path:
    """``bundle`` copied to ``out`` with ``edit(threshold entry)`` applied to each image threshold of bundle.json and no
    ``graph.cpu.openvino`` (builds before 4522fb8 kept none), re-signed as a build writes it."""
    shutil.copytree(bundle.root, out)
    data = json.loads((out / MANIFEST).read_text())
    for _, path in GRAPHS:
        edit(entry(data, path))
    del data["graph"]["cpu"]["openvino"]
    write_manifest(out, data)
    return out


def on_top_normal(threshold: dict) -> None:
    """As a build before 9850f8b wrote it: the threshold is the top (k = n = 12) held-out normal score."""
    threshold["value"] = threshold["normal_quantiles"][-1]


def test_an_old_bundles_thresholds_load_with_the_builds_margin_once_logged(int8_bundle, tmp_path, caplog):
    old_root = rewritten(int8_bundle, tmp_path / "old", on_top_normal)
    with caplog.at_level(logging.WARNING, logger="fair_edge.export.bundle"):
        old, again = load_bundle(old_root), load_bundle(old_root)
    written = json.loads((old_root / MANIFEST).read_text())
    for name, path in GRAPHS:
        top = entry(written, path)["normal_quantiles"][-1]
        loaded = getattr(old, name)
        # exactly what today's build writes for the same normal scores; the other fields as recorded
        assert loaded == getattr(int8_bundle, name), name
        assert loaded.value > top and loaded.measured_false_reject_rate == 0.0
        assert top * (1 + 1e-6) <= loaded.value   # another backend's 1e-6 no longer makes the top normal NG
        move = old.margin_move(loaded)
        assert (move.key, move.old, move.new) == (".".join(path), top, loaded.value)
    assert getattr(again, "cpu_threshold") == int8_bundle.cpu_threshold
    assert caplog.text.count(MARGIN_LOG) == 1   # once per bundle, however often it loads
    for name, path in GRAPHS:
        assert f"{'.'.join(path)} {entry(written, path)['value']:.9g} -> {getattr(old, name).value:.9g}" in caplog.text
    assert f"`{int8_bundle.build_command}`" in caplog.text


def test_a_bundle_built_with_the_margin_loads_unchanged(int8_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="fair_edge.export.bundle"):
        again = load_bundle(int8_bundle.root)
    written = json.loads((int8_bundle.root / MANIFEST).read_text())
    for name, path in GRAPHS:
        assert getattr(again, name).value == entry(written, path)["value"], name
    assert again.margin_moves == () and again.margin_move(again.threshold) is None
    assert MARGIN_LOG not in caplog.text and "does not record enough" not in caplog.text


def test_a_threshold_on_no_recorded_score_is_never_moved(int8_bundle, tmp_path, caplog):
    def between_scores(threshold: dict) -> None:   # a threshold no rule of ours put on a normal score
        low, high = threshold["normal_quantiles"][-2:]
        threshold["value"] = low + (high - low) / 3

    root = rewritten(int8_bundle, tmp_path / "between", between_scores)
    with caplog.at_level(logging.WARNING, logger="fair_edge.export.bundle"):
        loaded = load_bundle(root)
    written = json.loads((root / MANIFEST).read_text())
    assert [getattr(loaded, n).value for n, _ in GRAPHS] == [entry(written, p)["value"] for _, p in GRAPHS]
    assert loaded.margin_moves == () and caplog.text == ""


def test_a_bundle_recording_no_normal_scores_is_warned_about_and_kept(int8_bundle, tmp_path, caplog):
    def before_quantiles(threshold: dict) -> None:   # built before 0f7ffeb: no normal_quantiles
        on_top_normal(threshold)
        del threshold["normal_quantiles"]

    root = rewritten(int8_bundle, tmp_path / "noscores", before_quantiles)
    with caplog.at_level(logging.WARNING, logger="fair_edge.export.bundle"):
        loaded = load_bundle(root)
    written = json.loads((root / MANIFEST).read_text())
    assert [getattr(loaded, n).value for n, _ in GRAPHS] == [entry(written, p)["value"] for _, p in GRAPHS]
    assert loaded.margin_moves == ()
    assert caplog.text.count("does not record enough to apply the margin at load") == 1
    assert "records no normal scores (built before fair-edge 0f7ffeb" in caplog.text
    assert f"`{int8_bundle.build_command}`" in caplog.text


def test_margin_at_load_moves_only_a_threshold_on_the_top_recorded_score():
    from fair_edge.calibration.threshold import LoadMargin, margin, margin_at_load, quantile_threshold

    scores = [1.0, 2.0, 3.0, 4.0, 5.0]   # recorded percentiles: every 4th of them a score (q[75] = 4.0)
    recorded = tuple(float(q) for q in np.percentile(scores, np.arange(101)))

    def threshold(value: float, quantiles=recorded) -> Threshold:
        return Threshold(value, "normal-quantile", 0.005, 0.0, 5, normal_quantiles=quantiles)

    top = margin_at_load(threshold(5.0))
    assert top.moved and top.value == 5.0 + margin(5.0) == quantile_threshold(scores)
    newer = margin_at_load(threshold(quantile_threshold(scores)))   # today's: in the gap above the top score
    assert not newer.moved and not newer.unresolved and newer.value == quantile_threshold(scores)
    inner = margin_at_load(threshold(4.0))   # on a recorded score, but the next higher normal is not recorded
    assert not inner.moved and inner.value == 4.0 and "normal score at percentile 75, not the top one" in inner.unresolved
    unrecorded = margin_at_load(threshold(5.0, ()))
    assert not unrecorded.moved and unrecorded.value == 5.0 and "records no normal scores" in unrecorded.unresolved
    hand = Threshold(5.0, "hand-set", 0.005, 0.0, 5, normal_quantiles=recorded)   # another method's: not ours to move
    assert margin_at_load(hand) == LoadMargin(5.0)


# ----------------------------------------------------------------------------- the start line's reason
def test_the_reason_names_the_margin_applied_at_load_on_each_graph(int8_bundle, tmp_path):
    old = load_bundle(rewritten(int8_bundle, tmp_path / "old", on_top_normal))
    written = json.loads((old.root / MANIFEST).read_text())
    note = "margin applied at load to a bundle built before fair-edge 9850f8b"
    main = decide_threshold(None, old, None, None)   # TensorRT, or a CPU engine on an FP32/FP16 graph: the bundle's
    assert main.value == int8_bundle.threshold.value and note in main.reason
    assert f"above its threshold {written['threshold']['value']:.9g}" in main.reason
    torch_cpu = decide_threshold(None, old, None, old.fp32_threshold)
    assert torch_cpu.value == int8_bundle.fp32_threshold.value
    assert "FP32 reference graph" in torch_cpu.reason and note in torch_cpu.reason
    assert f"above its fp32_threshold {written['fp32_threshold']['value']:.9g}" in torch_cpu.reason
    cpu = decide_threshold(None, old, None, old.cpu_threshold)   # ONNX Runtime, or OpenVINO on ONNX Runtime's
    assert note in cpu.reason and "graph.cpu.threshold" in cpu.reason
    # the station file's threshold is the operator's: never moved, no note
    explicit = decide_threshold(written["threshold"]["value"], old, None, None)
    assert explicit.value == written["threshold"]["value"] and note not in explicit.reason
    fresh = decide_threshold(None, int8_bundle, None, int8_bundle.fp32_threshold)
    assert note not in fresh.reason


def test_the_reason_says_openvino_runs_on_onnx_runtimes_threshold_when_it_has_none(int8_bundle, tmp_path):
    old = load_bundle(rewritten(int8_bundle, tmp_path / "old", on_top_normal))   # no graph.cpu.openvino
    reason = decide_threshold(None, old, None, old.cpu_threshold).reason
    assert reason.startswith("calibrated at build on ONNX Runtime's scores of the int8 CPU graph, not OpenVINO's")
    assert "the bundle keeps none calibrated on OpenVINO: the bundle was built before fair-edge calibrated one" in reason
    assert "the graph this backend runs" not in reason


def test_the_reason_names_the_engine_whose_scores_calibrated_the_cpu_graph(int8_bundle):
    own = int8_bundle.cpu_openvino
    if own is None or own.threshold is None:
        pytest.skip(f"OpenVINO did not score the build here ({own.missing if own else 'no entry'})")
    ort = decide_threshold(None, int8_bundle, None, int8_bundle.cpu_threshold).reason
    assert ort == "calibrated at build on ONNX Runtime's scores of the int8 CPU graph this backend runs"
    ov = decide_threshold(None, int8_bundle, None, own.threshold).reason
    assert ov == f"calibrated at build on OpenVINO {own.version}'s scores of the int8 CPU graph this backend runs"

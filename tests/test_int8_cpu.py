"""The CPU INT8 graph of an INT8 bundle: laid out for ONNX Runtime's int8 kernels (QLinearConv end to end),
scores close to FP32, its own threshold, and the CPU backends (ONNX Runtime, OpenVINO) that run it."""

from __future__ import annotations

import collections
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import gpu_available
from export_fixtures import make_frames

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.tensors import SCORE
from fair_edge.runtime.selection import BackendOptions, fastest_cpu, select_backend
from fair_edge.runtime.backends import BundleScorer, CpuPreprocessor, OnnxRuntimeBackend


@pytest.fixture(scope="module")
def bundle(tiny_ckpt_path, tmp_path_factory):
    ckpt = load_checkpoint(tiny_ckpt_path)
    return build_bundle(ckpt, tmp_path_factory.mktemp("int8"), BuildOptions(precision="int8", engine=False),
                        calib_frames=make_frames(16, seed=100), normal_frames=make_frames(20, seed=5)).bundle


def optimized_ops(path, tmp_path) -> collections.Counter:
    """Op types of the graph after ONNX Runtime's CPU optimisations (what its kernels actually run)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx"))
    return collections.Counter(n.op_type for n in graph.graph.node if "/unet/" in n.name or n.op_type.startswith("QLinear"))


def test_ort_runs_the_cpu_graph_as_qlinearconv_and_the_tensorrt_graph_as_float_conv(bundle, tmp_path):
    cpu = optimized_ops(bundle.cpu_onnx_path, tmp_path)
    assert cpu["QLinearConv"] == 23 and cpu["Conv"] == 0 and cpu["FusedConv"] == 0  # every UNet conv in int8
    trt = optimized_ops(bundle.onnx_path, tmp_path)
    assert trt["QLinearConv"] == 0  # Q/DQ on Conv inputs only: ORT dequantises and runs float convs (slow)


def test_cpu_graph_scores_follow_fp32_and_carry_their_own_threshold(bundle):
    names = bundle.model.input_names
    inputs = preprocess_frames(make_frames(12, seed=7), bundle.model)
    fp32 = OnnxRuntimeBackend(bundle.reference_onnx_path, names).infer(inputs)[SCORE]
    cpu = OnnxRuntimeBackend(bundle.cpu_onnx_path, names).infer(inputs)[SCORE]
    assert np.corrcoef(fp32, cpu)[0, 1] > 0.9 and not np.array_equal(fp32, cpu)
    assert bundle.cpu_threshold is not None and bundle.cpu_threshold.value != bundle.threshold.value
    assert bundle.files and bundle.cpu_onnx_path.name in bundle.files  # checksummed like every file


def test_cpu_backends_run_the_cpu_graph_with_its_threshold(bundle):
    frames = make_frames(3, seed=9)
    ort_choice = select_backend(bundle, "onnxruntime")
    assert "int8 CPU graph" in ort_choice.reason and ort_choice.graph_threshold == bundle.cpu_threshold
    maps, scores = ort_choice.infer_frames(frames)
    assert maps.shape == (3, bundle.image_size, bundle.image_size) and scores.shape == (3,)
    pytest.importorskip("openvino")
    ov_choice = select_backend(bundle, "openvino")
    ov_maps, ov_scores = ov_choice.infer_frames(frames)
    np.testing.assert_allclose(ov_scores, scores, rtol=0.05, atol=0.02)  # two int8 engines, same Q/DQ graph


def test_auto_on_the_cpu_times_the_installed_engines_and_says_so(bundle):
    pytest.importorskip("openvino")
    scorer = fastest_cpu(bundle, BackendOptions())
    assert scorer.backend.name in ("onnxruntime", "openvino")
    assert "the fastest CPU engine here (one frame: " in scorer.reason
    assert "onnxruntime" in scorer.reason and "openvino" in scorer.reason and " ms" in scorer.reason
    if not gpu_available():
        auto = select_backend(bundle, "auto")
        assert auto.reason.startswith("auto: ") and "torch-cuda" in auto.reason  # why no GPU path was taken


def test_torch_backends_run_the_fp32_weights_against_the_fp32_graphs_threshold_and_maps(bundle):
    """The PyTorch backends run weights.pt (FP32) on any bundle: on an INT8 bundle they carry the threshold and
    normal maps the build calibrated on the FP32 reference graph (which the weights reproduce, parity-checked),
    not the INT8 graph's (issue: 1 of 20 held-out normals rejected at a 0.5 % target)."""
    from fair_edge.calibration.threshold import calibrate_threshold
    from fair_edge.station.decision import decide_threshold, normal_maps_path

    normals = make_frames(20, seed=5)   # the build's held-out normals
    fp32 = BundleScorer(OnnxRuntimeBackend(bundle.reference_onnx_path, bundle.model.input_names),   # the FP32 graph
                        CpuPreprocessor(bundle.model, host=True), "the FP32 reference graph on ONNX Runtime")
    fp32_maps, fp32_scores = fp32.infer_frames(normals)
    expected = calibrate_threshold(fp32_scores, false_reject_rate=bundle.threshold.false_reject_rate)
    assert bundle.fp32_threshold is not None and bundle.fp32_threshold.value == pytest.approx(expected.value, rel=1e-6)
    assert bundle.fp32_threshold.value != bundle.threshold.value and bundle.fp32_normal_maps_path.name in bundle.files
    np.testing.assert_allclose(np.load(bundle.fp32_normal_maps_path), fp32_maps, rtol=1e-5, atol=1e-6)
    scorer = select_backend(bundle, "torch-cpu")
    assert scorer.graph_threshold == bundle.fp32_threshold and "FP32 weights" in scorer.reason
    decided = decide_threshold(None, bundle, None, scorer.graph_threshold)
    assert decided.value == bundle.fp32_threshold.value
    assert normal_maps_path(bundle, scorer.graph_threshold) == bundle.fp32_normal_maps_path
    assert normal_maps_path(bundle, select_backend(bundle, "onnxruntime").graph_threshold) == bundle.cpu_normal_maps_path
    _, scores = scorer.infer_frames(normals)
    np.testing.assert_allclose(scores, fp32_scores, atol=1e-4)   # the build's parity tolerance
    # at most floor(0.005 * 20) = 0 held-out normals over it, up to the weights' float difference from the graph
    assert int((scores > decided.value + 1e-4).sum()) == 0


def test_an_int8_bundle_without_the_fp32_threshold_warns_on_torch_and_runs(bundle, tmp_path, caplog):
    """A bundle built before the FP32 threshold was kept: the PyTorch backends still run it on the bundle's
    threshold (it ran before), with a warning that it was calibrated on another graph and how to rebuild."""
    import json
    import shutil

    from fair_edge.export.bundle import MANIFEST, load_bundle, write_manifest

    old = Path(shutil.copytree(bundle.root, tmp_path / "old"))
    data = json.loads((old / MANIFEST).read_text())
    (old / data.pop("fp32_normal_maps")["file"]).unlink()
    data.pop("fp32_threshold")
    write_manifest(old, data)
    loaded = load_bundle(old)
    assert loaded.fp32_threshold is None and loaded.fp32_normal_maps_path is None
    with caplog.at_level("WARNING", logger="fair_edge.runtime.selection"):
        scorer = select_backend(loaded, "torch-cpu")
    assert scorer.graph_threshold is None and scorer.infer_frames(make_frames(2, seed=9))[1].shape == (2,)
    assert "calibrated on the INT8 graph (model.int8.onnx), another graph" in caplog.text
    assert "Rebuild the bundle" in caplog.text and "fp32_threshold" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fair_edge.runtime.selection"):
        select_backend(loaded, "onnxruntime")   # its own CPU graph's threshold: nothing to warn about
    assert caplog.text == ""


def test_auto_leaves_out_a_cpu_engine_whose_scores_differ_from_onnxruntimes(bundle, monkeypatch, caplog):
    """An engine that scores the CPU graph far otherwise than ONNX Runtime (OpenVINO scored a PatchCore INT8 graph
    10-20 x higher: every part NG) runs it wrongly, and is not used however fast it is."""
    from types import SimpleNamespace

    from fair_edge.runtime import selection

    closed = []
    ort_scorer = selection.BACKENDS["onnxruntime"](bundle, BackendOptions())

    def skewed(_bundle, _options):   # instant, and ten times ONNX Runtime's scores
        infer = lambda frames: (lambda m, s: (m, 10.0 * s))(*ort_scorer.infer_frames(frames))  # noqa: E731
        return SimpleNamespace(infer_frames=infer, reason="OpenVINO on the CPU",
                               backend=SimpleNamespace(name="openvino", close=lambda: closed.append("openvino")))

    monkeypatch.setitem(selection.BACKENDS, "openvino", skewed)
    chosen = fastest_cpu(bundle, BackendOptions())
    assert chosen.backend.name == "onnxruntime" and closed == ["openvino"]
    assert "openvino left out: it scores a grey frame" in chosen.reason and "more than the 5 %" in chosen.reason
    assert "openvino scores unlike onnxruntime" in caplog.text

    monkeypatch.setitem(selection.BACKENDS, "openvino", lambda b, o: replace(ort_scorer, reason="OpenVINO stand-in"))
    assert "left out" not in fastest_cpu(bundle, BackendOptions()).reason   # equal scores: timed as before

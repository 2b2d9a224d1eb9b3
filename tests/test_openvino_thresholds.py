"""OpenVINO decides with thresholds calibrated on its own scores of an INT8 bundle's CPU graph (audit: a held-out
normal the build passed was NG on OpenVINO).

The CPU graph's threshold was calibrated on ONNX Runtime's scores and applied as-is to OpenVINO, whose int8 kernels
score that graph up to 0.9 % apart (PatchCore: good/008 12.773 on ONNX Runtime, 12.828 on OpenVINO, threshold 12.786),
and ``auto`` picks OpenVINO when it times faster. Now the build scores the held-out images on OpenVINO too and keeps
its own image and pixel thresholds (``graph.cpu.openvino``); a bundle without them (built before, or where OpenVINO
was not installed) is run by a named OpenVINO on ONNX Runtime's threshold with a warning, and ``auto`` leaves
OpenVINO out, saying so once. FP32/FP16 graphs keep one threshold for both engines: they agree within ~2e-6.

The offset is planted: OpenVINO's scores and maps of every graph are made 1 % higher than it computes them (at build
and at run alike), as its int8 kernels move a real graph's.

With decision.roi the station calibrates its threshold on held-out normal maps: OpenVINO's own
(``openvino_normal_maps.npy``, ``graph.cpu.openvino.normal_maps``), not ONNX Runtime's (``cpu_normal_maps.npy``), on
which 1 of 12 held-out normals was NG on OpenVINO. A bundle with OpenVINO's thresholds but not its maps (fair-edge
4522fb8) is left out of ``auto``, and a named OpenVINO with an ROI is warned on."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import make_frames

pytest.importorskip("openvino")

from fair_edge.calibration.threshold import calibrate_threshold  # noqa: E402
from fair_edge.cli.build import threshold_rows  # noqa: E402
from fair_edge.export import build as export_build  # noqa: E402
from fair_edge.export.build import BuildOptions, build_bundle  # noqa: E402
from fair_edge.export.bundle import MANIFEST, load_bundle, write_manifest  # noqa: E402
from fair_edge.models.checkpoint import load_checkpoint  # noqa: E402
from fair_edge.models.tensors import ANOMALY_MAP, SCORE  # noqa: E402
from fair_edge.regions import calibrate_pixel_threshold  # noqa: E402
from fair_edge.runtime import selection  # noqa: E402
from fair_edge.runtime.openvino import OpenVinoBackend  # noqa: E402
from fair_edge.runtime.selection import BackendOptions, fastest_cpu, select_backend  # noqa: E402
from fair_edge.station.decision import decide_threshold, normal_maps_path  # noqa: E402

OFFSET = 1.01   # OpenVINO's planted scale of every score and map value
NORMALS = make_frames(12, seed=5)


@contextlib.contextmanager
def planted_offset():
    """OpenVINO's outputs scaled by ``OFFSET`` wherever it runs a graph (the class that defines ``infer``: the build's
    graph runner and the runtime's backend share it), inside the block."""
    owner = next(c for c in OpenVinoBackend.__mro__ if "infer" in c.__dict__)
    real = owner.infer

    def scaled(self, inputs):
        out = real(self, inputs)
        return {**out, SCORE: out[SCORE] * np.float32(OFFSET), ANOMALY_MAP: out[ANOMALY_MAP] * np.float32(OFFSET)}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, "infer", scaled)
        yield


@pytest.fixture
def offset_openvino():
    with planted_offset():
        yield


def build(ckpt_path: Path, out: Path, precision: str = "int8"):
    options = BuildOptions(precision=precision, engine=False, command=f"fair-edge build {ckpt_path} --int8 --out {out}")
    return build_bundle(load_checkpoint(ckpt_path), out, options, calib_frames=make_frames(16, seed=100),
                        normal_frames=NORMALS).bundle


@pytest.fixture(scope="module")
def int8_bundle(tiny_ckpt_path, tmp_path_factory):
    """The tiny model's INT8 bundle, built while OpenVINO scores 1 % high."""
    with planted_offset():
        return build(tiny_ckpt_path, tmp_path_factory.mktemp("ov-thr") / "int8")


def without_openvino_entry(bundle, out: Path):
    """``bundle`` copied to ``out`` as a build before this fix wrote it: no ``graph.cpu.openvino``."""
    shutil.copytree(bundle.root, out)
    data = json.loads((out / MANIFEST).read_text())
    del data["graph"]["cpu"]["openvino"]
    write_manifest(out, data)
    return load_bundle(out)


def test_a_named_openvino_passes_the_held_out_normals_the_build_calibrated_on(int8_bundle, offset_openvino):
    scorer = select_backend(int8_bundle, "openvino")
    try:
        maps, scores = scorer.infer_frames(NORMALS)
    finally:
        scorer.backend.close()
    threshold = scorer.graph_threshold
    # at most floor(0.005 * 12) = 0 of them over it: the build's promise, on the scores this engine gives
    assert int((scores > threshold.value).sum()) == 0, (scores.max(), threshold.value)
    assert threshold != int8_bundle.cpu_threshold
    assert threshold.value == pytest.approx(calibrate_threshold(scores).value, rel=1e-5)
    assert "scored by OpenVINO" in threshold.source
    pixel = int8_bundle.graph_pixel_threshold(threshold)   # defect regions: OpenVINO's own pixel threshold too
    assert pixel == int8_bundle.cpu_openvino.pixel_threshold
    assert pixel.value == pytest.approx(calibrate_pixel_threshold(list(maps)).value, rel=1e-5)
    assert int8_bundle.graph_pixel_threshold(int8_bundle.cpu_threshold) == int8_bundle.cpu_pixel_threshold
    # ONNX Runtime still decides with its own, on which its normals pass too
    ort = select_backend(int8_bundle, "onnxruntime")
    assert ort.graph_threshold == int8_bundle.cpu_threshold
    assert int((ort.infer_frames(NORMALS)[1] > ort.graph_threshold.value).sum()) == 0
    ort.backend.close()


def test_the_build_summary_names_each_engines_threshold_of_the_cpu_graph(int8_bundle):
    rows = {label: (value, detail) for label, value, detail in threshold_rows(int8_bundle)}
    assert rows["threshold model.int8-cpu.onnx"][1].startswith("used by onnxruntime;")
    value, detail = rows["threshold model.int8-cpu.onnx on openvino"]
    assert value == f"{int8_bundle.cpu_openvino.threshold.value:.6g}" and detail.startswith("used by openvino;")


def test_a_bundle_without_an_openvino_threshold_is_left_out_of_auto_and_warned_on_when_named(
        int8_bundle, tmp_path, caplog, offset_openvino):
    old = without_openvino_entry(int8_bundle, tmp_path / "old")
    assert old.cpu_openvino is None and old.cpu_threshold == int8_bundle.cpu_threshold
    with caplog.at_level(logging.WARNING, logger="fair_edge.runtime.selection"):
        first, again = fastest_cpu(old, BackendOptions()), fastest_cpu(old, BackendOptions())
    assert first.backend.name == again.backend.name == "onnxruntime"
    assert "openvino left out: no threshold calibrated on it for this bundle" in first.reason
    assert caplog.text.count("auto: OpenVINO is not used for bundle") == 1   # said once
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fair_edge.runtime.selection"):
        named = select_backend(old, "openvino")
    assert named.backend.name == "openvino" and named.graph_threshold == old.cpu_threshold
    assert "with ONNX Runtime's threshold: none calibrated on OpenVINO" in named.reason
    assert "calibrated on ONNX Runtime's scores of it" in caplog.text and f"`{old.build_command}`" in caplog.text
    named.backend.close()
    users = dict((label, detail) for label, _, detail in threshold_rows(old))["threshold model.int8-cpu.onnx"]
    assert users.startswith("used by onnxruntime, openvino (not calibrated on OpenVINO: the bundle was built before")


def test_a_build_without_openvino_records_why_and_the_summary_says_so(tiny_ckpt_path, tmp_path, monkeypatch):
    monkeypatch.setattr(export_build, "openvino_version", lambda: None)
    bundle = build(tiny_ckpt_path, tmp_path / "b")
    entry = json.loads((bundle.root / MANIFEST).read_text())["graph"]["cpu"]["openvino"]
    assert entry["threshold"] is None and entry["missing"] == "OpenVINO was not installed where the bundle was built"
    assert selection.uncalibrated_openvino(bundle) == entry["missing"]
    users = dict((label, detail) for label, _, detail in threshold_rows(bundle))["threshold model.int8-cpu.onnx"]
    assert "openvino (not calibrated on OpenVINO: OpenVINO was not installed where the bundle was built; auto " \
           "leaves it out, a named one warns)" in users


def test_fp32_graphs_share_one_threshold_on_both_engines(tiny_ckpt_path, tmp_path):
    """ONNX Runtime and OpenVINO score an FP32 graph within ~2e-6 relative (PatchCore, 118 ELPV normals), far inside
    the threshold's 1e-3 margin: no second threshold, and ``auto`` times both."""
    bundle = build(tiny_ckpt_path, tmp_path / "fp32", "fp32")
    assert bundle.cpu_openvino is None and selection.uncalibrated_openvino(bundle) == ""
    ort, ov = select_backend(bundle, "onnxruntime"), select_backend(bundle, "openvino")
    assert ort.graph_threshold is None and ov.graph_threshold is None   # the bundle's, for both
    frames = make_frames(6, seed=11)
    ort_scores, ov_scores = ort.infer_frames(frames)[1], ov.infer_frames(frames)[1]
    np.testing.assert_allclose(ov_scores, ort_scores, rtol=1e-4)
    ort.backend.close(), ov.backend.close()
    assert [row[0] for row in threshold_rows(bundle)] == ["threshold model.fp32.onnx"]


def without_openvino_maps(bundle, out: Path):
    """``bundle`` copied to ``out`` as fair-edge 4522fb8 built it: OpenVINO's thresholds, not its normal maps."""
    shutil.copytree(bundle.root, out)
    data = json.loads((out / MANIFEST).read_text())
    entry = data["graph"]["cpu"]["openvino"].pop("normal_maps", None)   # None: a build before this test's fix
    if entry:
        (out / entry["file"]).unlink()
    write_manifest(out, data)
    return load_bundle(out)


def whole_frame_roi() -> np.ndarray:
    """An ROI of weight 1 over the whole frame: its score is the map's maximum, as the inspector scores it."""
    return np.ones(NORMALS[0].shape[:2], np.float32)


def test_with_an_roi_openvino_calibrates_on_its_own_normal_maps(int8_bundle, offset_openvino):
    """Audit: with decision.roi the threshold was calibrated on ONNX Runtime's maps (cpu_normal_maps.npy) for OpenVINO
    too, 1 % under its scale: 1 of the 12 held-out normals NG on OpenVINO."""
    scorer = select_backend(int8_bundle, "openvino")
    try:
        maps = scorer.infer_frames(NORMALS)[0]
    finally:
        scorer.backend.close()
    decided = decide_threshold(None, int8_bundle, whole_frame_roi(), scorer.graph_threshold)
    roi_scores = maps.reshape(len(maps), -1).max(axis=1)
    # at most floor(0.005 * 12) = 0 of them over it, on the maps this engine makes
    assert int((roi_scores > decided.value).sum()) == 0, (roi_scores.max(), decided.value)
    # the drift watch and threshold tuning compare OpenVINO's live scores with OpenVINO's distribution
    assert decided.calibration.normal_quantiles[-1] == pytest.approx(float(roi_scores.max()), rel=1e-5)
    own = int8_bundle.cpu_openvino.normal_maps_path
    assert own.name == "openvino_normal_maps.npy" and own.name in int8_bundle.files
    assert normal_maps_path(int8_bundle, scorer.graph_threshold) == own
    # ONNX Runtime still calibrates on its own maps, on which its normals pass
    ort = select_backend(int8_bundle, "onnxruntime")
    try:
        ort_maps = ort.infer_frames(NORMALS)[0]
    finally:
        ort.backend.close()
    assert normal_maps_path(int8_bundle, ort.graph_threshold) == int8_bundle.cpu_normal_maps_path
    ort_decided = decide_threshold(None, int8_bundle, whole_frame_roi(), ort.graph_threshold)
    assert int((ort_maps.reshape(len(ort_maps), -1).max(axis=1) > ort_decided.value).sum()) == 0
    assert ort_decided.value < decided.value


def test_openvino_thresholds_without_openvino_maps_are_left_out_of_auto_and_warned_on_with_an_roi(
        int8_bundle, tmp_path, caplog, offset_openvino):
    """A bundle fair-edge 4522fb8 built keeps OpenVINO's thresholds but only ONNX Runtime's maps: OpenVINO must not
    calibrate an ROI's threshold on them silently."""
    old = without_openvino_maps(int8_bundle, tmp_path / "old")
    with caplog.at_level(logging.WARNING):
        first, again = fastest_cpu(old, BackendOptions()), fastest_cpu(old, BackendOptions())
    first.backend.close(), again.backend.close()
    assert "openvino left out: no held-out normal maps of its own" in first.reason
    assert first.backend.name == again.backend.name == "onnxruntime"
    assert caplog.text.count("auto: OpenVINO is not used for bundle") == 1   # said once
    assert old.cpu_openvino.threshold == int8_bundle.cpu_openvino.threshold
    assert old.cpu_openvino.normal_maps_path is None and selection.uncalibrated_openvino(old) == ""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        named = select_backend(old, "openvino")
        named.backend.close()
        assert named.graph_threshold == old.cpu_openvino.threshold   # its own image threshold still
        decide_threshold(None, old, None, named.graph_threshold)
        assert "not OpenVINO's" not in caplog.text   # no ROI: the maps are not used
        decided = decide_threshold(None, old, whole_frame_roi(), named.graph_threshold)
    assert "the ROI threshold is calibrated on ONNX Runtime's held-out normal maps" in caplog.text
    assert f"`{old.build_command}`" in caplog.text
    assert decided.value == decide_threshold(None, old, whole_frame_roi(), old.cpu_threshold).value


# ----------------------------------------------------------------------------- the release that calibrated them
def with_openvino_version(bundle, out: Path, version: str):
    """``bundle`` copied to ``out`` as if its OpenVINO thresholds had been calibrated on OpenVINO ``version``."""
    shutil.copytree(bundle.root, out)
    data = json.loads((out / MANIFEST).read_text())
    data["graph"]["cpu"]["openvino"]["version"] = version
    write_manifest(out, data)
    return load_bundle(out)


def test_another_openvino_release_than_the_one_calibrated_on_is_warned_of_once_at_load(int8_bundle, tmp_path, caplog):
    """The build records the OpenVINO release whose scores its OpenVINO thresholds were calibrated on, but nothing
    compared it at load: after an OpenVINO upgrade the station ran on another release's int8 kernels, unsaid."""
    from fair_edge.calibration.openvino_graph import openvino_version

    running = openvino_version()
    assert int8_bundle.cpu_openvino.version == running
    other = with_openvino_version(int8_bundle, tmp_path / "other", "2024.0.0")
    with caplog.at_level(logging.WARNING):
        for bundle in (int8_bundle, other, other):   # the same release: nothing; another: said once, then run
            scorer = select_backend(bundle, "openvino")
            scorer.backend.close()
    assert scorer.backend.name == "openvino" and scorer.graph_threshold == other.cpu_openvino.threshold
    assert caplog.text.count("were calibrated on OpenVINO") == 1, caplog.text
    text = " ".join(caplog.text.split())
    assert f"bundle {other.root}: its int8 CPU graph's OpenVINO thresholds" in text
    assert f"calibrated on OpenVINO 2024.0.0's scores, but this is OpenVINO {running}" in text
    assert "Running on anyway" in text and f"`{other.build_command}`" in text
    assert "pip install openvino==2024.0.0" in text and "--backend onnxruntime" in text

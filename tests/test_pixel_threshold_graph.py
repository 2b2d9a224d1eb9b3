"""The defect regions' pixel threshold follows the graph the backend runs, as the image threshold does: an INT8
bundle keeps one calibrated on its CPU graph's normal maps (ONNX Runtime, OpenVINO) and one on the FP32 reference
graph's (the PyTorch backends' FP32 weights), an FP16 bundle the FP32 one; the station, `rules check` and a hot swap
find regions at the threshold of the graph their scorer runs. Before, every backend used the main graph's:
1.4317 on an INT8 bundle whose CPU graph's own normals gave 1.4450, so 0.035 % of that graph's normal pixels
exceeded it instead of the 0.01 % asked. A bundle built before falls back to the main graph's, logged once."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import make_frames

from fair_edge.errors import BundleError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import MANIFEST, load_bundle, write_manifest
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.regions import PixelThreshold, calibrate_pixel_threshold
from fair_edge.runtime.selection import select_backend
from fair_edge.station.bundles import change_for, open_regions
from fair_edge.station.config import StationConfig
from fair_edge.station.inspector import Inspector
from fair_edge.station.rules_check import check_frames
from fair_edge.station.zones import RegionJudge, RegionSettings

NORMALS = make_frames(20, seed=5)   # the builds' held-out normals


@pytest.fixture(scope="module")
def int8(tiny_ckpt_path, tmp_path_factory):
    return build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path_factory.mktemp("int8") / "b",
                        BuildOptions(precision="int8", engine=False), calib_frames=make_frames(16, seed=100),
                        normal_frames=NORMALS).bundle


@pytest.fixture(scope="module")
def fp16(tiny_ckpt_path, tmp_path_factory):
    return build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path_factory.mktemp("fp16") / "b",
                        BuildOptions(precision="fp16", engine=False), normal_frames=NORMALS).bundle


def pixel(value: float) -> PixelThreshold:
    return PixelThreshold(value, 0.9999, 20, 20 * 64 * 64, "held-out normal images")


def regions_at(bundle, backend: str) -> float:
    """The pixel threshold a station running ``bundle`` on ``backend`` finds regions at (``open_regions``)."""
    return open_regions(StationConfig(), bundle, select_backend(bundle, backend).graph_threshold).pixel_threshold


def test_an_int8_build_keeps_each_graphs_pixel_threshold_from_its_own_normal_maps(int8):
    own_cpu = calibrate_pixel_threshold(list(np.load(int8.cpu_normal_maps_path)))
    own_fp32 = calibrate_pixel_threshold(list(np.load(int8.fp32_normal_maps_path)))
    assert int8.cpu_pixel_threshold.value == pytest.approx(own_cpu.value, rel=1e-6)
    assert int8.fp32_pixel_threshold.value == pytest.approx(own_fp32.value, rel=1e-6)
    assert len({int8.pixel_threshold.value, own_cpu.value, own_fp32.value}) == 3   # three graphs, three thresholds
    data = json.loads((int8.root / MANIFEST).read_text())
    assert data["graph"]["cpu"]["pixel_threshold"]["value"] == int8.cpu_pixel_threshold.value
    assert data["fp32_pixel_threshold"]["value"] == int8.fp32_pixel_threshold.value


def test_an_edited_per_graph_pixel_threshold_is_refused_like_any_setting(int8, tmp_path):
    edited = Path(shutil.copytree(int8.root, tmp_path / "edited"))
    data = json.loads((edited / MANIFEST).read_text())
    data["graph"]["cpu"]["pixel_threshold"]["value"] = 99.0
    (edited / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="changed after the build"):
        load_bundle(edited)


def test_each_backend_finds_regions_at_its_own_graphs_pixel_threshold(int8, fp16):
    assert regions_at(int8, "onnxruntime") == int8.cpu_pixel_threshold.value     # the INT8 CPU graph's
    assert regions_at(int8, "torch-cpu") == int8.fp32_pixel_threshold.value      # the FP32 weights'
    assert open_regions(StationConfig(), int8).pixel_threshold == int8.pixel_threshold.value   # TensorRT's graph
    assert regions_at(fp16, "torch-cpu") == fp16.fp32_pixel_threshold.value != fp16.pixel_threshold.value
    assert regions_at(fp16, "onnxruntime") == fp16.pixel_threshold.value         # runs the FP16 graph itself
    distinct = replace(int8, pixel_threshold=pixel(1.0), cpu_pixel_threshold=pixel(2.0), fp32_pixel_threshold=pixel(3.0))
    assert (regions_at(distinct, "onnxruntime"), regions_at(distinct, "torch-cpu")) == (2.0, 3.0)
    set_here = StationConfig(regions=RegionSettings.from_dict({"pixel_threshold": 0.3}))   # the station file's wins
    assert open_regions(set_here, distinct, select_backend(distinct, "torch-cpu").graph_threshold).pixel_threshold == 0.3


def test_rules_check_judges_with_the_pixel_threshold_of_the_graph_it_runs(int8):
    """The audit's repro: `rules check --backend onnxruntime / torch-cpu` reported the main graph's 1.43171 for both."""
    frames = [(f"f{i}.png", frame) for i, frame in enumerate(make_frames(2, seed=9))]
    cfg = StationConfig(bundle=int8.root)
    for backend, own in (("onnxruntime", int8.cpu_pixel_threshold), ("torch-cpu", int8.fp32_pixel_threshold)):
        report = check_frames(cfg, frames, backend)
        assert report.pixel_threshold == own.value != int8.pixel_threshold.value, backend


def test_a_swap_to_a_bundle_judges_regions_at_the_new_scorers_graphs_pixel_threshold(int8):
    scorer = select_backend(int8, "torch-cpu")
    inspector = Inspector(None, scorer, 1.0, regions=RegionJudge(RegionSettings(), 0.5))
    inspector.switch.request(change_for(int8, scorer, None))
    inspector.apply_switch()
    assert inspector.decider.regions.pixel_threshold == int8.fp32_pixel_threshold.value


def test_a_bundle_built_before_uses_the_main_graphs_pixel_threshold_and_says_so_once(int8, tmp_path, caplog):
    old = Path(shutil.copytree(int8.root, tmp_path / "old"))
    data = json.loads((old / MANIFEST).read_text())
    data["graph"]["cpu"].pop("pixel_threshold")
    data.pop("fp32_pixel_threshold")
    write_manifest(old, data)
    loaded = load_bundle(old)
    assert loaded.cpu_pixel_threshold is None and loaded.fp32_pixel_threshold is None
    with caplog.at_level("WARNING", logger="fair_edge.export.bundle"):
        assert regions_at(loaded, "onnxruntime") == loaded.pixel_threshold.value
        assert regions_at(loaded, "onnxruntime") == loaded.pixel_threshold.value
        assert regions_at(loaded, "torch-cpu") == loaded.pixel_threshold.value   # the FP32 graph: its own note
    warnings = [r.getMessage() for r in caplog.records if "keeps no pixel threshold calibrated on model.int8-cpu" in
                r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "model.int8-cpu.onnx, the graph this backend runs" in warnings[0]
    assert "the main graph's (model.int8.onnx)" in warnings[0] and "Rebuild the bundle" in warnings[0]
    assert sum("keeps no pixel threshold calibrated on model.fp32.onnx" in r.getMessage() for r in caplog.records) == 1

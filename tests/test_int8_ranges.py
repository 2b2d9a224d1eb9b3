"""INT8 calibration of a near-constant tensor (issue #29: `fair-edge bench --synthetic-model patchcore --precision
int8` failed with numpy's "Too many bins for data range"): both INT8 graphs calibrate it by the documented rule
(``calibration.ranges``) with the method asked for, and quantise it to within one int8 step."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fair_edge.calibration.int8 import Int8Settings, quantize_int8
from fair_edge.calibration.int8_cpu import quantize_int8_cpu
from fair_edge.calibration.ranges import zero_based_edges

LEVEL, SPREAD = 8.9017, 2.4e-4  # PatchCore's anomaly map on random weights: 8.90163 .. 8.90187


def near_constant_graph(path) -> None:
    """x (N, 1, 8, 8) in [0, 1] -> /net/a: 1x1 Conv (weight SPREAD, bias LEVEL) -> t in [LEVEL, LEVEL + SPREAD]
    -> /net/b: 1x1 Conv (weight 1) -> y. The tensor t between two quantised Convs spans 1e-5 of its magnitude."""
    inits = [numpy_helper.from_array(np.full((1, 1, 1, 1), SPREAD, np.float32), "wa"),
             numpy_helper.from_array(np.array([LEVEL], np.float32), "ba"),
             numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "wb")]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["t"], name="/net/a"),
             helper.make_node("Conv", ["t", "wb"], ["y"], name="/net/b")]
    graph = helper.make_graph(nodes, "near_constant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture()
def fp32(tmp_path):
    near_constant_graph(tmp_path / "fp32.onnx")
    return tmp_path / "fp32.onnx"


def calib() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}


def run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int8_cpu], ids=["tensorrt-graph", "cpu-graph"])
def test_a_near_constant_tensor_calibrates_with_the_method_asked_for(fp32, tmp_path, quantize):
    settings = Int8Settings(method="percentile", num_images=8, chunk=4)
    quantize(fp32, tmp_path / "int8.onnx", calib(), ("/net/",), settings, tmp_path / "calib.json")
    cache = json.loads((tmp_path / "calib.json").read_text())
    assert "Percentile" in json.dumps(cache)  # not a silent switch to max calibration
    x = calib()["x"][:2]
    got, want = run(tmp_path / "int8.onnx", x), run(fp32, x)
    assert np.abs(got - want).max() <= 2 * LEVEL / 127  # within an int8 step of the symmetric range (+ rounding)


def test_zero_based_edges_split_any_float32_range():
    flat = np.full(1000, LEVEL, np.float32) + np.linspace(0, SPREAD, 1000, dtype=np.float32)
    with pytest.raises(ValueError, match="Too many bins"):  # what ORT's [min |x|, max |x|] histogram met
        np.histogram(np.abs(flat), bins=2048)
    for values in (flat, np.zeros(10, np.float32), np.full(10, 1e-40, np.float32), -flat):
        edges = zero_based_edges(values, 2048)
        assert edges.dtype == np.float32 and len(edges) == 2049 and edges[0] == 0 and (np.diff(edges) > 0).all()
        assert edges[-1] >= np.abs(values).max()


def test_only_the_tensors_of_nodes_in_scope_are_calibrated(fp32, tmp_path):
    # /net/b is outside the scope (as PatchCore's blur Conv is): its output y gets no range, its input t does
    settings = Int8Settings(method="percentile", num_images=8, chunk=4)
    quantize_int8(fp32, tmp_path / "int8.onnx", calib(), ("/net/a",), settings, tmp_path / "calib.json")
    text = (tmp_path / "calib.json").read_text()
    assert '"x"' in text and '"t"' in text and '"y"' not in text


def test_a_cache_written_by_another_way_of_taking_ranges_is_not_reused(tmp_path, monkeypatch):
    """Old calibration caches (ranges taken over [min |x|, max |x|], every Conv) must miss after the change."""
    import numpy as np

    import fair_edge.calibration.int8 as int8

    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph")
    inputs = {"x": np.zeros((1, 3), np.float32)}
    now = int8.cache_key(graph, int8.Int8Settings(), inputs)
    assert now == int8.cache_key(graph, int8.Int8Settings(), inputs)
    monkeypatch.setattr(int8, "RANGES_VERSION", "1")
    assert int8.cache_key(graph, int8.Int8Settings(), inputs) != now

"""INT8 Q/DQ graph: placement TensorRT accepts, scoring untouched, accuracy vs FP32, calibration cache."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_fixtures import MODEL, make_frames
from onnx import numpy_helper

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.calibration.int8 import Int8Settings, quantize_int8
from fair_edge.errors import ConfigError
from fair_edge.export.accuracy import compare_precisions, graph_delta
from fair_edge.export.onnx_export import export_onnx
from fair_edge.runtime.backends import OnnxRuntimeBackend

SCOPE = MODEL.impl.int8_scope


@pytest.fixture(scope="module")
def int8(tmp_path_factory, tiny_detector):
    root = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(MODEL, tiny_detector, root / "fp32.onnx")
    calib = preprocess_frames(make_frames(16, seed=100), MODEL)
    settings = Int8Settings(method="percentile", num_images=16)
    reused = quantize_int8(fp32, root / "int8.onnx", calib, SCOPE, settings, root / "calib.json")
    return {"root": root, "fp32": fp32, "int8": root / "int8.onnx", "calib": calib, "settings": settings, "reused": reused}


def _producers(g):
    return {o: n for n in g.graph.node for o in n.output}


def test_qdq_around_every_unet_conv_and_weights_per_channel_symmetric(int8):
    g = onnx.load(str(int8["int8"]))
    prod, inits = _producers(g), {t.name: t for t in g.graph.initializer}
    convs = [n for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/unet/")]
    assert len(convs) == 23  # 10 encoder + 12 decoder + head
    for conv in convs:
        act, weight = prod[conv.input[0]], prod[conv.input[1]]
        assert act.op_type == "DequantizeLinear" and prod[act.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear"
        w_int8 = inits[weight.input[0]]
        assert w_int8.data_type == onnx.TensorProto.INT8
        scale, zero = numpy_helper.to_array(inits[weight.input[1]]), numpy_helper.to_array(inits[weight.input[2]])
        out_channels = w_int8.dims[0]
        assert scale.shape == (out_channels,) and zero.shape == (out_channels,)  # per channel
        assert zero.dtype == np.int8 and not zero.any()  # symmetric
        assert {a.name: a.i for a in weight.attribute}.get("axis", 1) == 0
        q = prod[act.input[0]]
        assert numpy_helper.to_array(inits[q.input[2]]).dtype == np.int8
        assert numpy_helper.to_array(inits[q.input[2]]) == 0  # symmetric activations
        if len(conv.input) > 2:  # bias stays float32 (TensorRT has no int32 DequantizeLinear)
            assert conv.input[2] in inits and inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT


def test_no_qdq_in_scoring_subgraph(int8):
    g = onnx.load(str(int8["int8"]))
    prod = _producers(g)
    for node in g.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if not node.name.startswith("/unet/"):
            feeding = [prod[i].op_type for i in node.input if i in prod]
            assert "DequantizeLinear" not in feeding, node.name
    qdq_consumers = {c.name for n in g.graph.node if n.op_type == "DequantizeLinear"
                     for c in g.graph.node if n.output[0] in c.input}
    assert qdq_consumers and all(name.startswith("/unet/") for name in qdq_consumers)
    assert sum(n.op_type == "Conv" and n.name.startswith("/scorer/") for n in g.graph.node) == 4  # Prewitt convs, float


def test_int8_scores_track_fp32_on_normal_images(int8):
    """Normal scores differ only subtly, so a rank correlation > 0.9 there is a real check."""
    ref, cand = OnnxRuntimeBackend(int8["fp32"]), OnnxRuntimeBackend(int8["int8"])
    d = graph_delta(ref, cand, preprocess_frames(make_frames(20, seed=1), MODEL))
    print(f"int8 vs fp32 (normal): {d}")
    assert d.score_spearman > 0.9 and d.score_pearson > 0.9
    assert d.score_max_abs < 0.05


def test_accuracy_check_fails_on_a_broken_quantisation(int8, tmp_path):
    """The same check on a graph with activation scales x64 (coarse quantisation) must fail."""
    g = onnx.load(str(int8["int8"]))
    inits = {t.name: t for t in g.graph.initializer}
    for n in g.graph.node:
        if n.op_type == "QuantizeLinear":
            t = inits[n.input[1]]
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 64, t.name))
            dq_scales = [c.input[1] for c in g.graph.node if c.op_type == "DequantizeLinear" and n.output[0] in c.input]
            for name in dq_scales:
                inits[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), name))
    onnx.save(g, str(tmp_path / "broken.onnx"))
    d = graph_delta(OnnxRuntimeBackend(int8["fp32"]), OnnxRuntimeBackend(tmp_path / "broken.onnx"),
                    preprocess_frames(make_frames(20, seed=1), MODEL))
    assert not (d.score_spearman > 0.9 and d.score_pearson > 0.9 and d.score_max_abs < 0.05)


def test_calibration_cache_makes_rebuilds_identical(int8, tmp_path):
    assert int8["reused"] is False
    calib = int8["calib"]
    calls = []
    reused = quantize_int8(int8["fp32"], tmp_path / "again.onnx", calib, SCOPE, int8["settings"], int8["root"] / "calib.json",
                           on_image=lambda: calls.append(1))
    assert reused is True and calls == []
    assert (tmp_path / "again.onnx").read_bytes() == int8["int8"].read_bytes()
    other = Int8Settings(method="max", num_images=16)  # other settings: cache key differs, ranges recomputed
    assert quantize_int8(int8["fp32"], tmp_path / "max.onnx", calib, SCOPE, other, int8["root"] / "calib.json",
                         on_image=lambda: calls.append(1)) is False
    assert len(calls) == 16


def test_compare_precisions_reports_auroc_delta_and_correlation(int8):
    frames = make_frames(10, seed=1) + make_frames(10, seed=2, defect=True)
    labels = [0] * 10 + [1] * 10
    result = compare_precisions({"fp32": int8["fp32"], "int8": int8["int8"]}, frames, labels, MODEL)
    assert result["fp32"].auroc_delta == 0.0 and result["fp32"].delta.score_max_abs == 0.0
    r = result["int8"]
    print(f"int8: AUROC {r.auroc:.3f} (fp32 {r.auroc_reference:.3f}), spearman {r.delta.score_spearman:.4f}")
    assert r.auroc_reference > 0.9  # the tiny trained model separates the synthetic defects
    assert abs(r.auroc_delta) <= 0.05 and r.delta.score_spearman > 0.9
    assert (r.n_normal, r.n_defect) == (10, 10)


def test_int8_settings_validate():
    with pytest.raises(ConfigError, match="entropy, percentile, max"):
        Int8Settings(method="minmax")


def test_a_damaged_cache_with_its_key_is_calibrated_again(int8, tmp_path, caplog):
    """A cache whose key file matches but which does not parse (a disk error, an interrupted copy) is deleted and the
    ranges calibrated again, with a warning; before, ORT failed on it, and on every rebuild."""
    from fair_edge.calibration.int8 import cache_key

    cache = tmp_path / "calib.json"
    (tmp_path / "calib.json.key").write_text(cache_key(int8["fp32"], int8["settings"], int8["calib"]) + "\n")
    cache.write_text('{"calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.Perc')
    calls = []
    with caplog.at_level("WARNING", logger="fair_edge.calibration.int8"):
        reused = quantize_int8(int8["fp32"], tmp_path / "again.onnx", int8["calib"], SCOPE, int8["settings"], cache,
                               on_image=lambda: calls.append(1))
    assert reused is False and len(calls) == 16 and "does not parse" in caplog.text
    assert (tmp_path / "again.onnx").read_bytes() == int8["int8"].read_bytes()   # the same ranges, calibrated again
    assert quantize_int8(int8["fp32"], tmp_path / "again.onnx", int8["calib"], SCOPE, int8["settings"], cache) is True

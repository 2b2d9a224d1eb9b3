"""The INT8 quality gate (`fair-edge build --int8 --max-drop`): kept, fallback to float layers, refusal, figures.

The planted model is the tiny trained UNet with one exact FP32 identity applied: channel 0 of the last decoder
block's output is scaled by 1000 (its BatchNorm weight and bias; ReLU commutes with a positive factor) and the
head's weights for that channel by 1/1000. FP32 outputs are unchanged, but the head's input now has one channel
1000x larger than the rest, so a per-tensor int8 scale wipes out the others: a known sensitive layer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from export_fixtures import MODEL, make_frames, trained_state
from typer.testing import CliRunner

from fair_edge.calibration.frames import frame_scores
from fair_edge.calibration.int8 import Int8Settings
from fair_edge.calibration.int8_gate import QualityGate
from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
from fair_edge.cli.build import build
from fair_edge.errors import BuildError, BundleError, ConfigError, DataError
from fair_edge.export.accuracy import compare_bundle_precisions
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import MANIFEST, load_bundle, metadata_digest
from fair_edge.runtime.backends import OnnxRuntimeBackend

HEAD = "/unet/head/Conv"
LAST_DECODER_CONV = "/unet/decoder.3/fuse/fuse.1/fuse.1.0/Conv"
CALIB = make_frames(12, seed=100)
NORMAL = make_frames(10, seed=1)
DEFECTS = make_frames(6, seed=2, defect=True)


def planted_state(factor: float = 1000.0) -> dict:
    state = {name: t.clone() for name, t in trained_state(100, 0).items()}
    state["decoder.3.fuse.1.1.weight"][0] *= factor
    state["decoder.3.fuse.1.1.bias"][0] *= factor
    state["head.weight"][:, 0] /= factor
    return state


def options(limit: float) -> BuildOptions:
    return BuildOptions("int8", int8=Int8Settings(num_images=12), engine=False, quality=QualityGate(limit))


def figures(root) -> dict:
    return json.loads((root / MANIFEST).read_text())["quality_gate"]


@pytest.fixture(scope="module")
def planted_ckpt() -> Checkpoint:
    return Checkpoint(MODEL, planted_state(), {"images": 32, "source": "synthetic stripes, planted outlier channel"})


def test_the_planted_identity_keeps_fp32_and_breaks_full_int8(planted_ckpt, tmp_path):
    plain = build_bundle(Checkpoint(MODEL, trained_state(100, 0), {}), tmp_path / "plain", options(1e9), CALIB, NORMAL)
    planted = build_bundle(planted_ckpt, tmp_path / "planted", options(1e9), CALIB, NORMAL)
    ref = [frame_scores(OnnxRuntimeBackend(r.bundle.reference_onnx_path, MODEL.input_names).infer_batched, NORMAL, MODEL)
           for r in (plain, planted)]
    np.testing.assert_allclose(ref[0], ref[1], rtol=1e-4, atol=1e-6)  # the same FP32 model
    plain_drop, planted_drop = (r.quality_gate.graphs[0].full_drop for r in (plain, planted))
    print(f"all-INT8 normal-score error, spreads: plain {plain_drop:.3f}, planted {planted_drop:.3f}")
    assert plain_drop < 0.5 < 5 < planted_drop


def test_within_the_limit_the_graph_is_kept_and_the_figures_are_the_measured_aurocs(tiny_ckpt_path, tmp_path):
    from fair_edge.models.checkpoint import load_checkpoint

    result = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", options(0.5), CALIB, NORMAL, DEFECTS)
    gate = figures(tmp_path / "b")
    assert gate["metric"] == "image_auroc" and gate["limit"] == 0.5
    assert (gate["n_normal"], gate["n_defect"]) == (10, 6)
    assert set(gate["graphs"]) == {"model.int8.onnx", "model.int8-cpu.onnx"}
    trt = gate["graphs"]["model.int8.onnx"]
    assert trt["kept_float"] == [] and trt["sensitivity"] == [] and trt["layers"] == 23  # every UNet conv
    assert gate["graphs"]["model.int8-cpu.onnx"]["layers"] == 35  # + max-pools, resizes, adds
    check = compare_bundle_precisions(result.bundle, NORMAL + DEFECTS, [0] * 10 + [1] * 6)  # measured apart
    assert trt["fp32"] == pytest.approx(check.auroc_reference) and trt["int8"] == pytest.approx(check.auroc)
    assert trt["drop"] == pytest.approx(-100 * check.auroc_delta) and trt["drop"] <= 0.5


def test_over_the_limit_the_most_sensitive_layers_stay_float(planted_ckpt, tmp_path):
    steps = []
    result = build_bundle(planted_ckpt, tmp_path / "b", options(0.5), CALIB, NORMAL, on_gate_step=steps.append)
    gate = figures(tmp_path / "b")
    assert gate["metric"] == "normal_score" and gate["n_defect"] == 0
    trt, cpu = gate["graphs"]["model.int8.onnx"], gate["graphs"]["model.int8-cpu.onnx"]
    assert trt["full_drop"] > 5 and trt["drop"] <= 0.5
    assert trt["kept_float"] == [HEAD]  # the planted layer, and only it
    assert trt["sensitivity"][0]["node"] == HEAD and len(trt["sensitivity"]) == 23
    # the CPU graph quantises Conv outputs too, so the outlier channel is also the last decoder conv's output
    assert cpu["kept_float"] == [HEAD, LAST_DECODER_CONV] and cpu["drop"] <= 0.5
    assert any("1 layer(s) float" in s for s in steps)
    # the graphs in the bundle are the fallback ones: no Q/DQ feeds the head any more, and their scores match
    import onnx

    g = onnx.load(str(result.bundle.onnx_path))
    producers = {o: n for n in g.graph.node for o in n.output}
    head = next(n for n in g.graph.node if n.name == HEAD)
    assert producers[head.input[0]].op_type != "DequantizeLinear"
    assert any(n.op_type == "QuantizeLinear" for n in g.graph.node)  # the other 22 convs are still INT8
    fp32, int8 = (frame_scores(OnnxRuntimeBackend(p, MODEL.input_names).infer_batched, NORMAL, MODEL)
                  for p in (result.bundle.reference_onnx_path, result.bundle.onnx_path))
    assert np.abs(int8 - fp32).mean() / fp32.std() == pytest.approx(trt["drop"], rel=1e-4)
    assert result.bundle.threshold is not None  # calibrated on the graph that was kept


def test_a_limit_no_fallback_reaches_is_refused_with_the_figures_and_leaves_nothing(planted_ckpt, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(BuildError) as info:
        build_bundle(planted_ckpt, out, options(0.0), CALIB, NORMAL)
    msg = str(info.value)
    for text in ("model.int8.onnx", "FP32 normal-score spreads", "limit (--max-drop) is 0", "11 of its 23",
                 "No bundle was written", "--fp16", "raise --max-drop"):
        assert text in msg, text
    assert list(tmp_path.iterdir()) == []  # atomic: no bundle, no staging folder, no trial graphs


def test_the_figures_are_covered_by_the_bundle_checksum(planted_ckpt, tmp_path):
    build_bundle(planted_ckpt, tmp_path / "b", options(0.5), CALIB, NORMAL)
    path = tmp_path / "b" / MANIFEST
    data = json.loads(path.read_text())
    load_bundle(tmp_path / "b")
    data["quality_gate"]["graphs"]["model.int8.onnx"]["drop"] = 0.0  # someone polishes the figure
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(BundleError, match="changed after the build"):
        load_bundle(tmp_path / "b")
    assert data["metadata_sha256"] != metadata_digest(data)


def test_gate_inputs_are_checked_before_any_work(tiny_ckpt_path, tmp_path):
    from fair_edge.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_ckpt_path)
    with pytest.raises(ConfigError, match="gates INT8 builds"):
        build_bundle(ckpt, tmp_path / "b", BuildOptions("fp16", engine=False, quality=QualityGate(0.5)), CALIB, NORMAL)
    with pytest.raises(DataError, match="pass --normal"):
        build_bundle(ckpt, tmp_path / "b", options(0.5), CALIB)
    with pytest.raises(ConfigError, match="--max-drop must be a number >= 0"):
        QualityGate(-1.0)
    assert list(tmp_path.iterdir()) == []


def test_gate_works_through_the_family_seam_for_lgfdr(tmp_path):
    """An LGFDR detector (packaged backbone weights, untrained towers): its layers are its family's int8_scope."""
    from fair_edge.models.registry import ModelSpec, get_family
    from fair_edge.preprocess import PreprocessConfig

    family = get_family("lgfdr")
    spec = ModelSpec("lgfdr", PreprocessConfig(image_size=64), family.default_settings())
    torch.manual_seed(0)
    module = family.build(spec.settings, spec.preprocess).eval()
    ckpt = Checkpoint(spec, family.weights(module), {"images": 0, "source": "untrained towers"})
    result = build_bundle(ckpt, tmp_path / "b", options(1e9), make_frames(8, seed=100, size=64),
                          make_frames(8, seed=1, size=64))
    trt = result.quality_gate.graphs[0]
    assert result.quality_gate.metric == "normal_score" and trt.graph == "model.int8.onnx"
    assert trt.layers == 9 and trt.kept_float == ()  # 4 local-tower, 3 global-tower, 2 SRH convs
    assert trt.full_drop == trt.drop and np.isfinite(trt.drop)
    assert figures(tmp_path / "b")["graphs"]["model.int8.onnx"]["layers"] == 9


# ----------------------------------------------------------------------------- the command line
app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def test_cli_prints_the_figures_and_stores_the_flag_in_the_rebuild_command(planted_ckpt, tmp_path):
    from export_fixtures import write_pngs

    ckpt = save_checkpoint(tmp_path / "planted.pt", planted_ckpt)
    calib, normal = write_pngs(tmp_path / "calib", CALIB), write_pngs(tmp_path / "normal", NORMAL)
    out = tmp_path / "bundle"
    r = CliRunner().invoke(app, ["build", str(ckpt), "--int8", "--calib", str(calib), "--calib-images", "12", "--normal",
                                 str(normal), "--max-drop", "0.5", "--no-engine", "--out", str(out)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for text in ("INT8 gate model.int8.onnx", "normal_score", "limit 0.5", "1 of 23 layers kept float32", HEAD,
                 "2 of 35 layers kept float32"):
        assert text in r.output, text
    assert "--max-drop 0.5" in load_bundle(out).build_command
    refused = CliRunner().invoke(app, ["build", str(ckpt), "--int8", "--calib", str(calib), "--normal", str(normal),
                                       "--max-drop", "0", "--no-engine", "--out", str(tmp_path / "refused")],
                                 env={"COLUMNS": "250"})
    assert refused.exit_code == 2 and "limit (--max-drop) is 0" in refused.output and not (tmp_path / "refused").exists()
    no_int8 = CliRunner().invoke(app, ["build", str(ckpt), "--normal", str(normal), "--max-drop", "0.5",
                                       "--out", str(tmp_path / "fp32")])
    assert no_int8.exit_code == 2 and "gates INT8 builds" in no_int8.output


def test_a_cache_calibrated_with_layers_kept_float_is_not_reused_for_the_full_scope(tiny_detector, tmp_path):
    """The gate calibrates the full scope first and reuses those ranges; ranges calibrated for a partial graph
    lack the float layers' tensors, so a later full-scope build must calibrate again."""
    from fair_edge.calibration.frames import preprocess_frames
    from fair_edge.calibration.int8 import quantize_int8
    from fair_edge.export.onnx_export import export_onnx

    fp32 = export_onnx(MODEL, tiny_detector, tmp_path / "fp32.onnx")
    calib, scope, cache = preprocess_frames(CALIB, MODEL), MODEL.impl.int8_scope, tmp_path / "calib.json"
    settings = Int8Settings(num_images=12)
    assert quantize_int8(fp32, tmp_path / "partial.onnx", calib, scope, settings, cache, keep_float=[HEAD]) is False
    assert quantize_int8(fp32, tmp_path / "full.onnx", calib, scope, settings, cache) is False  # calibrated again
    assert quantize_int8(fp32, tmp_path / "gate.onnx", calib, scope, settings, cache, keep_float=[HEAD]) is True
    assert quantize_int8(fp32, tmp_path / "full2.onnx", calib, scope, settings, cache) is True  # full ranges kept

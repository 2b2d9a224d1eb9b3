"""``fair-edge build``'s summary names each threshold with its graph and the backends that decide with it.

An INT8 bundle holds four thresholds: model.int8.onnx's (TensorRT), model.int8-cpu.onnx's on ONNX Runtime and on
OpenVINO (each calibrated on that engine's scores) and model.fp32.onnx's (the PyTorch backends' FP32 weights). The summary printed only the first, as "threshold",
so a CPU station's threshold was printed nowhere; and the "int8 vs fp32" row did not say it covers model.int8.onnx.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.calibration.threshold import Threshold
from fair_edge.cli.build import build
from fair_edge.export.bundle import load_bundle
from fair_edge.runtime.selection import BACKENDS, select_backend

app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def summary_line(output: str, label: str) -> str:
    """The one line of the summary table whose first cell is ``label``."""
    lines = [line for line in output.splitlines() if line.count("│") > 1 and line.split("│")[1].strip() == label]
    assert len(lines) == 1, (label, output)
    return lines[0]


def test_an_int8_build_prints_the_threshold_of_each_graph_with_the_backends_that_use_it(tiny_ckpt_path, tmp_path):
    pytest.importorskip("openvino")   # the build calibrates OpenVINO's own threshold of the CPU graph where it is installed
    data = tmp_path / "data"
    calib = write_pngs(data / "train" / "good", make_frames(10, seed=100))
    normal = write_pngs(data / "val" / "good", make_frames(10, seed=1))
    out = tmp_path / "bundle"
    r = CliRunner().invoke(app, ["build", str(tiny_ckpt_path), "--int8", "--calib", str(calib), "--calib-images", "8",
                                 "--normal", str(normal), "--no-engine", "--out", str(out)], env={"COLUMNS": "240"})
    assert r.exit_code == 0, r.output
    b = load_bundle(out)
    expected = {"model.int8.onnx": (b.threshold, "used by tensorrt (no engine built);"),
                "model.int8-cpu.onnx": (b.cpu_threshold, "used by onnxruntime;"),
                "model.int8-cpu.onnx on openvino": (b.cpu_openvino.threshold, "used by openvino;"),
                "model.fp32.onnx": (b.fp32_threshold, "used by torch-cuda, torch-cpu;")}
    for graph, (threshold, users) in expected.items():
        line = summary_line(r.output, f"threshold {graph}")
        assert f"{threshold.value:.6g}" in line and users in line, line
    assert "int8 vs fp32 (model.int8.onnx)" in r.output
    pixel = {"model.int8.onnx": (b.pixel_threshold, "defect regions on tensorrt (no engine built):"),
             "model.int8-cpu.onnx": (b.cpu_pixel_threshold, "defect regions on onnxruntime:"),
             "model.int8-cpu.onnx on openvino": (b.cpu_openvino.pixel_threshold, "defect regions on openvino:"),
             "model.fp32.onnx": (b.fp32_pixel_threshold, "defect regions on torch-cuda, torch-cpu:")}
    for graph, (threshold, users) in pixel.items():   # each graph's own pixel threshold, as its backends cut at
        line = summary_line(r.output, f"pixel threshold {graph}")
        assert f"{threshold.value:.6g}" in line and users in line, line
    # three graphs, three thresholds; OpenVINO's of model.int8-cpu.onnx is calibrated on its own scores but may equal
    # ONNX Runtime's to the last bit where both run the graph's integer arithmetic alike (AVX-512 VNNI / AMX CPUs)
    assert len({pixel[g][0].value for g in ("model.int8.onnx", "model.int8-cpu.onnx", "model.fp32.onnx")}) == 3
    # each row's threshold is the one the named backend's scorer decides with
    for graph, (threshold, users) in expected.items():
        for name in ("onnxruntime", "openvino", "torch-cpu"):
            if name in users:
                scorer = select_backend(b, name)
                try:
                    assert scorer.graph == graph.split()[0] and (scorer.graph_threshold or b.threshold) == threshold
                finally:
                    scorer.backend.close()


def _threshold(value: float) -> Threshold:
    return Threshold(value, "normal-quantile", 0.05, 0.0, 40, source="held-out normal images")


def _bundle(precision: str, engine=None, **graphs) -> SimpleNamespace:
    names = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    return SimpleNamespace(precision=precision, onnx_path=Path(names[precision]), engine=engine, root=Path("b"),
                           reference_onnx_path=Path("model.fp32.onnx"), build_command="", **graphs)


def test_each_backend_is_named_once_and_an_fp32_bundle_has_one_threshold_row():
    from fair_edge.cli.build import BACKEND_ORDER, graph_thresholds, threshold_rows

    assert sorted(BACKEND_ORDER) == sorted(BACKENDS)
    fp32 = _bundle("fp32", threshold=_threshold(1.0), cpu_onnx_path=None, cpu_threshold=None, fp32_threshold=None)
    assert graph_thresholds(fp32) == {"model.fp32.onnx": (_threshold(1.0), list(BACKEND_ORDER))}
    [(label, value, detail)] = threshold_rows(fp32)
    assert (label, value) == ("threshold model.fp32.onnx", "1") and detail.startswith(
        "used by tensorrt (no engine built), onnxruntime, openvino, torch-cuda, torch-cpu; false-reject 0.00% on 40")
    fp16 = _bundle("fp16", engine=object(), threshold=_threshold(2.0), cpu_onnx_path=None, cpu_threshold=None,
                   fp32_threshold=_threshold(1.0))
    assert [row[:2] for row in threshold_rows(fp16)] == [("threshold model.fp16.onnx", "2"),
                                                         ("threshold model.fp32.onnx", "1")]
    assert threshold_rows(fp16)[0][2].startswith("used by tensorrt, onnxruntime, openvino;")
    none = _bundle("int8", threshold=None, cpu_onnx_path=Path("model.int8-cpu.onnx"), cpu_threshold=None,
                   fp32_threshold=None)
    assert [row[:2] for row in threshold_rows(none)] == [("threshold", "none")]

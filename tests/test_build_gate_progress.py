"""The INT8 quality gate's progress is a task of its own (audit: off a terminal the gate's steps replaced the finished
calibration task's description, so its lines read "INT8 quality gate: model.int8-cpu.onnx: ... 64/64 (100%) | 0:11
elapsed; still working, 0:38 since": the calibration's count and clock under the gate's words)."""

from __future__ import annotations

import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.cli.build import build
from fair_edge.cli.common import PlainProgress, console

app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def test_off_a_terminal_the_gate_and_the_calibration_each_print_their_own_line(tiny_ckpt_path, tmp_path):
    calib = write_pngs(tmp_path / "data" / "train" / "good", make_frames(8, seed=100))
    normal = write_pngs(tmp_path / "data" / "val" / "good", make_frames(8, seed=1))
    r = CliRunner().invoke(app, ["build", str(tiny_ckpt_path), "--int8", "--calib", str(calib), "--calib-images", "8",
                                 "--normal", str(normal), "--max-drop", "100", "--no-engine", "--out",
                                 str(tmp_path / "b")], env={"COLUMNS": "240"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    calibration = [line for line in lines if line.startswith("build, INT8 calibration (percentile) ")]
    gate = [line for line in lines if line.startswith("INT8 quality gate: ")]
    assert calibration and calibration[-1].startswith("build, INT8 calibration (percentile) 8/8 (100%) | "), lines
    assert gate and gate[-1].startswith("INT8 quality gate: done: model.int8.onnx drop "), lines
    assert "model.int8-cpu.onnx drop" in gate[-1] and "(normal_score, limit 100)" in gate[-1]
    assert not any("8/8" in line for line in gate)   # never the calibration's count


def test_the_gate_task_starts_at_its_first_step_and_finishes_at_its_last():
    from fair_edge.cli.build import GateTask
    from fair_edge.export.build import GATE_DONE

    progress = PlainProgress(console, (), every_s=3600.0)
    calibration = progress.add_task("build, INT8 calibration (percentile)", total=2, completed=2)
    steps = GateTask(progress)
    steps("measuring model.int8.onnx, model.int8-cpu.onnx against FP32 on 8 held-out images")
    gate = progress.tasks[-1]
    assert len(progress.tasks) == 2 and gate["finished"] is None and gate["total"] is None
    assert progress.line(gate).startswith("INT8 quality gate: measuring model.int8.onnx, model.int8-cpu.onnx against "
                                          "FP32 on 8 held-out images | ")
    steps("model.int8.onnx: all 18 layers INT8, drop 0.0244 (image_auroc, limit 0.5)")
    assert progress.tasks[calibration]["description"] == "build, INT8 calibration (percentile)"
    assert gate["description"] == ("INT8 quality gate: model.int8.onnx: all 18 layers INT8, drop 0.0244 (image_auroc, "
                                   "limit 0.5)")
    steps(f"{GATE_DONE}model.int8.onnx drop 0.0244, model.int8-cpu.onnx drop 0.0271 (image_auroc, limit 0.5)")
    assert gate["finished"] is not None and len(progress.tasks) == 2   # its clock stops with the gate

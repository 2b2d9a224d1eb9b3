"""The whole station on the CPU: bundle -> ONNX Runtime -> verdicts -> reject pulses on a real Modbus
TCP server on 127.0.0.1; and `fair-edge run` stopped by SIGTERM drains cleanly."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from fair_edge.checkpoint import load_checkpoint
from fair_edge.data import load_dataset, read_image
from fair_edge.demo import match_pulses
from fair_edge.evaluate import score_samples
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.run_station import run_station
from fair_edge.station import CameraSettings, StationConfig

pytest.importorskip("pymodbus")


@pytest.fixture(scope="module")
def bundle(trained, mvtec_dir, tmp_path_factory):
    final, _ = trained
    normals = [read_image(s.path) for s in load_dataset(mvtec_dir).test if s.label == 0]
    out = tmp_path_factory.mktemp("bundle") / "b"
    return build_bundle(load_checkpoint(final), out, BuildOptions(engine=False), normal_frames=normals).bundle


@pytest.fixture(scope="module")
def conveyor(mvtec_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("conveyor")
    for i, sample in enumerate(load_dataset(mvtec_dir).test):
        tag = "defect" if sample.label else "good"
        (folder / f"{i:03d}_{tag}.png").write_bytes(sample.path.read_bytes())
    return folder


def test_station_fires_one_pulse_per_ng_part_on_time(bundle, conveyor, trained, mvtec_dir, tmp_path):
    from fair_edge.line.sim_plc import SimulatedPlc

    expected = score_samples(trained[0], load_dataset(mvtec_dir).test).scores
    threshold = float(sorted(expected)[len(expected) // 2])  # half the parts NG, whatever the model
    plc = SimulatedPlc().start()
    try:
        cfg = StationConfig(
            camera=CameraSettings(source=str(conveyor), fps=10, queue_size=8), bundle=bundle.root,
            backend="onnxruntime", threshold=threshold, output=tmp_path,
            reject=RejectSettings(sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0",), delay_ms=250,
                                  pulse_ms=20, min_gap_ms=10, late_ms=10),
            record=RecordSettings(dir=tmp_path, save_ng_images=True))
        summary = run_station(cfg, threading.Event())
        time.sleep(0.1)
        rises = plc.rises(0)
    finally:
        plc.close()
    verdicts = [json.loads(line) for line in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [v["seq"] for v in verdicts] == sorted(v["seq"] for v in verdicts) and len(verdicts) == 12
    assert [v["score"] for v in verdicts] == pytest.approx(list(expected), rel=1e-4, abs=1e-6)
    assert summary.inspected == 12 and summary.ng == sum(v["ng"] for v in verdicts) == len(rises) > 0
    rows = match_pulses(verdicts, rises, 250, 10)
    assert all(r["pulse_error_ms"] is not None for r in rows if r["ng"])          # every NG part: its pulse
    assert sum(r["pulse_error_ms"] is not None for r in rows if not r["ng"]) == 0  # no pulse for good parts
    assert len(list((tmp_path / "ng").glob("*_overlay.png"))) == summary.ng
    assert json.loads((tmp_path / "summary.json").read_text())["inspected"] == 12


def test_sigterm_drains_and_exits_zero(bundle, conveyor, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fair_edge.cli", "run", "--bundle", str(bundle.root), "--source", str(conveyor),
           "--fps", "20", "--loop", "--backend", "onnxruntime", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 60
    log = tmp_path / "verdicts.jsonl"
    while time.monotonic() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "run summary" in output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["inspected"] >= 5 and len(log.read_text().splitlines()) == summary["inspected"]


def test_run_without_a_bundle_says_how_to_get_one(conveyor):
    from typer.testing import CliRunner

    from fair_edge.cli import app

    result = CliRunner().invoke(app, ["run", "--source", str(conveyor)])
    assert result.exit_code == 2 and "fair-edge build" in result.output

"""The demo's station path on the CPU with a tiny model: bundle, conveyor replay, simulated PLC pulses."""

import json

import pytest
import torch

from fair_edge.data import elpv_split
from fair_edge.demo import match_pulses, plan_conveyor, run_demo
from fair_edge.preprocess import PreprocessConfig
from fair_edge.train import Trainer, TrainConfig

pytest.importorskip("elpv_dataset")
pytest.importorskip("pymodbus")


def test_conveyor_plan_keeps_threshold_cells_off_the_belt():
    plan = plan_conveyor(elpv_split("mono"), n_good=40, n_defect=20)
    assert len(plan.parts) == 60 and sum(p.label for p in plan.parts) == 20
    assert len(plan.threshold_normals) == 59
    assert not {p.path for p in plan.threshold_normals} & {p.path for p in plan.parts}
    assert plan == plan_conveyor(elpv_split("mono"), n_good=40, n_defect=20)  # deterministic


def test_match_pulses_pairs_each_verdict_with_its_edge():
    verdicts = [{"seq": 0, "t_capture": 10.0, "ng": True, "source": "000_defect_a.png"},
                {"seq": 1, "t_capture": 10.1, "ng": False, "source": "001_good_b.png"},
                {"seq": 2, "t_capture": 10.2, "ng": True, "source": "002_defect_c.png"}]
    rows = match_pulses(verdicts, [10.4031, 10.6200], travel_ms=400, late_ms=10)
    assert rows[0]["pulse_error_ms"] == pytest.approx(3.1) and rows[0]["defective"]
    assert rows[1]["pulse_error_ms"] is None and not rows[1]["defective"]
    assert rows[2]["pulse_error_ms"] is None  # 20 ms late: outside +-10 ms, so not its pulse


def test_demo_station_with_a_tiny_model(tmp_path):
    def train():
        cfg = TrainConfig(width=8, batch=4, lr=1e-3, steps=3, save_every=3)
        return Trainer(elpv_split("mono"), PreprocessConfig(image_size=32, cutoff=4.0), cfg, tmp_path,
                       torch.device("cpu")).run()

    report = run_demo(tmp_path, train=train, evaluate=lambda final: {"skipped": True}, fps=40.0,
                      backend="onnxruntime", say=lambda text: None)
    s = report["summary"]
    assert s["inspected"] == s["frames_in"] == 60 and report["defective"] == 20
    assert s["ng"] > 0  # the threshold sits at the 95th percentile of normal scores: some parts are NG
    # each NG part gets its pulse on time, or - when the machine is too loaded to write it by its
    # deadline - the documented rule: counted as missed and never sent late (it would hit the wrong part)
    missed = report["reject_stats"]["sink_missed"]
    assert report["pulses_received"] == report["pulses_on_time"] == s["ng"] - missed
    assert missed <= 1 and report["reject_stats"]["late"] == 0
    assert all(abs(e) <= 10 for e in (r["pulse_error_ms"] for r in report["parts"]) if e is not None)
    assert not any(r["pulse_error_ms"] is not None for r in report["parts"] if not r["ng"])
    assert json.loads((tmp_path / "demo_report.json").read_text())["defective"] == 20

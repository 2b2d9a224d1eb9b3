"""The demo's station path on the CPU with a tiny model: bundle, conveyor replay, simulated PLC pulses."""

import json

import pytest
import torch

from fair_edge.training.data import elpv_split
from fair_edge.demo.run import match_pulses, plan_conveyor, plan_line, run_demo, tally
from fair_edge.export.build import SourceCheckpoint, recorded_source
from fair_edge.models.lgfdr.model import LgfdrSettings
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig, Trainer
from fair_edge.models.training_contract import config_from_options

pytest.importorskip("elpv_dataset")
pytest.importorskip("pymodbus")


def test_conveyor_plan_keeps_threshold_cells_off_the_belt():
    plan = plan_conveyor(elpv_split("mono"), n_good=40, n_defect=20)
    assert len(plan.parts) == 60 and sum(p.label for p in plan.parts) == 20
    assert len(plan.threshold_normals) == 59
    assert not {p.path for p in plan.threshold_normals} & {p.path for p in plan.parts}
    assert plan == plan_conveyor(elpv_split("mono"), n_good=40, n_defect=20)  # deterministic


def test_match_pulses_pairs_each_part_with_its_edge_and_tallies_uninspected_defects_as_missed():
    verdicts = [{"seq": 0, "t_capture": 10.0, "t_verdict": 10.1, "ng": True, "source": "000_defect_a.png"},
                {"seq": 1, "t_capture": 10.1, "t_verdict": 10.2, "ng": False, "source": "001_good_b.png"},
                {"seq": 2, "t_capture": 10.2, "t_verdict": 10.3, "ng": True, "source": "002_defect_c.png"},
                {"seq": 3, "t_capture": 10.3, "inspected": False, "source": "003_defect_d.png"},
                {"seq": 4, "t_capture": 10.4, "t_verdict": 10.9, "ng": True, "source": "004_defect_e.png"}]
    rows = match_pulses(verdicts, [10.4031, 10.6200, 10.7002, 10.8001], travel_ms=400, late_ms=10)
    assert rows[0]["pulse_error_ms"] == pytest.approx(3.1) and rows[0]["defective"] and rows[0]["in_time"]
    assert rows[1]["pulse_error_ms"] is None and not rows[1]["defective"]
    assert rows[2]["pulse_error_ms"] is None  # 20 ms late: outside +-10 ms, so not its pulse
    assert not rows[3]["inspected"] and rows[3]["pulse_error_ms"] == pytest.approx(0.2)
    assert rows[4]["inspected"] and not rows[4]["in_time"]   # verdict 100 ms after its due time
    counts = tally(rows)
    assert counts["defective"] == 4 and counts["caught"] == 2 and counts["missed"] == 2
    assert counts["missed_not_inspected"] == 2 and counts["missed_but_rejected_uninspected"] == 2
    assert counts["pulses_due"] == 4 and counts["pulses_on_time"] == 3


def test_a_verdict_the_gate_did_not_decide_on_is_not_counted_in_time():
    """A verdict inside the gate's decision lead (DISPATCH_LEAD_S before the due time), one the station logged
    ``verdict_late`` (the gate had rejected the part fail-safe) or one with an ``error`` (no verdict to the gate)
    was counted 'in time': its fail-safe pulse became a false reject of a good part or a caught defect."""
    from fair_edge.line.scheduler import DISPATCH_LEAD_S

    due = 100.0 + 0.4
    base = {"t_capture": 100.0, "score": 0.1, "ng": False}
    verdicts = [dict(base, seq=7, t_verdict=due - DISPATCH_LEAD_S / 3, verdict_late=True,
                     gate="rejected_uninspected", source="007_good_x.png"),             # what the station logs
                dict(base, seq=8, t_verdict=due - DISPATCH_LEAD_S / 3, source="008_good_y.png"),   # not marked late
                dict(base, seq=9, t_verdict=due - 0.2, ng=True, error="inference failed", source="009_defect_z.png"),
                dict(base, seq=10, t_verdict=due - 0.2, ng=True, source="010_defect_w.png")]
    rows = match_pulses(verdicts, [due + 0.0005], travel_ms=400, late_ms=10)
    assert [r["in_time"] for r in rows] == [False, False, False, True]
    counts = tally(rows)
    assert counts["false_rejects"] == 0 and counts["rejected_uninspected_good"] == 2
    assert counts["caught"] == 1 and counts["missed_not_inspected"] == 1


def test_plan_line_slows_an_overloaded_conveyor_and_places_the_gate_above_p99():
    fast = plan_line(10.0, {"mean": 20.0, "p50": 19.0, "p99": 40.0})
    assert fast.fps == 10.0 and fast.delay_ms == 400.0
    slow = plan_line(10.0, {"mean": 250.0, "p50": 240.0, "p99": 600.0})
    assert slow.fps == pytest.approx(2.4) and "slowed from 10 to 2.4" in slow.notes[0]
    assert slow.delay_ms >= 3 * 600 + 100 and slow.delay_ms % 50 == 0 and "p99 600.0 ms" in slow.notes[1]


@pytest.mark.parametrize("family", ["fair", "lgfdr"])
def test_demo_station_with_a_tiny_model(family, tmp_path):
    def train():
        cfg = TrainConfig(batch=4, lr=1e-3, steps=3, save_every=3)
        pre = PreprocessConfig(image_size=32, cutoff=4.0)
        if family == "fair":
            return Trainer(elpv_split("mono"), pre, FairSettings(width=8), cfg, tmp_path, torch.device("cpu")).run()
        model = ModelSpec("lgfdr", pre, LgfdrSettings())
        training = model.impl.training()
        own = config_from_options(training.default_train_config(), {"batch": 4, "lr": 1e-3, "steps": 3, "save_every": 3})
        return training.make_trainer(elpv_split("mono"), model, own, tmp_path, torch.device("cpu")).run()

    finals = []
    report = run_demo(tmp_path, train=lambda: finals.append(train()) or finals[-1],
                      evaluate=lambda final: {"skipped": True}, fps=40.0, backend="onnxruntime", say=lambda text: None)
    # the bundle records its checkpoint: `fair-edge build FINAL --out OUT/bundle` rebuilds it without --overwrite
    assert recorded_source(tmp_path / "bundle") == SourceCheckpoint.of(finals[0])
    s = report["summary"]
    assert s["frames_in"] == 60 and report["defective"] == 20 and len(report["parts"]) == 60
    assert s["inspected"] + s["dropped"] == 60     # every part is in the log: inspected or dropped
    assert s["ng"] > 0  # the threshold sits at the 95th percentile of normal scores: some parts are NG
    assert report["caught"] + report["missed"] == 20
    # each pulse the gate fired reached the PLC (an edge), or was counted missed by its sink (not written by its
    # deadline: never sent late), or unconfirmed (written, no reply: an edge or not); a write that began in time
    # and returned late is counted a late write. How many land on time is the demo's own report, not asserted.
    sinks = report["reject_stats"]["sinks"].values()
    missed, late = sum(st["missed"] + st["dropped"] for st in sinks), sum(st["late_writes"] for st in sinks)
    unconfirmed = sum(st["unconfirmed"] for st in sinks)
    fired = report["reject_stats"]["rejected_ng"] + report["reject_stats"]["rejected_uninspected"]
    assert sum(st["pulses"] for st in sinks) == fired == report["reject_stats"]["fired"]
    assert report["pulses_received"] + missed <= fired <= report["pulses_received"] + missed + unconfirmed
    assert report["pulses_received"] - report["pulses_on_time"] <= late + unconfirmed
    assert all(abs(r["pulse_error_ms"]) <= 10 for r in report["parts"] if r["pulse"] == "on time")
    assert report["pulses_late"] <= late   # a late pulse is shown as such only when its sink said it was written late
    assert not any(r["pulse_error_ms"] is not None for r in report["parts"] if r["in_time"] and not r["ng"])
    assert report["line"]["gate_delay_ms"] >= 400 and report["line"]["warmup_ms"]["n"] > 10
    assert json.loads((tmp_path / "demo_report.json").read_text())["defective"] == 20


def test_demo_shows_a_late_pulse_names_its_false_reject_and_points_to_a_real_bank_max_option(capsys, monkeypatch):
    """A pulse the sink wrote after its deadline is printed 'late (+x ms)' and counted in the pulse range
    (not 'none'); a normal cell judged NG is named; the capped-bank warning names a command that has the flag."""
    from typer.testing import CliRunner

    from fair_edge.cli import app
    from fair_edge.cli.demo import print_demo
    from fair_edge.demo.run import pulse_error_stats
    from fair_edge.models.patchcore.train import RAISE_BANK_MAX, bank_cap_warning

    verdicts = [{"seq": 0, "t_capture": 10.0, "t_verdict": 10.1, "ng": True, "score": 0.9, "source": "000_defect_a.png"},
                {"seq": 1, "t_capture": 10.1, "t_verdict": 10.2, "ng": True, "score": 0.7, "source": "001_good_b.png"},
                {"seq": 2, "t_capture": 10.2, "t_verdict": 10.3, "ng": True, "score": 0.8, "source": "002_defect_c.png"}]
    rows = match_pulses(verdicts, [10.4021, 10.5019, 10.6235], travel_ms=400, late_ms=10,
                        pulses={0: "delivered", 1: "delivered", 2: "late"})
    assert [r["pulse"] for r in rows] == ["on time", "on time", "late"]
    assert rows[2]["pulse_error_ms"] == pytest.approx(23.5)
    counts = tally(rows)
    assert counts["pulses_on_time"] == 2 and counts["pulses_late"] == 1 and counts["false_rejects"] == 1
    summary = {"frames_in": 3, "inspected": 3, "dropped": 0, "lost": 0, "backend": "onnxruntime (cpu)",
               "latency": {"p50_ms": 100.0, "p99_ms": 100.0, "max_ms": 100.0}}
    report = {"parts": rows, "summary": summary, "line": {"fps": 10.0, "gate_delay_ms": 400.0}, "threshold": 0.5,
              "pulse_error_ms": pulse_error_stats(rows), "reject_stats": {}, **counts}
    monkeypatch.setenv("COLUMNS", "200")
    print_demo(report)
    text = " ".join(capsys.readouterr().out.split())
    assert "late (+23.5 ms" in text and "none" not in text
    assert "range +1.90 .. +23.50 ms" in text, text
    assert "false rejects (normal cells judged NG): seq 1 b.png (score 0.7000 > threshold 0.5000)" in text, text
    assert "pulses on time 2/3, late 1" in text

    warning = bank_cap_warning(385_024, 10_000, PatchcoreSettings(bank_max=10_000))
    assert RAISE_BANK_MAX in warning
    words = RAISE_BANK_MAX.strip("`").split()
    command, flag = words[1], next(w for w in words if w.startswith("--set"))
    helped = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert helped.exit_code == 0 and flag in helped.output and "--model" in helped.output


@pytest.mark.parametrize("flag,value", [("--fps", "0"), ("--fps", "-3"), ("--false-reject-rate", "5")])
def test_demo_refuses_an_impossible_line_before_any_work(tmp_path, monkeypatch, flag, value):
    """--fps 0 was refused only after minutes of training, evaluation and building."""
    from typer.testing import CliRunner

    import fair_edge.demo.run as demo_run
    from fair_edge.cli import app

    started = []
    monkeypatch.setattr(demo_run, "run_demo", lambda *a, **k: started.append(1))
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), flag, value])
    assert r.exit_code == 2 and f"{flag} must be" in " ".join(r.output.split()), r.output
    assert started == [] and not (tmp_path / "demo").exists()


def test_a_dropped_part_has_a_null_score_and_the_report_is_strict_json(tmp_path):
    """demo_report.json had ``"score": NaN`` for every dropped part (no JSON for JSON.parse, jq, Go)."""
    verdicts = [{"seq": 0, "t_capture": 10.0, "t_verdict": 10.1, "ng": True, "score": 0.9, "source": "000_defect_a.png"},
                {"seq": 1, "t_capture": 10.1, "t_verdict": 10.1, "inspected": False, "source": "001_defect_b.png"}]
    rows = match_pulses(verdicts, [10.4], travel_ms=400, late_ms=10)
    assert [r["score"] for r in rows] == [0.9, None]
    from fair_edge.demo.run import write_report

    write_report({"parts": rows, "eval": {"auroc": float("nan")}}, tmp_path / "demo_report.json")

    def strict(token):
        raise ValueError(f"not JSON: {token}")

    report = json.loads((tmp_path / "demo_report.json").read_text(), parse_constant=strict)
    assert [r["score"] for r in report["parts"]] == [0.9, None] and report["eval"] == {"auroc": None}

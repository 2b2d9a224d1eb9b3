"""benchmarks/soak.py, CI-sized: 30 s of line with every fault of the schedule injected once."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("pymodbus")

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module   # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_fault_plan_repeats_the_schedule_each_window():
    soak = load_soak()
    plan = soak.fault_plan(minutes=1.0, window_s=30.0)
    assert len(plan) == 2 * 2 * len(soak.FAULT_SCHEDULE)
    assert [name for _, name, on in plan if on][:len(soak.FAULT_SCHEDULE)] == [f[0] for f in soak.FAULT_SCHEDULE]
    assert all(t < 60.0 for t, _, on in plan if on)


def test_soak_smoke_loses_no_verdict_and_leaks_nothing(tmp_path, capsys):
    soak = load_soak()
    code = soak.main(["--minutes", "0.5", "--window-min", "0.5", "--fps", "10", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "soak_report.json").read_text())
    assert report["faults_injected"] == len(soak.FAULT_SCHEDULE)
    assert report["frames_in"] > 100 and report["verdicts_lost"] == 0
    assert report["malformed_injected"] >= 1 and report["lost_by_camera"] >= 1   # the faults really happened
    assert report["malformed"] <= report["malformed_injected"]
    assert report["recorder"]["images_skipped"] >= 1                           # disk guard tripped
    before, after = report["process"]["before"], report["process"]["after"]
    assert after["open_fds"] <= before["open_fds"] and after["threads"] <= before["threads"]
    p = report["pulses"]
    assert p["on_time"] > 0 and p["on_time"] + p["late_edge"] + p["sink_missed"] + p["unaccounted"] == p["due"]
    assert "| verdicts lost (captured, no log row) | 0 |" in capsys.readouterr().out
    assert code == (0 if p["unaccounted"] == 0 and p["stray"] == 0 else 1)

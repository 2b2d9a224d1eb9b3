"""benchmarks/soak.py, CI-sized: 30 s of line with every fault of the schedule injected once, parts triggered
by a PLC over the Modbus handshake at half the rate measured first."""

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
    code = soak.main(["--minutes", "0.5", "--window-min", "0.5", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "soak_report.json").read_text())
    assert report["faults_injected"] == len(soak.FAULT_SCHEDULE)
    assert report["frames_in"] > 100 and report["verdicts_lost"] == 0
    assert report["malformed_injected"] >= 1   # the faults really happened (the camera's: see the handshake below)
    assert report["malformed"] <= report["malformed_injected"]
    assert report["recorder"]["images_skipped"] >= 1                           # disk guard tripped
    before, after = report["process"]["before"], report["process"]["after"]
    assert after["open_fds"] <= before["open_fds"] and after["threads"] <= before["threads"]
    p = report["pulses"]
    accounted = p["on_time"] + p["late_edge"] + p["sink_missed"]   # an unconfirmed write may or may not show an edge
    assert accounted <= p["due"] <= accounted + p["sink_unconfirmed"] + p["unaccounted"]
    # the station's own account of its pulses (how close to due they land is the soak's edge_error_ms, a benchmark)
    (sink,) = report["sinks"].values()
    rejects = report["rejects"]
    assert sink["pulses"] == rejects["fired"] == rejects["rejected_ng"] + rejects["rejected_uninspected"] > 0
    assert sink["delivered"] + sink["missed"] + sink.get("unconfirmed", 0) + sink["dropped"] == sink["pulses"]
    assert (rejects["sink_missed"], rejects["sink_late_writes"]) == (sink["missed"], sink["late_writes"])
    assert rejects.get("sink_unconfirmed", 0) == sink.get("unconfirmed", 0) and sink["delivered"] > 0
    assert report["submit_ms"]["n"] == rejects["verdicts"]
    out = capsys.readouterr().out
    assert "| verdicts lost (captured, no log row) | 0 |" in out
    assert p["edge_error_ms"]["n"] >= p["on_time"]
    hs, rate = report["handshake"], report["rate"]
    assert rate["measured_parts_per_s"] == min(rate["inspection_parts_per_s"], soak.GATE_RATE)   # what the line sustains
    assert rate["run_parts_per_s"] == pytest.approx(0.5 * rate["measured_parts_per_s"])   # measured, then half
    plc, station = hs["plc"], hs["station"]
    assert plc["answered"] > 100 and plc["duplicates"] == 0 and plc["unknown"] == 0 and plc["in_order"]
    assert plc["answered"] + plc["missing"] == plc["triggered"]
    assert plc["missing"] <= station["expired"] + 1      # a part without a result timed out: never answered late
    assert sum(plc["results"].values()) == plc["answered"] and plc["results"]["3"] >= 1   # faults: not inspected
    assert plc["late_triggers"] >= 1    # camera unplugged: Ready dropped and the PLC held its triggers
    assert plc["trigger_to_result_ms"]["n"] == plc["answered"] and plc["ack_round_trip_ms"]["n"] >= 1
    assert "| parts triggered / answered / missing / duplicates / in order |" in out
    assert "python benchmarks/soak.py --minutes 30" in out
    ok = p["unaccounted"] == 0 and p["stray"] == 0 and plc["duplicates"] == 0 and plc["in_order"]
    assert code == (0 if ok else 1)

"""A station whose reject section drives only ``reject.fault_sinks`` (a stack light, no reject output) gates no part.
Its gate was handed every part and verdict as if it rejected them: ``fair_edge_reject_total{event="rejected_ng"}``,
``"fired"``, summary.json's ``rejects`` and gate.jsonl counted NG parts rejected with no output to reject them, and at
its unchecked ``delay_ms`` 0 every part was ``passed_uninspected`` (with ``fail_safe: alarm``, latching the lamp on).
Now such a gate holds the fault output only: no part is noted or decided there, and /metrics exports its fault sinks'
counters as ``fair_edge_fault_output_total{event}``, no ``fair_edge_reject_*`` series (as a lane station's own gate).
The line side is opened as a station opens it (``open_line_side``, ``open_cell_line``) and driven by hand."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from test_metrics_consumers import WAIT_S, cell_config, samples  # noqa: E402

from fair_edge.line.settings import MetricsSettings, RecordSettings, RejectSettings  # noqa: E402
from fair_edge.records import Frame, Verdict  # noqa: E402
from fair_edge.station.config import ConsoleSettings, StationConfig  # noqa: E402
from fair_edge.station.views import GroupSettings, ViewSettings  # noqa: E402

FAULT_ONLY = RejectSettings(fault_sinks=("log://lamp",), fail_safe="alarm")   # delay_ms left at its default, 0


def families(scraped: dict) -> set[str]:
    return {name for name, _ in scraped}


def assert_gates_no_part(gate, scraped: dict) -> None:
    """The gate noted, decided and alarmed nothing; /metrics names it by what it drives."""
    assert gate.wait_idle(WAIT_S)
    stats = gate.stats()
    assert (stats["captured"], stats["verdicts"], stats["rejected_ng"], stats["fired"], stats["passed_uninspected"],
            stats["alarms"]) == (0, 0, 0, 0, 0, 0), stats
    assert gate.fault_reason is None
    assert not {name for name in families(scraped) if name.startswith("fair_edge_reject")}, families(scraped)
    fault_output = {dict(labels)["event"] for name, labels in scraped if name == "fair_edge_fault_output_total"}
    assert fault_output and all(event.startswith("sink_") for event in fault_output), fault_output


def test_a_one_camera_station_with_only_fault_sinks_rejects_no_part_and_exports_no_reject_gate(tmp_path):
    """Three parts, two NG, each verdict 30 ms after its capture (past delay_ms 0 + late_ms 10): none is noted at the
    gate, none counted rejected or passed uninspected, no gate.jsonl row; a station fault still lights the lamp."""
    from fair_edge.station.line_side import open_line_side

    cfg = StationConfig(console=ConsoleSettings(enabled=False), output=tmp_path / "out",
                        record=RecordSettings(dir=tmp_path / "out", save_ng_images=False), reject=FAULT_ONLY,
                        metrics=MetricsSettings(enabled=True, port=0)).checked()
    with contextlib.ExitStack() as stack:
        line = open_line_side(cfg, stack, "run-lamp")
        hooks = line.capture_hooks()
        for seq, ng in enumerate((True, False, True)):
            frame = Frame(seq, time.monotonic() - 0.03, np.zeros((4, 4, 3), np.uint8))
            if "on_capture" in hooks:   # as the capture thread calls it
                hooks["on_capture"](frame)
            for callback in line.callbacks:   # as the inspector calls them
                callback(frame, Verdict(seq, frame.t_capture, 0.9 if ng else 0.1, 0.5, ng, time.monotonic()), None)
        assert_gates_no_part(line.scheduler, samples(line.metrics))
        line.fault(True, "camera gone")
        assert line.scheduler.fault_reason == "camera gone"   # the lamp still shows the station's faults
    assert not (tmp_path / "out" / "gate.jsonl").exists()


def test_a_part_cell_with_only_fault_sinks_hands_its_gate_no_part(tmp_path):
    """Two cameras, parts matched by sequence, one NG part of two views: the cell's gate is handed no part."""
    from fair_edge.station.cell_line import open_cell_line

    cameras = (ViewSettings("top", "unused-top", fps=10), ViewSettings("left", "unused-left", fps=10))
    cfg = cell_config(tmp_path, cameras, GroupSettings(by="part", match="sequence"), FAULT_ONLY)
    with contextlib.ExitStack() as stack:
        cell = open_cell_line(cfg, stack, "run-cell-lamp")
        for name in ("top", "left"):
            frame = Frame(0, time.monotonic() - 0.03, np.zeros((4, 4, 3), np.uint8), camera=name)
            cell.hooks(name)["on_capture"](frame)
            for callback in cell.line.callbacks:
                callback(frame, Verdict(0, frame.t_capture, 9.0, 1.0, True, time.monotonic(), camera=name), None)
        assert cell.assembler.stats["parts"] == cell.assembler.stats["ng"] == 1   # the part was decided NG ...
        assert_gates_no_part(cell.line.scheduler, samples(cell.line.metrics))   # ... and rejected by nothing

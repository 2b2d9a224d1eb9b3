"""A station whose reject section drives only ``reject.fault_sinks`` (a fault lamp, no reject output) decides every part
at its gate, so ``fail_safe: alarm`` latches the lamp for a part not inspected (an error verdict, a dropped frame), as
line-integration.md's "The gate decides every part" promises; and it counts what happened: an NG part it cannot reject
is ``passed_ng``, never ``rejected_ng`` or ``fired``.

Before: ff5fbe5 handed such a gate no part at all (no alarm, no lamp, "passed uninspected 0"); before that, NG parts
were counted ``rejected_ng`` and ``fired`` with no output to fire. Its ``delay_ms`` 0 (every part past the gate before
its verdict) is refused at start, as for a gate with a reject output (``check_reject_timing``).
The line side is opened as a station opens it (``open_line_side``, ``open_cell_line``) and driven by hand; the due
times are 1.5 s after capture and each verdict is handed in right after its capture (``wait_idle`` bounds the wait)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from test_metrics_consumers import WAIT_S, cell_config, samples  # noqa: E402

from fair_edge.errors import ConfigError  # noqa: E402
from fair_edge.line.settings import MetricsSettings, RecordSettings, RejectSettings  # noqa: E402
from fair_edge.records import Frame, Verdict  # noqa: E402
from fair_edge.station.config import ConsoleSettings, StationConfig  # noqa: E402
from fair_edge.station.views import GroupSettings, ViewSettings  # noqa: E402

DELAY_MS = 1500.0   # camera -> gate: the verdicts, handed in at once, are in long before


def lamp_only(fail_safe: str = "alarm", delay_ms: float = DELAY_MS) -> RejectSettings:
    return RejectSettings(fault_sinks=("log://lamp",), fail_safe=fail_safe, delay_ms=delay_ms)


def station(tmp_path, reject: RejectSettings) -> StationConfig:
    return StationConfig(console=ConsoleSettings(enabled=False), output=tmp_path / "out",
                         record=RecordSettings(dir=tmp_path / "out", save_ng_images=False), reject=reject,
                         metrics=MetricsSettings(enabled=True, port=0)).checked()


def frame(seq: int, camera: str = "") -> Frame:
    return Frame(seq, time.monotonic(), np.zeros((4, 4, 3), np.uint8), camera=camera)


def verdict(f: Frame, ng: bool, error: str | None = None) -> Verdict:
    score = None if error else (0.9 if ng else 0.1)
    return Verdict(f.seq, f.t_capture, score, 0.5, ng, time.monotonic(), error=error, camera=f.camera)


def reject_series(scraped: dict) -> dict[str, float]:
    return {dict(labels)["event"]: value for (name, labels), value in scraped.items()
            if name == "fair_edge_reject_total"}


def drive_one_camera(line) -> None:
    """Part 0 OK, part 1 NG, part 2 an inference-error verdict, part 3 dropped at the capture queue."""
    hooks = line.capture_hooks()
    note = hooks.get("on_capture", lambda f: None)   # none where the gate decides no part
    for seq, ng, error in ((0, False, None), (1, True, None), (2, True, "inference failed: CUDA error")):
        f = frame(seq)
        note(f)   # as the capture thread calls it
        for callback in line.callbacks:   # as the inspector calls them
            callback(f, verdict(f, ng, error), None)
    dropped = frame(3)
    note(dropped)
    hooks["on_drop"](dropped)


def test_a_lamp_only_gate_latches_the_alarm_for_parts_not_inspected_and_counts_ng_parts_passed(tmp_path):
    from fair_edge.cli.run import reject_rows
    from fair_edge.station.line_side import open_line_side

    with contextlib.ExitStack() as stack:
        line = open_line_side(station(tmp_path, lamp_only()), stack, "run-lamp")
        drive_one_camera(line)
        assert line.scheduler.wait_idle(WAIT_S)
        stats = line.scheduler.stats()
        assert {k: stats[k] for k in ("captured", "passed", "passed_ng", "passed_uninspected", "alarms",
                                      "rejected_ng", "rejected_uninspected", "fired")} == {
            "captured": 4, "passed": 1, "passed_ng": 1, "passed_uninspected": 2, "alarms": 2,
            "rejected_ng": 0, "rejected_uninspected": 0, "fired": 0}, stats
        reason = line.fault_reason()   # the lamp, STATUS, MQTT: latched until the operator acknowledges
        assert "passed the gate uninspected (verdict error: inference failed: CUDA error)" in reason, reason
        assert "seq 1, 2" not in reason and "seq 2, 3" in reason, reason
        assert line.scheduler.to_acknowledge == line.scheduler.fault_reason
        series = reject_series(samples(line.metrics))
        assert (series["passed_ng"], series["passed_uninspected"], series["rejected_ng"], series["fired"]) == (
            1, 2, 0, 0), series
        rows = dict(reject_rows(line.reject_stats()))   # the live table's and the summary's rows
        assert rows["NG parts passed: no reject output (passed_ng)"] == 1
        assert rows["passed uninspected / late verdicts"] == "2 / 0"
        assert not [label for label in rows if "rejects" in label or "pulses" in label], rows
    gate_rows = [json.loads(text) for text in (tmp_path / "out" / "gate.jsonl").read_text().splitlines()]
    assert [(row["seq"], row["gate"]) for row in gate_rows if row["event"] == "gate"] == [
        (0, "passed"), (1, "passed_ng"), (2, "passed_uninspected"), (3, "passed_uninspected")]


def test_with_fail_safe_reject_a_lamp_only_gate_still_latches_the_alarm(tmp_path):
    """No reject output: a part not inspected cannot be rejected, so it passes with the lamp latched, not silently."""
    from fair_edge.station.line_side import open_line_side

    with contextlib.ExitStack() as stack:
        line = open_line_side(station(tmp_path, lamp_only("reject")), stack, "run-lamp-reject")
        drive_one_camera(line)
        assert line.scheduler.wait_idle(WAIT_S)
        stats = line.scheduler.stats()
        assert (stats["passed_uninspected"], stats["alarms"], stats["rejected_uninspected"], stats["fired"]) == (
            2, 2, 0, 0), stats
        assert "passed the gate uninspected (no reject output)" in line.scheduler.fault_reason


def test_a_part_cell_with_only_fault_sinks_latches_the_alarm_for_a_part_missing_a_view(tmp_path):
    """Two cameras, parts matched by sequence: part 0 OK, part 1 NG, part 2's top frame dropped."""
    from fair_edge.station.cell_line import open_cell_line

    cameras = (ViewSettings("top", "unused-top", fps=10), ViewSettings("left", "unused-left", fps=10))
    cfg = cell_config(tmp_path, cameras, GroupSettings(by="part", match="sequence"), lamp_only())
    with contextlib.ExitStack() as stack:
        cell = open_cell_line(cfg, stack, "run-cell-lamp")
        for seq, ng in ((0, False), (1, True), (2, False)):
            for name in ("top", "left"):
                f = frame(seq, name)
                cell.hooks(name)["on_capture"](f)
                if (seq, name) == (2, "top"):
                    cell.hooks(name)["on_drop"](f)
                    continue
                for callback in cell.line.callbacks:
                    callback(f, verdict(f, ng), None)
        gate = cell.line.scheduler
        assert gate.wait_idle(WAIT_S)
        stats = gate.stats()
        assert (stats["passed"], stats["passed_ng"], stats["passed_uninspected"], stats["alarms"],
                stats["rejected_ng"], stats["fired"]) == (1, 1, 1, 1, 0, 0), stats
        assert "part seq 2 passed the gate uninspected" in gate.fault_reason, gate.fault_reason
        series = reject_series(samples(cell.line.metrics))
        assert (series["passed_ng"], series["rejected_ng"]) == (1, 0), series


@pytest.mark.parametrize("fail_safe", ["alarm", "reject"])
def test_a_lamp_only_gate_at_delay_0_is_refused_naming_reject_delay_ms(tmp_path, fail_safe):
    """At delay_ms 0 the gate sits at the camera: every part would pass uninspected with the lamp latched."""
    from fair_edge.station.run import check_reject_timing

    cfg = station(tmp_path, lamp_only(fail_safe, delay_ms=0))
    with pytest.raises(ConfigError, match=r"reject\.delay_ms: .* found 0 .*pass uninspected.*--reject-delay-ms"):
        check_reject_timing(cfg, timed_source=True)
    check_reject_timing(station(tmp_path, lamp_only(fail_safe)), timed_source=True)   # a travel time: started


def test_a_lamp_only_gate_on_a_handshake_station_starts_at_delay_0_and_decides_no_part(tmp_path):
    """The PLC rejects from the handshake's results (a part not inspected is answered 3): the lamp's gate decides no
    part, so no travel time is asked for, no part latches the lamp and no part counter is shown. Before: refused at
    start (reject.delay_ms 0), though line-integration.md describes this layout; with a delay, every part not
    inspected latched the lamp beside the PLC's answer."""
    from test_metrics_consumers import dead_port

    from fair_edge.cli.run import reject_rows
    from fair_edge.line.handshake.settings import HandshakeSettings
    from fair_edge.station.line_side import open_line_side
    from fair_edge.station.run import check_reject_timing

    plc = HandshakeSettings(url=f"modbus://127.0.0.1:{dead_port()}")
    cfg = station(tmp_path, dataclasses.replace(lamp_only(delay_ms=0), handshake=plc))
    check_reject_timing(cfg, timed_source=True)   # started
    with contextlib.ExitStack() as stack:
        line = open_line_side(cfg, stack, "run-hs-lamp")
        assert "on_capture" not in line.capture_hooks()
        drive_one_camera(line)
        assert line.scheduler.wait_idle(WAIT_S)
        assert (line.scheduler.stats()["captured"], line.scheduler.stats()["alarms"]) == (0, 0)
        assert line.scheduler.fault_reason is None
        stats = line.reject_stats()
        assert stats["decides_parts"] is False and "passed_uninspected" not in stats, stats
        rows = dict(reject_rows(stats))
        assert not [label for label in rows if "uninspected" in label or "passed_ng" in label], rows
        assert not reject_series(samples(line.metrics)), "no part counters on /metrics for a gate deciding none"


def test_a_lamp_only_part_cell_on_the_handshake_starts_at_delay_0_and_its_parts_wait_for_the_plc(tmp_path):
    """by: part, match: handshake, a fault lamp alone: started (before: refused, reject.delay_ms 0); a part waits
    half the PLC's result timeout for its views, and the assembler has no gate due time."""
    from fair_edge.line.handshake.settings import HandshakeSettings
    from fair_edge.station.cell import check_cameras
    from fair_edge.station.cell_timing import part_due_s, part_timeout_s

    cameras = (ViewSettings("top", "unused-top", fps=10), ViewSettings("left", "unused-left", fps=10))
    reject = dataclasses.replace(lamp_only(delay_ms=0), handshake=HandshakeSettings(url="modbus://127.0.0.1:1"))
    cfg = cell_config(tmp_path, cameras, GroupSettings(by="part", match="handshake"), reject)
    check_cameras(cfg)
    assert part_timeout_s(cfg) == pytest.approx(min(1.0, reject.handshake.result_timeout_ms / 2000))
    assert part_due_s(cfg, gated=True, by_count=False) == float("inf")


def test_a_lamp_only_part_cell_holds_part_timeout_ms_to_the_travel_time(tmp_path):
    """A lamp-only gate decides parts at delay_ms like one with a reject output: part_timeout_ms past it is refused
    (the gate would decide parts still waiting for views), unset it is the due time, and the assembler's due time is
    the gate's. Before: part_timeout_s and part_due_s looked at reject.sinks only (started; due time inf)."""
    from fair_edge.station.cell_timing import part_due_s, part_timeout_s

    cameras = (ViewSettings("top", "unused-top", fps=10), ViewSettings("left", "unused-left", fps=10))
    slow = cell_config(tmp_path, cameras, GroupSettings(by="part", match="sequence", part_timeout_ms=2000),
                       lamp_only(delay_ms=400))
    with pytest.raises(ConfigError, match=r"group\.part_timeout_ms: expected at most reject\.delay_ms \(400\), "
                                          r"found 2000"):
        part_timeout_s(slow)
    unset = dataclasses.replace(slow, group=GroupSettings(by="part", match="sequence"))
    assert part_timeout_s(unset) == pytest.approx(0.4)
    assert part_due_s(unset, gated=True, by_count=False) == pytest.approx((400 + unset.reject.late_ms) / 1000)


def test_a_lamp_only_part_cell_left_at_delay_0_starts_and_decides_each_part_as_it_is_handed_over(tmp_path):
    """A part cell with a fault lamp alone at the default delay_ms 0 worked before 0718de0 (its gate decides each part
    when the cell hands it over with its views) and was refused at start by it: it starts again, its parts wait
    for their views as a cell without a timed gate (NO_GATE_TIMEOUT_S) and have no due time."""
    from fair_edge.station.cell import check_cameras
    from fair_edge.station.cell_timing import NO_GATE_TIMEOUT_S, part_due_s, part_timeout_s

    cameras = (ViewSettings("top", "unused-top", fps=10), ViewSettings("left", "unused-left", fps=10))
    cfg = cell_config(tmp_path, cameras, GroupSettings(by="part", match="sequence"), lamp_only(delay_ms=0.0))
    check_cameras(cfg)
    assert part_timeout_s(cfg) == NO_GATE_TIMEOUT_S
    assert part_due_s(cfg, gated=True, by_count=False) == float("inf")

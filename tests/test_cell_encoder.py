"""A cell whose views are matched by belt count (``group.match: encoder``), wired as a station wires it
(``open_cell_line``: the part assembler notes each part at the reject gate, the gate follows the encoder). The
encoder is a counter the test moves and the assembler's sweeps run on fake times (``sweep(now=...)``): every bound
is the belt's count or the fake clock's, none hopes the machine is idle. The gate's own thread decides each part when
it sees the count; a test waits for it (``wait_idle``), as a station does at its stop.

Camera ``up`` at offset 0, camera ``down`` 4000 counts further on, the gate 8400 counts after ``up``."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from fair_edge.records import Frame, Verdict
from fair_edge.station.cell_line import open_cell_line
from fair_edge.station.cell_timing import NO_GATE_TIMEOUT_S, part_timeout_s
from fair_edge.station.config import StationConfig
from fair_edge.station.parts import PartAssembler
from line_replay import RecordingSink

DOWN_OFFSET, DISTANCE, WINDOW = 4000, 8400, 50


class Belt:
    """The belt counter the station's encoder URL opens to (``open_encoder`` patched): the test sets ``at``, and
    ``down`` for a link outage (``mark()`` has no position, the count is held)."""

    def __init__(self) -> None:
        self.at = 0
        self.down = False

    def count(self) -> int:
        return self.at

    def mark(self) -> tuple[int | None, int]:
        return (None if self.down else self.at), 0

    def start(self) -> "Belt":
        return self

    def close(self, timeout_s: float = 0.0) -> None:
        pass


def station(tmp_path, part_timeout_ms: float | None = None, gate: bool = True) -> StationConfig:
    reject = {"encoder": "modbus://127.0.0.1:5020?register=10", "pulse_ms": 10, "min_gap_ms": 5, "late_ms": 10,
              "encoder_poll_ms": 1}
    if gate:
        reject.update(sinks=["log://"], encoder_distance=DISTANCE)
    return StationConfig.from_dict({
        "output": str(tmp_path / "out"), "reject": reject,
        "cameras": [{"name": "up", "source": "0"}, {"name": "down", "source": "1", "offset_counts": DOWN_OFFSET}],
        "group": {"by": "part", "match": "encoder", "window_counts": WINDOW, "part_timeout_ms": part_timeout_ms}})


class EncoderCell:
    """``open_cell_line`` on the test's belt, its reject output a ``RecordingSink`` (pulses with the count each part
    was noted at: the gate decides it at that count + ``encoder_distance``); ``rows``: every part row."""

    def __init__(self, cfg: StationConfig, monkeypatch, stack: contextlib.ExitStack) -> None:
        import fair_edge.line.encoder_links as encoder_links
        import fair_edge.line.gate_sinks as gate_sinks

        self.belt, self.pulses, self.rows = Belt(), RecordingSink(), []
        monkeypatch.setattr(encoder_links, "open_encoder", lambda url: self.belt)
        monkeypatch.setattr(gate_sinks, "open_fanout", lambda urls, pulse_ms, report, name:
                            self.pulses if name == "rejects" else RecordingSink(name))
        self.cell = open_cell_line(cfg, stack, "run")
        self.cell.part_listeners.append(lambda verdict, row: self.rows.append(row))
        self.assembler, self.gate = self.cell.assembler, self.cell.line.scheduler

    def capture(self, camera: str, seq: int, count: int, t: float) -> None:
        """``camera`` takes frame ``seq`` with the belt at ``count``, at fake time ``t`` (s)."""
        self.belt.at = count
        self.cell.hooks(camera)["on_capture"](Frame(seq, t, np.zeros(1)))

    def inspected(self, camera: str, seq: int, ng: bool = False) -> None:
        self.assembler.on_verdict(None, Verdict(seq, 0.0, 0.9 if ng else 0.1, 0.5, ng, 0.0, camera=camera))

    def sweep(self, count: int, t: float) -> None:
        """The inspection loop's sweep with the belt at ``count`` at fake time ``t``."""
        self.belt.at = count
        self.assembler.sweep(now=t)

    def run_out(self) -> list[tuple[int, int]]:
        """Move the belt past every gate count, wait for the gate; (part, count noted) of every pulse."""
        self.belt.at = 100_000
        assert self.gate.wait_idle(10.0)   # a wait, not a bound: the gate's thread decides at the count it sees
        return [(event.seq, event.count) for _, event in self.pulses.pulses]


@pytest.fixture
def stack():
    with contextlib.ExitStack() as s:
        yield s


# ------------------------------------------------------------------------------------- when a part closes (item 3)
def test_an_encoder_cells_part_waits_for_its_downstream_view_however_long_the_belt_takes(tmp_path, monkeypatch,
                                                                                       stack):
    """part_timeout_ms unset: a part closes at its gate's count, not after a time. The belt stops for a minute
    between the cameras: the part stays open and its downstream view completes it: one good part, no pulse (it was
    closed after 1 s, the downstream view missing: a fail-safe reject of a good part)."""
    cell = EncoderCell(station(tmp_path), monkeypatch, stack)
    cell.capture("up", 0, 1000, t=100.0)
    cell.inspected("up", 0)
    cell.sweep(1000, t=160.0)                                # the belt stood still a minute
    cell.sweep(4999, t=161.0)
    assert cell.rows == []                                   # still waiting for down
    cell.capture("down", 0, 1000 + DOWN_OFFSET, t=162.0)
    cell.inspected("down", 0)
    (row,) = cell.rows
    assert (row["part"], row["ng"], row["inspected"], row["missing"]) == (0, False, True, [])
    assert cell.run_out() == []
    assert cell.assembler.stats == {"parts": 1, "ng": 0, "ok": 1, "not_inspected": 0, "late_views": 0}


def test_an_encoder_cells_part_with_a_view_missing_closes_when_the_belt_reaches_its_gate(tmp_path, monkeypatch,
                                                                                       stack):
    """The part closes (not inspected, ``down`` missing) in the sweep that sees the belt at its gate count, the
    count at which the gate decides it; not a count before, however much time went by."""
    from fair_edge.station.cell_timing import part_close_by_count

    cfg = station(tmp_path)
    assert part_timeout_s(cfg) == float("inf") and part_close_by_count(cfg) == (DISTANCE, 0.0, NO_GATE_TIMEOUT_S)
    cell = EncoderCell(cfg, monkeypatch, stack)
    cell.capture("up", 0, 1000, t=100.0)
    cell.inspected("up", 0)
    cell.sweep(1000 + DISTANCE - 1, t=500.0)
    assert cell.rows == []
    cell.sweep(1000 + DISTANCE, t=500.0)
    (row,) = cell.rows
    assert row["missing"] == ["down"] and not row["inspected"]
    assert cell.run_out() == [(0, 1000)]                     # the gate rejects it fail-safe, at its own count


def test_a_view_after_its_part_closed_is_counted_late_and_opens_no_part(tmp_path, monkeypatch, stack):
    """part_timeout_ms set (time): the part closes before ``down`` sees it. Down's view joins its closed part,
    counted ``late_views``: one fail-safe pulse, on the part. It opened a part of its own, noted at the gate 4000
    counts later and rejected fail-safe there, on whatever part was in front of it."""
    cell = EncoderCell(station(tmp_path, part_timeout_ms=500), monkeypatch, stack)
    cell.capture("up", 0, 1000, t=100.0)
    cell.inspected("up", 0)
    cell.sweep(2000, t=100.5)
    (row,) = cell.rows
    assert row["missing"] == ["down"]
    cell.capture("down", 0, 1000 + DOWN_OFFSET + 10, t=102.0)
    assert cell.assembler.part_of("down", 0) == 0
    cell.inspected("down", 0)
    assert len(cell.rows) == 1
    assert cell.run_out() == [(0, 1000)]
    assert cell.assembler.stats == {"parts": 1, "ng": 1, "ok": 0, "not_inspected": 1, "late_views": 1}


def test_without_a_gate_count_a_part_closes_a_second_after_the_belt_passed_its_furthest_camera(tmp_path):
    """No encoder_distance (no gate to wait for): a part closes NO_GATE_TIMEOUT_S after the belt passed the furthest
    camera's window, never after a time alone, so a stopped belt keeps it open."""
    from fair_edge.station.cell_timing import part_close_by_count

    cfg = station(tmp_path, gate=False)
    close = part_close_by_count(cfg)
    assert close == (DOWN_OFFSET + WINDOW, NO_GATE_TIMEOUT_S, NO_GATE_TIMEOUT_S)
    assert part_timeout_s(cfg) == float("inf")
    belt, rows = Belt(), []
    asm = PartAssembler(["up", "down"], cfg.group, part_timeout_s(cfg), on_part=lambda v, row: rows.append(row),
                        count=belt.count, offsets={"up": 0, "down": DOWN_OFFSET}, close_by_count=close)
    belt.at = 1000
    asm.on_capture("up", Frame(0, 10.0, np.zeros(1)))
    for t in (10.0, 60.0, 600.0):                            # the belt stopped
        asm.sweep(now=t)
    belt.at = 1000 + DOWN_OFFSET + WINDOW
    asm.sweep(now=700.0)                                     # down's window passed: its view gets a second more
    asm.sweep(now=700.0 + NO_GATE_TIMEOUT_S - 0.01)
    assert rows == []
    asm.sweep(now=700.0 + NO_GATE_TIMEOUT_S)
    (row,) = rows
    assert row["missing"] == ["down", "up"]                  # up's frame taken, not inspected; down's never taken


def test_while_the_encoder_has_no_position_an_encoder_cells_parts_close_by_time(tmp_path, monkeypatch, stack):
    """The review's case: the encoder's link is down, its count held at 50000. Each part's views get keys 4000
    apart (held count - camera offset), so they never match: two parts each, and none closed while the count did
    not move (a part closed only when the belt reached its gate count): 600 physical parts left 1200 open, none
    decided, the gate refused parts once its max_pending filled. Now a part closes NO_GATE_TIMEOUT_S after it
    opened while the encoder has no position: the open parts stay bounded (a second of parts) and all are decided
    once the link is back (the gate decides them ``position_lost``: captured with no position)."""
    cell = EncoderCell(station(tmp_path), monkeypatch, stack)
    cell.belt.at, cell.belt.down = 50_000, True
    opened: set[int] = set()
    most_open = 0
    for seq in range(50):                                     # 10 parts/s for 5 s
        t = 100.0 + seq * 0.1
        for camera in ("up", "down"):
            cell.capture(camera, seq, 50_000, t=t)
            opened.add(cell.assembler.part_of(camera, seq))
        cell.assembler.sweep(now=t + 0.05)
        most_open = max(most_open, len(opened) - cell.assembler.stats["parts"])
    assert most_open <= 2 * 11, f"expected at most a second of parts open, found {most_open} of {len(opened)}"
    cell.assembler.sweep(now=105.0 + NO_GATE_TIMEOUT_S)
    assert cell.assembler.stats["parts"] == len(opened) == len(cell.rows) == 100   # two halves of each part
    assert all(not row["inspected"] for row in cell.rows)
    cell.belt.down = False
    assert cell.run_out() == []                               # no position: no pulse on a guessed one
    assert cell.gate.stats()["position_lost"] == 100


# --------------------------------------------------------------------------- where the gate notes a part (item 4)
def test_a_part_first_seen_downstream_is_gated_from_its_count_at_offset_0(tmp_path, monkeypatch, stack):
    """``up`` takes no frame of part 1; ``down`` sees it at 7000, so it passed ``up`` (offset 0) at 3000 and reaches
    the gate at 3000 + 8400. The gate notes it there: its fail-safe pulse is on it (it counted the gate distance from
    down's count, 7000: the pulse landed 4000 counts late, on the part behind, and this one went on unrejected)."""
    cell = EncoderCell(station(tmp_path), monkeypatch, stack)
    cell.capture("up", 0, 1000, t=100.0)
    cell.inspected("up", 0)
    cell.capture("down", 0, 1000 + DOWN_OFFSET, t=101.0)
    cell.inspected("down", 0)
    cell.capture("down", 1, 3000 + DOWN_OFFSET, t=102.0)    # part 1, up missed it
    cell.inspected("down", 1)
    cell.sweep(3000 + DISTANCE, t=103.0)
    assert [(r["part"], r["missing"]) for r in cell.rows] == [(0, []), (1, ["up"])]
    assert cell.run_out() == [(1, 3000)]


@pytest.mark.parametrize("offset", [DISTANCE, DISTANCE + 1])
def test_a_camera_at_or_past_the_reject_gate_is_refused_at_load(tmp_path, offset):
    """A camera whose offset_counts reaches reject.encoder_distance sees its part at or after the gate: it could never
    reject it, so the file is refused, naming the camera, both counts and the fix."""
    from fair_edge.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"cameras \(down\)\.offset_counts: expected less than "
                                          rf"reject\.encoder_distance \({DISTANCE}\), found {offset}"):
        StationConfig.from_dict({
            "output": str(tmp_path / "out"),
            "reject": {"encoder": "modbus://127.0.0.1:5020?register=10", "sinks": ["log://"],
                       "encoder_distance": DISTANCE},
            "cameras": [{"name": "up", "source": "0"}, {"name": "down", "source": "1", "offset_counts": offset}],
            "group": {"by": "part", "match": "encoder"}})
    assert station(tmp_path).cameras[1].offset_counts == DOWN_OFFSET < DISTANCE    # before the gate: accepted

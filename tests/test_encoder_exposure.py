"""Encoder mode places a part where the belt was when its frame was exposed, not when the frame was handed over (a
camera that held a frame, a GigE resend): ``PolledEncoder.mark_at`` answers the count at a frame's ``t_capture`` from
the readings it keeps, and the reject gate and an encoder cell's part assembler use it. Against a PLC counter stepped
by the test on a fake clock (``SteppedBelt``): every reading's time is the test's, however the threads run.

The audit's cases: one frame held 0.1 s at 8000 counts/s was noted 800 counts late (its pulse 200 counts before the
next good part's gate); in an encoder cell the held view opened a phantom part (rejected fail-safe near the next
part's gate) and left its own part without it."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from fair_edge.errors import PlcError
from fair_edge.line.encoder_history import HISTORY_S
from fair_edge.line.encoder_links import open_encoder
from fair_edge.line.encoder_source import mark_at
from fair_edge.line.polled_encoder import PolledEncoder
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.records import Frame, Verdict
from fair_edge.station.config import StationConfig
from line_replay import RecordingSink
from line_servers import wait_for

SPEED = 8000.0        # counts/s
STEP_S = 1 / 64       # s between two of the test's belt steps: 125 counts (a binary fraction: times add up exactly)
STEP = round(SPEED * STEP_S)
T0 = 100.0            # the fake clock at the first reading (count 0)


def at(k: float) -> float:
    """The fake time ``k`` steps after T0 (the belt at count ``k`` x STEP)."""
    return T0 + k * STEP_S


class SteppedBelt:
    """A PLC counter on a fake clock: ``step(t, raw)`` moves both at once. The encoder stamps each reading with
    ``clock()`` before and after ``read()``; on the thread that reads, the three calls see one step (the one the first
    ``clock()`` saw, however the test steps meanwhile), so a reading is never stamped before the step it shows.
    ``reply_lag``: the next readings' replies are taken up this long after the counter was read (a loaded machine);
    ``down``: the link is cut (open and read raise ``PlcError``). reads: good reads served so far."""

    name = "stepped belt"

    def __init__(self, raw: int = 0, t: float = 100.0) -> None:
        self.t, self.raw, self.down, self.reads, self.reply_lag = t, raw, False, 0, 0.0
        self._lock = threading.Lock()
        self._own = threading.local()   # this thread's read in flight: the step it saw, then the reply's time

    def step(self, t: float, raw: int) -> None:
        with self._lock:
            self.t, self.raw = t, raw

    def clock(self) -> float:
        with self._lock:
            reply = getattr(self._own, "reply", None)
            if reply is not None:            # right after read(): when its reply was taken up
                self._own.reply = None
                return reply
            self._own.seen = (self.t, self.raw)
            return self.t

    def read(self) -> int:
        with self._lock:
            seen, self._own.seen = getattr(self._own, "seen", None) or (self.t, self.raw), None
            if self.down:
                raise PlcError("stepped belt: read timed out")
            self.reads += 1
            self._own.reply = seen[0] + self.reply_lag
            return seen[1]

    def open(self) -> None:
        if self.down:
            raise PlcError("stepped belt: connect refused")

    def close(self) -> None:
        pass


def settle(belt: SteppedBelt) -> None:
    """Wait until the encoder has taken the belt's current step (two good reads later). A wait, not a bound."""
    first = belt.reads
    assert wait_for(lambda: belt.reads >= first + 2, 10.0), "the encoder thread stopped reading"


def run_belt(belt: SteppedBelt, raw: int, t: float, until_t: float, bits: int = 32,
             step_s: float = STEP_S) -> tuple[int, float]:
    """Move the belt at SPEED in ``step_s`` steps, each read by the encoder, up to fake time ``until_t``; (raw, t)."""
    while t < until_t:
        raw, t = (raw + round(SPEED * step_s)) % (1 << bits), t + step_s
        belt.step(t, raw)
        settle(belt)
    return raw, t


def encoder(belt: SteppedBelt, bits: int = 32) -> PolledEncoder:
    return PolledEncoder(belt, bits, 0.001, clock=belt.clock)


# ------------------------------------------------------------------------------------------------ mark_at itself
def test_mark_at_interpolates_between_the_readings_around_a_time_also_over_a_wrap():
    """16-bit counter wrapping between two readings: the count at a time between them is interpolated on the
    unwrapped count; at a reading's own time it is that reading's."""
    belt = SteppedBelt(65_000, T0)
    with encoder(belt, bits=16) as enc:
        settle(belt)
        run_belt(belt, 65_000, T0, at(16), bits=16)                # 2000 counts: over the wrap at 65536
        assert enc.stats()["wraps"] == 1
        assert mark_at(enc, at(8)) == (1000, 0)
        assert mark_at(enc, at(8.4)) == (1050, 0)                  # between the readings at steps 8 and 9
        assert mark_at(enc, at(4.4)) == (550, 0)                   # over the wrap (raw 65500 -> 89)
        assert mark_at(enc, T0) == (0, 0)


def test_a_time_after_the_newest_reading_is_extrapolated_by_the_belt_speed():
    belt = SteppedBelt(0, T0)
    with encoder(belt) as enc:
        settle(belt)
        run_belt(belt, 0, T0, at(16))                              # count 2000
        assert mark_at(enc, at(16.4)) == (2050, 0)
        assert mark_at(enc, at(16) + 0.3) == (None, 0)             # past stale_s (0.25 s): a read hanging


def test_a_reply_taken_up_late_is_stamped_when_the_counter_was_read():
    """A loaded machine: the poll thread takes each reply up 60 ms after the PLC read its counter. Stamped when it
    was taken up, a reading made the counts near it 480 counts short (the audit's probe: views of one part keyed up
    to 650 counts apart under load); it is stamped when its request went out + half the shortest round trip seen."""
    belt = SteppedBelt(0, T0)
    with encoder(belt) as enc:
        settle(belt)
        raw, t = run_belt(belt, 0, T0, at(16))
        belt.reply_lag = 0.06
        run_belt(belt, raw, t, at(24))
        assert mark_at(enc, at(20)) == (2500, 0), "expected the count the belt was at, not 480 short"
        assert mark_at(enc, at(22.4)) == (2800, 0)


def test_a_time_when_the_link_was_down_or_before_the_readings_kept_has_no_position():
    """Between the last reading before a link outage and the first after it the belt went unseen: no count (the gate
    decides such a part ``position_lost``). Before the oldest reading kept: no count either (a guess from the oldest
    would place the part further on, on another part), counted ``before_history``; within a poll's lag of it, its
    count."""
    belt = SteppedBelt(0, T0)
    with encoder(belt) as enc:
        settle(belt)
        raw, t = run_belt(belt, 0, T0, at(8))                      # count 1000
        belt.down = True
        assert wait_for(lambda: enc.stats()["read_errors"] > 0, 10.0)
        belt.step(at(12), raw + 4 * STEP)                          # the belt moves on unseen
        belt.down = False
        assert wait_for(lambda: enc.fault_reason is None, 10.0)
        settle(belt)
        assert enc.count() == 1500
        assert mark_at(enc, at(10)) == (None, 0)
        assert mark_at(enc, at(4)) == (500, 0)
        assert mark_at(enc, T0 - enc.fresh_s / 2) == (0, 0)
        assert mark_at(enc, T0 - 1.0) == (None, 0)
        assert enc.stats()["before_history"] == 1
        run_belt(belt, raw + 4 * STEP, at(12), at(12) + HISTORY_S + 0.5, step_s=0.25)
        assert mark_at(enc, at(4)) == (None, 0) and enc.stats()["before_history"] == 2


# --------------------------------------------------------------------------------------------- the reject gate
def test_a_frame_held_before_it_was_handed_over_is_noted_where_it_was_exposed():
    """The audit's single-camera case: an NG part exposed at count 1000 is handed over about 0.1 s later (the belt at
    1750). It was noted at 1750: its pulse 750 counts late, near the next part's gate; now at 1000, pulsed at its
    own gate."""
    belt = SteppedBelt(0, T0)
    sink, rows = RecordingSink(), []
    settings = RejectSettings(encoder_distance=4000, pulse_ms=10, min_gap_ms=5, late_ms=10, encoder_poll_ms=1)
    enc = encoder(belt)
    with enc, RejectScheduler(settings, sinks=sink, fault_sinks=RecordingSink("fault"), encoder=enc,
                              on_part=rows.append) as gate:
        settle(belt)
        raw, t = run_belt(belt, 0, T0, at(14))                     # exposed at step 8, handed over at step 14
        noted = gate.note_capture(1, t_capture=at(8))
        assert noted == 1000, f"expected the count at exposure (1000), found {noted} (the count at hand-over: 1750)"
        assert gate.submit(Verdict(1, at(8), 0.9, 0.5, True, at(14))) == "scheduled"
        run_belt(belt, raw, t, at(48))                             # count 6000: past its gate (5000)
        assert gate.wait_idle(10.0)
    assert [(event.seq, event.count) for _, event in sink.pulses] == [(1, 1000)]


# ---------------------------------------------------------------------------------------------- an encoder cell
@pytest.fixture
def stack():
    with contextlib.ExitStack() as s:
        yield s


def test_an_encoder_cells_held_view_joins_its_part_by_the_count_at_its_capture(tmp_path, monkeypatch, stack):
    """The audit's cell case: ``down`` (4000 counts on) exposes part 0 at count 5000 and hands it over about 0.1 s
    later, the belt 750 counts on. Keyed by the count at hand-over it matched no part: a phantom part (rejected
    fail-safe, its views missing, near the next part's gate) and part 0 without it. Now it joins part 0: one part,
    both views."""
    import fair_edge.line.encoder_links as encoder_links
    import fair_edge.line.gate_sinks as gate_sinks
    from fair_edge.station.cell_line import open_cell_line

    belt, pulses, rows = SteppedBelt(0, T0), RecordingSink(), []
    monkeypatch.setattr(encoder_links, "open_encoder", lambda url: encoder(belt))
    monkeypatch.setattr(gate_sinks, "open_fanout", lambda urls, pulse_ms, report, name:
                        pulses if name == "rejects" else RecordingSink(name))
    cfg = StationConfig.from_dict({
        "output": str(tmp_path / "out"),
        "reject": {"encoder": "modbus://127.0.0.1:5020?register=10", "sinks": ["log://"], "encoder_distance": 8400,
                   "pulse_ms": 10, "min_gap_ms": 5, "late_ms": 10, "encoder_poll_ms": 1},
        "cameras": [{"name": "up", "source": "0"}, {"name": "down", "source": "1", "offset_counts": 4000}],
        "group": {"by": "part", "match": "encoder", "window_counts": 50}})
    cell = open_cell_line(cfg, stack, "run")
    cell.part_listeners.append(lambda verdict, row: rows.append(row))
    assembler, gate = cell.assembler, cell.line.scheduler
    settle(belt)

    raw, t = run_belt(belt, 0, T0, at(8))                          # count 1000: part 0 at up
    cell.hooks("up")["on_capture"](Frame(0, t, np.zeros(1)))
    raw, t = run_belt(belt, raw, t, at(40))                        # count 5000: part 0 at down, exposed now ...
    raw, t = run_belt(belt, raw, t, at(46))                        # ... handed over at count 5750
    cell.hooks("down")["on_capture"](Frame(0, at(40), np.zeros(1)))
    assert assembler.part_of("down", 0) == 0, "the held view opened a part of its own"
    for camera in ("up", "down"):
        assembler.on_verdict(None, Verdict(0, 0.0, 0.1, 0.5, False, 0.0, camera=camera))
    (row,) = rows
    assert (row["part"], row["ng"], row["inspected"], row["missing"]) == (0, False, True, [])
    run_belt(belt, raw, t, at(84))                                 # count 10500: past part 0's gate (9400)
    assert gate.wait_idle(10.0)
    assert pulses.pulses == [] and assembler.stats["parts"] == 1


# ------------------------------------------------------------------------------------------- group.window_counts
def _cell(window_counts: int, encoder_url: str) -> StationConfig:
    return StationConfig.from_dict({
        "reject": {"encoder": encoder_url, "sinks": ["log://"], "encoder_distance": 8000},
        "cameras": [{"name": "up", "source": "0"}, {"name": "down", "source": "1", "offset_counts": 3000}],
        "group": {"by": "part", "match": "encoder", "window_counts": window_counts}})


def test_a_window_counts_below_one_polls_travel_at_the_stated_top_speed_is_warned_at_start(caplog):
    """A belt at up to 8000 counts/s whose counter is polled every 5 ms travels 40 counts a poll: with the default
    window_counts (20) the views of one part can be keyed further apart than the window (the audit: 24-26 parts for
    20, good parts rejected fail-safe) and nothing said why. With the belt's top speed on the encoder URL the start
    says so, naming the counts and the fix; without it the belt's speed is not known at start: nothing is said."""
    from fair_edge.station.cell_timing import warn_window_counts

    url = "modbus://127.0.0.1:502?register=10&poll_ms=5&max_counts_per_s=8000"
    cfg = _cell(20, url)
    assert cfg.group.window_counts == 20
    with caplog.at_level("WARNING", logger="fair_edge.station.cell"):
        note = warn_window_counts(cfg, open_encoder(url))            # not started: nothing opened
    assert "group.window_counts: 20 counts is below the 40 counts" in note
    assert "max_counts_per_s=8000 x poll_ms=5" in note and "at least 40" in note and "half the part pitch" in note
    assert note in caplog.text
    assert warn_window_counts(_cell(40, url), open_encoder(url)) == ""
    unstated = "modbus://127.0.0.1:502?register=10&poll_ms=5"
    assert warn_window_counts(_cell(20, unstated), open_encoder(unstated)) == ""

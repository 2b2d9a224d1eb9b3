"""The belt encoder's faults at the gate, against a scripted PLC counter with a fake clock: a part captured while the
encoder's link is down has no position (it was noted at the held count and pulsed early, on another part); a counter
reset from the upper half of its range with the link up, once the belt speed is measured, is a lost position, not
travel (it was taken for a wrap and every part on the belt was "reached" at once), while a fast belt's genuine wrap
between two slow reads still counts, and so does a belt read seldom or refreshed in bursts before its speed is
measured (it lost the position for good); a read that hangs gives no position once the last reading is stale;
and the encoder's own counters reach summary.json's ``rejects`` and /metrics."""

from __future__ import annotations

import contextlib
import threading
import time

from fair_edge.errors import PlcError

import pytest

from fair_edge.errors import SinkError
from fair_edge.line import encoder_links
from fair_edge.line.encoder_source import mark
from fair_edge.line.polled_encoder import PolledEncoder
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RejectSettings
from fair_edge.records import Verdict
from line_replay import RecordingSink
from line_servers import wait_for
from test_line_encoders import ScriptedCounter, cut, settle


class TimedCounter(ScriptedCounter):
    """A scripted counter whose readings carry the belt's own time: ``set(raw, t)`` sets both at once, and
    ``clock()`` (the encoder's clock) is the time of the reading just taken (the encoder calls it right after
    ``read()``, on its thread), so the time between two readings is the test's, however the threads run."""

    def __init__(self, raw: int, t: float = 100.0) -> None:
        super().__init__(raw)
        self.t, self._t_read = t, t
        self._clock_lock = threading.Lock()

    def set(self, raw: int, t: float | None = None) -> None:
        with self._clock_lock:
            if t is not None:
                self.t = t
            super().set(raw)

    def read(self) -> int:
        with self._clock_lock:
            raw = super().read()
            self._t_read = self.t
            return raw

    def clock(self) -> float:
        return self._t_read


def _run_belt(counter: TimedCounter, raw: int, t: float, counts_per_s: float, steps: int, step_s: float,
              bits: int) -> tuple[int, float]:
    """Move the belt at ``counts_per_s`` for ``steps`` readings ``step_s`` apart (each taken by the encoder);
    returns where it ends: (raw, t)."""
    for _ in range(steps):
        raw, t = (raw + round(counts_per_s * step_s)) % (1 << bits), t + step_s
        counter.set(raw, t)
        settle(counter)
    return raw, t


def _gate(counter: ScriptedCounter, distance: int, bits: int = 32, clock=time.monotonic):
    sink, faults, rows = RecordingSink(), RecordingSink("fault"), []
    settings = RejectSettings(encoder_distance=distance, pulse_ms=10, min_gap_ms=5, late_ms=10, encoder_poll_ms=1)
    enc = PolledEncoder(counter, bits, 0.001, clock=clock)
    return enc, lambda: RejectScheduler(settings, sinks=sink, fault_sinks=faults, encoder=enc,
                                        on_part=rows.append), sink, faults, rows


def _verdict(seq: int, ng: bool) -> Verdict:
    return Verdict(seq, time.monotonic(), 0.9 if ng else 0.1, 0.5, ng, time.monotonic())


# ----------------------------------------------------------------------------- 1. captured while the link is down
def test_mark_has_no_count_while_the_encoders_link_is_down():
    """``mark()`` gave the held count (where the belt was when the link dropped) for a part captured during the
    outage; now it says the position is unknown, and gives the count again once the link is back."""
    counter = ScriptedCounter(10_000)
    with PolledEncoder(counter, 32, 0.001) as enc:
        counter.set(10_200)
        settle(counter)
        assert placed(enc) == (200, 0)
        cut(counter, enc)
        assert mark(enc) == (None, 0), f"expected no position while the link is down, found {mark(enc)}"
        assert enc.count() == 200                       # count() stays the held count: never decreases
        counter.set(10_500)
        counter.down = False
        settle(counter)
        assert placed(enc) == (500, 0)


def placed(enc: PolledEncoder) -> tuple[int, int]:
    """(count, epoch) of a part captured now, once ``mark`` has a position: the count read (``mark`` adds the belt
    speed measured over the scripted jump x the time since the last read, a poll's lag: timing, not position)."""
    count, epoch = mark(enc)
    assert count is not None and count >= enc.count(), f"expected a position at or past {enc.count()}, found {count}"
    return enc.count(), epoch


def test_a_part_captured_while_the_encoder_link_is_down_is_position_lost_not_pulsed_from_the_held_count():
    """The audit's case: the link drops at count 0, the belt moves 400 counts, an NG part is captured there (gate
    1000 counts on: its gate is at 1400). It was noted at the held count 0 and pulsed at count 1000, 400 counts
    early, on another part, with no alarm. Now it is ``position_lost`` as soon as its verdict comes (no pulse,
    alarm latched naming why); a part captured then whose frame never got a verdict is decided when the link is
    back; an unnoted NG verdict with its own count is still placed from it."""
    counter = ScriptedCounter(10_000)
    enc, scheduler, sink, faults, rows = _gate(counter, 1000)
    with enc, scheduler() as sched:
        settle(counter)
        cut(counter, enc)                                     # link down, count held at 0
        counter.set(10_400)                                   # the belt moves on unseen
        noted = [sched.note_capture(1), sched.note_capture(2)]   # captured at true count 400; 2: no verdict ever
        sched.submit(_verdict(1, True))
        assert sched.submit(_verdict(3, True), encoder_count=0) == "scheduled"   # not noted, its own count: placed
        counter.set(10_450)
        counter.down = False
        settle(counter)
        counter.set(11_050)                                   # count 1050: the held count's gate (1000) is passed
        settle(counter)
        assert wait_for(lambda: sched.decision(1) and sched.decision(2), 10.0), f"not decided: {sched.stats()}"
        assert (sched.decision(1), sched.decision(2)) == ("position_lost", "position_lost"), \
            f"pulses {[(e.seq, e.count) for _, e in sink.pulses]}, gate {sched.stats()}"
        assert noted == [None, None]                          # no position (they were noted at the held count 0)
        assert wait_for(lambda: sched.decision(3), 10.0)
        counter.set(11_500)                                   # past part 1's true gate (1400): still no pulse for it
        settle(counter)
        assert sched.wait_idle(10.0)
        stats = sched.stats()
    assert [(e.seq, e.count) for _, e in sink.pulses] == [(3, 0)]
    assert stats["position_lost"] == 2 and stats["rejected_ng"] == 1 and stats["alarms"] >= 1
    assert "captured while the encoder link was down" in (sched.alarm or ""), sched.alarm
    gate = {r["seq"]: r for r in rows if r["event"] == "gate"}
    assert (gate[1]["verdict"], gate[2]["verdict"]) == ("ng", "none")
    assert "captured while the encoder link was down (encoder scripted plc: link down" in gate[1]["reason"]
    assert faults.faults[-1][0] is True                       # latched until acknowledged


def test_a_part_captured_while_the_link_is_down_waits_for_its_verdict_or_the_link():
    """While the link stays down, a part with no position and no verdict yet is not decided (its verdict may still
    come and be shown in its gate row); its verdict decides it at once, the link down or not."""
    counter = ScriptedCounter(5_000)
    enc, scheduler, sink, faults, rows = _gate(counter, 300)
    with enc, scheduler() as sched:
        settle(counter)
        cut(counter, enc)
        assert sched.note_capture(1) is None
        assert sched.note_capture(2) is None
        sched.submit(_verdict(2, False))
        assert wait_for(lambda: sched.decision(2), 10.0)
        assert sched.decision(2) == "position_lost" and sched.decision(1) is None   # part 1: no verdict, link down
        sched.submit(_verdict(1, True))
        assert wait_for(lambda: sched.decision(1), 10.0)
        assert sched.decision(1) == "position_lost" and sink.pulses == []
        assert sched.stats()["late_verdicts"] == 0


# ----------------------------------------------------------------------------- 2. implausible steps with the link up
@pytest.mark.parametrize("bits,high", [(16, 40_000), (32, 3_000_000_000)])
def test_a_counter_reset_from_the_upper_half_with_the_link_up_loses_the_position(bits, high):
    """The PLC re-initialises its counter to 0 from the upper half of its range (the link up, the belt at 2000
    counts/s): the step forward over the "wrap" (16 bit: 25536 counts in 2 ms) was taken as travel, every part on the
    belt reached its gate at once and the NG one was pulsed on whatever was at the gate, no alarm, a phantom wrap.
    Now it is a lost position: no wrap, no travel, the parts on the belt ``position_lost``, no pulse, alarmed. The
    belt's speed is measured first (500 counts over 0.25 s): before, any step under half the range is travel."""
    counter = TimedCounter(high)
    enc, scheduler, sink, faults, rows = _gate(counter, 5000, bits, counter.clock)
    with enc, scheduler() as sched:
        settle(counter)
        raw, t = _run_belt(counter, high, counter.t, 2000.0, 5, 0.05, bits)   # 500 counts, the speed measured
        assert sched.note_capture(1) == 500
        assert sched.submit(_verdict(1, True)) == "scheduled"
        raw, t = _run_belt(counter, raw, t, 2000.0, 1, 0.05, bits)
        assert sched.note_capture(2) == 600
        sched.submit(_verdict(2, False))
        counter.set(0, t + 0.002)                                             # the reset
        assert wait_for(lambda: sched.decision(1) and sched.decision(2), 10.0), f"not decided: {enc.stats()}"
        stats = enc.stats()
        decisions = (sched.decision(1), sched.decision(2))
        pulses = [(e.seq, e.count) for _, e in sink.pulses]
        assert sched.wait_idle(10.0)
    assert decisions == ("position_lost", "position_lost") and pulses == [], (decisions, pulses, stats)
    assert stats["position_lost"] == 1 and stats["wraps"] == 0 and stats["count"] == 600, stats
    assert f"from {raw} to 0 with the link up at count 600" in sched.alarm and "counts/s" in sched.alarm
    gate = [r for r in rows if r["event"] == "gate"]
    assert all("a counter reset or restart" in r["reason"] for r in gate) and len(gate) == 2


def test_a_fast_belt_wrapping_between_two_slow_reads_is_travel():
    """A 16-bit counter on a belt measured at 100000 counts/s; one reading comes 0.2 s after the last (a slow
    reply): the counter moved 20000 counts over a wrap, more than the bound's floor (4096) but travel at that speed:
    counted, a wrap, no lost position. The same step on a belt measured at 1000 counts/s is a reset."""
    counter = TimedCounter(50_000)
    with PolledEncoder(counter, 16, 0.001, clock=counter.clock) as enc:
        settle(counter)
        raw, t = _run_belt(counter, 50_000, counter.t, 100_000.0, 12, 0.01, 16)   # 12000 counts, 1000 a read
        assert enc.peak_speed == pytest.approx(100_000.0)
        counter.set((raw + 20_000) % 65_536, t + 0.2)
        settle(counter)
        stats = enc.stats()
    assert stats["count"] == 32_000 and stats["position_lost"] == 0 and stats["wraps"] == 1, stats

    slow = TimedCounter(50_000)
    with PolledEncoder(slow, 16, 0.001, clock=slow.clock) as enc:
        settle(slow)
        _run_belt(slow, 50_000, slow.t, 1000.0, 3, 0.05, 16)                # measured at 1000 counts/s
        slow.set(4464, slow.t + 0.2)                                         # 20000 counts "in 0.2 s"
        settle(slow)
        stats = enc.stats()
    assert stats["position_lost"] == 1 and stats["count"] == 150 and stats["wraps"] == 0, stats


def test_a_reset_after_the_belt_stood_still_is_still_a_lost_position():
    """A PLC restarted while its belt stood: the counter, still for a minute, jumps from the upper half of its range
    to 0. The plausible travel is reckoned since the counter last moved, at most STEP_SPAN_MAX_S (2 s): over the
    whole minute it allowed 244000 counts, so the reset was taken as travel and every part on the belt fired."""
    belt = TimedCounter(50_000)
    with PolledEncoder(belt, 16, 0.001, clock=belt.clock) as enc:
        settle(belt)
        raw, t = _run_belt(belt, 50_000, belt.t, 1000.0, 3, 0.05, 16)   # measured at 1000 counts/s
        belt.set(raw, t + 60.0)                                            # a minute standing: no movement
        settle(belt)
        belt.set(0, t + 60.002)                                            # the restart: 15386 counts "forward"
        settle(belt)
        stats = enc.stats()
    assert stats["position_lost"] == 1 and stats["wraps"] == 0 and stats["count"] == 150, stats


def test_a_belt_read_seldom_counts_from_its_first_reading():
    """The review's case: a 16-bit counter at 20000 counts/s read every 250 ms (5000 counts a reading, over the
    bound's floor of 4096 before any speed was measured). The first step was a lost position, and every one after
    it too (the speed was measured only over counted travel: it stayed 0): after 10 s the count was 0, 40 losses.
    Now a step before the speed is measured is travel: 200000 counts, no loss, the speed measured."""
    counter = TimedCounter(0)
    with PolledEncoder(counter, 16, 0.001, clock=counter.clock) as enc:
        settle(counter)
        _run_belt(counter, 0, counter.t, 20_000.0, 40, 0.25, 16)
        stats = enc.stats()
        assert enc.peak_speed == pytest.approx(20_000.0)
    assert stats["count"] == 200_000 and stats["position_lost"] == 0, stats


def test_a_register_the_plc_refreshes_in_bursts_counts_its_travel():
    """The PLC copies its counter into the register every 250 ms (5000 counts at 20000 counts/s) and it is read
    every 2 ms: each burst is a step of 5000 counts 2 ms after the last reading. The first one was taken for a
    counter reset and the count never moved again. Now every burst is travel (the bound counts from when the
    counter last moved, and applies once a speed is measured): 40000 counts in 2 s, no loss."""
    counter = TimedCounter(0)
    raw, t = 0, counter.t
    with PolledEncoder(counter, 16, 0.001, clock=counter.clock) as enc:
        settle(counter)
        for _ in range(8):
            for still in (0.05, 0.1, 0.15, 0.2, 0.248):                        # readings in between: no change
                counter.set(raw, t + still)
                settle(counter)
            raw, t = (raw + 5000) % 65_536, t + 0.25
            counter.set(raw, t)
            settle(counter)
        stats = enc.stats()
    assert stats["count"] == 40_000 and stats["position_lost"] == 0, stats


def test_after_a_refused_step_the_belt_is_measured_afresh_and_counted():
    """A belt measured at 100 counts/s speeds up and is read seldom: its first 20000-count step in 0.25 s is over
    the bound, a lost position. The speed measured before said nothing of the steps after it: each later step was
    refused too and the count stopped for good. Now the loss forgets the speed: the next steps are travel."""
    counter = TimedCounter(0)
    with PolledEncoder(counter, 16, 0.001, clock=counter.clock) as enc:
        settle(counter)
        raw, t = _run_belt(counter, 0, counter.t, 100.0, 4, 0.05, 16)            # 20 counts, 100 counts/s
        raw, t = _run_belt(counter, raw, t, 80_000.0, 1, 0.25, 16)               # 20000 counts: refused
        assert enc.stats()["position_lost"] == 1
        _run_belt(counter, raw, t, 80_000.0, 6, 0.25, 16)
        stats = enc.stats()
    assert stats["position_lost"] == 1 and stats["count"] == 20 + 6 * 20_000, stats


class HangingCounter(ScriptedCounter):
    """A scripted counter whose link drops the way TCP links drop: with ``hang`` set, the next read waits until
    ``release()`` and then fails (the client's timeout). ``clock``: the test's fake clock (``now``, s)."""

    def __init__(self, raw: int) -> None:
        super().__init__(raw)
        self.now = 100.0
        self.hang = False
        self.hanging, self._released = threading.Event(), threading.Event()

    def read(self) -> int:
        if self.hang:
            self.hanging.set()
            self._released.wait(10.0)
            raise PlcError("hanging plc: read timed out")
        return super().read()

    def release(self) -> None:
        self._released.set()

    def clock(self) -> float:
        return self.now


def test_a_read_that_hangs_gives_no_position_once_the_last_reading_is_stale():
    """The review's case: the link drops and the read in flight hangs until its timeout (OPC UA: 1 s). Until it
    failed, ``mark()`` gave the last good count: a part captured 0.6 s into the hang was noted 12000 counts short
    (at 20000 counts/s) and pulsed early, on another part. Now a part marked more than ``stale_s`` (here 0.25 s)
    after the last good reading has no position; within it, the count extrapolated by the measured speed."""
    counter = HangingCounter(0)
    with PolledEncoder(counter, 32, 0.001, clock=counter.clock) as enc:
        for raw in (2500, 5000):                                               # 20000 counts/s, 0.125 s apart
            counter.now += 0.125
            counter.set(raw)
            settle(counter)
        counter.hang = True
        assert counter.hanging.wait(10.0)
        last_good = counter.now                                                # 100.25, count 5000
        counter.now = last_good + 0.02                                         # an ordinary poll's lag
        assert mark(enc) == (5400, 0)                                          # extrapolated too (was: as read)
        counter.now = last_good + 0.125
        assert mark(enc) == (7500, 0), f"expected the count extrapolated (5000 + 20000 x 0.125), found {mark(enc)}"
        counter.now = last_good + 0.6
        assert mark(enc) == (None, 0), f"expected no position 0.6 s into a hanging read, found {mark(enc)}"
        assert enc.fault_reason is None                                        # the read has not failed yet
        counter.release()
        assert wait_for(lambda: enc.fault_reason is not None, 10.0)
        assert mark(enc) == (None, 0)


def test_a_belt_whose_top_speed_is_stated_may_step_far_before_its_speed_is_measured():
    """``max_counts_per_s`` (URL option): a belt read seldom that runs fast from the start: its first long step is
    travel, not a reset. The option is parsed (and checked) from the encoder URL."""
    counter = TimedCounter(50_000)
    with PolledEncoder(counter, 16, 0.001, max_counts_per_s=100_000, clock=counter.clock) as enc:
        settle(counter)
        counter.set(4464, counter.t + 0.2)                                     # 20000 counts in 0.2 s, over a wrap
        settle(counter)
        stats = enc.stats()
    assert stats["position_lost"] == 0 and stats["count"] == 20_000 and stats["wraps"] == 1, stats
    url = "modbus://127.0.0.1:502?register=1&bits=16&max_counts_per_s=2e5"
    assert encoder_links.open_encoder(url).peak_speed == 200_000.0              # not started: nothing opened
    with pytest.raises(SinkError, match=r"max_counts_per_s: expected a finite number >= 0, found '-1'"):
        encoder_links.open_encoder("opcua://127.0.0.1:4840/x?node=ns=2;s=C&max_counts_per_s=-1")


# ----------------------------------------------------------------------------- 5. the encoder's counters reported
def test_the_encoders_own_counters_reach_the_summary_and_metrics(tmp_path, monkeypatch):
    """read_errors, reconnects, wraps and position_lost of the encoder (a link that flapped, a counter reset with no
    part on the belt) were only in the log: summary.json's ``rejects.position_lost`` counts parts decided so, 0 here.
    Now ``rejects.encoder`` and ``fair_edge_encoder_total{event=...}`` carry them."""
    pytest.importorskip("prometheus_client")
    from fair_edge.station.config import StationConfig
    from fair_edge.station.line_side import open_line_side

    counter = ScriptedCounter(0xFFFF_FF00)
    monkeypatch.setitem(encoder_links.ENCODER_SCHEMES, "modbus", lambda url: PolledEncoder(counter, 32, 0.001))
    cfg = StationConfig.from_dict({
        "output": str(tmp_path), "camera": {"source": "0"}, "record": {"dir": str(tmp_path)},
        "reject": {"sinks": ["log://"], "encoder": "modbus://127.0.0.1:5020?register=10", "encoder_distance": 800},
        "metrics": {"enabled": True, "port": 0}})
    with contextlib.ExitStack() as stack:
        line = open_line_side(cfg, stack, "encoder-counters")
        before = line.reject_stats()["encoder"]
        counter.set(0x0000_0100)                                # a wrap
        settle(counter)
        cut(counter, line.encoder)                              # read errors, then a reconnect
        counter.down = False
        settle(counter)
        counter.set(0x0000_0010)                                # a reset: the position lost
        settle(counter)
        after = line.reject_stats()
        scraped = line.metrics.render().decode()
    moved = ("read_errors", "reconnects", "wraps", "position_lost")
    assert {k: before[k] for k in moved} == dict.fromkeys(moved, 0), before
    assert all(after["encoder"][k] >= 1 for k in moved), after.get("encoder")
    assert after["position_lost"] == 0                          # no part on the belt: the gate decided none
    for key in moved:
        assert f'fair_edge_encoder_total{{event="{key}"}} {float(after["encoder"][key])}' in scraped, key
    assert "fair_edge_encoder_position_epoch 1.0" in scraped

"""Triggered capture (one frame per PLC trigger) over a synthetic line: the frame taken for a trigger was
grabbed at or after it; and TriggerFanout (several cameras, one handshake): a camera back from an outage takes
no trigger past its deadline, and at most ``max_queued`` wait for it."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace

import numpy as np

from fair_edge.cameras import LineSource
from fair_edge.cameras.triggered import TriggerFanout, TriggeredSource
from fair_edge.line.handshake.tickets import Ticket
from fair_edge.records import Frame

IMAGES = [np.full((8, 8), k, np.uint8) for k in range(64)]  # slot k of the line shows pixels = k
LATER = 3600.0                                               # a deadline no test reaches


class FakeHandshake:
    """What ``TriggeredSource`` / ``TriggerFanout`` call on a ``Handshake``; triggers are handed in by the test.
    Like ``Handshake.next_trigger`` it hands out tickets in trigger order (this one does not skip expired ones:
    the tests decide which tickets are past their deadline)."""

    def __init__(self, max_parts: int = 64) -> None:
        self.settings = SimpleNamespace(max_parts=max_parts)
        self.triggers: queue.Queue[Ticket] = queue.Queue()
        self.stale, self.late, self.answered, self.bound = 0, 0, [], {}

    def trigger(self, part_id: int, t_trigger: float | None = None, deadline: float | None = None) -> Ticket:
        now = time.monotonic()
        ticket = Ticket(part_id, now if t_trigger is None else t_trigger, now + LATER if deadline is None else deadline)
        self.triggers.put(ticket)
        return ticket

    def next_trigger(self, timeout_s: float) -> Ticket | None:
        try:
            return self.triggers.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def next_trigger_before(self, t: float) -> Ticket | None:
        with self.triggers.mutex:
            waiting = self.triggers.queue
            return waiting.popleft() if waiting and waiting[0].t_trigger <= t else None

    def wait_for_trigger(self, timeout_s: float) -> bool:
        with self.triggers.not_empty:
            return self.triggers.not_empty.wait_for(lambda: len(self.triggers.queue) > 0, timeout_s)

    def count_stale_frame(self) -> None:
        self.stale += 1

    def count_late_frame(self) -> None:
        self.late += 1

    def bind(self, seq: int, ticket: Ticket) -> None:
        self.bound[seq] = ticket

    def answer_not_inspected(self, ticket: Ticket) -> None:
        self.answered.append(ticket.part_id)


def _clock_passes(t: float) -> float:
    """Wait until ``time.monotonic()`` is past ``t`` (a condition, not a guess); returns the time then."""
    while (now := time.monotonic()) <= t:
        pass
    return now


# ----------------------------------------------------------------------------- the frame taken for a trigger
def test_a_frame_is_stamped_when_grabbed_not_when_read():
    """The image a running line's camera grabbed at open() (held for the first read) keeps its time of open()."""
    source = LineSource(IMAGES, fps=10, loop=False)
    source.open()
    t_opened = time.monotonic()
    t_read = _clock_passes(t_opened)
    frame = source.read()
    source.close()
    assert frame.seq == 0 and frame.t_capture <= t_opened < t_read


def test_the_image_grabbed_at_open_is_skipped_for_a_later_trigger():
    """A line at 10 frames/s: open() grabs slot 0; the part is triggered after that: slot 0 counts stale and the
    part's frame is a later slot, grabbed after the trigger. Before, slot 0 was stamped when read, after the
    trigger, and inspected the part."""
    hs = FakeHandshake()
    source = TriggeredSource(LineSource(IMAGES, fps=10, loop=False), hs)
    source.open()
    t_trigger = _clock_passes(time.monotonic())
    hs.trigger(1007, t_trigger=t_trigger)
    frame = source.read()
    source.close()
    assert int(frame.image[0, 0]) >= 1, "the image grabbed at open(), before the trigger, inspected the part"
    assert hs.stale == 1 and frame.t_capture >= t_trigger and frame.seq == 0 and hs.bound[0].part_id == 1007


def test_a_source_that_waits_for_the_reader_gives_its_first_image_to_the_first_trigger():
    """An unpaced line (or replay) makes an image when read: its first one is not stale, so the first part gets
    the first image (a replayed folder's first file is inspected)."""
    hs = FakeHandshake()
    source = TriggeredSource(LineSource(IMAGES, fps=0), hs)
    source.open()
    hs.trigger(1, t_trigger=_clock_passes(time.monotonic()))
    frame = source.read()
    source.close()
    assert int(frame.image[0, 0]) == 0 and hs.stale == 0


class _StampedSource:
    """Hands out frames stamped with the times given, in order (pixels = index); a camera whose driver holds
    more old frames than ``MAX_STALE``."""

    name = "stamped"

    def __init__(self, stamps: list[float]) -> None:
        self.stamps, self.reads = stamps, 0

    def read(self) -> Frame:
        k, self.reads = self.reads, self.reads + 1
        return Frame(k, self.stamps[k], np.full((8, 8), k, np.uint8))


def test_a_part_is_never_bound_to_a_frame_from_before_its_trigger():
    """More stale frames than MAX_STALE wait before part 1's trigger: its part is answered not inspected (all
    17 read are counted stale) and the next trigger gets the first fresh frame. Before, the 17th stale frame,
    showing an earlier part, was bound to part 1 and inspected as it."""
    from fair_edge.cameras.triggered import MAX_STALE

    hs = FakeHandshake()
    inner = _StampedSource([0.0] * (MAX_STALE + 1) + [20.0, 21.0])
    source = TriggeredSource(inner, hs)
    hs.trigger(1, t_trigger=10.0)
    hs.trigger(2, t_trigger=10.0)
    frame = source.read()
    assert hs.answered == [1] and hs.stale == MAX_STALE + 1
    assert frame.seq == 0 and int(frame.image[0, 0]) == MAX_STALE + 1 and hs.bound[0].part_id == 2


# ----------------------------------------------------------------------------- several cameras, one handshake
def test_a_camera_back_from_an_outage_takes_no_trigger_past_its_deadline():
    """Camera b is out while a takes parts 1..5 (queued for b too); by the time b reads again their deadlines
    have passed: b drops them (counted expired) and binds its next frame to part 6, the part now in view.
    Before, b bound frames captured now to parts 1..5, long gone (a phantom part at the reject gate)."""
    hs = FakeHandshake()
    fan = TriggerFanout(hs, ["a", "b"])
    a = TriggeredSource(LineSource(IMAGES, name="a"), fan.port("a"))
    b = TriggeredSource(LineSource(IMAGES, name="b"), fan.port("b"))
    a.open(), b.open()
    past = time.monotonic()
    for part in range(1, 6):      # a takes them in time; they expire while b is out
        hs.trigger(part, t_trigger=0.0, deadline=past)
        assert fan.ticket("a", a.read().seq).part_id == part
    _clock_passes(past)
    hs.trigger(6, t_trigger=0.0)
    frame = b.read()
    assert fan.part_id("b", frame.seq) == 6
    assert fan.stats() == {"expired": 5, "overflow": 0}
    assert fan.part_id("a", a.read().seq) == 6 and hs.answered == []


def test_each_cameras_queue_of_triggers_is_bounded():
    """max_parts 3 (the handshake's): b, not reading, holds parts 3, 4, 5; parts 1 and 2 are dropped for it
    (counted overflow, b's view missing). Part 1, whose frame a could not take either, is answered NG not
    inspected then; part 2 is not (a took its frame). Before, b's queue grew without a bound."""
    hs = FakeHandshake(max_parts=3)
    fan = TriggerFanout(hs, ["a", "b"])
    taken = {}
    for part in range(1, 6):
        hs.trigger(part, t_trigger=0.0)
        taken[part] = fan.next_trigger("a", 0.0)
        if part == 1:
            fan.failed("a", taken[1])          # a's read failed for part 1
    assert hs.answered == [1]
    assert [fan.next_trigger("b", 0.0).part_id for _ in range(3)] == [3, 4, 5]
    assert fan.stats() == {"expired": 0, "overflow": 2} and fan.max_queued == 3


def test_the_fanouts_dropped_tickets_reach_the_summary_and_the_run_table():
    """The fanout's counts were kept but never shown: the cell's reject stats carry them under
    ``handshake.fanout`` (summary.json's ``rejects.handshake.fanout``) and ``fair-edge run``'s table has a row."""
    from fair_edge.cli.run import reject_rows
    from fair_edge.station.cell_line import CellLine

    hs = FakeHandshake(max_parts=1)
    fan = TriggerFanout(hs, ["a", "b"])
    for part in (1, 2, 3):               # b never reads: parts 1 and 2 overflow its queue of one
        hs.trigger(part, t_trigger=0.0)
        fan.next_trigger("a", 0.0)
    counts = {"triggers": 3, "results": 3, "acked": 3, "ack_timeouts": 0, "expired": 0, "error": 0}
    cell = CellLine(SimpleNamespace(reject_stats=lambda: {"handshake": dict(counts)}), triggers=fan)
    stats = cell.reject_stats()
    assert stats["handshake"]["fanout"] == {"expired": 0, "overflow": 2}
    assert ("handshake: camera triggers expired / overflow", "0 / 2") in reject_rows(stats)

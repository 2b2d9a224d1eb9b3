"""The PLC handshake never answers a part with what it did not see (audit: encoderhandshake), over the real
``Handshake`` with a scripted PLC and a fake clock (no thread: each poll is run by the test at a time it sets):

- a camera's frame exposed after the *next* part's trigger (the camera hung) is not bound to the part before: that
  part is answered not inspected for the camera (``late_frames``), the frame goes to the next part (one camera, and
  a cell's ``TriggerFanout``);
- a trigger the PLC set while the link was down is answered 3 at once at the first poll after the reconnect, never
  given a frame (``stale_triggers``);
- at a stop, Ready drops before capture stops (``Inspector.run``'s ``on_stop``: ``Handshake.stopping``), and
  ``finish()`` answers 3 at once every part taken and still without a result (its frame was discarded at the stop);
- a fanout camera whose ticket is queued gets it while another camera waits on the handshake."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import numpy as np

from fair_edge.cameras.base import EndOfStream
from fair_edge.cameras.triggered import TriggeredSource, TriggerFanout
from fair_edge.errors import PlcError
from fair_edge.line.handshake import HandshakeSettings
from fair_edge.line.handshake.engine import Handshake
from fair_edge.line.handshake.settings import RESULT_NONE, RESULT_NOT_INSPECTED, RESULT_OK
from fair_edge.records import Frame, Verdict

from line_servers import FakeClock, ScriptedPlc, wait_for

PART_PERIOD_S = 0.125   # 8 parts/s, as in the audit


class StampedCamera:
    """A camera whose frames carry the exposure times the test gives (``Frame.t_capture``, fake-clock seconds), in
    order; pixels = the frame's index."""

    def __init__(self, name: str, stamps: list[float]) -> None:
        self.name, self.stamps, self.reads = name, list(stamps), 0

    def read(self) -> Frame:
        k, self.reads = self.reads, self.reads + 1
        return Frame(k, self.stamps[k], np.full((4, 4), k, np.uint8), self.name)

    def close(self) -> None:
        pass


def running_handshake(clock: FakeClock, **settings) -> tuple[Handshake, ScriptedPlc]:
    """A handshake over a scripted PLC, connected, inspecting, its first poll run (Trigger 0)."""
    plc = ScriptedPlc()
    hs = Handshake(HandshakeSettings(url="modbus://127.0.0.1:1", poll_ms=5, **settings), plc, clock=clock)
    assert hs._connect()
    hs.begin()
    hs._cycle(clock.advance(0.005))
    return hs, plc


def trigger(hs: Handshake, plc: ScriptedPlc, clock: FakeClock, part_id: int) -> float:
    """The PLC triggers ``part_id`` one part period after the last poll; the poll that takes it runs then. Returns the
    time the station saw the trigger (the ticket's ``t_trigger``)."""
    plc.signals.update(part_id=part_id, trigger=1)
    now = clock.advance(PART_PERIOD_S)
    hs._cycle(now)
    assert plc.signals["trigger"] == 0
    return now


def tickets(hs: Handshake) -> dict[int, object]:
    """Part id -> its ticket, for every part not yet written to the PLC."""
    return {t.part_id: t for t in hs._order}


def results_written(plc: ScriptedPlc) -> list[tuple[int, int]]:
    """(part id, result) of every result the station wrote, in order."""
    return [(dict(w)["result_part_id"], dict(w)["result"]) for w in plc.writes if ("results_ready", 1) in w]


def ack_all(hs: Handshake, plc: ScriptedPlc, clock: FakeClock, polls: int = 20) -> None:
    """The PLC acks every result the station puts up, for ``polls`` polls."""
    for _ in range(polls):
        if plc.signals.get("results_ready") == 1:
            plc.signals["ack"] = 1
        hs._cycle(clock.advance(0.005))


# ----------------------------------------------------------------------------- 2: a frame later than the next trigger
def test_a_frame_exposed_after_the_next_trigger_goes_to_the_next_part_not_the_one_before(caplog):
    """Audit bug 2, one camera: the camera hangs after part 1006; its next frame is exposed after part 1008's
    trigger. Before, that frame (showing 1008) was bound to part 1007 and 1007 was answered with 1008's verdict (an
    NG part answered OK). Now 1007 is answered 3 (counted late_frames, logged), the frame inspects 1008, and the
    next frame 1009."""
    clock = FakeClock()
    hs, plc = running_handshake(clock)
    t7 = trigger(hs, plc, clock, 1007)
    t8 = trigger(hs, plc, clock, 1008)
    camera = StampedCamera("right", [t8 + 0.01, t8 + PART_PERIOD_S + 0.01])
    source = TriggeredSource(camera, hs)
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.triggered"):
        first = source.read()
    assert first.t_capture > t8 > t7
    assert hs._by_seq[first.seq].part_id == 1008, "the frame exposed after 1008's trigger inspects 1007"
    parts = tickets(hs)
    assert parts[1007].result == RESULT_NOT_INSPECTED and parts[1008].result == RESULT_NONE
    stats = hs.stats()
    assert stats["late_frames"] == 1 and stats["not_inspected"] == 1, stats
    assert "its frame for part 1007 was exposed after part 1008's trigger" in caplog.text
    trigger(hs, plc, clock, 1009)
    second = source.read()
    assert hs._by_seq[second.seq].part_id == 1009 and hs.stats()["late_frames"] == 1
    hs.on_verdict(first, Verdict(first.seq, first.t_capture, 0.1, 0.5, False, 0.0, "right"))
    hs.on_verdict(second, Verdict(second.seq, second.t_capture, 0.1, 0.5, False, 0.0, "right"))
    ack_all(hs, plc, clock)
    assert results_written(plc) == [(1007, RESULT_NOT_INSPECTED), (1008, RESULT_OK), (1009, RESULT_OK)]


def test_a_frame_later_than_two_triggers_answers_both_parts_before_it_and_is_logged_once_per_spell(caplog):
    """The frame is exposed after the triggers of 1008 and 1009: 1007 and 1008 are answered 3 and the frame goes to
    1009, the last part triggered before it. The second late part is gathered into the spell's one line (logged when
    the source closes, within the window), not logged on its own."""
    clock = FakeClock()
    hs, plc = running_handshake(clock)
    for part in (1007, 1008):
        trigger(hs, plc, clock, part)
    t9 = trigger(hs, plc, clock, 1009)
    source = TriggeredSource(StampedCamera("right", [t9 + 0.002]), hs)
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.triggered"):
        frame = source.read()
        assert caplog.text.count("exposed after") == 1
        source.close()
    assert hs._by_seq[frame.seq].part_id == 1009
    parts = tickets(hs)
    assert [parts[p].result for p in (1007, 1008)] == [RESULT_NOT_INSPECTED] * 2 and hs.stats()["late_frames"] == 2
    assert "1 more part in the last" in caplog.text and "the last part 1008 (frame taken for part 1009)" in caplog.text


def test_a_cell_camera_that_hung_binds_its_late_frame_to_the_part_it_shows():
    """Audit bug 2, a cell (``group.match: handshake``): top takes parts 1007 and 1008 in time; right hung, and its
    frame for its queued 1007 is exposed after 1008's trigger. Before, that frame was bound to 1007 (right's view of
    1007 showed 1008). Now right's view of 1007 is missing (``failed``: the part is answered not inspected when it
    closes), its frame goes to 1008, and its next one to 1009."""
    clock = FakeClock()
    hs, plc = running_handshake(clock)
    fan = TriggerFanout(hs, ["top", "right"], clock=clock)
    t7 = trigger(hs, plc, clock, 1007)
    top = TriggeredSource(StampedCamera("top", [t7 + 0.01]), fan.port("top"))
    assert fan.part_id("top", top.read().seq) == 1007
    t8 = trigger(hs, plc, clock, 1008)
    top.inner.stamps.append(t8 + 0.01)
    assert fan.part_id("top", top.read().seq) == 1008
    right = TriggeredSource(StampedCamera("right", [t8 + 0.03]), fan.port("right"))
    late = right.read()
    assert fan.part_id("right", late.seq) == 1008, "right's frame exposed after 1008's trigger was bound to 1007"
    t1007 = fan.ticket("top", 0)
    assert fan._failed[id(t1007)] == (t1007, {"right"}) and t1007.result == RESULT_NONE   # answered when its part closes
    assert hs.stats()["late_frames"] == 1
    t9 = trigger(hs, plc, clock, 1009)
    right.inner.stamps.append(t9 + 0.01)
    assert fan.part_id("right", right.read().seq) == 1009


# ----------------------------------------------------------------------------- 3: a trigger set during an outage
def test_a_trigger_set_while_the_link_was_down_is_answered_3_and_never_given_a_frame():
    """Audit bug 3: the link is cut for 1.2 s; the PLC triggers part 1016 meanwhile. Before, the first poll after
    the reconnect took it as fresh (its trigger time = now), a camera gave it the frame exposed then, 1.2 s late,
    and it was answered with another part's verdict. Now it is answered 3 at once (counted stale_triggers), no
    camera gets it, and the next trigger is taken as usual."""
    clock = FakeClock()
    hs, plc = running_handshake(clock)
    trigger(hs, plc, clock, 1015)
    hs.bind(0, hs.next_trigger(0.0))
    hs._link_failed(PlcError("connection reset (the test cuts the link)"))
    plc.signals.update(part_id=1016, trigger=1)                  # the PLC triggers while the link is down
    clock.advance(1.2)
    hs._next_try = 0.0                                          # (the back-off's wait, not timed here)
    assert hs._connect()
    hs._cycle(clock.advance(0.005))
    assert hs.next_trigger(0.0) is None, "the trigger set during the outage was handed to a camera"
    assert plc.signals["trigger"] == 0 and tickets(hs)[1016].result == RESULT_NOT_INSPECTED
    stats = hs.stats()
    assert stats["stale_triggers"] == 1 and stats["reconnects"] == 1 and stats["not_inspected"] == 1, stats
    trigger(hs, plc, clock, 1017)
    assert hs.next_trigger(0.0).part_id == 1017 and hs.stats()["stale_triggers"] == 1


def test_a_trigger_whose_reset_was_lost_in_the_outage_is_not_taken_twice():
    """The station took part 1015 and the link failed as it wrote Trigger = 0: after the reconnect Trigger still
    reads 1 for 1015. That trigger was taken before the outage (its ticket waits for its frame), so it is neither
    answered 3 nor taken again: Trigger is written 0."""
    clock = FakeClock()
    hs, plc = running_handshake(clock)
    plc.signals.update(part_id=1015, trigger=1)
    failing_write = plc.write

    def write(values):
        if ("trigger", 0) in list(values):
            raise PlcError("connection reset while writing Trigger = 0")
        failing_write(values)

    plc.write = write
    hs._poll(clock.advance(0.005))
    plc.write = failing_write
    assert not hs.stats()["connected"] and plc.signals["trigger"] == 1
    hs._next_try = 0.0
    assert hs._connect()
    hs._cycle(clock.advance(0.005))
    assert plc.signals["trigger"] == 0 and hs.next_trigger(0.0).part_id == 1015
    assert hs.stats()["stale_triggers"] == 0 and hs.stats()["triggers"] == 1


# ----------------------------------------------------------------------------- 4: a clean stop
def test_finish_answers_at_once_a_part_whose_frame_was_taken_but_never_inspected():
    """Audit bug 4: the camera took part 1020's frame just as capture stopped; the frame was discarded (taken after
    stop()), so no verdict comes. Before, finish() answered only the parts still waiting for a frame: 1020 waited
    its result timeout and the PLC saw Error 11. Now finish() answers it 3 at once, and it is written and acked."""
    clock = FakeClock()
    hs, plc = running_handshake(clock)
    trigger(hs, plc, clock, 1020)
    hs.bind(7, hs.next_trigger(0.0))                            # bound to frame 7, discarded at the stop
    trigger(hs, plc, clock, 1021)                               # still waiting for its frame
    hs.finish(timeout_s=0.0)                                    # (no thread: the test runs the polls below)
    assert [tickets(hs)[p].result for p in (1020, 1021)] == [RESULT_NOT_INSPECTED] * 2
    ack_all(hs, plc, clock)
    assert results_written(plc) == [(1020, RESULT_NOT_INSPECTED), (1021, RESULT_NOT_INSPECTED)]
    assert hs.stats()["expired"] == 0 and hs.error_code == 0 and plc.signals["ready"] == 0


class CaptureAtTheStop:
    """The inspection loop's capture: the stream has ended; ``stop()`` records what the PLC sees when capture stops,
    after the PLC triggered one more part and the handshake polled it."""

    def __init__(self, hs: Handshake, plc: ScriptedPlc, clock: FakeClock) -> None:
        self.hs, self.plc, self.clock = hs, plc, clock
        self.at_stop: dict | None = None

    def get(self, timeout: float) -> Frame:
        raise EndOfStream("the test's stream ended")

    def stop(self) -> bool:
        self.plc.signals.update(part_id=1031, trigger=1)        # the PLC triggers as the cameras stop
        self.hs._cycle(self.clock.advance(0.005))
        self.at_stop = {"ready": self.plc.signals["ready"], "handed_to_a_camera": self.hs.next_trigger(0.0)}
        return True

    def stats(self) -> SimpleNamespace:
        return SimpleNamespace(frames_in=0, dropped_queue_full=0, frames_lost_estimate=0, unreadable=0)


def test_ready_drops_before_capture_stops_and_a_trigger_then_is_answered_at_once():
    """Audit bug 4, the order: the inspection loop calls its ``on_stop`` hook (``LineSide.stopping``:
    ``Handshake.stopping``) before it stops capture, so the PLC reads Ready = 0 while the cameras still run, and a
    part it triggers anyway is answered 3 at once, never handed to a camera that is stopping. Before, capture stopped
    first with Ready still 1; a camera took the part and its frame was discarded."""
    from fair_edge.station.inspector import Inspector
    from fair_edge.station.line_side import LineSide

    clock = FakeClock()
    hs, plc = running_handshake(clock)
    assert plc.signals["ready"] == 1
    capture = CaptureAtTheStop(hs, plc, clock)
    scorer = SimpleNamespace(reason="test", graph_threshold=None)
    line = LineSide(None, None, None, None, [], handshake=hs)
    Inspector(capture, scorer, threshold=1.0).run(threading.Event(), on_stop=line.stopping)
    assert capture.at_stop == {"ready": 0, "handed_to_a_camera": None}
    assert results_written(plc) == [(1031, RESULT_NOT_INSPECTED)] and hs.stats()["not_inspected"] == 1


# ----------------------------------------------------------------------------- 6: the fanout's hand-over
def test_a_fanout_camera_gets_its_queued_ticket_while_another_waits_on_the_handshake():
    """Audit bug 6: two cameras that read at once (on-demand sources) and wait long for each trigger. The camera
    that took a trigger queued it for the other and went straight back to waiting on the handshake, holding the
    lock the other needed to take its queued ticket: the other got it only when that wait ended (here 30 s; in a
    station each 50 ms step, 50-230 ms in the audit). Now each camera gets every part before the next is
    triggered. The 10 s bound is a failure bound, not a timing."""
    clock = FakeClock()
    hs, plc = running_handshake(clock)
    fan = TriggerFanout(hs, ["a", "b"], clock=clock)
    got: dict[str, list[int]] = {"a": [], "b": []}
    last = 2012                                                 # 12 parts, 2001..2012

    def camera(name: str) -> None:
        while not got[name] or got[name][-1] != last:
            ticket = fan.next_trigger(name, 30.0)
            if ticket is not None:
                got[name].append(ticket.part_id)

    threads = [threading.Thread(target=camera, args=(name,), daemon=True) for name in got]
    for thread in threads:
        thread.start()
    for part in range(2001, last + 1):
        trigger(hs, plc, clock, part)
        assert wait_for(lambda: got["a"][-1:] == got["b"][-1:] == [part], 10.0), (part, got)
    for thread in threads:
        thread.join(timeout=10.0)
    assert got["a"] == got["b"] == list(range(2001, last + 1))


def test_a_ticket_one_camera_failed_is_held_so_a_new_ticket_never_inherits_its_failures():
    """``TriggerFanout`` remembers the cameras that failed a part by ``id(ticket)``. Before, it kept no reference to
    the ticket: once the handshake dropped a part (answered, acked), Python could give a new ticket the same id, and
    that part inherited the old part's failed cameras (answered 3 at once as soon as one more camera failed it).
    The memory now holds the ticket, so its id stays its own while remembered."""
    import gc
    import weakref

    from fair_edge.line.handshake.tickets import Ticket

    clock = FakeClock()
    hs, _ = running_handshake(clock)
    fan = TriggerFanout(hs, ["top", "right"], clock=clock)
    ticket = Ticket(part_id=1007, t_trigger=clock(), deadline=clock() + 1.0)
    fan.failed("right", ticket)
    remembered = weakref.ref(ticket)
    del ticket
    gc.collect()
    assert remembered() is not None, "the failed ticket was freed while its id was still a key: a new one may take it"

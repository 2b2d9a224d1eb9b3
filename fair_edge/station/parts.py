"""Views of several cameras -> parts: which frames show one part, and the part's one verdict.

``PartAssembler`` is told of every frame at capture (``on_capture``, on the cameras' threads) and puts it into a part
by the station's ``group.match`` rule (``fair_edge.station.views``; ``window``, ``encoder``, ``handshake``: the open
part nearest its key that lacks its camera's view, within the window; of two as near, the older: ``_match``); a new
part is announced at once (``on_open``: the reject gate notes it at its first view's capture time, with
``match: encoder`` at its belt count, so it is decided at its due time whatever happens to its views). Each view's
verdict (``on_verdict``) or drop (``on_drop``) is filed with its part. A part is decided once:

- as soon as its inspected NG views reach ``min_ng`` (``group.rule``): NG, whatever its other views would say;
  its verdict goes to ``on_part`` at once with the part's row, whose ``views`` name the views not in yet
  ``{"missing": part_rows.NOT_AWAITED}`` (not listed in ``missing``: they were not needed). The part stays open
  until its other views are in or its time is up, so they still join it (no part of their own) and are not counted
  late;
- when every camera's view is in: NG when at least ``min_ng`` views are NG, else OK; its verdict goes to
  ``on_part`` with the part's row. A view is in when its verdict came, its frame was dropped (``on_drop``) or, with
  ``match: handshake``, its camera took no frame for the part (``view_failed``: a read that failed, a frame exposed
  after the next trigger, a trigger queue full; ``TriggerFanout.failed``): a part whose other views are in then
  closes at once, with the verdict and counters its timeout would give it (NG, not inspected, its row naming the
  camera ``no frame``), instead of waiting out ``timeout_s``. A camera that fails a part before any other camera's
  frame opened it is remembered for that part's key for ``timeout_s``;
- at ``t_open + timeout_s``, or with ``close_by_count`` (``match: encoder``) when the belt count reaches the
  part's key + ``counts`` (and ``grace_s`` more), or while the encoder has no belt position (``position()`` None:
  its link is down, the count does not move) at ``t_open + unplaced_s``, with views missing (a camera took no frame,
  a frame was dropped or not inspected in time): NG, *not inspected*; ``on_part`` gets no verdict for the gate (the
  gate rejects the part fail-safe at its due time, as it does a single camera's part without a verdict) and a row
  naming the missing cameras. A gate that decides a part still open (its due time came first: the default timing)
  asks ``missing_at_gate`` which views are missing, so its row, alarm and journal line name them too;
- ``close_all()`` at the end of a run closes the rest the same way.

``match: encoder``: the part's key is its belt count at the camera at offset 0 (a view's count minus its camera's
``offsets``), whichever camera sees it first; a view's count is the belt's when its frame was exposed (``count_at``
its ``t_capture``), not when the frame was handed over: a frame a camera held (a hang, a GigE resend) still joins its
part.

Late views (a view that comes after its part closed without it) are filed under that part, late, never a part of
their own: ``station.part_memory``. ``match: sequence`` (cameras out of step, frames taken twice) is
``station.part_sequence``'s; with ``window`` and ``encoder`` a camera's second frame inside the window of a part
holding its view still opens a part (a repeat cannot be told from parts closer than the window), logged naming the
camera (``_note_repeat``, ``part_memory.RepeatedViewLog``); the other cameras' views join the part nearest them, so
a bounce's part is usually the one that lacks them. Part ids count from 0 in opening order; a decided part's
verdict and row (its fields, the deciding view) are ``station.part_rows``'s.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Callable, NamedTuple

from fair_edge.line.grouped_log import log_lines
from fair_edge.records import Frame, Verdict
from fair_edge.station.part_memory import RECENT_KEYS, ClosedParts, RepeatedViewLog
from fair_edge.station.part_rows import NO_FRAME, Part, missing_now, missing_reason, part_decision
from fair_edge.station.part_sequence import SequenceMatching
from fair_edge.station.views import GroupSettings

log = logging.getLogger(__name__)

PartListener = Callable[["Verdict | None", dict], None]   # (verdict for the gate or None, the part's row)
# on_open(part id, its first view's capture time (monotonic s), its belt count with match: encoder else None)
OpenListener = Callable[[int, float, "int | None"], None]


class CloseByCount(NamedTuple):
    """``match: encoder``: a part closes when the belt count reaches its key + ``counts``, then ``grace_s`` later
    (``station.cell_timing.part_close_by_count``); a stopped belt keeps it open. While the encoder has no belt
    position (its link is down: the count is held and would keep every part open), a part closes ``unplaced_s``
    after its first view's capture (s; inf: never by time)."""

    counts: int
    grace_s: float = 0.0
    unplaced_s: float = math.inf


class PartAssembler(SequenceMatching):
    """Matches views into parts and decides each part once (see the module doc; ``match: sequence``:
    ``SequenceMatching``).

    cameras: every camera's name, in the station file's order. timeout_s: how long a part waits for its views after
    its first view's capture (``math.inf``: no time limit). count: the belt count now (``match: encoder``).
    count_at: the belt count at a time (monotonic s, a frame's ``t_capture``), None when the encoder cannot say
    (``encoder_source.mark_at``'s count): a view's count (default, or None from it: ``count`` now). offsets:
    belt counts from the camera at offset 0 to each one. close_by_count (``match: encoder``): a part also closes
    when the belt has carried it this far (``CloseByCount``). position: the belt count parts close by, None while
    the encoder has no position (``encoder_source.mark``'s count); default ``count``. plc_part: (camera, frame) ->
    the PLC part id its frame was triggered for (``match: handshake``). on_open: see ``OpenListener``; a part's
    first view was captured. on_part: see ``PartListener``. due_s: how long after a part's first view's capture the
    reject gate can still reject it (``cell_timing.part_due_s``: ``reject.delay_ms + late_ms``, s; inf: no reject
    output, or a gate that goes by belt count): a ``window`` or ``sequence`` view matching no part after that opens none
    (``_past_gate``). clock: monotonic
    seconds (tests hand in a fake one).
    """

    def __init__(self, cameras: list[str], group: GroupSettings, timeout_s: float, *, on_part: PartListener,
                 on_open: OpenListener | None = None, count: Callable[[], int] | None = None,
                 count_at: Callable[[float], int | None] | None = None,
                 offsets: dict[str, int] | None = None, close_by_count: CloseByCount | None = None,
                 position: Callable[[], int | None] | None = None,
                 plc_part: Callable[[str, Frame], int | None] | None = None, due_s: float = math.inf,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if group.match == "encoder" and count is None:
            raise ValueError("match: encoder needs the belt count (count=)")
        if close_by_count is not None and group.match != "encoder":
            raise ValueError(f"close_by_count: expected group.match encoder, found {group.match!r}")
        if group.match == "handshake" and plc_part is None:
            raise ValueError("match: handshake needs the PLC part id of each frame (plc_part=)")
        self.cameras, self.group, self.timeout_s = list(cameras), group, float(timeout_s)
        self.min_ng = group.min_ng_views(len(self.cameras))
        self.on_part, self.on_open, self.count, self.plc_part, self.clock = on_part, on_open, count, plc_part, clock
        self.offsets, self.close_by_count, self.due_s = dict(offsets or {}), close_by_count, float(due_s)
        self.position = position or count
        self.count_at = count_at
        self._init_sequence(self.cameras, clock)   # match: sequence: offsets, steps, duplicates
        self._lock = threading.Lock()
        self._open: OrderedDict[int, Part] = OrderedDict()
        self._of: dict[tuple[str, int], int] = {}        # (camera, frame seq) -> part id, for open parts
        self._memory = ClosedParts(self.cameras, group, clock)   # closed parts and their late views
        self._repeat_logs = {c: RepeatedViewLog(c, group, clock=clock) for c in self.cameras}   # window / encoder
        # how far a view's key may be from its part's (window: s, encoder: counts, handshake: 0; sequence: its own)
        self._window = {"window": group.window_ms / 1000.0, "encoder": group.window_counts}.get(group.match, 0)
        self._newest_capture: dict[str, float] = {}   # camera -> the newest t_capture filed for it (monotonic s)
        # match: handshake: key -> (when the first camera failed it (clock s), {camera: why}) of parts not open yet
        self._failed_first: OrderedDict[float, tuple[float, dict[str, str]]] = OrderedDict()
        self._next_id = 0
        self.stats = {"parts": 0, "ng": 0, "ok": 0, "not_inspected": 0, "late_views": 0}
        if group.match == "sequence":
            self.stats["resyncs"] = 0   # times a camera fell out of step (matched by capture time until in step)
            self.stats["duplicate_views"] = 0   # frames taken twice of one trigger, skipped (_skip_duplicate)

    def mark_untimed(self, cameras: set[str]) -> None:
        """``match: sequence``: these cameras have no timeline (a source that makes its image when read, an unpaced
        replay: its capture time says when inspection took it, not which trigger): their capture time never takes
        them out of step."""
        with self._lock:
            self._untimed = set(cameras)

    # ---- the cameras' threads -----------------------------------------------------------
    def on_capture(self, camera: str, frame: Frame) -> int | None:
        """File a captured frame under its part (a new one when it matches none); returns the part id. A view of a
        part that closed without it (``ClosedParts.match``) is filed under that part, late; one that matches no part
        when the gate can no longer reject its part (``_past_gate``) opens none: None. Either is counted
        ``late_views`` when its verdict (or drop) comes, and never noted at the gate, which is past its part. A
        duplicate (``match: sequence``: ``_skip_duplicate``) is in no part: None; a frame another camera took at
        the same time as its repeat is a part's view after all (``_rejoin``)."""
        key = None if self.group.match == "sequence" else self._key(camera, frame)
        opened, rejoining, decided, repeat = None, [], [], None
        with self._lock:
            if key is None:   # sequence: a frame taken twice of one trigger is in no part
                repeated = self._duplicate_of(camera, frame)
                rejoining = [] if repeated is None else self._skipped_beside(camera, frame)
                if repeated is not None and not rejoining and not self._line_moved_on(camera, frame, repeated):
                    self._skip_duplicate(camera, frame, repeated)
                    return None
            late = self._late_in_sequence(camera, frame) if key is None else None
            if late is not None:
                return self._file_late(camera, frame, late)
            if key is None:   # sequence: placed under the lock (offsets and cameras out of step)
                part = self._match_sequence(camera, frame)
                key = self._sequence_key(camera, frame)
            else:
                part = self._match(camera, key)
            if part is None and self.group.match != "handshake":
                late = self._memory.match(camera, frame, key)
                if late is not None or self._past_gate(frame):
                    return self._file_late(camera, frame, late)
            if part is None:
                repeat = self._note_repeat(camera, frame, key)   # window / encoder: logged, still a part
                part = self._new_part(frame.t_capture, key)
                opened = part
                self._take_failed_first(part, camera)
            part.seqs[camera] = frame.seq
            part.captured[camera] = frame.t_capture
            self._of[(camera, frame.seq)] = part.part_id
            self._note_filed(camera, frame)
            self._note_last_view(camera, frame.t_capture, frame.seq, part.part_id)
            decided = [d for other in rejoining if (d := self._rejoin(other, part)) is not None]
        if opened is not None:
            self._announce(opened, repeat)
        for decision in decided:
            self._decide(*decision)
        return part.part_id

    def on_drop(self, camera: str, frame: Frame, reason: str = "dropped: capture queue full") -> None:
        """The camera's frame was never inspected (its capture queue dropped it)."""
        self._file(camera, frame.seq, lambda part: part.dropped.__setitem__(camera, reason))

    def view_failed(self, camera: str, key: float, reason: str = NO_FRAME) -> None:
        """``match: handshake``: ``camera`` took no frame for the part keyed ``key`` (its PLC part id) and never will
        (``TriggerFanout.failed``: its read failed, its frame came after the next trigger, its trigger queue was full).
        Its view is in, missing (``reason`` in the part's row), so the part is decided once its other views are, not
        at ``t_open + timeout_s``: the same verdict (NG, not inspected) and counters, sooner. A part not open yet
        (no camera's frame filed) gets it when it opens, within ``timeout_s`` of this call (a part opening later
        waits for its views as before); a camera whose view is already in, or a part closed, changes nothing. Of two
        open parts with one id (a PLC that repeated it), the older lacking the camera's view gets it, as its frame
        would (``_match``): each camera meets its triggers in order."""
        if math.isnan(key):
            return
        with self._lock:
            part = next((p for p in self._open.values()    # the oldest: a camera meets its triggers in order
                         if p.key == key and camera not in p.seqs and camera not in p.dropped), None)
            if part is None:
                self._note_failed_first(camera, key, reason)
                return
            if camera in part.verdicts or camera in part.dropped:
                return
            decided = self._change(part, lambda p: p.dropped.__setitem__(camera, reason))
        if decided is not None:
            self._decide(*decided)

    # ---- the inspection loop ----------------------------------------------------------------
    def part_of(self, camera: str, seq: int) -> int | None:
        """The part id of a camera's frame (open or recently closed), None when unknown."""
        with self._lock:
            return self._of.get((camera, seq), self._memory.views.get((camera, seq)))

    def decided(self, part_id: int) -> bool:
        """Whether the part's verdict is out: decided (NG by its views in hand) or closed."""
        with self._lock:
            part = self._open.get(part_id)
            return part is None or part.decided

    def missing_at_gate(self, part_id: int) -> str:
        """The reject gate's question when it decides part ``part_id`` with no verdict (``RejectScheduler``'s
        ``why_no_verdict``: once per such part, on the gate's thread): its views not in and why, as its row names
        them when it closes (``missing view: b (not inspected in time)``); "" for a part not open (closed: the gate
        got its reason with it; or an id this assembler never opened)."""
        with self._lock:
            part = self._open.get(part_id)
            missing = None if part is None else missing_now(part, self.cameras)
        return missing_reason(missing) if missing else ""

    def on_verdict(self, frame: Frame, verdict: Verdict, anomaly_map: object = None) -> None:
        """A view's verdict (the inspector's callback); decides the part when it was the last view or its NG
        views now reach the rule."""
        self._file(verdict.camera, verdict.seq, lambda part: part.verdicts.__setitem__(verdict.camera, verdict))

    def sweep(self, now: float | None = None) -> None:
        """Close the parts whose time is up (``t_open + timeout_s``) or that the belt carried far enough
        (``close_by_count``; with no belt position, ``unplaced_s`` after they opened); call it often (the loop's
        iterations)."""
        now = self.clock() if now is None else now
        count = None if self.close_by_count is None else self.position()
        with self._lock:
            due = [p for p in self._open.values() if p.t_close <= now or self._carried_off(p, count, now)]
            for part in due:
                self._forget(part)
            late_logs = [*self._memory.late_logs.values(), *self._duplicate_logs.values(),
                         *self._repeat_logs.values()]
        for part in due:
            if not part.decided:
                self._decide(part)
        log_lines(log, (late.due() for late in late_logs))

    def close_all(self) -> None:
        """End of run: close every open part as it stands."""
        with self._lock:
            parts = list(self._open.values())
            for part in parts:
                self._forget(part)
            late_logs = [*self._memory.late_logs.values(), *self._duplicate_logs.values(),
                         *self._repeat_logs.values()]
        for part in parts:
            if not part.decided:
                self._decide(part)
        log_lines(log, (late.close() for late in late_logs))

    # ---- inside ----------------------------------------------------------------------------
    def _key(self, camera: str, frame: Frame) -> float:
        """What a view is matched on (``window``, ``encoder``, ``handshake``; ``sequence``: ``_sequence_key``)."""
        if self.group.match == "encoder":
            return float(self._count_at_capture(frame) - self.offsets.get(camera, 0))
        if self.group.match == "handshake":
            part = self.plc_part(camera, frame)
            return float("nan") if part is None else float(part)   # nan matches nothing: a part of its own
        return frame.t_capture

    def _count_at_capture(self, frame: Frame) -> int:
        """The belt count when ``frame`` was exposed (``count_at`` its ``t_capture``); ``count`` now without
        ``count_at`` or when the encoder cannot say (its link was down then: the gate, noting the part at its own
        ``mark_at``, decides it ``position_lost``)."""
        count = None if self.count_at is None else self.count_at(frame.t_capture)
        return self.count() if count is None else count

    def _new_part(self, t_capture: float, key: float) -> Part:
        """(under the lock) Open a part: its first view was captured at ``t_capture`` (monotonic s)."""
        part = Part(self._next_id, t_capture, key, t_capture + self.timeout_s)
        if self.close_by_count is not None:
            part.count_close = key + self.close_by_count.counts
        self._next_id += 1
        self._open[part.part_id] = part
        if self.group.match == "sequence":
            self._openings.append(t_capture)
            if not math.isnan(key):
                self._note_count(key, t_capture)
        return part

    def _carried_off(self, part: Part, count: int | None, now: float) -> bool:
        """(under the lock) Whether the belt (at ``count``) carried the part to its close count ``grace_s`` ago; with
        no belt position (``count`` None), whether it opened ``unplaced_s`` ago."""
        if part.count_close is None:
            return False
        if count is None:
            return now >= part.t_open + self.close_by_count.unplaced_s
        if count < part.count_close:
            return False
        if part.t_counted is None:
            part.t_counted = now
        return now >= part.t_counted + self.close_by_count.grace_s

    def _past_gate(self, frame: Frame) -> bool:
        """(under the lock) ``window`` / ``sequence``: whether the gate can no longer reject the part of this view
        (its capture + ``due_s`` is past): its part went by; opened now, it would be noted at the gate after its due
        time and pulsed at once, onto whatever part is in front of the gate."""
        return self.group.match in ("window", "sequence") and self.clock() >= frame.t_capture + self.due_s

    def _file_late(self, camera: str, frame: Frame, part_id: int | None) -> int | None:
        """(under the lock) File a view under its closed part (None: no part), late: counted ``late_views`` when
        its verdict or drop comes (``_file``). Returns ``part_id``."""
        self._memory.file_late(camera, frame.seq, part_id)
        self._note_filed(camera, frame)
        self._last_view.pop(camera, None)   # its next frame may follow at once (a held frame's): no duplicate
        self._skipped.pop(camera, None)
        return part_id

    def _note_filed(self, camera: str, frame: Frame) -> None:
        """(under the lock) A frame of ``camera`` was filed: the newest capture filed for it (``_learn_offset``)."""
        self._newest_capture[camera] = max(frame.t_capture, self._newest_capture.get(camera, -math.inf))

    def _match(self, camera: str, key: float) -> Part | None:
        """The open part this view belongs to (under the lock), None for a new part: of the open parts missing
        ``camera``'s view whose key is within the window of ``key`` (s with ``window``, counts with ``encoder``, equal
        with ``handshake``), the nearest; of two as near, the older (opened first: ``_open``'s order)."""
        nearest, bound = None, math.nextafter(self._window, math.inf)   # nearer than bound: within the window
        for part in self._open.values():
            apart = abs(key - part.key)
            if apart < bound and camera not in part.seqs:
                nearest, bound = part, apart
        return nearest

    def _announce(self, part: Part, repeat: str | None) -> None:
        """A part just opened (outside the lock): ``on_open`` (with its belt count, ``match: encoder``), and the line
        of a first view that repeated its camera's view of another part (``_note_repeat``), if due."""
        if self.on_open is not None:
            self.on_open(part.part_id, part.t_open, int(part.key) if self.group.match == "encoder" else None)
        log_lines(log, [repeat])

    def _note_repeat(self, camera: str, frame: Frame, key: float) -> str | None:
        """(under the lock, before the part it opens) ``window`` / ``encoder``: a view that matched no part but lies
        inside the window of a part (open, or recently closed: ``ClosedParts.holding``) that holds this camera's view
        already (a trigger that bounced, a frame delivered twice, or parts closer than the window: which, one frame
        cannot tell, so it still opens a part of its own, fail-safe: never a part dropped) is noted in its camera's
        ``RepeatedViewLog``: the line to log outside the lock (None: nothing now, or not such a view)."""
        if self.group.match not in ("window", "encoder"):
            return None
        beside = next((p.part_id for p in reversed(self._open.values())
                       if camera in p.seqs and abs(key - p.key) <= self._window), None)
        if beside is None:
            beside = self._memory.holding(camera, key, self._window)
        if beside is None:
            return None
        part_key = self._open[beside].key if beside in self._open else self._memory.recent[beside].key
        apart = (key - part_key) * (1000.0 if self.group.match == "window" else 1.0)   # ms or counts
        repeat_log = self._repeat_logs.setdefault(camera, RepeatedViewLog(camera, self.group, clock=self.clock))
        return repeat_log.note((frame.seq, beside, apart, self._next_id))

    def _file(self, camera: str, seq: int, change: Callable[[Part], None]) -> None:
        with self._lock:
            if self._repeats.get((camera, seq)):   # a frame delivered twice under its seq: one change is dropped
                self._repeats[(camera, seq)] -= 1
                if not self._repeats[(camera, seq)]:
                    del self._repeats[(camera, seq)]
                return
            part = self._open.get(self._of.get((camera, seq), -1))
            if part is None:
                skipped = self._skipped.get(camera)
                if skipped is not None and skipped.seq == seq:   # held in case it rejoins a part (_rejoin)
                    skipped.filed.append(change)
                elif (camera, seq) in self._memory.views:
                    self.stats["late_views"] += 1
                    log_lines(log, [self._memory.note_late(camera, seq, self._memory.views[(camera, seq)])])
                return
            decided = self._change(part, change)
        if decided is not None:
            self._decide(*decided)

    def _change(self, part: Part, change: Callable[[Part], None]) -> tuple[Part, bool] | None:
        """(under the lock) Apply ``change`` (a view filed) to an open part; closed once every camera's view is in
        (a verdict, a drop, a failure). Returns (the part to decide, early) when it is now decided: ``_decide``'s
        arguments, for the caller to call outside the lock; None when not."""
        change(part)
        complete = len(part.verdicts.keys() | part.dropped.keys()) >= len(self.cameras)
        if complete:
            self._forget(part)
        early = not complete and not part.decided and self._ng_in_hand(part)
        if part.decided or not (complete or early):
            return None
        part.decided = True
        return (part.in_hand() if early else part), early   # early: still open, other threads may file views

    def _note_failed_first(self, camera: str, key: float, reason: str) -> None:
        """(under the lock) ``view_failed`` for a part not open: kept for it (``_take_failed_first``) for
        ``timeout_s``; forgotten at once when every camera failed it (no part opens: the fanout answers it), and
        beyond the last ``RECENT_KEYS`` keys."""
        now = self.clock()
        while self._failed_first and next(iter(self._failed_first.values()))[0] + self.timeout_s <= now:
            self._failed_first.popitem(last=False)
        _, failed = self._failed_first.setdefault(key, (now, {}))
        failed[camera] = reason
        if len(failed) >= len(self.cameras):
            del self._failed_first[key]
        while len(self._failed_first) > RECENT_KEYS:
            self._failed_first.popitem(last=False)

    def _take_failed_first(self, part: Part, camera: str) -> None:
        """(under the lock) A part just opened by ``camera``'s frame: the other cameras that failed its key before
        (``_note_failed_first``, within ``timeout_s``) are in, missing."""
        if not self._failed_first or part.key not in self._failed_first:
            return
        t_failed, failed = self._failed_first.pop(part.key)
        if t_failed + self.timeout_s > self.clock():
            part.dropped.update((c, why) for c, why in failed.items() if c != camera)

    def _ng_in_hand(self, part: Part) -> bool:
        """Whether the part's inspected NG views already reach the rule: its other views cannot change it."""
        return sum(1 for v in part.verdicts.values() if v.ng and not v.error) >= self.min_ng

    def _forget(self, part: Part) -> None:
        """Move a part from open to closed (under the lock)."""
        del self._open[part.part_id]
        for camera, seq in part.seqs.items():
            self._of.pop((camera, seq), None)
        self._memory.close(part)

    def _decide(self, part: Part, early: bool = False) -> None:
        """Tell ``on_part`` the part's verdict (None when not inspected) and row. early: decided NG by its views in
        hand, the others not in yet (``NOT_AWAITED``)."""
        verdict, row = part_decision(part, self.cameras, self.min_ng, self.group.rule, early, self.clock)
        self.stats["parts"] += 1
        self.stats["ng" if row["ng"] else "ok"] += 1
        self.stats["not_inspected"] += int(not row["inspected"])
        try:
            self.on_part(verdict, row)
        except Exception:   # a sink or log failure must not stop the parts
            log.exception("part %d: on_part failed", part.part_id)

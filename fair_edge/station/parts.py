"""Views of several cameras -> parts: which frames show one part, and the part's one verdict.

``PartAssembler`` is told of every frame at capture (``on_capture``, on the cameras' threads) and
puts it into a part by the station's ``group.match`` rule (``fair_edge.station.views``); a new part is
announced at once (``on_open``: the reject gate notes it at its first view's capture time, with ``match: encoder``
at its belt count, so it is decided at its due time whatever happens to its views). Each view's verdict
(``on_verdict``) or drop (``on_drop``) is filed with its part. A part is decided once:

- as soon as its inspected NG views reach ``min_ng`` (``group.rule``): NG, whatever its other views would say;
  its verdict goes to ``on_part`` at once with the part's row, whose ``views`` name the views not in yet
  ``{"missing": NOT_AWAITED}`` (not listed in ``missing``: they were not needed). The part stays open until its
  other views are in or its time is up, so they still join it (no part of their own) and are not counted late;
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
  naming the missing cameras;
- ``close_all()`` at the end of a run closes the rest the same way.

``match: encoder``: the part's key is its belt count at the camera at offset 0 (a view's count minus its camera's
``offsets``), whichever camera sees it first; a view's count is the belt's when its frame was exposed (``count_at``
its ``t_capture``), not when the frame was handed over: a frame a camera held (a hang, a GigE resend) still joins its
part.

Late views (``window``, ``sequence``, ``encoder``): a view that comes after its part closed without it (a camera
that hung, then delivered the frame it held) is filed under that part (``_match_closed``: one of the last
``RECENT_KEYS`` closed parts its camera was not filed under, by capture time within ``window_ms``, by the count
its seq names with ``sequence``, by key within ``window_counts`` with ``encoder``), late: counted ``late_views``
when its verdict (or drop) comes, never a part of its own (which the gate would note after its due time, or at a
count where no such part is, and reject fail-safe on another part) nor paired with a later part. A ``window`` or
``sequence`` view that matches no part once the gate can no longer reject its part (``due_s`` after its capture:
``_past_gate``) opens none either: it is counted late the same way (``on_capture`` returns None).

``match: sequence`` out of step: a camera's frame marked ``resumed`` (``Frame.resumed``: frames were lost
that its seq does not count), or one that slipped silently (a camera that took no frame of a trigger counts the
next one's as that one: its frame's count names a part that opened more than ``window_ms``, and more than half
the usual time between parts, from its capture; told once ``PERIOD_PARTS`` parts have opened), can no longer be
placed by its seq. That camera is matched by capture time (``window_ms``) instead, to the nearest open part it is
missing, and its seq offset is learned again from that part (only from a frame not older than the newest one
filed for the camera); until one matches, each of its frames is a part of its own (its other views missing:
fail-safe). A part opened by such a frame takes its count from the first camera in step that joins it. A frame in
step whose count names a closed part it missed is that part's late view, never re-paired by capture time: a held
frame stamped when read looks slipped (captured far from that part's opening), and then takes its camera out of
step for its next frames; a camera that took no frame of more triggers in a row than a part's time spans loses that
one part more (its first frame after is taken for the late view: fail-safe). Each time a camera falls out of step
is logged once and counted (``stats["resyncs"]``, with ``match: sequence`` only); the line names the cameras whose
views the part it names holds (one frame cannot tell whether this camera missed a trigger or one of them took an
extra one; a frame taken twice within ``window_ms`` is told apart: below). Views are never paired by a
count that may be off. A camera without a timeline (``mark_untimed``: an unpaced replay, its frames stamped when
read) is never taken out of step by its capture time.

``match: sequence`` duplicates: a frame captured within ``window_ms`` (and less than half the usual time between
parts) of the last view filed under a part for its camera is that trigger's frame again (a trigger that bounced, a
frame delivered twice): counted (``stats["duplicate_views"]``, with ``match: sequence`` only), logged naming the
camera (its first at once, then one line per camera per ``grouped_log.LATE_LOG_S``: ``DuplicateViewLog``) and
skipped: in no part (``on_capture`` returns None; it is still inspected, its view row names no part, its verdict or
drop is only held in case it joins a part after all: below). Its seq counted no trigger, so a camera in step counts
its next frames one part less (``_skip_duplicate``). Filed as a view, it would open a part of its own (its other
views missing: a fail-safe reject right behind the good part) and push its camera's count one part ahead, so that
the next frame of a camera in step would name that early part and be the one taken out of step. A repeat that
another camera took a frame beside (within ``window_ms``: its skipped repeat, or a view filed under another part
than the one repeated) is a part's view, not a duplicate: parts closer than ``window_ms`` (a window wider than the
documented half the time between parts), or one trigger that bounced on every camera; a frame skipped before is
filed under that part then (``_rejoin``, logged), so no part goes by unannounced to the gate; a camera that skipped
several frames since its last view (a bounce, then this part's frame) leaves its view of the part missing (NG, not
inspected: which of them is the part's cannot be told, ``_rejoin_unknown``). Told once ``PERIOD_PARTS`` parts have
opened, as a slip is; never for a camera without a timeline (its frames are stamped when read, one right after
another), a ``resumed`` frame, the frame after a late view (a held frame's next one may follow at once), or a
station of one camera. The other match modes do not look for duplicates.

Part ids count from 0 in opening order. Rows (``verdicts.jsonl``, MQTT): ``{"kind": "part", "part", "t_capture",
"ng", "inspected", "score", "camera", "views": {camera: {"seq", "score", "ng"} | {"missing": why[, "seq"]}},
"ng_views", "missing", "rule"}``; ``score`` / ``camera``: the deciding view's (``_deciding_view``): an NG part's
worst NG view (furthest over its own threshold, in its camera's score unit: ``_badness``), the one that decided it;
an OK part's worst view; None for a part NG only because views are missing (no view decided it: ``missing`` names
them).
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from fair_edge.line.grouped_log import CameraGroupedLog, log_lines
from fair_edge.records import Frame, Verdict
from fair_edge.station.views import GroupSettings

log = logging.getLogger(__name__)

CLOSED_MEMORY = 4096   # closed parts remembered, so a view coming after its part closed is recognised
RECENT_KEYS = 256      # closed parts a view captured before its part closed is matched on (not match: handshake);
                       # match: sequence: part counts whose opening times a camera's slip is told by
PERIOD_PARTS = 8       # match: sequence: the usual time between parts is the median of this many last gaps
NOT_AWAITED = "not awaited: the part was NG without it"   # a view not in when its part was decided NG
NO_FRAME = "no frame"    # a part row's why for a camera that took no frame of it (failed it, or silent to its close)
FUSED_SCORE_UNIT = 1.0   # a fused bundle's score unit: its members' normal spread (``_badness``)
PartListener = Callable[["Verdict | None", dict], None]   # (verdict for the gate or None, the part's row)
# on_open(part id, its first view's capture time (monotonic s), its belt count with match: encoder else None)
OpenListener = Callable[[int, float, "int | None"], None]


class CloseByCount(NamedTuple):
    """``match: encoder``: a part closes when the belt count reaches its key + ``counts``, then ``grace_s`` later
    (``station.cell.part_close_by_count``); a stopped belt keeps it open. While the encoder has no belt position
    (its link is down: the count is held and would keep every part open), a part closes ``unplaced_s`` after its
    first view's capture (s; inf: never by time)."""

    counts: int
    grace_s: float = 0.0
    unplaced_s: float = math.inf


class _ClosedPart(NamedTuple):
    """A recently closed part, for the views captured before it closed that come after (``_match_closed``).
    key: as ``_Part.key``; t_open: its first view's capture (monotonic s); seen: the cameras filed under it."""

    key: float
    t_open: float
    seen: set[str]


class _LastView(NamedTuple):
    """``match: sequence``: a camera's last view filed under an open part, that a duplicate repeats
    (``PartAssembler._duplicate_of``). t_capture: monotonic s; part_id: its part; offset: its camera's seq offset
    then (part count minus seq; None while the camera was out of step)."""

    t_capture: float
    seq: int
    part_id: int
    offset: int | None


@dataclass
class _Skipped:
    """``match: sequence``: the duplicates a camera took since its last view (``PartAssembler._skip_duplicate``):
    the first one's seq and capture time (monotonic s), which may still join a part (``_rejoin``), with its verdict
    or drop if it came (``filed``: the changes ``_file`` was handed); last_seq: the highest seq skipped, captured at
    last_t_capture (monotonic s)."""

    seq: int
    t_capture: float
    last_seq: int
    filed: list = field(default_factory=list)
    last_t_capture: float = -math.inf


@dataclass
class _Part:
    """A part with its views so far. key: what views are matched on (capture time s, frame seq, or belt count)."""

    part_id: int
    t_open: float
    key: float
    t_close: float
    seqs: dict[str, int] = field(default_factory=dict)            # camera -> its frame's seq
    verdicts: dict[str, Verdict] = field(default_factory=dict)    # camera -> its view's verdict
    dropped: dict[str, str] = field(default_factory=dict)         # camera -> why its frame was not inspected
    decided: bool = False   # its verdict is out (NG by the views before the rest): it closes without another
    count_close: float | None = None   # close_by_count: the belt count it closes at (grace_s after it)
    t_counted: float | None = None     # ... when a sweep first saw the belt there (monotonic s)
    captured: dict[str, float] = field(default_factory=dict)   # camera -> its frame's t_capture (monotonic s)

    def in_hand(self) -> "_Part":
        """A copy of the views so far (under the lock): a part decided while open is decided from this, as the
        cameras' threads may file more views meanwhile."""
        return _Part(self.part_id, self.t_open, self.key, self.t_close, dict(self.seqs), dict(self.verdicts),
                     dict(self.dropped), self.decided)


class PartAssembler:
    """Matches views into parts and decides each part once (see the module doc).

    cameras: every camera's name, in the station file's order. timeout_s: how long a part waits for its views after
    its first view's capture (``math.inf``: no time limit). count: the belt count now (``match: encoder``).
    count_at: the belt count at a time (monotonic s, a frame's ``t_capture``), None when the encoder cannot say
    (``encoder_source.mark_at``'s count): a view's count (default, or None from it: ``count`` now). offsets:
    belt counts from the camera at offset 0 to each one. close_by_count (``match: encoder``): a part also closes
    when the belt has carried it this far (``CloseByCount``). position: the belt count parts close by, None while
    the encoder has no position (``encoder_source.mark``'s count); default ``count``. plc_part: (camera, frame) ->
    the PLC part id its frame was triggered for (``match: handshake``). on_open: see ``OpenListener``; a part's
    first view was captured. on_part: see ``PartListener``. due_s: how long after a part's first view's capture the
    reject gate can still reject it (``cell.part_due_s``: ``reject.delay_ms + late_ms``, s; inf: no reject output,
    or a gate that goes by belt count): a ``window`` or ``sequence`` view matching no part after that opens none
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
        self._seq_offset: dict[str, int] = {}   # match: sequence: camera -> part count minus its frame seq
        self._resync: set[str] = set()           # ... cameras whose seq lost step (matched by time)
        self._untimed: set[str] = set()          # ... cameras without a timeline: never out of step by time
        self._count_opened: OrderedDict[float, float] = OrderedDict()   # ... recent part count -> its t_open (s)
        self._forgotten_count = -math.inf        # ... the highest count dropped from that memory
        self._openings: deque[float] = deque(maxlen=PERIOD_PARTS + 1)   # ... the last parts' t_open (s)
        self._lock = threading.Lock()
        self._open: OrderedDict[int, _Part] = OrderedDict()
        self._of: dict[tuple[str, int], int] = {}        # (camera, frame seq) -> part id, for open parts
        self._closed: OrderedDict[tuple[str, int], int | None] = OrderedDict()   # ... for views of closed parts
        # (None: a view that matched no part when the gate could no longer reject its part: _past_gate)
        self._recent: OrderedDict[int, _ClosedPart] = OrderedDict()   # recently closed part id -> its key, cameras
        self._newest_capture: dict[str, float] = {}   # camera -> the newest t_capture filed for it (monotonic s)
        # match: handshake: key -> (when the first camera failed it (clock s), {camera: why}) of parts not open yet
        self._failed_first: OrderedDict[float, tuple[float, dict[str, str]]] = OrderedDict()
        self._next_id = 0
        self._late_logs = {c: LateViewLog(c, clock=clock) for c in self.cameras}   # camera -> its late views' log
        self._last_view: dict[str, _LastView] = {}   # ... camera -> its last view filed under an open part
        self._skipped: dict[str, _Skipped] = {}      # ... camera -> the duplicates it took since that view
        # ... (camera, seq) -> frames delivered again under their own seq whose verdict or drop is still to come: that
        # many of the key's next changes are the repeats' (the same image), dropped (``_file``)
        self._repeats: dict[tuple[str, int], int] = {}
        self._duplicate_logs = {c: DuplicateViewLog(c, clock=clock) for c in self.cameras}   # ... camera -> its log
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
        part that closed without it (``_match_closed``) is filed under that part, late; one that matches no part
        when the gate can no longer reject its part (``_past_gate``) opens none: None. Either is counted
        ``late_views`` when its verdict (or drop) comes, and never noted at the gate, which is past its part. A
        duplicate (``match: sequence``: ``_skip_duplicate``) is in no part: None; a frame another camera took at
        the same time as its repeat is a part's view after all (``_rejoin``)."""
        key = None if self.group.match == "sequence" else self._key(camera, frame)
        opened, rejoining, decided = None, [], []
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
                late = self._match_closed(camera, frame, key)
                if late is not None or self._past_gate(frame):
                    return self._file_late(camera, frame, late)
            if part is None:
                part = self._new_part(frame.t_capture, key)
                opened = part
                self._take_failed_first(part, camera)
            part.seqs[camera] = frame.seq
            part.captured[camera] = frame.t_capture
            self._of[(camera, frame.seq)] = part.part_id
            self._note_filed(camera, frame)
            self._note_last_view(camera, frame.t_capture, frame.seq, part.part_id)
            decided = [d for other in rejoining if (d := self._rejoin(other, part)) is not None]
        if opened is not None and self.on_open is not None:
            count = int(opened.key) if self.group.match == "encoder" else None
            self.on_open(opened.part_id, opened.t_open, count)
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
        waits for its views as before); a camera whose view is already in, or a part closed, changes nothing."""
        if math.isnan(key):
            return
        with self._lock:
            part = next((p for p in reversed(self._open.values()) if p.key == key and camera not in p.seqs), None)
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
            return self._of.get((camera, seq), self._closed.get((camera, seq)))

    def decided(self, part_id: int) -> bool:
        """Whether the part's verdict is out: decided (NG by its views in hand) or closed."""
        with self._lock:
            part = self._open.get(part_id)
            return part is None or part.decided

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
            late_logs = [*self._late_logs.values(), *self._duplicate_logs.values()]
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
            late_logs = [*self._late_logs.values(), *self._duplicate_logs.values()]
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

    def _new_part(self, t_capture: float, key: float) -> _Part:
        """(under the lock) Open a part: its first view was captured at ``t_capture`` (monotonic s)."""
        part = _Part(self._next_id, t_capture, key, t_capture + self.timeout_s)
        if self.close_by_count is not None:
            part.count_close = key + self.close_by_count.counts
        self._next_id += 1
        self._open[part.part_id] = part
        if self.group.match == "sequence":
            self._openings.append(t_capture)
            if not math.isnan(key):
                self._note_count(key, t_capture)
        return part

    def _carried_off(self, part: _Part, count: int | None, now: float) -> bool:
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

    def _match_closed(self, camera: str, frame: Frame, key: float) -> int | None:
        """(under the lock) The recently closed part (``RECENT_KEYS``) this camera was not filed under that a view
        matching no open part belongs to (``_closed_distance``: the nearest), None when there is none."""
        near = [(self._closed_distance(frame, key, closed), part_id) for part_id, closed in self._recent.items()
                if camera not in closed.seen]
        distance, part_id = min(near, default=(math.inf, None))
        if math.isinf(distance):
            return None
        self._recent[part_id].seen.add(camera)   # a second frame of this camera is a part of its own, as when open
        return part_id

    def _closed_distance(self, frame: Frame, key: float, closed: _ClosedPart) -> float:
        """(under the lock) How far a view (its ``key``) is from a closed part, inf where it is not that part's: by
        key within ``window_counts`` (``encoder``); by the part's count (``sequence``, a camera in step); by its
        first view's capture within ``window_ms`` (``window``; ``sequence``, a camera out of step: nan key)."""
        if self.group.match == "encoder":
            distance, most = abs(key - closed.key), self.group.window_counts
        elif self.group.match == "sequence" and not math.isnan(key):
            distance, most = (0.0 if closed.key == key else math.inf), 0.0
        else:
            distance, most = abs(frame.t_capture - closed.t_open), self.group.window_ms / 1000.0
        return distance if distance <= most else math.inf

    def _past_gate(self, frame: Frame) -> bool:
        """(under the lock) ``window`` / ``sequence``: whether the gate can no longer reject the part of this view
        (its capture + ``due_s`` is past): its part went by; opened now, it would be noted at the gate after its due
        time and pulsed at once, onto whatever part is in front of the gate."""
        return self.group.match in ("window", "sequence") and self.clock() >= frame.t_capture + self.due_s

    def _file_late(self, camera: str, frame: Frame, part_id: int | None) -> int | None:
        """(under the lock) File a view under its closed part (None: no part), late: counted ``late_views`` when
        its verdict or drop comes (``_file``). Returns ``part_id``."""
        self._closed[(camera, frame.seq)] = part_id
        self._trim_closed()
        self._note_filed(camera, frame)
        self._last_view.pop(camera, None)   # its next frame may follow at once (a held frame's): no duplicate
        self._skipped.pop(camera, None)
        return part_id

    def _note_filed(self, camera: str, frame: Frame) -> None:
        """(under the lock) A frame of ``camera`` was filed: the newest capture filed for it (``_learn_offset``)."""
        self._newest_capture[camera] = max(frame.t_capture, self._newest_capture.get(camera, -math.inf))

    def _match(self, camera: str, key: float) -> _Part | None:
        """The open part this view belongs to (under the lock), None for a new part."""
        window = {"window": self.group.window_ms / 1000.0, "encoder": self.group.window_counts, "handshake": 0}
        for part in reversed(self._open.values()):
            if camera not in part.seqs and abs(key - part.key) <= window[self.group.match]:
                return part
        return None

    def _sequence_key(self, camera: str, frame: Frame) -> float:
        """The part count a frame of a camera in step answers (nan for one out of step: it matches no count)."""
        if camera in self._resync:
            return float("nan")
        return float(frame.seq + self._seq_offset.get(camera, 0))

    def _late_in_sequence(self, camera: str, frame: Frame) -> int | None:
        """``match: sequence`` (under the lock): the closed part that a frame of a camera in step names by its count
        and that closed without it: the frame is a late view of it (a held frame delivered after its part closed),
        never paired again by capture time. If it also slipped (``_slip``: captured far from that part's opening;
        a held frame stamped when read looks so), the camera is out of step from here on: its seq may no longer
        tell its part. None for any other frame (a ``resumed`` one's seq does not count the frames lost)."""
        if frame.resumed or camera in self._resync:
            return None
        count = self._sequence_key(camera, frame)
        if any(p.key == count and camera not in p.seqs for p in self._open.values()):
            return None
        part_id = self._match_closed(camera, frame, count)
        if part_id is not None:
            slipped = self._slip(camera, frame)
            if slipped:
                self._lose_step(camera, slipped)
        return part_id

    def _match_sequence(self, camera: str, frame: Frame) -> _Part | None:
        """``match: sequence`` (under the lock): the open part of this frame's count; for a camera out of step
        (``resumed``, or slipped: ``_slip``), the nearest open part by capture time within ``window_ms``, whose
        count re-learns its offset (``_learn_offset``). A frame in step joining a part opened out of step gives that
        part its count (and its out-of-step views theirs)."""
        if frame.resumed:
            self._lose_step(camera, "frames were lost that its sequence numbers do not count")
        slipped = self._slip(camera, frame)
        if slipped:
            self._lose_step(camera, slipped)
        key = self._sequence_key(camera, frame)
        free = [p for p in reversed(self._open.values()) if camera not in p.seqs]
        part = next((p for p in free if p.key == key), None)
        if part is not None:
            return part
        near = [p for p in free if abs(p.t_open - frame.t_capture) <= self.group.window_ms / 1000.0
                and (p.key != p.key or camera in self._resync)]   # nan: a part opened out of step
        part = min(near, key=lambda p: abs(p.t_open - frame.t_capture), default=None)
        if part is None:
            return None
        if part.key != part.key and key == key:   # an out-of-step part takes this camera's count
            part.key = key
            self._note_count(key, part.t_open)
            for other, seq in part.seqs.items():
                self._learn_offset(other, int(key) - seq, part.captured[other])
        elif part.key == part.key:
            self._learn_offset(camera, int(part.key) - frame.seq, frame.t_capture)
        return part

    def _duplicate_of(self, camera: str, frame: Frame) -> _LastView | None:
        """(under the lock) ``match: sequence``: the camera's last view filed under a part when this frame may repeat
        its trigger: captured within ``window_ms`` of it and less than half the usual time between parts
        (``_part_period``; the next trigger's frame is a period on), so by the documented pairing window no other
        trigger's. None for any other frame, a ``resumed`` one (its own step rule), a camera without a timeline
        (``mark_untimed``: stamped when read, one frame right after another), before ``PERIOD_PARTS`` gaps between
        parts are known, and in a station of one camera (no other camera to tell a part from a repeat)."""
        last = self._last_view.get(camera)
        if last is None or frame.resumed or camera in self._untimed or len(self.cameras) < 2:
            return None
        period = self._part_period()
        apart_s = abs(frame.t_capture - last.t_capture)
        if period is None or apart_s > self.group.window_ms / 1000.0 or apart_s >= period / 2:
            return None
        return last

    def _skipped_beside(self, camera: str, frame: Frame) -> list[str]:
        """(under the lock) The other cameras whose skipped duplicate was captured within ``window_ms`` of this frame,
        itself a repeat of its camera's last view: every camera took another frame at once, so it is a part (parts
        closer than ``window_ms``, or one trigger that bounced on every camera): those frames join it (``_rejoin``)."""
        window_s = self.group.window_ms / 1000.0
        return [other for other, skipped in self._skipped.items()
                if other != camera and abs(skipped.t_capture - frame.t_capture) <= window_s]

    def _line_moved_on(self, camera: str, frame: Frame, repeated: _LastView) -> bool:
        """(under the lock) Whether another camera filed a view captured within ``window_ms`` of this frame under
        another part than the one this frame repeats: that camera took its frame of a next part already, so this one
        is that part's view, not a duplicate."""
        window_s = self.group.window_ms / 1000.0
        return any(other != camera and last.part_id != repeated.part_id
                   and abs(last.t_capture - frame.t_capture) <= window_s for other, last in self._last_view.items())

    def _skip_duplicate(self, camera: str, frame: Frame, repeated: _LastView) -> None:
        """(under the lock) ``frame`` repeats the camera's last view (``_duplicate_of``), and no other camera took a
        frame beside it: skipped, filed nowhere (its verdict or drop is held for a ``_rejoin``), counted
        ``duplicate_views`` and logged (``DuplicateViewLog``). Its seq counted no trigger: a camera in step counts
        its next frame as the part after the one it repeats."""
        if frame.seq <= repeated.seq:   # the same frame again under its own seq: counts no seq off; one of its two
            key = (camera, frame.seq)      # verdicts is dropped (``_file``), not filed again or counted late
            self._repeats[key] = self._repeats.get(key, 0) + 1
        else:
            skipped = self._skipped.setdefault(camera, _Skipped(frame.seq, frame.t_capture, frame.seq))
            skipped.last_seq = max(skipped.last_seq, frame.seq)
            skipped.last_t_capture = max(skipped.last_t_capture, frame.t_capture)
            if camera not in self._resync and repeated.offset is not None:
                self._seq_offset[camera] = repeated.offset - (skipped.last_seq - repeated.seq)
        self.stats["duplicate_views"] += 1
        apart_ms = (frame.t_capture - repeated.t_capture) * 1000.0
        log_lines(log, [self._duplicate_log(camera).note((frame.seq, repeated.seq, repeated.part_id, apart_ms))])

    def _rejoin(self, camera: str, part: _Part) -> tuple[_Part, bool] | None:
        """(under the lock) The camera's skipped duplicate was a view of ``part`` after all (``_skipped_beside``):
        filed under it (with its verdict or drop if either came), no longer counted ``duplicate_views``, its camera's
        offset as before it, and logged: ``group.window_ms`` is wider than half the time between these parts.
        Returns ``_change``'s decision for the caller to make outside the lock (None: none)."""
        skipped = self._skipped.pop(camera)
        if camera in part.seqs:
            return None
        last = self._last_view.get(camera)
        if camera not in self._resync and last is not None and last.offset is not None:
            self._seq_offset[camera] = last.offset - max(skipped.last_seq - skipped.seq, 0)
        if skipped.last_seq != skipped.seq:   # several frames skipped: the part's may be any of them
            return self._rejoin_unknown(camera, skipped, part)
        part.seqs[camera] = skipped.seq
        part.captured[camera] = skipped.t_capture
        self._of[(camera, skipped.seq)] = part.part_id
        self._newest_capture[camera] = max(skipped.t_capture, self._newest_capture.get(camera, -math.inf))
        self._note_last_view(camera, skipped.t_capture, skipped.seq, part.part_id)
        self.stats["duplicate_views"] -= 1
        log.warning("camera %s frame %d: not a duplicate: the other cameras took a frame beside it too, so it is part "
                    "%d's view (parts closer than group.window_ms (%g ms) apart, or one trigger that bounced on every "
                    "camera: set group.window_ms below half the shortest time between parts)", camera, skipped.seq,
                    part.part_id, self.group.window_ms)
        decision = None
        for change in skipped.filed:
            decision = self._change(part, change) or decision
        return decision

    def _rejoin_unknown(self, camera: str, skipped: _Skipped, part: _Part) -> tuple[_Part, bool] | None:
        """(under the lock) ``_rejoin`` when the camera skipped several frames since its last view (a bounce and then
        this part's frame, parts closer than ``window_ms``): one of them is ``part``'s view, which one cannot be told
        (filing the first could show the part before's image). Fail-safe: the camera's view of ``part`` is missing
        (the part NG, not inspected), one frame fewer counted ``duplicate_views``, and its count goes on from the
        newest one. Returns ``_change``'s decision for the caller to make outside the lock (None: none)."""
        self._note_last_view(camera, skipped.last_t_capture, skipped.last_seq, part.part_id)
        self.stats["duplicate_views"] -= 1
        log.warning("camera %s frames %d..%d: taken within group.window_ms (%g ms) of each other and of part %d's other "
                    "views, so one of them is part %d's view and which one cannot be told: its view is missing (NG, "
                    "not inspected); set group.window_ms below half the shortest time between parts", camera,
                    skipped.seq, skipped.last_seq, self.group.window_ms, part.part_id, part.part_id)
        why = f"frames {skipped.seq}..{skipped.last_seq} within group.window_ms: which is this part's is unknown"
        return self._change(part, lambda p: p.dropped.__setitem__(camera, why))

    def _note_last_view(self, camera: str, t_capture: float, seq: int, part_id: int) -> None:
        """(under the lock) The camera's frame ``seq`` captured at ``t_capture`` (monotonic s) was filed under open
        part ``part_id``: what its next frames are told duplicates by; its duplicates before are final."""
        offset = None if camera in self._resync else self._seq_offset.get(camera, 0)
        self._last_view[camera] = _LastView(t_capture, seq, part_id, offset)
        self._skipped.pop(camera, None)

    def _duplicate_log(self, camera: str) -> "DuplicateViewLog":
        """(under the lock) The camera's duplicate-view log (a camera not in the station file's list gets its own)."""
        if camera not in self._duplicate_logs:
            self._duplicate_logs[camera] = DuplicateViewLog(camera, clock=self.clock)
        return self._duplicate_logs[camera]

    def _slip(self, camera: str, frame: Frame) -> str:
        """(under the lock) Why a camera in step has slipped, '' when it has not: its frame's count names a part that
        opened more than ``window_ms``, and more than half the usual time between parts (``_part_period``), from the
        frame's capture (it answers another trigger: a camera took no frame of one, or an extra one, and the seqs
        do not show it). Not told for a camera without a timeline (``mark_untimed``), a count no part has had yet,
        or before ``PERIOD_PARTS`` gaps between parts are known."""
        if camera in self._resync or camera in self._untimed:
            return ""
        count = self._sequence_key(camera, frame)
        opened = self._count_opened_at(count)
        if opened is None or abs(frame.t_capture - opened) <= self.group.window_ms / 1000.0:
            return ""
        apart_s, period = abs(frame.t_capture - opened), self._part_period()
        if period is None or apart_s <= period / 2:
            return ""
        when = f"at {opened:.3f} s" if math.isfinite(opened) else f"before the last {RECENT_KEYS} parts"
        others = [c for c in self._filed_under_count(count) if c != camera]
        named = f" with the view{'s' if len(others) > 1 else ''} of camera {', '.join(others)}" if others else ""
        extra = f"camera {', '.join(others)} took" if others else "a camera took"
        return (f"its frame seq {frame.seq}, captured at {frame.t_capture:.3f} s, counts as part {int(count)}, which "
                f"opened {when}{named}: more than group.window_ms ({self.group.window_ms:g} ms) and half the time "
                f"between parts ({period * 500:.0f} ms) apart: its seq and the part count no longer name one trigger "
                f"(camera {camera} took no frame of one, or {extra} an extra one: then this camera is in step and that "
                "one's count is off; if one part's views are captured that far apart here, raise group.window_ms)")

    def _filed_under_count(self, count: float) -> list[str]:
        """(under the lock) ``match: sequence``: the cameras filed under the open or recently closed part of this
        count, in the station file's order ([] when none is remembered), for the out-of-step line to name."""
        part = next((p for p in self._open.values() if p.key == count), None)
        if part is not None:
            seen = set(part.seqs)
        else:
            seen = next((closed.seen for closed in self._recent.values() if closed.key == count), set())
        return [c for c in self.cameras if c in seen] + sorted(seen - set(self.cameras))

    def _lose_step(self, camera: str, why: str) -> None:
        """(under the lock) The camera's seq no longer tells its part: match it by capture time until one joins a
        part (``_learn_offset``); logged and counted once per episode."""
        if camera in self._resync:
            return
        self._resync.add(camera)
        self.stats["resyncs"] += 1
        log.warning("camera %s: out of step: %s; its views are matched by capture time (group.window_ms) until one "
                    "joins a part", camera, why)

    def _note_count(self, count: float, t_open: float) -> None:
        """(under the lock) ``match: sequence``: the part of ``count`` opened at ``t_open`` (monotonic s); the last
        ``RECENT_KEYS`` counts are kept."""
        self._count_opened[count] = t_open
        while len(self._count_opened) > RECENT_KEYS:
            forgotten, _ = self._count_opened.popitem(last=False)
            self._forgotten_count = max(self._forgotten_count, forgotten)

    def _count_opened_at(self, count: float) -> float | None:
        """(under the lock) When the part of ``count`` opened (monotonic s; -inf: before the counts remembered),
        None when no part has had it yet."""
        if math.isnan(count):
            return None
        if count in self._count_opened:
            return self._count_opened[count]
        return -math.inf if count <= self._forgotten_count else None

    def _part_period(self) -> float | None:
        """(under the lock) The usual time between parts, s: the median gap between the last parts' openings; None
        before ``PERIOD_PARTS`` gaps are known."""
        if len(self._openings) < self._openings.maxlen:
            return None
        times = sorted(self._openings)
        return statistics.median(b - a for a, b in zip(times, times[1:]))

    def _learn_offset(self, camera: str, offset: int, t_capture: float) -> None:
        """(under the lock) A camera out of step is in step again: its frame captured at ``t_capture`` (monotonic s)
        joined a counted part, its seq + ``offset`` = the part count. Not learned from a frame older than the newest
        one already filed for the camera (a held frame delivered late: its seq says nothing of the frames after)."""
        if camera in self._resync and t_capture >= self._newest_capture.get(camera, -math.inf):
            self._resync.discard(camera)
            self._seq_offset[camera] = offset
            log.warning("camera %s: in step again (its frame seq + %d = the part count)", camera, offset)

    def _file(self, camera: str, seq: int, change: Callable[[_Part], None]) -> None:
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
                elif (camera, seq) in self._closed:
                    self.stats["late_views"] += 1
                    self._log_late_view(camera, seq, self._closed[(camera, seq)])
                return
            decided = self._change(part, change)
        if decided is not None:
            self._decide(*decided)

    def _change(self, part: _Part, change: Callable[[_Part], None]) -> tuple[_Part, bool] | None:
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

    def _take_failed_first(self, part: _Part, camera: str) -> None:
        """(under the lock) A part just opened by ``camera``'s frame: the other cameras that failed its key before
        (``_note_failed_first``, within ``timeout_s``) are in, missing."""
        if not self._failed_first or part.key not in self._failed_first:
            return
        t_failed, failed = self._failed_first.pop(part.key)
        if t_failed + self.timeout_s > self.clock():
            part.dropped.update((c, why) for c, why in failed.items() if c != camera)

    def _log_late_view(self, camera: str, seq: int, part_id: int | None) -> None:
        """(under the lock) A view's verdict (or drop) came for a part that had closed without it (None: it matched no
        part): logged at once when it is its camera's first in a while, else gathered (``LateViewLog``)."""
        late_log = self._late_logs.get(camera)
        if late_log is None:   # a camera not in the station file's list: its own log all the same
            late_log = self._late_logs[camera] = LateViewLog(camera, clock=self.clock)
        log_lines(log, [late_log.note((seq, part_id))])

    def _ng_in_hand(self, part: _Part) -> bool:
        """Whether the part's inspected NG views already reach the rule: its other views cannot change it."""
        return sum(1 for v in part.verdicts.values() if v.ng and not v.error) >= self.min_ng

    def _forget(self, part: _Part) -> None:
        """Move a part from open to closed (under the lock)."""
        del self._open[part.part_id]
        for camera, seq in part.seqs.items():
            self._of.pop((camera, seq), None)
            self._closed[(camera, seq)] = part.part_id
        self._trim_closed()
        self._recent[part.part_id] = _ClosedPart(part.key, part.t_open, set(part.seqs))
        while len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)

    def _trim_closed(self) -> None:
        """(under the lock) Keep the last ``CLOSED_MEMORY`` views of closed parts."""
        while len(self._closed) > CLOSED_MEMORY:
            self._closed.popitem(last=False)

    def _decide(self, part: _Part, early: bool = False) -> None:
        """Tell ``on_part`` the part's verdict (None when not inspected) and row. early: decided NG by its views in
        hand, the others not in yet (``NOT_AWAITED``)."""
        inspected_views = {c: v for c, v in part.verdicts.items() if not v.error}
        ng_views = [c for c in self.cameras if c in inspected_views and inspected_views[c].ng]
        absent = {c: _why_missing(part, c, early) for c in self.cameras if c not in inspected_views}
        missing = {c: why for c, why in absent.items() if why != NOT_AWAITED}   # not awaited: not missing
        inspected = not missing or len(ng_views) >= self.min_ng
        ng = len(ng_views) >= self.min_ng or bool(missing)
        decider = _deciding_view(inspected_views, ng_views, ng)
        row = {"kind": "part", "part": part.part_id, "t_capture": part.t_open, "ng": ng, "inspected": inspected,
               "score": None if decider is None else decider.score,
               "camera": None if decider is None else decider.camera,
               "views": {c: _view_row(part, c, absent.get(c)) for c in self.cameras},
               "ng_views": ng_views, "missing": sorted(missing), "rule": self.group.rule}
        reasons = [f"missing view{'s' if len(missing) > 1 else ''}: " + ", ".join(
            f"{c} ({why})" for c, why in missing.items())] if missing else []
        reasons += [f"{c}: {inspected_views[c].reason}" for c in ng_views if inspected_views[c].reason]
        if reasons:
            row["reason"] = "; ".join(reasons)
        self.stats["parts"] += 1
        self.stats["ng" if ng else "ok"] += 1
        self.stats["not_inspected"] += int(not inspected)
        verdict = None   # not inspected: the gate gets no verdict and rejects the part fail-safe at its due time
        if inspected:    # every view in, or enough NG views: the deciding view's regions decide an NG part too
            verdict = Verdict(part.part_id, part.t_open, decider.score, decider.threshold, ng, self.clock(),
                              decider.source, "", decider.model, decider.regions if ng else (),
                              decider.hits if ng else (), camera=decider.camera)
        try:
            self.on_part(verdict, row)
        except Exception:   # a sink or log failure must not stop the parts
            log.exception("part %d: on_part failed", part.part_id)


class LateViewLog(CameraGroupedLog):
    """Groups one camera's late-view log lines (``CameraGroupedLog``), so a camera that lags for good (every view
    after its part closed) does not drown the rest of the log: its first late view after a quiet spell is logged at
    once with its frame and part, the ones after it as one line per ``window_s`` (their count, the last one's frame
    and part). Each is still counted ``late_views``.

    ``note((seq, part_id))``: the camera's frame ``seq`` was late for part ``part_id`` (None: it matched no part).
    """

    def _first_line(self, late: tuple[int, int | None]) -> str:
        seq, part_id = late
        if part_id is None:
            what = ("came after its part's time was up and matched no part open or recently closed; not a part of "
                    "its own (the gate is past it)")
        else:
            what = f"its part {part_id} had closed without it"
        return (f"camera {self.camera} frame {seq}: {what}; further late views of this camera are logged together, "
                f"one line per {self.window_s:g} s (each is counted in late_views)")

    def _gathered_line(self, held: list[tuple[int, int | None]], span_s: float) -> str:
        seq, part_id = held[-1]
        last = "matched no part" if part_id is None else f"part {part_id}"
        views = f"{len(held)} more late view{'s' if len(held) > 1 else ''}"
        return (f"camera {self.camera}: {views} in the last {span_s:.1f} s (their part had closed without them, or "
                f"they matched none), the last frame {seq} ({last}); each is counted in late_views")


class DuplicateViewLog(CameraGroupedLog):
    """Groups one camera's duplicate-view log lines (``match: sequence``, ``PartAssembler._skip_duplicate``,
    ``CameraGroupedLog``): a camera whose trigger bounces on every part does not drown the log; its first duplicate
    after a quiet spell is logged at once with its frame, the view it repeats and how far apart they were captured,
    the ones after it as one line per ``window_s`` (their count, the last one's frame). Each is still counted
    ``duplicate_views``.

    ``note((seq, repeated_seq, part_id, apart_ms))``: the camera's frame ``seq`` repeated its frame ``repeated_seq``
    (filed under part ``part_id``, None when no longer remembered), captured ``apart_ms`` after it.
    """

    def _first_line(self, duplicate: tuple[int, int, int | None, float]) -> str:
        seq, repeated_seq, part_id, apart_ms = duplicate
        part = "" if part_id is None else f" (part {part_id})"
        return (f"camera {self.camera} frame {seq}: captured {apart_ms:+.1f} ms from its frame {repeated_seq}{part}, "
                "within group.window_ms: one trigger's frame taken twice (a trigger that bounced, a frame delivered "
                "twice); skipped, not a part of its own, and the camera's next frame counts as the next part; "
                f"further duplicates of this camera are logged together, one line per {self.window_s:g} s (each is "
                "counted in duplicate_views)")

    def _gathered_line(self, held: list[tuple[int, int, int | None, float]], span_s: float) -> str:
        seq, repeated_seq = held[-1][:2]
        views = f"{len(held)} more duplicate frame{'s' if len(held) > 1 else ''}"
        return (f"camera {self.camera}: {views} in the last {span_s:.1f} s (one trigger's frame taken twice), "
                f"skipped; the last frame {seq} (repeating frame {repeated_seq}); each is counted in duplicate_views")


def _why_missing(part: _Part, camera: str, early: bool) -> str:
    """Why a camera's view did not decide the part: its inspection failed, its frame was dropped, (early) it was
    not in yet when the part was decided NG, or (at the part's close) it was not inspected in time or never taken."""
    if camera in part.verdicts:
        return f"not inspected: {part.verdicts[camera].error}"
    if camera in part.dropped:
        return part.dropped[camera]
    if early:
        return NOT_AWAITED
    return "not inspected in time" if camera in part.seqs else NO_FRAME


def _deciding_view(inspected_views: dict[str, Verdict], ng_views: list[str], ng: bool) -> Verdict | None:
    """The view the part's row and verdict name: the worst NG view (``_badness``: the one that decided an NG part),
    else for an OK part its worst view; None for a part NG only because views are missing."""
    if ng_views:
        return max((inspected_views[c] for c in ng_views), key=_badness)
    if not ng:
        return max(inspected_views.values(), key=_badness, default=None)
    return None


def _view_row(part: _Part, camera: str, missing: str | None) -> dict:
    """A camera's entry in the part row: {seq, score, ng} of its verdict; {missing: why} (with the frame's seq when
    it took one: a dropped frame, one not inspected in time or one whose inspection failed)."""
    if missing is None:
        v = part.verdicts[camera]
        return {"seq": v.seq, "score": v.score, "ng": v.ng}
    return {"missing": missing, **({"seq": part.seqs[camera]} if camera in part.seqs else {})}


def _badness(verdict: Verdict) -> float:
    """How far over its own threshold a view is, in a unit of its camera's scores: 1 + (score - threshold) / unit
    (1 at the threshold, above 1 over it; an unscored view is the worst, inf), so that the views of models whose
    scores live on other scales compare (a cell mixing fused and single bundles).

    unit: a single bundle's threshold (> 0: its scores are >= 0), which makes it score / threshold, as before;
    ``FUSED_SCORE_UNIT`` for a fused bundle's view (``Verdict.fused``), or any threshold <= 0, which only a fused
    bundle's can be: its scores are in its members' normal-spread units (``runtime.fusion``: normal parts about
    -2 .. 0, the threshold either side of 0, no scale to divide by), so its margin is counted in normal spreads.
    Before, such a view ranked by its raw score (or by score / threshold) against the other cameras' score /
    threshold. Views of one model at one threshold rank by their scores either way."""
    if verdict.score is None:
        return float("inf")
    if verdict.threshold > 0 and not verdict.fused:
        return verdict.score / verdict.threshold
    return 1.0 + (verdict.score - verdict.threshold) / FUSED_SCORE_UNIT

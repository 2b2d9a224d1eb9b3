"""``match: sequence`` for ``station.parts.PartAssembler``: each camera's frame seq + its offset names the part
count, until a camera falls out of step or takes one trigger's frame twice (``SequenceMatching``).

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
station of one camera. The other match modes skip none: with ``window`` and ``encoder`` such a frame opens a part of
its own, logged naming its camera (``PartAssembler._note_repeat``).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from fair_edge.line.grouped_log import CameraGroupedLog, log_lines
from fair_edge.records import Frame
from fair_edge.station.part_memory import RECENT_KEYS
from fair_edge.station.part_rows import Part

# PartAssembler's journal: its lines keep one logger name (station log settings and tests select it by that name)
log = logging.getLogger("fair_edge.station.parts")

PERIOD_PARTS = 8       # match: sequence: the usual time between parts is the median of this many last gaps


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


class SequenceMatching:
    """The ``match: sequence`` part of ``PartAssembler`` (see the module doc): a mixin, its methods run under the
    assembler's lock on the assembler's state. Its own state (``_init_sequence``): each camera's seq offset, the
    cameras out of step or without a timeline, the recent part counts and openings, each camera's last view, the
    duplicates it skipped since and their logs. What it uses of the assembler's: ``cameras``, ``group``, ``clock``,
    ``stats``, the open parts (``_open``, ``_of``), the closed ones (``_memory``), ``_newest_capture`` and
    ``_change``.
    """

    def _init_sequence(self, cameras: list[str], clock: Callable[[], float]) -> None:
        """The sequence state, empty (called once by the assembler's ``__init__``); clock: monotonic seconds, the
        duplicate logs'."""
        self._seq_offset: dict[str, int] = {}   # match: sequence: camera -> part count minus its frame seq
        self._resync: set[str] = set()           # ... cameras whose seq lost step (matched by time)
        self._untimed: set[str] = set()          # ... cameras without a timeline: never out of step by time
        self._count_opened: OrderedDict[float, float] = OrderedDict()   # ... recent part count -> its t_open (s)
        self._forgotten_count = -math.inf        # ... the highest count dropped from that memory
        self._openings: deque[float] = deque(maxlen=PERIOD_PARTS + 1)   # ... the last parts' t_open (s)
        self._last_view: dict[str, _LastView] = {}   # ... camera -> its last view filed under an open part
        self._skipped: dict[str, _Skipped] = {}      # ... camera -> the duplicates it took since that view
        # ... (camera, seq) -> frames delivered again under their own seq whose verdict or drop is still to come: that
        # many of the key's next changes are the repeats' (the same image), dropped (``_file``)
        self._repeats: dict[tuple[str, int], int] = {}
        self._duplicate_logs = {c: DuplicateViewLog(c, clock=clock) for c in cameras}   # ... camera -> its log

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
        part_id = self._memory.match(camera, frame, count)
        if part_id is not None:
            slipped = self._slip(camera, frame)
            if slipped:
                self._lose_step(camera, slipped)
        return part_id

    def _match_sequence(self, camera: str, frame: Frame) -> Part | None:
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

    def _rejoin(self, camera: str, part: Part) -> tuple[Part, bool] | None:
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

    def _rejoin_unknown(self, camera: str, skipped: _Skipped, part: Part) -> tuple[Part, bool] | None:
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

    def _duplicate_log(self, camera: str) -> DuplicateViewLog:
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
            seen = next((closed.seen for closed in self._memory.recent.values() if closed.key == count), set())
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

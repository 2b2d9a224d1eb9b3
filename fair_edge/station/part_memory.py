"""Closed parts, remembered for the views that come after them (``ClosedParts``), and the grouped journal lines of
those late views (``LateViewLog``) and of views that repeat their camera's view of an open part (``RepeatedViewLog``),
for ``station.parts.PartAssembler``.

Late views (``window``, ``sequence``, ``encoder``): a view that comes after its part closed without it (a camera
that hung, then delivered the frame it held) is filed under that part (``ClosedParts.match``: one of the last
``RECENT_KEYS`` closed parts its camera was not filed under, by capture time within ``window_ms``, by the count
its seq names with ``sequence``, by key within ``window_counts`` with ``encoder``), late: counted ``late_views``
when its verdict (or drop) comes, never a part of its own (which the gate would note after its due time, or at a
count where no such part is, and reject fail-safe on another part) nor paired with a later part. A ``window`` or
``sequence`` view that matches no part once the gate can no longer reject its part (``due_s`` after its capture:
``PartAssembler._past_gate``) opens none either: it is counted late the same way (``on_capture`` returns None).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from fair_edge.line.grouped_log import CameraGroupedLog
from fair_edge.records import Frame
from fair_edge.station.part_rows import Part
from fair_edge.station.views import GroupSettings

CLOSED_MEMORY = 4096   # closed parts remembered, so a view coming after its part closed is recognised
RECENT_KEYS = 256      # closed parts a view captured before its part closed is matched on (not match: handshake);
                       # match: sequence: part counts whose opening times a camera's slip is told by


class ClosedPart(NamedTuple):
    """A recently closed part, for the views captured before it closed that come after (``ClosedParts.match``).
    key: as ``Part.key``; t_open: its first view's capture (monotonic s); seen: the cameras filed under it."""

    key: float
    t_open: float
    seen: set[str]


class ClosedParts:
    """The views of closed parts (``views``: (camera, frame seq) -> part id; None: a view that matched no part when
    the gate could no longer reject its part), the last ``CLOSED_MEMORY`` of them, and the last ``RECENT_KEYS``
    closed parts (``recent``: part id -> ``ClosedPart``) a late view is matched on. ``late_logs``: camera -> its
    ``LateViewLog``. group: the station's ``group:`` (match mode and windows); clock: monotonic seconds.
    Not thread-safe: the assembler calls it under its lock.
    """

    def __init__(self, cameras: list[str], group: GroupSettings, clock: Callable[[], float]) -> None:
        self.group, self.clock = group, clock
        self.views: OrderedDict[tuple[str, int], int | None] = OrderedDict()
        self.recent: OrderedDict[int, ClosedPart] = OrderedDict()
        self.late_logs = {c: LateViewLog(c, clock=clock) for c in cameras}   # camera -> its late views' log

    def close(self, part: Part) -> None:
        """The part closed: its views and the part itself are remembered."""
        for camera, seq in part.seqs.items():
            self.views[(camera, seq)] = part.part_id
        self._trim_views()
        self.recent[part.part_id] = ClosedPart(part.key, part.t_open, set(part.seqs))
        while len(self.recent) > RECENT_KEYS:
            self.recent.popitem(last=False)

    def file_late(self, camera: str, seq: int, part_id: int | None) -> None:
        """A camera's frame ``seq`` is a late view of closed part ``part_id`` (None: of no part)."""
        self.views[(camera, seq)] = part_id
        self._trim_views()

    def match(self, camera: str, frame: Frame, key: float) -> int | None:
        """The recently closed part (``RECENT_KEYS``) this camera was not filed under that a view matching no open
        part belongs to (``_distance``: the nearest), None when there is none."""
        near = [(self._distance(frame, key, closed), part_id) for part_id, closed in self.recent.items()
                if camera not in closed.seen]
        distance, part_id = min(near, default=(math.inf, None))
        if math.isinf(distance):
            return None
        self.recent[part_id].seen.add(camera)   # a second frame of this camera is a part of its own, as when open
        return part_id

    def holding(self, camera: str, key: float, window: float) -> int | None:
        """The newest recently closed part (``RECENT_KEYS``) whose key is within ``window`` of ``key`` (s with
        ``window``, counts with ``encoder``) and that holds a view of ``camera``; None when there is none."""
        return next((part_id for part_id, closed in reversed(self.recent.items())
                     if camera in closed.seen and abs(key - closed.key) <= window), None)

    def note_late(self, camera: str, seq: int, part_id: int | None) -> str | None:
        """A view's verdict (or drop) came for a part that had closed without it (None: it matched no part): its
        journal line when it is its camera's first in a while, else None (gathered: ``LateViewLog``)."""
        late_log = self.late_logs.get(camera)
        if late_log is None:   # a camera not in the station file's list: its own log all the same
            late_log = self.late_logs[camera] = LateViewLog(camera, clock=self.clock)
        return late_log.note((seq, part_id))

    def _distance(self, frame: Frame, key: float, closed: ClosedPart) -> float:
        """How far a view (its ``key``) is from a closed part, inf where it is not that part's: by key within
        ``window_counts`` (``encoder``); by the part's count (``sequence``, a camera in step); by its first view's
        capture within ``window_ms`` (``window``; ``sequence``, a camera out of step: nan key)."""
        if self.group.match == "encoder":
            distance, most = abs(key - closed.key), self.group.window_counts
        elif self.group.match == "sequence" and not math.isnan(key):
            distance, most = (0.0 if closed.key == key else math.inf), 0.0
        else:
            distance, most = abs(frame.t_capture - closed.t_open), self.group.window_ms / 1000.0
        return distance if distance <= most else math.inf

    def _trim_views(self) -> None:
        """Keep the last ``CLOSED_MEMORY`` views of closed parts."""
        while len(self.views) > CLOSED_MEMORY:
            self.views.popitem(last=False)


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


class RepeatedViewLog(CameraGroupedLog):
    """Groups one camera's lines for views that opened a part inside the window of a part (open or recently closed)
    holding its view already (``match: window`` / ``encoder``: ``PartAssembler._note_repeat``; ``CameraGroupedLog``):
    a trigger that bounces on every part does not drown the log. Such a view is still a part of its own, noted at the
    gate: a bounce cannot be told from parts closer than the window, and skipping a real part's view would let it
    pass unannounced to the gate. One of the two parts then lacks the other cameras' views (NG, not inspected), and
    its row names those cameras missing; the line names the camera whose extra frame caused it.

    group: the station's ``group:`` (its window, in the line). ``note((seq, part_id, apart, opened_id))``: the
    camera's frame ``seq`` lay ``apart`` (ms from part ``part_id``'s first view's capture with ``window``, counts from
    its key with ``encoder``) inside that part's window, which holds a view of this camera, and opened part
    ``opened_id``.
    """

    def __init__(self, camera: str, group: GroupSettings, window_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(camera, window_s, clock)
        self.group = group

    def _first_line(self, repeat: tuple[int, int, float, int]) -> str:
        seq, part_id, apart, opened_id = repeat
        if self.group.match == "encoder":
            where = (f"keyed {apart:+.0f} counts from part {part_id}, within group.window_counts "
                     f"({self.group.window_counts})")
        else:
            where = (f"captured {apart:+.1f} ms from part {part_id}'s first view, within group.window_ms "
                     f"({self.group.window_ms:g} ms)")
        return (f"camera {self.camera} frame {seq}: {where}, which holds a frame of this camera already: a second "
                "frame of one part (a trigger that bounced, a frame delivered twice) or parts closer than the window, "
                f"which one frame cannot tell; it opened part {opened_id} of its own, not dropped: one of parts "
                f"{part_id} and {opened_id} lacks the other cameras' views (NG, not inspected; its row names them "
                f"missing, but camera {self.camera}'s extra frame is the cause); if parts are further apart than the "
                "window, fix this camera's trigger; further such frames of this camera are logged together, one line "
                f"per {self.window_s:g} s")

    def _gathered_line(self, held: list[tuple[int, int, float, int]], span_s: float) -> str:
        seq, part_id, _, opened_id = held[-1]
        frames = f"{len(held)} more frame{'s' if len(held) > 1 else ''}"
        return (f"camera {self.camera}: {frames} in the last {span_s:.1f} s inside the window of a part holding its "
                f"view, each a part of its own; the last frame {seq} (beside part {part_id}, opened part {opened_id})")

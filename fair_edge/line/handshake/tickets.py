"""The triggered parts of the PLC handshake: the ``Ticket`` a trigger opens for its part, and the ``TriggerQueue`` of
tickets waiting for their camera frame, which the handshake's thread fills and the triggered source
(``fair_edge.cameras.triggered``) takes from.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

from .settings import RESULT_NONE


@dataclass
class Ticket:
    """One triggered part. t_trigger: monotonic s when the station saw the trigger; deadline:
    t_trigger + result_timeout_ms; seq: the frame that inspects it (None until captured);
    result / score: its answer (RESULT_NONE until the verdict; score None when the part was not scored);
    t_written: when it was written."""

    part_id: int
    t_trigger: float
    deadline: float
    seq: int | None = None
    result: int = RESULT_NONE
    score: float | None = None
    t_written: float | None = None
    acked: bool = False      # its ack was seen; ack = 0 and results_ready = 0 are written (again, if refused) next
    regions: dict[str, int] = field(default_factory=dict)   # region signal -> value (``region_values``)


class TriggerQueue:
    """Tickets taken and waiting for a frame, in trigger order, at most ``max_parts`` (full: ``put`` refuses the
    new one, which the handshake answers at once). A ticket past its deadline (``Ticket.deadline``, monotonic s)
    is skipped when a reader asks: it will not be answered, so it needs no frame. Safe from any thread."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self._tickets: collections.deque[Ticket] = collections.deque()   # oldest first
        self._queued = threading.Condition()   # guards _tickets and _puts; notified when a ticket is queued
        self._puts = 0                         # tickets queued so far (``wait``)

    def put(self, ticket: Ticket) -> bool:
        """Queue ``ticket`` for its frame (waking a reader waiting for one); False when ``max_parts`` wait already."""
        with self._queued:
            if len(self._tickets) >= self.max_parts:
                return False
            self._tickets.append(ticket)
            self._puts += 1
            self._queued.notify_all()
        return True

    def next(self, timeout_s: float) -> Ticket | None:
        """The next ticket, taken, or None after ``timeout_s``."""
        end = time.monotonic() + timeout_s
        with self._queued:
            while True:
                self._skip_expired()
                if self._tickets:
                    return self._tickets.popleft()
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._queued.wait(left)

    def next_before(self, t: float) -> Ticket | None:
        """The next ticket, taken, when its trigger was seen at or before ``t`` (monotonic s); None, nothing taken,
        when it came later or none waits."""
        with self._queued:
            self._skip_expired()
            if self._tickets and self._tickets[0].t_trigger <= t:
                return self._tickets.popleft()
            return None

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` until a ticket waits, or one was queued since the call (another reader may
        have taken it already); whether one did. Takes nothing."""
        with self._queued:
            if self._tickets:
                return True
            puts = self._puts
            return self._queued.wait_for(lambda: self._puts != puts, timeout_s)

    def take_all(self) -> list[Ticket]:
        """Every ticket waiting, taken (oldest first)."""
        with self._queued:
            waiting = list(self._tickets)
            self._tickets.clear()
        return waiting

    def _skip_expired(self) -> None:
        """(under ``_queued``) Drop tickets past their deadline: they will not be answered (the handshake counts
        them ``expired``), so they need no frame."""
        now = time.monotonic()
        while self._tickets and self._tickets[0].deadline <= now:
            self._tickets.popleft()

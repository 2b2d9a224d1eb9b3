"""``GroupedLog``: one log line per window for a flood of like events (a fault that lasts, one event per part),
the first of a spell at once. The reject scheduler's ``gap_missed`` parts and a cell's late views use it."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class GroupedLog:
    """Groups a flood of like log lines (a fault that lasts, one event per part): the first event after a quiet
    spell is logged at once (``_first_line``), the events after it are gathered and logged as one line per
    ``window_s`` (``_gathered_line``). A window with no event ends the spell: the next event is logged at once
    again. Only the log is grouped: the caller still counts every event. Subclasses write the two lines.

    window_s: seconds a line gathers events. clock: monotonic seconds (tests hand in a fake one). Thread-safe (one
    thread notes and ticks; ``close`` may run beside a thread that did not stop).
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._held: list = []                 # the events gathered since the window began
        self._since: float | None = None      # when the window began (monotonic s); None: quiet, no window

    def note(self, event) -> str | None:
        """An event came: the line to log now (the first event of a spell; or the events gathered, once the
        window they were gathered in ran out, this one with them), or None (gathered)."""
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since = now
                return self._first_line(event)
            self._held.append(event)
            return self._window_end(now)

    def due(self) -> str | None:
        """The events gathered when their window ran out (one line), else None; a window without an event ends
        the spell. Call it often (the owning thread's every turn)."""
        with self._lock:
            return self._window_end(self._clock())

    def close(self) -> str | None:
        """The events still gathered (one line) at the end of the run, or None."""
        with self._lock:
            line = self._held_line(self._clock())
            self._held, self._since = [], None
            return line

    def _first_line(self, event) -> str:
        """The line for the first event of a spell, logged at once."""
        raise NotImplementedError

    def _gathered_line(self, held: list, span_s: float) -> str:
        """The line for the events gathered (``held``, oldest first, at least one) in the last ``span_s`` s."""
        raise NotImplementedError

    def _window_end(self, now: float) -> str | None:
        """(under self._lock) At the end of a window: its line (None when it gathered nothing, which ends the
        spell) and a new window from ``now``; before it: None."""
        if self._since is None or now - self._since < self.window_s:
            return None
        line = self._held_line(now)
        self._since = now if self._held else None
        self._held = []
        return line

    def _held_line(self, now: float) -> str | None:
        """(under self._lock) The line for the events gathered, or None when there are none."""
        if not self._held:
            return None
        return self._gathered_line(self._held, now - (self._since if self._since is not None else now))

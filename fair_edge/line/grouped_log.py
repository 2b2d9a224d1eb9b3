"""Grouped journal lines: a fault that lasts logs its first event at once and the rest one line per window, not
one line per part.

``GroupedLog`` does the grouping (subclasses write the two lines); ``CameraGroupedLog`` is the base of the
per-camera ones (a camera's late views and duplicate views, ``station.parts``; its late frames,
``cameras.triggered``), ``log_lines`` logs the lines that are due to the owner's logger, and ``seq_list`` names
the sequence numbers of a line or an alarm. The reject gate's own grouped lines are in ``line.gate_alarms``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

SEQS_NAMED = 20     # sequence numbers an alarm or log line names at most (the rest are counted)
LATE_LOG_S = 10.0   # a camera's grouped lines (late views, duplicate views, late frames): one per this many seconds


def seq_list(seqs: list[int], most: int = SEQS_NAMED, total: int | None = None) -> str:
    """'3, 4, 5' for an alarm or log line: at most ``most`` sequence numbers, then how many more (an alarm for a
    belt of 258 lost parts named all of them in the fault output's reason and on MQTT). total: how many there are
    when ``seqs`` holds only the first of them (None: ``len(seqs)``)."""
    shown = seqs[:most]
    more = (len(seqs) if total is None else total) - len(shown)
    named = ", ".join(map(str, shown))
    return named if more <= 0 else f"{named} and {more} more (all in gate.jsonl)"


def log_lines(log: logging.Logger, lines: Iterable[str | None]) -> None:
    """Log each grouped line that is due (``GroupedLog.note`` / ``due`` / ``close``; None: nothing to log now) at
    WARNING to ``log``, the owner's logger (the lines keep its name)."""
    for line in lines:
        if line is not None:
            log.warning("%s", line)


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


class CameraGroupedLog(GroupedLog):
    """A ``GroupedLog`` of one camera's lines, so that a camera that lags, hangs or bounces for good (one event per
    part, 20 a second at 20 parts/s) does not drown the rest of the log; each camera has its own, so one camera's
    spell never hides another's first line. Subclasses write the two lines, naming ``camera``.

    camera: the camera's name. window_s: seconds a line gathers events (None: ``LATE_LOG_S``). clock: monotonic
    seconds.
    """

    def __init__(self, camera: str, window_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(LATE_LOG_S if window_s is None else window_s, clock)
        self.camera = camera

"""A station's stop as one deadline: every wait of the stop draws from it, so the stop ends within the unit's
TimeoutStopSec however many of its waits run to their caps (a dead MQTT broker, a PLC gone, lanes whose outputs
hang, a slow disk) and systemd's SIGKILL never cuts the verdict log's last rows or summary.json.

``StopDeadline`` starts when the inspection loop ends (``LineSide.stopping``) and ends ``stop_budget_s`` later: the
unit's TimeoutStopSec (``service_unit.stop_timeout_sec``, the one source of both: at least the belt's drain +
``STOP_MARGIN_S``, at least ``STOP_SEC_MIN``, + ``STOP_LOAD_SEC``) - ``STOP_LOAD_SEC`` - ``STOP_RESERVE_S``, so the
stop uses what systemd allows and never more. The console's close (a bundle loading at the stop: up to
``console.settings.CLOSE_LOAD_S``) runs first on the exit stack and is held apart (``apart``): the time it waits, at
most ``STOP_LOAD_SEC``, moves the deadline later, so the line side's closes after it keep theirs; systemd is told
(``extend``: EXTEND_TIMEOUT_USEC), so a unit installed with an older, shorter TimeoutStopSec does not cut the stop.
The stop's other waits, in order, each take ``left(its cap)``: the capture's stop
(``CaptureSettings.stop_timeout_s``, before the line side, its cap only), the handshake's finish (``FINISH_S``), the
belt's drain at the gates (``finish_gates``), the NG images (``CLOSE_IMAGES_S``) and rows (``FINISH_ROWS_S``), the
handshake's close (``engine.CLOSE_S``), the reject gates' close (one ``CloseBy`` for a cell's lanes,
``close_gates``; one for the station's gate), the encoder's (``polled_encoder.CLOSE_JOIN_S``), MQTT's close
(``mqtt.CLOSE_S``), the recorder's rows (``CLOSE_ROWS_MAX_S``) and the metrics server (``metrics.CLOSE_S``). One
that hung leaves the later ones less: rows the recorder could not write in what was left are counted
``lost_at_close``, and a close given materially less than its cap (``short_because``) says so by naming the waits
that spent the deadline (``spent_by``), not its disk or its encoder.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Callable, Iterator

from fair_edge.line.close_cut import cut_short
from fair_edge.station.service_unit import STOP_LOAD_SEC, STOP_SEC_MIN, stop_timeout_sec

if TYPE_CHECKING:
    from fair_edge.station.config import StationConfig

STOP_RESERVE_S = 1.0   # of TimeoutStopSec, kept past the stop's last wait: summary.json written, the process exits
NAMED_WAIT_S = 0.05   # s: spent_by names the waits that took at least this long
CUT_S = 0.5   # s: a wait given this much less than its cap (or under half of it) was cut by the deadline


def stop_budget_s(cfg: StationConfig) -> float:
    """Seconds from the inspection loop's end to the stop's deadline, before the console's close moves it
    (``apart``): the unit's TimeoutStopSec (``service_unit.stop_timeout_sec``: max(``STOP_SEC_MIN``, the belt's drain
    rounded up + ``STOP_MARGIN_S``) + ``STOP_LOAD_SEC``) - ``STOP_LOAD_SEC`` - ``STOP_RESERVE_S``; e.g. 59 for a
    short belt (TimeoutStopSec 92), 100 for ``reject.delay_ms: 70000`` (133)."""
    return stop_timeout_sec(cfg) - STOP_LOAD_SEC - STOP_RESERVE_S


class StopDeadline:
    """The one deadline a station's stop draws its waits from. budget_s: seconds from ``begin`` to the deadline
    (``stop_budget_s``; default: a short belt's, ``STOP_SEC_MIN`` - ``STOP_RESERVE_S``). clock: monotonic seconds
    (tests hand in a fake one). Before ``begin`` (a station closing on a failed start or an error) every wait gets
    its own cap."""

    def __init__(self, budget_s: float = STOP_SEC_MIN - STOP_RESERVE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self.at: float | None = None   # the deadline, monotonic s; None until begin()
        self.begun: float | None = None   # when the stop began, monotonic s
        self.waits: list[tuple[str, float]] = []   # (what, seconds it took) of each wait timed (``timed``), in order
        self.apart_s = 0.0   # s the deadline was moved by waits held apart (``apart``)
        # told, when ``apart`` moved the deadline, the seconds from then to it + STOP_RESERVE_S (the station's
        # ServiceNotifier.extend_timeout: a unit installed with a shorter TimeoutStopSec lets the stop end); None: none
        self.extend: Callable[[float], None] | None = None

    def begin(self) -> None:
        """The stop begins now (the inspection loop ended); a second call moves nothing."""
        if self.at is None:
            self.begun = self._clock()
            self.at = self.begun + self.budget_s

    def left(self, cap_s: float) -> float:
        """Seconds a wait capped at ``cap_s`` may take now: its cap, or what is left of the stop when less (0 once
        the deadline has passed); ``cap_s`` before ``begin``."""
        if self.at is None:
            return cap_s
        return max(0.0, min(cap_s, self.at - self._clock()))

    def until(self, at: float) -> float:
        """``at`` (monotonic s), or the stop's deadline when that comes first."""
        return at if self.at is None else min(at, self.at)

    def call(self, close: Callable[[float], None], cap_s: float, what: str) -> None:
        """``close(left(cap_s))``, timed as ``what`` (e.g. "MQTT's close"), for an exit stack: the time is taken when
        the close runs. A close given less than its cap runs under ``line.close_cut.cut_short`` of ``short_because``:
        its log lines, written in this thread, name the deadline and the waits that spent it, not their own guess (a
        read held, a slow disk)."""
        given_s = self.left(cap_s)
        with self.timed(what), cut_short(self.short_because(given_s, cap_s)):
            close(given_s)

    def short_because(self, given_s: float, cap_s: float) -> str:
        """``spent_by()`` when a wait capped at ``cap_s`` was given materially less (``given_s``, s: under
        ``cap_s - CUT_S`` or under half of ``cap_s``), else '': a wait short by a few ms that did not finish keeps its
        own diagnosis (a slow disk, a held read)."""
        return self.spent_by() if given_s < max(cap_s - CUT_S, cap_s / 2) else ""

    def apart(self, close: Callable[[], None], most_s: float, what: str) -> None:
        """``close()``, a wait the unit's TimeoutStopSec holds apart from the others (the console's: a bundle
        loading, ``STOP_LOAD_SEC``): the time it took, at most ``most_s``, moves the deadline later; beyond that it
        is timed as ``what``, like any other wait. A deadline moved is told to ``extend`` (systemd: a unit installed
        before TimeoutStopSec held this time apart would SIGKILL the stop before summary.json)."""
        start = self._clock()
        try:
            close()
        finally:
            end = self._clock()
            moved_s = min(most_s, end - start)
            if self.at is not None and moved_s > 0:
                self.at += moved_s
                self.apart_s += moved_s
                if self.extend is not None:
                    self.extend(self.at - end + STOP_RESERVE_S)
            if end - start > most_s:
                self.waits.append((what, end - start - most_s))

    @contextlib.contextmanager
    def timed(self, what: str) -> Iterator[None]:
        """Note how long the wait inside took, as ``what``, for ``spent_by``."""
        start = self._clock()
        try:
            yield
        finally:
            self.waits.append((what, self._clock() - start))

    def spent_by(self) -> str:
        """Why a wait gets less than its cap, for its log line: the deadline and the waits before that spent it
        (those of at least ``NAMED_WAIT_S``, with their seconds; the time between them, the capture's stop
        included, as one more); '' before ``begin``."""
        if self.begun is None:
            return ""
        named = [(what, took) for what, took in self.waits if took >= NAMED_WAIT_S]
        untimed = self._clock() - self.begun - self.apart_s - sum(took for _, took in self.waits)
        if untimed >= NAMED_WAIT_S:
            named.append(("the capture's stop and the time between waits", untimed))
        words = ", ".join(f"{what} {took:.1f} s" for what, took in named) or "none"
        return (f"the station's stop deadline ({self.budget_s + self.apart_s:g} s from the inspection loop's end, "
                f"within TimeoutStopSec) was spent by earlier waits: {words}")

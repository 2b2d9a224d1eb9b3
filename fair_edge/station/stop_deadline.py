"""A station's stop as one deadline: every wait of the stop draws from it, so the stop ends within the unit's
TimeoutStopSec however many of its waits run to their caps (a dead MQTT broker, a PLC gone, lanes whose outputs
hang, a slow disk) and systemd's SIGKILL never cuts the verdict log's last rows or summary.json.

``StopDeadline`` starts when the inspection loop ends (``LineSide.stopping``) and ends ``stop_budget_s`` later: the
unit's TimeoutStopSec (``service_unit.stop_timeout_sec``, the one source of both: at least the belt's drain +
``STOP_MARGIN_S``, at least ``STOP_SEC_MIN``) - ``STOP_RESERVE_S``, so the stop uses what systemd allows and never
more. The stop's waits, in order,
each take ``left(its cap)``: the capture's stop (``CaptureSettings.stop_timeout_s``, before the line side, its cap
only), the handshake's finish (``FINISH_S``), the belt's drain at the gates (``finish_gates``), the NG images
(``CLOSE_IMAGES_S``) and rows (``FINISH_ROWS_S``), the handshake's close (``engine.CLOSE_S``), the reject gates'
close (one ``CloseBy`` for a cell's lanes, ``close_gates``; one for the station's gate), the encoder's
(``polled_encoder.CLOSE_JOIN_S``), MQTT's close
(``mqtt.CLOSE_S``), the recorder's rows (``CLOSE_ROWS_MAX_S``) and the metrics server (``metrics.CLOSE_S``). One that
hung leaves the later ones less: rows the recorder could not write in what was left are counted ``lost_at_close``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from fair_edge.station.service_unit import STOP_SEC_MIN, stop_timeout_sec

if TYPE_CHECKING:
    from fair_edge.station.config import StationConfig

STOP_RESERVE_S = 1.0   # of TimeoutStopSec, kept past the stop's last wait: summary.json written, the process exits


def stop_budget_s(cfg: StationConfig) -> float:
    """Seconds from the inspection loop's end to the stop's deadline: the unit's TimeoutStopSec
    (``service_unit.stop_timeout_sec``: max(``STOP_SEC_MIN``, the belt's drain rounded up + ``STOP_MARGIN_S``)) -
    ``STOP_RESERVE_S``; e.g. 59 for a short belt (TimeoutStopSec 60), 100 for ``reject.delay_ms: 70000``."""
    return stop_timeout_sec(cfg) - STOP_RESERVE_S


class StopDeadline:
    """The one deadline a station's stop draws its waits from. budget_s: seconds from ``begin`` to the deadline
    (``stop_budget_s``; default: a short belt's, ``STOP_SEC_MIN`` - ``STOP_RESERVE_S``). clock: monotonic seconds (tests hand in a fake one). Before ``begin`` (a station closing
    on a failed start or an error) every wait gets its own cap."""

    def __init__(self, budget_s: float = STOP_SEC_MIN - STOP_RESERVE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self.at: float | None = None   # the deadline, monotonic s; None until begin()

    def begin(self) -> None:
        """The stop begins now (the inspection loop ended); a second call moves nothing."""
        if self.at is None:
            self.at = self._clock() + self.budget_s

    def left(self, cap_s: float) -> float:
        """Seconds a wait capped at ``cap_s`` may take now: its cap, or what is left of the stop when less (0 once
        the deadline has passed); ``cap_s`` before ``begin``."""
        if self.at is None:
            return cap_s
        return max(0.0, min(cap_s, self.at - self._clock()))

    def until(self, at: float) -> float:
        """``at`` (monotonic s), or the stop's deadline when that comes first."""
        return at if self.at is None else min(at, self.at)

    def call(self, close: Callable[[float], None], cap_s: float) -> None:
        """``close(left(cap_s))``, for an exit stack: the time is taken when the close runs."""
        close(self.left(cap_s))

"""Precise waits on a loaded machine: block coarsely, then finish with short sleeps."""

from __future__ import annotations

import threading
import time

COARSE_MARGIN_S = 0.002  # wake this early from the coarse wait (Linux timer slack + GIL hand-off)
FINE_STEP_S = 0.0002     # then sleep in steps this short (yields the GIL; no pure busy loop)


def sleep_until(t_target: float, wake: threading.Event | None = None) -> bool:
    """Sleep until ``time.monotonic() >= t_target`` (seconds).

    Waits on ``wake`` (if given) until ~2 ms before, then sleeps in 0.2 ms steps.
    Returns False as soon as ``wake`` is set (caller re-plans), True when the time was reached.
    Typical overshoot on an idle Linux box: < 0.3 ms.
    """
    while True:
        left = t_target - time.monotonic()
        if left <= 0:
            return True
        if wake is not None and wake.is_set():
            return False
        if left > COARSE_MARGIN_S:
            coarse = left - COARSE_MARGIN_S
            if wake is not None:
                if wake.wait(coarse):
                    return False
            else:
                time.sleep(coarse)
        else:
            time.sleep(min(FINE_STEP_S, left))

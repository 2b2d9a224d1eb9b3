"""What an encoder is to the reject scheduler: ``EncoderSource``, where the conveyor is, in counts, for
distance-based rejects, and ``FakeEncoder`` (tests, the simulated belt). The encoders opened from URLs (a
PLC's counter over Modbus TCP or OPC UA, ``sim://``) are in ``encoder_links``."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class EncoderSource(Protocol):
    """A conveyor position in encoder counts.

    ``count()`` must be cheap (called every ``reject.encoder_poll_ms`` while rejects wait), safe
    to call from any thread, and non-decreasing: an adapter over a hardware counter that wraps
    (16/32 bit) unwraps it before returning.
    """

    def count(self) -> int: ...


def mark(encoder: EncoderSource) -> tuple[int | None, int]:
    """``(count, position epoch)`` to note for a part at capture; count None while the encoder cannot
    say where the belt is now (``PolledEncoder``: its link is down and the count it holds is where the
    belt was when the link dropped): a part captured then has no position. An encoder that can lose the
    belt position (``polled_encoder.PolledEncoder``: a counter reset, an outage it cannot unwrap) has
    ``mark()``; any other never loses it (epoch 0)."""
    own = getattr(encoder, "mark", None)
    return own() if own is not None else (int(encoder.count()), 0)


def mark_at(encoder: EncoderSource, t_capture: float) -> tuple[int | None, int]:
    """``mark`` for a part exposed at ``t_capture`` (monotonic s: its frame's ``Frame.t_capture``), however late its
    frame was handed over: ``(count, position epoch)`` where the belt was then, from an encoder that keeps its
    readings (``polled_encoder.PolledEncoder.mark_at``: interpolated between the readings around it; count None where
    it cannot say); any other, ``mark`` now (a ``FakeEncoder``: where the belt is when the frame is handed over)."""
    own = getattr(encoder, "mark_at", None)
    return own(t_capture) if own is not None else mark(encoder)


def went_unseen(encoder: EncoderSource, target: int, epoch: int) -> str | None:
    """Why a part noted as ``(count, epoch)`` by ``mark`` whose gate is at count ``target`` cannot be
    decided at the gate (its position was lost since, or the belt carried it past ``target`` while
    the encoder could not be read), or None when it can."""
    own = getattr(encoder, "went_unseen", None)
    return own(target, epoch) if own is not None else None


def position_epoch(encoder: EncoderSource) -> int:
    """How many times ``encoder`` lost the belt position (``mark``'s epoch now); 0 for an encoder that
    cannot lose it."""
    return int(getattr(encoder, "position_epoch", 0))


def fault_reason(encoder: EncoderSource) -> str | None:
    """Why the encoder's count is held now (its link is down), or None."""
    return getattr(encoder, "fault_reason", None)


class FakeEncoder:
    """A conveyor at constant speed: ``count = start + counts_per_s * (monotonic() - t0)``.

    For tests and demos; ``set_speed()`` changes speed from now on (0 = conveyor stopped),
    keeping the count continuous.
    """

    def __init__(self, counts_per_s: float, start: int = 0, t0: float | None = None) -> None:
        self._lock = threading.Lock()
        self._t0 = time.monotonic() if t0 is None else t0
        self._base = float(start)
        self._rate = float(counts_per_s)

    def count(self) -> int:
        with self._lock:
            return int(self._base + self._rate * (time.monotonic() - self._t0))

    def time_of(self, count: int) -> float:
        """Monotonic seconds at which ``count`` is (or was) reached at the current speed."""
        with self._lock:
            return self._t0 + (count - self._base) / self._rate

    def set_speed(self, counts_per_s: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._base += self._rate * (now - self._t0)
            self._t0 = now
            self._rate = float(counts_per_s)

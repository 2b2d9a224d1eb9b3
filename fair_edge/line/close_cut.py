"""Why a close was given less than its own cap: a station's stop hands its closes what its one deadline has left
(``station.stop_deadline.StopDeadline.call``), and a close whose thread or outbox then did not finish in that time
should say the deadline was spent by earlier waits, not guess its own cause (a read held, a connect in progress).

``cut_short(because)`` marks the close running inside it (this thread's context: a log line written from another
thread does not see it); the close's log line takes ``because(guess)``: that text, or its own ``guess`` outside a
``cut_short`` (``cut_note()``: ' (that text)', or '' for a line that guesses no cause of its own; ``cut_reason()``:
the text alone, '' outside, for a close that words its line apart when cut short: the recorder's).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

_SHORT_BECAUSE: contextvars.ContextVar[str] = contextvars.ContextVar("close_short_because", default="")


@contextlib.contextmanager
def cut_short(why: str) -> Iterator[None]:
    """The close run inside was given less than its cap, ``why`` ('' : it was not)."""
    token = _SHORT_BECAUSE.set(why)
    try:
        yield
    finally:
        _SHORT_BECAUSE.reset(token)


def cut_reason() -> str:
    """The ``cut_short`` reason the close runs under; '' outside one (or inside one of '': not cut short)."""
    return _SHORT_BECAUSE.get()


def because(guess: str) -> str:
    """Why a close did not finish in its time, for its log line: the ``cut_short`` reason it runs under, else
    ``guess`` (its own likely cause; '' for none)."""
    return cut_reason() or guess


def cut_note() -> str:
    """' (why)' inside a ``cut_short`` with a reason, for a log line that names no cause of its own; '' outside."""
    why = cut_reason()
    return f" ({why})" if why else ""

"""The console's swap thread run inline, for tests of console swaps and reloads: ``InlineThread`` runs its target at
``start()`` on the caller's thread, so a swap is done when it returns and no test waits on time. Imported into a test
module, the autouse fixtures apply to its tests: ``inline_swaps`` (the console's ``threading.Thread`` is
``InlineThread``) and ``kept_signals`` (`fair-edge run` takes SIGINT, SIGTERM and SIGHUP; the test process gets its
own handlers back)."""
from __future__ import annotations

import signal
import threading
from types import SimpleNamespace

import pytest

from fair_edge.console import swaps as swaps_module


class InlineThread:
    """``threading.Thread`` for the console's swap thread: the target runs at ``start()`` on the caller's thread."""

    def __init__(self, target, args=(), name=None, daemon=None) -> None:
        self.target, self.args = target, args

    def start(self) -> None:
        self.target(*self.args)

    def join(self, timeout=None) -> None:
        pass

    def is_alive(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def inline_swaps(monkeypatch):
    monkeypatch.setattr(swaps_module, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))


@pytest.fixture(autouse=True)
def kept_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)

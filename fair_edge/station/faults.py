"""Several reasons can hold the station's fault output (camera gone, drift alarm, ...): it is on while
any of them is, and drops only when the last one clears."""

from __future__ import annotations

import threading


class FaultBoard:
    """Combines named fault reasons into ``target.fault(active, reason)`` calls (a RejectScheduler)."""

    def __init__(self, target) -> None:
        self.target = target
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def channel(self, name: str) -> "FaultChannel":
        """An object with ``fault(active, reason)`` that sets this board's reason ``name``."""
        return FaultChannel(self, name)

    def set(self, name: str, reason: str) -> None:
        """Hold the output for ``name`` while ``reason`` is non-empty; '' clears it."""
        with self._lock:
            before = dict(self._reasons)
            if reason:
                self._reasons[name] = reason
            else:
                self._reasons.pop(name, None)
            if self._reasons == before:
                return
            active = "; ".join(self._reasons.values())
        self.target.fault(bool(active), active)


class FaultChannel:
    def __init__(self, board: FaultBoard, name: str) -> None:
        self.board, self.name = board, name

    def fault(self, active: bool, reason: str = "") -> None:
        self.board.set(self.name, (reason or self.name) if active else "")

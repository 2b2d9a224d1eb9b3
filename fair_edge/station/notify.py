"""systemd's notify protocol, spoken by the station: READY, WATCHDOG from the inspection loop, STATUS, STOPPING,
EXTEND_TIMEOUT_USEC.

Under a ``Type=notify`` unit (``fair-edge install-service``), systemd passes ``$NOTIFY_SOCKET``: the address of a
Unix datagram socket, a path (``/run/systemd/notify``) or, when it starts with ``@``, a name in Linux's abstract
namespace (the ``@`` stands for a leading NUL byte). Each message is one datagram of newline-separated
``KEY=VALUE`` lines, e.g. ``READY=1\\nSTATUS=inspecting``; systemd learns the sender from the socket credentials.
With ``WatchdogSec=`` in the unit, systemd also sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process it
watches); a service that sends no ``WATCHDOG=1`` within that time is killed and, with ``Restart=always``,
started again.

The station sends:
  READY=1 + STATUS    at the first iteration of the inspection loop (the station is inspecting, not merely alive);
  WATCHDOG=1          from the loop (``alive()`` once per iteration, sent at most every WATCHDOG_USEC / 2), so a
                      hung loop (a stuck inference, a dead lock) stops the pings and systemd restarts it;
  STATUS=...          counters and faults (the station's, the camera's, or why the fault output is on), at most
                      every ``status_every_s`` unless the text's state changes (a fault is sent at once);
  STOPPING=1          when inspection ends (before the parts on the belt are drained);
  EXTEND_TIMEOUT_USEC when the stop's deadline moved later for a bundle loading (``StopDeadline.apart``): the time
                      to it + its reserve, so a unit installed with a shorter TimeoutStopSec does not kill the stop.
Without ``$NOTIFY_SOCKET`` every call is a no-op. A send that fails (socket gone, buffer full) is counted and
logged once; it never stops inspection.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Mapping

log = logging.getLogger(__name__)
NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address: ``@name`` -> b'\\0name' (abstract namespace), a path as it is;
    ValueError naming the value for anything else (systemd's vsock: addresses are not supported)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(f"{NOTIFY_SOCKET}={value!r} is neither a path nor an abstract name (@...); "
                     "systemd's vsock notify addresses are not supported")


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``, or None when no watchdog watches ``pid``."""
    usec = environ.get(WATCHDOG_USEC, "")
    owner = environ.get(WATCHDOG_PID, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner.isdigit() and int(owner) != pid:
        return None  # the watchdog is for another process (e.g. a parent that execs us)
    return int(usec) / 2e6


@dataclass(frozen=True)
class NotifySettings:
    """status_every_s: least seconds between two STATUS updates whose state word is unchanged."""

    status_every_s: float = 5.0


class ServiceNotifier:
    """Sends systemd notify messages to ``address`` (None = disabled: every call does nothing).

    watchdog_s: seconds between WATCHDOG=1 pings (None = no watchdog). clock: monotonic seconds (tests).
    A context manager; ``close()`` sends STOPPING=1 if READY was sent and STOPPING was not, and is safe twice.
    """

    def __init__(self, address: str | bytes | None, watchdog_s: float | None = None,
                 settings: NotifySettings = NotifySettings(), clock: Callable[[], float] = time.monotonic) -> None:
        self.address, self.watchdog_s, self.settings, self.clock = address, watchdog_s, settings, clock
        self.sock: socket.socket | None = None
        if address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)
        self.ready_sent = self.stopping_sent = False
        self.sent, self.failed = 0, 0
        self._last_ping = self._last_status = -float("inf")
        self._status_state = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, settings: NotifySettings = NotifySettings()) -> "ServiceNotifier":
        """From ``$NOTIFY_SOCKET`` / ``$WATCHDOG_USEC`` / ``$WATCHDOG_PID`` (disabled when NOTIFY_SOCKET is unset)."""
        env = os.environ if environ is None else environ
        value = env.get(NOTIFY_SOCKET, "")
        if not value:
            return cls(None)
        try:
            address = socket_address(value)
        except ValueError as exc:
            log.error("systemd notify disabled: %s", exc)
            return cls(None)
        return cls(address, watchdog_interval_s(env, os.getpid()), settings)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields: object) -> bool:
        """One datagram of ``KEY=VALUE`` lines (``send(READY=1, STATUS='...')``); False if disabled or it failed."""
        if self.sock is None:
            return False
        payload = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()).encode()
        try:
            self.sock.sendto(payload, self.address)
        except OSError as exc:  # socket gone, receiver's buffer full: counted, logged once, never raised into the loop
            self.failed += 1
            if self.failed == 1:
                log.warning("systemd notify: could not send %s to %s: %s (further failures are counted)",
                            ",".join(fields), os.environ.get(NOTIFY_SOCKET, self.address), exc)
            return False
        self.sent += 1
        return True

    def alive(self) -> None:
        """Call once per inspection-loop iteration: READY=1 the first time, then WATCHDOG=1 every ``watchdog_s``."""
        if self.sock is None:
            return
        now = self.clock()
        if not self.ready_sent:
            self.ready_sent = True
            self._last_ping = now
            self._status_state, self._last_status = "inspecting", now
            self.send(READY=1, STATUS="inspecting")
            return
        if self.watchdog_s is not None and now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.send(WATCHDOG=1)

    def status(self, text: str) -> None:
        """STATUS=text (``systemctl status`` shows it): sent when its state changes, else every status_every_s."""
        if self.sock is None:
            return
        now, state = self.clock(), status_state(text)
        if state == self._status_state and now - self._last_status < self.settings.status_every_s:
            return
        self._status_state, self._last_status = state, now
        self.send(STATUS=text)

    def stopping(self, text: str = "stopping") -> None:
        """STOPPING=1 with a last STATUS (once)."""
        if self.sock is None or self.stopping_sent:
            return
        self.stopping_sent = True
        self.send(STOPPING=1, STATUS=text)

    def extend_timeout(self, seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC: systemd's timeout of the state the unit is in (the stop's, TimeoutStopSec) ends no
        sooner than ``seconds`` from now (it sets the timeout to now + the value, never shortens the unit's own).
        For a stop whose deadline moved later (``StopDeadline.apart``) under a unit installed with a shorter
        TimeoutStopSec."""
        if self.sock is None:
            return
        self.send(EXTEND_TIMEOUT_USEC=max(0, round(seconds * 1e6)))

    def close(self) -> None:
        if self.sock is None:
            return
        if self.ready_sent:
            self.stopping()
        self.sock.close()
        self.sock = None

    def __enter__(self) -> "ServiceNotifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def status_state(text: str) -> str:
    """The state a STATUS text leads with: all before its last ': ' (a fault reason may hold colons itself:
    'reject sink modbus 10.0.0.5:502: connect failed: N inspected, ...'), the whole text without one."""
    return text.rsplit(": ", 1)[0]


def status_line(summary, reason: str = "", dropped: int | None = None, recorder: dict | None = None) -> str:
    """One STATUS text from a ``RunSummary``: '<state>: N inspected, M NG, K dropped', state = the fault or
    ``reason`` when there is one ('stopping', 'camera reconnecting', the reason the fault output is on), else
    'inspecting'. dropped: the capture queue's count while running (the summary fills its own only when the
    run ends). recorder: the recorder's counters (``Recorder.stats()``) while running, default
    ``summary.recorder``; rows it did not write (``rows_failed`` + ``dropped`` + ``lost_at_close``: a full or
    unplugged disk) add ', R log rows not written' when there are any, and log rotations refused
    (``log_rotations_put_off``) ', P log rotations put off'."""
    state = summary.fault or reason or "inspecting"
    dropped = summary.dropped if dropped is None else dropped
    text = f"{state}: {summary.inspected} inspected, {summary.ng} NG, {dropped} dropped"
    counts = getattr(summary, "recorder", None) if recorder is None else recorder
    unwritten = sum((counts or {}).get(key, 0) for key in ("rows_failed", "dropped", "lost_at_close"))
    put_off = (counts or {}).get("log_rotations_put_off", 0)
    return (text + (f", {unwritten} log rows not written" if unwritten else "")
            + (f", {put_off} log rotations put off" if put_off else ""))

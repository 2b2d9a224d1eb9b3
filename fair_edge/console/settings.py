"""The ``console:`` section of the station file.

    console: {enabled: true, host: 127.0.0.1, port: 8765, token: null, allowed_hosts: [], recent_parts: 2000,
              keep_frames: 32, live_fps: 4, drift_window: 500, drift_min_parts: 100,
              drift_alarm: 0.25, drift_fault: false}
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from fair_edge.errors import ConfigError
from fair_edge import fields as f


@dataclass(frozen=True)
class ConsoleSettings:
    """enabled: serve the console during `fair-edge run`. host: bind address (127.0.0.1 = this
    machine only). port: TCP port (0 = any free port). token: needed by every action that changes
    something when set; required when host is not a loopback address; printable ASCII (an HTTP header
    carries nothing else). allowed_hosts: names (besides localhost, loopback addresses and the bind
    address; off loopback also any IP address) a browser may reach the console under (its ``Host``
    header, any port), e.g. ``[station7.plant.example]``: every other name is refused, so a page whose
    name was re-pointed at this machine (DNS rebinding) reads nothing. recent_parts: the NG parts the NG review
    lists (the newest this many of the run; the page says how many older ones it no longer lists: a part can be
    reviewed only while its verdict is kept); only NG parts are kept that deep: the live page and threshold tuning
    read a fixed window of every view's verdicts (``feed.RECENT_VERDICTS``, 2000, or keep_frames if more).
    keep_frames: latest frames kept in memory so
    an operator can flag a passed part as a miss with its image. live_fps: most live-image updates
    per second sent to browsers. drift_window / drift_min_parts / drift_alarm: the drift watch (see
    fair_edge.console.drift): recent parts compared, parts needed before a value (at most drift_window: a watch of
    fewer parts would wait for ever), PSI alarm level.
    drift_fault: also raise the fault output while drift is in alarm."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    recent_parts: int = 2000
    keep_frames: int = 32
    live_fps: float = 4.0
    drift_window: int = 500
    drift_min_parts: int = 100
    drift_alarm: float = 0.25
    drift_fault: bool = False

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @classmethod
    def from_dict(cls, data: Any) -> "ConsoleSettings":
        s = "console"
        d = f.with_defaults(s, data, cls)
        out = cls(
            enabled=f.boolean(s, "enabled", d["enabled"]),
            host=f.text(s, "host", d["host"]),
            port=f.integer(s, "port", d["port"], minimum=0, maximum=65535),
            token=None if d["token"] is None else f.text(s, "token", d["token"]),
            allowed_hosts=host_names(d["allowed_hosts"]),
            recent_parts=f.integer(s, "recent_parts", d["recent_parts"], minimum=10, maximum=1_000_000),
            keep_frames=f.integer(s, "keep_frames", d["keep_frames"], minimum=0, maximum=4096),
            live_fps=f.number(s, "live_fps", d["live_fps"], minimum=0.1, maximum=60),
            drift_window=f.integer(s, "drift_window", d["drift_window"], minimum=10),
            drift_min_parts=f.integer(s, "drift_min_parts", d["drift_min_parts"], minimum=10),
            drift_alarm=f.number(s, "drift_alarm", d["drift_alarm"], minimum=0.001),
            drift_fault=f.boolean(s, "drift_fault", d["drift_fault"]),
        )
        out.check()
        return out

    def check(self, serving: bool | None = None) -> None:
        """Refuse a console reachable from other machines without a token, a port out of range, and a drift watch
        that could never decide (``check_drift``). serving:
        whether it is served (None: ``enabled``; ``ConsoleServer`` says True whatever ``enabled`` says)."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"console.port: expected an integer in [0, 65535], found {self.port}")
        if (self.enabled if serving is None else serving) and not self.loopback and not self.token:
            raise ConfigError(f"console.token: expected a token when console.host is {self.host!r} (reachable from "
                              "other machines), found none; set console.token to a long random string, or bind "
                              "console.host to 127.0.0.1")
        if self.token is not None and len(self.token) < 12:
            raise ConfigError(f"console.token: expected at least 12 characters, found {len(self.token)}; "
                              "use a long random string (e.g. `python -c 'import secrets; print(secrets.token_hex(16))'`)")
        if self.token is not None:
            check_token_characters(self.token)
        self.check_drift()

    def check_drift(self) -> None:
        """Refuse a drift watch that could never give a value: it keeps the last drift_window parts' scores and
        waits for drift_min_parts of them, so with more needed than kept it would say "waiting" for ever (no PSI, no
        alarm, no drift fault)."""
        if self.drift_min_parts > self.drift_window:
            raise ConfigError(f"console.drift_min_parts: expected at most console.drift_window ({self.drift_window}: "
                              f"the parts the drift watch keeps), found {self.drift_min_parts}; the watch would wait "
                              f"for ever and never alarm: lower console.drift_min_parts to {self.drift_window} or "
                              f"less, or raise console.drift_window to {self.drift_min_parts} or more")


TOKEN_CHARACTERS = frozenset(chr(c) for c in range(0x21, 0x7F))   # printable ASCII, no space
RELOAD_JOIN_S = 2.0   # how long the console's close waits for a reload in progress to read the station file, s
# how long the console's close waits for a bundle loading on the swap thread (``auto`` times its backends for seconds;
# a TensorRT engine deserializes for seconds), s: a backend left in native code at the interpreter's exit aborts the
# process
SWAP_JOIN_S = 30.0
# the most a station's stop waits in the console's close (a bundle loading), s: the unit's TimeoutStopSec holds it
# apart from the line side's waits (station.service_unit.stop_timeout_sec, station.stop_deadline.StopDeadline.apart)
CLOSE_LOAD_S = RELOAD_JOIN_S + SWAP_JOIN_S


def check_token_characters(token: str) -> None:
    """Refuse a token with a character an HTTP header cannot carry as written: header values are read as
    latin-1 bytes, so a non-ASCII token (UTF-8 on the wire) never matches; spaces are trimmed by clients."""
    bad = next(((i, ch) for i, ch in enumerate(token) if ch not in TOKEN_CHARACTERS), None)
    if bad is not None:
        i, ch = bad
        raise ConfigError(f"console.token: expected printable ASCII characters only (letters, digits, punctuation; "
                          f"no spaces), found {ch!r} at position {i}; an HTTP header carries ASCII only, so this "
                          "token could never match: use e.g. "
                          "`python -c 'import secrets; print(secrets.token_hex(16))'`")


def host_names(value: Any) -> tuple[str, ...]:
    """console.allowed_hosts: a list of host names (a single name is a list of one), lowercased, no port."""
    where = "console.allowed_hosts"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of host names like ['station7.plant.example'], found {value!r}")
    names = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "/:@ "):
            raise ConfigError(f"{where}[{i}]: expected a host name without scheme, port or path like "
                              f"'station7.plant.example' (IP addresses need no entry), found {name!r}")
        names.append(name.strip().lower())
    return tuple(names)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and 'localhost' only reach this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

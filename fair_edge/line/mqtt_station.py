"""Who else speaks for this station on the broker: its record on PREFIX/station (``station_record``), the warning
when another station publishes under the same prefix (``warn_shared_prefix``) and the hint when another client
uses this client id (``ClientIdWatch``). The MQTT publisher (``fair_edge.line.mqtt``) publishes the record and
hands in what it hears.

Two stations on one PREFIX overwrite each other's retained faults and summary (a fault can read cleared) and mix
their verdicts. Each station subscribes to PREFIX/station: a record of another station arriving live (another
station connected, or answered ours) is logged once per station as a warning naming it and the fix (a prefix per
station), and answered with this station's record (not retained) so the other station warns too. A record found
retained at connect proves nothing (its station may have been killed) and warns only if its station answers. Not a
refusal: the broker cannot make a check-then-claim atomic. A link lost within ``QUICK_DROP_S`` of its CONNACK
``QUICK_DROPS_HINT`` times in a row, or a broker DISCONNECT 'session taken over' (0x8E), logs once that another
client may use this client id (a broker closes the older of two connections with one id).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from .mqtt_url import MqttTarget
from .sinks.urls import hide_userinfo

log = logging.getLogger("fair_edge.line.mqtt")   # the publisher's logger: operators and tests filter by its name

STATION_TOPIC = "station"
QUICK_DROP_S = 5.0   # a link lost this soon after its CONNACK (s) ...
QUICK_DROPS_HINT = 3   # ... this many times in a row: another client may be using this client id
SESSION_TAKEN_OVER = 0x8E   # MQTT 5 DISCONNECT reason: another connection with this client id took the session


def station_record(target: MqttTarget) -> dict:
    """This station's PREFIX/station record: ``id`` (unique to this publisher), ``host``, ``pid``, ``client_id``,
    ``command`` (the command line, any URL password as ``***``: it names the station file), ``cwd``,
    ``started_utc`` and ``running`` (True)."""
    return {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "client_id": target.client_id,
            "command": shortened(" ".join(hide_userinfo(arg) for arg in sys.argv)), "cwd": shortened(working_dir()),
            "started_utc": utc_now(), "running": True}


def shortened(text: str, limit: int = 240) -> str:
    """``text`` cut to at most ``limit`` characters (its start and end kept, "..." between): a station record stays
    small (a broker's Maximum Packet Size may be a few kB)."""
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def working_dir() -> str:
    """This process's working directory; '?' when it cannot be read (removed since the start)."""
    try:
        return os.getcwd()
    except OSError:
        return "?"


def utc_now() -> str:
    """The wall-clock time now, ISO 8601 UTC to the second: ``2026-12-01T08:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def warn_shared_prefix(where: str, target: MqttTarget, other: dict) -> None:
    """Log that the station of record ``other`` publishes under ``target``'s prefix, naming it and the fix (the
    publisher calls it once per other station). where: the publisher's log label, ``mqtt HOST:PORT``."""
    prefix = target.prefix
    log.warning(
        "%s: another station publishes under the topic prefix %r on this broker: host %s, pid %s, client_id "
        "%s, started %s, command %r in %s. Its retained %s/faults and %s/summary and this station's overwrite "
        "each other (a fault can read cleared) and both stations' rows mix on %s/verdicts. Give each station "
        "its own prefix in mqtt.url: mqtt://HOST:PORT/PREFIX, e.g. mqtt://%s:%d/line2",
        where, prefix, other.get("host"), other.get("pid"), other.get("client_id"),
        other.get("started_utc"), other.get("command"), other.get("cwd"), prefix, prefix, prefix,
        target.host, target.port)


class ClientIdWatch:
    """Tells once that another client may use this client id: links lost within ``QUICK_DROP_S`` of their CONNACK
    ``QUICK_DROPS_HINT`` times in a row, or a DISCONNECT 'session taken over'. Told of each CONNACK (``connected``)
    and each link lost after one (``link_lost``) by paho's network thread."""

    def __init__(self, target: MqttTarget, where: str, clock: Callable[[], float]) -> None:
        """where: the publisher's log label; clock: monotonic seconds, for how long a link lasted."""
        self._target, self._where, self._clock = target, where, clock
        self._lock = threading.Lock()
        self._connected_at: float | None = None   # clock s of the latest CONNACK
        self._quick_drops = 0   # links in a row lost within QUICK_DROP_S of their CONNACK
        self._told = False   # the client id hint was logged

    def connected(self) -> None:
        """The broker accepted a connection (CONNACK) now."""
        with self._lock:
            self._connected_at = self._clock()

    def link_lost(self, reason_code: Any, blamed: bool = False) -> None:
        """A link that had connected was lost (``reason_code``: paho's DISCONNECT reason): the hint is logged at the
        ``QUICK_DROPS_HINT``-th quick loss in a row or at a 'session taken over'. ``blamed``: the loss came with the
        same message unacknowledged as the one before (the publisher's ``_blame_oldest``): the broker closing the
        link on that message, not on a client id, so not counted."""
        with self._lock:
            quick = (not blamed and self._connected_at is not None
                     and self._clock() - self._connected_at < QUICK_DROP_S)
            self._quick_drops = self._quick_drops + 1 if quick else 0
            taken = getattr(reason_code, "value", None) == SESSION_TAKEN_OVER
            tell = not self._told and (taken or self._quick_drops >= QUICK_DROPS_HINT)
            self._told = self._told or tell
            drops = self._quick_drops
        if not tell:
            return
        seen = ("the broker says another connection took over the session (0x8E)" if taken else
                f"{drops} links in a row were lost within {QUICK_DROP_S:g} s of connecting")
        fix = ("client ids must be unique per station: leave client_id out of mqtt.url for a per-process id"
               if self._target.client_id_given else
               "client ids must be unique per station: set client_id=ID in mqtt.url to one no other client uses")
        log.warning("%s: %s: another client may be using client_id %r on this broker (a broker closes the older of "
                    "two connections with one id, so each reconnect knocks the other off); %s", self._where, seen,
                    self._target.client_id, fix)

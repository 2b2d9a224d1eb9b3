"""The MQTT publisher's URL (``fair_edge.line.mqtt``): where and how to connect, parsed and checked once.

URL: ``mqtt://[USER:PASSWORD@]HOST:PORT/PREFIX?client_id=fair-edge-1&keepalive_s=10`` (port 1883 by default;
PREFIX defaults to ``fair-edge``); ``mqtts://`` is MQTT over TLS (port 8883 by default), the broker's certificate
checked against this machine's CA store and its name. USER and PASSWORD (percent-encoded) go to the broker only:
logs, errors and stats name ``HOST:PORT``, a URL shown in an error reads ``USER:***@``. MQTT 5 by default, so the
broker can say why it refuses a message; ``protocol=3.1.1`` for a broker that speaks only 3.1.1.
PREFIX is the URL's path without its first '/' and any trailing '/'
(``mqtt://HOST//plant/line3`` publishes to ``/plant/line3/...``); a '+', '#' or NUL in it is refused (MQTT
wildcards; a '#' would also end the URL's path).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..errors import SinkError
from .sinks.urls import hide_userinfo, parse_sink_url

WILDCARDS = {"+": "'+' (MQTT's one-level wildcard)", "\0": "a NUL character"}
PROTOCOLS = ("5", "3.1.1")
SCHEMES = {"mqtt": 1883, "mqtts": 8883}   # scheme -> default port


@dataclass(frozen=True)
class MqttTarget:
    """Where and how to connect. password: never in a repr, a log line or an error."""

    host: str
    port: int
    prefix: str
    client_id: str
    keepalive_s: int
    max_outbox: int
    tls: bool = False
    protocol: str = "5"   # one of PROTOCOLS
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id_given: bool = False   # the URL named client_id (else the per-process default)


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt[s]://[USER:PASSWORD@]HOST[:PORT][/PREFIX]?client_id=..&keepalive_s=..&max_outbox=..&protocol=..``;
    ``SinkError`` if bad, showing the URL with its password as ``***``.

    Without ``client_id`` the id is this process's own, ``fair-edge-HOSTNAME-PREFIX-PID``: a broker closes the
    older of two connections with one id, so a shared default made two stations on one broker (or a second
    process of one station) knock each other off every few seconds. The session is clean, so a new id per
    start loses nothing."""
    shown = hide_userinfo(url) if isinstance(url, str) else url
    if isinstance(url, str) and "#" in url:
        raise SinkError(f"mqtt.url: {shown!r} holds '#': a URL ends its path at '#' (the rest is a fragment), so the "
                        "topic prefix would be cut short there and the station would publish under another "
                        "prefix's topics; '#' is also MQTT's multi-level wildcard, not allowed in a topic one "
                        "publishes to. Remove the '#' (in a password write it %23), e.g. mqtt://HOST:PORT/line3")
    parsed = parse_sink_url(shown)
    if parsed.scheme not in SCHEMES or not parsed.host:
        raise SinkError(f"mqtt.url: expected mqtt://HOST:PORT/PREFIX (or mqtts:// for TLS), found {shown!r}")
    parsed.check_query(("client_id", "keepalive_s", "max_outbox", "protocol"))
    prefix = topic_prefix(parsed.path, shown)
    username, password = url_credentials(url)
    return MqttTarget(parsed.host, parsed.port or SCHEMES[parsed.scheme], prefix,
                      parsed.query.get("client_id", f"fair-edge-{socket.gethostname()}-{prefix}-{os.getpid()}"),
                      parsed.get_int("keepalive_s", 10, minimum=1), parsed.get_int("max_outbox", 100_000, minimum=1),
                      tls=parsed.scheme == "mqtts", protocol=parsed.get_choice("protocol", "5", PROTOCOLS),
                      username=username, password=password, client_id_given="client_id" in parsed.query)


def url_credentials(url: str) -> tuple[str | None, str | None]:
    """(user, password) of ``url``'s ``USER:PASSWORD@``, percent-decoded; None for a part it lacks."""
    parts = urlsplit(url)
    return (None if parts.username is None else unquote(parts.username),
            None if parts.password is None else unquote(parts.password))


def topic_prefix(path: str, url: str) -> str:
    """The topic prefix from a URL's ``path``: without its first '/' (a second one stays: ``//plant/line3`` is
    ``/plant/line3``) and any trailing '/'; ``fair-edge`` when empty. ``SinkError`` naming ``url`` for a
    wildcard or NUL, which no published topic may hold."""
    prefix = path[1:].rstrip("/") if path.startswith("/") else path.rstrip("/")
    for char, what in WILDCARDS.items():
        if char in prefix:
            raise SinkError(f"mqtt.url: the topic prefix {prefix!r} of {url!r} holds {what}, which no topic a "
                            "station publishes to may hold; remove it, e.g. mqtt://HOST:PORT/cell2")
    return prefix or "fair-edge"

"""MQTT: verdicts, fault changes and the run summary published to a broker (paho-mqtt).

URL: ``mqtt://HOST:PORT/PREFIX?client_id=fair-edge-1&keepalive_s=10`` (port 1883 by default;
PREFIX defaults to ``fair-edge``). PREFIX is the URL's path without its first '/' and any trailing '/'
(``mqtt://HOST//plant/line3`` publishes to ``/plant/line3/...``); a '+', '#' or NUL in it is refused (MQTT
wildcards; a '#' would also end the URL's path). Topics::

    PREFIX/verdicts   one JSON object per verdict or dropped frame (the verdict log's row), QoS 1
    PREFIX/parts      several cameras: one JSON object per part (the verdict log's part row), QoS 1
    PREFIX/faults     {"active": bool, "reason": str, "time_utc": ...} at start and on every change, QoS 1,
                      retained; sent again after each reconnect; the connection's last will puts
                      {"active": true, "reason": "station gone: ...", "time_utc": null} there (retained)
                      when the station dies or its link is cut without a goodbye
    PREFIX/summary    the run summary at the end, QoS 1, retained

Payloads are strict JSON (what Node-RED's JSON.parse, jq and Go read): a NaN or infinite number is sent as null.

Never blocks inspection: ``publish`` puts the message in an outbox and hands it to paho's network
thread. A message stays in the outbox until the broker acknowledges it (PUBACK); while the broker is
away, messages wait there (at most ``max_outbox``; beyond that the oldest are dropped and counted),
and after each reconnect every unacknowledged message is sent again, so a broker that goes away and
comes back loses nothing (a subscriber may see a message twice: rows carry ``run_id`` and ``seq``).
``publish`` never raises: a message paho refuses (a bad topic or payload) is dropped, counted ``refused`` and
logged once per topic.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import SinkError
from ..records import json_safe
from .sinks.base import Counters
from .sinks.urls import parse_sink_url

log = logging.getLogger(__name__)

# published: handed to publish(); acked: acknowledged by the broker; resent: sent again after a reconnect (sent on
# an earlier connection, never acknowledged; a message queued before the first connection is sent once, not
# "again"); outbox_dropped: dropped beyond max_outbox; connects; disconnects: links lost (close() is not one);
# refused: messages that could not be encoded or that paho refused (dropped, logged once per topic);
# fault_restated: the latest PREFIX/faults message sent again after a reconnect (the will may have replaced it)
MQTT_COUNTERS = ("published", "acked", "resent", "outbox_dropped", "connects", "disconnects", "refused",
                 "fault_restated")
FAULTS_TOPIC = "faults"
GONE_REASON = "station gone: its MQTT connection ended without a goodbye (killed, crashed or cut off)"
WILDCARDS = {"+": "'+' (MQTT's one-level wildcard)", "\0": "a NUL character"}
RESTATED_KEY = 0   # the outbox key of a restated fault: outbox keys start at 1, so its PUBACK counts nothing
EARLY_ACK_S = 5.0   # a PUBACK seen before its publish() returned counts only this long (mids wrap)


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    prefix: str
    client_id: str
    keepalive_s: int
    max_outbox: int


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://HOST[:PORT][/PREFIX]?client_id=..&keepalive_s=..&max_outbox=..``; ``SinkError`` if bad.

    Without ``client_id`` the id is this process's own, ``fair-edge-HOSTNAME-PREFIX-PID``: a broker closes the
    older of two connections with one id, so a shared default made two stations on one broker (or a second
    process of one station) knock each other off every few seconds. The session is clean, so a new id per
    start loses nothing."""
    if isinstance(url, str) and "#" in url:
        raise SinkError(f"mqtt.url: {url!r} holds '#': a URL ends its path at '#' (the rest is a fragment), so the "
                        "topic prefix would be cut short there and the station would publish under another "
                        "prefix's topics; '#' is also MQTT's multi-level wildcard, not allowed in a topic one "
                        "publishes to. Remove the '#', e.g. mqtt://HOST:PORT/line3")
    parsed = parse_sink_url(url)
    if parsed.scheme != "mqtt" or not parsed.host:
        raise SinkError(f"mqtt.url: expected mqtt://HOST:PORT/PREFIX, found {url!r}")
    parsed.check_query(("client_id", "keepalive_s", "max_outbox"))
    prefix = topic_prefix(parsed.path, url)
    return MqttTarget(parsed.host, parsed.port or 1883, prefix,
                      parsed.query.get("client_id", f"fair-edge-{socket.gethostname()}-{prefix}-{os.getpid()}"),
                      parsed.get_int("keepalive_s", 10, minimum=1), parsed.get_int("max_outbox", 100_000, minimum=1))


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


class MqttPublisher:
    """Publishes to one broker from paho's network thread; see the module doc. Context manager."""

    def __init__(self, url: str, client_factory: Any = None) -> None:
        self.target = parse_mqtt_url(url)
        self._counters = Counters(MQTT_COUNTERS)
        self._lock = threading.Lock()
        self._outbox: OrderedDict[int, tuple[str, bytes, bool]] = OrderedDict()   # key -> (topic, payload, retain)
        self._mids: dict[int, int] = {}   # paho message id -> outbox key
        self._early_acks: dict[int, float] = {}   # mid -> monotonic s of a PUBACK that beat _send
        self._handed: set[int] = set()   # outbox keys handed to paho at least once (sent again: ``resent``)
        self._key = 0
        self._connected = False
        self._closing = False   # close() disconnects on purpose: not a link lost
        self._nonfinite_topics: set[str] = set()   # topics whose NaN / inf were logged
        self._refused_topics: set[str] = set()   # topics whose refused message was logged
        self._last_fault: tuple[int, str, bytes] | None = None   # (outbox key, topic, payload) of the latest fault
        self._client = (client_factory or _paho_client)(self.target)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    def start(self) -> MqttPublisher:
        self._client.connect_async(self.target.host, self.target.port, keepalive=self.target.keepalive_s)
        self._client.loop_start()
        return self

    # -- what the station calls ----------------------------------------------------------------
    def on_verdict(self, frame, verdict, anomaly_map=None) -> None:
        """The inspector's verdict callback."""
        self.publish("verdicts", verdict.to_json_dict())

    def publish_row(self, row: dict) -> None:
        """A verdict-log row (with run id and UTC time), e.g. a dropped frame's."""
        self.publish("verdicts", row)

    def publish_part(self, row: dict) -> None:
        """A multi-camera part's row (``fair_edge.station.parts``: its verdict, the worst view's score and
        camera, every view) on ``PREFIX/parts``."""
        self.publish("parts", row)

    def publish_fault(self, active: bool, reason: str, time_utc: str) -> None:
        self.publish("faults", {"active": active, "reason": reason, "time_utc": time_utc}, retain=True)

    def publish_summary(self, summary: dict) -> None:
        self.publish("summary", summary, retain=True)

    def publish(self, topic: str, payload: dict, retain: bool = False) -> None:
        """Queue ``payload`` (strict JSON: NaN / inf as null) for ``PREFIX/topic``; never blocks, never raises: a
        message that cannot be encoded or sent is dropped, counted ``refused`` and logged once per topic."""
        try:
            self._queue(topic, payload, retain)
        except Exception as exc:   # the inspection loop calls this: a bad message must not stop it
            self._refused(f"{self.target.prefix}/{topic}", exc)

    def _queue(self, topic: str, payload: dict, retain: bool) -> None:
        text, replaced = strict_json(payload)
        if replaced and topic not in self._nonfinite_topics:   # logged once per topic
            self._nonfinite_topics.add(topic)
            log.warning("mqtt %s/%s: a message held NaN or an infinite number; sent as null (strict JSON)",
                        self.target.prefix, topic)
        data = text.encode()
        with self._lock:
            self._key += 1
            key = self._key
            self._outbox[key] = (f"{self.target.prefix}/{topic}", data, retain)
            if topic == FAULTS_TOPIC:
                self._last_fault = (key, f"{self.target.prefix}/{topic}", data)
            while len(self._outbox) > self.target.max_outbox:
                dropped, _ = self._outbox.popitem(last=False)
                self._handed.discard(dropped)
                self._counters.add("outbox_dropped")
        self._counters.add("published")
        self._send(key)

    def stats(self) -> dict[str, int]:
        out = self._counters.snapshot()
        with self._lock:
            out["outbox"] = len(self._outbox)
        return out

    def flush(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged everything, at most ``timeout_s``; True when it has."""
        deadline = time.monotonic() + timeout_s
        while self.stats()["outbox"] and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.stats()["outbox"]

    def close(self, timeout_s: float = 2.0) -> None:
        if not self.flush(timeout_s):
            log.warning("mqtt %s:%d: closing with %d message(s) unacknowledged", self.target.host,
                        self.target.port, self.stats()["outbox"])
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread -------------------------------------------------------------------
    def _send(self, key: int) -> None:
        # paho calls on_publish holding its own lock: never call into paho while holding ours
        with self._lock:
            item = self._outbox.get(key) if self._connected else None
        if item is None:
            return   # sent again from _on_connect
        topic, data, retain = item
        try:
            mid = self._client.publish(topic, data, qos=1, retain=retain).mid
        except Exception as exc:   # paho refuses a bad topic or payload: it never will take it, so drop it
            with self._lock:
                self._outbox.pop(key, None)
                self._handed.discard(key)
            self._refused(topic, exc)
            return
        with self._lock:
            if key in self._outbox:
                self._handed.add(key)
            t_ack = self._early_acks.pop(mid, None)
            if t_ack is not None and time.monotonic() - t_ack < EARLY_ACK_S:
                self._ack(key)
            else:
                self._mids[mid] = key

    def _refused(self, topic: str, exc: Exception) -> None:
        """Count a message that could not be encoded or sent; log it once per topic."""
        self._counters.add("refused")
        if topic not in self._refused_topics:
            self._refused_topics.add(topic)
            log.warning("mqtt %s: message refused and dropped (%s: %s); further refusals on this topic are only "
                        "counted (stats 'refused')", topic, type(exc).__name__, exc)

    def _restate_fault(self) -> None:
        """After a reconnect, publish the latest fault message again when it was already acknowledged: while the
        link was down the broker may have published the will ('station gone') over it."""
        with self._lock:
            last = self._last_fault
            if last is None or last[0] in self._outbox:
                return   # nothing published yet, or still waiting: the outbox sends it
        try:
            mid = self._client.publish(last[1], last[2], qos=1, retain=True).mid
        except Exception as exc:
            self._refused(last[1], exc)
            return
        with self._lock:
            self._mids[mid] = RESTATED_KEY
        self._counters.add("fault_restated")

    def _ack(self, key: int) -> None:
        self._handed.discard(key)
        if self._outbox.pop(key, None) is not None:
            self._counters.add("acked")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("mqtt %s:%d: connection refused: %s", self.target.host, self.target.port, reason_code)
            return
        with self._lock:
            self._connected = True
            self._mids.clear()
            self._early_acks.clear()
            keys = list(self._outbox)
            again = sum(key in self._handed for key in keys)   # sent before, never acknowledged
        self._counters.add("connects")
        self._log_connected(len(keys), again)
        self._counters.add("resent", again)
        self._restate_fault()
        for key in keys:
            self._send(key)

    def _log_connected(self, waiting: int, again: int) -> None:
        """Say what a connect sends: messages queued before it (first sends, at info level) and messages sent
        on an earlier connection and never acknowledged (sent again, a warning)."""
        where = f"mqtt {self.target.host}:{self.target.port}"
        if again:
            log.warning("%s: connected; sending %d unacknowledged message(s) again", where, again)
        if waiting > again:
            log.info("%s: connected; sending %d queued message(s)", where, waiting - again)
        elif not waiting:
            log.info("%s: connected", where)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._lock:
            self._connected = False
        where = f"mqtt {self.target.host}:{self.target.port}"
        if self._closing:   # close(): not a lost link, nothing reconnects
            log.info("%s: disconnected (closed)", where)
            return
        self._counters.add("disconnects")
        log.warning("%s: disconnected (%s); reconnecting, messages kept", where, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._lock:
            key = self._mids.pop(mid, None)
            if key is None:
                self._early_acks[mid] = time.monotonic()   # acked before _send noted the mid
            else:
                self._ack(key)


def strict_json(payload: dict) -> tuple[str, bool]:
    """(compact strict JSON of ``payload``: no NaN / Infinity tokens, other types as ``str``; whether a NaN or
    infinite number in it was written as null)."""
    try:
        return json.dumps(payload, default=str, separators=(",", ":"), allow_nan=False), False
    except ValueError:   # NaN or inf somewhere: rare, so the common case pays no walk through the payload
        return json.dumps(json_safe(payload), default=str, separators=(",", ":"), allow_nan=False), True


def _paho_client(target: MqttTarget) -> Any:
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError as exc:
        raise SinkError("mqtt needs paho-mqtt: pip install 'fair-edge[mqtt]'") from exc
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=target.client_id, clean_session=True)
    client.reconnect_delay_set(min_delay=1, max_delay=4)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.will_set(f"{target.prefix}/{FAULTS_TOPIC}", gone_payload(), qos=1, retain=True)
    return client


def gone_payload() -> str:
    """The last will on PREFIX/faults: what the broker retains there when the station's connection ends without a
    DISCONNECT (the station killed, crashed or cut off). ``time_utc`` is null: the will is set at connect."""
    return strict_json({"active": True, "reason": GONE_REASON, "time_utc": None})[0]

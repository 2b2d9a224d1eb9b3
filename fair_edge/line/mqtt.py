"""MQTT: verdicts, fault changes and the run summary published to a broker (paho-mqtt).

URL: ``mqtt://[USER:PASSWORD@]HOST:PORT/PREFIX`` (``mqtts://`` over TLS); its options in ``mqtt_url``. Topics::

    PREFIX/verdicts   one JSON object per verdict or dropped frame (the verdict log's row), QoS 1
    PREFIX/parts      several cameras: one JSON object per part (the verdict log's part row), QoS 1
    PREFIX/faults     {"active": bool, "reason": str, "time_utc": ...} at start and on every change, QoS 1,
                      retained; sent again after each reconnect; the connection's last will puts
                      {"active": true, "reason": "station gone: ...", "time_utc": null} there (retained)
                      when the station dies or its link is cut without a goodbye
    PREFIX/summary    the run summary at the end, QoS 1, retained
    PREFIX/station    who publishes under PREFIX: {"id", "host", "pid", "client_id", "command", "cwd",
                      "started_utc", "running": true}, retained, at every connect; at a clean close
                      "running": false (a killed station's stays, its PREFIX/faults reading 'station gone');
                      an answer to another station's record (below) adds "answer_to" and is not retained

Each station warns once of another station under its prefix and of another client on its client id
(``mqtt_station``).
Payloads are strict JSON (``mqtt_client.strict_json``): a NaN or infinite number is sent as null.

Never blocks inspection: ``publish`` puts the message in an outbox and hands it to paho's network
thread. A message stays in the outbox until the broker acknowledges it (PUBACK); while the broker is
away, messages wait there (at most ``max_outbox``; beyond that the oldest are dropped and counted),
and after each reconnect every unacknowledged message is sent again, so a broker that goes away and
comes back loses nothing (a subscriber may see a message twice: rows carry ``run_id`` and ``seq``).
``publish`` never raises. A message is dropped, counted ``refused`` and logged once per topic and cause when paho
refuses it (a bad topic or payload), when it is larger than the broker's Maximum Packet Size (MQTT 5 CONNACK), when
the broker's PUBACK refuses it (reason code >= 0x80: an ACL denying the topic, a quota), or when it was the oldest
unacknowledged message at ``KICKS_BEFORE_DROP`` lost links in a row (a broker that closes the link on it, e.g. over
3.1.1, which has no reason codes): one bad message must not stop every later one. A refused connection (CONNACK,
TCP, TLS) is logged once per cause, naming the fix, until a connection succeeds; ``disconnects`` counts links lost
after their CONNACK, once each.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from .close_cut import because, cut_note
from .mqtt_client import (FAULTS_TOPIC, connack_refusal_text, connect_failure, paho_client, publish_packet_size,
                          strict_json, unaccepted_link_text)
from .mqtt_station import STATION_TOPIC, ClientIdWatch, station_record, utc_now, warn_shared_prefix
from .mqtt_url import parse_mqtt_url
from .sinks.base import Counters

log = logging.getLogger(__name__)

# published: handed to publish(); acked: acknowledged by the broker; resent: sent again after a reconnect (sent on
# an earlier connection, never acknowledged; a message queued before the first connection is sent once, not
# "again"); outbox_dropped: dropped beyond max_outbox; connects; disconnects: links lost after their CONNACK, once
# each (close() is not one, nor a connection attempt the broker refused);
# refused: messages dropped because they never will be delivered (paho or the broker refuses them, too large for the
# broker, or the oldest unacknowledged at KICKS_BEFORE_DROP lost links in a row; logged once per topic and cause);
# fault_restated: the latest PREFIX/faults message sent again after a reconnect (the will may have replaced it)
MQTT_COUNTERS = ("published", "acked", "resent", "outbox_dropped", "connects", "disconnects", "refused",
                 "fault_restated")
RESTATED_KEY = 0   # the outbox key of a restated fault: outbox keys start at 1, so its PUBACK counts nothing
STATION_KEY = -1   # the key of a PREFIX/station record: best effort, its PUBACK settles nothing
EARLY_ACK_S = 5.0   # a PUBACK seen before its publish() returned counts only this long (mids wrap)
KICKS_BEFORE_DROP = 3   # lost links in a row with one message the oldest unacknowledged: the broker will not take it
CLOSE_S = 3.0   # close(): most time in all, seconds (the unacknowledged messages, this station's record, the thread)
LOOP_STOP_S = 1.0   # of CLOSE_S, kept for paho's network thread to stop, seconds


class MqttPublisher:
    """Publishes to one broker from paho's network thread; see the module doc. Context manager."""

    def __init__(self, url: str, client_factory: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds, for how long a link lasted (``mqtt_station.QUICK_DROP_S``)."""
        self.target = parse_mqtt_url(url)
        self._where = f"mqtt {self.target.host}:{self.target.port}"   # log label: never the user or password
        self._counters = Counters(MQTT_COUNTERS)
        self._lock = threading.Lock()
        self._outbox: OrderedDict[int, tuple[str, bytes, bool]] = OrderedDict()   # key -> (topic, payload, retain)
        self._mids: dict[int, int] = {}   # paho message id -> outbox key
        self._early_acks: dict[int, tuple[float, Any]] = {}   # mid -> (monotonic s, reason) of a PUBACK that beat _send
        self._handed: set[int] = set()   # outbox keys handed to paho at least once (sent again: ``resent``)
        self._key = 0
        self._link = "down"   # down | trying (connecting) | refused (CONNACK said no) | up (CONNACK said yes)
        self._closing = False   # close() disconnects on purpose: not a link lost
        self._max_packet: int | None = None   # bytes: the broker's Maximum Packet Size (MQTT 5 CONNACK), None: unsaid
        self._suspect: tuple[int, int] | None = None   # (outbox key, lost links in a row it was oldest unacknowledged)
        self._nonfinite_topics: set[str] = set()   # topics whose NaN / inf were logged
        self._refused_logged: set[tuple[str, str]] = set()   # (topic, cause) of refused messages logged
        self._problems_logged: set[str] = set()   # connection problems logged since the last connect
        self._last_fault: tuple[int, str, bytes] | None = None   # (outbox key, topic, payload) of the latest fault
        self._on_close: list[Callable[[dict[str, int]], None]] = []   # told the final counters by close()
        self._station = station_record(self.target)   # this station's PREFIX/station record
        self._station_shown = ""   # id of the latest record on PREFIX/station ("": none or another's stopped one)
        self._others_named: set[str] = set()   # ids of other stations on this prefix already warned about
        self._client_ids = ClientIdWatch(self.target, self._where, clock)   # another client on this client id?
        self._client = (client_factory or paho_client)(self.target)
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    def start(self) -> MqttPublisher:
        clean = {"clean_start": True} if self.target.protocol == "5" else {}   # 3.1.1: clean_session in the client
        self._client.connect_async(self.target.host, self.target.port, keepalive=self.target.keepalive_s, **clean)
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
            self._count_refused(f"{self.target.prefix}/{topic}", "client", f"{type(exc).__name__}: {exc}")

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

    def on_close(self, fn: Callable[[dict[str, int]], None]) -> None:
        """Call ``fn(stats())`` when ``close()`` has flushed the outbox and disconnected: the final counters (the
        last messages acknowledged, or still counted in ``outbox``). A run summary takes its ``mqtt`` from here."""
        self._on_close.append(fn)

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """Flush, mark this station's record stopped, disconnect and stop paho's network thread, all within
        ``timeout_s`` (a station's stop: what it has left, at most ``CLOSE_S``): the last ``LOOP_STOP_S`` of it are
        the network thread's, which may be in a connect to a broker that is gone (paho's connect timeout, 5 s); one
        still running then is left to end on its own (a daemon). Then the ``on_close`` callbacks."""
        deadline = time.monotonic() + timeout_s
        sending_s = max(0.0, timeout_s - LOOP_STOP_S)
        if not self.flush(sending_s):
            log.warning("%s: closing with %d message(s) unacknowledged%s", self._where, self.stats()["outbox"],
                        cut_note())
        self._closing = True
        self._stop_station_record(max(0.0, deadline - LOOP_STOP_S - time.monotonic()))
        self._client.disconnect()
        self._stop_network(max(0.0, deadline - time.monotonic()))
        for fn in self._on_close:
            fn(self.stats())

    def _stop_network(self, timeout_s: float) -> None:
        """paho's ``loop_stop`` (it joins the network thread with no timeout), waited for at most ``timeout_s``."""
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-close", daemon=True)
        stopper.start()
        stopper.join(timeout_s)
        if stopper.is_alive():
            log.warning("%s: the network thread did not stop within %.1f s (%s); left to end on its own", self._where,
                        timeout_s, because("a connect to the broker in progress"))

    def __enter__(self) -> MqttPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread -------------------------------------------------------------------
    def _send(self, key: int) -> None:
        # paho calls on_publish holding its own lock: never call into paho while holding ours
        with self._lock:
            item = self._outbox.get(key) if self._link == "up" else None
            limit = self._max_packet
        if item is None:
            return   # sent again from _on_connect
        topic, data, retain = item
        size = publish_packet_size(topic, data, self.target.protocol == "5")
        if limit is not None and size > limit:   # the broker would close the link on it, every time
            self._drop(key, topic, "size", f"{size} bytes, more than the broker's Maximum Packet Size of {limit} "
                                           "bytes; raise it in the broker's config (mosquitto: max_packet_size)")
            return
        try:
            mid = self._client.publish(topic, data, qos=1, retain=retain).mid
        except Exception as exc:   # paho refuses a bad topic or payload: it never will take it, so drop it
            self._drop(key, topic, "client", f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            if key in self._outbox:
                self._handed.add(key)
            early = self._early_acks.pop(mid, None)
            if early is not None and time.monotonic() - early[0] < EARLY_ACK_S:
                self._settle(key, early[1])
            else:
                self._mids[mid] = key

    def _drop(self, key: int, topic: str, cause: str, why: str) -> None:
        """Take outbox ``key`` (a message on ``topic``) out for good: it never will be delivered (``why``)."""
        with self._lock:
            self._outbox.pop(key, None)
            self._handed.discard(key)
        self._count_refused(topic, cause, why)

    def _count_refused(self, topic: str, cause: str, why: str) -> None:
        """Count a message dropped as undeliverable; log it once per topic and ``cause`` (client | size | broker |
        kicked), saying ``why`` and the fix."""
        self._counters.add("refused")
        if (topic, cause) not in self._refused_logged:
            self._refused_logged.add((topic, cause))
            log.warning("mqtt %s: message refused and dropped (%s); further refusals on this topic are only "
                        "counted (stats 'refused')", topic, why)

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
            self._count_refused(last[1], "client", f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._mids[mid] = RESTATED_KEY
        self._counters.add("fault_restated")

    def _settle(self, key: int, reason: Any) -> None:
        """The broker's PUBACK for outbox ``key``: acknowledged, or (MQTT 5 reason code >= 0x80) refused and dropped.
        Called holding ``_lock``."""
        if not getattr(reason, "is_failure", False):
            self._handed.discard(key)
            if self._outbox.pop(key, None) is not None:
                self._counters.add("acked")
            return
        item = self._outbox.pop(key, None)
        self._handed.discard(key)
        topic = item[0] if item is not None else f"{self.target.prefix}/{FAULTS_TOPIC}"   # None: a restated fault
        why = f"the broker's PUBACK says {reason} (0x{reason.value:02X}); " + (
            f"let this station's user publish to {self.target.prefix}/# in the broker's ACL (mosquitto: acl_file)"
            if reason.value == 0x87 else "see the broker's log")
        if item is None:
            if (topic, "broker") not in self._refused_logged:
                self._refused_logged.add((topic, "broker"))
                log.warning("mqtt %s: the restated fault was refused (%s)", topic, why)
            return
        self._count_refused(topic, "broker", why)

    def _on_pre_connect(self, client, userdata) -> None:
        with self._lock:
            self._link = "trying"

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            with self._lock:
                self._link = "refused"   # paho reports the close that follows: not a lost link
            self._problem(logging.ERROR, connack_refusal_text(reason_code))
            return
        forget = getattr(client, "drop_out_messages", None)
        if forget is not None:   # paho would send its unacknowledged copies again itself: the outbox does that
            forget()
        with self._lock:
            self._link = "up"
            self._max_packet = getattr(properties, "MaximumPacketSize", None)
            self._problems_logged.clear()
            self._mids.clear()
            self._early_acks.clear()
            keys = list(self._outbox)
            again = sum(key in self._handed for key in keys)   # sent before, never acknowledged
        self._client_ids.connected()
        self._counters.add("connects")
        self._log_connected(len(keys), again)
        self._counters.add("resent", again)
        self._claim_prefix()
        self._restate_fault()
        for key in keys:
            self._send(key)

    def _log_connected(self, waiting: int, again: int) -> None:
        """Say what a connect sends: messages queued before it (first sends, at info level) and messages sent
        on an earlier connection and never acknowledged (sent again, a warning)."""
        if again:
            log.warning("%s: connected; sending %d unacknowledged message(s) again", self._where, again)
        if waiting > again:
            log.info("%s: connected; sending %d queued message(s)", self._where, waiting - again)
        elif not waiting:
            log.info("%s: connected", self._where)

    def _on_connect_fail(self, client, userdata) -> None:
        """paho could not open the TCP (or TLS) connection; it retries. Called inside paho's ``except``."""
        with self._lock:
            self._link = "down"
        self._problem(*connect_failure(sys.exc_info()[1], self.target))

    def _problem(self, level: int, text: str) -> None:
        """Log a connection problem once until a connection succeeds (paho retries every few seconds)."""
        with self._lock:
            if text in self._problems_logged:
                return
            self._problems_logged.add(text)
        log.log(level, "%s: %s", self._where, text)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._lock:
            was, self._link = self._link, "down"
        if self._closing:   # close(): not a lost link, nothing reconnects
            if was != "down":
                log.info("%s: disconnected (closed)", self._where)
            return
        if was == "up":
            self._counters.add("disconnects")
            log.warning("%s: disconnected (%s); reconnecting, messages kept", self._where, reason_code)
            self._client_ids.link_lost(reason_code, blamed=self._blame_oldest() > 1)
        elif was == "trying":
            self._problem(logging.WARNING, unaccepted_link_text(reason_code))
        # was "refused" (the close after a refused CONNACK, logged there) or "down" (paho reports one loss twice)

    def _blame_oldest(self) -> int:
        """A link was lost: the oldest unacknowledged message is the one the broker read last. The oldest at
        ``KICKS_BEFORE_DROP`` losses in a row is dropped as refused: the broker closes the link on it (too large,
        or refused over MQTT 3.1.1, which cannot say so), and sending it again would block every later message.
        Returns the losses in a row that message was the oldest at (0: none was unacknowledged)."""
        with self._lock:
            oldest = next((key for key in self._outbox if key in self._handed), None)
            kicks = self._suspect[1] + 1 if self._suspect is not None and self._suspect[0] == oldest else 1
            self._suspect = None if oldest is None or kicks >= KICKS_BEFORE_DROP else (oldest, kicks)
            item = self._outbox.get(oldest) if oldest is not None and kicks >= KICKS_BEFORE_DROP else None
        if item is not None:
            self._drop(oldest, item[0], "kicked", f"{len(item[1])} bytes, unacknowledged at {kicks} lost links in "
                       "a row: the broker closes the link on it (too large for it, or refused where MQTT 3.1.1 "
                       "cannot say why); see the broker's log")
        return 0 if oldest is None else kicks

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._lock:
            key = self._mids.pop(mid, None)
            if key is None:
                self._early_acks[mid] = (time.monotonic(), reason_code)   # acked before _send noted the mid
            elif key != STATION_KEY:
                self._settle(key, reason_code)

    # -- who else publishes under this prefix (PREFIX/station), who else uses this client id --------------------
    def _claim_prefix(self) -> None:
        """At a connect: subscribe to PREFIX/station, then publish this station's record there, retained. A client
        without ``subscribe`` (a test's minimal fake) cannot hear other stations: no record then."""
        subscribe = getattr(self._client, "subscribe", None)
        if subscribe is None:
            return
        try:
            subscribe(f"{self.target.prefix}/{STATION_TOPIC}", qos=1)
        except Exception as exc:   # best effort: the check must not stop publishing
            log.debug("%s: cannot subscribe to %s/%s: %s", self._where, self.target.prefix, STATION_TOPIC, exc)
            return
        with self._lock:
            self._station_shown = self._station["id"]   # retained records arriving now are older than ours
        self._publish_station(self._station, retain=True)

    def _publish_station(self, record: dict, retain: bool) -> int | None:
        """Publish ``record`` on PREFIX/station (QoS 1); its paho message id while unacknowledged, else None. Best
        effort: a refusal is logged at debug level only."""
        topic = f"{self.target.prefix}/{STATION_TOPIC}"
        data = strict_json(record)[0].encode()
        with self._lock:
            limit = self._max_packet
        size = publish_packet_size(topic, data, self.target.protocol == "5")
        if limit is not None and size > limit:   # the broker would close the link on it at every connect
            self._problem(logging.WARNING, f"this station's record on {topic} ({size} bytes) is over the broker's "
                                           f"Maximum Packet Size of {limit} bytes: not published, so other stations "
                                           "on this prefix are not told of this one")
            return None
        try:
            mid = self._client.publish(topic, data, qos=1, retain=retain).mid
        except Exception as exc:
            log.debug("%s: cannot publish %s: %s", self._where, topic, exc)
            return None
        with self._lock:
            if self._early_acks.pop(mid, None) is not None:
                return None
            self._mids[mid] = STATION_KEY
        return mid

    def _stop_station_record(self, timeout_s: float) -> None:
        """At close, while the link is up: mark this station's record stopped when it is still the one retained
        (another station's record that replaced it stays). Unsubscribes first and waits for the PUBACK (at most
        ``timeout_s``): a message still unread when the socket closes makes it a reset, which the broker takes
        for a lost link and answers with the will ('station gone')."""
        with self._lock:
            ours = self._link == "up" and self._station_shown == self._station["id"]
        if not ours:
            return
        try:
            self._client.unsubscribe(f"{self.target.prefix}/{STATION_TOPIC}")
        except Exception as exc:
            log.debug("%s: cannot unsubscribe from %s/%s: %s", self._where, self.target.prefix, STATION_TOPIC, exc)
        mid = self._publish_station({**self._station, "running": False, "stopped_utc": utc_now()}, retain=True)
        deadline = time.monotonic() + timeout_s
        while mid is not None and time.monotonic() < deadline:
            with self._lock:
                if mid not in self._mids:
                    return
            time.sleep(0.01)

    def _on_message(self, client, userdata, message) -> None:
        """A PREFIX/station record: ours (an echo), another station's stopped one (its station left: restate ours),
        or a live one of another station (warn once; answer with ours unless it answers ours)."""
        if message.topic != f"{self.target.prefix}/{STATION_TOPIC}" or message.retain:
            return   # retained: sent at our subscribe, older than our own record; its station may be long gone
        try:
            record = json.loads(message.payload)
            other = record["id"] if isinstance(record, dict) else None
        except (ValueError, KeyError, TypeError):
            return
        if other is None or other == self._station["id"]:
            return
        running, answer = record.get("running") is not False, "answer_to" in record
        with self._lock:
            restate = not running and self._link == "up" and not self._closing
            if not answer:   # an answer is not retained: the record there is still the one before it
                self._station_shown = self._station["id"] if restate else other if running else ""
            first = running and other not in self._others_named
            self._others_named.add(other)
        if restate:   # the other station marked the prefix stopped on leaving: this one still publishes there
            self._publish_station(self._station, retain=True)
        if first:
            warn_shared_prefix(self._where, self.target, record)
        if first and record.get("answer_to") != self._station["id"]:   # so the other station hears of this one
            self._publish_station({**self._station, "answer_to": other}, retain=False)

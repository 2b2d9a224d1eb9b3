"""The paho client the MQTT publisher (``fair_edge.line.mqtt``) drives: the client made in one place
(``paho_client``: protocol, credentials, TLS, the last will), what it puts on the wire (payloads as strict JSON, the
size of their PUBLISH packet as a broker's Maximum Packet Size counts it) and what its connection failures mean
(the texts the publisher logs, each naming the fix).

Payloads are strict JSON (what Node-RED's JSON.parse, jq and Go read): a NaN or infinite number is sent as null.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..errors import SinkError
from ..records import json_safe
from .mqtt_url import MqttTarget

FAULTS_TOPIC = "faults"
GONE_REASON = "station gone: its MQTT connection ended without a goodbye (killed, crashed or cut off)"
CONNECT_FIXES = {   # CONNACK reason (lower case) -> what to do about it
    "not authorized": "the broker refuses these credentials (or anonymous clients): check USER:PASSWORD@ in "
                      "mqtt.url (mqtt://USER:PASSWORD@HOST:PORT/PREFIX, percent-encoded) against the broker's "
                      "password file, or allow the client in its config",
    "bad user name or password": "fix USER:PASSWORD@ in mqtt.url (percent-encode ':', '@', '/', '#' in them) or the "
                                 "broker's password file",
    "unsupported protocol version": "the broker speaks only MQTT 3.1.1: add protocol=3.1.1 to mqtt.url",
    "client identifier not valid": "set another client_id in mqtt.url",
}


def paho_client(target: MqttTarget) -> Any:
    """A paho client for ``target``, not yet connected: MQTT 5 (or 3.1.1 with a clean session), its credentials
    and TLS, reconnect delays of 1 .. 4 s, no queue of paho's own, and the last will on PREFIX/faults
    (``gone_payload``). ``SinkError`` naming the install command when paho-mqtt is missing."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError as exc:
        raise SinkError("mqtt needs paho-mqtt: pip install 'fair-edge[mqtt]'") from exc
    if target.protocol == "5":   # PUBACK and CONNACK carry reason codes; CONNACK the broker's Maximum Packet Size
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=target.client_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=target.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set()   # this machine's CA store; the broker's name checked against its certificate
    client.reconnect_delay_set(min_delay=1, max_delay=4)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.will_set(f"{target.prefix}/{FAULTS_TOPIC}", gone_payload(), qos=1, retain=True)
    return client


def publish_packet_size(topic: str, payload: bytes, v5: bool) -> int:
    """Bytes of the QoS 1 PUBLISH packet paho sends for ``payload`` on ``topic`` (MQTT 5: with an empty property
    list), as a broker's Maximum Packet Size counts them: fixed header, remaining length, topic, id, payload."""
    remaining = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


def strict_json(payload: dict) -> tuple[str, bool]:
    """(compact strict JSON of ``payload``: no NaN / Infinity tokens, other types as ``str``; whether a NaN or
    infinite number in it was written as null)."""
    try:
        return json.dumps(payload, default=str, separators=(",", ":"), allow_nan=False), False
    except ValueError:   # NaN or inf somewhere: rare, so the common case pays no walk through the payload
        return json.dumps(json_safe(payload), default=str, separators=(",", ":"), allow_nan=False), True


def gone_payload() -> str:
    """The last will on PREFIX/faults: what the broker retains there when the station's connection ends without a
    DISCONNECT (the station killed, crashed or cut off). ``time_utc`` is null: the will is set at connect."""
    return strict_json({"active": True, "reason": GONE_REASON, "time_utc": None})[0]


def connack_refusal_text(reason_code: Any) -> str:
    """What to log when the broker's CONNACK refuses the connection (``reason_code``: paho's), naming the fix."""
    fix = CONNECT_FIXES.get(str(reason_code).lower(), "see the broker's log")
    return f"connection refused by the broker: {reason_code}; {fix}"


def connect_failure(exc: BaseException | None, target: MqttTarget) -> tuple[int, str]:
    """(log level, text) for a TCP or TLS connection to ``target`` that paho could not open (``exc``: why, None
    when unknown), naming the fix: an error for TLS (a certificate this machine does not trust), else a warning."""
    cause = "?" if exc is None else f"{type(exc).__name__}: {exc}"
    if exc is not None and type(exc).__module__ == "ssl":
        return logging.ERROR, (f"TLS connection failed ({cause}); mqtts:// checks the broker's certificate against "
                               "this machine's CA store and its name: install the broker's CA there "
                               "(update-ca-certificates) and use the name its certificate holds, or use mqtt:// "
                               "for a plain port")
    return logging.WARNING, (f"cannot connect ({cause}); is the broker up and listening on "
                             f"{target.host}:{target.port}? retrying, messages kept")


def unaccepted_link_text(reason_code: Any) -> str:
    """What to log when a link ends (``reason_code``: paho's) before the broker accepted it (no CONNACK yet)."""
    return f"the link ended before the broker accepted it ({reason_code}); " + (
        "the broker did not answer within keepalive_s (stalled or overloaded); retrying"
        if "keep alive" in str(reason_code).lower() else
        "a TLS-only port ends plain mqtt:// links so (use mqtts://), else see the broker's log")

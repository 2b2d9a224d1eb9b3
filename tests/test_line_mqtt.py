"""MQTT publishing against a real mosquitto on 127.0.0.1 that goes away and comes back mid-run."""

from __future__ import annotations

import json
import time

import pytest

from fair_edge.errors import SinkError
from fair_edge.line.mqtt import MqttPublisher, parse_mqtt_url
from line_servers import MOSQUITTO, MosquittoBroker, MqttCollector, wait_for

pytest.importorskip("paho.mqtt")
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install "
                                  "mosquitto; .ci/run installs it)")


@needs_broker
def test_broker_restart_mid_run_loses_no_verdict(tmp_path):
    broker = MosquittoBroker(tmp_path).start()
    collector = None
    try:
        collector = MqttCollector(broker.port, "line/#")
        with MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/line?client_id=station-a") as pub:
            for seq in range(300):
                if seq == 100:
                    broker.stop()            # the broker goes away mid-run (the publisher sees it go: order,
                    assert wait_for(lambda: pub.stats()["disconnects"] >= 1, 10.0)   # not a 1 s window) ...
                if seq == 200:
                    broker.start()           # ... and comes back (sessions restored from its persistence)
                pub.publish_row({"run_id": "R", "seq": seq, "t_capture": float(seq), "ng": seq % 3 == 0})
                time.sleep(0.01)
            pub.publish_summary({"run_id": "R", "inspected": 300})
            assert pub.flush(20.0), pub.stats()
            stats = pub.stats()
        deadline = time.monotonic() + 10
        while len({m["seq"] for m in collector.messages.get("line/verdicts", [])}) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if collector is not None:
            collector.close()
        broker.close()
    got = {m["seq"] for m in collector.messages.get("line/verdicts", [])}
    assert got == set(range(300)), sorted(set(range(300)) - got)[:20]
    assert collector.messages["line/summary"][-1]["inspected"] == 300
    assert stats["disconnects"] >= 1 and stats["connects"] >= 2 and stats["acked"] == stats["published"] == 301


def test_mqtt_url_errors_name_the_form():
    with pytest.raises(SinkError, match="mqtt://HOST:PORT/PREFIX"):
        parse_mqtt_url("mqtts://broker")
    with pytest.raises(SinkError, match="did you mean 'client_id'"):
        parse_mqtt_url("mqtt://127.0.0.1/line?clientid=x")
    t = parse_mqtt_url("mqtt://127.0.0.1/line3")
    assert (t.port, t.prefix) == (1883, "line3")


def test_two_stations_on_one_broker_get_different_default_client_ids():
    """A broker closes the older of two connections with one client id: the default is this process's own (host,
    prefix, pid), so line 3 and line 4 (or a station's second process) never knock each other off."""
    import os
    import socket
    import subprocess
    import sys

    line3, line4 = parse_mqtt_url("mqtt://127.0.0.1/line3"), parse_mqtt_url("mqtt://127.0.0.1/line4")
    assert line3.client_id == f"fair-edge-{socket.gethostname()}-line3-{os.getpid()}" != line4.client_id
    other = subprocess.run([sys.executable, "-c", "from fair_edge.line.mqtt import parse_mqtt_url as p; "
                            "print(p('mqtt://127.0.0.1/line3').client_id)"], capture_output=True, text=True, check=True)
    assert other.stdout.strip() != line3.client_id      # the same station file in another process
    assert parse_mqtt_url("mqtt://127.0.0.1/line3?client_id=st-1").client_id == "st-1"


@needs_broker
def test_a_verdict_on_mqtt_carries_its_regions_rules_and_what_the_gate_did(tmp_path):
    """The station's verdict callback publishes the verdict log's own row: its defect regions, the rules that
    fired, and, for a verdict that came after the gate decided its part, ``verdict_late`` and ``gate`` (before,
    MQTT published the row without them: a part rejected fail-safe read OK there)."""
    import numpy as np

    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.records import Frame, RuleHit, Verdict
    from fair_edge.regions import Region
    from fair_edge.station.run import LineSide

    class LateGate:  # the reject scheduler's answer for a verdict after its part's due time
        def submit(self, verdict):
            return "late"

        def decision(self, seq):
            return "rejected_uninspected"

    region = Region((10.0, 20.0, 40.0, 20.0), (30.0, 30.0), 800.0, 40.0, 0.9, 0.6, 2.0, 2.0, "seal", 1)
    hit = RuleHit("min_area_mm2", "seal", 1, 2.0, 1.0, "mm²", 0)
    broker = MosquittoBroker(tmp_path).start()
    collector = None
    try:
        collector = MqttCollector(broker.port, "line/#")
        with Recorder(RecordSettings(dir=tmp_path / "rec", min_free_mb=0, save_ng_images=False), run_id="R") as rec, \
                MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/line") as pub:
            line = LineSide(rec, LateGate(), None, pub, [])
            frame = Frame(7, 1.0, np.zeros((64, 64, 3), np.uint8))
            line.record_verdict(frame, Verdict(7, 1.0, 0.9, 0.5, True, 1.2, "", "", "m", (region,), (hit,)))
            assert pub.flush(10.0), pub.stats()
        deadline = time.monotonic() + 10
        while not collector.messages.get("line/verdicts") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if collector is not None:
            collector.close()
        broker.close()
    (row,) = collector.messages["line/verdicts"]
    assert row["seq"] == 7 and row["verdict_late"] is True and row["gate"] == "rejected_uninspected"
    assert row["regions"][0]["zone"] == "seal" and row["regions"][0]["area_mm2"] == 2.0
    assert row["hits"][0]["rule"] == "min_area_mm2" and "seal" in row["reason"]
    logged = [json.loads(x) for x in (tmp_path / "rec" / "verdicts.jsonl").read_text().splitlines()]
    assert logged == [row]  # the verdict log's row, field for field


class FakePaho:
    """paho's client as MqttPublisher drives it; the test plays the network thread (connect, PUBACK, drop)."""

    def __init__(self, target) -> None:
        self.published: list[tuple[int, str]] = []   # (mid, topic)
        self._mid = 0

    def connect_async(self, host, port, keepalive):
        pass

    def loop_start(self):
        pass

    def loop_stop(self):
        pass

    def disconnect(self):
        self.on_disconnect(self, None, None, 0)   # paho reports a disconnect() too

    def publish(self, topic, data, qos, retain):
        self._mid += 1
        self.published.append((self._mid, topic))

        class Info:
            mid = self._mid
        return Info()

    def connect(self):
        self.on_connect(self, None, None, 0)

    def ack(self, mid):
        self.on_publish(self, None, mid)


def test_mqtt_counters_count_a_first_send_once_and_only_a_send_after_a_reconnect_as_resent(caplog):
    """Messages published before the first CONNACK were counted ``resent`` and logged as 'sending N ... again';
    the close logged 'reconnecting, messages kept'. Each counter moves for what it names now."""
    import logging

    caplog.set_level(logging.INFO, logger="fair_edge.line.mqtt")
    pub = MqttPublisher("mqtt://127.0.0.1:1883/a", client_factory=FakePaho).start()
    paho = pub._client
    for i in range(3):
        pub.publish("verdicts", {"seq": i})            # before the first connection: queued, not sent
    assert paho.published == [] and pub.stats()["published"] == 3
    paho.connect()                                     # first connection: each sent once, none again
    assert [mid for mid, _ in paho.published] == [1, 2, 3]
    assert pub.stats()["resent"] == 0 and pub.stats()["connects"] == 1
    paho.ack(1)
    pub._on_disconnect(paho, None, None, "link lost")  # the broker goes away with 2 and 3 unacknowledged
    pub.publish("verdicts", {"seq": 3})                # queued while away: a first send at the reconnect
    paho.connect()
    assert [mid for mid, _ in paho.published] == [1, 2, 3, 4, 5, 6]
    stats = pub.stats()
    assert (stats["resent"], stats["connects"], stats["disconnects"], stats["acked"]) == (2, 2, 1, 1)
    for mid in (4, 5, 6):
        paho.ack(mid)
    pub.close(timeout_s=1.0)
    stats = pub.stats()
    assert (stats["acked"], stats["outbox"], stats["disconnects"], stats["resent"]) == (4, 0, 1, 2)
    messages = [r.getMessage() for r in caplog.records]
    again = [m for m in messages if "again" in m]
    assert again == ["mqtt 127.0.0.1:1883: connected; sending 2 unacknowledged message(s) again"]
    assert sum("reconnecting" in m for m in messages) == 1       # the lost link, not the close
    assert any("sending 3 queued message(s)" in m for m in messages)
    assert any("disconnected (closed)" in m for m in messages)


def test_a_nan_or_infinity_in_a_message_is_sent_as_null_so_strict_json_parsers_read_it(caplog):
    """The retained summary of a run that inspected nothing held bare NaN: Node-RED's JSON.parse rejected it, and
    the bad message stayed retained. Every payload is strict JSON now; a non-finite number is null, logged once."""
    import logging
    import math

    from fair_edge.station.inspector import LatencyStats

    class Recording(FakePaho):
        def publish(self, topic, data, qos, retain):
            self.payloads = [*getattr(self, "payloads", []), (topic, data, retain)]
            return super().publish(topic, data, qos, retain)

    def strict(token):
        raise ValueError(f"not JSON: {token}")

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    pub = MqttPublisher("mqtt://127.0.0.1:1883/a", client_factory=Recording).start()
    pub._client.connect()
    pub.publish_summary({"inspected": 0, "latency": LatencyStats().percentiles(), "fps": 0.0})
    pub.publish("verdicts", {"seq": 1, "score": math.nan, "regions": [{"area": math.inf}], "n": (1, -math.inf)})
    pub.publish("verdicts", {"seq": 2, "score": float("nan")})
    got = [(topic, json.loads(data, parse_constant=strict), retain) for topic, data, retain in pub._client.payloads]
    assert got == [("a/summary", {"inspected": 0, "latency": {"p50_ms": None, "p99_ms": None, "max_ms": None},
                                  "fps": 0.0}, True),
                   ("a/verdicts", {"seq": 1, "score": None, "regions": [{"area": None}], "n": [1, None]}, False),
                   ("a/verdicts", {"seq": 2, "score": None}, False)]
    assert sum("NaN or an infinite number" in r.getMessage() for r in caplog.records) == 1   # once per topic

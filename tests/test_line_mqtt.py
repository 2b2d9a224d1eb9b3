"""MQTT publishing against a real mosquitto on 127.0.0.1 that goes away and comes back mid-run."""

from __future__ import annotations

import json
import time

import pytest

from fair_edge.errors import SinkError
from fair_edge.line.mqtt import MqttPublisher
from fair_edge.line.mqtt_url import parse_mqtt_url
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
        parse_mqtt_url("mqqt://broker")
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
    other = subprocess.run([sys.executable, "-c", "from fair_edge.line.mqtt_url import parse_mqtt_url as p; "
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
    from fair_edge.station.line_side import LineSide

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

    def connect_async(self, host, port, keepalive, **options):
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

    def attempt(self):
        """A connection attempt starts (paho calls on_pre_connect when one is set)."""
        if getattr(self, "on_pre_connect", None) is not None:
            self.on_pre_connect(self, None)

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


# ---------------------------------------------------------------------------------------------- mqtt-edges
def test_a_wildcard_nul_or_fragment_in_the_mqtt_prefix_is_refused_naming_mqtt_url():
    """``mqtt://host/cell+2`` passed the URL check and then every publish raised ValueError (wildcard topic);
    ``mqtt://host/line#3`` published as ``line`` (urlsplit reads '#3' as a fragment), under another station's
    topics. Both are refused now; a leading '/' is kept as written, a trailing one dropped."""
    with pytest.raises(SinkError, match=r"mqtt\.url: .*'\+'.*remove it"):
        parse_mqtt_url("mqtt://127.0.0.1:1883/cell+2")
    with pytest.raises(SinkError, match=r"mqtt\.url: .*'#'.*fragment.*Remove the '#'"):
        parse_mqtt_url("mqtt://127.0.0.1:1883/line#3")
    with pytest.raises(SinkError, match=r"mqtt\.url: .*'#'"):
        parse_mqtt_url("mqtt://127.0.0.1:1883/line3?client_id=a#b")
    with pytest.raises(SinkError, match=r"mqtt\.url: .*NUL"):
        parse_mqtt_url("mqtt://127.0.0.1:1883/line\x003")
    assert parse_mqtt_url("mqtt://127.0.0.1:1883//plant/line3").prefix == "/plant/line3"
    assert parse_mqtt_url("mqtt://127.0.0.1:1883/plant/line3/").prefix == "plant/line3"
    assert parse_mqtt_url("mqtt://127.0.0.1:1883").prefix == parse_mqtt_url("mqtt://127.0.0.1/").prefix == "fair-edge"


class StrictPaho(FakePaho):
    """FakePaho that refuses a wildcard topic the way paho does (ValueError from ``publish``)."""

    def publish(self, topic, data, qos, retain):
        if "+" in topic or "#" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")
        return super().publish(topic, data, qos, retain)


def test_publish_never_raises_a_refused_message_is_dropped_counted_and_logged_once(caplog):
    """paho's ValueError for a wildcard topic went up through ``publish`` into the verdict callback (one traceback
    per frame) and, for a message queued before the connection, out of paho's on_connect. A message paho refuses,
    or one that cannot be encoded, is now dropped (it never could be sent), counted ``refused``, logged once per
    topic; the rest go on."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    pub = MqttPublisher("mqtt://127.0.0.1:1883/a", client_factory=StrictPaho).start()
    paho = pub._client
    pub.publish("ver+dicts", {"seq": 0})          # queued before the connection: refused at the connect
    pub.publish("verdicts", {"seq": 1})
    paho.connect()
    pub.publish("ver+dicts", {"seq": 2})          # connected: refused at once
    pub.publish("verdicts", {("not", "a str key"): 3})   # json cannot encode it
    pub.publish("verdicts", {"seq": 4})
    assert [topic for _, topic in paho.published] == ["a/verdicts", "a/verdicts"]
    for mid, _ in paho.published:
        paho.ack(mid)
    stats = pub.stats()
    assert (stats["refused"], stats["outbox"], stats["acked"]) == (3, 0, 2), stats
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2 and "a/ver+dicts" in refused[0] and "wildcards" in refused[0]   # once per topic
    pub.close(timeout_s=1.0)


def test_the_latest_fault_is_sent_again_after_a_reconnect_over_the_will():
    """While the link is down the broker may publish the will ('station gone') over PREFIX/faults; after the
    reconnect the latest fault message is published again (retained), its PUBACK counted nowhere else."""
    class Recording(FakePaho):
        def publish(self, topic, data, qos, retain):
            self.payloads = [*getattr(self, "payloads", []), (topic, json.loads(data), retain)]
            return super().publish(topic, data, qos, retain)

    pub = MqttPublisher("mqtt://127.0.0.1:1883/a", client_factory=Recording).start()
    paho = pub._client
    paho.connect()
    pub.publish_fault(False, "cleared", "T0")
    paho.ack(1)
    pub._on_disconnect(paho, None, None, "link lost")
    paho.connect()
    assert paho.payloads[-1] == ("a/faults", {"active": False, "reason": "cleared", "time_utc": "T0"}, True)
    paho.ack(paho.published[-1][0])
    stats = pub.stats()
    assert (stats["fault_restated"], stats["published"], stats["acked"], stats["outbox"]) == (1, 1, 1, 0), stats
    pub.close(timeout_s=1.0)


def retained_faults(port: int, topic: str) -> list[dict]:
    """What a subscriber arriving now sees on ``topic`` (the retained message, if any)."""
    collector = MqttCollector(port, topic)
    try:
        wait_for(lambda: collector.messages.get(topic), 5.0)
        return collector.messages.get(topic, [])
    finally:
        collector.close()


@needs_broker
def test_a_fresh_station_replaces_a_fault_an_earlier_one_left_retained(tmp_path):
    """A station killed while faulted leaves ``{"active": true}`` retained on PREFIX/faults; a restarted, healthy
    station published faults only on a change from '' and so never replaced it: dashboards showed the line faulted
    for good. The first tick publishes the current state now."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.station.line_side import LineSide

    broker = MosquittoBroker(tmp_path).start()
    try:
        old = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="old-station")
        old.connect("127.0.0.1", broker.port)
        old.loop_start()
        left = {"active": True, "reason": "camera top: camera gone", "time_utc": "2026-12-01T00:00:00Z"}
        old.publish("line3/faults", json.dumps(left), qos=1, retain=True).wait_for_publish(5)
        old.disconnect()
        old.loop_stop()
        with Recorder(RecordSettings(dir=tmp_path / "rec", min_free_mb=0, save_ng_images=False), run_id="R") as rec, \
                MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/line3") as pub:
            line = LineSide(rec, None, None, pub, [])
            for _ in range(3):
                line.publish_fault("")              # the station's ticks: healthy
            assert pub.flush(10.0), pub.stats()
            assert pub.stats()["published"] == 1    # the first tick only
        seen = retained_faults(broker.port, "line3/faults")
    finally:
        broker.close()
    assert [(m["active"], m["reason"]) for m in seen] == [(False, "cleared")], seen


@needs_broker
def test_a_station_that_dies_is_shown_gone_on_faults_by_its_will(tmp_path):
    """A station process killed without a goodbye leaves its last 'no fault' retained: a dashboard read the line
    healthy while nothing inspected. The connection's will puts 'station gone' there (retained); a clean close
    does not."""
    import signal
    import subprocess
    import sys

    broker = MosquittoBroker(tmp_path).start()
    station = None
    try:
        url = f"mqtt://127.0.0.1:{broker.port}/line3"
        with MqttPublisher(url) as pub:             # a clean close leaves the last state, not the will
            pub.publish_fault(False, "cleared", "T0")
        assert [m["active"] for m in retained_faults(broker.port, "line3/faults")] == [False]
        code = ("import sys; from fair_edge.line.mqtt import MqttPublisher; "
                f"p = MqttPublisher({url!r}).start(); p.publish_fault(False, 'cleared', 'T1'); "
                "assert p.flush(10.0); print('ready', flush=True); sys.stdin.read()")
        station = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        assert station.stdout.readline().strip() == "ready"
        station.send_signal(signal.SIGKILL)
        station.wait(10)
        collector = MqttCollector(broker.port, "line3/faults")
        try:
            assert wait_for(lambda: any(m["active"] for m in collector.messages.get("line3/faults", [])), 10.0), \
                collector.messages
            seen = collector.messages["line3/faults"][-1]
        finally:
            collector.close()
    finally:
        if station is not None and station.poll() is None:
            station.kill()
        broker.close()
    assert seen["active"] is True and seen["reason"].startswith("station gone") and seen["time_utc"] is None


# ---------------------------------------------------------------------------------------------- mqtt-refusals
def broker_with(tmp_path, extra: str, anonymous: bool = True) -> MosquittoBroker:
    """A MosquittoBroker (not started) whose config ends with ``extra`` (per-listener lines apply to its port)."""
    broker = MosquittoBroker(tmp_path)
    text = broker.conf.read_text()
    if not anonymous:
        text = text.replace("allow_anonymous true", "allow_anonymous false")
    broker.conf.write_text(text + extra)
    return broker


def collected(collector: MqttCollector, topic: str, count: int) -> list:
    """``collector``'s messages on ``topic`` once it holds ``count`` of them (at most 10 s)."""
    wait_for(lambda: len(collector.messages.get(topic, [])) >= count, 10.0)
    return collector.messages.get(topic, [])


@needs_broker
def test_a_broker_acl_refusal_is_counted_refused_not_acked_and_logged_once_per_topic(tmp_path, caplog):
    """A broker whose ACL denies the station's topics answered every PUBACK 'not authorized' (0x87), which MQTT
    3.1.1 cannot carry: the station counted all 7 messages ``acked`` and logged nothing while the broker dropped
    them. MQTT 5 carries the reason: each is counted ``refused`` and dropped (not sent again), logged once per topic
    naming the reason and the broker's ACL."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    (tmp_path / "acl").write_text("topic read #\n")          # anonymous clients may read, not publish
    broker = broker_with(tmp_path, f"acl_file {tmp_path / 'acl'}\n").start()
    try:
        with MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/line3") as pub:
            pub.publish_fault(False, "cleared", "T0")
            for seq in range(5):
                pub.publish_row({"seq": seq})
            pub.publish_summary({"inspected": 5})
            assert pub.flush(10.0), pub.stats()
            stats = pub.stats()
    finally:
        broker.close()
    assert (stats["published"], stats["acked"], stats["refused"], stats["connects"]) == (7, 0, 7, 1), stats
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 3, refused                           # faults, verdicts, summary: once each
    assert all("Not authorized (0x87)" in m and "ACL" in m for m in refused), refused


class V311OnlyBroker:
    """A TCP server that answers every CONNECT as a broker that speaks only MQTT 3.1.1 answers an MQTT 5 one:
    CONNACK 'unacceptable protocol version' (3.1.1 form), then it closes; ``connects`` counts CONNECTs."""

    def __init__(self) -> None:
        import socket
        import threading

        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.connects = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                if conn.recv(4096):
                    self.connects += 1
                    conn.sendall(b"\x20\x02\x00\x01")   # CONNACK, return code 1: unacceptable protocol version

    def close(self) -> None:
        self._server.close()


@needs_broker
def test_mqtt_5_by_default_and_protocol_3_1_1_for_a_broker_that_speaks_only_that(tmp_path, caplog):
    """MQTT 5 (reason codes) is the default; a broker that speaks only 3.1.1 refuses it, which is logged as one
    error naming ``protocol=3.1.1`` however often the client retries; with it the station publishes as before."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    old = V311OnlyBroker()
    try:
        pub = MqttPublisher(f"mqtt://127.0.0.1:{old.port}/line3").start()
        pub.publish_row({"seq": 0})
        assert wait_for(lambda: old.connects >= 3, 20.0), old.connects   # retried: still one error
        pub.close(timeout_s=0.1)
    finally:
        old.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Unsupported protocol version" in errors[0] and "protocol=3.1.1" in errors[0], errors
    assert (pub.stats()["connects"], pub.stats()["disconnects"]) == (0, 0)
    broker = MosquittoBroker(tmp_path).start()
    collector = None
    try:
        collector = MqttCollector(broker.port, "line3/#")
        with MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/line3?protocol=3.1.1") as pub:
            assert pub._client.protocol == 4               # paho's MQTTv311
            pub.publish_row({"seq": 1})
            assert pub.flush(10.0), pub.stats()
        assert collected(collector, "line3/verdicts", 1) == [{"seq": 1}]
    finally:
        if collector is not None:
            collector.close()
        broker.close()
    with pytest.raises(SinkError, match=r"protocol: expected one of 5 \| 3\.1\.1, found '4'"):
        parse_mqtt_url("mqtt://127.0.0.1/line3?protocol=4")


@needs_broker
def test_a_message_over_the_brokers_max_packet_size_is_refused_locally_and_blocks_nothing(tmp_path, caplog):
    """One ~3 kB verdict row against a broker with max_packet_size 2000 was sent, the broker closed the link on it,
    and every reconnect sent it first again: every later verdict and fault stayed in the outbox. MQTT 5's CONNACK
    says the broker's limit: the message is refused here (counted, logged once with its size and the limit), the
    link stays up and the rest arrive."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    broker = broker_with(tmp_path, "max_packet_size 2000\n").start()
    collector = None
    try:
        collector = MqttCollector(broker.port, "line3/#")
        with MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/line3") as pub:
            assert wait_for(lambda: pub.stats()["connects"] == 1, 10.0)
            pub.publish_row({"seq": 0})
            pub.publish_row({"seq": 1, "regions": [{"bbox": [1, 2, 3, 4], "area_px": 123.4}] * 80})
            for seq in range(2, 10):
                pub.publish_row({"seq": seq})
            assert pub.flush(10.0), pub.stats()
            stats = pub.stats()
        got = [m["seq"] for m in collected(collector, "line3/verdicts", 9)]
    finally:
        if collector is not None:
            collector.close()
        broker.close()
    assert got == [0, *range(2, 10)], got
    assert (stats["refused"], stats["acked"], stats["disconnects"], stats["connects"]) == (1, 9, 0, 1), stats
    (refused,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "line3/verdicts" in refused and "Maximum Packet Size of 2000 bytes" in refused
    assert "max_packet_size" in refused   # the broker setting that sets the limit


class DroppingPaho(FakePaho):
    """FakePaho with paho's ``drop_out_messages`` (what the publisher calls at each connect)."""

    def __init__(self, target) -> None:
        super().__init__(target)
        self.drops = 0

    def drop_out_messages(self):
        self.drops += 1
        return []


def test_a_message_unacknowledged_at_three_lost_links_in_a_row_is_dropped_as_refused(caplog):
    """Over MQTT 3.1.1 (or from a broker that does not say its limit) a message the broker closes the link on was
    sent first again after every reconnect, for good. The oldest unacknowledged message at 3 lost links in a
    row (KICKS_BEFORE_DROP) is dropped as refused (logged); the messages behind it go out; paho's own copies are
    dropped at each connect so only the outbox sends again."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    pub = MqttPublisher("mqtt://127.0.0.1:1883/a", client_factory=DroppingPaho).start()
    paho = pub._client
    paho.connect()
    for seq in range(3):
        pub.publish("verdicts", {"seq": seq})
    paho.ack(1)                                        # seq 0 arrives; the broker closes the link on seq 1
    for _ in range(3):
        pub._on_disconnect(paho, None, None, "Unspecified error")
        sent = len(paho.published)
        paho.connect()
    assert [mid for mid, _ in paho.published[sent:]] == [sent + 1]   # seq 2 only: seq 1 is gone
    paho.ack(sent + 1)
    stats = pub.stats()
    assert (stats["refused"], stats["acked"], stats["outbox"], stats["disconnects"]) == (1, 2, 0, 3), stats
    assert paho.drops == 4
    (dropped,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "a/verdicts" in dropped and "unacknowledged at 3 lost links in a row" in dropped
    # three quick losses, each on the same message: the broker closing the link on it, not a client id clash
    assert not [r for r in caplog.records if "another client may be using" in r.getMessage()]
    pub.close(timeout_s=0.1)


def test_one_lost_link_is_one_disconnect_and_a_link_never_up_is_none(caplog):
    """paho reported one keep-alive loss twice (two warnings, disconnects +2), and a connection the broker refused
    counted as a lost link every retry (8 s: connects 0, disconnects 4). Now: once per link that had connected."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    pub = MqttPublisher("mqtt://127.0.0.1:1883/a", client_factory=FakePaho).start()
    paho = pub._client
    paho.connect()
    pub._on_disconnect(paho, None, None, "Keep alive timeout")
    pub._on_disconnect(paho, None, None, "Keep alive timeout")   # the same loss, reported again
    for _ in range(3):                                          # attempts that end before a CONNACK
        paho.attempt()
        pub._on_disconnect(paho, None, None, "Unspecified error")
    assert (pub.stats()["connects"], pub.stats()["disconnects"]) == (1, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("reconnecting" in m for m in messages) == 1
    assert sum("before the broker accepted it" in m for m in messages) == 1, messages
    pub.close(timeout_s=0.1)


def mosquitto_password_file(folder, user: str, password: str):
    import shutil
    import subprocess

    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (it comes with mosquitto)")
    path = folder / "passwords"
    subprocess.run([tool, "-b", "-c", str(path), user, password], check=True, capture_output=True)
    return path


@needs_broker
def test_user_and_password_in_the_url_log_in_and_are_never_shown(tmp_path, caplog):
    """``mqtt://op:secret@HOST`` was accepted and the credentials dropped (the broker said 'not authorized', each
    retry a warning). They log in now; the password shows in no log line, repr or URL error (``op:***@``); a wrong
    one is one error naming the cause and the fix however often the client retries, and no lost link."""
    import logging

    caplog.set_level(logging.DEBUG, logger="fair_edge.line.mqtt")
    passwords = mosquitto_password_file(tmp_path, "op", "s3cr/t")
    broker = broker_with(tmp_path, f"password_file {passwords}\n", anonymous=False).start()
    try:
        url = f"mqtt://op:s3cr%2Ft@127.0.0.1:{broker.port}/line3"
        with MqttPublisher(url) as pub:
            pub.publish_row({"seq": 0})
            assert pub.flush(10.0), pub.stats()
            assert "s3cr" not in repr(pub.target)
        wrong = MqttPublisher(f"mqtt://op:wrong@127.0.0.1:{broker.port}/line3")
        attempts = []
        refused = wrong._client.on_connect
        wrong._client.on_connect = lambda *a: (attempts.append(1), refused(*a))
        wrong.start()
        assert wait_for(lambda: len(attempts) >= 3, 20.0), attempts
        wrong.close(timeout_s=0.1)
    finally:
        broker.close()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "s3cr" in m or "wrong" in m], messages
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Not authorized" in errors[0] and "USER:PASSWORD@" in errors[0], errors
    assert (wrong.stats()["connects"], wrong.stats()["disconnects"]) == (0, 0), wrong.stats()
    with pytest.raises(SinkError) as bad:
        parse_mqtt_url("mqtt://op:s3cret@127.0.0.1/line3?clientid=x")
    assert "op:***@127.0.0.1" in str(bad.value) and "s3cret" not in str(bad.value)


@needs_broker
def test_mqtts_checks_the_broker_certificate_against_the_ca_store(tmp_path, caplog, monkeypatch):
    """``mqtts://`` was refused; a TLS-only port with ``mqtt://`` said only 'Unspecified error' every few seconds.
    mqtts:// now uses TLS with this machine's CA store (here: SSL_CERT_FILE, as OpenSSL reads it); an untrusted
    certificate is one error naming the CA store."""
    import logging
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (it makes the test's certificate)")
    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    broker = broker_with(tmp_path, f"certfile {cert}\nkeyfile {key}\n").start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))   # a CA store without the broker's CA
        untrusted = MqttPublisher(f"mqtts://127.0.0.1:{broker.port}/line3").start()
        assert wait_for(lambda: any("TLS" in r.getMessage() for r in caplog.records), 10.0)
        untrusted.close(timeout_s=0.1)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with MqttPublisher(f"mqtts://127.0.0.1:{broker.port}/line3") as pub:
            pub.publish_row({"seq": 0})
            assert pub.flush(10.0), pub.stats()
    finally:
        broker.close()
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "CERTIFICATE_VERIFY_FAILED" in error and "CA store" in error, error
    assert parse_mqtt_url("mqtts://broker/line3").port == 8883


# ---------------------------------------------------------------------------------------------- mqtt-clash
class FakeBroker:
    """One broker as the publishers' fakes share it: retained messages per topic, each live message handed to the
    connected clients subscribed to its topic (retain flag off), a retained one handed at subscribe (flag on)."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.clients: list[BrokerPaho] = []

    def route(self, topic: str, data: bytes, retain: bool) -> None:
        if retain:
            self.retained[topic] = data
        for client in list(self.clients):
            if client.up and topic in client.topics:
                client.hand(topic, data, retain=False)

    def factory(self):
        return lambda target: BrokerPaho(target, self)


class BrokerPaho(FakePaho):
    """FakePaho with ``subscribe`` on a FakeBroker; ``kill`` ends the link without a goodbye (a killed station)."""

    def __init__(self, target, broker: FakeBroker) -> None:
        super().__init__(target)
        self.broker, self.topics, self.up = broker, set(), False
        broker.clients.append(self)

    def connect(self):
        self.up, self.topics = True, set()
        super().connect()

    def kill(self):
        self.up = False

    def disconnect(self):
        self.up = False
        super().disconnect()

    def unsubscribe(self, topic):
        self.topics.discard(topic)

    def subscribe(self, topic, qos):
        self.topics.add(topic)
        if topic in self.broker.retained:
            self.hand(topic, self.broker.retained[topic], retain=True)

    def publish(self, topic, data, qos, retain):
        info = super().publish(topic, data, qos, retain)
        self.broker.route(topic, data, retain)
        return info

    def hand(self, topic, data, retain):
        import types

        self.on_message(self, None, types.SimpleNamespace(topic=topic, payload=data, retain=retain))


def test_two_stations_on_one_prefix_each_name_the_other_and_a_killed_ones_record_names_nobody(caplog):
    """Station A (its reject PLC down: fault active) and a healthy station B on one broker, both with the default
    prefix: B's retained 'cleared' hid A's fault and B's summary replaced A's, with no word in either log. Each
    station's record on PREFIX/station now reaches the other live: each logs once which station shares its prefix
    and the fix. A record left retained by a killed station names nobody; a clean close marks its record stopped
    and the station still running restates its own."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    broker = FakeBroker()
    a = MqttPublisher("mqtt://127.0.0.1:1883/?client_id=A", client_factory=broker.factory()).start()
    a._client.connect()
    a.publish_fault(True, "reject sink down", "T0")
    b = MqttPublisher("mqtt://127.0.0.1:1883/?client_id=B", client_factory=broker.factory()).start()
    b._client.connect()
    b.publish_fault(False, "cleared", "T1")
    assert json.loads(broker.retained["fair-edge/faults"])["active"] is False   # still overwritten: only warned
    b._on_disconnect(b._client, None, None, "link lost")
    b._client.connect()                                   # B's reconnect restates its record: named once only
    shared = [r.getMessage() for r in caplog.records if "another station publishes" in r.getMessage()]
    assert len(shared) == 2, shared
    by_a, by_b = sorted(shared, key=lambda m: "client_id A," in m)
    for text, other in ((by_a, b), (by_b, a)):
        record = other._station
        assert f"client_id {other.target.client_id}," in text and f"pid {record['pid']}" in text
        assert f"host {record['host']}" in text and repr(record["command"]) in text
        assert "prefix 'fair-edge'" in text and "mqtt://HOST:PORT/PREFIX" in text and "mqtt://127.0.0.1:1883/" in text
    b.close(timeout_s=0)                                  # a clean stop: B's record stopped, A restates its own
    station = json.loads(broker.retained["fair-edge/station"])
    assert (station["client_id"], station["running"]) == ("A", True), station
    a._client.kill()                                      # A killed: its record stays retained ...
    c = MqttPublisher("mqtt://127.0.0.1:1883/?client_id=C", client_factory=broker.factory()).start()
    c._client.connect()                                   # ... and names nobody to C
    assert sum("another station publishes" in r.getMessage() for r in caplog.records) == 2
    assert json.loads(broker.retained["fair-edge/station"])["client_id"] == "C"
    c.close(timeout_s=0)
    assert json.loads(broker.retained["fair-edge/station"])["running"] is False


def test_stations_on_their_own_prefixes_name_no_one_and_a_client_without_subscribe_publishes_as_before(caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    broker = FakeBroker()
    for prefix in ("line3", "line4"):
        pub = MqttPublisher(f"mqtt://127.0.0.1:1883/{prefix}", client_factory=broker.factory()).start()
        pub._client.connect()
    assert sorted(broker.retained) == ["line3/station", "line4/station"]
    assert not [r for r in caplog.records if "another station" in r.getMessage()]
    plain = MqttPublisher("mqtt://127.0.0.1:1883/line5", client_factory=FakePaho).start()
    plain._client.connect()
    plain.publish("verdicts", {"seq": 0})
    assert [topic for _, topic in plain._client.published] == ["line5/verdicts"]


def test_links_lost_right_after_connecting_three_times_in_a_row_name_a_client_id_clash(caplog):
    """Two stations with one explicit client_id knocked each other off every 2 s: 'disconnected (Unspecified error)'
    8 times in 20 s each, nothing more. 3 links in a row lost within QUICK_DROP_S of their CONNACK (a fake clock)
    now log once that another client may use this client id, and the fix; a link that lasted starts the count
    again; a broker's 'session taken over' (MQTT 5 reason 0x8E) says so at once."""
    import logging

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from line_servers import FakeClock

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    clock = FakeClock()
    pub = MqttPublisher("mqtt://127.0.0.1:1883/lineA?client_id=fair-edge-1", client_factory=FakePaho,
                        clock=clock).start()

    def link(lasting_s: float) -> None:
        pub._client.connect()
        clock.advance(lasting_s)
        pub._on_disconnect(pub._client, None, None, "Unspecified error")

    def hints() -> list[str]:
        return [r.getMessage() for r in caplog.records if "another client may be using" in r.getMessage()]

    for lasting_s in (600.0, 1.5, 2.0, 60.0, 1.0, 2.0):   # two quick, one that lasted, two quick: no hint yet
        link(lasting_s)
    assert hints() == []
    for _ in range(4):
        link(2.0)
    (hint,) = hints()                                     # the third quick drop in a row, and once only
    assert "3 links in a row were lost within 5 s" in hint and "client_id 'fair-edge-1'" in hint
    assert "leave client_id out of mqtt.url for a per-process id" in hint
    assert pub.stats()["disconnects"] == 10
    pub.close(timeout_s=0)

    taken = MqttPublisher("mqtt://127.0.0.1:1883/lineB", client_factory=FakePaho, clock=clock).start()
    taken._client.connect()
    clock.advance(120.0)
    taken._on_disconnect(taken._client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E))
    assert len(hints()) == 2 and "took over the session (0x8E)" in hints()[1]
    assert taken.target.client_id in hints()[1] and "set client_id=ID in mqtt.url" in hints()[1]
    taken.close(timeout_s=0)


@needs_broker
def test_two_stations_on_one_prefix_name_each_other_through_a_real_broker(tmp_path, caplog):
    """The same through mosquitto (a live message arrives with the retain flag off, a retained one at subscribe
    with it on): both stations warn once; B's clean stop leaves A's record retained, running."""
    import logging

    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")
    broker = MosquittoBroker(tmp_path).start()
    collector = None
    try:
        url = f"mqtt://127.0.0.1:{broker.port}/line3?client_id="
        with MqttPublisher(url + "A") as a:
            a.publish_fault(True, "reject sink down", "T0")
            assert a.flush(10.0), a.stats()
            with MqttPublisher(url + "B") as b:
                b.publish_fault(False, "cleared", "T1")
                assert wait_for(lambda: sum("another station publishes" in r.getMessage()
                                            for r in caplog.records) >= 2, 10.0), caplog.text
            collector = MqttCollector(broker.port, "line3/station")
            assert wait_for(lambda: any(m["client_id"] == "A" and m["running"]
                                        for m in collector.messages.get("line3/station", [])), 10.0)
    finally:
        if collector is not None:
            collector.close()
        broker.close()
    shared = sorted(r.getMessage() for r in caplog.records if "another station publishes" in r.getMessage())
    assert len(shared) == 2 and "client_id A," in shared[0] and "client_id B," in shared[1], shared


def test_a_station_record_over_the_brokers_packet_size_is_not_published(caplog, monkeypatch):
    """A long command line made the PREFIX/station record larger than a broker's Maximum Packet Size: the broker
    closed the link on it at every connect (connects 11, disconnects 11, nothing delivered). It is now kept short,
    and one still too large is not published (a warning says so) while the verdicts go on."""
    import logging
    import sys

    from fair_edge.line.mqtt_station import shortened

    assert shortened("x" * 1000) == "x" * 118 + "..." + "x" * 118 and shortened("short") == "short"
    monkeypatch.setattr(sys, "argv", ["fair-edge", "run", "--station", "/a/" + "very-long-folder/" * 200])
    caplog.set_level(logging.WARNING, logger="fair_edge.line.mqtt")

    class Paho(FakePaho):
        def subscribe(self, topic, qos):
            pass

    pub = MqttPublisher("mqtt://127.0.0.1:1883/a", client_factory=Paho).start()
    assert len(pub._station["command"]) <= 240
    pub._max_packet = 200
    assert pub._publish_station(pub._station, retain=True) is None
    assert not [topic for _, topic in pub._client.published if topic.endswith("/station")]
    assert any("over the broker's Maximum Packet Size of 200 bytes: not published" in r.getMessage()
               for r in caplog.records)
    pub.close(timeout_s=0)

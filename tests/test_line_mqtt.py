"""MQTT publishing against a real mosquitto on 127.0.0.1 that goes away and comes back mid-run."""

from __future__ import annotations

import time

import pytest

from fair_edge.errors import SinkError
from fair_edge.line.mqtt import MqttPublisher, parse_mqtt_url
from line_servers import MOSQUITTO, MosquittoBroker, MqttCollector

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
                    broker.stop()            # the broker goes away mid-run ...
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

"""``match: sequence`` when a camera silently takes no frame of a trigger (its seq does not count the gap, no
``resumed`` mark): the slip is told by capture time and the camera is brought back in step; and the run summary's
MQTT counters taken after the publisher's close. The assembler runs in-process on a fake clock."""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest

from fair_edge.records import Frame, Verdict
from fair_edge.station.parts import PartAssembler
from fair_edge.station.views import GroupSettings

PERIOD_S = 0.1   # one trigger every 100 ms


def _line(triggers: int, missed: dict[str, set[int]], *, order=("left", "right"), jitter_s=None,
          untimed=frozenset(), timeout_s: float = 0.5):
    """Two cameras fired by one trigger every ``PERIOD_S`` (fake clock); ``missed``: camera -> the triggers it takes
    no frame of (its seq counts only the frames it takes). jitter_s: (camera, trigger) -> capture time offset, s.
    Every view is OK. Returns (assembler, part rows by part id, {(camera, seq): trigger})."""
    now = [0.0]
    rows: dict[int, dict] = {}
    asm = PartAssembler(["left", "right"], GroupSettings(match="sequence", window_ms=30), timeout_s,
                        on_part=lambda v, row: rows.__setitem__(row["part"], row), clock=lambda: now[0])
    if untimed:
        asm.mark_untimed(set(untimed))
    seqs, trigger_of = {"left": 0, "right": 0}, {}
    for trigger in range(triggers):
        now[0] = trigger * PERIOD_S
        asm.sweep()
        for camera in order:
            if trigger in missed.get(camera, ()):
                continue
            t = now[0] + (jitter_s or {}).get((camera, trigger), 0.0)
            frame = Frame(seqs[camera], t, np.zeros(1), camera=camera)
            trigger_of[(camera, frame.seq)] = trigger
            seqs[camera] += 1
            asm.on_capture(camera, frame)
            asm.on_verdict(frame, Verdict(frame.seq, t, 0.1, 1.0, False, now[0], camera=camera))
    now[0] = triggers * PERIOD_S + 10.0
    asm.sweep()
    return asm, rows, trigger_of


def _triggers(row: dict, trigger_of: dict) -> set[int]:
    """The triggers a part row's views were taken at."""
    return {trigger_of[(camera, view["seq"])] for camera, view in row["views"].items() if "seq" in view}


@pytest.mark.parametrize("order", [("left", "right"), ("right", "left")])
def test_a_camera_that_misses_a_trigger_is_brought_back_in_step_by_capture_time(order, caplog):
    """right takes no frame of trigger 30: its frame of trigger 31 is its seq 30. The part of count 30 opened 100 ms
    before it (more than window_ms and half the time between parts): right is out of step (logged once, naming the
    camera and both times; counted), its views are matched by capture time and its count is learned again. Every
    part holds the views of one trigger; only trigger 30's part misses right (fail-safe). Before, every later part
    paired left's trigger N with right's trigger N+1 (a defect seen by right blamed on the wrong part), silently."""
    caplog.set_level(logging.WARNING, logger="fair_edge.station.parts")
    asm, rows, trigger_of = _line(60, {"right": {30}}, order=order)
    assert len(rows) == 60 and all(len(_triggers(row, trigger_of)) == 1 for row in rows.values())
    assert [sorted(_triggers(row, trigger_of)) for row in rows.values() if row["missing"]] == [[30]]
    assert [row["missing"] for row in rows.values() if row["missing"]] == [["right"]]
    assert asm.stats["resyncs"] == 1 and asm.stats["not_inspected"] == 1
    (out,) = [r.getMessage() for r in caplog.records if "out of step" in r.getMessage()]
    assert out.startswith("camera right: out of step: its frame seq 30, captured at 3.100 s, counts as part 30, "
                          "which opened at 3.000 s")


def test_a_slip_longer_than_the_part_timeout_pairs_again_instead_of_splitting_every_part_forever():
    """right misses 6 triggers in a row (600 ms > the 500 ms part timeout): the part its count names has closed.
    Before, no view paired again: every part split into two one-view parts, rejected fail-safe for the rest of the
    run (200 triggers: 334 parts, 275 not inspected). Now only the 7 missed triggers' parts and the one after miss
    right: right's frame of trigger 66 names closed part 60 by its count, which a held frame stamped when read would
    too (test_partmatch_late_views.py), so it is a late view of part 60 (fail-safe: part 66 is rejected, never passed
    on another part's view); from its next frame right is matched by capture time and in step again."""
    asm, rows, trigger_of = _line(200, {"right": {30, 60, 61, 62, 63, 64, 65}})
    assert len(rows) == 200 and all(len(_triggers(row, trigger_of)) == 1 for row in rows.values())
    missing = sorted(t for row in rows.values() if row["missing"] for t in _triggers(row, trigger_of))
    assert missing == [30, 60, 61, 62, 63, 64, 65, 66]
    assert asm.stats == {"parts": 200, "ng": 8, "ok": 192, "not_inspected": 8, "late_views": 1, "resyncs": 2,
                         "duplicate_views": 0}


def test_capture_time_jitter_of_cameras_in_step_pairs_by_seq_as_before():
    """Cameras in step whose capture times differ by up to 25 ms (below window_ms), and now and then by 45 ms
    (above window_ms, below half the time between parts): every part pairs one trigger, none out of step."""
    rng = np.random.default_rng(7)
    jitter = {("right", t): float(rng.uniform(-0.025, 0.025)) for t in range(100)}
    jitter.update({("right", t): 0.045 for t in (20, 50, 80)})
    asm, rows, trigger_of = _line(100, {}, jitter_s=jitter)
    assert len(rows) == 100 and all(not row["missing"] and len(_triggers(row, trigger_of)) == 1
                                    for row in rows.values())
    assert asm.stats["resyncs"] == 0


def test_a_camera_without_a_timeline_is_never_taken_out_of_step_by_its_capture_time():
    """An unpaced replay's frames are stamped when read: its capture time says nothing of the trigger. Its views are
    paired by seq whatever their time (here 60 ms after the others' every time)."""
    jitter = {("right", t): 0.06 for t in range(40)}
    asm, rows, trigger_of = _line(40, {}, jitter_s=jitter, untimed={"right"})
    assert len(rows) == 40 and all(not row["missing"] for row in rows.values())
    assert asm.stats["resyncs"] == 0


# ---------------------------------------------------------------------------------------------- summary.json's mqtt
class _AckingPaho:
    """paho's client as MqttPublisher drives it, connected at once; a message is acknowledged (PUBACK) only when
    the publisher waits for its outbox (``flush``'s sleep: paho's network thread runs meanwhile)."""

    def __init__(self, target) -> None:
        self.unacked: list[int] = []
        self._mid = 0

    def connect_async(self, host, port, keepalive, **options):
        pass

    def loop_start(self):
        self.on_connect(self, None, None, 0)

    def loop_stop(self):
        pass

    def disconnect(self):
        self.on_disconnect(self, None, None, 0)

    def publish(self, topic, data, qos, retain):
        self._mid += 1
        self.unacked.append(self._mid)
        return types.SimpleNamespace(mid=self._mid)

    def deliver(self, seconds):
        for mid in self.unacked:
            self.on_publish(self, None, mid)
        self.unacked = []


def test_summary_json_takes_the_mqtt_counters_after_the_publisher_flushed_at_close(tmp_path, monkeypatch):
    """publish_summary took ``summary.mqtt`` right after the last fault state was queued: summary.json said
    published N, acked N-1, outbox 1 for a message close() then delivered. Now the counters are taken again when the
    publisher has closed (its outbox flushed): every message, the summary's own included, published and acked."""
    import fair_edge.line.mqtt as mqtt
    from fair_edge.line.mqtt import MqttPublisher
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.station.inspector import RunSummary
    from fair_edge.station.line_side import LineSide, publish_summary

    summary = RunSummary()
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, save_ng_images=False), run_id="R") as recorder:
        with MqttPublisher("mqtt://127.0.0.1:1883/line", client_factory=_AckingPaho) as pub:
            monkeypatch.setattr(mqtt, "time", types.SimpleNamespace(monotonic=mqtt.time.monotonic,
                                                                    sleep=pub._client.deliver))
            line = LineSide(recorder, None, None, pub, [])
            summary.fault = "camera top: camera gone"
            publish_summary(line, summary)
            sent = dict(summary.mqtt)
    assert (sent["published"], sent["acked"], sent["outbox"]) == (1, 0, 1)   # the MQTT summary's: as it was queued
    assert (summary.mqtt["published"], summary.mqtt["acked"], summary.mqtt["outbox"]) == (2, 2, 0)

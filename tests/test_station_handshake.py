"""The whole station with the PLC handshake on: bundle -> ONNX Runtime -> one frame per PLC trigger ->
results by part id to a real Modbus TCP / OPC UA server whose PLC program triggers, reads and
acknowledges (fair_edge/line/handshake/sim_handshake_plc.py); and a real `fair-edge run` process killed with
SIGKILL mid-part (the PLC sees the heartbeat stop) or stopped with SIGTERM (it clears Ready)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from fair_edge.console.settings import ConsoleSettings
from fair_edge.line.handshake.settings import HandshakeSettings, RESULT_NG, RESULT_OK
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.station.run import run_station
from fair_edge.station.config import CameraSettings, StationConfig

pytest.importorskip("pymodbus")
from line_servers import wait_for  # noqa: E402
from fair_edge.line.handshake.sim_handshake_plc import ModbusHandshakePlc, OpcUaHandshakePlc  # noqa: E402

PARTS = 24


@pytest.mark.parametrize("make_plc", [ModbusHandshakePlc, OpcUaHandshakePlc], ids=["modbus", "opcua"])
def test_station_answers_every_triggered_part_by_its_id(make_plc, station_bundles, conveyor_dir, tmp_path):
    plc = make_plc().start(rate_hz=5, parts=PARTS)
    stop = threading.Event()
    cfg = StationConfig(
        camera=CameraSettings(source=str(conveyor_dir), loop=True, queue_size=4), bundle=station_bundles[0].root,
        backend="onnxruntime", output=tmp_path, record=RecordSettings(dir=tmp_path, save_ng_images=False),
        reject=RejectSettings(handshake=HandshakeSettings(url=plc.url)),
        console=ConsoleSettings(port=0))   # any free port: the default 8765 may be another run's or station's
    watcher = threading.Thread(target=lambda: wait_for(lambda: len(plc.program.results) >= PARTS, 90) and stop.set())
    watcher.start()
    try:
        summary = run_station(cfg, stop, duration_s=120)
        watcher.join()
        check = plc.program.check()
        wait_for(lambda: plc.program.ready_changes[-1][1] == 0, 2)   # the PLC's scan sees Ready drop
    finally:
        plc.close()
    assert check["triggered"] == check["answered"] == check["unique"] == PARTS and check["in_order"]
    assert check["unknown"] == check["duplicates"] == 0 and summary.fault == ""
    rows = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(PARTS))            # one frame per trigger, none extra
    for row, (_, part, result, score) in zip(rows, plc.program.results):
        assert result == (RESULT_NG if row["ng"] else RESULT_OK)
        assert score == pytest.approx(row["score"], abs=0.0006 if make_plc is ModbusHandshakePlc else 1e-6)
    assert 0 < sum(r["ng"] for r in rows) < PARTS                   # both answers occur
    assert summary.rejects["handshake"]["acked"] == PARTS and plc.program.ready_changes[-1][1] == 0


def station_process(bundle, conveyor, tmp_path, plc) -> subprocess.Popen:
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"reject": {"handshake": {"url": plc.url, "heartbeat_ms": 500}}}))
    cmd = [sys.executable, "-m", "fair_edge.cli", "run", "--bundle", str(bundle.root), "--source", str(conveyor),
           "--loop", "--backend", "onnxruntime", "--out", str(tmp_path / "out"), "--console", "off",
           "--station", str(station)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_killed_station_stops_the_heartbeat_and_cannot_clear_ready(station_bundles, conveyor_dir, tmp_path):
    plc = ModbusHandshakePlc().start(rate_hz=4)
    proc = station_process(station_bundles[0], conveyor_dir, tmp_path, plc)
    try:
        assert wait_for(lambda: len(plc.program.results) >= 3 and plc.program.outstanding(), 90, 0.002), \
            proc.stdout.read() if proc.poll() is not None else "no results"
        proc.send_signal(signal.SIGKILL)            # mid-part: a trigger taken, its result not written
        t_kill = time.monotonic()
        proc.wait(timeout=10)
        assert wait_for(lambda: any(t >= t_kill for t in plc.program.stale_events), 5)
        time.sleep(0.3)
        beats = list(plc.program.heartbeats)
        stale_at = min(t for t in plc.program.stale_events if t >= t_kill)
        ready, outstanding = plc.memory.get("ready"), plc.program.outstanding()
    finally:
        if proc.poll() is None:
            proc.kill()
        plc.close()
    # order, on the PLC's own clock (how soon the watchdog sees it is heartbeat_ms plus a scan: not asserted)
    assert len([b for b in beats if b < t_kill]) >= 3         # it was beating
    assert stale_at >= beats[-1] + 0.5   # stale only heartbeat_ms after its last beat; none since (0.3 s watched)
    assert ready == 1                                        # a dead process cannot clear Ready: hence the rule
    assert outstanding                                       # the part in flight never got a (late) result


def test_stopped_station_answers_open_parts_and_clears_ready(station_bundles, conveyor_dir, tmp_path):
    plc = ModbusHandshakePlc().start(rate_hz=4)
    proc = station_process(station_bundles[0], conveyor_dir, tmp_path, plc)
    try:
        assert wait_for(lambda: len(plc.program.results) >= 3, 90), \
            proc.stdout.read() if proc.poll() is not None else "no results"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        wait_for(lambda: plc.program.ready_changes[-1][1] == 0, 2)
        check, ready = plc.program.check(), plc.memory.get("ready")
    finally:
        if proc.poll() is None:
            proc.kill()
        plc.close()
    assert proc.returncode == 0, output
    assert ready == 0 and plc.program.ready_changes[-1][1] == 0
    assert check["missing"] == 0 and check["in_order"] and check["duplicates"] == 0   # every trigger answered
    assert "handshake: triggers / results / acked" in output

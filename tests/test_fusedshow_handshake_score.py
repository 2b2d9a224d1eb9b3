"""The Modbus handshake's score register for a fused bundle's scores, which count its members' normal spreads and
are mostly below 0 (``runtime.fusion``). The register held round(score x score_scale) saturated to 0..65535, so every
such score read 0. ``reject.handshake.score_offset`` (score units, default 0) is added first: the register holds
round((score + score_offset) x score_scale) and the PLC reads score = register / score_scale - score_offset. A station
starting a fused bundle on a Modbus handshake without an offset says so, naming the setting, and a score written as
0 is logged once per link."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from fair_edge.console.settings import ConsoleSettings
from fair_edge.errors import ConfigError
from fair_edge.line.handshake.modbus import open_modbus_link
from fair_edge.line.handshake.settings import (RESULT, RESULT_PART_ID, SCORE, HandshakeSettings,
                                               fused_score_warning)
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.station.config import CameraSettings, StationConfig
from fair_edge.station.run import run_station

pytest.importorskip("pymodbus")
from line_servers import wait_for  # noqa: E402
from fair_edge.line.handshake.sim_handshake_plc import ModbusHandshakePlc  # noqa: E402

PARTS = 12   # the conveyor's 12 images (blobs first): all 6 held-out normals the fused bundle was calibrated on, whose
             # fused scores centre on 0, so some are below 0 whatever numerics the CPU's training took
OFFSET = 10.0


def test_score_offset_is_a_setting_checked_on_load():
    assert HandshakeSettings().score_offset == 0.0
    settings = HandshakeSettings.from_dict({"url": "modbus://127.0.0.1:502", "score_offset": OFFSET})
    assert settings.score_offset == OFFSET
    for bad in ("ten", float("nan"), 1e9, True):
        with pytest.raises(ConfigError, match="reject.handshake.score_offset"):
            HandshakeSettings.from_dict({"url": "modbus://127.0.0.1:502", "score_offset": bad})


def score_registers(offset: float, scores: list[float], caplog) -> list[int]:
    """The score register a real Modbus server holds after the link writes each of ``scores`` as a result."""
    plc = ModbusHandshakePlc().start(rate_hz=0)
    link = open_modbus_link_for(plc, offset)
    words = []
    try:
        link.open()
        for part, score in enumerate(scores):
            link.write([(RESULT_PART_ID, part), (RESULT, 1), (SCORE, score)])
            words.append(plc.memory.words[link.signals.score])
    finally:
        link.close()
        plc.close()
    return words


def open_modbus_link_for(plc, offset: float):
    from fair_edge.line.sinks.urls import parse_sink_url

    return open_modbus_link(parse_sink_url(plc.url), HandshakeSettings(url=plc.url, score_offset=offset))


def test_a_fused_bundles_scores_below_zero_read_on_the_register_with_an_offset(caplog):
    caplog.set_level(logging.WARNING)
    scores = [-1.6, -0.4, -0.2, 0.0, 0.4567, 4.724]
    assert score_registers(OFFSET, scores, caplog) == [8400, 9600, 9800, 10000, 10457, 14724]
    assert [w / 1000 - OFFSET for w in [8400, 9600]] == pytest.approx([-1.6, -0.4])
    assert "score_offset" not in caplog.text


def test_without_an_offset_a_score_written_as_zero_is_logged_once_naming_the_setting(caplog):
    caplog.set_level(logging.WARNING)
    assert score_registers(0.0, [0.4567, -1.6, -0.2], caplog) == [457, 0, 0]   # a single bundle's: as before
    (warning,) = [r for r in caplog.records if "score_offset" in r.getMessage()]
    assert "score -1.6 written to the score register (11) as 0" in warning.getMessage()
    assert "set reject.handshake.score_offset (e.g. 10" in warning.getMessage()


def test_the_start_warning_is_for_a_fused_bundle_on_a_modbus_handshake_without_an_offset():
    modbus = HandshakeSettings(url="modbus://127.0.0.1:502")
    note = fused_score_warning(modbus, fused=True)
    assert "reject.handshake.score_offset: 10" in note and "register / 1000 - 10" in note
    assert fused_score_warning(modbus, fused=False) == ""                     # a single bundle's scores are >= 0
    assert fused_score_warning(HandshakeSettings(url="modbus://127.0.0.1:502", score_offset=OFFSET), True) == ""
    assert fused_score_warning(HandshakeSettings(url="opcua://127.0.0.1:4840/plc"), True) == ""   # a Float node
    assert fused_score_warning(HandshakeSettings(), True) == ""               # no handshake


@pytest.mark.parametrize("offset", [OFFSET, 0.0])
def test_a_station_on_a_fused_bundle_answers_its_scores_through_the_offset(offset, fused_station_bundle,
                                                                           conveyor_dir, tmp_path, caplog):
    """The whole station (fused bundle, ONNX Runtime, one frame per trigger) on a real Modbus server: with
    score_offset 10 the PLC reads every part's score, below 0 too, as register / 1000 - 10; with none, the station
    warned at start and every score below 0 read 0."""
    caplog.set_level(logging.WARNING)
    plc = ModbusHandshakePlc().start(rate_hz=5, parts=PARTS)
    stop = threading.Event()
    cfg = StationConfig(
        camera=CameraSettings(source=str(conveyor_dir), loop=True, queue_size=4), bundle=fused_station_bundle.root,
        backend="onnxruntime", output=tmp_path, record=RecordSettings(dir=tmp_path, save_ng_images=False),
        reject=RejectSettings(handshake=HandshakeSettings(url=plc.url, score_offset=offset)),
        console=ConsoleSettings(enabled=False))
    watcher = threading.Thread(target=lambda: wait_for(lambda: len(plc.program.results) >= PARTS, 90) and stop.set())
    watcher.start()
    try:
        run_station(cfg, stop, duration_s=120)
        watcher.join()
    finally:
        plc.close()
    rows = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()][:PARTS]
    read = [score - offset for _, _, _, score in plc.program.results]   # the sim PLC: register / score_scale
    assert len(read) == PARTS and any(r["score"] < 0 for r in rows)
    held = [min(max(r["score"] + offset, 0.0), 65.535) - offset for r in rows]   # what 0..65535 holds at x 1000
    assert read == pytest.approx(held, abs=0.0006)
    started = [r.getMessage() for r in caplog.records if r.name == "fair_edge.station.run"
               and "score_offset" in r.getMessage()]
    if offset:   # every score below 0 read as it is (these tiny models' defects reach 160 spreads: saturated)
        assert all(h == pytest.approx(r["score"], abs=0.0006) for h, r in zip(held, rows) if r["score"] < 0)
        assert not started
    else:        # every one read 0, and the station said why at start
        assert all(h == 0.0 for h, r in zip(held, rows) if r["score"] < 0)
        assert len(started) == 1 and "the bundle is fused" in started[0]

"""The station file's camera options that go to the source itself: ``flip`` (a ``csi:`` camera's nvvidconv
flip-method) and ``timeout_s`` (an ``aravis:`` / ``genicam:`` camera's wait for a frame: a triggered camera's wait
for a part), in ``camera:`` and in each ``cameras:`` item, checked on load and carried to the source."""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import replace

import numpy as np

import pytest

from fair_edge.cameras import GenICamSource, GStreamerSource
from fair_edge.cameras.aravis import AravisSource
from fair_edge.cameras.base import READ_AFTER_S, READ_SPAN_S, CaptureSettings
from fair_edge.cameras.capture import FIRST_FRAME_READS, FIRST_FRAME_WAIT_S, CaptureThread, SourceBase
from fair_edge.cameras.registry import READ_WAIT_MAX_S, READ_WAIT_MIN_S, SOURCES
from fair_edge.errors import ConfigError
from fair_edge.station.camera import open_capture
from fair_edge.station.config import CameraSettings, StationConfig, view_config


def test_a_csi_cameras_flip_reaches_its_pipeline_turned():
    cfg = StationConfig.from_dict({"camera": {"source": "csi:0", "flip": 3}})
    assert cfg.camera.flip == 3
    capture = open_capture(cfg)   # not started: the source is built, nothing opened
    assert isinstance(capture.source, GStreamerSource)
    assert "flip-method=3 ! video/x-raw, width=1080, height=1920, format=BGRx" in capture.source.target


def test_a_listed_csi_cameras_flip_reaches_its_view():
    cfg = StationConfig.from_dict({"cameras": [{"name": "top", "source": "csi:1", "flip": 1},
                                               {"name": "side", "source": "csi:0"}]})
    assert [v.flip for v in cfg.cameras] == [1, 0]
    assert view_config(cfg, cfg.cameras[0]).camera.flip == 1


@pytest.mark.parametrize("flip", [8, -1, "1", 1.0, True, None])
def test_a_flip_out_of_range_is_refused_naming_the_field_and_the_methods(flip):
    with pytest.raises(ConfigError, match=r"camera\.flip: expected an nvvidconv flip-method, an integer 0-7 "
                                          r"\(0 = none, 1 = rotate 90 counter-clockwise.*found"):
        StationConfig.from_dict({"camera": {"source": "csi:0", "flip": flip}})


@pytest.mark.parametrize("source", ["0", "rtsp://user:secret@10.0.0.5/stream", "aravis:cam1"])
def test_a_flip_on_a_source_that_is_not_csi_is_refused_with_the_fix(source):
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.flip: for csi: cameras only") as info:
        StationConfig.from_dict({"cameras": [{"name": "top", "source": source, "flip": 2}]})
    assert "secret" not in str(info.value) and "remove flip: from cameras[0]" in str(info.value)


def test_a_flag_source_over_a_files_flip_is_refused():
    """``fair-edge run --source DIR`` over a station file whose csi: camera sets flip: the flip would go nowhere."""
    with pytest.raises(ConfigError, match=r"camera\.flip: for csi: cameras only; found the source '/tmp'"):
        replace(CameraSettings(source="csi:0", flip=1), source="/tmp")


def test_flip_zero_is_the_default_and_any_source_takes_it():
    assert CameraSettings().flip == 0
    assert StationConfig.from_dict({"camera": {"source": "0", "flip": 0}}).camera.source_options() == {}


def test_an_aravis_cameras_timeout_reaches_its_source():
    cfg = StationConfig.from_dict({"camera": {"source": "aravis:cam1", "timeout_s": 0.5}})
    capture = open_capture(cfg)   # not started: the source is built, nothing opened
    assert isinstance(capture.source, AravisSource) and capture.source.timeout_s == 0.5


def test_a_listed_genicam_cameras_timeout_reaches_its_view(monkeypatch, tmp_path):
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    (tmp_path / "producer.cti").write_bytes(b"")
    cfg = StationConfig.from_dict({"cameras": [{"name": "top", "source": "genicam:123", "timeout_s": 0.8},
                                               {"name": "side", "source": "aravis:cam2"}]})
    assert [v.timeout_s for v in cfg.cameras] == [0.8, None]
    source = open_capture(view_config(cfg, cfg.cameras[0])).source
    assert isinstance(source, GenICamSource) and source.timeout_s == 0.8


def test_no_timeout_leaves_the_sources_own_wait():
    cfg = StationConfig.from_dict({"camera": {"source": "aravis:cam1"}})
    assert cfg.camera.timeout_s is None and cfg.camera.source_options() == {}
    assert open_capture(cfg).source.timeout_s == AravisSource("cam1").timeout_s


@pytest.mark.parametrize("timeout_s", [0, -1, CaptureSettings().stop_timeout_s + 0.5, "1", True, float("nan"),
                                       float("inf")])
def test_a_timeout_out_of_range_is_refused_naming_the_bound_and_the_defaults(timeout_s):
    with pytest.raises(ConfigError, match=r"camera\.timeout_s: expected how long a read waits for a frame, seconds, "
                                          r"from 0\.3 to 1 on aravis:, or null for the source's own "
                                          r"\(aravis: 1 s, genicam: 2 s\)"):
        StationConfig.from_dict({"camera": {"source": "aravis:cam1", "timeout_s": timeout_s}})


@pytest.mark.parametrize("timeout_s", [0.02, 0.001, 1e-7])
def test_a_timeout_shorter_than_the_floor_is_refused_saying_what_it_costs(timeout_s):
    """A 10 fps aravis: camera with timeout_s 0.02 missed every read and reconnected 5 times in 3 s; 1e-7 popped with
    a 0 us wait; 0.001 refused to open, blaming the network. The floor: open()'s reads span its first-frame wait."""
    with pytest.raises(ConfigError) as info:
        StationConfig.from_dict({"camera": {"source": "aravis:cam1", "timeout_s": timeout_s}})
    text = str(info.value)
    assert f"found {timeout_s!r}" in text and "from 0.3 to 1" in text
    assert "missed frame" in text and "on genicam: one timeout is a reconnect" in text
    assert READ_WAIT_MIN_S == FIRST_FRAME_WAIT_S / FIRST_FRAME_READS


def test_the_longest_timeout_leaves_the_stop_wait_room_for_the_link_check():
    """A triggered aravis: read is its wait plus a register read; at timeout_s 2 (the stop wait, accepted before) a
    stop during the wait left the reader running. The longest wait is half of the stop wait's share for the read."""
    stop_wait = CaptureSettings().stop_timeout_s
    with pytest.raises(ConfigError, match=r"outlast the station's stop wait"):
        StationConfig.from_dict({"camera": {"source": "aravis:cam1", "timeout_s": READ_SPAN_S}})
    cfg = StationConfig.from_dict({"camera": {"source": "aravis:cam1", "timeout_s": READ_WAIT_MAX_S["aravis"]}})
    assert cfg.camera.timeout_s == READ_WAIT_MAX_S["aravis"] == (stop_wait - READ_AFTER_S) / 2
    assert StationConfig.from_dict({"camera": {"source": "aravis:cam1", "timeout_s": READ_WAIT_MIN_S}}).camera.timeout_s


class _FetchAtTheCeiling(SourceBase):
    """A genicam: camera whose second read is a fetch lasting its kind's longest wait (a timeout, or a frame that
    came at its end), then the source's release (GenTL stop / destroy) taking half of ``READ_AFTER_S``."""

    name = "genicam:fake"

    def __init__(self) -> None:
        super().__init__()
        self.fetching = threading.Event()
        self.reads = 0

    def _connect(self):
        return np.zeros((4, 4), np.uint8), self.name

    def _grab(self):
        self.reads += 1
        if self.reads >= 2:
            self.fetching.set()
            time.sleep(READ_WAIT_MAX_S["genicam"])
        return np.zeros((4, 4), np.uint8), self.name

    def _release(self) -> None:
        time.sleep(READ_AFTER_S / 2)


def test_a_genicam_fetch_at_its_ceiling_begun_before_stop_ends_within_the_stop_wait(caplog):
    """The genicam: ceiling was the whole stop wait (2 s): a fetch begun just before stop() then the reader's release
    outlasted it ("reader did not finish", the source never closed by the station). The stop wait now keeps
    READ_AFTER_S past the longest read, and genicam's own default wait (2 s) is still admitted."""
    default = inspect.signature(SOURCES["genicam"].options_of).parameters["timeout_s"].default
    assert default <= READ_WAIT_MAX_S["genicam"] <= CaptureSettings().stop_timeout_s - READ_AFTER_S
    source = _FetchAtTheCeiling()
    capture = CaptureThread(source, CaptureSettings()).start()
    assert source.fetching.wait(5)
    assert capture.stop() is True, [r.getMessage() for r in caplog.records]
    assert not capture.alive and "did not finish" not in caplog.text


@pytest.mark.parametrize("kind", sorted(READ_WAIT_MAX_S))
def test_each_kinds_own_default_wait_can_be_written_and_its_ceiling_names_the_slow_camera_fix(kind):
    """The report: the 1 s ceiling (ba2262f) refused genicam's own default, 2 s, written out. The ceiling is per kind
    (genicam: a fetch is all of its read: the stop wait less READ_AFTER_S); each source's default, read from its signature, loads,
    and a wait past the kind's ceiling is refused saying what a free-running camera slower than it needs."""
    default = inspect.signature(SOURCES[kind].options_of).parameters["timeout_s"].default
    cfg = StationConfig.from_dict({"camera": {"source": f"{kind}:cam1", "timeout_s": default}})
    assert cfg.camera.timeout_s == default <= READ_WAIT_MAX_S[kind] <= CaptureSettings().stop_timeout_s
    too_long = READ_WAIT_MAX_S[kind] + 0.5
    with pytest.raises(ConfigError) as info:
        StationConfig.from_dict({"camera": {"source": f"{kind}:cam1", "timeout_s": too_long}})
    text = str(info.value)
    assert f"from 0.3 to {READ_WAIT_MAX_S[kind]:g} on {kind}:" in text and f"found {too_long!r}" in text
    assert f"slower than one frame per {READ_WAIT_MAX_S[kind]:g} s: " in text
    assert f"{1 / READ_WAIT_MAX_S[kind]:g} fps or more" in text or f"fps: {1 / READ_WAIT_MAX_S[kind]:g}" in text


@pytest.mark.parametrize("source", ["0", "csi:0", "rtsp://user:secret@10.0.0.5/stream"])
def test_a_timeout_on_a_source_that_is_no_genicam_camera_is_refused(source):
    with pytest.raises(ConfigError, match=r"camera\.timeout_s: for aravis: and genicam: cameras only") as info:
        StationConfig.from_dict({"camera": {"source": source, "timeout_s": 0.5}})
    assert "secret" not in str(info.value)

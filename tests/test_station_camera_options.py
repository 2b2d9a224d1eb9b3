"""The station file's camera options that go to the source itself: ``flip`` (a ``csi:`` camera's nvvidconv
flip-method), in ``camera:`` and in each ``cameras:`` item, checked on load and carried to the source."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fair_edge.cameras import GStreamerSource
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
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.flip: only a csi: camera takes flip") as info:
        StationConfig.from_dict({"cameras": [{"name": "top", "source": source, "flip": 2}]})
    assert "secret" not in str(info.value) and "remove flip: from cameras[0]" in str(info.value)


def test_a_flag_source_over_a_files_flip_is_refused():
    """``fair-edge run --source DIR`` over a station file whose csi: camera sets flip: the flip would go nowhere."""
    with pytest.raises(ConfigError, match=r"camera\.flip: only a csi: camera takes flip; found the source '/tmp'"):
        replace(CameraSettings(source="csi:0", flip=1), source="/tmp")


def test_flip_zero_is_the_default_and_any_source_takes_it():
    assert CameraSettings().flip == 0
    assert StationConfig.from_dict({"camera": {"source": "0", "flip": 0}}).camera.source_options() == {}

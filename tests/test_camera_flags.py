"""The camera flags of `fair-edge run` and `fair-edge collect` over a station file's camera options: --camera /
--source drop the file's options for another kind of source (a replay of the production file needs no edit), and
--flip sets a csi: camera's flip-method, checked as the station file's flip:."""

from __future__ import annotations

import logging
import signal

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import fair_edge.cameras as cameras_package
from fair_edge.cli import app
from fair_edge.cli.camera_flags import camera_over_file, flip_options
from fair_edge.errors import ConfigError
from fair_edge.station.config import CameraSettings


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)], env={"COLUMNS": "400"})


def one_line(text: str) -> str:
    return " ".join(text.split())


def write_frames(folder, count: int = 2):
    folder.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
    return folder


# ----------------------------------------------------------------------------- --camera / --source over the file
@pytest.mark.parametrize("file_camera, dropped", [(CameraSettings("aravis:cam1", timeout_s=0.5), "timeout_s: 0.5"),
                                                  (CameraSettings("csi:0", flip=2), "flip: 2")])
def test_a_replay_over_the_file_drops_the_options_for_another_kind_saying_so(tmp_path, caplog, file_camera, dropped):
    """`run --station line.yaml --source frames/` was refused: 'camera.timeout_s: for aravis: and genicam: cameras
    only ... give the source as aravis:TARGET'."""
    spec = f"folder:{tmp_path}"
    with caplog.at_level(logging.WARNING, logger="fair_edge.cli.camera_flags"):
        cam = camera_over_file(file_camera, spec, None)
    assert (cam.source, cam.flip, cam.timeout_s) == (spec, 0, None) and cam.source_options() == {}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"left out the file's {dropped}" in warnings[0] and "cameras" in warnings[0]


def test_a_csi_camera_flag_keeps_the_files_flip_and_another_camera_drops_it(caplog):
    file_camera = CameraSettings("csi:0", flip=2)
    with caplog.at_level(logging.WARNING, logger="fair_edge.cli.camera_flags"):
        kept = camera_over_file(file_camera, "csi:1", None)
    assert (kept.source, kept.flip) == ("csi:1", 2) and not caplog.records
    assert camera_over_file(file_camera, "0", None).flip == 0
    assert camera_over_file(CameraSettings("aravis:a", timeout_s=0.5), "genicam:9", None).timeout_s == 0.5


def test_no_camera_flag_leaves_the_files_camera_as_it_is():
    file_camera = CameraSettings("aravis:cam1", timeout_s=0.5)
    assert camera_over_file(file_camera, None, None) == file_camera


def test_run_replays_the_production_station_file_unedited(tmp_path, monkeypatch):
    from fair_edge.station import cell

    station = tmp_path / "line.yaml"
    station.write_text('camera: {source: "aravis:cam1", timeout_s: 0.5}\n')
    frames = write_frames(tmp_path / "frames", 1)
    opened = []

    def run_station(cfg, stop, **kwargs):
        opened.append(cfg.camera)
        raise ConfigError("stop here: the test only reads the camera")

    monkeypatch.setattr(cell, "run", run_station)
    r = invoke("run", "--station", station, "--source", frames, "--console", "off", "--out", tmp_path / "st")
    assert [(c.source, c.timeout_s) for c in opened] == [(f"folder:{frames}", None)], r.output


# ----------------------------------------------------------------------------- --flip
def test_flip_reaches_a_csi_camera_and_zero_or_none_is_no_option():
    assert flip_options(3, "csi:0") == {"flip": 3}
    assert flip_options(None, "0") == {} and flip_options(0, "folder:/tmp") == {}
    assert camera_over_file(CameraSettings("csi:0"), None, 5).flip == 5
    assert camera_over_file(CameraSettings("csi:0", flip=2), "csi:1", 0).flip == 0


@pytest.mark.parametrize("flip, spec, message", [
    (9, "csi:0", r"--flip: expected an nvvidconv flip-method, an integer 0-7 \(0 = none, .*found 9"),
    (2, "folder:/tmp/frames", r"--flip: for csi: cameras only; found the source 'folder:/tmp/frames'; leave out "
                              r"--flip, or give the source as csi:TARGET"),
    (1, "rtsp://user:secret@10.0.0.5/s", r"--flip: for csi: cameras only")])
def test_a_flip_out_of_range_or_for_another_camera_is_refused_naming_the_flag(flip, spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        flip_options(flip, spec)
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match=message):
        camera_over_file(CameraSettings(), spec, flip)


def test_collect_opens_a_csi_camera_with_its_flip(tmp_path, monkeypatch):
    """docs/jetson.md tells users to train on frames taken with the station's flip; collect had no way to set it."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)   # collect's Ctrl-C handler: not in the test process
    opened = []

    def open_source(spec, **opts):
        opened.append((spec, opts))
        raise ConfigError("stop here: the test only reads the options")

    monkeypatch.setattr(cameras_package, "open_source", open_source)
    r = invoke("collect", tmp_path / "out", "--camera", "csi:0", "--flip", 3)
    assert opened == [("csi:0", {"flip": 3})], r.output


@pytest.mark.parametrize("args, message", [
    (["--camera", "0", "--flip", "2"], "--flip: for csi: cameras only; found the source '0'"),
    (["--camera", "csi:0", "--flip", "8"], "--flip: expected an nvvidconv flip-method"),
    (["--reviewed", "station_out", "--flip", "2"], "--flip is for a csi: --camera")])
def test_collect_refuses_a_flip_it_cannot_apply(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(cameras_package, "open_source", lambda *a, **k: pytest.fail("a camera opened"))
    r = invoke("collect", tmp_path / "out", *args)
    assert r.exit_code != 0 and message in one_line(r.output), r.output


def test_run_sets_a_csi_cameras_flip_without_a_station_file(tmp_path, monkeypatch):
    from fair_edge.station import cell

    opened = []

    def run_station(cfg, stop, **kwargs):
        opened.append(cfg.camera)
        raise ConfigError("stop here: the test only reads the camera")

    monkeypatch.setattr(cell, "run", run_station)
    r = invoke("run", "--camera", "csi:0", "--flip", 3, "--console", "off", "--out", tmp_path / "st")
    assert [(c.source, c.flip, c.source_options()) for c in opened] == [("csi:0", 3, {"flip": 3})], r.output

"""A station of several cameras (``run_cell``) refuses at start, before any camera's model loads, what a station of
one camera (``run_station``) refuses before its model loads: ``--loop`` with a live camera, reject pulses on an
unpaced replay, a camera's ROI that cannot be read, a camera without a bundle; and its own ``group.part_timeout_ms``
that cannot end before the gate. Before, each came minutes later on a Jetson (after every model had loaded, some
after the line side had opened). A model load here fails the test (``read_bundle`` / ``open_scorer`` replaced)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from fair_edge.console.settings import ConsoleSettings
from fair_edge.errors import ConfigError
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.station import cell as station_cell
from fair_edge.station import cell_models
from fair_edge.station.config import StationConfig, view_config
from fair_edge.station.camera import check_loop
from fair_edge.station.views import GroupSettings, ViewSettings

LIVE = "rtsp://admin:secret@127.0.0.1:1/x"   # never opened: the refusal comes first


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any bundle read or backend opened by the cell fails the test."""
    def no_model(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the start's refusals were made")

    monkeypatch.setattr(cell_models, "read_bundle", no_model)
    monkeypatch.setattr(cell_models, "open_scorer", no_model)


@pytest.fixture
def no_backend_opens(monkeypatch):
    """Bundles read as a stub (no tiles: ``map_area`` None); a backend opened by the cell fails the test."""
    def no_backend(*_args, **_kwargs):
        raise AssertionError("a camera's model was opened before every camera's start refusals were made")

    monkeypatch.setattr(cell_models, "read_bundle", lambda path: SimpleNamespace(root=path, map_area=None))
    monkeypatch.setattr(cell_models, "open_scorer", no_backend)


def cell(tmp_path, cameras: tuple[ViewSettings, ...], **changes) -> StationConfig:
    return StationConfig(cameras=cameras, bundle=tmp_path / "bundle", output=tmp_path / "out",
                         record=RecordSettings(dir=tmp_path / "out"), console=ConsoleSettings(enabled=False),
                         **changes).checked()


def folder(tmp_path, name: str = "imgs"):
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def test_loop_with_a_live_camera_in_a_cell_is_refused_before_any_model_loads(tmp_path, no_model_loads):
    """The cell refused --loop on a live camera only where that camera's capture was made, after every model had
    loaded; now with a single station's message (``check_loop``), the password not shown."""
    cfg = cell(tmp_path, (ViewSettings("top", str(folder(tmp_path)), loop=True), ViewSettings("side", LIVE, loop=True)),
               group=GroupSettings(match="sequence"))
    with pytest.raises(ConfigError) as info:
        station_cell.run_cell(cfg, threading.Event(), max_frames=1)
    with pytest.raises(ConfigError) as single:   # what a station of that one camera says
        check_loop(view_config(cfg, cfg.cameras[1]))
    assert str(info.value) == str(single.value)
    assert "found the camera rtsp://admin:***@127.0.0.1:1/x" in str(info.value) and "secret" not in str(info.value)


def test_fair_edge_run_loop_on_a_cell_with_a_live_camera_exits_2_before_any_model_loads(tmp_path, no_model_loads):
    """`fair-edge run --station cell.yaml --loop`: --loop goes to every camera; a live one is refused (exit 2)."""
    import yaml
    from typer.testing import CliRunner

    from fair_edge.cli import app

    station = tmp_path / "cell.yaml"
    station.write_text(yaml.safe_dump({
        "bundle": str(tmp_path / "bundle"), "output": str(tmp_path / "out"), "console": {"enabled": False},
        "cameras": [{"name": "top", "source": str(folder(tmp_path))}, {"name": "side", "source": LIVE}],
        "group": {"match": "sequence"}}))
    result = CliRunner().invoke(app, ["run", "--station", str(station), "--loop"], terminal_width=400)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "--loop / camera.loop: expected a replayed folder" in text and "secret" not in text


@pytest.mark.parametrize("by", ["part", "lane"])
def test_reject_pulses_on_an_unpaced_replay_in_a_cell_are_refused_before_any_model_loads(tmp_path, no_model_loads, by):
    """A replay without fps is no timed line: run_station refuses reject sinks on it before its model loads; the
    cell refused them where each capture was made, after the models loaded and the line side (PLC outputs, a
    handshake) had opened."""
    lanes = by == "lane"
    sinks = ("log://test.runlife.cell",)
    cfg = cell(tmp_path, (ViewSettings("top", str(folder(tmp_path)), reject=sinks if lanes else ()),
                          ViewSettings("side", str(folder(tmp_path)), fps=10)),
               group=GroupSettings(by=by), reject=RejectSettings(sinks=() if lanes else sinks, delay_ms=300))
    with pytest.raises(ConfigError, match=r"camera\.fps: a folder or video replayed without fps .* is not a timed line"):
        station_cell.run_cell(cfg, threading.Event(), max_frames=1)


def test_a_part_timeout_past_the_gate_is_refused_before_any_model_loads(tmp_path, no_model_loads):
    """group.part_timeout_ms over reject.delay_ms was refused when the part assembler was made, after the models
    had loaded and the line side had opened."""
    cfg = cell(tmp_path, (ViewSettings("top", str(folder(tmp_path)), fps=10), ViewSettings("side", "1")),
               group=GroupSettings(part_timeout_ms=500), reject=RejectSettings(sinks=("log://x",), delay_ms=400))
    with pytest.raises(ConfigError, match=r"group\.part_timeout_ms: expected at most reject\.delay_ms \(400\)"):
        station_cell.run_cell(cfg, threading.Event(), max_frames=1)


@pytest.mark.parametrize("camera", ["top", "side"])
def test_a_cameras_missing_roi_is_refused_before_any_cameras_model_opens(tmp_path, no_backend_opens, camera):
    """run_station reads its ROI before its model opens; the cell read each camera's after opening its model, and
    the second camera's after the first camera's model had opened."""
    views = tuple(ViewSettings(name, str(folder(tmp_path)), fps=10,
                               roi=tmp_path / "missing.png" if name == camera else None) for name in ("top", "side"))
    with pytest.raises(ConfigError, match=r"decision\.roi: .*missing\.png is missing"):
        station_cell.run_cell(cell(tmp_path, views, group=GroupSettings(match="sequence")), threading.Event(),
                              max_frames=1)


def test_a_camera_without_a_bundle_is_refused_before_another_cameras_model_opens(tmp_path, no_backend_opens):
    views = (ViewSettings("top", str(folder(tmp_path)), fps=10, bundle=tmp_path / "bundle"),
             ViewSettings("side", str(folder(tmp_path)), fps=10))
    cfg = StationConfig(cameras=views, output=tmp_path / "out", record=RecordSettings(dir=tmp_path / "out"),
                        console=ConsoleSettings(enabled=False), group=GroupSettings(match="sequence")).checked()
    with pytest.raises(ConfigError, match=r"cameras \(side\): no bundle"):
        station_cell.run_cell(cfg, threading.Event(), max_frames=1)

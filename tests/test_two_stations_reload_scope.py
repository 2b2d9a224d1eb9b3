"""A reload (SIGHUP, `systemctl reload`) applies the bundle, threshold and `regions:` of the station file it re-reads,
nothing else. A site fixing a clash between two stations in the file (console port, metrics port, output) and
reloading was told nothing: the edits were ignored silently, and the log said `model swapped: now <the same model>`
(the audit's hup_fields.sh). Now the reload logs a WARNING naming the sections edited since the station started and
the restart that applies them (`systemctl restart UNIT` under a unit), and a reload of the same model logs
`model reloaded (same model ...)`. Compared with the file as the start loaded it, before the command-line flags (a
flag set a section otherwise: it was named on every reload, and a restart with the same command changed nothing); a
cell's `cameras:` is one section, each camera's bundle, threshold and regions aside (its camera edits were not named)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.station import run as run_module
from fair_edge.station.config import load_station
from fair_edge.station.inspector import Inspector
from inline_swaps import inline_swaps, kept_signals  # noqa: F401 (autouse fixtures)

SETTINGS = {"bundle": "b1", "decision": {"threshold": 0.5}, "output": "out/hf",
            "console": {"enabled": False, "port": 18791}, "metrics": {"enabled": True, "port": 19131}}


def station_file(tmp_path, **changes) -> Path:
    """hf.yaml in ``tmp_path``: SETTINGS with ``changes`` over them (its relative paths read from ``tmp_path``, where
    the tests run)."""
    station = tmp_path / "hf.yaml"
    station.write_text(yaml.safe_dump({**SETTINGS, **changes}))
    return station


def running_console(monkeypatch, station: Path):
    """The console of a station started from ``station`` (``open_console``, as ``run_station`` opens it), over a
    loader that loads any bundle as model m-NAME; its decider runs m-b1. Returns (console, decider)."""
    def load_change(bundle_path, backend, roi_path, threshold=None, regions=None):
        return ModelChange(scorer=SimpleNamespace(reason="new", backend=SimpleNamespace(close=lambda: None)),
                           threshold=threshold, model=f"m-{Path(bundle_path).name}",
                           bundle=SimpleNamespace(root=Path(bundle_path), threshold=None))

    monkeypatch.setattr(run_module, "load_change", load_change)
    monkeypatch.chdir(station.parent)   # the station's relative output: its audit log is written there
    cfg = load_station(station)
    console = run_module.open_console(cfg, SimpleNamespace(root=cfg.bundle, threshold=None), None,
                                      contextlib.ExitStack())
    decider = SimpleNamespace(model="m-b1", threshold=0.5, switch=ModelSwitch())
    console.attach(decider, None, None, None, None)
    console.keep_file_at_start(cfg)   # as `fair-edge run` hands it the file it loaded, before its flags
    return console, decider


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fair_edge.console.station_hook"
            and r.levelno == logging.WARNING and " not applied " in r.getMessage()]


def test_a_reload_names_the_sections_it_does_not_apply_and_the_units_restart(tmp_path, monkeypatch, caplog):
    """The audit's hup_fields: console port, metrics port and output edited, then `systemctl reload` of unit
    fair-edge-line1.service. The reload goes on (the bundle reloaded) and says which edits wait for a restart."""
    from fair_edge import systemd_unit

    station = station_file(tmp_path)
    console, _ = running_console(monkeypatch, station)
    station_file(tmp_path, output="out/hf2", console={"enabled": False, "port": 18792},
                 metrics={"enabled": True, "port": 19132})
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/fair-edge-line1.service\n")
    monkeypatch.setattr(systemd_unit, "CGROUP_FILE", cgroup)
    monkeypatch.setenv("INVOCATION_ID", "0123abcd")
    with caplog.at_level(logging.WARNING):
        console.reload_bundle("SIGHUP")
    assert console.actions.swap_status["state"] == "done"
    assert warnings_of(caplog) == [
        f"reload (SIGHUP): output, record, metrics, console in {station} not applied (edited since the station "
        "started; a reload applies bundle, decision.threshold and regions: only): restart the station to "
        "apply them (`systemctl restart fair-edge-line1.service`)"], caplog.text


def test_a_reload_of_only_what_it_applies_warns_of_nothing(tmp_path, monkeypatch, caplog):
    """Bundle and threshold edited (what a reload is for): no warning. Run by hand: the restart advice names the
    pid, never a unit."""
    station = station_file(tmp_path)
    console, _ = running_console(monkeypatch, station)
    station_file(tmp_path, bundle="b2", decision={"threshold": 0.7})
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    with caplog.at_level(logging.WARNING):
        console.reload_bundle("SIGHUP")
    assert console.actions.swap_status["state"] == "done" and warnings_of(caplog) == []
    station_file(tmp_path, bundle="b2", decision={"threshold": 0.7}, mqtt={"url": "mqtt://broker:1883/line2"})
    with caplog.at_level(logging.WARNING):
        console.reload_bundle("SIGHUP")
    assert len(warnings_of(caplog)) == 1 and "mqtt in" in warnings_of(caplog)[0]
    assert "(Ctrl-C or `kill -TERM " in warnings_of(caplog)[0] and "systemctl" not in warnings_of(caplog)[0]


def run_command(monkeypatch, tmp_path, args: list[str], stations, scenario) -> None:
    """`fair-edge run ARGS` over a stand-in for ``station.cell.run``: ``stations(cfg)`` opens the console from the
    settings the command line made (flags applied), the command wires it (``on_console``: its flags and the station
    file as loaded before them) and ``scenario(console)`` drives it (its failed assertions fail the test)."""
    from typer.testing import CliRunner

    from fair_edge.cli.run import app as run_app
    from fair_edge.station import cell as cell_module
    from fair_edge.station.inspector import RunSummary

    def station_run(cfg, stop, on_console=None, **_):
        console = stations(cfg)
        try:
            on_console(console)
            scenario(console)
        finally:
            console.close()
        return RunSummary()

    monkeypatch.setattr(cell_module, "run", station_run)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(run_app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def one_camera(monkeypatch, before_open=lambda: None):
    """``stations`` for ``run_command``: one camera's console as ``run_station`` opens it, over a loader that loads
    any bundle as model m-NAME. before_open: called first (an edit of the file while the station starts)."""
    def load_change(bundle_path, backend, roi_path, threshold=None, regions=None):
        return ModelChange(scorer=SimpleNamespace(reason="new", backend=SimpleNamespace(close=lambda: None)),
                           threshold=threshold, model=f"m-{Path(bundle_path).name}",
                           bundle=SimpleNamespace(root=Path(bundle_path), threshold=None))

    monkeypatch.setattr(run_module, "load_change", load_change)

    def stations(cfg):
        before_open()
        console = run_module.open_console(cfg, SimpleNamespace(root=cfg.bundle, threshold=None), None,
                                          contextlib.ExitStack())
        console.attach(SimpleNamespace(model="m-b1", threshold=0.5, switch=ModelSwitch()), None, None, None, None)
        return console

    return stations


def test_flags_on_the_command_line_are_not_named_as_edits_a_reload_does_not_apply(tmp_path, monkeypatch, caplog):
    """The review's case: `fair-edge run --station line1.yaml --out runs/a --console-port 0 --backend onnxruntime`,
    file unchanged: every SIGHUP warned "backend, output, record, console ... not applied: restart the station",
    though a restart with the same command changes nothing (the flags were compared as edits). Now nothing is named
    until the file is edited, and then only the edit."""
    station = station_file(tmp_path)

    def scenario(console):
        with caplog.at_level(logging.WARNING):
            console.reload_bundle("SIGHUP")
        assert console.actions.swap_status["state"] == "done" and warnings_of(caplog) == []
        station_file(tmp_path, metrics={"enabled": True, "port": 19132})
        with caplog.at_level(logging.WARNING):
            console.reload_bundle("SIGHUP")
        assert [w.split(" in ")[0] for w in warnings_of(caplog)] == ["reload (SIGHUP): metrics"], caplog.text

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--out", "runs/a", "--console", "off",
                                        "--console-port", "0", "--backend", "onnxruntime"],
                one_camera(monkeypatch), scenario)


def test_an_edit_made_while_the_station_starts_is_named_by_the_next_reload(tmp_path, monkeypatch, caplog):
    """The file is compared with what the command line loaded (before its flags), not with the file as it reads when
    the console opens: an edit of output: while the bundle loads is not in force, and the reload says so."""
    station = station_file(tmp_path)

    def scenario(console):
        with caplog.at_level(logging.WARNING):
            console.reload_bundle("SIGHUP")
        assert [w.split(" in ")[0] for w in warnings_of(caplog)] == ["reload (SIGHUP): output, record"], caplog.text

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--console", "off", "--backend", "onnxruntime"],
                one_camera(monkeypatch, lambda: station_file(tmp_path, output="out/edited")), scenario)


CAMERAS = [{"name": "top", "source": "folder:top"}, {"name": "left", "source": "folder:left", "fps": 30}]


def cell_station(tmp_path, cameras=CAMERAS, **changes) -> Path:
    """hf.yaml with the cameras top and left (a part station matched by sequence), ``changes`` over SETTINGS."""
    return station_file(tmp_path, cameras=cameras, group={"match": "sequence"}, **changes)


def cell_console(monkeypatch):
    """``stations`` for ``run_command``: a cell's console as ``run_cell`` opens it (``open_cell_console``), over a
    ``CellLoader.load_views`` that loads any bundle as model m-NAME for every camera asked."""
    from fair_edge.station import cell_console as cell_console_module

    def load_views(self, bundle, cameras, thresholds=None, regions=None):
        return {c: ModelChange(scorer=SimpleNamespace(reason="new", backend=SimpleNamespace(close=lambda: None)),
                               threshold=(thresholds or {}).get(c), model=f"m-{Path(bundle).name}",
                               bundle=SimpleNamespace(root=Path(bundle), threshold=None)) for c in cameras}

    monkeypatch.setattr(cell_console_module.CellLoader, "load_views", load_views)

    def stations(cfg):
        bundle = SimpleNamespace(root=cfg.bundle, threshold=None)
        models = SimpleNamespace(bundles={Path(cfg.bundle).resolve(): [bundle]}, calibrations={})
        line = SimpleNamespace(metrics=None, callbacks=[], stop=None)
        console = cell_console_module.open_cell_console(cfg, models, None, contextlib.ExitStack(), line)
        names = [v.name for v in cfg.cameras]
        console.attach_cell(SimpleNamespace(), {c: Path(cfg.bundle) for c in names})
        views = {c: SimpleNamespace(model="m-b1", threshold=0.5, switch=ModelSwitch()) for c in names}
        console.attach(SimpleNamespace(views=views), None, None, None, None)
        return console

    return stations


def test_a_cell_reload_names_its_cameras_edits_and_not_the_fps_flag(tmp_path, monkeypatch, caplog):
    """A cell run with --fps 5 (over every camera): a reload of the unchanged file names nothing; camera left's
    source and fps edited and a camera added (none of which a reload applies) were not named at all (the console
    compared its first camera's view, station-wide sections only). Now `cameras` is named."""
    station = cell_station(tmp_path)

    def scenario(console):
        with caplog.at_level(logging.WARNING):
            console.reload_bundle("SIGHUP")
        assert console.actions.swap_status["state"] == "done" and warnings_of(caplog) == [], caplog.text
        cell_station(tmp_path, cameras=[CAMERAS[0], {"name": "left", "source": "rtsp://10.0.0.9/cam", "fps": 60},
                                        {"name": "right", "source": "folder:right"}])
        with caplog.at_level(logging.WARNING):
            console.reload_bundle("SIGHUP")   # refused too: a reload keeps the cameras the station started with
        assert [w.split(" in ")[0] for w in warnings_of(caplog)] == ["reload (SIGHUP): cameras"], caplog.text

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--console", "off", "--fps", "5"],
                cell_console(monkeypatch), scenario)


def test_a_cells_cameras_are_compared_without_what_a_reload_applies_of_each(tmp_path):
    """Each camera's bundle, threshold and regions: (a reload loads them, ``CellLoader.camera_bundles``) are no
    restart-only edit; its source, fps, ROI and reject outputs are, and so is a camera added, removed or renamed."""
    from fair_edge.console.reload_scope import unapplied_sections

    at_start = load_station(cell_station(tmp_path))
    reloaded = [CAMERAS[0], {**CAMERAS[1], "bundle": "b2", "threshold": 0.7, "regions": {"mm_per_px": 0.1}}]
    assert unapplied_sections(at_start, load_station(cell_station(tmp_path, cameras=reloaded))) == []
    for cameras in ([CAMERAS[0], {**CAMERAS[1], "fps": 60}], [CAMERAS[0], {**CAMERAS[1], "roi": "left.png"}],
                    [CAMERAS[0]], [CAMERAS[0], {**CAMERAS[1], "name": "right"}]):
        assert unapplied_sections(at_start, load_station(cell_station(tmp_path, cameras=cameras))) == ["cameras"]
    assert unapplied_sections(at_start, load_station(cell_station(tmp_path, output="elsewhere"))) == ["output",
                                                                                                    "record"]


class Scorer:
    """A scorer that is never run: what a swap hands the decider."""

    graph_threshold = None

    def __init__(self, name: str) -> None:
        self.reason = f"test: {name}"
        self.backend = SimpleNamespace(close=lambda: None, name=name)

    def infer_frames(self, frames):
        return np.zeros((len(frames), 8, 8), np.float32), np.zeros(len(frames), np.float32)


def test_a_reload_of_the_same_model_is_logged_as_such_not_as_a_swap(caplog):
    """`model swapped: now m1` for the model it ran already read as a change; it is `model reloaded (same model
    m1)`; another model still reads `model swapped: now m2`. Logged once at the switch, not per frame."""
    inspector = Inspector(capture=None, scorer=Scorer("a"), threshold=1.0, model="m1")
    with caplog.at_level(logging.WARNING, logger="fair_edge.station.inspector"):
        inspector.switch.request(ModelChange(scorer=Scorer("b"), model="m1", bundle=SimpleNamespace(root="b1")))
        inspector.apply_switch()
        inspector.switch.request(ModelChange(scorer=Scorer("c"), model="m2", bundle=SimpleNamespace(root="b2")))
        inspector.apply_switch()
    logged = [r.getMessage() for r in caplog.records if r.name == "fair_edge.station.inspector"]
    assert logged == ["model reloaded (same model m1) from b1", "model swapped: now m2 from b2"], logged

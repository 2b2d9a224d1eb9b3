"""`fair-edge run --station FILE --bundle B --threshold T`: a reload (`kill -HUP`, `systemctl reload`) re-reads the
station file and applies the same command-line flags over it again; before, it switched silently to the bundle and
threshold the file names (an audit measured model 0d4c974cc4f1 at 0.5 becoming ecdb0e81b7d9 at 0.3568). A threshold
applied from the console (written to the station file) is kept by a reload, and from then on the file's threshold
holds. Each test runs the real command line (flags parsed, ``StationSignals`` wiring the console) over a stand-in
station: no camera, no model; the loaders record what each reload asks for, and each swap runs inline, done when
``reload_bundle`` returns."""

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from fair_edge.cli.run import app as run_app
from fair_edge.console.actions import StationLinks
from fair_edge.console.station_hook import StationConsole
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.station import cell as cell_module
from fair_edge.station import run as run_module
from fair_edge.station.cell_console import CellLoader
from fair_edge.station.config import load_station
from fair_edge.station.inspector import RunSummary
from inline_swaps import inline_swaps, kept_signals  # noqa: F401 (autouse fixtures)

FILE_THRESHOLD = 0.3568   # the station file's decision.threshold in every test
OWN_THRESHOLD = 0.7       # what a bundle swapped in from the console calibrates itself to (its own scale)


def loaded(bundle, threshold, model=None) -> ModelChange:
    """A loaded bundle's change: its threshold the one asked for, else the bundle's own (OWN_THRESHOLD)."""
    return ModelChange(scorer=SimpleNamespace(reason="new", backend=SimpleNamespace(close=lambda: None)),
                       threshold=OWN_THRESHOLD if threshold is None else threshold, model=model or Path(bundle).name,
                       bundle=SimpleNamespace(root=Path(bundle), threshold=None))


def take(decider) -> None:
    """The inspection loop's next batch: the decider takes what its switch holds (the reloaded model, a threshold)."""
    change = decider.switch.take()
    decider.threshold = change.threshold if change.threshold is not None else decider.threshold
    decider.model = change.model or decider.model


def write_station(tmp_path, **extra) -> Path:
    """A station file naming bundle fp32 at FILE_THRESHOLD (with ``extra`` keys), as an operator wrote it."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(tmp_path / "fp32"), "backend": "openvino",
                                       "decision": {"threshold": FILE_THRESHOLD}, **extra}))
    return station


def set_file_threshold(station: Path, value: float) -> None:
    """An edit of the station file's decision.threshold by hand."""
    data = yaml.safe_load(station.read_text())
    data["decision"]["threshold"] = value
    station.write_text(yaml.safe_dump(data))


def run_command(monkeypatch, tmp_path, args: list[str], scenario, stations) -> None:
    """`fair-edge run ARGS --console off --out OUT` over a stand-in for ``station.cell.run``: ``stations`` builds the
    console and its decider(s) from the settings the command line made, the command wires them (``on_console``) and
    ``scenario(console, decider)`` drives them (its failed assertions fail the test)."""
    def station_run(cfg, stop, on_console=None, **_):
        console, decider = stations(cfg)
        try:
            on_console(console)
            scenario(console, decider)
        finally:
            console.close()
        return RunSummary()

    monkeypatch.setattr(cell_module, "run", station_run)
    result = CliRunner().invoke(run_app, [*args, "--console", "off", "--out", str(tmp_path / "out")])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def one_camera(monkeypatch, loads: list):
    """One camera, its console opened as ``run_station`` opens it (``open_console``: the reload's loader is
    ``load_change`` with the station's backend and ROI), over a loader that records (bundle name, threshold,
    backend, ROI) into ``loads``; the decider starts at the settings' threshold."""
    def load_change(bundle_path, backend, roi_path, threshold=None, regions=None):
        loads.append((Path(bundle_path).name, threshold, backend, roi_path and Path(roi_path).name))
        return loaded(bundle_path, threshold)

    monkeypatch.setattr(run_module, "load_change", load_change)

    def stations(cfg):
        console = run_module.open_console(cfg, SimpleNamespace(root=cfg.bundle, threshold=None), None,
                                          contextlib.ExitStack())
        decider = SimpleNamespace(model="m0", threshold=cfg.threshold, switch=ModelSwitch())
        console.attach(decider, None, None, None, None)
        return console, decider

    return stations


def reload_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("bundle reload (SIGHUP): flags")]


# ---------------------------------------------------------------------------------------------------- one camera
def test_a_reload_loads_the_command_lines_bundle_and_threshold_not_the_files(monkeypatch, tmp_path, caplog):
    """The audit's case: started with --bundle fp16 --threshold 0.5 over a station file naming fp32 at 0.3568, a
    reload loaded fp32 at 0.3568. Now it loads fp16 at 0.5, with the backend and ROI of the command line, and logs
    one line naming the flags over the file."""
    station, loads = write_station(tmp_path), []
    fp16, roi = tmp_path / "fp16", tmp_path / "roi.png"

    def scenario(console, decider):
        console.reload_bundle("SIGHUP")
        assert console.actions.swap_status["state"] == "done"
        take(decider)
        console.reload_bundle("SIGHUP")   # and again: the flags hold for every reload

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--bundle", str(fp16), "--threshold", "0.5",
                                        "--backend", "onnxruntime", "--roi", str(roi)],
                scenario, one_camera(monkeypatch, loads))
    assert loads == [("fp16", 0.5, "onnxruntime", "roi.png")] * 2
    assert reload_lines(caplog)[0] == (
        f"bundle reload (SIGHUP): flags given on the command line: --bundle {fp16} over the station file's "
        f"{tmp_path / 'fp32'}; --threshold 0.5 over the station file's 0.3568; --backend onnxruntime (kept from the "
        f"start); --roi {roi} (kept from the start)")


def test_a_reload_without_flags_still_takes_the_station_files_bundle_and_threshold(monkeypatch, tmp_path, caplog):
    """No flag over the file: a reload loads what the file names now (here edited to 0.41), and logs no flag line."""
    station, loads = write_station(tmp_path), []

    def scenario(console, decider):
        set_file_threshold(station, 0.41)
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--station", str(station)], scenario, one_camera(monkeypatch, loads))
    assert loads == [("fp32", 0.41, "openvino", None)] and reload_lines(caplog) == []


@pytest.mark.parametrize("applied", [0.45, FILE_THRESHOLD])
def test_a_threshold_applied_from_the_console_is_kept_by_a_reload_and_the_file_holds_from_then_on(
        monkeypatch, tmp_path, caplog, applied):
    """--threshold 0.5 over a file at 0.3568; an operator applies ``applied`` from the console (written to the file;
    also the file's own value, so nothing but the apply tells it from the file). The reload keeps it rather than
    going back to the flag's 0.5, says so, and from then on the file's threshold holds: an edit to 0.4 is taken by
    the next reload. Before, every reload went back to the file's threshold (0.3568), the flag's at first."""
    station, loads = write_station(tmp_path), []

    def scenario(console, decider):
        console.reload_bundle("SIGHUP")
        take(decider)
        assert decider.threshold == 0.5   # the flag's
        console.actions.apply_threshold(applied, "ann", True)
        take(decider)
        console.reload_bundle("SIGHUP")
        take(decider)
        assert decider.threshold == applied
        set_file_threshold(station, 0.4)
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--threshold", "0.5"], scenario,
                one_camera(monkeypatch, loads))
    assert [(bundle, threshold) for bundle, threshold, *_ in loads] == [("fp32", 0.5), ("fp32", applied),
                                                                        ("fp32", 0.4)]
    lines = reload_lines(caplog)
    assert lines[0] == "bundle reload (SIGHUP): flags given on the command line: --threshold 0.5 over the station " \
                       "file's 0.3568"
    assert lines[1] == (f"bundle reload (SIGHUP): flags given on the command line: --threshold 0.5 no longer: the "
                        f"station file's {applied:.6g}, applied from the console, is in force and kept")
    assert len(lines) == 2   # the third reload: no flag over the file any more, no line


def test_a_reload_after_a_console_swap_goes_back_to_the_flags_bundle_and_threshold(monkeypatch, tmp_path):
    """A bundle swapped in from the console runs at its own calibrated threshold (0.7, its own scale); that is not an
    operator's threshold: a reload goes back to --bundle fp16 at --threshold 0.5."""
    station, loads = write_station(tmp_path), []

    def scenario(console, decider):
        console.actions.swap(str(tmp_path / "other"), "ann")
        take(decider)
        assert decider.threshold == OWN_THRESHOLD
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--bundle", str(tmp_path / "fp16"),
                                        "--threshold", "0.5"], scenario, one_camera(monkeypatch, loads))
    assert [(bundle, threshold) for bundle, threshold, *_ in loads] == [("other", None), ("fp16", 0.5)]


def test_without_a_station_file_a_reload_keeps_the_threshold_in_force(monkeypatch, tmp_path):
    """`fair-edge run --bundle B --threshold 0.5` (no station file): a reload rebuilds the bundle folder in force.
    Before, it did so at 0.5 whatever ran: it undid a threshold applied from the console (0.45; nothing else holds
    it), and put 0.5 on a bundle swapped in from the console (calibrated at 0.7 on its own scale). Now it keeps the
    threshold in force."""
    loads = []

    def scenario(console, decider):
        console.actions.apply_threshold(0.45, "ann", True)
        take(decider)
        console.reload_bundle("SIGHUP")
        take(decider)
        console.actions.swap(str(tmp_path / "other"), "ann")
        take(decider)
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--bundle", str(tmp_path / "fp16"), "--threshold", "0.5"], scenario,
                one_camera(monkeypatch, loads))
    assert [(bundle, threshold) for bundle, threshold, *_ in loads] == [("fp16", 0.45), ("other", None),
                                                                        ("other", OWN_THRESHOLD)]


def test_without_a_station_file_or_threshold_a_reload_keeps_a_threshold_applied_from_the_console(monkeypatch,
                                                                                                  tmp_path):
    """`fair-edge run --bundle B` (no station file, no --threshold): a reload rebuilds B at the bundle's threshold
    until an operator applies one from the console (0.45); from then on a reload keeps it, as a run started with
    --threshold does. Before, this run went back to the bundle's threshold (0.7) without saying so."""
    loads = []

    def scenario(console, decider):
        console.reload_bundle("SIGHUP")
        take(decider)
        assert decider.threshold == OWN_THRESHOLD   # nothing applied yet: the bundle's
        console.actions.apply_threshold(0.45, "ann", True)
        take(decider)
        console.reload_bundle("SIGHUP")
        take(decider)
        assert decider.threshold == 0.45

    run_command(monkeypatch, tmp_path, ["--bundle", str(tmp_path / "fp16")], scenario, one_camera(monkeypatch, loads))
    assert [(bundle, threshold) for bundle, threshold, *_ in loads] == [("fp16", None), ("fp16", 0.45)]


# ------------------------------------------------------------------------------------------------- several cameras
class Counters:
    """``CellCounters`` of cameras top and left (what ``station.cell.CellCounters`` gives the console)."""

    def cameras(self) -> dict:
        return {c: {"frames_in": 0, "inspected": 0, "ng": 0, "dropped": 0, "lost": 0, "state": "running",
                    "end_reason": ""} for c in ("top", "left")}

    def parts(self) -> dict:
        return {"parts": 0, "ng": 0, "ok": 0, "not_inspected": 0, "late_views": 0}


def two_cameras(loads: list):
    """A cell's console as ``open_cell_console`` links it (``CellLoader.camera_bundles`` re-reads the station file)
    over a ``load_views`` that records (camera, bundle name, threshold) into ``loads``; each camera's decider starts
    at its settings' threshold (the camera's own, else the station's)."""
    def stations(cfg):
        def load_views(bundle, cameras, thresholds, regions=None):
            loads.extend((c, Path(bundle).name, thresholds.get(c)) for c in cameras)
            return {c: loaded(bundle, thresholds.get(c)) for c in cameras}

        links = StationLinks(load_views=load_views, camera_bundles=CellLoader(cfg).camera_bundles,
                             load_station=load_station)
        console = StationConsole(cfg, SimpleNamespace(root=cfg.bundle, threshold=None), links=links,
                                 calibrations={"top": None, "left": None})
        own = {v.name: v for v in cfg.cameras}
        console.attach_cell(Counters(), {c: Path(own[c].bundle or cfg.bundle) for c in ("top", "left")})
        views = {c: SimpleNamespace(model=f"m-{c}", threshold=own[c].threshold or cfg.threshold, switch=ModelSwitch())
                 for c in ("top", "left")}
        console.attach(SimpleNamespace(views=views), None, None, None, None)
        return console, views

    return stations


def test_a_cell_reload_keeps_the_flags_for_cameras_without_their_own_and_a_threshold_applied_to_one(monkeypatch,
                                                                                                  tmp_path, caplog):
    """cameras top (the station's bundle and threshold) and left (its own bundle and threshold 0.2), started with
    --bundle fp16 --threshold 0.5: a reload loaded top on the file's fp32 at 0.3568. Now top reloads fp16 at 0.5 and
    left its own; a threshold applied to top from the console (written as top's own) is kept by the next reload,
    still on fp16."""
    camera = {"source": str(tmp_path), "fps": 5, "loop": True}
    station = write_station(tmp_path, group={"match": "sequence"}, cameras=[
        {"name": "top", **camera}, {"name": "left", **camera, "bundle": str(tmp_path / "left_own"), "threshold": 0.2}])
    loads = []

    def scenario(console, views):
        console.reload_bundle("SIGHUP")
        for view in views.values():
            take(view)
        console.actions.apply_threshold(0.45, "ann", True, "top")
        take(views["top"])
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--bundle", str(tmp_path / "fp16"),
                                        "--threshold", "0.5"], scenario, two_cameras(loads))
    assert sorted(loads[:2]) == [("left", "left_own", 0.2), ("top", "fp16", 0.5)]
    assert sorted(loads[2:]) == [("left", "left_own", 0.2), ("top", "fp16", 0.45)]
    assert reload_lines(caplog)[0] == (
        f"bundle reload (SIGHUP): flags given on the command line: --bundle {tmp_path / 'fp16'} over the station "
        "file's, for cameras top; --threshold 0.5 over the station file's, for cameras top")


def test_a_cell_file_without_a_station_bundle_reloads_with_the_flags_bundle_as_at_the_start(monkeypatch, tmp_path,
                                                                                         caplog):
    """A cell file with no station ``bundle:`` (top names none, left its own), run with --bundle fp16 standing for
    the station's, as the start allows: every reload was refused ("cameras (top): no bundle"). Now top reloads
    fp16, as at the start, and left its own, and the log names the flag."""
    camera = {"source": str(tmp_path), "fps": 5, "loop": True}
    station = tmp_path / "cell.yaml"
    station.write_text(yaml.safe_dump({"backend": "openvino", "group": {"match": "sequence"}, "cameras": [
        {"name": "top", **camera}, {"name": "left", **camera, "bundle": str(tmp_path / "left_own")}]}))
    loads = []

    def scenario(console, views):
        console.reload_bundle("SIGHUP")
        assert console.actions.swap_status["state"] == "done", console.actions.swap_status

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--bundle", str(tmp_path / "fp16")], scenario,
                two_cameras(loads))
    assert sorted(loads) == [("left", "left_own", None), ("top", "fp16", None)]
    assert reload_lines(caplog) == [f"bundle reload (SIGHUP): flags given on the command line: --bundle "
                                    f"{tmp_path / 'fp16'} over the station file's, for cameras top"]

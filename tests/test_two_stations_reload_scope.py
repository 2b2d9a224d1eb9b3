"""A reload (SIGHUP, `systemctl reload`) applies the bundle, threshold and `regions:` of the station file it re-reads,
nothing else. A site fixing a clash between two stations in the file (console port, metrics port, output) and
reloading was told nothing: the edits were ignored silently, and the log said `model swapped: now <the same model>`
(the audit's hup_fields.sh). Now the reload logs a WARNING naming the sections that differ from what the station runs
with and the restart that applies them (`systemctl restart UNIT` under a unit), and a reload of the same model logs
`model reloaded (same model ...)`."""

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
        f"reload (SIGHUP): output, record, metrics, console in {station} not applied (they differ from what the "
        "station runs with; a reload applies bundle, decision.threshold and regions: only): restart the station to "
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


def test_a_station_of_several_cameras_compares_its_station_wide_sections_only(tmp_path):
    """A cell's console runs with its first camera's view (its camera and ROI): those are not compared with the
    file's (they would always differ); the station-wide sections are."""
    from dataclasses import replace

    from fair_edge.console.reload_scope import unapplied_sections

    file_now = load_station(station_file(tmp_path))
    view = replace(file_now, camera=replace(file_now.camera, source="folder:top"), roi=Path("top.png"))
    assert unapplied_sections(view, file_now, cell=True) == []
    assert unapplied_sections(view, replace(file_now, output=Path("elsewhere")), cell=True) == ["output"]
    assert unapplied_sections(view, file_now) == ["camera", "decision.roi"]


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

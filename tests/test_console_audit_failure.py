"""A console action whose audit row cannot be written: the operator's answer must be true. An audit log that cannot
be opened (a read-only output folder) refuses the action before anything changes (the station file, the live
threshold, a swap, an alarm, an export); one that fails only once the change is made (the disk filled in between)
answers success with a ``warning`` and finishes the action (every camera of a swap switched). Before, the change was
made and then reported as failed ("expected a writable log file", "bundle swap refused"), and a swap of several
cameras stopped after the first camera's row."""

import errno
import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from fair_edge.console import swaps as swaps_module
from fair_edge.console.actions import StationLinks
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.station_hook import StationConsole
from fair_edge.errors import RecorderError
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.station.config import StationConfig, load_station

from test_console_races import InlineThread, file_threshold, station_console
from test_console_units import Backend, api, cell_console, recording_loader

NOT_AUDITED = "made but not audited: "


class ReadOnly:
    """``os.open`` refusing to open ``path`` for writing (EROFS, as a read-only mount does) while ``on``; every
    other open (and reading ``path``) goes through."""

    def __init__(self, monkeypatch, path: Path, on: bool = True) -> None:
        self.path, self.on, self._open = Path(path), on, os.open
        monkeypatch.setattr(os, "open", self._refusing)

    def _refusing(self, file, flags, *args, **kwargs):
        if self.on and Path(os.fsdecode(file)) == self.path and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(file))
        return self._open(file, flags, *args, **kwargs)


def disk_fills(journal) -> None:
    """``journal.append`` fails as a full disk makes it (the open worked: ``check_writable`` passes)."""
    def full(entry):
        raise RecorderError(f"{journal.path}: wrote 0 of 120 bytes of a new entry (No space left on device; 0.0 MB "
                            "free on the disk of out); expected the whole line.")
    journal.append = full


@pytest.fixture
def inline_swaps(monkeypatch):
    monkeypatch.setattr(swaps_module, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))


def audit_path(console) -> Path:
    return console.actions.audit.path


# ------------------------------------------------------------------------------------------------------------ threshold
def test_a_threshold_the_audit_log_cannot_take_is_refused_before_anything_changes(tmp_path, monkeypatch):
    """Read-only output folder: the 400 "expected a writable log file" is now true: the station file and the live
    threshold keep 0.5 (before: both had 0.9, and no audit row)."""
    console, decider, station = station_console(tmp_path, StationLinks(load_station=load_station))
    ReadOnly(monkeypatch, audit_path(console))
    r = api(console).post("/api/threshold", json={"who": "ann", "threshold": 0.9, "confirm": True})
    assert r.status_code == 400, r.text
    assert "audit.jsonl: expected a writable log file" in r.json()["error"] and "Read-only" in r.json()["error"]
    assert file_threshold(station) == 0.5 and decider.switch.take() is None
    assert not audit_path(console).exists()


def test_a_threshold_on_an_already_full_disk_is_refused_before_anything_changes(tmp_path, monkeypatch):
    """A full disk still opens an existing audit.jsonl: the check also wants room for the row, so the change is
    refused (before: applied, then answered "made but not audited")."""
    console, decider, station = station_console(tmp_path, StationLinks(load_station=load_station))
    audit = audit_path(console)
    audit.parent.mkdir(parents=True, exist_ok=True)
    audit.write_text('{"action": "earlier"}\n')
    real_statvfs = os.statvfs
    full = lambda path: SimpleNamespace(f_bavail=0, f_bfree=0, f_blocks=4096, f_frsize=4096) if Path(path) == audit.parent else real_statvfs(path)
    monkeypatch.setattr(os, "statvfs", full)
    r = api(console).post("/api/threshold", json={"who": "ann", "threshold": 0.9, "confirm": True})
    assert r.status_code == 400, r.text
    assert "expected at least 64 KiB free for its next entry, found 0 bytes" in r.json()["error"]
    assert file_threshold(station) == 0.5 and decider.switch.take() is None
    assert audit.read_text() == '{"action": "earlier"}\n'


def test_a_threshold_applied_whose_audit_row_fails_is_answered_as_applied_with_a_warning(tmp_path, caplog):
    """The disk fills between the check and the row: the threshold is in the station file and the switch, so the
    answer is a 200 saying so, with a ``warning``; the error is logged (before: a 400 for a change that was made)."""
    console, decider, station = station_console(tmp_path, StationLinks(load_station=load_station))
    disk_fills(console.actions.audit)
    r = api(console).post("/api/threshold", json={"who": "ann", "threshold": 0.9, "confirm": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["old"], answer["new"], answer["station_file"]) == (0.5, 0.9, str(station))
    assert answer["warning"].startswith(NOT_AUDITED) and "No space left on device" in answer["warning"]
    assert file_threshold(station) == 0.9 and decider.switch.take().threshold == 0.9
    assert [r for r in caplog.records if r.levelno == logging.ERROR and NOT_AUDITED in r.getMessage()]


# ------------------------------------------------------------------------------------------------------ swap, one camera
def one_camera(tmp_path, loads: list):
    """A one-camera console (output tmp_path/out) whose loader records the bundles it loads and whose inspector runs
    m-old at 3.0. Returns (console, inspector, the change the loader gives, closed backends)."""
    from fair_edge.station.inspector import Inspector

    closed = []
    loaded = ModelChange(scorer=SimpleNamespace(reason="new", backend=Backend("b1", closed)), threshold=0.05,
                         model="m-new", bundle=SimpleNamespace(root=tmp_path / "b1", threshold=None))

    def load_model(bundle, threshold=None):
        loads.append(Path(bundle).name)
        return loaded

    console = StationConsole(StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False)),
                             SimpleNamespace(root=tmp_path / "b0", threshold=None),
                             links=StationLinks(load_model=load_model))
    inspector = Inspector(None, SimpleNamespace(reason="old", backend=SimpleNamespace(close=lambda: None)), 3.0,
                          model="m-old")
    console.attach(inspector, None, None, None, None)
    return console, inspector, loaded, closed


def test_a_swap_the_audit_log_cannot_take_is_refused_before_loading(tmp_path, monkeypatch, inline_swaps):
    """Read-only output folder: the swap is refused at once (a 400 naming the log), nothing loaded, the station runs
    its model (before: "bundle swap refused" while the new model ran)."""
    loads = []
    console, inspector, _, _ = one_camera(tmp_path, loads)
    ReadOnly(monkeypatch, audit_path(console))
    r = api(console).post("/api/swap", json={"who": "ann", "bundle": str(tmp_path / "b1")})
    assert r.status_code == 400 and "audit.jsonl: expected a writable log file" in r.json()["error"], r.text
    assert loads == [] and console.actions.swap_status["state"] == "idle"
    inspector.apply_switch()
    assert (inspector.model, inspector.threshold) == ("m-old", 3.0)


def test_a_swap_whose_audit_log_turns_read_only_while_it_loads_switches_nothing(tmp_path, monkeypatch, inline_swaps):
    """The log became unwritable during the (slow) load: checked again before the switch, the swap fails, the loaded
    backend is closed and the station keeps its model: "failed" is true."""
    loads = []
    console, inspector, _, closed = one_camera(tmp_path, loads)
    read_only = ReadOnly(monkeypatch, audit_path(console), on=False)
    real_load = console.actions.links.load_model

    def load_then_read_only(bundle, threshold=None):
        read_only.on = True
        return real_load(bundle, threshold)

    console.actions.links = StationLinks(load_model=load_then_read_only)
    console.actions.swap(str(tmp_path / "b1"), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed" and "expected a writable log file" in status["error"]
    assert loads == ["b1"] and closed == ["b1"] and inspector.switch.pending is None
    inspector.apply_switch()
    assert inspector.model == "m-old"


def test_a_swap_whose_audit_row_fails_is_done_with_a_warning(tmp_path, inline_swaps):
    """The row fails once the switch is requested: swap_status is "done" with a ``warning`` (before: "failed"), and
    the new model runs."""
    console, inspector, _, closed = one_camera(tmp_path, [])
    disk_fills(console.actions.audit)
    console.actions.swap(str(tmp_path / "b1"), "ann")
    status = console.actions.swap_status
    assert status["state"] == "done" and status["model"] == "m-new" and status["warning"].startswith(NOT_AUDITED)
    inspector.apply_switch()
    assert (inspector.model, inspector.threshold) == ("m-new", 0.05) and closed == []


# ------------------------------------------------------------------------------------------------- swap, several cameras
def test_a_swap_of_two_cameras_whose_audit_rows_fail_switches_both(tmp_path, inline_swaps):
    """Several cameras: the first camera's row failing stopped the loop: camera b kept the old model and its loaded
    backend was never closed nor run. Now every camera switches and the swap is done with a ``warning``."""
    loads, closed = [], []
    console, views = cell_console(tmp_path, StationLinks(load_views=recording_loader(loads, closed)))
    disk_fills(console.actions.audit)
    console.actions.swap_cameras({tmp_path / "a2": ("a",), tmp_path / "b2": ("b",)}, "ann")
    status = console.actions.swap_status
    assert status["state"] == "done" and status["cameras"] == ["a", "b"], status
    assert status["warning"].startswith(NOT_AUDITED) and status["warning"].count(NOT_AUDITED) == 1
    assert views["a"].switch.take().model == "m-a2" and views["b"].switch.take().model == "m-b2"
    assert console.feed.camera_bundles == {"a": tmp_path / "a2", "b": tmp_path / "b2"} and closed == []


def test_a_swap_of_two_cameras_the_audit_log_cannot_take_is_refused(tmp_path, monkeypatch, inline_swaps):
    """Several cameras, read-only output folder: refused before loading; no camera switches."""
    loads, closed = [], []
    console, views = cell_console(tmp_path, StationLinks(load_views=recording_loader(loads, closed)))
    ReadOnly(monkeypatch, audit_path(console))
    with pytest.raises(RecorderError, match="expected a writable log file"):
        console.actions.swap_cameras({tmp_path / "a2": ("a",), tmp_path / "b2": ("b",)}, "ann")
    assert loads == [] and views["a"].switch.take() is None and views["b"].switch.take() is None


# --------------------------------------------------------------------------------------------- alarm and export
@pytest.fixture
def scheduler():
    from line_replay import RecordingSink

    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.line.settings import RejectSettings

    s = RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm"), sinks=RecordingSink(),
                        fault_sinks=RecordingSink("fault"))
    s._raise_alarm("part seq 10 passed the gate uninspected (fail_safe: alarm)")
    yield s
    s.close()


def alarm_console(tmp_path, scheduler, **links):
    console = StationConsole(StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False)),
                             SimpleNamespace(root=tmp_path / "b", threshold=None), links=StationLinks(**links))
    console.attach(SimpleNamespace(model="m", threshold=1.0, switch=ModelSwitch()), None, scheduler, None, None)
    return console


def test_an_alarm_is_not_cleared_when_the_audit_log_cannot_take_it(tmp_path, monkeypatch, scheduler):
    """Read-only output folder: the acknowledgement is refused and the alarm stays latched (before: cleared, and
    answered as failed); a row failing after the clear: cleared and answered as such, with a ``warning``."""
    console = alarm_console(tmp_path, scheduler)
    read_only = ReadOnly(monkeypatch, audit_path(console))
    r = api(console).post("/api/acknowledge_alarm", json={"who": "ann"})
    assert r.status_code == 400 and "expected a writable log file" in r.json()["error"], r.text
    assert scheduler.alarm is not None

    read_only.on = False
    disk_fills(console.actions.audit)
    r = api(console).post("/api/acknowledge_alarm", json={"who": "ann"})
    assert r.status_code == 200 and r.json()["warning"].startswith(NOT_AUDITED), r.text
    assert "part seq 10" in r.json()["old"] and scheduler.alarm is None


def test_an_export_is_not_made_when_the_audit_log_cannot_take_it(tmp_path, monkeypatch, scheduler):
    """Read-only output folder: no dataset exported; a row failing after the export: its result with a ``warning``."""
    exports = []

    def export(output, dest):
        exports.append(dest)
        return {"dest": str(dest), "summary": "3 parts"}

    console = alarm_console(tmp_path, scheduler, export_reviewed=export)
    read_only = ReadOnly(monkeypatch, audit_path(console))
    with pytest.raises(RecorderError, match="expected a writable log file"):
        console.actions.export_reviewed("ann")
    assert exports == []

    read_only.on = False
    disk_fills(console.actions.audit)
    result = console.actions.export_reviewed("ann")
    assert len(exports) == 1 and result["summary"] == "3 parts" and result["warning"].startswith(NOT_AUDITED)

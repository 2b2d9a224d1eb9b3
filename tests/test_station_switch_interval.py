"""A station shortens the interpreter's GIL switch interval while it runs (at Python's default 5 ms, reject sink
threads woken for their edges waited behind the station's busy Python threads and missed 2 of 3 pulses) and
restores the one it found when it ends, so a station run inside another program (these tests) leaves no trace.
Nothing is timed here: the interval is read where the station stands, in its first step under the lock."""

from __future__ import annotations

import sys
import threading

import pytest

from fair_edge.line.settings import RecordSettings
from fair_edge.station.config import ConsoleSettings, StationConfig

MICROSECONDS = 2e-6   # the interpreter keeps the interval in whole microseconds: a round trip may lose one


class Seen(Exception):
    """Raised by the stand-in for the station's first step: the run ends there (its exit path restores)."""


@pytest.fixture()
def interval():
    """Python's default interval around each test, whatever a test leaves behind."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def _config(tmp_path, **kw) -> StationConfig:
    out = tmp_path / "out"
    return StationConfig(bundle=tmp_path / "bundle", output=out, record=RecordSettings(dir=out),
                         console=ConsoleSettings(enabled=False), **kw)


def _interval_inside_run_station(tmp_path, monkeypatch) -> float:
    from fair_edge.station import run as run_module

    seen: list[float] = []

    def read_bundle(_path):
        seen.append(sys.getswitchinterval())
        raise Seen

    monkeypatch.setattr(run_module, "read_bundle", read_bundle)
    with pytest.raises(Seen):
        run_module.run_station(_config(tmp_path), threading.Event(), max_frames=1)
    return seen[0]


def test_run_station_sets_the_short_switch_interval_while_it_runs_and_restores_it(tmp_path, monkeypatch, interval):
    from fair_edge.station.run import SWITCH_INTERVAL_S

    assert SWITCH_INTERVAL_S < 0.005
    assert _interval_inside_run_station(tmp_path, monkeypatch) == pytest.approx(SWITCH_INTERVAL_S, abs=MICROSECONDS)
    assert sys.getswitchinterval() == pytest.approx(0.005, abs=MICROSECONDS)


def test_a_shorter_interval_set_by_the_program_around_the_station_is_kept_and_restored(tmp_path, monkeypatch,
                                                                                      interval):
    sys.setswitchinterval(0.0001)
    assert _interval_inside_run_station(tmp_path, monkeypatch) == pytest.approx(0.0001, abs=MICROSECONDS)
    assert sys.getswitchinterval() == pytest.approx(0.0001, abs=MICROSECONDS)


def test_a_station_of_several_cameras_sets_it_too_and_restores_it(tmp_path, monkeypatch, interval):
    from fair_edge.station import cell as cell_module
    from fair_edge.station.run import SWITCH_INTERVAL_S
    from fair_edge.station.views import ViewSettings

    seen: list[float] = []

    def models(*_args, **_kwargs):
        seen.append(sys.getswitchinterval())
        raise Seen

    monkeypatch.setattr(cell_module, "CellModels", models)
    cfg = _config(tmp_path, cameras=(ViewSettings("a", str(tmp_path)), ViewSettings("b", str(tmp_path))))
    with pytest.raises(Seen):
        cell_module.run_cell(cfg, threading.Event(), max_frames=1)
    assert seen == [pytest.approx(SWITCH_INTERVAL_S, abs=MICROSECONDS)] and sys.getswitchinterval() == pytest.approx(0.005, abs=MICROSECONDS)


def test_two_stations_overlapping_in_one_process_keep_it_short_until_the_last_ends(interval):
    """The first station to end must not put 5 ms back under the other; the last restores what the first found."""
    from fair_edge.station.run import SWITCH_INTERVAL_S, station_switch_interval

    first, second = station_switch_interval(), station_switch_interval()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)   # the first ends while the second still runs
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S, abs=MICROSECONDS)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(0.005, abs=MICROSECONDS)

"""A station stopped while a bundle loads (``systemctl reload`` then ``stop`` a moment later): the reload's load ran
on a daemon swap thread nobody joined, so with ``--backend auto`` (seconds of OpenVINO / ONNX Runtime timing) the
interpreter exited while that thread was in native code and the station aborted (SIGABRT, rc 134, "terminate called
without an active exception") after its summary. Now ``StationConsole.close`` joins the swap thread (a bounded wait,
logged when it runs out), and a swap that finishes loading after the close switches no camera and closes what it
loaded. The loads are gated on events, never slept on. Also: the console's counters carry the recorder's
``images_failed`` (NG parts whose frame or map could not be drawn)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from fair_edge.console import station_hook
from fair_edge.console.actions import StationLinks
from fair_edge.console.refusals import StationStopping
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.station_hook import StationConsole
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.station.config import StationConfig, load_station

WAIT_S = 30.0   # a guard against a hang only: every wait below ends on an event long before


class GatedLoader:
    """``StationLinks.load_model`` whose load blocks until ``release`` is set (an engine timing its backends);
    ``loading`` is set once it started. The change it returns has a backend that records its close."""

    def __init__(self) -> None:
        self.loading, self.release, self.closed = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, bundle, threshold=None, regions=None) -> ModelChange:
        self.loading.set()
        assert self.release.wait(WAIT_S)
        backend = SimpleNamespace(close=self.closed.set)
        return ModelChange(scorer=SimpleNamespace(reason="new", backend=backend), threshold=threshold,
                           model=Path(bundle).name, bundle=SimpleNamespace(root=Path(bundle), threshold=None))


def station_console(tmp_path, links):
    """A one-camera console over a station file and a stand-in decider (model m0, its own switch)."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(tmp_path / "b1"), "decision": {"threshold": 0.5}}))
    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False), source_file=station)
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b0", threshold=None), links=links)
    decider = SimpleNamespace(model="m0", threshold=0.5, switch=ModelSwitch())
    console.attach(decider, None, None, None, None)
    return console, decider


def test_close_waits_for_a_loading_swap_which_then_switches_nothing_and_closes_its_backend(tmp_path, caplog):
    """SIGHUP's load is still in the backend when the station stops: close() now waits for it (the thread is joined
    before close returns), the loaded bundle is not switched to and its backend is closed."""
    loader = GatedLoader()
    console, decider = station_console(tmp_path, StationLinks(load_model=loader, load_station=load_station))
    console.reload_bundle("SIGHUP")
    assert loader.loading.wait(WAIT_S)
    swapper = console.actions.swaps._swapper
    closer = threading.Thread(target=console.close, name="test-close")
    try:
        with caplog.at_level(logging.WARNING, logger="fair_edge.console"):
            closer.start()
            assert console.actions.swaps._closed.wait(WAIT_S)   # close() is under way ...
            assert closer.is_alive() and swapper.is_alive()   # ... and waits for the load it cannot cut short
            loader.release.set()
            closer.join(WAIT_S)
    finally:
        loader.release.set()
    assert not closer.is_alive() and not swapper.is_alive()   # joined before close returned
    assert decider.switch.pending is None   # no switch after close
    assert loader.closed.is_set()   # the half-loaded backend no camera will run
    assert console.actions.swap_status["state"] == "failed"
    assert "the station is stopping" in console.actions.swap_status["error"]
    assert not [a for a in console.actions.audit.read() if a.get("action") == "swap"]
    assert "bundle swap dropped" in caplog.text


def test_close_logs_a_swap_still_loading_when_its_bounded_wait_runs_out(tmp_path, caplog, monkeypatch):
    """A load that outlasts SWAP_JOIN_S does not hold the stop forever: close returns, saying so in the log; the load,
    released afterwards, still switches nothing."""
    monkeypatch.setattr(station_hook, "SWAP_JOIN_S", 0.0)
    loader = GatedLoader()
    console, decider = station_console(tmp_path, StationLinks(load_model=loader, load_station=load_station))
    console.reload_bundle("SIGHUP")
    assert loader.loading.wait(WAIT_S)
    swapper = console.actions.swaps._swapper
    try:
        with caplog.at_level(logging.WARNING, logger="fair_edge.console"):
            console.close()
        assert "still loading" in caplog.text and "b1" in caplog.text
    finally:
        loader.release.set()
        swapper.join(WAIT_S)
    assert not swapper.is_alive() and decider.switch.pending is None and loader.closed.is_set()


def test_no_swap_or_reload_starts_once_the_console_is_closed(tmp_path, caplog):
    """A SIGHUP landing while the station stops loads nothing (a reload thread that starts its swap after close)."""
    loader = GatedLoader()
    console, decider = station_console(tmp_path, StationLinks(load_model=loader, load_station=load_station))
    console.close()
    with pytest.raises(StationStopping, match="the station is stopping"):
        console.actions.swap(str(tmp_path / "b1"), "ann")
    with caplog.at_level(logging.WARNING, logger="fair_edge.console"):
        console.reload_bundle("SIGHUP")
    assert "bundle reload (SIGHUP) not started" in caplog.text and "bundle reload refused" not in caplog.text
    assert not loader.loading.is_set() and console.actions.swap_status["state"] == "idle"


def test_a_swap_done_before_close_still_switches(tmp_path):
    """The guard stops only what close() cuts across: a load finished before it switches as before."""
    loader = GatedLoader()
    loader.release.set()
    console, decider = station_console(tmp_path, StationLinks(load_model=loader, load_station=load_station))
    console.reload_bundle("SIGHUP")
    console.actions.swaps._swapper.join(WAIT_S)
    console.close()
    assert decider.switch.take().model == "b1" and not loader.closed.is_set()


def test_the_console_counters_carry_the_recorders_images_failed(tmp_path):
    """The recorder counts NG parts whose frame or map could not be drawn (``images_failed``); the console's
    counters did not carry it, so the live state said nothing of NG parts with no image. Now they do, read live."""
    from fair_edge.console.feed import StationFeed
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.records import Frame, Verdict

    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    assert feed.counters()["images_failed"] == 0   # no recorder yet
    broken = Frame(1, 1.0, np.zeros((48, 64, 5), np.float64), "test")   # a frame the overlay refuses
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="r1") as rec:
        feed.attach(None, None, None, rec)
        assert feed.counters()["images_failed"] == 0
        rec.record(broken, Verdict(1, 1.0, 0.9, 0.5, True, 1.01, "test"), np.ones((12, 16), np.float32))
        assert rec.flush()
        counters = feed.counters()
    assert (counters["images_failed"], counters["write_errors"], counters["rows_logged"]) == (1, 0, 1)

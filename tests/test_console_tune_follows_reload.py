"""The tune page after a SIGHUP reload that turns region rules on, the threshold unchanged: rules then decide the
verdict, and the page should say so (as it does when rules decide from the start, test_console_rules_decide). It
re-projected only when the polled threshold changed, so the old false-reject projection stayed on screen (and
Apply... open) until the next Project or Apply. Now the live state says, per camera, whether rules decide
(``rules_decide``: the model in force's or the pending reload's, read on every poll), and the page re-projects when
that, the threshold or the model changes.

Here: /api/state's ``rules_decide`` follows a reload both ways (the API the page polls); the page itself in a
headless browser: test_console_tune_follows_reload_browser.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from fair_edge.console.actions import StationLinks
from fair_edge.console.threshold_refusals import rules_decide_note
from fair_edge.runtime.hotswap import ModelChange
from fair_edge.station.config import load_station
from inline_swaps import inline_swaps  # noqa: F401 (autouse fixtures: a reload's swap is done when it returns)
from test_console_units import api, one_camera_console, verdict

RULES = {"default": {"min_area_px": 1}}   # a rule that can fire: the rules decide


def write_station(path: Path, regions: dict | None) -> None:
    """The station file: bundle b, threshold 1.0, and ``regions`` (None: no regions: section)."""
    data = {"bundle": str(path.parent / "b"), "decision": {"threshold": 1.0}}
    path.write_text(yaml.safe_dump(data if regions is None else {**data, "regions": regions}))


def reloading_console(tmp_path):
    """A one-camera console over a station file without regions (the score decides), whose reload loads model m1
    again at the file's threshold, and 40 recent parts (scores 0.0 .. 2.0). Returns (console, inspector, station)."""
    station = tmp_path / "station.yaml"
    write_station(station, None)

    def load_model(bundle, threshold=None, regions=None):
        return ModelChange(scorer=SimpleNamespace(reason="reloaded", backend=SimpleNamespace(close=lambda: None)),
                           threshold=threshold, model="m1", bundle=SimpleNamespace(root=Path(bundle), threshold=None))

    console, inspector = one_camera_console(tmp_path, StationLinks(load_station=load_station, load_model=load_model),
                                            station_file=station)
    for seq, score in enumerate(np.linspace(0.0, 2.0, 40)):
        console.observe(None, verdict(seq, float(score), ng=bool(score > 1.0)), None)
    return console, inspector, station


def reload_with(console, station: Path, regions: dict | None) -> None:
    """Edit the station file's regions and reload it (SIGHUP's reload, its swap run inline)."""
    write_station(station, regions)
    console.reload_bundle("SIGHUP")
    assert console.actions.swap_status["state"] == "done", console.actions.swap_status


def polled(console) -> dict:
    """The tune page's two requests: /api/state (its poll) and /api/tune (its projection at the threshold in force),
    each from a client of its own (the server's state snapshot is rebuilt at most ``live_fps`` times a second: a
    poll a second later sees a reload, a request in the same millisecond need not)."""
    state, tune = api(console).get("/api/state"), api(console).get("/api/tune")
    assert state.status_code == tune.status_code == 200, (state.text, tune.text)
    return {"/api/state": state.json(), "/api/tune": tune.json()}


def test_the_live_state_says_whether_rules_decide_and_follows_a_reload_both_ways(tmp_path):
    """Before: /api/state named the model and its threshold only, so nothing the page polled changed on a reload
    that turned rules on at the same threshold."""
    console, inspector, station = reloading_console(tmp_path)
    before = polled(console)
    assert before["/api/state"]["model"]["rules_decide"] is False
    assert "proposed" in before["/api/tune"]

    reload_with(console, station, RULES)   # pending until the next batch: its rules decide from then on
    after = polled(console)
    assert after["/api/state"]["model"]["rules_decide"] is True
    assert after["/api/state"]["model"]["threshold"] == before["/api/state"]["model"]["threshold"] == 1.0
    assert after["/api/tune"] == {"current": 1.0, "rules_decide": rules_decide_note("")}

    taken = inspector.switch.take()        # the loop takes the change: the rules in force now
    inspector.regions = SimpleNamespace(settings=taken.regions)
    assert polled(console)["/api/state"]["model"]["rules_decide"] is True

    reload_with(console, station, None)    # the rules removed again: the threshold decides
    back = polled(console)
    assert back["/api/state"]["model"]["rules_decide"] is False and "proposed" in back["/api/tune"]

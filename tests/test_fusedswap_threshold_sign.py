"""A threshold <= 0 on a single bundle makes every part NG: its scores are never below 0 (``tuning.scores_below_zero``).
The console refused one ("expected a finite number > 0"), but the station took it from ``fair-edge run --threshold
-0.5`` (33 of 33 normal parts NG in the audit), and a ``--threshold`` set for a fused bundle, kept over a SIGHUP
reload that moved the station to a single bundle, ran there. ``decide_threshold`` (start, swap and reload) now
refuses it by the console's own check and wording, naming the bundle, why and the fix; a fused bundle takes it.
"""

from __future__ import annotations

import functools
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.console import swaps as swaps_module
from fair_edge.console.actions import StationLinks
from fair_edge.console.station_hook import StationConsole
from fair_edge.console.tuning import check_threshold
from fair_edge.errors import ConfigError
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import model_id
from fair_edge.station.bundles import load_change, open_scorer
from fair_edge.station.config import ConsoleSettings, StationConfig
from fair_edge.station.decision import decide_threshold
from fair_edge.station.inspector import Inspector
from inline_swaps import InlineThread

STATION_WORDS = "decision.threshold / --threshold: expected a finite number > 0, found"


@pytest.mark.parametrize("value", [-0.5, 0.0])
@pytest.mark.parametrize("roi", [None, np.ones((32, 32), np.float32)], ids=["image score", "roi"])
def test_a_single_bundle_refuses_a_threshold_at_or_below_zero_in_the_consoles_words(station_bundles, value, roi):
    plain = station_bundles[0]
    with pytest.raises(ConfigError) as refused:
        decide_threshold(value, plain, roi)
    text = str(refused.value)
    with pytest.raises(ConfigError) as console:
        check_threshold(value)   # the console's check: one rule, one wording
    assert str(console.value) == f"threshold: expected a finite number > 0, found {value}"
    assert text.startswith(f"{STATION_WORDS} {value}: bundle {plain.root} is a single model's, whose scores are never "
                           "below 0, so a threshold <= 0 would reject every part."), text
    assert "leave it unset for the bundle's own" in text and "(its calibrated one: " in text
    assert decide_threshold(0.25, plain, roi).value == 0.25


def test_a_fused_bundle_takes_a_threshold_below_zero(fused_station_bundle):
    assert decide_threshold(-0.5, fused_station_bundle, None).value == -0.5


def test_fair_edge_run_refuses_a_negative_threshold_on_a_single_bundle(station_bundles, conveyor_dir, tmp_path):
    """Exit 2 before any frame is inspected (was: ran, every part NG)."""
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["run", "--bundle", str(station_bundles[0].root), "--source", str(conveyor_dir),
                                 "--threshold", "-0.5", "--max-frames", "3", "--console", "off",
                                 "--backend", "onnxruntime", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert f"{STATION_WORDS} -0.5" in " ".join(r.output.split())
    assert not (out / "verdicts.jsonl").exists()


def test_a_threshold_below_zero_kept_over_a_swap_to_a_single_bundle_is_refused(
        fused_station_bundle, station_bundles, tmp_path, monkeypatch):
    """A SIGHUP reload hands its swap the --threshold it keeps (``StationConsole._threshold_over``): set for the fused
    bundle in force, it is refused for the single bundle the reload would load; the fused model runs on."""
    monkeypatch.setattr(swaps_module, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))
    scorer = open_scorer(fused_station_bundle, "onnxruntime")
    try:
        inspector = Inspector(None, scorer, -0.3, model=model_id(fused_station_bundle))
        cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False))
        links = StationLinks(load_model=functools.partial(load_change, backend="onnxruntime", roi_path=None))
        console = StationConsole(cfg, fused_station_bundle, links=links)
        console.attach(inspector, None, None, None, None)
        console.actions.swap(str(station_bundles[0].root), "SIGHUP", threshold=-0.3)
        status = console.actions.swap_status
        assert status["state"] == "failed" and status["error"].startswith(f"{STATION_WORDS} -0.3: bundle "), status
        assert inspector.switch.pending is None and inspector.model == model_id(fused_station_bundle)
    finally:
        close_scorer(scorer)

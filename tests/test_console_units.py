"""Console building blocks without a station: settings, drift statistic, review journal, threshold
projection and station-file writing, fault board, model switch, frame quality filters and collect."""


import cv2
import numpy as np
import pytest
import yaml

from fair_edge.training.collect import Collector, QualitySettings, export_reviewed, frame_problem
from fair_edge.console.journal import Journal
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.tuning import projection, split_scores, write_station_threshold
from fair_edge.console.drift import DriftWatch, psi
from fair_edge.errors import ConfigError
from fair_edge.station.faults import FaultBoard
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.records import Verdict
from fair_edge.station.config import StationConfig, load_station


def test_console_section_is_validated_like_the_others():
    assert StationConfig.from_dict({}).console == ConsoleSettings()
    assert StationConfig.from_dict({"console": {"port": 9000, "enabled": False}}).console.port == 9000
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        StationConfig.from_dict({"console": {"prot": 1}})
    with pytest.raises(ConfigError, match="console.token: expected a token"):
        StationConfig.from_dict({"console": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="at least 12"):
        StationConfig.from_dict({"console": {"host": "0.0.0.0", "token": "short"}})
    assert StationConfig.from_dict({"console": {"host": "0.0.0.0", "token": "x" * 16}}).console.token == "x" * 16
    with pytest.raises(ConfigError, match="console.port"):
        StationConfig.from_dict({"console": {"port": 70000}})


def test_psi_is_small_for_the_same_distribution_and_alarms_on_a_shift():
    rng = np.random.default_rng(0)
    q = np.percentile(rng.normal(0, 1, 5000), np.arange(101))
    assert psi(rng.normal(0, 1, 1000), q) < 0.05
    assert psi(rng.normal(1.0, 1, 1000), q) > 0.25 and psi(rng.normal(0, 2.0, 1000), q) > 0.25
    watch = DriftWatch(q, window=200, min_parts=50, level=0.25)
    for i in range(49):
        watch.observe(i, 0.0)
    assert watch.state().psi is None and "waiting" in watch.state().note
    for i, s in enumerate(rng.normal(1.5, 1, 200)):
        watch.observe(100 + i, float(s))
    assert watch.state().alarm
    assert DriftWatch((), 10, 10).state().note.startswith("the bundle stores no calibration")


def test_journal_is_append_only_and_survives_a_torn_line(tmp_path):
    journal = Journal(tmp_path / "reviews.jsonl")
    journal.append({"seq": 1, "label": "defect"})
    with open(journal.path, "ab") as f:
        f.write(b'{"seq": 2, "lab')           # power cut mid-write
    journal.append({"seq": 3, "label": "miss"})
    entries = journal.read()
    assert [e["seq"] for e in entries] == [1, 3] and journal.torn_lines == 1
    assert entries[0]["time"].endswith("Z")


def _v(seq, score, ng):
    return Verdict(seq, 0.0, score, 0.5, ng, 0.01)


def test_threshold_projection_counts_reviewed_parts_only():
    recent = [_v(1, 0.1, False), _v(2, 0.3, False), _v(3, 0.6, True), _v(4, 0.9, True), _v(5, 0.4, False),
              _v(6, 0.7, True)]
    normal, defect, unreviewed = split_scores(recent, {3: "false_reject", 4: "defect", 5: "miss"})
    assert sorted(normal) == [0.1, 0.3, 0.6] and sorted(defect) == [0.4, 0.9] and unreviewed == 1
    p = projection(normal, defect, 0.35)
    assert p["false_reject_rate"] == pytest.approx(1 / 3) and p["catch_rate"] == 1.0


def test_station_file_gets_the_new_threshold_and_stays_loadable(tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump({"bundle": "b", "decision": {"roi": "roi.png"}, "console": {"port": 9001}}))
    write_station_threshold(path, 0.25, load_station)
    cfg = load_station(path)
    assert cfg.threshold == 0.25 and cfg.roi.name == "roi.png" and cfg.console.port == 9001


def test_fault_board_holds_the_output_while_any_reason_is_active():
    calls = []

    class Target:
        def fault(self, active, reason=""):
            calls.append((active, reason))

    board = FaultBoard(Target())
    camera, drift = board.channel("camera"), board.channel("drift")
    camera.fault(True, "camera reconnecting")
    drift.fault(True, "drift: PSI 0.4")
    camera.fault(False)
    assert calls[-1] == (True, "drift: PSI 0.4")       # camera back, drift still holds it
    drift.fault(False)
    assert calls[-1] == (False, "")


def test_model_switch_merges_requests_and_closes_a_replaced_backend():
    closed = []

    class Backend:
        def close(self):
            closed.append(self)

    class Choice:
        def __init__(self):
            self.backend = Backend()

    switch = ModelSwitch()
    first, second = Choice(), Choice()
    switch.request(ModelChange(scorer=first, threshold=0.3, model="a"))
    switch.request(ModelChange(threshold=0.4))
    switch.request(ModelChange(scorer=second, threshold=0.5, model="b"))
    change = switch.take()
    assert change.scorer is second and change.threshold == 0.5 and closed == [first.backend]
    assert switch.take() is None
    switch.request(ModelChange(threshold=0.7))
    assert switch.take() == ModelChange(threshold=0.7)


def _plate(seed, size=96):
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 150, np.uint8)
    for _ in range(12):
        x, y = rng.integers(0, size, 2)
        cv2.circle(img, (int(x), int(y)), int(rng.integers(3, 12)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return img


def test_collector_skips_dark_blurred_and_duplicate_frames(tmp_path):
    q = QualitySettings()
    sharp = _plate(0)
    assert frame_problem(sharp, q) == ""
    assert frame_problem((sharp // 12).astype(np.uint8), q) == "badly_exposed"
    assert frame_problem(np.full_like(sharp, 255), q) == "badly_exposed"
    assert frame_problem(cv2.GaussianBlur(sharp, (0, 0), 6), q) == "blurred"
    c = Collector(tmp_path / "out", q)
    results = [c.add(sharp, "a"), c.add(sharp.copy(), "b"), c.add(_plate(1), "c"), c.add(cv2.GaussianBlur(sharp, (0, 0), 6), "d")]
    assert results == ["saved", "duplicate", "saved", "blurred"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


def test_export_reviewed_sorts_parts_into_an_mvtec_layout(tmp_path):
    station = tmp_path / "station"
    (station / "review").mkdir(parents=True)
    journal = Journal(station / "reviews.jsonl")
    for seq, label in ((1, "false_reject"), (2, "defect"), (3, "miss"), (4, "defect")):
        rel = f"review/r_{seq:08d}_{label}.png"
        cv2.imwrite(str(station / rel), _plate(seq))
        journal.append({"run": "r", "seq": seq, "label": label, "image": rel})
    journal.append({"run": "r", "seq": 4, "label": "false_reject", "image": "review/r_00000004_defect.png"})  # corrected
    result = export_reviewed(station, tmp_path / "dataset")
    assert result["train/good"]["saved"] == 2 and result["test/defect"]["saved"] == 2
    assert len(list((tmp_path / "dataset" / "train" / "good").glob("*.png"))) == 2


def test_a_reviewed_part_is_exported_whatever_its_sharpness_and_counted_in_words(tmp_path):
    """A review is a label a person gave: a soft (Laplacian variance under blur_min), dark or repeated
    image of a reviewed part is exported all the same; the command prints its counts as words."""
    from typer.testing import CliRunner

    from fair_edge.cli import app

    station = tmp_path / "station"
    (station / "review").mkdir(parents=True)
    journal = Journal(station / "reviews.jsonl")
    soft = cv2.GaussianBlur(_plate(5), (0, 0), 6)
    assert frame_problem(soft, QualitySettings()) == "blurred"
    images = {1: soft, 2: soft.copy(), 3: (_plate(6) // 12).astype(np.uint8), 4: _plate(7)}
    for seq, label in ((1, "defect"), (2, "false_reject"), (3, "miss"), (4, "defect")):
        rel = f"review/r_{seq:08d}_{label}.png"
        cv2.imwrite(str(station / rel), images[seq])
        journal.append({"run": "r", "seq": seq, "label": label, "image": rel})
    journal.append({"run": "r", "seq": 5, "label": "defect", "image": "review/gone.png"})
    result = export_reviewed(station, tmp_path / "dataset")
    assert result["test/defect"]["saved"] == 3 and result["train/good"]["saved"] == 1 and result["no_image"] == 1
    assert len(list((tmp_path / "dataset" / "test" / "defect").glob("*.png"))) == 3
    run = CliRunner().invoke(app, ["collect", str(tmp_path / "again"), "--reviewed", str(station)])
    assert run.exit_code == 0, run.output
    text = " ".join(run.output.split())
    assert "{" not in text and "3 defects and misses to test/defect" in text, text
    assert "1 false reject to train/good" in text and "1 reviewed part without an image" in text, text


def test_collect_command_counts_what_it_skips(tmp_path):
    from typer.testing import CliRunner

    from fair_edge.cli import app

    src = tmp_path / "cam"
    src.mkdir()
    frames = [_plate(0), _plate(0), np.zeros((96, 96, 3), np.uint8), cv2.GaussianBlur(_plate(2), (0, 0), 6), _plate(3)]
    for i, f in enumerate(frames):
        cv2.imwrite(str(src / f"{i:03d}.png"), f)
    result = CliRunner().invoke(app, ["collect", str(tmp_path / "train"), "--source", str(src)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "saved 2" in text and "1 badly exposed" in text and "1 blurred" in text and "1 near-duplicates" in text
    assert len(list((tmp_path / "train").glob("*.png"))) == 2
    bad = CliRunner().invoke(app, ["collect", str(tmp_path / "x"), "--source", str(src), "--camera", "0"])
    assert bad.exit_code == 2 and "exactly one of" in bad.output


def test_run_help_lists_the_console_flags():
    from typer.testing import CliRunner

    from fair_edge.cli import app

    result = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert "--console" in result.output and "--console-port" in result.output


def test_drift_reaches_the_metrics(tmp_path):
    from types import SimpleNamespace

    from fair_edge.console.station_hook import StationConsole
    from fair_edge.line.metrics import Metrics
    from fair_edge.line.settings import MetricsSettings

    rng = np.random.default_rng(1)
    bundle = SimpleNamespace(root=tmp_path, threshold=SimpleNamespace(
        normal_quantiles=tuple(np.percentile(rng.normal(0, 1, 2000), np.arange(101)))))
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False, drift_min_parts=20))
    console = StationConsole(cfg, bundle)
    for i, s in enumerate(rng.normal(2.0, 1, 100)):
        console.observe(None, Verdict(i, 0.0, float(s), 9.0, False, 0.01), None)
    metrics = Metrics(MetricsSettings(port=0))
    metrics.watch("drift", console.drift_metrics, gauges=("psi", "alarm", "parts"))
    text = metrics.render().decode()
    assert "fair_edge_drift_alarm 1.0" in text and "fair_edge_drift_parts 100.0" in text
    psi_line = next(line for line in text.splitlines() if line.startswith("fair_edge_drift_psi "))
    assert float(psi_line.split()[1]) > 0.25


def test_drift_alarm_raises_the_fault_output_when_configured(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from fair_edge.console import station_hook
    from fair_edge.console.station_hook import StationConsole

    calls = []
    target = SimpleNamespace(fault=lambda active, reason="": calls.append((active, reason)))
    rng = np.random.default_rng(2)
    bundle = SimpleNamespace(root=tmp_path, threshold=SimpleNamespace(
        normal_quantiles=tuple(np.percentile(rng.normal(0, 1, 2000), np.arange(101)))))
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False, drift_min_parts=20, drift_fault=True))
    console = StationConsole(cfg, bundle, fault=target)
    monkeypatch.setattr(station_hook, "DRIFT_EVERY_S", 0.0)
    for i, s in enumerate(rng.normal(0, 1, 100)):
        console.observe(None, Verdict(i, 0.0, float(s), 9.0, False, 0.01), None)
    console.tick()
    assert calls == []
    for i, s in enumerate(rng.normal(3, 1, 500)):
        console.observe(None, Verdict(100 + i, 0.0, float(s), 9.0, False, 0.01), None)
    console.tick()
    assert calls and calls[-1][0] is True and calls[-1][1].startswith("drift: PSI")


class TwoCameras:
    """``CellCounters`` of two cameras "a" and "b" viewing one part (what ``station.cell.CellCounters`` gives)."""

    def cameras(self) -> dict:
        return {c: {"frames_in": 0, "inspected": 0, "ng": 0, "dropped": 0, "lost": 0, "state": "running",
                    "end_reason": ""} for c in ("a", "b")}

    def parts(self) -> dict:
        return {"parts": 0, "ng": 0, "ok": 0, "not_inspected": 0, "late_views": 0}


def calibrated(rng, mean: float):
    """A ``Threshold`` stand-in whose calibration percentiles (101,) are those of N(mean, 1)."""
    from types import SimpleNamespace

    return SimpleNamespace(normal_quantiles=tuple(np.percentile(rng.normal(mean, 1, 2000), np.arange(101))))


def two_camera_console(tmp_path, rng, calls):
    """A console of two cameras: "a" calibrated on N(0, 1) scores, "b" on N(5, 1); the fault output records
    into ``calls``; drift needs 20 parts over the last 500."""
    from types import SimpleNamespace

    from fair_edge.console.station_hook import StationConsole

    bundle = SimpleNamespace(root=tmp_path, threshold=calibrated(rng, 0.0))
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False, drift_min_parts=20, drift_fault=True))
    target = SimpleNamespace(fault=lambda active, reason="": calls.append((active, reason)))
    console = StationConsole(cfg, bundle, fault=target,
                             calibrations={"a": calibrated(rng, 0.0), "b": calibrated(rng, 5.0)})
    console.attach_cell(TwoCameras(), {"a": tmp_path / "bundle_a", "b": tmp_path / "bundle_b"})
    return console


def feed_scores(console, camera: str, scores, first_seq: int) -> None:
    for i, s in enumerate(scores):
        console.observe(None, Verdict(first_seq + i, 0.0, float(s), 99.0, False, 0.01, camera=camera), None)


def test_drift_of_the_second_camera_alarms_names_it_and_clears(tmp_path, monkeypatch):
    """Only camera b's scores move (far above its own calibration): b's watch alarms, a's does not; the page's
    combined state is b's, named; tick raises the fault output naming b, and clears it once b is back."""
    from fair_edge.console import station_hook
    from fair_edge.console.actions import StationActions
    from fair_edge.console.views import live_state
    from fair_edge.line.metrics import Metrics
    from fair_edge.line.settings import MetricsSettings

    monkeypatch.setattr(station_hook, "DRIFT_EVERY_S", 0.0)   # every tick checks: no clock in the test
    rng, calls = np.random.default_rng(3), []
    console = two_camera_console(tmp_path, rng, calls)
    feed_scores(console, "a", rng.normal(0, 1, 500), 0)
    feed_scores(console, "b", rng.normal(5, 1, 500), 0)   # each camera scored like its own calibration
    console.tick()
    assert calls == [] and not console.feed.drift.state().alarm

    feed_scores(console, "b", rng.normal(9, 1, 500), 500)   # a dirty lens on b
    states = console.feed.drift.states()
    assert states["b"].alarm and states["b"].psi > 0.25
    assert not states["a"].alarm and states["a"].psi < 0.1
    state = live_state(console.feed, StationActions(console.feed, None))
    assert state["drift"]["alarm"] and state["drift"]["camera"] == "b" and state["drift"]["psi"] == states["b"].psi
    assert {c["name"]: c["drift"]["alarm"] for c in state["cameras"]} == {"a": False, "b": True}
    assert console.drift_metrics() == {"psi": states["b"].psi, "alarm": 1, "parts": 500}
    metrics = Metrics(MetricsSettings(port=0))
    metrics.watch_by("drift_camera", "camera", console.camera_drift_metrics)
    scraped = metrics.render().decode()
    assert 'fair_edge_drift_camera_alarm{camera="a"} 0.0' in scraped
    assert 'fair_edge_drift_camera_alarm{camera="b"} 1.0' in scraped
    assert f'fair_edge_drift_camera_psi{{camera="b"}} {states["b"].psi}' in scraped
    assert 'fair_edge_drift_camera_parts{camera="a"} 500.0' in scraped
    console.tick()
    assert calls == [(True, f"drift: camera b PSI {states['b'].psi:.3f} >= 0.25")]
    console.tick()
    assert len(calls) == 1   # told once, not every tick

    feed_scores(console, "b", rng.normal(5, 1, 500), 1000)   # lens cleaned: b's window is normal again
    console.tick()
    assert calls[-1] == (False, "") and not console.feed.drift.state().alarm


def test_a_swap_resets_only_its_camera_and_tuning_uses_that_cameras_calibration(tmp_path):
    """Swapping camera b's bundle restarts b's drift watch on the new bundle's calibration; a's keeps its parts.
    Tuning camera b draws b's calibration distribution, not a's."""
    from types import SimpleNamespace

    from fair_edge.console import tuning
    from fair_edge.console.actions import StationActions, StationLinks

    rng = np.random.default_rng(4)
    console = two_camera_console(tmp_path, rng, [])
    feed = console.feed
    feed_scores(console, "a", rng.normal(0, 1, 50), 0)
    feed_scores(console, "b", rng.normal(5, 1, 50), 0)
    views = {c: SimpleNamespace(model=f"m-{c}", threshold=t, switch=ModelSwitch()) for c, t in (("a", 3.0), ("b", 8.0))}
    console.attach(SimpleNamespace(views=views), None, None, None, None)
    quantiles_b = np.array(feed.drift.watch("b").quantiles)

    tuned = StationActions(feed, None).tune(None, camera="b")
    normal = np.array([v.score for v in feed.recent if v.camera == "b"])
    assert tuned["camera"] == "b" and tuned["current"] == 8.0
    assert tuned["histogram"] == tuning.histograms(normal, np.array([]), quantiles_b, 8.0)

    new = calibrated(rng, 20.0)
    change = ModelChange(model="m-new", threshold=21.0, bundle=SimpleNamespace(root=tmp_path / "new", threshold=new),
                         calibration=new)
    links = StationLinks(load_views=lambda bundle, cameras, thresholds: {c: change for c in cameras})
    StationActions(feed, None, links)._load_views({tmp_path / "new": ("b",)}, "ann", {})   # the swap thread's work
    states = feed.drift.states()
    assert states["a"].parts == 50 and states["b"].parts == 0
    assert tuple(feed.drift.watch("b").quantiles) == new.normal_quantiles
    assert tuple(feed.drift.watch("a").quantiles) != new.normal_quantiles
    assert feed.camera_bundles["b"] == tmp_path / "new" and feed.bundle_path == tmp_path   # a's bundle leads


def test_the_live_overlay_of_a_map_over_part_of_the_frame_keeps_the_frame_around_it():
    """The console's JPEG of a map placed on the frame (NaN outside a tiled model's rectangle): the heat map inside,
    the frame around it, as the NG images show it; a map of NaN only is no overlay, not an error."""
    from fair_edge.console.render import overlay_jpeg

    image = np.full((64, 64, 3), 128, np.uint8)
    amap = np.full((32, 32), np.nan, np.float32)
    amap[:, 16:] = 1.0
    out = cv2.imdecode(np.frombuffer(overlay_jpeg(image, amap, threshold=0.5), np.uint8), cv2.IMREAD_COLOR)
    left, right = out[:, :28].astype(int), out[:, 36:].astype(int)
    assert np.abs(left - 128).max() <= 3                          # the frame as captured (JPEG's rounding)
    assert (right[..., 2] - right[..., 0]).mean() > 40            # hot: red over the grey frame
    blank = cv2.imdecode(np.frombuffer(overlay_jpeg(image, np.full((32, 32), np.nan, np.float32), 0.5), np.uint8),
                         cv2.IMREAD_COLOR)
    assert np.abs(blank.astype(int) - 128).max() <= 3

"""Console building blocks without a station: settings, drift statistic, review journal, threshold
projection and station-file writing, fault board, model switch, frame quality filters and collect."""


import io
from dataclasses import replace

import cv2
import numpy as np
import pytest
import yaml

from fair_edge.training.collect import Collector, QualitySettings, export_reviewed, frame_problem
from fair_edge.console.journal import Journal
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.tuning import projection, split_scores, write_station_threshold
from fair_edge.console.drift import DriftState, DriftWatch, Reference, alarm_reason, noise_floor, psi
from fair_edge.errors import ConfigError
from fair_edge.station.faults import FaultBoard
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.records import Frame, Verdict
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
    watch = DriftWatch(Reference(tuple(q), 5000), window=200, min_parts=50, level=0.25)
    for i in range(49):
        watch.observe(i, 0.0)
    assert watch.state().psi is None and "waiting" in watch.state().note
    for i, s in enumerate(rng.normal(1.5, 1, 200)):
        watch.observe(100 + i, float(s))
    assert watch.state().alarm
    assert DriftWatch(Reference(), 10, 10).state().note.startswith("the bundle stores no calibration")


def stable_line_alarms(calibration_normals: int, seeds: int = 200, shift_sd: float = 0.0) -> float:
    """Share of ``seeds`` bundles, each calibrated (``calibrate_threshold``) on ``calibration_normals`` normal
    scores Gamma(4, 0.05) (mean 0.2, sd 0.1), whose drift watch (500 parts, level 0.25) alarms on 500 recent normal
    scores from the same distribution moved by ``shift_sd`` standard deviations."""
    from fair_edge.calibration.threshold import calibrate_threshold

    rng, alarms = np.random.default_rng(7), 0
    for _ in range(seeds):
        watch = DriftWatch(Reference.of(calibrate_threshold(rng.gamma(4, 0.05, calibration_normals))),
                           window=500, min_parts=100, level=0.25)
        for i, s in enumerate(rng.gamma(4, 0.05, 500) + 0.1 * shift_sd):
            watch.observe(("", i), float(s))
        alarms += watch.state().alarm
    return alarms / seeds


def test_a_stable_line_does_not_alarm_on_a_bundle_calibrated_on_few_normals():
    """59 calibration normals (the demo's): their deciles are noisy, so a stable line's PSI is ~0.16 and the
    plain level 0.25 alarmed on ~16 % of bundles, for ever; against max(level, noise floor) <= 3 %."""
    assert stable_line_alarms(59) <= 0.03


def test_a_one_sd_mean_shift_still_alarms_with_few_calibration_normals():
    assert stable_line_alarms(59, shift_sd=1.0) >= 0.9


def test_the_drift_state_shows_the_raw_psi_and_what_it_was_compared_with():
    """psi as computed; noise = 27.88 (1 / parts + 1 / calibration normals); alarm_at = max(level, noise), on the
    page (to_dict) and in the fault output's reason."""
    rng = np.random.default_rng(8)
    calibration = rng.normal(0, 1, 59)
    q = np.percentile(calibration, np.arange(101))
    watch = DriftWatch(Reference(tuple(q), 59), window=500, min_parts=100, level=0.25)
    recent = rng.normal(1.0, 1, 500)
    for i, s in enumerate(recent):
        watch.observe(("", i), float(s))
    state = watch.state()
    assert state.psi == psi(recent, q) and state.noise == pytest.approx(27.88 * (1 / 500 + 1 / 59))
    assert state.noise == noise_floor(500, 59) and state.alarm_at == state.noise > 0.25
    assert state.alarm == (state.psi >= state.alarm_at)
    shown = state.to_dict()
    assert shown["psi"] == state.psi and shown["noise"] == state.noise and shown["alarm_at"] == state.alarm_at
    assert shown["level"] == 0.25
    large = DriftState(0.3, 500, 0.25, True, noise=noise_floor(500, 5000))   # the noise floor below the level
    assert large.alarm_at == 0.25 and DriftState(None, 3, 0.25, False, "waiting").to_dict()["alarm_at"] is None
    assert alarm_reason({"": replace(state, psi=0.612, alarm=True)}) == f"drift: PSI 0.612 >= {state.alarm_at:.3g}"
    assert alarm_reason({"b": large, "c": replace(large, psi=0.3004)}) == \
        "drift: camera b PSI 0.300 >= 0.25, camera c PSI 0.300 >= 0.25"
    no_size = DriftWatch(Reference(tuple(q), 0), 10, 10).state()
    assert no_size.psi is None and "names no size (n_normal 0" in no_size.note


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


def test_collector_counts_a_two_or_four_channel_frame_as_unreadable(tmp_path):
    """A camera's packed (H, W, 2) frame or a BGRA one stopped `fair-edge collect` with an OpenCV error
    (cvtColor's channel check); it is counted as unreadable, as any frame the checks cannot read, and the next
    frame is kept."""
    c = Collector(tmp_path / "out", QualitySettings())
    sharp = _plate(0)
    packed, bgra = np.ascontiguousarray(sharp[:, :, :2]), cv2.cvtColor(sharp, cv2.COLOR_BGR2BGRA)
    assert [c.add(packed, "a"), c.add(bgra, "b"), c.add(sharp, "c")] == ["unreadable", "unreadable", "saved"]
    assert c.counts["unreadable"] == 2 and [p.name for p in (tmp_path / "out").iterdir()] == ["c.png"]


RUN = "20261129T134000Z-3f2a"   # a run id as the station writes it (records.new_run_id): the only runs an export of
                                # reviewed parts takes (training.collect.RUN_ID)


def test_export_reviewed_sorts_parts_into_an_mvtec_layout(tmp_path):
    station = tmp_path / "station"
    (station / "review").mkdir(parents=True)
    journal = Journal(station / "reviews.jsonl")
    for seq, label in ((1, "false_reject"), (2, "defect"), (3, "miss"), (4, "defect")):
        rel = f"review/r_{seq:08d}_{label}.png"
        cv2.imwrite(str(station / rel), _plate(seq))
        journal.append({"run": RUN, "seq": seq, "label": label, "image": rel})
    journal.append({"run": RUN, "seq": 4, "label": "false_reject", "image": "review/r_00000004_defect.png"})  # fixed
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
        journal.append({"run": RUN, "seq": seq, "label": label, "image": rel})
    journal.append({"run": RUN, "seq": 5, "label": "defect", "image": "review/gone.png"})
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
        normal_quantiles=tuple(np.percentile(rng.normal(0, 1, 2000), np.arange(101))), n_normal=2000))
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False, drift_min_parts=20))
    console = StationConsole(cfg, bundle)
    assert console.feed.drift.watches[""].reference.n == 2000   # the bundle's n_normal, for the noise floor
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
        normal_quantiles=tuple(np.percentile(rng.normal(0, 1, 2000), np.arange(101))), n_normal=2000))
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


def calibrated(rng, mean: float, n: int = 2000):
    """A ``Threshold`` stand-in whose calibration percentiles (101,) are those of ``n`` draws of N(mean, 1)."""
    from types import SimpleNamespace

    return SimpleNamespace(normal_quantiles=tuple(np.percentile(rng.normal(mean, 1, n), np.arange(101))), n_normal=n)


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
    """Passed views of ``camera`` with these scores, decided by its model "m-CAMERA"."""
    for i, s in enumerate(scores):
        console.observe(None, Verdict(first_seq + i, 0.0, float(s), 99.0, False, 0.01, camera=camera,
                                      model=f"m-{camera}"), None)


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


def scored_two_camera_console(tmp_path, rng):
    """``two_camera_console`` with 50 passed views each (camera a's scores around 0, b's around 5), running models
    "m-a" at threshold 3.0 and "m-b" at 8.0."""
    from types import SimpleNamespace

    console = two_camera_console(tmp_path, rng, [])
    feed_scores(console, "a", rng.normal(0, 1, 50), 0)
    feed_scores(console, "b", rng.normal(5, 1, 50), 0)
    views = {c: SimpleNamespace(model=f"m-{c}", threshold=t, switch=ModelSwitch()) for c, t in (("a", 3.0), ("b", 8.0))}
    console.attach(SimpleNamespace(views=views), None, None, None, None)
    return console


def test_a_swap_resets_only_its_camera_and_tuning_uses_that_cameras_calibration(tmp_path):
    """Swapping camera b's bundle restarts b's drift watch on the new bundle's calibration; a's keeps its parts.
    Tuning camera b draws b's calibration distribution, not a's."""
    from types import SimpleNamespace

    from fair_edge.console import tuning
    from fair_edge.console.actions import StationActions, StationLinks

    rng = np.random.default_rng(4)
    console = scored_two_camera_console(tmp_path, rng)
    feed = console.feed
    quantiles_b = np.array(feed.drift.watches["b"].quantiles)

    tuned = StationActions(feed, None).tune(None, camera="b")
    normal = np.array([v.score for v in feed.recent if v.camera == "b"])
    assert tuned["camera"] == "b" and tuned["current"] == 8.0
    assert tuned["histogram"] == tuning.histograms(normal, np.array([]), quantiles_b, 8.0)

    new = calibrated(rng, 20.0, n=59)
    change = ModelChange(model="m-new", threshold=21.0, bundle=SimpleNamespace(root=tmp_path / "new", threshold=new),
                         calibration=new)
    links = StationLinks(load_views=lambda bundle, cameras, thresholds: {c: change for c in cameras})
    StationActions(feed, None, links).swaps.load_views({tmp_path / "new": ("b",)}, "ann", {})   # the swap thread's work
    states = feed.drift.states()
    assert states["a"].parts == 50 and states["b"].parts == 0
    assert tuple(feed.drift.watches["b"].quantiles) == new.normal_quantiles
    assert feed.drift.watches["b"].reference.n == 59 and feed.drift.watches["a"].reference.n == 2000   # the noise floor's
    assert tuple(feed.drift.watches["a"].quantiles) != new.normal_quantiles
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


# ----------------------------------------------------------------------------- console actions of a cell, no threads
class InlineThread:
    """``threading.Thread`` for the console's swap thread: its target runs at ``start()``, on the caller's thread,
    so a test sees the swap's outcome when ``swap`` returns (no waiting, no timing)."""

    def __init__(self, target, args=(), name=None, daemon=None) -> None:
        self.target, self.args = target, args

    def start(self) -> None:
        self.target(*self.args)


@pytest.fixture
def inline_swaps(monkeypatch):
    import threading
    from types import SimpleNamespace

    from fair_edge.console import swaps

    monkeypatch.setattr(swaps, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))


class Backend:
    """A loaded backend that records its ``close()`` into ``closed``."""

    def __init__(self, name: str, closed: list) -> None:
        self.name, self.closed = name, closed

    def close(self) -> None:
        self.closed.append(self.name)


def cell_console(tmp_path, links, station_file=None, **console):
    """A console of a two-camera cell as ``station.cell_console`` opens it: camera "a" names its own bundle a_own
    (the lead: the console's top-line bundle), camera "b" runs the station's bundle; deciders with thresholds 3.0
    (a) and 7.0 (b) and a switch each. Returns (console, views: camera -> decider)."""
    from types import SimpleNamespace

    from fair_edge.console.station_hook import StationConsole

    settings = {"enabled": False, **console}
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(**settings), source_file=station_file)
    bundle = SimpleNamespace(root=tmp_path / "a_own", threshold=None)
    st = StationConsole(cfg, bundle, links=links, calibrations={"a": None, "b": None})
    st.attach_cell(TwoCameras(), {"a": tmp_path / "a_own", "b": tmp_path / "station"})
    views = {c: SimpleNamespace(model=f"m-{c}", threshold=t, switch=ModelSwitch()) for c, t in (("a", 3.0), ("b", 7.0))}
    st.attach(SimpleNamespace(views=views), None, None, None, None)
    return st, views


def named_bundles(tmp_path):
    """What ``CellLoader.camera_bundles`` says of ``cell_console``'s cameras: a on its own bundle at 3.0, b on the
    station's at 7.0."""
    from fair_edge.console.reload_scope import CameraBundle

    return (CameraBundle("a", tmp_path / "a_own", True, 3.0), CameraBundle("b", tmp_path / "station", False, 7.0))


def recording_loader(loads: list, closed: list, fail_on: str = ""):
    """``StationLinks.load_views``: records (bundle name, cameras, thresholds) into ``loads`` and returns a change
    per camera on one Backend per bundle; raises onnxruntime's kind of RuntimeError for bundle ``fail_on``."""
    from types import SimpleNamespace

    def load_views(bundle, cameras, thresholds):
        loads.append((bundle.name, tuple(cameras), {c: thresholds.get(c) for c in cameras}))
        if bundle.name == fail_on:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed")
        scorer = SimpleNamespace(backend=Backend(bundle.name, closed))
        return {c: ModelChange(scorer=scorer, model=f"m-{bundle.name}", threshold=thresholds.get(c) or 99.0,
                               bundle=SimpleNamespace(root=bundle, threshold=None)) for c in cameras}

    return load_views


def test_sighup_in_a_cell_reloads_each_camera_once_from_its_own_bundle(tmp_path, inline_swaps, caplog):
    """SIGHUP in a cell: one load per bundle, a on its own (3.0), b on the station's (7.0); no second swap of the
    lead camera's bundle onto b (which dropped b's threshold), and no "already loading" refusal."""
    from fair_edge.console.actions import StationLinks

    loads, closed = [], []
    links = StationLinks(load_views=recording_loader(loads, closed), camera_bundles=lambda f: named_bundles(tmp_path))
    console, views = cell_console(tmp_path, links)
    console.reload_bundle("SIGHUP")
    assert loads == [("a_own", ("a",), {"a": 3.0}), ("station", ("b",), {"b": 7.0})]
    assert console.feed.camera_bundles == {"a": tmp_path / "a_own", "b": tmp_path / "station"}
    assert (views["a"].switch.take().threshold, views["b"].switch.take().threshold) == (3.0, 7.0)
    assert console.actions.swap_status["state"] == "done" and closed == []
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    swaps = [(e["camera"], e["new"]["model"]) for e in console.actions.audit.read() if e["action"] == "swap"]
    assert swaps == [("a", "m-a_own"), ("b", "m-station")]


def test_a_station_file_python_cannot_read_or_decode_is_a_config_error_naming_it(tmp_path, monkeypatch):
    """A Latin-1 comment ('# Prüfstation') or a file the station's user may not read: a ConfigError naming the file,
    what was expected and the fix; before, UnicodeDecodeError / PermissionError escaped load_station (on SIGHUP: in
    the middle of the inspection loop)."""
    from pathlib import Path

    station = tmp_path / "station.yaml"
    station.write_bytes("# Prüfstation\nbundle: b\n".encode("latin-1"))
    with pytest.raises(ConfigError) as refused:
        load_station(station)
    text = str(refused.value)
    assert text.startswith(f"station file {station}: expected ") and "found byte 0xfc at offset 4" in text
    assert "save the file as" in text

    station.write_text("bundle: b\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)   # root reads any file: chmod 000 would not refuse it
    with pytest.raises(ConfigError, match=rf"station file {station} cannot be read \(Permission denied\); give"):
        load_station(station)


def test_sighup_reloads_raise_nothing_run_one_at_a_time_and_are_logged_when_refused(tmp_path, caplog):
    """SIGHUP's handler only asks (``request_reload``); the console's reload thread re-reads the station file. A
    reload whose loader raises anything (here UnicodeDecodeError, then a Latin-1 file through the real loader) is
    logged "bundle reload refused" and the station goes on. SIGHUPs during a reload are one more reload after it,
    never a second one at the same time. Before, the handler ran the reload itself in the main thread, raising there."""
    import threading
    from types import SimpleNamespace

    from fair_edge.cli.run import StationSignals
    from fair_edge.console.actions import StationLinks
    from fair_edge.console.station_hook import StationConsole

    station = tmp_path / "station.yaml"
    station.write_bytes("# Prüfstation\nbundle: b\n".encode("latin-1"))
    entered, release, lock = [threading.Event(), threading.Event()], threading.Event(), threading.Lock()
    calls, running, most = [], [0], [0]

    def load(path):   # the first reload waits inside the loader until released: SIGHUPs arrive meanwhile
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls.append(path)
            entered[len(calls) - 1].set()
        try:
            if len(calls) == 1:
                assert release.wait(30)
                raise UnicodeDecodeError("utf-8", b"\xfc", 0, 1, "invalid start byte")
            return load_station(path)
        finally:
            with lock:
                running[0] -= 1

    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False), source_file=station)
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b0", threshold=None),
                             links=StationLinks(load_station=load))
    signals = StationSignals.__new__(StationSignals)   # its SIGHUP handler, without taking the test's SIGINT
    signals.console = console
    console.watch_reloads()
    try:
        signals.on_hup(1, None)   # returns at once, raising nothing, whatever the reload meets
        assert entered[0].wait(30)
        for _ in range(3):
            signals.on_hup(1, None)
        release.set()
        assert entered[1].wait(30)
    finally:
        release.set()
        console.close()   # waits for the reload in progress
    assert calls == [station, station] and most[0] == 1
    refused = [r.getMessage() for r in caplog.records if "bundle reload refused (SIGHUP)" in r.getMessage()]
    assert len(refused) == 2 and "UnicodeDecodeError" in refused[0]
    assert refused[1].startswith(f"bundle reload refused (SIGHUP): station file {station}: expected ")


def test_a_loader_failing_with_any_error_fails_the_swap_and_closes_what_it_loaded(tmp_path, inline_swaps):
    """A loader raising something other than a FairEdgeError (onnxruntime's RuntimeError) ends the swap as failed
    with its text, closes the backend loaded before it and switches no camera; the next swap is not refused.
    With one camera likewise."""
    from types import SimpleNamespace

    from fair_edge.console.actions import StationLinks
    from fair_edge.console.station_hook import StationConsole

    loads, closed = [], []
    links = StationLinks(load_views=recording_loader(loads, closed, fail_on="station"),
                         camera_bundles=lambda f: named_bundles(tmp_path))
    console, views = cell_console(tmp_path, links)
    console.reload_bundle("SIGHUP")   # loads a_own, then the station's bundle fails
    status = console.actions.swap_status
    assert status["state"] == "failed" and "RuntimeError" in status["error"] and "Load model failed" in status["error"]
    assert closed == ["a_own"] and views["a"].switch.take() is None and views["b"].switch.take() is None
    assert console.feed.camera_bundles["a"] == tmp_path / "a_own" and not console.actions.audit.read()
    assert console.actions.swap(str(tmp_path / "a_own"), "ann", camera="b")["cameras"] == ["b"]   # not refused
    assert console.actions.swap_status["state"] == "done" and views["b"].switch.take().model == "m-a_own"

    def load_model(bundle, threshold=None):
        raise RuntimeError("CUDA out of memory")

    cfg = StationConfig(output=tmp_path / "one", console=ConsoleSettings(enabled=False))
    one = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b0", threshold=None),
                         links=StationLinks(load_model=load_model))
    one.attach(SimpleNamespace(model="m0", threshold=1.0, switch=ModelSwitch()), None, None, None, None)
    one.actions.swap(str(tmp_path / "b1"), "ann")
    assert one.actions.swap_status["state"] == "failed" and "CUDA out of memory" in one.actions.swap_status["error"]
    one.actions.swap(str(tmp_path / "b2"), "ann")   # not refused as "already loading"
    assert one.actions.swap_status["bundle"] == str(tmp_path / "b2")


def test_a_threshold_the_station_file_cannot_take_changes_nothing(tmp_path):
    """The station file is written and checked before the switch: a file the loader refuses, one that is no longer
    valid YAML or not a mapping is a ConfigError naming the file (the API's 400), with no threshold change, no audit
    entry and the file as it was."""
    from fair_edge.console.actions import StationLinks

    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"cameras": [{"name": "a", "source": "0"}, {"name": "b", "source": "1"}]}))
    original = station.read_text()

    def refuse(path):
        raise ConfigError(f"{path}: bundle: runs/x does not exist")

    links = StationLinks(load_station=refuse, camera_bundles=lambda f: named_bundles(tmp_path))
    console, views = cell_console(tmp_path, links, station_file=station)
    with pytest.raises(ConfigError) as refused:
        console.actions.apply_threshold(5.5, "ann", True, camera="b")
    assert views["b"].switch.take() is None and station.read_text() == original
    assert str(refused.value).startswith(f"{station}: bundle: runs/x does not exist; fix the station file")
    assert not (tmp_path / "station.yaml.tmp").exists()
    for text, found in (("cameras: [ {name: a, source: 0}, \n", "expected valid YAML"),
                        ("- just\n- a list\n", "expected a mapping of station settings, found list"),
                        ("cameras: {a: 1}\n", "cameras: expected a list of cameras, found dict")):
        station.write_text(text)   # an operator's half-saved edit
        with pytest.raises(Exception) as refused:
            console.actions.apply_threshold(6.5, "ann", True, camera="a")
        assert views["a"].switch.take() is None and station.read_text() == text
        assert refused.type is ConfigError and str(refused.value).startswith(f"{station}: {found}")
        assert str(refused.value).endswith("apply the threshold again (it was not changed)")
    assert not [e for e in console.actions.audit.read() if e["action"] == "threshold"]

    links = StationLinks(load_station=load_station, camera_bundles=lambda f: named_bundles(tmp_path))
    station.write_text(original)
    console, views = cell_console(tmp_path / "ok", links, station_file=station)
    entry = console.actions.apply_threshold(5.5, "ann", True, camera="b")   # a file that loads: applied and written
    assert (entry["old"], entry["new"]) == (7.0, 5.5) and views["b"].switch.take().threshold == 5.5
    assert yaml.safe_load(station.read_text())["cameras"][1]["threshold"] == 5.5


def test_the_gallery_keeps_the_labels_and_reviews_of_its_ng_parts_views(tmp_path):
    """An NG part stays in the gallery long after its views left the recent verdicts: every view keeps its label
    and OK/NG, a passed view can still be reviewed while its frame is kept (keep_frames 16: a review is saved with
    its image); a defect corrected to a false reject counts in drift again."""
    from collections import deque

    from fair_edge.console.actions import StationLinks
    from fair_edge.console.views import gallery

    console, _ = cell_console(tmp_path, StationLinks(), recent_parts=10, keep_frames=16, drift_min_parts=1)
    console.feed.recent = deque(maxlen=10)   # every view's verdict: 10 kept here (feed.RECENT_VERDICTS in a station)

    def part(pid: int, ng_b: bool) -> None:
        """Part ``pid`` seen by a and b (seq = pid), NG by b's view when ``ng_b``; the row comes after a's view and
        before b's (the part assembler hears a view before the console does)."""
        row = {"part": pid, "ng": ng_b, "inspected": True, "camera": "b", "views": {}, "ng_views": ["b"] if ng_b else [],
               "missing": [], "rule": "any"}
        verdicts = {c: Verdict(pid, 0.0, 0.9 if c == "b" and ng_b else 0.2, 0.5, c == "b" and ng_b, 0.01, camera=c)
                    for c in ("a", "b")}
        for c, v in verdicts.items():
            row["views"][c] = {"seq": pid, "score": v.score, "ng": v.ng}
        frame = Frame(pid, 0.0, np.zeros((4, 4, 3), np.uint8))
        console.observe(frame, verdicts["a"], None)
        console.observe_part(None, row)
        console.observe(frame, verdicts["b"], None)

    part(0, True)
    actions = console.actions
    actions.review(0, "defect", "ann", camera="b")
    assert console.feed.drift.watches["b"].state().parts == 0
    for pid in range(1, 6):
        part(pid, False)   # 10 more views: part 0's have left the recent ones (10)
    assert console.feed.verdict(0, "a") is None
    (listed,) = gallery(console.feed, actions)["parts"]
    views = {v["camera"]: v for v in listed["views"]}
    assert (views["a"]["ng"], views["a"]["review"], views["b"]["ng"], views["b"]["review"]) == (False, "", True, "defect")
    assert actions.review(0, "miss", "ann", camera="a")["label"] == "miss"   # the passed view is still reviewable
    views = {v["camera"]: v for v in gallery(console.feed, actions)["parts"][0]["views"]}
    assert (views["a"]["review"], views["a"]["score"], views["a"]["threshold"]) == ("miss", 0.2, 0.5)

    actions.review(0, "false_reject", "ann", camera="b")   # corrected: newest wins, a normal part again
    assert actions.labels[("b", 0)] == "false_reject" and console.feed.drift.watches["b"].state().parts == 6
    for pid in range(6, 16):
        part(pid, pid % 2 == 0)   # 5 more NG parts: the gallery (10 parts) still lists part 0
    assert 0 in [p["part"] for p in gallery(console.feed, actions)["parts"]] and ("a", 0) in actions.listed
    for pid in range(16, 26):
        part(pid, True)   # part 0 leaves the gallery: its views are forgotten
    assert 0 not in [p["part"] for p in gallery(console.feed, actions)["parts"]] and ("a", 0) not in actions.listed
    assert len(actions.listed) == 20 and not actions._awaited


def test_the_late_verdicts_counter_moves_with_verdicts_after_their_gate(tmp_path):
    """The live page's "late verdicts" (once "late rejects") is the gate's ``late_verdicts``: an NG verdict whose
    part went by the gate before it came. It read a counter that does not exist and always showed 0."""
    import time

    from fair_edge.console.feed import StationFeed
    from fair_edge.line.scheduler import LATE, RejectScheduler
    from fair_edge.line.settings import RejectSettings
    from line_replay import RecordingSink

    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    settings = RejectSettings(delay_ms=100, pulse_ms=20, min_gap_ms=10, late_ms=10)
    with RejectScheduler(settings, sinks=RecordingSink(), fault_sinks=RecordingSink("fault")) as scheduler:
        feed.attach(None, None, scheduler)
        assert feed.counters()["late_verdicts"] == 0
        now = time.monotonic()
        assert scheduler.submit(Verdict(1, now - 0.5, 0.9, 0.5, True, now)) == LATE   # due 0.4 s ago
        assert feed.counters()["late_verdicts"] == 1


def test_a_relabelled_part_exported_again_is_in_its_new_labels_folder_only(tmp_path):
    """A review changed from false_reject to defect, exported again into the same folder, left the first
    export's copy in train/good: a confirmed defect among the training normals."""
    station = tmp_path / "station"
    (station / "review").mkdir(parents=True)
    journal = Journal(station / "reviews.jsonl")
    cv2.imwrite(str(station / "review" / "p1.png"), _plate(1))
    cv2.imwrite(str(station / "review" / "p2.png"), _plate(2))
    journal.append({"run": RUN, "seq": 1, "label": "false_reject", "image": "review/p1.png"})
    journal.append({"run": RUN, "seq": 2, "label": "defect", "image": "review/p2.png"})
    dest = tmp_path / "dataset"
    assert export_reviewed(station, dest)["moved"] == 0
    journal.append({"run": RUN, "seq": 1, "label": "defect", "image": "review/p1.png"})  # the operator corrects
    result = export_reviewed(station, dest)
    assert sorted(p.name for p in (dest / "train" / "good").iterdir()) == []
    assert sorted(p.name for p in (dest / "test" / "defect").iterdir()) == [f"{RUN}_00000001.png",
                                                                            f"{RUN}_00000002.png"]
    assert result["moved"] == 1 and "1 reviewed part moved" in result["summary"]


def test_collect_refuses_a_duration_that_is_not_positive_and_an_unwritable_out(tmp_path):
    """--duration -1 read 0 frames and exited 0; an OUT that cannot be created gave an OSError traceback."""
    from typer.testing import CliRunner

    from fair_edge.cli import app

    src = tmp_path / "cam"
    src.mkdir()
    cv2.imwrite(str(src / "000.png"), _plate(0))
    for duration in ("-1", "0"):
        r = CliRunner().invoke(app, ["collect", str(tmp_path / "out"), "--source", str(src), "--duration", duration])
        assert r.exit_code == 2 and "--duration must be > 0 seconds" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "out").exists()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    r = CliRunner().invoke(app, ["collect", str(blocked / "out"), "--source", str(src)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "could not create the output folder" in text, r.output
    assert str(blocked / "out") in "".join(r.output.split())  # the folder named (rich may fold a long path)


# ---------------------------------------------------------------------------------------------- one camera, no station
LOCAL = "http://127.0.0.1:8765"   # a page of this machine: the Host a console without a token accepts


def one_camera_console(tmp_path, links=None, station_file=None, attach=True, **console):
    """A console of a one-camera station as ``station.run`` opens it, over a stand-in inspector (model "m1" at
    threshold 1.0, its own switch), calibrated on N(0, 1); served on any free port (``port=0``, never the default
    8765 another test run or station on this machine may hold) unless ``console`` names one. Returns (console,
    inspector)."""
    from types import SimpleNamespace

    from fair_edge.console.actions import StationLinks
    from fair_edge.console.station_hook import StationConsole

    rng = np.random.default_rng(0)
    bundle = SimpleNamespace(root=tmp_path, threshold=calibrated(rng, 0.0))
    settings = {"enabled": False, "drift_min_parts": 10, "port": 0, **console}
    cfg = StationConfig(output=tmp_path, source_file=station_file, console=ConsoleSettings(**settings))
    st = StationConsole(cfg, bundle, links=links or StationLinks())
    summary = SimpleNamespace(inspected=0, ng=0, malformed=0, inference_errors=0, region_errors=0, fault="",
                              backend="fake")
    inspector = SimpleNamespace(model="m1", threshold=1.0, switch=ModelSwitch(), summary=summary)
    if attach:
        st.attach(inspector, None, None, None, None)
    return st, inspector


def api(console, token=None, base_url=LOCAL):
    """An in-process client of the console's app (no server, no port)."""
    import threading
    import warnings

    from fair_edge.console.app import build_app

    with warnings.catch_warnings():   # starlette's note about httpx, not about the console
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    app = build_app(console.feed, console.actions, token, threading.Event())
    return TestClient(app, raise_server_exceptions=False, base_url=base_url)


def verdict(seq, score, ng=False, model="m1", threshold=1.0):
    return Verdict(seq, 0.0, score, threshold, ng, 0.01, model=model)


def test_a_change_refused_for_its_operator_name_changes_nothing(tmp_path):
    """Every input (the operator's name first) is checked before anything changes: a threshold with a blank name
    is neither written to the station file nor switched to; an export runs no exporter; a review saves no image."""
    from fair_edge.console.actions import StationLinks
    from fair_edge.records import Frame

    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(tmp_path), "decision": {"threshold": None}}))
    original = station.read_text()
    exported = []
    links = StationLinks(load_station=load_station, export_reviewed=lambda out, dest: exported.append(dest) or {})
    console, inspector = one_camera_console(tmp_path, links, station_file=station, keep_frames=8)
    console.observe(Frame(1, 0.0, np.zeros((8, 8, 3), np.uint8)), verdict(1, 2.0, ng=True), None)
    client = api(console)
    for who in ("", "   ", None, 7, "x" * 81):
        for action, body in (("threshold", {"threshold": 7.5, "confirm": True}), ("export", {}),
                             ("review", {"seq": 1, "label": "defect"})):
            r = client.post("/api/" + action, json={**body, "who": who})
            assert r.status_code == 400 and r.json()["error"].startswith("who: expected the operator's name"), r.text
    assert station.read_text() == original and inspector.switch.take() is None
    assert exported == [] and not (tmp_path / "review").exists()
    assert not (tmp_path / "audit.jsonl").exists() and not (tmp_path / "reviews.jsonl").exists()
    assert client.post("/api/threshold", json={"threshold": 7.5, "confirm": True, "who": "ann"}).status_code == 200
    assert inspector.switch.take().threshold == 7.5 and yaml.safe_load(station.read_text())["decision"]["threshold"] == 7.5


def test_odd_fields_and_a_starting_station_get_an_answer_naming_them(tmp_path):
    """A review label that is no string is a 400 naming the field (was a TypeError: 500); /api/tune before the
    inspector is attached says the station is still starting (503; was NaN in JSON: 500), as every action does."""
    console, _ = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 2.0, ng=True), None)
    client = api(console)
    for label in ([], {}, [1], {"a": 1}, 3):
        r = client.post("/api/review", json={"seq": 1, "label": label, "who": "ann"})
        assert r.status_code == 400 and r.json()["error"].startswith("label: expected one of defect, false_reject"), r.text

    starting, _ = one_camera_console(tmp_path / "starting", attach=False)
    client = api(starting)
    for query in ("", "?threshold=0.5"):
        r = client.get("/api/tune" + query)
        assert r.status_code == 503 and "the station is still starting" in r.json()["error"], r.text
    r = client.post("/api/threshold", json={"threshold": 2.0, "confirm": True, "who": "ann"})
    assert r.status_code == 503 and "still starting" in r.json()["error"]
    assert client.get("/api/state").status_code == 200


def test_tuning_after_a_swap_projects_the_model_in_force_only(tmp_path):
    """The old model's scores (another scale) leave the projection once the model changed: model m1 scored ~100
    under 150; m2 scores ~0.5 under 1.0, so at 1.0 no m2 part would be rejected."""
    rng = np.random.default_rng(1)
    console, inspector = one_camera_console(tmp_path)
    for seq, score in enumerate(rng.normal(100, 5, 300)):
        console.observe(None, verdict(seq, float(score), model="m1", threshold=150.0), None)
    inspector.model, inspector.threshold = "m2", 1.0   # swapped
    for seq, score in enumerate(rng.normal(0.5, 0.1, 100), start=300):
        console.observe(None, verdict(seq, float(score), model="m2"), None)
    tuned = api(console).get("/api/tune").json()
    assert tuned["current"] == 1.0 and tuned["at_current"]["normal_parts"] == 100
    assert tuned["at_current"]["false_reject_rate"] == 0.0 and tuned["histogram"]["edges"][-1] < 10


def test_the_shared_live_state_follows_changes_without_verdicts(tmp_path):
    """The shared snapshot is rebuilt each period whatever the verdict count: a camera lost and a fault raised
    show without a new part; its version grows only when its content changed; ``since`` gives one built no
    earlier (a stream's first event, a page's fetch), whatever the period."""
    import json
    from types import SimpleNamespace

    from fair_edge.console.app import SharedState

    console, inspector = one_camera_console(tmp_path)
    camera = SimpleNamespace(state=SimpleNamespace(value="running"), frames_in=1, dropped_queue_full=0,
                             frames_lost_estimate=0)
    console.feed.capture = SimpleNamespace(stats=lambda: camera)
    console.observe(None, verdict(1, 0.5), None)
    shared = SharedState(console.feed, console.actions, period=0.0)
    version, text = shared.get()
    assert shared.get()[0] == version   # nothing changed: nothing new to send
    camera.state = SimpleNamespace(value="disconnected")
    inspector.summary.fault = "camera: no frames for 2 s"
    newer, text = shared.get()
    state = json.loads(text)
    assert newer > version and state["version"] == newer and state["count"] == 1
    assert state["camera"]["state"] == "disconnected" and state["fault"] == "camera: no frames for 2 s"

    import time

    slow = SharedState(console.feed, console.actions, period=3600.0)
    old, _ = slow.get()
    inspector.summary.fault = ""
    fresh, text = slow.get(since=time.monotonic())
    assert fresh > old and json.loads(text)["fault"] == ""


def sse_states(url: str, until, limit_s: float = 30.0) -> list[dict]:
    """The ``state`` events of /api/events until ``until(states)`` holds; fails after ``limit_s`` (a keep-alive
    comment comes at least every 10 s, so the loop always gets to check)."""
    import json
    import time

    import httpx

    states, deadline = [], time.monotonic() + limit_s
    with httpx.stream("GET", url + "api/events", timeout=httpx.Timeout(5, read=limit_s)) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line[6:]))
            if until(states):
                return states
            assert time.monotonic() < deadline, f"expected the awaited event within {limit_s} s, found {states}"
    raise AssertionError(f"the event stream ended; found {states}")


def test_a_new_live_page_starts_no_older_than_its_fetch(tmp_path):
    """A page opened after a change without new verdicts (a fault raised) gets as its first event a snapshot no
    older than its stream (was: the one cached when the first page opened), and no older than its own fetch of
    /api/state (the shared snapshot, at most one period old: pollers force no rebuild)."""
    import httpx

    from fair_edge.console.server import ConsoleServer

    console, inspector = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 0.5), None)
    console.feed.settings = ConsoleSettings(port=0, live_fps=0.1)   # one rebuild each 10 s unless asked for
    with ConsoleServer(console.feed, console.actions) as server:
        first = sse_states(server.url, lambda s: len(s) == 1)[0]
        assert first["fault"] == ""
        inspector.summary.fault = "camera: no frames for 2 s"
        fetched = httpx.get(server.url + "api/state").json()
        opened = sse_states(server.url, lambda s: len(s) == 1)[0]
        assert opened["fault"] == "camera: no frames for 2 s"
        assert opened["version"] > first["version"] and opened["version"] >= fetched["version"]   # what live.js compares


def test_an_open_live_page_sees_a_fault_without_new_parts(tmp_path):
    """A camera that stops sends no verdict: its fault still reaches a page that is open."""
    from fair_edge.console.server import ConsoleServer

    console, inspector = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 0.5), None)
    console.feed.settings = ConsoleSettings(port=0, live_fps=20)

    def raise_fault(states):
        if len(states) == 1:   # the page is open: the camera stops, no verdict comes
            inspector.summary.fault = "camera: lost"
        return bool(states) and states[-1]["fault"] == "camera: lost"

    with ConsoleServer(console.feed, console.actions) as server:
        states = sse_states(server.url, raise_fault)
    assert states[-1]["count"] == states[0]["count"] == 1


def test_a_console_off_loopback_needs_a_token_however_its_settings_were_built(tmp_path):
    """ConsoleSettings built in code (not through the station file) are checked when served: off loopback without
    a token is a ConfigError naming console.token, before anything listens."""
    from fair_edge.console.server import ConsoleServer

    console, _ = one_camera_console(tmp_path)
    for settings in (ConsoleSettings(host="0.0.0.0", port=0), ConsoleSettings(host="0.0.0.0", port=0, enabled=False)):
        console.feed.settings = settings
        with pytest.raises(ConfigError, match="console.token: expected a token when console.host is '0.0.0.0'"):
            ConsoleServer(console.feed, console.actions)
    console.feed.settings = ConsoleSettings(host="0.0.0.0", port=0, token="t" * 16)
    ConsoleServer(console.feed, console.actions).close()   # with a token: served


def test_without_a_token_only_this_machines_names_reach_the_console(tmp_path):
    """DNS rebinding: a page of another site whose name points at 127.0.0.1 sends its own Host. Without a token
    such a request is refused (403 naming the Host), reads included; this machine's names pass with any port.
    A token keeps the Host check (tests/test_console_http.py)."""
    console, inspector = one_camera_console(tmp_path)
    body = {"threshold": 4.0, "confirm": True, "who": "x"}
    for host in ("attacker.example:8765", "attacker.example", "127.0.0.1.attacker.example", "localhost.evil:80",
                 "[::2]:8765", "10.0.0.5:8765", ""):
        client = api(console)
        r = client.post("/api/threshold", json=body, headers={"Host": host})
        assert r.status_code == 403 and r.json()["error"].startswith("Host: expected this machine"), (host, r.text)
        assert repr(host) in r.json()["error"] or (not host and "found 'none'" in r.json()["error"])
        assert client.get("/api/state", headers={"Host": host}).status_code == 403
    assert inspector.switch.take() is None
    for host in ("127.0.0.1:8765", "localhost:1234", "LOCALHOST", "[::1]:8765", "127.0.0.1"):
        r = api(console).post("/api/threshold", json=body, headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    assert inspector.switch.take().threshold == 4.0


def test_the_journal_syncs_its_folder_when_it_creates_the_file(tmp_path, monkeypatch):
    """A journal's first entry creates the file: the folder holding its name is fsync'd too (once)."""
    import os
    import stat

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    journal = Journal(tmp_path / "logs" / "audit.jsonl")
    journal.append({"action": "threshold"})
    assert synced == ["file", "folder"]
    journal.append({"action": "threshold"})
    assert synced == ["file", "folder", "file"]


def _reviewed_station(tmp_path, labels):
    """A station output with one reviewed image per seq: labels = {seq: label}; returns (station, journal)."""
    station = tmp_path / "station"
    (station / "review").mkdir(parents=True)
    journal = Journal(station / "reviews.jsonl")
    for seq, label in labels.items():
        cv2.imwrite(str(station / "review" / f"p{seq}.png"), _plate(seq))
        journal.append({"run": RUN, "seq": seq, "label": label, "image": f"review/p{seq}.png"})
    return station, journal


def test_exporting_again_keeps_an_earlier_copy_whose_image_is_gone_and_says_so(tmp_path):
    """Exporting again into the same folder deleted the earlier, good copy of a reviewed part whose image had
    since gone from the station output (or become unreadable): the training set lost a labelled image. A copy in
    a folder the newest label contradicts is still removed, and the summary says what happened to each."""
    station, journal = _reviewed_station(tmp_path, {1: "false_reject", 2: "false_reject", 3: "false_reject",
                                                    4: "defect"})
    dest = tmp_path / "dataset"
    export_reviewed(station, dest)
    earlier = {n: (dest / "train" / "good" / f"{RUN}_0000000{n}.png").read_bytes() for n in (1, 2, 3)}
    (station / "review" / "p1.png").unlink()                   # image gone, label unchanged
    (station / "review" / "p2.png").write_bytes(b"not a png")  # image unreadable, label unchanged
    (station / "review" / "p3.png").unlink()                   # image gone and relabelled: a defect after all
    journal.append({"run": RUN, "seq": 3, "label": "defect", "image": "review/p3.png"})
    result = export_reviewed(station, dest)
    good = dest / "train" / "good"
    assert sorted(p.name for p in good.iterdir()) == [f"{RUN}_00000001.png", f"{RUN}_00000002.png"]
    assert all((good / f"{RUN}_0000000{n}.png").read_bytes() == earlier[n] for n in (1, 2))
    assert sorted(p.name for p in (dest / "test" / "defect").iterdir()) == [f"{RUN}_00000004.png"]
    assert (result["no_image"], result["kept"], result["moved"], result["removed"]) == (2, 2, 0, 1)
    assert result["train/good"] == {"saved": 0, "unreadable": 1} and result["test/defect"]["saved"] == 1
    text = result["summary"]
    assert "2 reviewed parts without an image" in text and "1 reviewed part with an unreadable image" in text, text
    assert "2 earlier exports kept" in text and "1 reviewed part removed from an earlier label's folder" in text, text


def test_a_failed_rewrite_of_a_reviewed_part_leaves_its_earlier_copy_whole(tmp_path, monkeypatch):
    """A new copy replaces the earlier one in the label's folder only once written in full: a write that fails
    (a full disk) raises an error naming the file and leaves the earlier copy and no partial file behind."""
    from fair_edge.errors import DataError

    station, _ = _reviewed_station(tmp_path, {1: "false_reject"})
    dest = tmp_path / "dataset"
    export_reviewed(station, dest)
    copy = dest / "train" / "good" / f"{RUN}_00000001.png"
    earlier = copy.read_bytes()
    cv2.imwrite(str(station / "review" / "p1.png"), _plate(9))   # a newer image of the same part

    import fair_edge.disk as disk

    class FullDisk(io.FileIO):   # the disk takes 10 bytes of a file, then is full
        def write(self, data):
            super().write(bytes(data[:10]))
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk, "open", lambda path, mode="r": FullDisk(path, mode.replace("b", "")), raising=False)
    monkeypatch.setattr(cv2, "imwrite", lambda *a: False)        # the same fault for a direct OpenCV write
    with pytest.raises(DataError, match=f"{RUN}_00000001.png"):
        export_reviewed(station, dest)
    assert copy.read_bytes() == earlier
    assert sorted(p.name for p in copy.parent.iterdir()) == [f"{RUN}_00000001.png"]


def test_collect_from_a_folder_counts_the_files_the_replay_skips_as_unreadable(tmp_path):
    """`collect --source` printed '0 unreadable' however many files the folder replay skipped as undecodable
    (the replay skips them itself, so the collector never saw them), and 'read N frames' left them out."""
    from typer.testing import CliRunner

    from fair_edge.cli import app

    src = tmp_path / "cam"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i:03d}.png"), _plate(20 + i))
    (src / "003.png").write_bytes(b"not a png")
    (src / "004.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["collect", str(tmp_path / "train"), "--source", str(src)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "read 3 frames and 2 unreadable files: saved 3," in text and "2 unreadable ->" in text, text
    assert len(list((tmp_path / "train").glob("*.png"))) == 3


def test_applying_a_threshold_keeps_the_station_files_mode_and_its_symlink(tmp_path):
    """A station file kept 0600 because it holds console.token became 0644 (readable by every local account) after
    an operator applied a threshold, and a symlinked station file was replaced by a plain file while its target kept
    the old threshold. Now the mode is kept and the link's target is written."""
    import os
    import stat

    from fair_edge.station.config import load_station

    real = tmp_path / "managed" / "station.yaml"
    real.parent.mkdir()
    real.write_text("bundle: b\nconsole: {token: secret-token-123}\n")
    real.chmod(0o600)
    link = tmp_path / "station.yaml"
    link.symlink_to(real)
    write_station_threshold(link, 0.25, load_station)
    assert link.is_symlink() and stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert load_station(real).threshold == 0.25
    assert sorted(p.name for p in real.parent.iterdir()) == ["station.yaml"]   # no .tmp left behind


def test_applying_a_threshold_to_a_station_file_python_cannot_decode_is_a_config_error(tmp_path):
    """The console's threshold writer read the station file on its own and let a UnicodeDecodeError through (a
    Latin-1 comment: the API's 500) where the station loader names the file; both read it through
    ``fields.read_station_text`` now, and the file is left as it was."""
    station = tmp_path / "station.yaml"
    station.write_bytes("# Prüfstation\nbundle: b\n".encode("latin-1"))
    with pytest.raises(ConfigError) as refused:
        write_station_threshold(station, 0.25, load_station)
    text = str(refused.value)
    assert text.startswith(f"station file {station}: expected ") and "found byte 0xfc at offset 4" in text
    assert text.endswith("then apply the threshold again (it was not changed)")
    assert station.read_bytes() == "# Prüfstation\nbundle: b\n".encode("latin-1")


@pytest.mark.parametrize("record", ["yes", "[1, 2]"])
def test_applying_a_threshold_to_a_station_file_whose_record_is_not_a_mapping_is_a_config_error(tmp_path, record):
    """``record: yes`` made the read-back ``load_station`` raise a TypeError (the API's 500) instead of a
    ConfigError naming the file, the section and the fix; the file is left as it was."""
    station = tmp_path / "station.yaml"
    station.write_text(f"bundle: b\nrecord: {record}\n")
    with pytest.raises(ConfigError) as refused:
        write_station_threshold(station, 0.25, load_station)
    text = str(refused.value)
    assert text.startswith(f"{station}: record: expected a mapping of settings, found ")
    assert text.endswith("then apply the threshold again (it was not changed)")
    assert station.read_text() == f"bundle: b\nrecord: {record}\n"


def test_the_console_counters_carry_the_recorders_rows_not_written(tmp_path):
    """On a full disk the verdict log lost rows and the console's counters had no recorder counter: the live
    state said nothing. Now they carry rows logged, failed (not in the log), dropped and every write error."""
    import json
    from types import SimpleNamespace

    from fair_edge.console.feed import StationFeed

    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    assert {k: feed.counters()[k] for k in ("rows_logged", "rows_failed", "rows_dropped", "write_errors")} == \
        {"rows_logged": 0, "rows_failed": 0, "rows_dropped": 0, "write_errors": 0}   # no recorder yet
    stats = {"logged": 7, "rows_failed": 3, "dropped": 2, "write_errors": 5}
    feed.attach(None, None, None, SimpleNamespace(stats=lambda: dict(stats), run_id="r1"))
    counters = json.loads(json.dumps(feed.counters()))
    assert (counters["rows_logged"], counters["rows_failed"], counters["rows_dropped"], counters["write_errors"]) \
        == (7, 3, 2, 5)
    stats["rows_failed"] = 4   # read live, never kept twice
    assert feed.counters()["rows_failed"] == 4

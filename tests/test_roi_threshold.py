"""A station with an ROI decides on max(anomaly map x ROI): its threshold is calibrated when it opens on the
held-out normal maps the bundle keeps (at the bundle's false-reject rate), not the family's image-score
threshold; a bundle without those maps refuses to start unless the station file sets a threshold; the maps
are checksummed; a hot swap and the console's drift distribution follow the same rule (issue #28)."""

from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from export_fixtures import MODEL, make_frames, trained_state, write_pngs
from fair_edge.console.settings import ConsoleSettings
from fair_edge.errors import BundleError, ConfigError
from fair_edge.export.bundle import MANIFEST, load_bundle, write_manifest
from fair_edge.export.normal_maps import NORMAL_MAPS, kept_maps
from fair_edge.line.settings import RecordSettings
from fair_edge.station.config import CameraSettings, StationConfig

RATE = 0.1           # the build's false-reject rate: k = ceil(0.9 * 40) = 36th of 40 normal scores
N_NORMAL = 40
# a 64 x 64 mask; on the 32 x 32 map grid (area-averaged) it is exactly rows 8..23, columns 4..19
MASK = (slice(16, 48), slice(8, 40))
ON_MAP = (slice(None), slice(8, 24), slice(4, 20))


@pytest.fixture(scope="module")
def normals() -> list[np.ndarray]:
    return make_frames(N_NORMAL, seed=5)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, normals):
    """fp32 and int8 bundles of the tiny model, threshold at RATE from 40 held-out normals."""
    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.checkpoint import Checkpoint

    ckpt = Checkpoint(MODEL, trained_state(100, 0), {"images": 32, "source": "synthetic stripes"})
    root = tmp_path_factory.mktemp("roi-bundles")
    return {p: build_bundle(ckpt, root / p, BuildOptions(p, engine=False, false_reject_rate=RATE),
                            calib_frames=make_frames(12, seed=100), normal_frames=normals).bundle
            for p in ("fp32", "int8")}


@pytest.fixture(scope="module")
def roi_png(tmp_path_factory) -> Path:
    mask = np.zeros((64, 64), np.uint8)
    mask[MASK] = 255
    path = tmp_path_factory.mktemp("roi") / "roi.png"
    cv2.imwrite(str(path), mask)
    return path


def station_maps(bundle, frames, backend: str = "onnxruntime") -> np.ndarray:
    """The frames' anomaly maps as the station's own backend makes them: (N, 32, 32) float32."""
    from fair_edge.runtime.selection import select_backend

    scorer = select_backend(bundle, backend)
    try:
        return scorer.infer_frames(list(frames))[0]
    finally:
        scorer.backend.close()


def threshold_by_hand(scores, rate: float) -> float:
    """The build's rule by hand: 1e-3 x |k-th| + 1e-6 above the k-th smallest score, k = ceil((1 - rate) * n), or
    midway to the next higher one where that is nearer."""
    ordered = np.sort(np.asarray(scores, np.float64))
    allowed = ordered[math.ceil((1 - rate) * len(ordered)) - 1]
    above = ordered[ordered > allowed]
    step = 1e-3 * abs(allowed) + 1e-6
    return float(allowed + (min(step, (above[0] - allowed) / 2) if above.size else step))


def expected_roi_threshold(maps: np.ndarray) -> tuple[float, np.ndarray]:
    """Computed here, not with the station's code: the ROI's map pixels by hand, the quantile rule by hand."""
    scores = np.sort(maps[ON_MAP].reshape(len(maps), -1).max(axis=1))
    return threshold_by_hand(scores, RATE), scores


def run_station_with(bundle_root: Path, frames_dir: Path, out: Path, roi: Path | None, threshold: float | None = None):
    """Open a station on ONNX Runtime over 4 frames; returns (its verdict rows, the console's drift quantiles,
    the start lines it printed)."""
    from fair_edge.station.run import run_station

    cfg = StationConfig(camera=CameraSettings(source=str(frames_dir)), bundle=bundle_root, backend="onnxruntime",
                        threshold=threshold, roi=roi, output=out, record=RecordSettings(dir=out),
                        console=ConsoleSettings(enabled=False))
    seen, started = {}, []
    run_station(cfg, threading.Event(), max_frames=4, on_start=started.append,
                on_console=lambda c: seen.update(drift=c.feed.drift.watches[""].quantiles))
    rows = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("score") is not None], seen["drift"], started


def as_old_bundle(bundle, dest: Path) -> Path:
    """A copy of ``bundle`` as built before the maps were kept: no maps files, no ``normal_maps`` entries
    (bundle.json re-signed, as the old build wrote it)."""
    shutil.copytree(bundle.root, dest)
    data = json.loads((dest / MANIFEST).read_text())
    for entry in (data, data["graph"].get("cpu") or {}):
        if entry.get("normal_maps"):
            (dest / entry.pop("normal_maps")["file"]).unlink()
    if data.get("fp32_normal_maps"):   # an FP16/INT8 bundle's FP32 graph's maps: kept since after the others
        (dest / data.pop("fp32_normal_maps")["file"]).unlink()
    data.pop("fp32_threshold", None)
    write_manifest(dest, data)
    return dest


def test_the_build_keeps_the_normal_maps_checksummed(bundles, normals):
    bundle = bundles["fp32"]
    maps = np.load(bundle.normal_maps_path)
    assert maps.shape == (N_NORMAL, 32, 32) and maps.dtype == np.float32
    assert NORMAL_MAPS in bundle.files and bundle.cpu_normal_maps_path is None
    manifest = json.loads((bundle.root / MANIFEST).read_text())
    assert manifest["normal_maps"] == {"file": NORMAL_MAPS, "count": N_NORMAL, "of": N_NORMAL, "shape": [32, 32]}
    np.testing.assert_allclose(maps, station_maps(bundle, normals), rtol=1e-5, atol=1e-6)
    assert bundles["int8"].cpu_normal_maps_path is not None and bundles["int8"].normal_maps_path is not None


def test_an_roi_station_uses_a_threshold_calibrated_on_the_roi_score(bundles, normals, roi_png, tmp_path):
    bundle = bundles["fp32"]
    expected, scores = expected_roi_threshold(station_maps(bundle, normals))
    frames = write_pngs(tmp_path / "frames", normals[:4])
    rows, drift, started = run_station_with(bundle.root, frames, tmp_path / "out", roi_png)
    assert [r["threshold"] for r in rows] == pytest.approx([expected] * 4, rel=1e-5)
    assert "calibrated on max(map x ROI) of 40 held-out normal maps" in started[0]   # which threshold, and why
    assert abs(expected - bundle.threshold.value) > 1e-3   # the family's image-score threshold: another quantity
    # the false-reject measure on the held-out normals: at most the bundle's rate (+ 1/N)
    assert (scores > rows[0]["threshold"]).mean() <= bundle.threshold.false_reject_rate + 1 / N_NORMAL
    # the console's drift watch and tuning compare live ROI scores with the ROI score's distribution
    assert drift is not None and drift[0] == pytest.approx(scores[0], rel=1e-5) and drift[-1] == pytest.approx(scores[-1], rel=1e-5)
    # the verdicts' scores are ROI scores: the first frames' score equals max over the ROI's map pixels
    assert rows[0]["score"] == pytest.approx(float(station_maps(bundle, normals[:1])[ON_MAP].max()), rel=1e-5)


def test_without_an_roi_or_with_a_threshold_nothing_changes(bundles, normals, roi_png, tmp_path):
    bundle = bundles["fp32"]
    frames = write_pngs(tmp_path / "frames", normals[:4])
    rows, drift, started = run_station_with(bundle.root, frames, tmp_path / "plain", None)
    assert [r["threshold"] for r in rows] == pytest.approx([bundle.threshold.value] * 4)
    assert tuple(drift) == pytest.approx(bundle.threshold.normal_quantiles)
    rows, _, _ = run_station_with(bundle.root, frames, tmp_path / "set", roi_png, threshold=0.5)
    assert {r["threshold"] for r in rows} == {0.5}


def test_an_old_bundle_with_an_roi_and_no_threshold_refuses_to_start(bundles, normals, roi_png, tmp_path):
    old = as_old_bundle(bundles["fp32"], tmp_path / "old")
    loaded = load_bundle(old)
    assert loaded.normal_maps_path is None and loaded.threshold is not None
    frames = write_pngs(tmp_path / "frames", normals[:4])
    with pytest.raises(ConfigError) as err:
        run_station_with(old, frames, tmp_path / "out", roi_png)
    message = str(err.value)
    assert "decision.roi" in message and "no held-out normal maps" in message
    assert "fair-edge build --normal" in message and "set decision.threshold" in message   # both fixes
    rows, drift, started = run_station_with(old, frames, tmp_path / "set", roi_png, threshold=0.5)   # the second fix
    assert {r["threshold"] for r in rows} == {0.5} and drift is None   # no distribution in the ROI score's units
    rows, _, _ = run_station_with(old, frames, tmp_path / "plain", None)   # without an ROI it runs as before
    assert [r["threshold"] for r in rows] == pytest.approx([bundles["fp32"].threshold.value] * 4)


def test_a_tampered_or_missing_maps_file_fails_the_bundle_check(bundles, tmp_path):
    tampered = Path(shutil.copytree(bundles["fp32"].root, tmp_path / "tampered"))
    maps = np.load(tampered / NORMAL_MAPS)
    maps[0, 0, 0] *= 0.5   # a lower normal map: a lower ROI threshold
    np.save(tampered / NORMAL_MAPS, maps)
    with pytest.raises(BundleError, match=r"normal_maps\.npy fails its checksum.*Rebuild"):
        load_bundle(tampered)
    missing = Path(shutil.copytree(bundles["fp32"].root, tmp_path / "missing"))
    (missing / NORMAL_MAPS).unlink()
    with pytest.raises(BundleError, match=r"normal_maps\.npy is missing"):
        load_bundle(missing)


def test_a_hot_swap_gets_its_roi_threshold(bundles, normals, roi_png, tmp_path, caplog):
    from fair_edge.console.swaps import _reference
    from fair_edge.runtime.hotswap import ModelChange
    from fair_edge.station.inspector import Inspector
    from fair_edge.station.bundles import load_change, load_roi

    bundle = bundles["int8"]
    with caplog.at_level("WARNING", logger="fair_edge.station.decision"):
        change = load_change(bundle.root, "onnxruntime", roi_png)
    try:
        assert "calibrated on max(map x ROI)" in caplog.text and f"{change.threshold:.6g}" in caplog.text
        # ONNX Runtime runs the INT8 CPU graph: calibrated on that graph's maps
        expected, scores = expected_roi_threshold(station_maps(bundle, normals))
        assert change.threshold == pytest.approx(expected, rel=1e-5)
        assert abs(change.threshold - change.scorer.graph_threshold.value) > 1e-3
        reference = _reference(change)
        assert reference.quantiles == pytest.approx(tuple(np.percentile(scores, np.arange(101))), rel=1e-5)
        assert reference.n == scores.size
        inspector = Inspector(None, change.scorer, 9.0, roi=load_roi(roi_png, None))
        inspector.switch.request(change)
        inspector.apply_switch()
        assert inspector.threshold == change.threshold
    finally:
        change.scorer.backend.close()
    old = as_old_bundle(bundle, tmp_path / "old")
    with pytest.raises(ConfigError, match="no held-out normal maps"):
        load_change(old, "onnxruntime", roi_png)
    assert load_change(old, "onnxruntime", roi_png, threshold=0.5).threshold == 0.5
    assert isinstance(load_change(old, "onnxruntime", None), ModelChange)


def test_an_roi_station_on_the_fp32_weights_calibrates_on_the_fp32_graphs_maps(bundles, normals, roi_png):
    """The PyTorch backends run the FP32 weights: on an INT8 bundle the ROI threshold comes from the FP32 reference
    graph's normal maps (fp32_normal_maps.npy), not the INT8 graph's."""
    from fair_edge.station.bundles import load_change

    bundle = bundles["int8"]
    change = load_change(bundle.root, "torch-cpu", roi_png)
    try:
        assert change.scorer.graph_threshold == bundle.fp32_threshold and bundle.fp32_normal_maps_path is not None
        expected, _ = expected_roi_threshold(station_maps(bundle, normals, "torch-cpu"))
        assert change.threshold == pytest.approx(expected, rel=1e-4)
        int8_graph, _ = expected_roi_threshold(np.load(bundle.normal_maps_path))
        assert abs(change.threshold - int8_graph) > 1e-4   # the INT8 graph's maps: another threshold (> 10x the tolerance)
    finally:
        change.scorer.backend.close()


def test_the_maps_kept_are_all_kept_max_pooled_to_fit_the_cap():
    """Full maps over the cap used to be subsampled (a 20 MP tiled bundle kept 3 of 1000); now every map is kept,
    max-pooled by the smallest factor that fits."""
    maps = [np.arange(32, dtype=np.float32).reshape(4, 8) + 100 * i for i in range(10)]
    kept = kept_maps(maps, max_bytes=4 * 8 * 4 * 4)   # room for 4 full maps: 10 pooled 2 x 2 (2 x 4 cells each)
    assert kept.maps.shape == (10, 2, 4) and kept.pool == 2 and kept.grid == (4, 8)
    np.testing.assert_array_equal(kept.maps[1], [[109, 111, 113, 115], [125, 127, 129, 131]])
    assert kept_maps(maps).pool == 1 and kept_maps(maps).maps.shape == (10, 4, 8)   # under the cap: full maps
    odd = kept_maps([np.arange(15, dtype=np.float32).reshape(3, 5)] * 4, max_bytes=4 * 2 * 3 * 4)
    assert odd.pool == 2 and odd.maps[0].tolist() == [[6, 8, 9], [11, 13, 14]]   # partial edge cells: their max
    tiny = kept_maps(maps, max_bytes=4 * 4)   # not even one value per map fits: 4 evenly spaced maps, one value each
    assert tiny.maps.shape == (4, 1, 1) and tiny.maps[:, 0, 0].tolist() == [31, 331, 631, 931]
    assert kept_maps([np.zeros((4, 8), np.float32), np.zeros((8, 8), np.float32)]) is None   # two grids
    assert kept_maps([]) is None


def _peak_maps(n: int, seed: int, shape=(24, 36)) -> list[np.ndarray]:
    """n normal maps (float32): low noise plus one peak per map (its height random) at a random place."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        m = (0.1 * rng.random(shape)).astype(np.float32)
        m[rng.integers(shape[0]), rng.integers(shape[1])] = 1.0 + 0.1 * rng.standard_normal()
        maps.append(m)
    return maps


def test_maps_over_the_cap_keep_every_map_pooled_and_the_roi_threshold_is_conservative(tmp_path, monkeypatch):
    """250 held-out maps whose full size exceeds the cap: all 250 stored (pooled, factor and grid recorded), the
    station calibrates on 250 scores, and the pooled threshold is at or slightly above the exact one on full maps."""
    from fair_edge.export import normal_maps
    from fair_edge.station.decision import calibrate_roi_threshold

    monkeypatch.setattr(normal_maps, "MAX_BYTES", 250 * 6 * 9 * 4)   # room for 250 maps of 6 x 9: pool 4
    maps = _peak_maps(250, seed=1)
    entry = normal_maps.write_normal_maps(tmp_path, NORMAL_MAPS, maps)
    assert entry == {"file": "normal_maps.npz", "count": 250, "of": 250, "shape": [24, 36], "pool": 4}
    stored = normal_maps.read_normal_maps(tmp_path / entry["file"])
    assert len(stored) == 250 and stored.pool == 4 and stored.grid == (24, 36) and stored.maps.shape == (250, 6, 9)
    assert normal_maps.normal_maps_grid(tmp_path / entry["file"]) == (24, 36)   # the off-grid check's full grid
    roi = np.zeros((48, 72), np.float32)
    roi[10:31, 13:50] = 1   # on the 24 x 36 map grid: rows 5..15, columns 6..24, not on the 4 x 4 cells' edges
    rate = 0.02   # k = ceil(0.98 * 250) = 245th of 250
    pooled = calibrate_roi_threshold(stored, roi, rate)
    full = np.stack(maps)[:, 5:16, 6:25].reshape(250, -1).max(axis=1)   # by hand: the ROI's map pixels
    exact = threshold_by_hand(full, rate)
    assert pooled.n_normal == 250
    assert exact <= pooled.value <= exact + 0.05   # conservative, never lower; the margin: the peaks' spread / 2
    assert calibrate_roi_threshold(np.stack(maps), roi, rate).value == pytest.approx(exact)   # full maps: exact


def test_a_bundle_with_pooled_maps_loads_and_both_station_paths_use_the_full_grid(normals, roi_png, tmp_path,
                                                                                  monkeypatch, caplog):
    """A build whose maps exceed the cap stores them all pooled (normal_maps.npz, checksummed); the bundle loads,
    the ROI threshold is calibrated on all 40 (at or above the exact one, and the log says so), and the grid the
    off-grid check compares with is the full maps' 32 x 32 with and without an ROI."""
    from fair_edge.export import normal_maps
    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.checkpoint import Checkpoint
    from fair_edge.station.bundles import load_roi
    from fair_edge.station.decision import decide_threshold

    monkeypatch.setattr(normal_maps, "MAX_BYTES", N_NORMAL * 16 * 16 * 4)   # the 32 x 32 maps fit pooled 2 x 2
    ckpt = Checkpoint(MODEL, trained_state(100, 0), {"images": 32, "source": "synthetic stripes"})
    bundle = build_bundle(ckpt, tmp_path / "pooled", BuildOptions("fp32", engine=False, false_reject_rate=RATE),
                          normal_frames=normals).bundle
    manifest = json.loads((bundle.root / MANIFEST).read_text())
    assert manifest["normal_maps"] == {"file": "normal_maps.npz", "count": N_NORMAL, "of": N_NORMAL,
                                       "shape": [32, 32], "pool": 2}
    assert manifest["format_version"] == 3   # a fair-edge that cannot read pooled maps refuses it by its version
    loaded = load_bundle(bundle.root)
    assert loaded.normal_maps_path.name == "normal_maps.npz" and "normal_maps.npz" in loaded.files
    with caplog.at_level("WARNING", logger="fair_edge.station.decision"):
        decided = decide_threshold(None, loaded, load_roi(roi_png, loaded))
    expected, _ = expected_roi_threshold(station_maps(loaded, normals))
    assert decided.calibration.n_normal == N_NORMAL and decided.grid == (32, 32)
    assert decided.value == pytest.approx(expected, rel=1e-5)   # the ROI's map pixels fill whole 2 x 2 cells: exact
    assert "max-pooled 2 x 2 (of 32 x 32)" in caplog.text and "never below" in caplog.text
    assert "keeps only" not in caplog.text
    assert decide_threshold(None, loaded, None).grid == (32, 32)   # the family's threshold: same grid check


def test_the_pooled_roi_score_bounds_the_full_one_for_any_roi_and_sign():
    """Each pooled map's ROI score is >= its full map's, whatever the ROI and even where maps are negative."""
    from fair_edge.export.normal_maps import NormalMaps, max_pool
    from fair_edge.station.decision import roi_scores

    rng = np.random.default_rng(3)
    maps = rng.standard_normal((40, 13, 17)).astype(np.float32) - 1.5   # mostly negative
    for seed in range(20):
        roi = (np.random.default_rng(seed).random((26, 34)) < 0.05).astype(np.float32)
        roi[0, 0] = 1
        full = roi_scores(maps, roi)
        for f in (2, 3, 5):
            pooled = roi_scores(NormalMaps(max_pool(maps, f), f, (13, 17)), roi)
            assert (pooled >= full).all(), (seed, f)


def test_an_roi_station_on_a_bundle_with_few_maps_warns_naming_them(bundles, roi_png, tmp_path, caplog):
    """A bundle built before pooling kept at most 64 MiB of full maps (3 of a 20 MP tiled bundle's 1000): with
    fewer maps than ceil(1 / rate) the threshold is just above their highest ROI score; the station says so and
    names the fixes instead of logging "measured 0" alone."""
    from fair_edge.station.bundles import load_change

    few = Path(shutil.copytree(bundles["fp32"].root, tmp_path / "few"))
    np.save(few / NORMAL_MAPS, np.load(few / NORMAL_MAPS)[:3])   # an old-style store of 3 maps (rate 0.1 needs 10)
    data = json.loads((few / MANIFEST).read_text())
    data["normal_maps"]["count"] = 3
    write_manifest(few, data)
    with caplog.at_level("WARNING", logger="fair_edge.station.decision"):
        change = load_change(few, "onnxruntime", roi_png)
    try:
        assert change.threshold == pytest.approx(expected_roi_threshold(np.load(few / NORMAL_MAPS))[0])   # still works
        text = caplog.text
        assert "keeps only 3 held-out normal maps, fewer than the 10" in text
        assert "1/3 = 0.333 at best" in text
        assert "about 1/4 = 25 % of normal parts exceed, against the 10 % asked" in text
        assert "Rebuild the bundle" in text and "set decision.threshold" in text
        assert "measured 0 on only 3 maps" in text   # never a bare "measured 0"
    finally:
        change.scorer.backend.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="fair_edge.station.decision"):   # 40 maps resolve 0.1: no warning
        load_change(bundles["fp32"].root, "onnxruntime", roi_png).scorer.backend.close()
    assert "keeps only" not in caplog.text


def test_an_roi_mask_over_opencvs_pixel_limit_or_empty_is_a_config_error_naming_it(tmp_path):
    """decision.roi read with cv2.imread: a header declaring 100000 x 100000 px raised cv2.error at start."""
    from fair_edge.station.bundles import load_roi
    from test_data import write_png_bomb

    path = write_png_bomb(tmp_path / "roi.png")
    with pytest.raises(ConfigError, match=r"decision.roi: ROI mask .*roi\.png could not be decoded; OpenCV said: "
                                          r".*2\^30 pixels"):
        load_roi(path, None)
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"decision.roi: ROI mask .*roi\.png is empty \(0 bytes\)"):
        load_roi(path, None)

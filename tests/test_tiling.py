"""Tiled inspection: layout, blending, stitching, training on tiles, and backend/eval parity on tiles."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from export_fixtures import MODEL, PRE, WIDTH, make_frames, write_pngs
from fair_edge.calibration.frames import frame_scores
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint
from fair_edge.training.data import DatasetSplit, Sample
from fair_edge.training.pixels import load_images
from fair_edge.errors import ConfigError
from fair_edge.training.evaluate import score_samples
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.preprocess import PreprocessConfig
from fair_edge.runtime.selection import select_backend
from fair_edge.tiling import FrameTiler, TilingConfig, split_frame, stitch, tile_layout, tile_weights
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig, Trainer


def test_layout_covers_the_frame_with_the_overlap_and_a_flush_last_tile():
    layout = tile_layout((100, 130), TilingConfig(40, 8), 20)
    ys = sorted({y for y, _ in layout.crops})
    xs = sorted({x for _, x in layout.crops})
    assert ys == [0, 32, 60] and xs == [0, 32, 64, 90]  # stride 32, last one flush with the edge
    assert layout.count == 12 and layout.map_hw == (50, 65)  # scale 20 / 40
    assert layout.places[-1] == (30, 45)  # flush with the map's edge too
    tiles = split_frame(np.zeros((100, 130, 3), np.uint8), layout)
    assert {t.shape for t in tiles} == {(40, 40, 3)}


def test_roi_offsets_the_tiles_and_must_fit_the_frame():
    layout = tile_layout((200, 200), TilingConfig(32, 0, roi=(10, 20, 64, 32)), 32)
    assert layout.crops == ((20, 10), (20, 42)) and layout.map_hw == (32, 64)
    with pytest.raises(ConfigError, match="inside the frame"):
        tile_layout((50, 50), TilingConfig(32, 0, roi=(30, 0, 32, 32)), 32)
    with pytest.raises(ConfigError, match="smaller tiling.tile"):
        tile_layout((20, 64), TilingConfig(32), 32)


@pytest.mark.parametrize("bad", [dict(tile=8), dict(tile=32, overlap=17), dict(tile=32, roi=(0, 0, 16, 64))])
def test_bad_tiling_settings_are_refused(bad):
    with pytest.raises(ConfigError, match="tiling"):
        TilingConfig(**bad)


def test_weights_fade_only_where_a_neighbour_takes_over():
    layout = tile_layout((64, 112), TilingConfig(64, 16), 64)  # two tiles side by side, overlap 16
    w = tile_weights(layout)
    assert w.shape == (2, 64, 64)
    assert np.all(w[0][:, :48] == 1) and w[0][0, -1] < 0.05  # left tile fades out to the right only
    assert np.all(w[1][:, 16:] == 1) and w[1][0, 0] < 0.05
    assert np.all(w[:, 0, :] > 0) and np.all(w[:, -1, :] > 0)  # no fade at the frame's top and bottom


def test_stitching_crops_of_one_map_gives_that_map_back():
    rng = np.random.default_rng(0)
    layout = tile_layout((90, 150), TilingConfig(32, 10), 32)  # scale 1: tile maps are frame crops
    truth = rng.random(layout.map_hw).astype(np.float32)
    tile_maps = np.stack([truth[y : y + 32, x : x + 32] for y, x in layout.places])
    frame_map, score = stitch(tile_maps, layout)
    np.testing.assert_allclose(frame_map, truth, rtol=1e-6)
    assert score == pytest.approx(float(truth.max()))
    with pytest.raises(ConfigError, match="tile maps"):
        stitch(tile_maps[1:], layout)


def test_overlap_blends_two_disagreeing_tiles_smoothly():
    layout = tile_layout((32, 48), TilingConfig(32, 16), 32)
    frame_map, _ = stitch(np.stack([np.zeros((32, 32)), np.ones((32, 32))]).astype(np.float32), layout)
    row = frame_map[5]
    assert np.all(row[:16] == 0) and np.all(row[32:] == 1)
    assert np.all(np.diff(row[16:32]) > 0)  # a ramp across the overlap, no step


def test_settings_round_trip_and_old_settings_mean_no_tiling():
    pre = PreprocessConfig(image_size=32, tiling=TilingConfig(64, 8, roi=(1, 2, 100, 90)))
    assert PreprocessConfig.from_dict(pre.to_dict()) == pre
    old = {k: v for k, v in PreprocessConfig().to_dict().items() if k != "tiling"}
    assert PreprocessConfig.from_dict(old).tiling is None


def test_training_on_tiles(tmp_path):
    frames = make_frames(4, seed=1, size=80)
    folder = write_pngs(tmp_path / "good", frames)
    pre = replace(PRE, tiling=TilingConfig(40, 8))  # 3 x 3 tiles of 40 px per 80 px frame
    images, kept = load_images([Sample(p) for p in sorted(folder.glob("*.png"))], pre.image_size, tiling=pre.tiling)
    assert images.shape == (36, 3, 32, 32) and len(kept) == 4
    cfg = TrainConfig(batch=4, steps=2, save_every=100, log_every=1)
    split = DatasetSplit("t", [Sample(p) for p in sorted(folder.glob("*.png"))])
    trainer = Trainer(split, pre, FairSettings(WIDTH), cfg, tmp_path / "run", torch.device("cpu"))
    assert trainer.data_summary["train_tiles"] == 36 and trainer.total_steps == 2
    ckpt = load_checkpoint(trainer.run())
    assert ckpt.preprocess.tiling == TilingConfig(40, 8)


@pytest.fixture(scope="module")
def tiled_bundle(tmp_path_factory, tiny_detector):
    root = tmp_path_factory.mktemp("tiled")
    pre = replace(PRE, tiling=TilingConfig(40, 8))
    path = root / "final.pt"
    from fair_edge.models.checkpoint import save_checkpoint

    save_checkpoint(path, Checkpoint(replace(MODEL, preprocess=pre), tiny_detector.unet.state_dict()))
    normals = make_frames(6, seed=3, size=96)
    result = build_bundle(load_checkpoint(path), root / "bundle", BuildOptions(engine=False), normal_frames=normals)
    return path, result.bundle, normals


def test_backends_and_eval_agree_on_tiled_frames(tiled_bundle, tmp_path):
    ckpt_path, bundle, normals = tiled_bundle
    frames = make_frames(3, seed=7, size=96, defect=True)
    ort_maps, ort_scores = select_backend(bundle, "onnxruntime").infer_frames(frames)
    torch_maps, torch_scores = select_backend(bundle, "torch-cpu").infer_frames(frames)
    assert ort_maps.shape == (3, 77, 77)  # 96 px at 32 / 40 map px per frame px
    np.testing.assert_allclose(ort_maps, torch_maps, atol=2e-5)
    np.testing.assert_allclose(ort_scores, ort_maps.reshape(3, -1).max(axis=1), rtol=1e-6)
    folder = write_pngs(tmp_path / "frames", frames)
    scored = score_samples(ckpt_path, [Sample(p, 1) for p in sorted(folder.glob("*.png"))])
    np.testing.assert_allclose(scored.scores, torch_scores, rtol=1e-4, atol=1e-6)
    assert scored.maps.shape == (3, 77, 77)


def test_the_bundle_threshold_comes_from_stitched_frame_scores(tiled_bundle):
    _, bundle, normals = tiled_bundle
    assert bundle.preprocess.tiling == TilingConfig(40, 8)
    scorer = select_backend(bundle, "onnxruntime")
    _, scores = scorer.infer_frames(normals)
    top = float(scores.max())   # 6 normals at 0.5 %: just above the max, 1e-3 x it + 1e-6 (nothing above it)
    assert bundle.threshold.value == pytest.approx(top + 1e-3 * abs(top) + 1e-6, rel=1e-5)
    whole = replace(bundle.model, preprocess=replace(bundle.preprocess, tiling=None))
    whole_tile_scores = frame_scores(scorer.backend.infer_batched, normals, whole)
    assert not np.allclose(whole_tile_scores, scores)  # the tiled scores are not the whole-frame ones


def test_frames_whose_map_has_another_grid_than_the_held_out_ones_fail_safe(tiled_bundle, caplog):
    """The threshold is the maximum of 77 x 77 stitched maps (96 px frames); a 136 px frame has more tiles and a
    larger map, whose maximum is another quantity: NG with both grids named, logged once; the same frames with a
    threshold the station file sets are decided by it. Both sizes come in one batch (cameras of a cell may differ
    in resolution): one inference call per size, so neither fails for the other."""
    from fair_edge.records import Frame
    from fair_edge.station.decision import decide_threshold
    from fair_edge.station.inspector import Inspector
    from fair_edge.station.zones import RegionJudge, RegionSettings

    _, bundle, normals = tiled_bundle
    scorer = select_backend(bundle, "onnxruntime")
    decided = decide_threshold(None, bundle, None, scorer.graph_threshold)
    assert decided.grid == (77, 77) and decided.value == bundle.threshold.value
    with_roi = decide_threshold(None, bundle, np.ones((96, 96), np.float32), scorer.graph_threshold)
    assert with_roi.grid == (77, 77)
    assert decide_threshold(0.5, bundle, None, scorer.graph_threshold).grid is None   # the operator's own

    large = make_frames(2, seed=9, size=136)
    frames = [Frame(i, 0.0, image, "f") for i, image in enumerate([*normals[:2], *large])]
    inspector = Inspector(None, scorer, decided.value, grid=decided.grid)
    with caplog.at_level("ERROR", logger="fair_edge.station.inspector"):
        verdicts = inspector.inspect(frames)
    same, other = verdicts[:2], verdicts[2:]
    assert all(v.error == "" and v.ng == (v.score > decided.value) for v in same)
    assert all(v.ng and v.score is not None and "77 x 77 maps" in v.error and "136 x 136 frame gives a 109 x 109 map"
               in v.error and "decision.threshold" in v.error for v in other)
    assert sum("frames rejected" in r.getMessage() for r in caplog.records) == 1   # once per grid, not per frame

    operator = Inspector(None, scorer, 1e9, grid=None).inspect(frames[2:])
    assert [v.ng for v in operator] == [False, False] and all(v.error == "" for v in operator)
    # region rules decide on the pixel threshold, which holds on any grid: no check then
    rules = RegionJudge(RegionSettings.from_dict({"default": {"min_area_px": 10**6}}), 1e9, None)
    by_rules = Inspector(None, scorer, decided.value, grid=decided.grid, regions=rules).inspect(frames[2:])
    assert [(v.ng, v.error) for v in by_rules] == [(False, ""), (False, "")]


def test_an_roi_mask_on_a_bundle_tiled_over_part_of_the_frame_is_cropped_to_that_part(tmp_path):
    """Tiles over tiling.roi (16, 8, 64, 80) of a 96 x 96 frame: the map covers that rectangle only. A frame-sized
    mask white exactly there weighs every map pixel 1 (resized whole it would squeeze the frame onto the map and
    leave the map's edges out); a mask white only in its right half keeps the map's right half; a mask that does
    not reach the rectangle, or is black inside it, is refused naming the rectangle."""
    import cv2
    from types import SimpleNamespace

    from fair_edge.station.bundles import load_roi
    from fair_edge.station.inspector import ViewDecider

    tiling = TilingConfig(40, 8, roi=(16, 8, 64, 80))
    bundle = SimpleNamespace(map_area=tiling.roi)
    map_hw = tile_layout((96, 96), tiling, 32).map_hw

    def mask(name, white, size=(96, 96)):
        image = np.zeros(size, np.uint8)
        image[white] = 255
        cv2.imwrite(str(tmp_path / name), image)
        return tmp_path / name

    decider = ViewDecider(None, 1.0, roi=load_roi(mask("all.png", np.s_[8:88, 16:80]), bundle))
    assert decider.roi.shape == (80, 64) and decider.roi_on(map_hw).all()
    right = ViewDecider(None, 1.0, roi=load_roi(mask("right.png", np.s_[8:88, 48:80]), bundle)).roi_on(map_hw)
    assert right[:, map_hw[1] // 2 + 1 :].all() and not right[:, : map_hw[1] // 2 - 1].any()
    with pytest.raises(ConfigError, match=r"is 64 x 64 pixels.*tiling.roi \[16, 8, 64, 80\].*reaches \(80, 88\)"):
        load_roi(mask("small.png", np.s_[:, :], size=(64, 64)), bundle)
    with pytest.raises(ConfigError, match=r"all black inside the bundle's tiling.roi"):
        load_roi(mask("outside.png", np.s_[:, 85:]), bundle)
    assert load_roi(tmp_path / "outside.png", None).any()   # a whole-frame bundle: the same mask inspects x >= 85


def test_a_map_over_part_of_the_frame_is_shown_where_it_lies_and_regions_stay_in_frame_pixels():
    """Tiles over tiling.roi (16, 8, 64, 80) of a 96 x 96 frame: the verdict callbacks (console, NG images) get the
    map placed on the frame, NaN outside the rectangle, so a hot spot is drawn where it is; the scores, the regions
    and their boxes (frame pixels) come from the map as scored. Without map_area the callbacks get the map as is."""
    from fair_edge.records import Frame
    from fair_edge.station.inspector import Inspector
    from fair_edge.station.zones import RegionJudge, RegionSettings
    from fair_edge.tiling import place_on_frame

    tiling = TilingConfig(40, 8, roi=(16, 8, 64, 80))
    layout = tile_layout((96, 96), tiling, 32)
    amap = np.zeros(layout.map_hw, np.float32)                  # (64, 51): 0.8 map px per frame px
    amap[40:44, 40:44] = 1.0                                    # frame x 16 + 50..55, y 8 + 50..55

    class Fixed:
        reason, graph_threshold = "test", None

        def infer_frames(self, frames):
            return np.stack([amap] * len(frames)), np.ones(len(frames), np.float32)

    shown = {}
    judge = RegionJudge(RegionSettings(), 0.5, tiling.roi)
    for area in (tiling.roi, None):
        inspector = Inspector(None, Fixed(), 0.5, regions=judge, map_area=area,
                              on_verdict=[lambda f, v, m, a=area: shown.update({a: (v, m)})])
        inspector.inspect([Frame(0, 0.0, np.zeros((96, 96, 3), np.uint8))])
    (verdict, placed), (_, raw) = shown[tiling.roi], shown[None]
    assert raw is amap or np.array_equal(raw, amap)
    assert placed.shape == (77, 76)                             # 96 frame px at 64 / 80 and 51 / 64
    np.testing.assert_array_equal(placed[6 : 6 + 64, 13 : 13 + 51], amap)   # at round(8 x 0.8), round(16 x 0.797)
    assert np.isnan(placed[:6]).all() and np.isnan(placed[:, :13]).all() and np.isnan(placed[70:]).all()
    np.testing.assert_array_equal(place_on_frame(amap, (96, 96), tiling.roi), placed)
    (region,) = verdict.regions
    x, y, w, h = region.bbox
    assert 65 <= x <= 67 and 57 <= y <= 59 and w <= 7 and h <= 7   # frame pixels (16 + 40 / 0.797, 8 + 40 / 0.8)


def test_a_hot_swap_brings_the_new_bundles_grid(tiled_bundle):
    from fair_edge.runtime.hotswap import ModelChange
    from fair_edge.station.inspector import Inspector
    from fair_edge.station.bundles import change_for

    _, bundle, _ = tiled_bundle
    scorer = select_backend(bundle, "onnxruntime")
    inspector = Inspector(None, scorer, 1.0, grid=None)
    inspector.switch.request(change_for(bundle, select_backend(bundle, "onnxruntime"), None))
    inspector.switch.request(ModelChange(threshold=2.0))   # an operator's threshold merged in keeps the grid
    inspector.apply_switch()
    assert inspector.decider.grid == (77, 77) and inspector.threshold == 2.0


def test_tiler_is_the_identity_without_tiling():
    tiler = FrameTiler(None, 32)
    frames = make_frames(2, seed=0, size=50)
    tiles, layouts = tiler.split(frames)
    assert tiles[0] is frames[0] and layouts == [None, None]
    maps, scores = tiler.stitch(np.ones((2, 32, 32), np.float32), np.array([1.0, 2.0]), layouts)
    assert len(maps) == 2 and scores.tolist() == [1.0, 2.0]


def test_a_frame_mask_lands_on_the_tiled_map_grid():
    layout = tile_layout((80, 80), TilingConfig(40, 0, roi=(0, 0, 80, 40)), 20)
    mask = np.zeros((80, 80), bool)
    mask[10:20, 60:70] = True
    on_map = layout.mask_to_map(mask)
    assert on_map.shape == (20, 40) and on_map[5:10, 30:35].all() and on_map.sum() == 25



def test_tiles_go_to_the_backend_in_chunks_of_its_max_batch(tiled_bundle):
    _, bundle, normals = tiled_bundle
    scorer = select_backend(bundle, "onnxruntime")
    assert scorer.max_batch == bundle.max_batch
    calls = []
    infer = scorer.backend.infer

    def counting(inputs):
        calls.append(len(next(iter(inputs.values()))))
        return infer(inputs)

    whole = scorer.infer_frames(normals[:2])
    scorer.backend.infer = counting
    chunked = replace(scorer, max_batch=5).infer_frames(normals[:2])
    assert calls == [5, 5, 5, 3]  # 2 frames x 9 tiles
    np.testing.assert_allclose(chunked[0], whole[0], atol=1e-6)


class CroppingPreprocess:
    """A pre-processing that crops tiles itself, as the fused GPU kernel's ``tiles`` does (one call per
    batch of same-sized frames); here with the CPU pipeline, recording each call."""

    def __init__(self, plain):
        self.plain, self.calls = plain, []

    def __call__(self, frames):
        return self.plain(frames)

    def tiles(self, frames, layout):
        self.calls.append((len(frames), layout.count))
        return self.plain([t for f in frames for t in split_frame(f, layout)])


def test_a_preprocessing_that_crops_tiles_gets_the_whole_frames_once(tiled_bundle):
    _, bundle, normals = tiled_bundle
    scorer = select_backend(bundle, "onnxruntime")
    host_cut = scorer.infer_frames(normals[:3])
    cropping = CroppingPreprocess(scorer.preprocess)
    in_launch = replace(scorer, preprocess=cropping, max_batch=7).infer_frames(normals[:3])
    assert cropping.calls == [(3, 9)]  # 3 frames, 9 tiles each, one call; the backend still gets chunks of 7
    np.testing.assert_allclose(in_launch[0], host_cut[0], atol=1e-6)
    np.testing.assert_allclose(in_launch[1], host_cut[1], atol=1e-6)


@pytest.mark.gpu
def test_torch_cuda_crops_tiles_in_the_kernel_and_agrees_with_onnxruntime(tiled_bundle):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    _, bundle, normals = tiled_bundle
    gpu = select_backend(bundle, "torch-cuda")
    assert hasattr(gpu.preprocess, "tiles")  # the fused kernel: whole frames in, every tile out of one launch
    maps, scores = gpu.infer_frames(normals[:3])
    ort_maps, ort_scores = select_backend(bundle, "onnxruntime").infer_frames(normals[:3])
    np.testing.assert_allclose(maps, ort_maps, atol=1e-3)
    np.testing.assert_allclose(scores, ort_scores, atol=1e-3)


@pytest.mark.parametrize("flags, warned", [
    (["--tile", "64", "--score-top-k", "8"], ["--score-top-k 8 (the image score as the mean of the 8 highest map pixels)"]),
    (["--tile", "64", "--set", "score_top_k=8", "--reweight"], ["--score-top-k 8", "--reweight (the paper's"]),
    (["--tile", "64"], []),                        # reweight on by default: not typed, nothing said
    (["--tile", "64", "--score-top-k", "1", "--no-reweight"], []),   # what the tiled score does anyway
    (["--score-top-k", "8"], []),                  # whole frames: the setting is used
])
def test_train_warns_of_patchcore_score_settings_a_tiled_frame_score_ignores(flags, warned):
    """A tiled frame's score is its stitched map's maximum, so PatchCore's --score-top-k > 1 and --reweight change
    nothing there; train said nothing of it. Run without DATA: the warning comes before that refusal. (The CLI
    replaces the root logger's handlers, caplog's included, so the records are taken on the command's logger.)"""
    import logging

    from typer.testing import CliRunner

    from fair_edge.cli import app

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("fair_edge.cli.train")
    logger.addHandler(handler)
    try:
        result = CliRunner().invoke(app, ["train", "--model", "patchcore", *flags])
    finally:
        logger.removeHandler(handler)
    assert result.exit_code != 0 and "train needs DATA" in result.output, result.output
    lines = [r.getMessage() for r in records]
    assert len(lines) == len(warned), lines
    for line, start in zip(lines, warned):
        assert line.startswith(start) and "is not used with --tile: a tiled model's frame score is the maximum" in line


def test_a_defect_smaller_than_a_tiled_map_pixel_keeps_one():
    """80 px frames at 20 / 40 map px per frame px: nearest sampling reads even frame rows and columns only, so a
    1 px defect at (3, 5) would vanish; it keeps the map pixel holding it, (1, 2), also inside an ROI."""
    mask = np.zeros((80, 80), bool)
    mask[3, 5] = True
    on_map = tile_layout((80, 80), TilingConfig(40, 0), 20).mask_to_map(mask)
    assert on_map.shape == (40, 40) and on_map.sum() == 1 and on_map[1, 2]
    in_roi = tile_layout((80, 80), TilingConfig(40, 0, roi=(1, 0, 60, 40)), 20).mask_to_map(mask)  # crop column 1..
    assert in_roi.shape == (20, 30) and in_roi.sum() == 1 and in_roi[1, 2]


def two_size_test_set(root):
    """An MVTec-layout test set of 96 and 112 px frames (normal, and defective with masks)."""
    import cv2
    from conftest import make_defect

    rng = np.random.default_rng(4)
    for sub in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / sub).mkdir(parents=True)
    for i, size in enumerate((96, 112, 96, 112)):
        cv2.imwrite(str(root / f"test/good/{i:03d}.png"), make_frames(1, seed=20 + i, size=size)[0])
        image, mask = make_defect(rng, size)
        cv2.imwrite(str(root / f"test/blob/{i:03d}.png"), image)
        cv2.imwrite(str(root / f"ground_truth/blob/{i:03d}_mask.png"), mask)
    write_pngs(root / "train/good", make_frames(2, seed=30, size=96))
    return root


def test_eval_of_a_tiled_model_on_images_of_two_sizes(tiled_bundle, tmp_path):
    """96 and 112 px frames stitch to 77 x 77 and 90 x 90 maps: maps come as a list, pixel AUROC pools every
    pixel, AUPRO labels regions per image, region results per image; tune's scoring (no masks) works too."""
    from sklearn.metrics import roc_auc_score

    from fair_edge.training.data import load_dataset
    from fair_edge.training.evaluate import compute_metrics, evaluate

    ckpt_path = tiled_bundle[0]
    split = load_dataset(two_size_test_set(tmp_path / "plate"))
    scored = score_samples(ckpt_path, split.test, with_masks=True)
    assert isinstance(scored.maps, list) and {m.shape for m in scored.maps} == {(77, 77), (90, 90)}
    assert [m.shape for m in scored.masks] == [m.shape for m in scored.maps] and all(k.any() for k in scored.masks[:4])
    result = compute_metrics(scored)
    pixels = np.concatenate([m.ravel() for m in scored.maps])
    truth = np.concatenate([k.ravel() for k in scored.masks])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(truth, pixels), abs=1e-9)
    assert 0.0 <= result["aupro"] <= 1.0 and result["regions"]["defects"] >= 4
    report = evaluate(ckpt_path, split, tmp_path / "eval")
    assert report["pixel_auroc"] == pytest.approx(result["pixel_auroc"]) and (tmp_path / "eval" / "pro.png").is_file()
    assert len((tmp_path / "eval" / "regions.csv").read_text().splitlines()) == 9
    plain = score_samples(ckpt_path, split.test)
    assert plain.masks is None and [m.shape for m in plain.maps] == [m.shape for m in scored.maps]


def test_a_tiled_bundle_refuses_frames_of_two_sizes_in_one_call_naming_them(tiled_bundle):
    """Their stitched maps differ in size (77 x 77, 90 x 90): a clear refusal, not NumPy's stacking error."""
    _, bundle, normals = tiled_bundle
    scorer = select_backend(bundle, "onnxruntime")
    with pytest.raises(ConfigError, match=r"frame 0 of 96 x 96 px and frame 1 of 112 x 112 px, whose maps are "
                                          r"77 x 77 and 90 x 90\. Call infer_frames once per frame size"):
        scorer.infer_frames([normals[0], make_frames(1, seed=9, size=112)[0]])
    scorer.backend.close()

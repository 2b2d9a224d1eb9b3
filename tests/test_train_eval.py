"""End to end on the CPU: train a tiny model on the generated plate, evaluate it, resume exactly."""

import csv
import errno
import json
import logging
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.cli import app
from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.training.data import load_dataset
from fair_edge.training.evaluate import evaluate
from fair_edge.preprocess import PreprocessConfig
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig, Trainer
from fair_edge.training.loop import TrainingInterrupted

PRE = PreprocessConfig(image_size=32, cutoff=4.0)


def tiny_trainer(mvtec_dir, out, steps=6, **kw):
    cfg = TrainConfig(batch=4, lr=1e-3, steps=steps, save_every=3, log_every=1, **kw)
    return Trainer(load_dataset(mvtec_dir), PRE, FairSettings(width=8), cfg, out, torch.device("cpu"))


def test_training_writes_checkpoints_and_a_falling_loss(trained):
    final, out = trained
    assert final.name == "final.pt" and (out / "last.pt").is_file()
    ckpt = load_checkpoint(final)
    assert ckpt.train_state is None and ckpt.settings.width == 8 and ckpt.preprocess == PRE
    assert ckpt.data_summary["train_images"] == 16 and ckpt.data_summary["steps"] == 60
    rows = list(csv.DictReader((out / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    first = sum(float(r["loss"]) for r in rows[:5]) / 5
    last = sum(float(r["loss"]) for r in rows[-5:]) / 5
    assert last < 0.7 * first


def test_the_unet_width_is_a_model_setting_only(mvtec_dir, tmp_path):
    """The width lives in FairSettings: the Trainer builds its UNet from the model settings it is given."""
    from dataclasses import fields

    from fair_edge.models.fair.scoring import ScoringConfig

    assert "width" not in {f.name for f in fields(TrainConfig)}
    with pytest.raises(TypeError):
        TrainConfig(width=8)
    settings = FairSettings(width=8, scoring=ScoringConfig(smooth=5))
    trainer = Trainer(load_dataset(mvtec_dir), PRE, settings, TrainConfig(batch=4, steps=1), tmp_path,
                      torch.device("cpu"))
    assert trainer.state.unet.width == 8 and trainer.state.unet.head.in_channels == 8
    assert trainer.model.settings == settings
    ckpt = load_checkpoint(trainer.run())
    assert ckpt.settings == settings and ckpt.state_dict["head.weight"].shape[1] == 8
    assert "width" not in load_checkpoint(tmp_path / "last.pt").train_state["config"]
    assert "width" not in ckpt.data_summary["train_config"]
    with pytest.raises(ConfigError, match="takes the model settings .FairSettings."):  # the old argument order
        Trainer(load_dataset(mvtec_dir), PRE, TrainConfig(batch=4, steps=1), tmp_path, torch.device("cpu"),
                settings.scoring)


def test_eval_report(trained, mvtec_dir, tmp_path):
    final, _ = trained
    result = evaluate(final, load_dataset(mvtec_dir), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["images"] == 12 and saved["defective"] == 6 and saved["normal"] == 6
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 12 and {r["label"] for r in rows} == {"0", "1"}
    # the image metrics, recomputed here from scores.csv (6 decimals) by their definitions
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    normal, defect = scores[labels == 0], scores[labels == 1]
    assert saved["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    # 6 normal images: 0.5 % and 5 % both allow no false reject, so the threshold is just above the highest
    # normal score (no normal above it bounds the gap: 1e-3 x its magnitude + 1e-6 above)
    suggested = normal.max() + 1e-3 * abs(normal.max()) + 1e-6
    assert saved["suggested_threshold"] == pytest.approx(suggested, abs=2e-6)
    for rate in ("0.5%", "5.0%"):
        assert saved[f"catch_at_{rate}_false_rejects"] == pytest.approx((defect > suggested).mean()), rate
    f1 = [2 * (defect >= t).sum() / ((scores >= t).sum() + defect.size) for t in defect]   # NG: score >= t
    assert saved["f1_max"] == pytest.approx(max(f1), abs=1e-6) and saved == {**saved, **result}
    # the blobs are red on a gray plate: even a briefly trained model must separate them well
    assert result["image_auroc"] >= 0.9 and result["pixel_auroc"] >= 0.9 and 0.5 <= result["aupro"] <= 1.0
    for name in ("roc.png", "pro.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = sorted((tmp_path / "heatmaps").glob("*.png"))
    assert len(panels) == 12
    defect = cv2.imread(str(next(p for p in panels if p.name.startswith("defect-lowest"))))
    assert defect.shape[0] > 256 and defect.shape[1] > 2 * 256  # text, image and heat map (enlarged), scale
    assert (defect == 255).all(axis=-1)[-256:, :512].any()  # the mask outline



def test_eval_with_a_missing_mask_computes_pixel_metrics_on_the_others(trained, mvtec_dir, tmp_path, caplog):
    """One defective image without its mask: image metrics on all 12, pixel and region metrics on the 11 with
    ground truth (6 normal, 5 defective), and the report counts and names the one without."""
    final, _ = trained
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    (root / "ground_truth/blob/002_mask.png").unlink()
    full = evaluate(final, load_dataset(mvtec_dir), tmp_path / "full")
    with caplog.at_level(logging.WARNING):
        result = evaluate(final, load_dataset(root), tmp_path / "part")
    assert result["images"] == 12 and result["image_auroc"] == pytest.approx(full["image_auroc"])
    assert result["masks_missing"] == {"count": 1, "first": [str(root / "test/blob/002.png")]}
    assert "pixel_auroc" in result and "aupro" in result and result["regions"]["defects"] >= 5
    assert result["regions"]["defects"] < full["regions"]["defects"]
    assert result["pixel_metrics"].startswith("pixel metrics computed on 5 of 6 defective images: 1 has no "
                                              "ground-truth mask (002.png;")
    assert "002.png" in caplog.text
    rows = list(csv.DictReader((tmp_path / "part" / "regions.csv").open()))
    assert len(rows) == 11 and str(root / "test/blob/002.png") not in {r["path"] for r in rows}
    assert (tmp_path / "part" / "pro.png").is_file()


def test_eval_skips_an_undersized_image_naming_it(trained, mvtec_dir, tmp_path, caplog):
    """A 3 x 1 px thumbnail among the test images is skipped as an unreadable one is, the warning naming it."""
    final, _ = trained
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    cv2.imwrite(str(root / "test/good/zz.png"), np.full((1, 3, 3), 128, np.uint8))
    with caplog.at_level(logging.WARNING):
        result = evaluate(final, load_dataset(root), tmp_path / "eval")
    assert result["images"] == 12 and result["dataset"]["test_normal"] == 7
    assert re.search(r"zz\.png \(3 x 1 px\) cannot be a model input: .*Remove the file", caplog.text)
    assert "skipped 1 unreadable or undersized image(s) of 13" in caplog.text


def test_cli_train_skips_an_undersized_image_naming_it(mvtec_dir, tmp_path):
    """`fair-edge train` on 16 good images and a 3 x 1 px thumbnail fits on the 16, the warning naming the file."""
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    cv2.imwrite(str(root / "train/good/zz.png"), np.full((1, 3, 3), 128, np.uint8))
    result = CliRunner().invoke(app, ["train", str(root), "--model", "patchcore", "--image-size", "32",
                                      "--out", str(tmp_path / "pc"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = load_checkpoint(tmp_path / "pc" / "final.pt").data_summary
    assert (summary["train_images"], summary["train_images_used"]) == (17, 16)
    printed = "".join(result.output.split())  # the CLI logs through rich, wrapped to the console width
    assert "zz.png(3x1px)cannotbeamodelinput" in printed, result.output

def test_resume_is_exact(mvtec_dir, tmp_path):
    straight = tiny_trainer(mvtec_dir, tmp_path / "a", steps=6)
    straight.run()
    first = tiny_trainer(mvtec_dir, tmp_path / "b", steps=6)

    def stop_at_3(step, total, loss, rate):
        if step == 3:
            first.request_stop()  # what Ctrl-C does

    with pytest.raises(TrainingInterrupted) as info:
        first.run(stop_at_3)
    assert info.value.step == 3 and load_checkpoint(info.value.checkpoint).train_state["step"] == 3
    second = tiny_trainer(mvtec_dir, tmp_path / "b", steps=6)
    second.resume()
    second.run()
    for key, value in straight.state.unet.state_dict().items():
        torch.testing.assert_close(second.state.unet.state_dict()[key], value, rtol=0, atol=0, msg=key)
    rows = list(csv.DictReader((tmp_path / "b" / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_settings(mvtec_dir, tmp_path):
    tiny_trainer(mvtec_dir, tmp_path, steps=3).run()
    other = Trainer(load_dataset(mvtec_dir), PreprocessConfig(image_size=32, cutoff=5.0),
                    FairSettings(width=8), TrainConfig(batch=4, steps=3), tmp_path, torch.device("cpu"))
    with pytest.raises(CheckpointError, match=r"cannot resume: .*last\.pt was trained as .*cutoff=4\.0.*cutoff=5\.0"):
        other.resume()


def test_cli_train_and_eval(mvtec_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--cutoff", "4",
                                 "--steps", "2", "--batch", "4", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "final.pt")   # the flags reached the checkpoint
    assert ckpt.settings.width == 32 and ckpt.preprocess == PRE and ckpt.data_summary["steps"] == 2
    assert f"next: fair-edge eval {out / 'final.pt'} {mvtec_dir}" in result.output.replace("\n", "")
    result = runner.invoke(app, ["eval", str(out / "final.pt"), str(mvtec_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    assert saved["images"] == 12 and (out / "eval" / "scores.csv").read_text().count("\n") == 13
    printed = dict(re.findall(r"^\W*(\w[\w.%]*)\W+([-\d.]+)\W*$", result.output, re.M))   # the metric table's rows
    assert printed["images"] == "12" and printed["image_auroc"] == f"{saved['image_auroc']:.4f}"
    assert printed["suggested_threshold"] == f"{saved['suggested_threshold']:.4f}"


def test_train_without_model_fits_patchcore_and_a_fair_setting_picks_fair(mvtec_dir, tmp_path):
    """The family chosen on the development suite (registry.TRAIN_FAMILY) is what `train DATA` fits; FAIR's own
    --width picks FAIR, saying so; a setting two other families share names them both and changes nothing."""
    from fair_edge.models.registry import TRAIN_FAMILY

    runner = CliRunner()
    result = runner.invoke(app, ["train", str(mvtec_dir), "--image-size", "32", "--out", str(tmp_path / "pc"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert TRAIN_FAMILY == "patchcore" and load_checkpoint(tmp_path / "pc" / "final.pt").model.family == "patchcore"
    result = runner.invoke(app, ["train", str(mvtec_dir), "--width", "32", "--image-size", "32", "--steps", "1",
                                 "--batch", "4", "--set", "scoring.k_color=0", "--out", str(tmp_path / "fair"),
                                 "--device", "cpu"])
    assert result.exit_code == 0 and "training FAIR: the settings typed are its own (--model fair)" in result.output
    fair = load_checkpoint(tmp_path / "fair" / "final.pt").settings
    assert fair.width == 32 and (fair.scoring.k_color, fair.scoring.smooth) == (0.0, 21)  # one field of the group set
    result = runner.invoke(app, ["train", str(mvtec_dir), "--steps", "1", "--out", str(tmp_path / "none")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "without --model fits patchcore, which has no --steps" in text
    assert "Add --model fair or --model lgfdr, or leave --steps out." in text and not (tmp_path / "none").exists()


@pytest.mark.parametrize("args,message", [
    (["train", "nowhere", "--width", "32"], "does not exist"),
    (["train", "elpv", "--width", "48"], "--width must be one of 32, 64, 128"),
    (["train", "elpv", "--width", "32", "--filter", "laplace"], "filter must be one of"),
    (["eval", "missing.pt", "elpv"], "does not exist"),
])
def test_cli_errors_are_one_clear_line(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_cli_help_teaches():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--resume" in result.output and "--width" in result.output


def test_eval_into_an_earlier_report_folder_holds_this_run_only(trained, mvtec_dir, tmp_path):
    """A second eval into the same folder (the default CHECKPOINT_DIR/eval) on a set without masks and with fewer
    images left the first run's regions.csv, pro.png and heat-map panels beside the new metrics.json."""
    out = tmp_path / "eval"
    evaluate(trained[0], load_dataset(mvtec_dir), out)
    assert (out / "regions.csv").is_file() and (out / "pro.png").is_file()
    (out / "notes.txt").write_text("mine")  # not the report's: kept
    no_masks = tmp_path / "plate"
    shutil.copytree(mvtec_dir, no_masks)
    shutil.rmtree(no_masks / "ground_truth")
    for i in range(3):
        (no_masks / "test" / "blob" / f"{i:03d}.png").unlink()
    result = evaluate(trained[0], load_dataset(no_masks), out)
    assert result["images"] == 9 and "aupro" not in result
    assert not (out / "regions.csv").exists() and not (out / "pro.png").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "roc.png").is_file()
    panels = sorted((out / "heatmaps").glob("*.png"))
    assert len(panels) == 6 + 3  # this run's worst normals and defects, none of the first run's
    scored = {f"{float(r['score']):.4f}-{r['path'].rsplit('/', 1)[-1][:-4]}"
              for r in csv.DictReader((out / "scores.csv").open())}
    assert all(p.name.split("-", 3)[-1][:-4] in scored for p in panels)


@pytest.mark.parametrize("batch", ["0", "-2"])
def test_eval_refuses_a_batch_below_one_naming_it(trained, mvtec_dir, tmp_path, batch):
    """--batch 0 crashed with a ValueError (range step 0); a negative one said no test image could be read."""
    result = CliRunner().invoke(app, ["eval", str(trained[0]), str(mvtec_dir), "--batch", batch,
                                      "--out", str(tmp_path / "ev"), "--device", "cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"--batch must be >= 1 image per forward pass; found {batch}" in text, text
    assert not (tmp_path / "ev").exists()
    from fair_edge.training.evaluate import score_samples

    with pytest.raises(ConfigError, match="batch must be >= 1"):
        score_samples(trained[0], load_dataset(mvtec_dir).test, batch=0)


def test_a_defect_that_nearest_sampling_loses_keeps_the_map_pixel_it_covers_most():
    """48 px mask -> 32 px grid (map pixel j covers mask columns [1.5 j, 1.5 j + 1.5)): nearest sampling reads mask
    rows and columns 0, 1, 3, 4, 6, ..., never row 2. A defect on row 2, columns 2..4, lies in map row 1 and map
    columns 1 (1 mask px), 2 (1.5 px) and 3 (0.5 px): it keeps map pixel (1, 2). Masks whose defects survive
    nearest sampling come out exactly as nearest sampling gives them."""
    from scipy import ndimage

    from fair_edge.training.evaluate import _mask_to_map

    mask = np.zeros((48, 48), bool)
    mask[2, 2:5] = True
    on_map = _mask_to_map(mask, None, (32, 32))
    assert on_map.sum() == 1 and on_map[1, 2]
    mask[20:26, 20:30] = True  # a second defect, kept by nearest sampling: unchanged, and the first one added
    nearest = cv2.resize(mask.astype(np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST) > 0
    on_map = _mask_to_map(mask, None, (32, 32))
    assert (on_map == (nearest | (np.arange(32)[:, None] == 1) & (np.arange(32) == 2))).all() and not nearest[1, 2]
    rng = np.random.default_rng(0)
    for _ in range(20):  # random masks on random grids: nearest's pixels kept, one pixel more per lost defect
        size, grid = rng.integers(20, 90, 2), tuple(int(v) for v in rng.integers(6, 40, 2))
        mask = rng.random(size) < 0.02
        nearest = cv2.resize(mask.astype(np.uint8), grid[::-1], interpolation=cv2.INTER_NEAREST) > 0
        on_map = _mask_to_map(mask, None, grid)
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        lost = count - len(np.unique(cv2.resize(labelled, grid[::-1], interpolation=cv2.INTER_NEAREST))) + 1
        assert (on_map >= nearest).all() and on_map.sum() - nearest.sum() <= lost and (lost == 0) == (on_map == nearest).all()


def test_scored_masks_are_bool_and_their_region_labels_a_field_of_their_own(trained, mvtec_dir, tmp_path):
    """score_samples with masks: ``masks`` bool defect masks on the map grid (as every reader takes them), and
    ``regions`` the int32 labels of the full-size masks' regions (``regions > 0`` is ``masks``), kept row for row
    when a defective image without a mask is left out of the pixel metrics; eval's AUPRO reads them explicitly."""
    from fair_edge.training import metrics
    from fair_edge.training.evaluate import compute_metrics, score_samples

    final, _ = trained
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    (root / "ground_truth/blob/002_mask.png").unlink()
    scored = score_samples(final, load_dataset(root).test, with_masks=True)
    assert scored.masks.dtype == bool and scored.regions.dtype == np.int32
    assert ((scored.regions > 0) == scored.masks).all() and scored.masks.any()
    pixel = scored.with_masks_only()
    assert len(pixel.regions) == len(pixel.masks) == 11 and ((pixel.regions > 0) == pixel.masks).all()
    result = compute_metrics(scored)
    assert result["aupro"] == metrics.aupro(pixel.maps, pixel.masks, fpr_limit=0.3, regions=pixel.regions)


def dotted_copy(mvtec_dir, root, dot):
    """A copy of the plate whose masks mark only ``dot`` (None: no pixel), as a defect too small for the grid."""
    shutil.copytree(mvtec_dir, root)
    for path in (root / "ground_truth/blob").glob("*_mask.png"):
        mask = np.zeros((48, 48), np.uint8)
        if dot is not None:
            mask[dot] = 255
        cv2.imwrite(str(path), mask)
    return root


def test_eval_keeps_defects_too_small_for_the_map_grid(trained, mvtec_dir, tmp_path):
    """Each 48 px test image's mask marks one pixel on row and column 23, which nearest sampling to the 32 px map
    never reads: every defect still has a map pixel, so the pixel and region metrics cover all six."""
    final, _ = trained
    root = dotted_copy(mvtec_dir, tmp_path / "plate", (23, 23))
    result = evaluate(final, load_dataset(root), tmp_path / "eval")
    assert "pixel_auroc" in result and "aupro" in result and "pixel_metrics" not in result
    assert result["regions"]["defects"] == 6


def test_eval_without_a_defect_pixel_in_any_mask_writes_image_metrics_and_skips_pixel_metrics(trained, mvtec_dir,
                                                                                            tmp_path):
    final, _ = trained
    root = dotted_copy(mvtec_dir, tmp_path / "plate", None)
    result = evaluate(final, load_dataset(root), tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["image_auroc"] == result["image_auroc"] and "pixel_auroc" not in saved and "aupro" not in saved
    assert saved["pixel_metrics"].startswith("pixel metrics skipped: Pixel AUROC is undefined with one class only")
    assert (tmp_path / "eval" / "scores.csv").is_file() and not (tmp_path / "eval" / "pro.png").exists()


def test_eval_f1_threshold_is_the_stations_threshold():
    """The station rejects when score > threshold: at eval's f1_threshold it rejects every defect it counts, and
    the value is fair-edge build's F1-optimal threshold (here midway between the highest normal score, 0.3, and
    the lowest defect's, 0.5: never a score itself, which another backend would move across it)."""
    from pathlib import Path

    from fair_edge.calibration.threshold import f1_optimal_threshold
    from fair_edge.training.data import Sample
    from fair_edge.training.evaluate import ScoredSet, compute_metrics

    normal, defect = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6])
    samples = [Sample(Path(f"{i}.png"), int(i >= 3)) for i in range(5)]
    result = compute_metrics(ScoredSet(samples, np.r_[normal, defect], np.zeros((5, 4, 4), np.float32), None))
    assert result["f1_threshold"] == 0.4 == f1_optimal_threshold(normal, defect)[0] and result["f1_max"] == 1.0
    assert (defect > result["f1_threshold"]).all() and not (normal > result["f1_threshold"]).any()
    assert "score > f1_threshold" in result["f1_threshold_rule"]


def test_loss_csv_lr_is_the_rate_the_logged_step_trained_with(mvtec_dir, tmp_path):
    """The lr column was read after scheduler.step(), so each row showed the next step's rate: step 2, the last at
    1e-3 before the milestone, showed 0.0002."""
    tiny_trainer(mvtec_dir, tmp_path, steps=4, lr_milestones=(0.5,), amp=False).run()  # steps 1-2: 1e-3, 3-4: 2e-4
    with (tmp_path / "loss.csv").open() as fh:
        assert [float(row["lr"]) for row in csv.DictReader(fh)] == pytest.approx([1e-3, 1e-3, 2e-4, 2e-4])


def test_eval_of_a_file_name_that_is_not_utf8_writes_the_whole_report(trained, mvtec_dir, tmp_path):
    """A Latin-1 ``dégât.png`` (from a Windows share) stopped eval with UnicodeEncodeError writing regions.csv,
    after the earlier report was deleted; its panel text and file name crashed OpenCV. The CSV files stay UTF-8:
    the byte that is not UTF-8 is written as \\xNN."""
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    odd = os.fsdecode(b"d\xe9g\xe2t")
    (root / "test/blob/000.png").rename(root / "test/blob" / f"{odd}.png")
    (root / "ground_truth/blob/000_mask.png").rename(root / "ground_truth/blob" / f"{odd}_mask.png")
    out = tmp_path / "eval"
    result = evaluate(trained[0], load_dataset(root), out)
    assert result["images"] == 12 and result["regions"]["defects"] >= 6
    shown = str(root / "test/blob") + "/d\\xe9g\\xe2t.png"
    for name in ("scores.csv", "regions.csv"):
        rows = list(csv.DictReader((out / name).open(encoding="utf-8")))
        assert len(rows) == 12 and shown in {r["path"] for r in rows}, name
    json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    panels = list((out / "heatmaps").iterdir())
    assert len(panels) == 12 and any(p.name.endswith(f"-{odd}.png") for p in panels)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_an_eval_that_fails_halfway_leaves_the_earlier_report_as_it_was(trained, mvtec_dir, tmp_path, monkeypatch):
    """The report is written into a temporary folder and moved in at the end: before, the earlier report was
    deleted first, and an error halfway left half a report (metrics.json and scores.csv of the new run only)."""
    from fair_edge import plots

    out = tmp_path / "eval"
    evaluate(trained[0], load_dataset(mvtec_dir), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    no_masks = tmp_path / "plate"
    shutil.copytree(mvtec_dir, no_masks)
    shutil.rmtree(no_masks / "ground_truth")

    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(plots, "save_roc_plot", fail)
    with pytest.raises(OSError, match="No space left"):
        evaluate(trained[0], load_dataset(no_masks), out, false_reject_rate=0.2)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_eval_refuses_a_pixel_threshold_that_is_not_finite_naming_the_flag(trained, mvtec_dir, tmp_path, value):
    """--pixel-threshold nan was taken, and metrics.json held a bare NaN (not JSON)."""
    result = CliRunner().invoke(app, ["eval", str(trained[0]), str(mvtec_dir), "--pixel-threshold", value,
                                      "--out", str(tmp_path / "ev"), "--device", "cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"--pixel-threshold must be a finite map value (score units); found {value}" \
        in text, text
    assert not (tmp_path / "ev").exists()


def test_eval_of_a_dataset_without_training_images_needs_only_its_test_folder(trained, mvtec_dir, tmp_path):
    """eval reads test/ only: a category with no train/good (or an empty one) was refused as 'holds no images'."""
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    shutil.rmtree(root / "train")
    for case in ("missing", "empty"):
        result = CliRunner().invoke(app, ["eval", str(trained[0]), str(root), "--out", str(tmp_path / case),
                                          "--device", "cpu"])
        assert result.exit_code == 0, (case, result.output)
        saved = json.loads((tmp_path / case / "metrics.json").read_text())
        assert saved["images"] == 12 and saved["dataset"]["train_images"] == 0
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("read_only, words", [(True, "is on a read-only file system"),
                                              (False, "is not writable by this account")])
def test_eval_into_a_read_only_out_is_refused_before_scoring(trained, mvtec_dir, tmp_path, monkeypatch, read_only,
                                                             words):
    """`eval --out DIR` on a read-only disk scored the whole test set, then crashed with a raw OSError traceback
    from the report's mkdir / mkdtemp; now one line names the folder and the fix before the data loads."""
    from fair_edge.training import evaluate as evaluate_module
    from test_cli_train_flags import _pretend

    disk = tmp_path / "disk"
    disk.mkdir()
    _pretend(monkeypatch, disk, read_only=read_only, writable=False)
    scored = []
    monkeypatch.setattr(evaluate_module, "score_samples", lambda *a, **k: scored.append(a) or pytest.fail("scored"))
    for out, where in ((disk / "ev", f" (it would be made in {disk}, the nearest folder that exists)"), (disk, "")):
        result = CliRunner().invoke(app, ["eval", str(trained[0]), str(mvtec_dir), "--out", str(out),
                                          "--device", "cpu"], env={"COLUMNS": "400"})
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and text.startswith(f"error: --out {out}: {disk} {words}{where}; an "
                                                         "evaluation writes its report there. Choose an --out"), text
    assert scored == [] and not (disk / "ev").exists()


@pytest.mark.parametrize("code, words, left", [
    (errno.EROFS, "{out} is on a read-only file system. Choose an --out on a writable disk", "nothing was written"),
    (errno.EACCES, "this account cannot write in {out}. Choose an --out you can write", "nothing was written")])
def test_a_report_folder_that_cannot_be_made_is_one_clear_error(trained, mvtec_dir, tmp_path, monkeypatch, code,
                                                               words, left):
    """write_report's mkdir / mkdtemp on a read-only or foreign folder raised a bare OSError (a traceback from the
    CLI); now a FairEdgeError (still an OSError) naming the folder, the cause and the fix."""
    import tempfile

    from fair_edge.errors import FairEdgeError

    out = tmp_path / "ev"

    def refuse(*args, dir=None, **kwargs):
        raise (PermissionError if code == errno.EACCES else OSError)(code, os.strerror(code), str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(FairEdgeError) as caught:
        evaluate(trained[0], load_dataset(mvtec_dir), out)
    text = str(caught.value)
    assert isinstance(caught.value, OSError)
    assert text.startswith(f"the evaluation report was not written to {out} ({out}: {os.strerror(code)}); {left}: "
                           + words.format(out=out)) and text.endswith("then run eval again."), text
    result = CliRunner().invoke(app, ["eval", str(trained[0]), str(mvtec_dir), "--out", str(out), "--device", "cpu"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "\nerror: the evaluation report was not written to" in result.output, \
        result.output   # after the scoring's progress line: the report is written last
    assert "Traceback" not in result.output


def test_a_full_disk_while_writing_the_report_names_the_disk_and_keeps_the_earlier_report(trained, mvtec_dir,
                                                                                         tmp_path, monkeypatch):
    """A full disk while the report files were written raised a bare OSError; now it names the disk, its free
    space and the fix, and says the earlier report is left as it was (it is)."""
    from fair_edge import plots
    from fair_edge.errors import FairEdgeError

    out = tmp_path / "ev"
    evaluate(trained[0], load_dataset(mvtec_dir), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "save_roc_plot", full)
    with pytest.raises(FairEdgeError, match=rf"^the evaluation report was not written to {re.escape(str(out))} "
                       r"\(.*roc\.png: No space left on device\); an earlier report there is left as it was: the "
                       rf"disk of {re.escape(str(out))} is full \([\d.]+ MB free on the disk of [^)]*\)\. Free space on that disk or "
                       r"choose an --out on another disk, then run eval again\.$"):
        evaluate(trained[0], load_dataset(mvtec_dir), out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

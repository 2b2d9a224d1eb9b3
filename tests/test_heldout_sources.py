"""Where held-out and training images come from, and what a folder listing leaves out.

- ``build --normal`` / ``--defects`` (and ``fuse --normal``) given a dataset without a test split took its training
  images as the held-out normals (threshold 13.36 against 20.76 from real held-out normals in the audit: 14 of 20
  real normals then rejected) and as defects (n_defect 30, f1 0.75): now refused, naming the dataset and the fix.
- ``build --normal`` given one frame saved 50 times took it as 50 held-out normals ("false-reject 0.00 % on 50";
  6 of 20 real normals then rejected): the FP32 scores of the threshold's frames must spread (fusion's rule,
  ``calibration.threshold.check_spread``), and byte-identical --normal files are named in a warning.
- A folder listing skipped subfolders and dangling links without a word (train/good with 5 images + lot2/ of 25
  trained on 5): now one warning names them, and "holds no images" says what was there (and a Train/Good).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.cli.build import build
from fair_edge.errors import DataError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import list_images, load_dataset
from fair_edge.training.held_out import images_for

build_app = typer.Typer()
build_app.command("build")(build)


@build_app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def invoke_build(*args):
    return CliRunner().invoke(build_app, ["build", *map(str, args)], env={"COLUMNS": "200"})


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def no_test_split(mvtec_dir, tmp_path) -> Path:
    """The plate's MVTec folder with train/good only (16 normal training images), as a dataset is before its test
    images are collected."""
    root = tmp_path / "notest"
    shutil.copytree(mvtec_dir / "train", root / "train")
    return root


# ----------------------------------------------------------------------------- a dataset without a test split
@pytest.mark.parametrize("role, flag, words", [("normal", "--normal", "held-out normal images"),
                                               ("defect", "--defects", "defective images")])
def test_a_dataset_without_a_test_split_gives_no_held_out_images(no_test_split, role, flag, words):
    """Its training images were returned for every role: the threshold was calibrated on what the model was fitted
    on, and normal images were counted as defects."""
    with pytest.raises(DataError) as info:
        images_for(no_test_split, role)
    text = str(info.value)
    assert f"{flag}: dataset {no_test_split} has no test split (MVTec: a test/ folder" in text
    assert f"its 16 images are its training images, not {words}. Pass a folder of" in text
    assert f"to {flag}, or add the dataset's test split" in text
    assert len(images_for(no_test_split, "train")) == 16   # --calib: its training images, as before


def test_a_visa_csv_without_test_rows_gives_no_held_out_images(mvtec_dir, tmp_path):
    csv = tmp_path / "split.csv"
    rows = [f"plate,train,normal,{p.relative_to(mvtec_dir.parent).as_posix()}," for p in
            sorted((mvtec_dir / "train" / "good").iterdir())]
    csv.write_text("object,split,label,image,mask\n" + "\n".join(rows) + "\n")
    (tmp_path / "plate").symlink_to(mvtec_dir)
    with pytest.raises(DataError, match=r"--normal: dataset .*split\.csv has no test split \(VisA: rows with split "
                                        r"'test'\): its 16 images are its training images"):
        images_for(csv, "normal")


def test_a_plain_folder_gives_all_its_images_for_every_role(tmp_path):
    folder = write_pngs(tmp_path / "imgs", make_frames(3, seed=1))
    for role in ("train", "normal", "defect"):
        assert [p.name for p in images_for(folder, role)] == ["000.png", "001.png", "002.png"]


def test_a_dataset_with_a_test_split_gives_its_test_images(mvtec_dir):
    assert [p.parent.name for p in images_for(mvtec_dir, "normal")] == ["good"] * 6
    assert [p.parent.name for p in images_for(mvtec_dir, "defect")] == ["blob"] * 6


def test_build_refuses_a_dataset_without_a_test_split_for_normal_and_defects(tiny_ckpt_path, no_test_split, mvtec_dir,
                                                                            tmp_path):
    """The audit: `build --normal DATASET` wrote "false-reject 0.00% on 30 held-out normal images" on the training
    images, and `--defects DATASET` fed 30 normal images to the F1 threshold as defects."""
    r = invoke_build(tiny_ckpt_path, "--normal", no_test_split, "--out", tmp_path / "b")
    assert r.exit_code == 2 and f"--normal: dataset {no_test_split} has no test split" in one_line(r.output), r.output
    r = invoke_build(tiny_ckpt_path, "--normal", mvtec_dir, "--defects", no_test_split, "--out", tmp_path / "b")
    assert r.exit_code == 2 and f"--defects: dataset {no_test_split} has no test split" in one_line(r.output), r.output
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- copies of one frame
def test_check_spread_is_fusions_rule_and_names_what_does_not_spread():
    from fair_edge.calibration.threshold import check_spread

    for flat in (np.array([3.0, 3.0]), np.zeros(4), np.array([5.0, 5.0 + 1e-9])):
        with pytest.raises(DataError, match=r"^--normal d: scores on the \d held-out normal images do not spread \(mean "
                                            r".*, std .*; expected a std over 1e-06 of the mean\), so x; fix\.$"):
            check_spread(flat, "--normal d: scores", "so x", "fix.")
    assert check_spread(np.array([1.0, 1.5]), "w", "y", "f") == pytest.approx((1.25, 0.25))


def test_build_refuses_normal_frames_that_do_not_spread_naming_where_they_came_from(tiny_ckpt_path, tmp_path):
    """One frame six times: the threshold sat a margin above its score, "false-reject 0.00% on 6"."""
    frame = make_frames(1, seed=3)[0]
    options = BuildOptions(engine=False, threshold_images="--normal data/dup")
    with pytest.raises(DataError) as info:
        build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", options, normal_frames=[frame] * 6)
    text = str(info.value)
    assert text.startswith("--normal data/dup: the FP32 graph's scores on the 6 held-out normal images do not spread")
    assert "pass images of different normal parts that training did not see with --normal" in text
    assert not (tmp_path / "b").exists()
    # the fallback on calibration images (no --normal) is not: training images may all score alike on a model
    # fitted on them (a PatchCore memory bank holding their patches), and its source says "training data"
    built = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "c", BuildOptions(engine=False),
                         calib_frames=[frame] * 4)
    assert built.bundle.threshold.n_normal == 4 and built.bundle.threshold.source.startswith("calibration images")


def test_build_keeps_normal_frames_that_spread_and_a_single_frame(tiny_ckpt_path, tmp_path):
    frames = make_frames(2, seed=3)
    ckpt = load_checkpoint(tiny_ckpt_path)
    kept = build_bundle(ckpt, tmp_path / "b", BuildOptions(engine=False), normal_frames=[frames[0]] * 5 + [frames[1]])
    assert kept.bundle.threshold.n_normal == 6
    one = build_bundle(ckpt, tmp_path / "c", BuildOptions(engine=False), normal_frames=frames[:1])
    assert one.bundle.threshold.n_normal == 1   # no spread to measure: built as before, "on 1 ... image"


def test_build_names_byte_identical_normal_files_and_refuses_a_folder_of_copies(tiny_ckpt_path, tmp_path, caplog):
    """The audit's data/dup: one frame saved 50 times under 50 names."""
    dup = write_pngs(tmp_path / "dup", make_frames(1, seed=4))
    for i in range(1, 8):
        shutil.copy(dup / "000.png", dup / f"frame_{i}.png")
    with caplog.at_level(logging.WARNING):
        r = invoke_build(tiny_ckpt_path, "--normal", dup, "--out", tmp_path / "b")
    text = one_line(r.output)
    assert r.exit_code == 2, r.output
    assert f"--normal {dup}: the FP32 graph's scores on the 8 held-out normal images do not spread" in text
    assert (f"--normal {dup}: 7 of the 8 held-out normal images are byte-identical copies of another of them (1 "
            "distinct images): 000.png = frame_1.png = frame_2.png = ... (8 files)") in caplog.text
    assert not (tmp_path / "b").exists()
    # two distinct frames and a copy of one: built, with the copy named
    mixed = write_pngs(tmp_path / "mixed", make_frames(2, seed=4))
    shutil.copy(mixed / "001.png", mixed / "002.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        r = invoke_build(tiny_ckpt_path, "--normal", mixed, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert "1 of the 3 held-out normal images are byte-identical copies" in caplog.text
    assert "001.png = 002.png" in caplog.text


def test_byte_identical_groups_hash_only_files_of_one_size_and_stop_at_the_bound(tmp_path):
    from fair_edge.training.held_out import byte_identical_groups

    paths = []
    for name, data in (("a", b"x" * 10), ("b", b"y" * 10), ("c", b"x" * 10), ("d", b"x" * 11), ("e", b"x" * 10)):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    assert byte_identical_groups(paths) == [[paths[0], paths[2], paths[4]]]
    assert byte_identical_groups(paths, hashed_at_most=30) == [[paths[0], paths[2]]]   # e is past the bound
    assert byte_identical_groups(paths[:2] + [tmp_path / "gone"]) == []


# ----------------------------------------------------------------------------- what a listing leaves out
def test_a_subfolder_of_images_is_named_in_one_warning(tmp_path, caplog):
    folder = write_pngs(tmp_path / "good", make_frames(2, seed=1))
    write_pngs(folder / "lot2", make_frames(3, seed=2))
    write_pngs(folder / "lot3" / "deeper", make_frames(1, seed=2))
    write_pngs(folder / "@eaDir", make_frames(1, seed=2))        # a NAS's thumbnails: no dataset folder
    write_pngs(folder / ".thumbs", make_frames(1, seed=2))
    (folder / "notes").mkdir()                                   # no images: not named
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in list_images(folder)] == ["000.png", "001.png"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1, warned
    assert warned[0] == (f"{folder}: 2 image(s) read; not read: lot2/ (3 images), lot3/ (1 images): images in "
                         f"subfolders are not read; flatten them into {folder} or pass the subfolder.")


def test_a_subfolders_count_stops_at_the_scan_bound(tmp_path, monkeypatch):
    from fair_edge.training import data

    folder = tmp_path / "good"
    write_pngs(folder / "lot1" / "a", make_frames(3, seed=1))
    write_pngs(folder / "lot1" / "b", make_frames(3, seed=1))
    monkeypatch.setattr(data, "SCANNED_AT_MOST", 3)   # lot1/a and lot1/b, then lot1/a's 3 files: stopped there
    with pytest.raises(DataError, match=r"not read: lot1/ \(3\+ images\)"):
        list_images(folder)


def test_an_mvtec_train_folder_with_a_subfolder_warns_when_loaded(mvtec_dir, tmp_path, caplog):
    """The audit's data/nested2: 5 images in train/good and 25 in train/good/lot2 trained on 5, silently."""
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir / "train", root / "train")
    lot2 = root / "train" / "good" / "lot2"
    lot2.mkdir()
    for p in sorted((root / "train" / "good").glob("*.png"))[5:]:
        p.rename(lot2 / p.name)
    with caplog.at_level(logging.WARNING):
        assert len(load_dataset(root).train) == 5
    assert "5 image(s) read; not read: lot2/ (11 images)" in caplog.text


def test_a_folder_of_subfolders_only_names_them_in_its_refusal(tmp_path):
    folder = tmp_path / "good"
    write_pngs(folder / "lot1", make_frames(2, seed=1))
    write_pngs(folder / "lot2", make_frames(3, seed=1))
    with pytest.raises(DataError) as info:
        list_images(folder)
    assert str(info.value) == (f"{folder} holds no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp); not read: "
                               "lot1/ (2 images), lot2/ (3 images): images in subfolders are not read; flatten them "
                               f"into {folder} or pass the subfolder.")


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_dangling_links_are_named_with_their_targets(tmp_path, caplog):
    """The audit's data/dangling: .png links to a NAS share that was not mounted; "holds no images", nothing more."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (1, 2):
        (folder / f"img{i}.png").symlink_to(f"/mnt/nas/lot1/img{i}.png")
    (folder / "notes.txt").symlink_to("/mnt/nas/notes.txt")   # no image name: not named
    with pytest.raises(DataError) as info:
        list_images(folder)
    assert str(info.value).endswith(
        "; 2 broken link(s): img1.png -> /mnt/nas/lot1/img1.png, img2.png -> /mnt/nas/lot1/img2.png: their targets "
        "do not exist (a share not mounted, a moved folder?); mount the share or copy the images in.")
    write_pngs(folder, make_frames(1, seed=1))
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in list_images(folder)] == ["000.png"]
    assert "1 image(s) read; 2 broken link(s): img1.png -> /mnt/nas/lot1/img1.png" in caplog.text


def test_a_capitalised_train_good_is_named_with_the_rename(mvtec_dir, tmp_path):
    """The audit's data/caps: Train/Good on a case-sensitive disk said only "holds no images"."""
    root = tmp_path / "caps"
    shutil.copytree(mvtec_dir / "train" / "good", root / "Train" / "Good")
    if (root / "train" / "good").is_dir():
        pytest.skip("case-insensitive file system: Train/Good is train/good here")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    text = str(info.value)
    assert text.startswith(f"{root} holds no images") and "not read: Train/ (16 images)" in text
    assert text.endswith(f" It has Train/Good: an MVTec dataset's folders are read in lower case (train/good, test/); "
                         f"rename {root / 'Train' / 'Good'} to {root / 'train' / 'good'}.")

"""Phone photos (.heic / .heif, the iPhone's default) and camera RAW files (.dng, .cr2, .nef, .arw) among the
training images were left out without a word, while a .pgm or .gif beside them was named. They are named now, in
the same warning ("left out ... save them as PNG"), by training's listing and the station's folder replay alike."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from fair_edge.cameras import FolderReplaySource
from fair_edge.image_folders import left_out_images
from fair_edge.preprocess import IMAGE_SUFFIXES
from fair_edge.training.data import load_dataset

PHONE_AND_RAW = ["IMG_0001.HEIC", "IMG_0002.heif", "DSC_0003.dng", "IMG_0004.CR2", "DSC_0005.nef", "DSC_0006.ARW"]


def _folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "ok.png"), np.full((16, 16, 3), 170, np.uint8))
    for name in PHONE_AND_RAW:
        (folder / name).write_bytes(b"\0" * 64)   # their content is never read
    (folder / "notes.txt").write_text("no image")
    return folder


def test_phone_photos_and_camera_raw_files_are_named_as_left_out(tmp_path, caplog):
    folder = _folder(tmp_path)
    assert [p.name for p in left_out_images(folder, IMAGE_SUFFIXES)] == sorted(PHONE_AND_RAW)
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"):
        split = load_dataset(folder)
    assert [s.path.name for s in split.train] == ["ok.png"]
    assert (f"{folder}: 6 image file(s) left out: their suffix is none of those fair-edge reads as images "
            f"({', '.join(IMAGE_SUFFIXES)}): DSC_0003.dng, DSC_0005.nef, DSC_0006.ARW, IMG_0001.HEIC, IMG_0002.heif "
            "and 1 more. Save them as PNG to use them, or move them out of the folder.") in caplog.text


def test_the_folder_replay_names_them_too(tmp_path, caplog):
    folder = _folder(tmp_path)
    with caplog.at_level(logging.WARNING), FolderReplaySource(folder) as src:
        assert src.read().source == "ok.png"
    assert "6 image file(s) left out" in caplog.text and "IMG_0001.HEIC" in caplog.text

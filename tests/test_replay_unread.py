"""A replayed folder names what it leaves unread that may be images: the subfolders holding images and the broken
links (a share not mounted), in one warning at its first open, in training's words; a folder holding no image is
refused naming them. Before, both were left out silently (the replay played 2 images of 2 + 25)."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest

from fair_edge.cameras.base import EndOfStream
from fair_edge.cameras.replay import FolderReplaySource
from fair_edge.errors import CameraError
from fair_edge.training.data import unread_text as training_unread_text

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs symbolic links")


def write_images(folder, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((8, 8, 3), 10 * i, np.uint8))


def replay_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fair_edge.cameras.replay"]


@needs_symlinks
def test_subfolders_and_broken_links_are_named_once_at_open(tmp_path, caplog):
    folder = tmp_path / "belt"
    write_images(folder, 2)
    write_images(folder / "lot2", 3)
    write_images(folder / "@eaDir", 1)                       # a NAS's thumbnails: no dataset folder, not named
    os.symlink(tmp_path / "nas" / "img9.png", folder / "img9.png")
    source = FolderReplaySource(folder)
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.replay"):
        source.open()
        names = [source.read().source, source.read().source]
        with pytest.raises(EndOfStream):
            source.read()
        source.close()
        source.open()                                         # a reconnect: not named again
        source.close()
    assert names == ["000.png", "001.png"]
    warned = replay_warnings(caplog)
    assert len(warned) == 1, warned
    assert warned[0] == f"camera folder:{folder}: {folder}: 2 image(s) read{training_unread_text(folder)}."
    assert "not read: lot2/ (3 images): images in subfolders are not read" in warned[0]
    assert f"1 broken link(s): img9.png -> {tmp_path / 'nas' / 'img9.png'}" in warned[0] and "@eaDir" not in warned[0]


def test_a_folder_of_images_only_warns_nothing(tmp_path, caplog):
    folder = tmp_path / "belt"
    write_images(folder, 2)
    (folder / "notes").mkdir()                                # a subfolder without images: not named
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.replay"):
        with FolderReplaySource(folder) as source:
            source.read()
    assert replay_warnings(caplog) == []


@needs_symlinks
def test_a_folder_holding_only_a_subfolder_and_a_broken_link_is_refused_naming_them(tmp_path):
    folder = tmp_path / "belt"
    write_images(folder / "lot2", 3)
    os.symlink(tmp_path / "nas" / "img9.png", folder / "img9.png")
    with pytest.raises(CameraError) as info:
        FolderReplaySource(folder).open()
    message = str(info.value)
    assert f"the folder {folder} holds no images (looked for .png" in message
    assert "not read: lot2/ (3 images)" in message and "1 broken link(s): img9.png" in message
    assert message.endswith("put the images to replay there, or give a video file.")

"""The folder a VisA split CSV's image paths are relative to was guessed from its first row only: with that row's
image deleted (a bad frame removed by hand), every image was looked up in the wrong folder and the whole set
refused. It is now the folder (the CSV's own, or the one above it) under which most of the rows' images exist."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fair_edge.errors import DataError
from fair_edge.training.data import load_dataset


def _visa(root, count: int = 10, csv_folder: str = "") -> tuple:
    """A VisA product ``pcb`` under ``root``: ``count`` normal 64 x 64 images (7 train, the rest test) and its
    split CSV in ``root / csv_folder``, its paths relative to ``root``. Returns (the CSV, the image paths)."""
    rng = np.random.default_rng(0)
    images = root / "pcb" / "Data" / "Images" / "Normal"
    images.mkdir(parents=True)
    rows, paths = ["object,split,label,image,mask"], []
    for i in range(count):
        cv2.imwrite(str(images / f"{i:03d}.png"), rng.integers(0, 255, (64, 64, 3), np.uint8))
        rows.append(f"pcb,{'train' if i < 7 else 'test'},normal,pcb/Data/Images/Normal/{i:03d}.png,")
        paths.append(images / f"{i:03d}.png")
    csv = root / csv_folder / "split.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("\n".join(rows) + "\n")
    return csv, paths


@pytest.mark.parametrize("csv_folder", ["", "split_csv"])
def test_the_first_rows_image_deleted_leaves_the_others_where_they_are(tmp_path, csv_folder):
    """Beside the images (its own folder) and in split_csv/ (the folder above it), the first row's image gone."""
    csv, paths = _visa(tmp_path, csv_folder=csv_folder)
    paths[0].unlink()
    split = load_dataset(csv)
    assert [s.path for s in split.train] == paths[:7]   # the deleted one is skipped where images are read
    assert [s.path for s in split.test] == paths[7:]
    assert sum(s.path.exists() for s in split.train) == 6


def test_the_folder_most_rows_exist_under_wins(tmp_path):
    """A stray copy of the first row's image beside the CSV (split_csv/pcb/...) no longer moves every row there."""
    csv, paths = _visa(tmp_path, csv_folder="split_csv")
    stray = csv.parent / "pcb" / "Data" / "Images" / "Normal" / "000.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(paths[0].read_bytes())
    assert [s.path for s in load_dataset(csv).train] == paths[:7]


def test_rows_found_under_neither_folder_are_refused_naming_both(tmp_path):
    csv, paths = _visa(tmp_path / "visa", csv_folder="split_csv")
    moved = tmp_path / "elsewhere" / "split.csv"
    moved.parent.mkdir()
    moved.write_bytes(csv.read_bytes())
    with pytest.raises(DataError) as err:
        load_dataset(moved)
    message = str(err.value)
    assert message.startswith(f"{moved}: none of the 10 images of category 'pcb' exists: expected their paths "
                              "(column 'image', first 'pcb/Data/Images/Normal/000.png') relative to the CSV's "
                              f"folder {moved.parent} or the folder above it, {tmp_path};")
    assert "Put the CSV where its paths start" in message

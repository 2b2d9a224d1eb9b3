"""PatchCore --tile: the memory guard counted every image as having the tiles of the first readable one, so a
folder whose first file (by name) is a small overview shot was under-counted (13 tiles counted, 769 read) and a fit
the guard should refuse was OOM-killed instead; the image buffer, sized the same way, grew by copies. Every file's
tiles are now counted from its header (``image_size.stored_size``: no pixel decoded), and the buffer is sized from
that."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
import torch

from fair_edge.errors import ConfigError
from fair_edge.images import decode_file
from fair_edge.models.patchcore import train as pc_train
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.shortages import in_words
from fair_edge.tiling import TilingConfig
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import load_images
from test_image_formats import jpeg_with_exif, left_stripe, tiff_file

TILING = TilingConfig(tile=32, overlap=0)


def _overview_first(folder, frames: int = 3):
    """One 32 x 32 overview (1 tile), first by name, then ``frames`` 256 x 256 frames (64 tiles each)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "000_overview.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    for i in range(frames):
        cv2.imwrite(str(folder / f"cam_{i:03d}.png"), rng.integers(0, 255, (256, 256, 3), np.uint8))
    return folder


def test_every_file_counts_its_own_tiles_and_the_buffer_is_allocated_once(tmp_path):
    from fair_edge.training.pixels import model_image_count

    split = load_dataset(_overview_first(tmp_path / "tiled"))
    assert model_image_count(split.train, TILING) == 1 + 3 * 64
    assert model_image_count(split.train) == 4   # untiled: one model image a file
    images, kept = load_images(split.train, 16, tiling=TILING)
    assert images.shape == (193, 3, 16, 16) and len(kept) == 4
    assert images.base is not None and images.base.shape[0] == 193   # sized once, not grown by copies


def test_the_memory_guard_refuses_a_fit_of_the_tiles_it_will_read(tmp_path, monkeypatch):
    """Memory for about 20 tiles: the fit of 193 is refused before a file is read, naming images and tiles."""
    def no_reading(*args, **kwargs):
        raise AssertionError("the images were read before the memory check")

    model = ModelSpec("patchcore", PreprocessConfig(image_size=32, tiling=TILING),
                      PatchcoreSettings(embed_dim=32, coreset_ratio=0.25, smooth_sigma=1.0))
    room = pc_train.fit_memory(20, 32, model.settings, 8)["host"]
    monkeypatch.setattr(pc_train, "available_memory", lambda: (room, "available RAM"))
    monkeypatch.setattr(pc_train, "load_images", no_reading)
    with pytest.raises(ConfigError) as err:
        PatchcoreFitter(load_dataset(_overview_first(tmp_path / "tiled")), model, FitConfig(batch=8),
                        tmp_path / "run", torch.device("cpu"))
    need = pc_train.fit_memory(193, 32, model.settings, 8)["host"]
    assert str(err.value).startswith(f"a PatchCore fit of 4 training images (193 tiles) at 32 px needs about "
                                     f"{in_words(need)} of memory at its peak")


def _bmp_top_down(path, height: int, width: int) -> None:
    """A 24-bit BMP whose rows are stored top-down (a negative height in its header), as some cameras write."""
    row = (width * 3 + 3) // 4 * 4
    pixels = bytes(row * height)
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels)


def _jpeg_with_thumbnail(path, big: np.ndarray, small: np.ndarray) -> None:
    """A JPEG of ``big`` with an APP1 segment holding a whole JPEG of ``small`` (an EXIF thumbnail's place)."""
    thumb = cv2.imencode(".jpg", small)[1].tobytes()
    main = cv2.imencode(".jpg", big)[1].tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumb) + 8) + b"Exif\x00\x00" + thumb
    path.write_bytes(main[:2] + app1 + main[2:])


@pytest.mark.parametrize("suffix, params", [(".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                                            (".bmp", []), (".tif", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
                                            (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])])
@pytest.mark.parametrize("shape", [(37, 53, 3), (300, 17), (5, 2049, 3)])
def test_the_header_size_is_the_decoded_size(tmp_path, suffix, params, shape):
    from fair_edge.image_size import stored_size

    path = tmp_path / f"a{suffix}"
    assert cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, shape, np.uint8), params)
    assert stored_size(path) == decode_file(path).shape[:2] == shape[:2]


def test_the_header_size_of_odd_but_valid_files(tmp_path):
    from fair_edge.image_size import stored_size

    _bmp_top_down(tmp_path / "top_down.bmp", 21, 34)
    assert stored_size(tmp_path / "top_down.bmp") == decode_file(tmp_path / "top_down.bmp").shape[:2] == (21, 34)
    rng = np.random.default_rng(0)
    _jpeg_with_thumbnail(tmp_path / "thumb.jpg", rng.integers(0, 255, (90, 120, 3), np.uint8),
                         rng.integers(0, 255, (8, 8, 3), np.uint8))
    assert stored_size(tmp_path / "thumb.jpg") == decode_file(tmp_path / "thumb.jpg").shape[:2] == (90, 120)
    cv2.imwrite(str(tmp_path / "wide16.png"), np.zeros((7, 300), np.uint16))
    assert stored_size(tmp_path / "wide16.png") == (7, 300)
    for order, big in (("<", False), (">", False), ("<", True)):   # tagged "turned 90 degrees": read as stored
        (tmp_path / "turned.tif").write_bytes(tiff_file(left_stripe(64, 96), 6, order, big))
        assert stored_size(tmp_path / "turned.tif") == decode_file(tmp_path / "turned.tif").shape[:2] == (64, 96)
    (tmp_path / "turned.jpg").write_bytes(jpeg_with_exif(left_stripe(64, 96), 6))
    assert stored_size(tmp_path / "turned.jpg") == decode_file(tmp_path / "turned.jpg").shape[:2] == (64, 96)


def test_a_header_that_does_not_say_is_none_and_counted_from_the_decoded_frame(tmp_path):
    from fair_edge.image_size import stored_size
    from fair_edge.training.pixels import model_image_count

    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 96, 3), np.uint8))
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    for name in ("empty.png", "text.png", "cut.png", "cut.jpg", "missing.png"):
        assert stored_size(tmp_path / name) is None, name
    assert stored_size(tmp_path / "a.png") == (64, 96)
    split = load_dataset(tmp_path)
    assert model_image_count(split.train, TILING) == 6   # a.png's 2 x 3 tiles; the unreadable files none


def test_the_start_line_counts_images_and_tiles(tmp_path):
    """`fitting ...: 769 images` was the tiles; it says "13 images (769 tiles)" now (here 2 images, 1 + 4 tiles)."""
    from typer.testing import CliRunner

    from fair_edge.cli import app

    folder = tmp_path / "tiled"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "000_overview.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    cv2.imwrite(str(folder / "cam_000.png"), rng.integers(0, 255, (64, 64, 3), np.uint8))
    args = ["train", folder, "--model", "patchcore", "--tile", 32, "--image-size", 32, "--batch", 8, "--set",
            "embed_dim=16", "--out", tmp_path / "run", "--device", "cpu"]
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "fitting PatchCore on efficientnet_lite0 on cpu: 2 images (5 tiles), one pass in 1 batches of 5" in r.output

"""Image formats read one way everywhere: a TIFF's Orientation tag ignored as an EXIF one is, every mask
(ground-truth, ROI, zone) read by one reader (any depth, orientation tags ignored; an empty zone refused), one list
of image suffixes (WebP included) with the image files a listing leaves out counted, and masks found whatever the
case of their suffix."""

from __future__ import annotations

import logging
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fair_edge.errors import ConfigError, DataError
from fair_edge.images import decode_file, read_image
from fair_edge.training.data import list_images, load_dataset
from fair_edge.training.pixels import read_mask

SHORT, LONG = 3, 4   # TIFF field types


def tiff_file(pixels: np.ndarray, orientation: int, order: str = "<", big: bool = False) -> bytes:
    """An uncompressed one-strip TIFF of ``pixels`` ((H, W) gray or (H, W, 3) RGB, uint8 or uint16) whose first IFD
    holds ``orientation`` (tag 274). order: "<" little-endian (II), ">" big-endian (MM); big: BigTIFF."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    data = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder(order)).tobytes()
    fields = [(256, LONG, [w]), (257, LONG, [h]), (258, SHORT, [pixels.dtype.itemsize * 8] * channels),
              (259, SHORT, [1]), (262, SHORT, [2 if channels == 3 else 1]), (273, LONG, [16 if big else 8]),
              (274, SHORT, [orientation]), (277, SHORT, [channels]), (278, LONG, [h]), (279, LONG, [len(data)])]
    # BigTIFF: 8-byte offsets, entry counts and value slots; classic: 4-byte ones and a 2-byte IFD entry count
    slot, offset_fmt, count_fmt, values_fmt = (8, "Q", "Q", "Q") if big else (4, "I", "H", "I")
    ifd_at = (16 if big else 8) + len(data) + len(data) % 2
    extra_at = ifd_at + struct.calcsize(count_fmt) + len(fields) * (2 * slot + 4) + slot   # after the IFD
    entries, extra = b"", b""
    for tag, kind, values in fields:
        raw = struct.pack(order + ("H" if kind == SHORT else "I") * len(values), *values)
        if len(raw) > slot:   # values that do not fit the entry's slot go after the IFD
            extra, raw = extra + raw, struct.pack(order + offset_fmt, extra_at + len(extra))
        entries += struct.pack(order + "HH" + values_fmt, tag, kind, len(values)) + raw.ljust(slot, b"\0")
    mark = b"II" if order == "<" else b"MM"
    header = mark + (struct.pack(order + "HHHQ", 43, 8, 0, ifd_at) if big else struct.pack(order + "HI", 42, ifd_at))
    ifd = struct.pack(order + count_fmt, len(fields)) + entries + struct.pack(order + offset_fmt, 0)
    return header + data + b"\0" * (len(data) % 2) + ifd + extra


def exif_orientation(orientation: int) -> bytes:
    """An EXIF block (a big-endian TIFF header and one IFD) whose only tag is Orientation (0x0112)."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, SHORT, 1, orientation, 0) + struct.pack(">I", 0)
    return b"MM\x00\x2a" + struct.pack(">I", 8) + ifd


def jpeg_with_exif(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``image`` with an EXIF APP1 segment after SOI holding ``orientation``."""
    data = cv2.imencode(".jpg", image)[1].tobytes()
    payload = b"Exif\x00\x00" + exif_orientation(orientation)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def png_with_exif(image: np.ndarray, orientation: int) -> bytes:
    """A PNG of ``image`` with an eXIf chunk before its first IDAT holding ``orientation``."""
    data = cv2.imencode(".png", image)[1].tobytes()
    body = exif_orientation(orientation)
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    at = data.index(b"IDAT") - 4
    return data[:at] + chunk + data[at:]


def left_stripe(height: int = 64, width: int = 96) -> np.ndarray:
    """(H, W) uint8, black with a white stripe over the left 20 columns: a turn or flip moves it."""
    image = np.zeros((height, width), np.uint8)
    image[:, :20] = 255
    return image


# ----------------------------------------------------------------------------- 1. TIFF Orientation
@pytest.mark.parametrize("order, big", [("<", False), (">", False), ("<", True)])
def test_a_tiff_orientation_tag_is_ignored_as_an_exif_one_is(tmp_path, order, big):
    """OpenCV's TIFF decoder applies Orientation whatever the flags: a 96 x 64 TIFF tagged 6 was read 64 x 96,
    turned, by training, eval, the replay and the masks, while the same pixels as PNG (what a camera sends) were not.
    README: images are read as their pixels are stored."""
    stored = left_stripe()
    (tmp_path / "o6.tif").write_bytes(tiff_file(stored, 6, order, big))
    (tmp_path / "o1.tif").write_bytes(tiff_file(stored, 1, order, big))
    assert np.array_equal(decode_file(tmp_path / "o1.tif"), stored)   # the writer's TIFF reads as stored untagged
    image = read_image(tmp_path / "o6.tif")
    assert image.shape == (64, 96, 3) and (image[:, :20] == 255).all() and (image[:, 20:] == 0).all()
    assert np.array_equal(read_mask(tmp_path / "o6.tif", (64, 96)), stored > 0)   # a TIFF mask lies on its image


def test_a_tiff_keeps_its_16_bit_depth_and_channel_order_under_every_orientation(tmp_path):
    """Each of the 8 orientations decodes to the stored pixels: (H, W, 3) uint16 in OpenCV's BGR order."""
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.tif"
        path.write_bytes(tiff_file(rgb, orientation))
        decoded = decode_file(path)
        assert decoded.dtype == np.uint16 and decoded.shape == (5, 7, 3), orientation
        assert np.array_equal(decoded, rgb[..., ::-1]), f"Orientation {orientation} turned or flipped the pixels"
    assert np.array_equal(read_image(tmp_path / "o8.tif"), (rgb[..., ::-1] / 257.0).round().astype(np.uint8))


def test_a_file_that_is_no_tiff_or_a_cut_tiff_is_left_to_the_decoder(tmp_path):
    """Only a TIFF's first IFD is looked at; a PNG, or a TIFF cut inside its header or IFD, is passed on unchanged,
    and the decoder names a file it cannot read."""
    from fair_edge.images import tiff_orientation_value

    png = np.frombuffer(cv2.imencode(".png", left_stripe())[1].tobytes(), np.uint8)
    assert tiff_orientation_value(png) is None
    whole = tiff_file(left_stripe(), 6)
    assert tiff_orientation_value(np.frombuffer(whole, np.uint8)) is not None
    ifd_at = struct.unpack_from("<I", whole, 4)[0]
    for cut in (6, 12, ifd_at + 1, ifd_at + 30):
        assert tiff_orientation_value(np.frombuffer(whole[:cut], np.uint8).copy()) is None
        (tmp_path / "cut.tif").write_bytes(whole[:cut])
        with pytest.raises(DataError, match=r"cut\.tif"):
            decode_file(tmp_path / "cut.tif")


# ----------------------------------------------------------------------------- 2 + 3. ROI and zone masks
def bottom_left_mask(dtype=np.uint8, value: int = 255) -> np.ndarray:
    """(40, 60) mask marking its bottom-left corner (rows 24.., columns ..20) with ``value``."""
    mask = np.zeros((40, 60), dtype)
    mask[24:, :20] = value
    return mask


def zone_pixels(path: Path, frame: tuple[int, int] = (60, 40)) -> np.ndarray:
    """The pixels of a one-zone regions section whose zone is the mask file ``path``."""
    from fair_edge.station.zones import RegionSettings

    settings = RegionSettings.from_dict({"frame": list(frame), "zones": [{"name": "label", "mask": str(path),
                                                                           "ignore": True}]})
    return settings.zones[0].mask_pixels


def roi_pixels(path: Path) -> np.ndarray:
    from fair_edge.station.bundles import load_roi

    return load_roi(path, None) > 0


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif"])
def test_roi_and_zone_masks_ignore_an_orientation_tag_as_frames_do(tmp_path, fmt):
    """ROI and zone masks were decoded with IMREAD_GRAYSCALE, which applies an EXIF orientation tag (and OpenCV
    a TIFF's): an ROI drawn bottom-left, saved tagged 6, inspected the top-left; a 60 x 40 zone mask was refused
    as 40 x 60. Frames and ground-truth masks read pixels as stored; every mask does now."""
    stored = bottom_left_mask()
    write = {"png": png_with_exif, "jpg": jpeg_with_exif, "tif": lambda m, o: tiff_file(m, o)}[fmt]
    tagged, plain = tmp_path / f"tagged.{fmt}", tmp_path / f"plain.{fmt}"
    tagged.write_bytes(write(stored, 6))
    plain.write_bytes(write(stored, 1))
    assert cv2.imdecode(np.frombuffer(tagged.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE).shape == (60, 40)
    expected = cv2.imdecode(np.frombuffer(plain.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE) >= 128   # white
    assert expected[30, 10] and not expected[5, 50]
    assert np.array_equal(roi_pixels(tagged), expected)
    assert np.array_equal(zone_pixels(tagged), expected)


@pytest.mark.parametrize("value", [1, 255])
def test_16_bit_roi_and_zone_masks_keep_their_pixels(tmp_path, value):
    """A 16-bit 0 / 1 or 0 / 255 mask (a uint16 label array saved as PNG) was cut to its high byte: the ROI was
    refused as all black, the zone read as empty and ignored nothing. Nonzero at the stored depth is in."""
    stored = bottom_left_mask(np.uint16, value)
    cv2.imwrite(str(tmp_path / "m16.png"), stored)
    assert cv2.imread(str(tmp_path / "m16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert np.array_equal(roi_pixels(tmp_path / "m16.png"), stored > 0)
    assert np.array_equal(zone_pixels(tmp_path / "m16.png"), stored > 0)


def test_an_all_black_zone_mask_is_refused_naming_the_file_and_the_fix(tmp_path):
    """An empty zone mask was taken silently (an ignore zone that ignores nothing); the ROI's was refused."""
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((40, 60), np.uint8))
    with pytest.raises(ConfigError, match=r"regions\.zones\[0\]\.mask \(label\): .*empty\.png is all black.*"
                                          r"draw the zone in white \(128 or more in an 8-bit mask, any "
                                          r"nonzero value in a 16-bit or float one; transparent pixels are outside\)"
                                          r".*or remove the zone"):
        zone_pixels(tmp_path / "empty.png")
    with pytest.raises(ConfigError, match=r"decision\.roi: .*empty\.png is all black.*draw the inspected area"):
        roi_pixels(tmp_path / "empty.png")


# ----------------------------------------------------------------------------- 4. one suffix list
def test_webp_is_read_by_every_listing_as_the_station_replays_it(tmp_path):
    """The station's folder replay read .webp, train / eval / build / rules check skipped it without a word."""
    from fair_edge.cameras.replay import FolderReplaySource
    from fair_edge.preprocess import IMAGE_SUFFIXES

    folder = tmp_path / "mix"
    folder.mkdir()
    image = np.random.default_rng(4).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "a.png"), image)
    (folder / "b.webp").write_bytes(cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes())
    assert [p.name for p in list_images(folder)] == ["a.png", "b.webp"]
    assert np.array_equal(read_image(folder / "b.webp"), image)   # lossless: the same pixels
    with FolderReplaySource(folder) as source:
        assert source.suffixes == IMAGE_SUFFIXES
        assert [source.read().source for _ in range(2)] == ["a.png", "b.webp"]
    (tmp_path / "ds" / "test" / "crack").mkdir(parents=True)
    (tmp_path / "ds" / "test" / "crack" / "000.WEBP").write_bytes((folder / "b.webp").read_bytes())
    assert [s.path.name for s in load_dataset(tmp_path / "ds", need_train=False).test] == ["000.WEBP"]


def test_image_files_left_out_for_their_suffix_are_counted_in_one_warning(tmp_path, caplog):
    """A listing that left image files out for their suffix said nothing; now one warning counts and names them,
    and files that are no image (README.txt, a CSV, a macOS ._ file) are not named."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8), np.uint8))
    for name in ["b.pgm", "c.PGM", "d.gif", "e.jp2", "f.jpe", "g.ppm", "README.txt", "labels.csv", "._h.pgm"]:
        (folder / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"):
        assert [p.name for p in list_images(folder)] == ["a.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert re.search(r"imgs: 6 image file\(s\) left out: their suffix is none.*\.webp\): b\.pgm, c\.PGM, d\.gif, e\.jp2, f\.jpe and 1 "
                     r"more\. Save them as PNG", warnings[0]), warnings[0]
    assert "README" not in warnings[0] and "labels" not in warnings[0] and "._h" not in warnings[0]
    caplog.clear()
    (folder / "a.png").unlink()
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"), \
            pytest.raises(DataError, match=r"imgs holds no images"):
        list_images(folder)
    assert "6 image file(s) left out" in caplog.text
    caplog.clear()
    cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8), np.uint8))
    for name in ["b.pgm", "c.PGM", "d.gif", "e.jp2", "f.jpe", "g.ppm"]:
        (folder / name).unlink()
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"):
        list_images(folder)
    assert not caplog.records   # nothing left out: nothing said


# ----------------------------------------------------------------------------- 5. mask names in any case
def test_a_ground_truth_mask_is_found_whatever_the_case_of_its_suffix(tmp_path):
    """Images 000.PNG were read (suffixes compared case-insensitively), their masks 000_mask.PNG never found:
    eval said no defective image had a mask."""
    root = tmp_path / "upper"
    (root / "test" / "scratch").mkdir(parents=True)
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    image = np.zeros((8, 8), np.uint8)
    for name in ["000.PNG", "001.PNG", "002.png", "003.PNG", "004.png"]:
        cv2.imencode(".png", image)[1].tofile(str(root / "test" / "scratch" / name))
    for name in ["000_mask.PNG", "001_mask.png", "002_mask.PNG", "004_MASK.PNG", "004_mask.png"]:
        cv2.imencode(".png", image)[1].tofile(str(root / "ground_truth" / "scratch" / name))
    masks = {s.path.name: s.mask and s.mask.name for s in load_dataset(root, need_train=False).test}
    assert masks == {"000.PNG": "000_mask.PNG", "001.PNG": "001_mask.png", "002.png": "002_mask.PNG",
                     "003.PNG": None, "004.png": "004_mask.png"}

import logging
import re
import shutil

import cv2
import numpy as np
import pytest

from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import load_images, read_frame, read_image, read_mask
from fair_edge.errors import DataError
from fair_edge.tiling import TilingConfig


def test_mvtec_layout(mvtec_dir):
    split = load_dataset(mvtec_dir)
    assert split.name == "plate" and len(split.train) == 16
    assert sum(s.label for s in split.test) == 6 and len(split.test) == 12
    assert split.has_masks and all(s.mask.name.endswith("_mask.png") for s in split.test if s.label)
    assert load_dataset(mvtec_dir.parent, category="plate").name == "plate"


def test_plain_folder_is_training_only(mvtec_dir):
    split = load_dataset(mvtec_dir / "train" / "good")
    assert len(split.train) == 16 and split.test == [] and not split.has_masks


def test_visa_csv(tmp_path, mvtec_dir):
    rows = ["object,split,label,image,mask"]
    for p in sorted((mvtec_dir / "train/good").iterdir())[:4]:
        rows.append(f"plate,train,normal,{p},")
    for p in sorted((mvtec_dir / "test/blob").iterdir())[:2]:
        rows.append(f"plate,test,anomaly,{p},{mvtec_dir / 'ground_truth/blob' / (p.stem + '_mask.png')}")
    rows.append(f"other,train,normal,{p},")
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="pick one with --category"):
        load_dataset(tmp_path / "split.csv")
    split = load_dataset(tmp_path / "split.csv", category="plate")
    assert len(split.train) == 4 and [s.label for s in split.test] == [1, 1] and split.has_masks
    with pytest.raises(DataError, match="not in"):
        load_dataset(tmp_path / "split.csv", category="nope")


def test_elpv_split_is_deterministic():
    pytest.importorskip("elpv_dataset")
    a, b = load_dataset("elpv"), load_dataset("elpv:mono")
    assert [s.path for s in a.train] == [s.path for s in b.train]
    assert len(a.train) == 470 and a.summary()["test_normal"] == 118 and a.summary()["test_defective"] == 313
    assert not set(s.path for s in a.train) & set(s.path for s in a.test)
    assert read_image(a.train[0].path).shape == (300, 300, 3)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(tmp_path / "empty")
    good = tmp_path / "imgs"
    good.mkdir()
    cv2.imwrite(str(good / "a.png"), np.full((20, 30), 128, np.uint8))  # gray works
    data = (good / "a.png").read_bytes()
    (good / "b.png").write_bytes(data[: len(data) // 2])  # truncated
    (good / "c.png").write_bytes(b"")
    with pytest.raises(DataError, match="b.png"):
        read_image(good / "b.png")
    images, kept = load_images(load_dataset(good).train, 16)
    assert images.shape == (1, 3, 16, 16) and [s.path.name for s in kept] == ["a.png"]
    assert read_image(good / "a.png").shape == (20, 30, 3)
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="masks must have the image's size"):
        read_mask(tmp_path / "m.png", (20, 30))


def _write_visa(tmp_path, rows):
    """A VisA split CSV in tmp_path/split.csv with ``rows`` of (split, label, image path, mask path or '')."""
    lines = ["object,split,label,image,mask"] + [f"plate,{split},{label},{image},{mask}" for split, label, image, mask in rows]
    (tmp_path / "split.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "split.csv"


def test_visa_train_row_labelled_anomalous_is_refused_naming_the_row(tmp_path, mvtec_dir):
    """Training takes normal images only: a train row labelled anomaly is an error naming its CSV line and the
    fix, never trained on as normal and never dropped in silence."""
    good = sorted((mvtec_dir / "train/good").iterdir())
    blob = sorted((mvtec_dir / "test/blob").iterdir())
    csv_path = _write_visa(tmp_path, [("train", "normal", good[0], ""), ("train", "normal", good[1], ""),
                                      ("train", "anomaly", blob[0], ""), ("test", "anomaly", blob[1], "")])
    with pytest.raises(DataError, match=r"1 'train' row\(s\) labelled anomalous: line 4 \(.*000\.png, label 'anomaly'\)"
                                        r".*Move those rows to the test split") as info:
        load_dataset(csv_path)
    assert "relabel them 'normal'" in str(info.value)


@pytest.mark.parametrize("label", ["OK", "Good", "NORMAL", " normal ", "0"])
def test_visa_normal_labels_are_the_good_names_in_any_case(tmp_path, mvtec_dir, label):
    good = sorted((mvtec_dir / "train/good").iterdir())
    blob = sorted((mvtec_dir / "test/blob").iterdir())
    split = load_dataset(_write_visa(tmp_path, [("train", label, good[0], ""), ("test", label, good[1], ""),
                                                ("test", "anomaly", blob[0], "")]))
    assert [s.label for s in split.train] == [0]
    assert [(s.label, s.defect_type) for s in split.test] == [(0, "good"), (1, "anomaly")]


@pytest.mark.parametrize("folder", ["OK", "Good", "Normal", "good"])
def test_mvtec_good_test_folder_in_any_case_is_normal(tmp_path, mvtec_dir, folder):
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    (root / "test/good").rename(root / "test" / folder)
    split = load_dataset(root)
    normal = [s for s in split.test if s.label == 0]
    assert len(normal) == 6 and {s.defect_type for s in normal} == {"good"}
    assert {s.defect_type for s in split.test if s.label == 1} == {"blob"}


def test_undersized_image_is_skipped_naming_the_file_and_the_fix(tmp_path, caplog):
    """A 3 x 1 px thumbnail among good images is skipped like an unreadable file, with a warning naming it."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(folder / name), np.full((20, 30, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), np.full((1, 3, 3), 128, np.uint8))
    with caplog.at_level(logging.WARNING):
        images, kept = load_images(load_dataset(folder).train, 16)
    assert images.shape == (2, 3, 16, 16) and [s.path.name for s in kept] == ["a.png", "b.png"]
    assert re.search(r"tiny\.png \(3 x 1 px\) cannot be a model input: .*Remove the file", caplog.text)
    assert "skipped 1 unreadable or undersized image(s) of 3" in caplog.text
    with pytest.raises(DataError, match=r"tiny\.png \(3 x 1 px\) cannot be a model input"):
        read_frame(folder / "tiny.png")


def test_frame_smaller_than_the_tile_names_the_file(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "big.png"), np.full((32, 32, 3), 128, np.uint8))  # one tile
    cv2.imwrite(str(folder / "small.png"), np.full((20, 30, 3), 128, np.uint8))
    tiling = TilingConfig(tile=32, overlap=0)
    with caplog.at_level(logging.WARNING):
        images, kept = load_images(load_dataset(folder).train, 16, tiling=tiling)
    assert [s.path.name for s in kept] == ["big.png"] and len(images) == 1
    assert re.search(r"small\.png \(30 x 20 px\) cannot be a model input: tiling needs a region of at least 32 x 32",
                     caplog.text)
    with pytest.raises(DataError, match=r"none of the 1 images could be read .*small\.png \(30 x 20 px\)"):
        load_images([load_dataset(folder).train[1]], 16, tiling=tiling)


def test_missing_mask_of_one_defect_is_counted_and_named(tmp_path, mvtec_dir):
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    (root / "ground_truth/blob/002_mask.png").unlink()
    split = load_dataset(root)
    assert not split.has_masks and split.has_any_masks
    assert [s.path.name for s in split.missing_masks] == ["002.png"]



# ----------------------------------------------------------------------------- files OpenCV refuses, CSV encodings
def write_png_bomb(path, width=100_000, height=100_000):
    """A 74-byte PNG whose header declares width x height pixels (10^10 by default: over OpenCV's 2^30 limit,
    which ``cv2.imdecode`` refuses with cv2.error, not None)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


def test_an_image_over_opencvs_pixel_limit_or_empty_is_a_data_error_naming_it(tmp_path):
    """A header declaring 100000 x 100000 px gave cv2.error from read_image (train, eval and build stopped with a
    traceback instead of skipping the file); now DataError naming the file, what OpenCV said and the limit."""
    bomb = write_png_bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"image .*bomb\.png could not be decoded; OpenCV said: .*"
                                        r"CV_IO_MAX_IMAGE_PIXELS.* Images over 2\^30 pixels"):
        read_image(bomb)
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.png is empty \(0 bytes\)"):
        read_image(tmp_path / "zero.png")


@pytest.mark.parametrize("content", [b"", None])
def test_an_empty_or_oversized_mask_is_a_data_error_naming_it(tmp_path, content):
    """A 0-byte ground-truth mask (and one over 2^30 px) gave cv2.error (imdecode of an empty buffer) in eval."""
    mask = tmp_path / "001_mask.png"
    if content is None:
        write_png_bomb(mask)
    else:
        mask.write_bytes(content)
    with pytest.raises(DataError, match=r"mask .*001_mask\.png (is empty|could not be decoded)"):
        read_mask(mask, (32, 32))


def test_training_skips_an_oversized_image_naming_it(tmp_path, caplog):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((40, 40, 3), 90, np.uint8))
    bomb = write_png_bomb(tmp_path / "bomb.png")
    from fair_edge.training.data import Sample

    with caplog.at_level(logging.WARNING):
        images, kept = load_images([Sample(good), Sample(bomb)], 32)
    assert images.shape == (1, 3, 32, 32) and [s.path for s in kept] == [good]
    assert "bomb.png could not be decoded" in caplog.text


def test_a_folder_replay_counts_an_oversized_image_as_unreadable_and_goes_on(tmp_path):
    """The station's folder replay decodes with read_image: the cv2.error escaped its reader ("reader crashed",
    exit 3). Now the file is counted unreadable and the replay goes on to the next one."""
    from fair_edge.cameras import EndOfStream, FolderReplaySource

    folder = tmp_path / "replay"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(folder / name), np.full((12, 16, 3), 50, np.uint8))
    write_png_bomb(folder / "b.png")
    frames = []
    with FolderReplaySource(folder) as src:
        with pytest.raises(EndOfStream):
            for _ in range(10):
                frames.append(src.read())
        assert src.unreadable == 1
    assert [f.source for f in frames] == ["a.png", "c.png"]


def _visa_csv(path, mvtec_dir, encoding="utf-8", header="object,split,label,image,mask", label="normal"):
    """A one-category VisA CSV over the plate: train rows for its train images, one test row."""
    rows = [header] + [f"plate,train,{label},{p.relative_to(path.parent).as_posix()}," for p in
                       sorted((mvtec_dir / "train/good").glob("*.png"))[:3]]
    path.write_bytes(("\n".join(rows) + "\n").encode(encoding))
    return path


def test_a_visa_csv_saved_by_excel_with_a_byte_order_mark_loads(tmp_path, mvtec_dir):
    """Excel's "CSV UTF-8" starts the file with a BOM: the first column was read as '\\ufeffobject' and the CSV
    refused as missing columns its header shows."""
    shutil.copytree(mvtec_dir, tmp_path / "plate")
    csv_path = _visa_csv(tmp_path / "split.csv", tmp_path / "plate", encoding="utf-8-sig")
    assert csv_path.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert len(load_dataset(csv_path).train) == 3


def test_a_visa_csv_that_is_not_utf8_is_a_data_error_naming_the_byte_and_the_fix(tmp_path, mvtec_dir):
    shutil.copytree(mvtec_dir, tmp_path / "plate")
    csv_path = _visa_csv(tmp_path / "split.csv", tmp_path / "plate", encoding="latin-1", label="normal_dégât")
    offset = csv_path.read_bytes().index(b"\xe9")
    with pytest.raises(DataError, match=rf"split\.csv is not UTF-8 text: byte 0xe9 at byte offset {offset} .*"
                                        r"Save the CSV as UTF-8"):
        load_dataset(csv_path)


def test_a_visa_csv_without_the_columns_lists_the_columns_it_has(tmp_path, mvtec_dir):
    shutil.copytree(mvtec_dir, tmp_path / "plate")
    csv_path = _visa_csv(tmp_path / "split.csv", tmp_path / "plate", header="product,split,label,image,mask")
    with pytest.raises(DataError, match=r"found columns 'product', 'split', 'label', 'image', 'mask' and 3 row"):
        load_dataset(csv_path)


def test_a_test_folder_without_train_good_loads_for_eval_and_training_is_told_what_is_missing(tmp_path, mvtec_dir):
    """eval reads only test/: a category with no (or an empty) train/good was refused as holding no images."""
    root = tmp_path / "plate"
    shutil.copytree(mvtec_dir, root)
    shutil.rmtree(root / "train")
    split = load_dataset(root, need_train=False)
    assert split.train == [] and len(split.test) == 12 and split.has_masks
    with pytest.raises(DataError, match=r"has a test/ folder but no train/good folder: training needs normal "
                                        r"images in .*train/good"):
        load_dataset(root)
    (root / "train" / "good").mkdir(parents=True)
    assert len(load_dataset(root, need_train=False).test) == 12
    with pytest.raises(DataError, match=r"train/good holds no images"):
        load_dataset(root)


@pytest.mark.parametrize("value", [1, 255, 256, 65535])
def test_a_16_bit_mask_keeps_every_nonzero_pixel_as_a_defect(tmp_path, value):
    """A 16-bit mask holding 0 / 1 or 0 / 255 (a uint16 label array saved as PNG) was cut to its high byte,
    so it read as all normal: the defective image's defect pixels were pooled as normal pixels."""
    stored = np.zeros((24, 32), np.uint16)
    stored[4:10, 5:12] = value
    stored[20, 30] = value
    cv2.imwrite(str(tmp_path / "m16.png"), stored)
    assert cv2.imread(str(tmp_path / "m16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    mask = read_mask(tmp_path / "m16.png", (24, 32))
    assert mask.dtype == bool and mask.shape == (24, 32)
    assert np.array_equal(mask, stored > 0) and mask.sum() == 43


def test_an_8_bit_and_a_colour_mask_read_as_before(tmp_path):
    """8-bit masks, grey or colour, give the same defect pixels as before: colour by its luminance > 0."""
    grey = np.zeros((16, 16), np.uint8)
    grey[2:5, 2:5] = 1
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    assert np.array_equal(read_mask(tmp_path / "g.png", (16, 16)), grey > 0)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[1, 1] = (0, 0, 255)   # red: luminance 76, a defect pixel
    colour[2, 2] = (0, 1, 0)     # faint green: luminance 0.587 -> 1, a defect pixel
    colour[3, 3] = (1, 0, 0)     # faint blue: luminance 0.114 -> 0, normal (as OpenCV's greyscale decode gives it)
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    expected = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert np.array_equal(read_mask(tmp_path / "c.png", (16, 16)), expected)
    assert expected[1, 1] and not expected[3, 3]


def test_a_mask_with_no_defect_pixel_is_a_warning_naming_it(tmp_path, caplog):
    """A defective image whose mask marks nothing adds no defect to the pixel metrics: said, naming the mask."""
    cv2.imwrite(str(tmp_path / "007_mask.png"), np.zeros((16, 16), np.uint8))
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"):
        mask = read_mask(tmp_path / "007_mask.png", (16, 16))
    assert not mask.any()
    assert re.search(r"007_mask\.png marks no defect pixel.*remove the mask", caplog.text)
    caplog.clear()
    marked = np.zeros((16, 16), np.uint16)
    marked[3, 3] = 1
    cv2.imwrite(str(tmp_path / "008_mask.png"), marked)
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"):
        assert read_mask(tmp_path / "008_mask.png", (16, 16)).sum() == 1
    assert "marks no defect pixel" not in caplog.text


def test_the_training_images_are_held_once_not_as_a_list_and_its_stacked_copy(tmp_path):
    """load_images fills one preallocated array (the PatchCore fit's host peak was the list plus np.stack's copy:
    twice the training set); the result equals the stacked images, frames of several tile counts and a skipped file
    included."""
    import tracemalloc

    from fair_edge.preprocess import resize_frame

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        cv2.imwrite(str(folder / f"{i:02d}.png"), rng.integers(0, 255, (40, 40, 3), np.uint8))
    (folder / "99.png").write_bytes(b"")                              # skipped: the buffer is trimmed
    samples = load_dataset(folder).train
    tracemalloc.start()
    images, kept = load_images(samples, 64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    expected = np.stack([resize_frame(read_frame(s.path), 64) for s in kept])
    assert np.array_equal(images, expected) and len(kept) == 24
    assert peak < 1.6 * images.nbytes, (peak, images.nbytes)           # np.stack of a list: about 2x

    wide = tmp_path / "wide"                                          # the first frame has 1 tile, later ones 2
    wide.mkdir()
    cv2.imwrite(str(wide / "a.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    for name in ("b.png", "c.png"):
        cv2.imwrite(str(wide / name), rng.integers(0, 255, (32, 64, 3), np.uint8))
    tiling = TilingConfig(tile=32, overlap=0)
    tiled, kept = load_images(load_dataset(wide).train, 16, tiling=tiling)
    assert tiled.shape == (5, 3, 16, 16) and len(kept) == 3

import cv2
import numpy as np
import pytest

from fair_edge.training.data import load_dataset, load_images, read_image, read_mask
from fair_edge.errors import DataError


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

"""The commands `tune` and `train` hand on (their `next:` line, tune.json's train_command) keep the product picked
with --category: without it, the handed command read the whole MVTec root or VisA CSV and was refused ('... holding
the categories ...: pick one with --category'). Each hint is run as printed, on a tiny MVTec root with two
categories and on a VisA CSV with two products."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_defect, make_normal
from fair_edge.cli import app
from fair_edge.shell import dataset_words

PICKED = "my plate"   # a category with a space: the handed command must quote it
OTHER = "rect"
TRAIN_IMAGES, TEST_IMAGES = 12, 3  # tune holds out 5 of the 12 (its minimum)


def write_category(folder: Path, seed: int) -> None:
    """One MVTec-layout product: TRAIN_IMAGES train/good, TEST_IMAGES test/good and test/blob with masks."""
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (folder / sub).mkdir(parents=True)
    for i in range(TRAIN_IMAGES):
        cv2.imwrite(str(folder / "train/good" / f"{i:03d}.png"), make_normal(rng))
    for i in range(TEST_IMAGES):
        cv2.imwrite(str(folder / "test/good" / f"{i:03d}.png"), make_normal(rng))
        img, mask = make_defect(rng)
        cv2.imwrite(str(folder / "test/blob" / f"{i:03d}.png"), img)
        cv2.imwrite(str(folder / "ground_truth/blob" / f"{i:03d}_mask.png"), mask)


def write_visa_csv(root: Path) -> Path:
    """A VisA split CSV over the MVTec root's images, one object per category (so it holds two products)."""
    path = root / "split.csv"
    with path.open("w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["object", "split", "label", "image", "mask"])
        for category in (PICKED, OTHER):
            for image in sorted((root / category).rglob("*.png")):
                parts = image.relative_to(root / category).parts
                if parts[0] == "ground_truth":
                    continue
                label = "normal" if parts[1] == "good" else "anomaly"
                mask = f"{category}/ground_truth/{parts[1]}/{image.stem}_mask.png" if label == "anomaly" else ""
                rows.writerow([category, parts[0], label, image.relative_to(root).as_posix(), mask])
    return path


@pytest.fixture(scope="module")
def two_products(tmp_path_factory) -> dict[str, str]:
    """{"mvtec": an MVTec root holding PICKED and OTHER, "visa": a VisA CSV holding both}, as DATA arguments."""
    root = tmp_path_factory.mktemp("data") / "root"
    write_category(root / PICKED, 0)
    write_category(root / OTHER, 1)
    return {"mvtec": str(root), "visa": str(write_visa_csv(root))}


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def next_command(output: str) -> list[str]:
    """The words of the one `next: fair-edge ...` line in ``output``, without `next:` and `fair-edge`."""
    lines = [line for line in output.splitlines() if line.startswith("next: ")]
    assert len(lines) == 1, output
    words = shlex.split(lines[0].removeprefix("next: "))
    assert words[0] == "fair-edge", lines[0]
    return words[1:]


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_tune_hands_train_the_category_it_tuned_on(two_products, layout, tmp_path):
    """tune.json's train_command and the printed `next:` left --category out, so the train they handed on was
    refused."""
    data = two_products[layout]
    tuned = invoke("tune", data, "--category", PICKED, "--width", 32, "--image-size", 32, "--steps", 1,
                   "--budget-min", 0.001, "--device", "cpu", "--out", tmp_path / "tune")
    assert tuned.exit_code == 0, tuned.output
    command = next_command(tuned.output)
    recorded = json.loads((tmp_path / "tune" / "tune.json").read_text())["chosen"]["train_command"]
    assert shlex.split(recorded)[1:] == command
    trained = invoke(*command, "--device", "cpu", "--out", tmp_path / "train")
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "train" / "final.pt").is_file()
    assert command[:4] == ["train", data, "--category", PICKED]


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_train_hands_eval_the_category_it_trained_on(two_products, layout, tmp_path):
    """train's `next: fair-edge eval FINAL DATA` left --category out, so the eval it handed on was refused."""
    data = two_products[layout]
    trained = invoke("train", data, "--category", PICKED, "--width", 32, "--image-size", 32, "--cutoff", 4,
                     "--steps", 2, "--batch", 4, "--device", "cpu", "--out", tmp_path / "run")
    assert trained.exit_code == 0, trained.output
    command = next_command(trained.output)
    evaluated = invoke(*command, "--device", "cpu", "--out", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    assert command == ["eval", str(tmp_path / "run" / "final.pt"), data, "--category", PICKED]
    with (tmp_path / "eval" / "scores.csv").open(newline="") as fh:
        scored = [row["path"] for row in csv.DictReader(fh)]
    assert len(scored) == 2 * TEST_IMAGES and all(f"/{PICKED}/" in path for path in scored)  # the picked product's


def test_train_without_a_category_hands_on_none():
    from fair_edge.cli.train import next_hint
    from fair_edge.training.data import DatasetSplit, Sample

    split = DatasetSplit("plate", [Sample(Path("a.png"))], [Sample(Path("b.png"))])
    assert next_hint(Path("run/final.pt"), "data/plate", split) == "next: fair-edge eval run/final.pt data/plate"


@pytest.mark.parametrize("category", ["-odd", "two words", "it's"])
def test_a_category_is_one_word_of_the_handed_command(category):
    """A category is a name, not a path: quoted as one word, no './' in front (the command takes the word after
    --category as its value even when it starts with '-')."""
    words = shlex.split(dataset_words("-data dir/root", category))
    assert words == ["./-data dir/root", "--category", category]
    assert dataset_words("root") == "root"


def test_a_category_starting_with_a_dash_reaches_the_dataset(two_products):
    """`--category -odd` is the category '-odd' (refused by the dataset, naming it), not an unknown option."""
    result = invoke("eval", "final.pt", *shlex.split(dataset_words(two_products["mvtec"], "-odd")), "--device", "cpu")
    assert result.exit_code != 0 and "no category '-odd'" in result.output, result.output

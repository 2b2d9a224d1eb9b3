"""The export of reviewed parts (the console's "Export reviewed parts", ``fair-edge collect DEST --reviewed OUT``)
took ``run`` and ``camera`` of each ``OUT/reviews.jsonl`` row as they were and joined them into a file name, and read
its ``image`` wherever it pointed: a row appended by anyone who can write the output folder (export_traversal.sh)
wrote a PNG outside the dataset folder (``camera: "x/../../.."``), deleted a file outside it (``run: "../../victim/
cell"``, label defect: the "contradicting" train/good copy removed) and copied any image into the dataset (``image``
an absolute path). Only rows as the console writes them are exported now (a run id of the station, a camera name, a
part number, an image inside the output folder); each other row is refused, nothing done for it, and named in the
export's summary; every file written or removed is checked to stay inside the dataset folder."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.console.actions import StationLinks
from fair_edge.errors import DataError
from fair_edge.records import new_run_id
from fair_edge.training import collect
from fair_edge.training.collect import export_reviewed
from test_console_units import _plate, api, one_camera_console

RUN = "20261129T134000Z-3f2a"
UP = "../" * 40   # far past the file system's root (.. of / is /)


def hostile_station(tmp_path: Path) -> dict[str, Path]:
    """A station output folder (``out``) with one review the console wrote (row 1: part 1, a false reject, its
    image under review/) and three rows appended by someone else: row 2 writes ``pwn/written_00000002.png`` (camera
    with ../), row 3 deletes ``pwn/victim/cell_00000007.png`` (run with ../, label defect), row 4 exports the image
    ``secret.png`` from outside the output folder. Returns the paths involved."""
    out, pwn = tmp_path / "out", tmp_path / "pwn"
    (out / "review").mkdir(parents=True)
    (pwn / "victim").mkdir(parents=True)
    cv2.imwrite(str(out / "review" / "p1.png"), _plate(1))
    cv2.imwrite(str(pwn / "victim" / "cell_00000007.png"), _plate(7))
    cv2.imwrite(str(tmp_path / "secret.png"), _plate(9))
    rows = [{"run": RUN, "seq": 1, "label": "false_reject", "image": "review/p1.png", "who": "ann"},
            {"run": RUN, "camera": f"x/{UP}{str(pwn).lstrip('/')}/written", "seq": 2, "label": "false_reject",
             "image": "review/p1.png", "who": "x"},
            {"run": f"{UP}{str(pwn / 'victim').lstrip('/')}/cell", "seq": 7, "label": "defect", "who": "x"},
            {"run": RUN, "seq": 3, "label": "false_reject", "image": str(tmp_path / "secret.png"), "who": "x"}]
    (out / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"out": out, "pwn": pwn, "victim": pwn / "victim" / "cell_00000007.png"}


def assert_nothing_outside_touched(paths: dict[str, Path], dest: Path) -> None:
    """The victim is still there, nothing new outside the output and dataset folders, and the dataset holds only
    part 1 of the review the console wrote (no copy of secret.png)."""
    assert paths["victim"].is_file(), "a file outside the dataset folder was deleted"
    assert sorted(p.relative_to(paths["pwn"]).as_posix() for p in paths["pwn"].rglob("*")) == \
        ["victim", "victim/cell_00000007.png"], "a file was written outside the dataset folder"
    exported = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png"))
    assert exported == [f"train/good/{RUN}_00000001.png"], exported


def assert_refusals_named(text: str) -> None:
    """The summary says 3 rows were refused and names each (row number, who, why)."""
    text = " ".join(text.split())
    assert "3 review rows of reviews.jsonl refused" in text, text
    assert re.search(r"row 2 \(who 'x', label 'false_reject'\): camera .* is not a camera name", text), text
    assert re.search(r"row 3 \(who 'x', label 'defect'\): run .* is not a run id the station writes", text), text
    assert re.search(r"row 4 \(who 'x', label 'false_reject'\): image '.*' is not inside the station's output",
                     text), text


def test_the_console_export_refuses_rows_naming_paths_and_says_which(tmp_path):
    paths = hostile_station(tmp_path)
    console, _ = one_camera_console(paths["out"], links=StationLinks(export_reviewed=export_reviewed))
    r = api(console).post("/api/export", json={"who": "operator"})
    assert r.status_code == 200, r.text
    answer = r.json()
    dest = Path(answer["dest"])
    assert dest.parent == paths["out"] / "datasets"
    assert_nothing_outside_touched(paths, dest)
    assert len(answer["refused"]) == 3 and answer["train/good"]["saved"] == 1, answer
    assert_refusals_named(answer["summary"])


def test_collect_reviewed_refuses_rows_naming_paths_and_says_which(tmp_path):
    paths = hostile_station(tmp_path)
    dest = tmp_path / "cli_export"
    run = CliRunner().invoke(app, ["collect", str(dest), "--reviewed", str(paths["out"])])
    assert run.exit_code == 0, run.output
    assert_nothing_outside_touched(paths, dest)
    assert "exported the reviewed parts, rows refused" in " ".join(run.output.split()), run.output
    assert_refusals_named(run.output)


def test_only_refused_rows_is_an_error_naming_them(tmp_path):
    """A reviews.jsonl of refused rows only exports nothing and says why, naming each row."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "reviews.jsonl").write_text(json.dumps({"run": "../x", "seq": 1, "label": "defect", "who": "x"}) + "\n")
    with pytest.raises(DataError, match=r"holds no reviews the station wrote \(1 review row .*row 1 .*run '../x'"):
        export_reviewed(out, tmp_path / "dest")


@pytest.mark.parametrize("row, why", [
    ({"camera": "a\\..\\b"}, "is not a camera name"),
    ({"camera": "cam\x00"}, "is not a camera name"),
    ({"camera": ".."}, "is not a camera name"),
    ({"seq": "3"}, "is not a part number"),
    ({"seq": True}, "is not a part number"),
    ({"seq": -1}, "is not a part number"),
    ({"label": ["defect"]}, "is not a review label"),
    ({"image": "review/../../x.png"}, "is not inside the station's output folder"),
    ({"run": "20261129T134000Z-3f2a/.."}, "is not a run id"),
    ({"run": None}, "is not a run id"),
])
def test_each_field_that_is_no_station_value_refuses_the_row(tmp_path, row, why):
    out = tmp_path / "out"
    (out / "review").mkdir(parents=True)
    cv2.imwrite(str(out / "review" / "p1.png"), _plate(1))
    good = {"run": RUN, "camera": "left", "seq": 1, "label": "false_reject", "image": "review/p1.png", "who": "ann"}
    (out / "reviews.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "seq": 2, **row}) + "\n")
    result = export_reviewed(out, tmp_path / "dest")
    assert result["train/good"]["saved"] == 1 and len(result["refused"]) == 1, result
    assert result["refused"][0].startswith("row 2 ") and why in result["refused"][0], result["refused"]


def test_one_cameras_rows_without_a_camera_or_with_an_empty_or_null_one_are_exported(tmp_path):
    out = tmp_path / "out"
    (out / "review").mkdir(parents=True)
    cv2.imwrite(str(out / "review" / "p1.png"), _plate(1))
    rows = [{"run": RUN, "seq": 1, "label": "false_reject", "image": "review/p1.png"},
            {"run": RUN, "camera": "", "seq": 2, "label": "false_reject", "image": "review/p1.png"},
            {"run": RUN, "camera": None, "seq": 3, "label": "false_reject", "image": "review/p1.png"}]
    (out / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = export_reviewed(out, tmp_path / "dest")
    assert result["refused"] == [] and result["train/good"]["saved"] == 3, result
    assert sorted(p.name for p in (tmp_path / "dest" / "train" / "good").iterdir()) == \
        [f"{RUN}_0000000{n}.png" for n in (1, 2, 3)]


def test_a_link_in_the_dataset_folder_leading_out_is_refused(tmp_path):
    """Exporting again into a dataset folder whose train/good was replaced by a link to another folder: nothing is
    written or removed there; the error names the link's path and the fix."""
    out, elsewhere, dest = tmp_path / "out", tmp_path / "elsewhere", tmp_path / "dest"
    (out / "review").mkdir(parents=True)
    elsewhere.mkdir()
    (dest / "train").mkdir(parents=True)
    (dest / "train" / "good").symlink_to(elsewhere, target_is_directory=True)
    cv2.imwrite(str(out / "review" / "p1.png"), _plate(1))
    (out / "reviews.jsonl").write_text(json.dumps({"run": RUN, "seq": 1, "label": "false_reject",
                                                   "image": "review/p1.png"}) + "\n")
    with pytest.raises(DataError, match="expected a file inside the dataset folder .*remove the link"):
        export_reviewed(out, dest)
    assert list(elsewhere.iterdir()) == []


def test_the_run_ids_the_station_writes_are_the_ones_taken():
    """``RUN_ID`` is the station's run id (records.new_run_id) and the console's run without a recorder (its start
    second, console.feed.StationFeed)."""
    run_id = collect.RUN_ID
    assert run_id.fullmatch(new_run_id())
    assert run_id.fullmatch(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    assert not run_id.fullmatch("r1") and not run_id.fullmatch(RUN + "/..")

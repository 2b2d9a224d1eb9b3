"""File names OpenCV never sees, and folder entries that are not images.

1. A path byte that is not UTF-8 (a Latin-1 folder from a Windows share: surrogate escapes in Python) crashed the
   process inside OpenCV (segfault, exit 139): the station on its first NG part, a console review, ``collect
   --reviewed``, tune's proxy set; a video replay of such a file. Files are now read and written by Python and
   decoded / encoded in memory (``fair_edge.images``), and a video OpenCV must open by name is refused naming it.
   Each of these runs in a child process, so that the old crash fails its test only.
2. One empty folder under test/ (``test/scratch``) or a NAS's ``test/@eaDir`` stopped train and eval ("holds no
   images"): now it is skipped (an empty one with a warning).
3. macOS AppleDouble files (``._NAME.png``) were listed as images (training, the folder replay), and tune's proxy
   set stopped on an unreadable held-out file: they are not listed now, and tune skips what training skips.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fair_edge.cameras import EndOfStream, FolderReplaySource
from fair_edge.images import decode_file
from fair_edge.training.data import Sample, list_images, load_dataset
from fair_edge.training.tune import write_proxy_set
from fair_edge.training.tune_candidates import TuneSettings

ROOT = Path(__file__).resolve().parents[1]
LATIN1 = os.fsdecode(b"lat\xe9n")   # "latén" as a Windows share names it: not UTF-8, a surrogate in Python
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)   # the header macOS writes


def _child(script: str, *args: str | Path) -> dict:
    """Run ``script`` in a fresh Python (argv: ``args``) and return the JSON object it prints last. Fails the
    test, with the child's exit status and stderr, when it crashed (OpenCV's segfault: 139 / -11) or raised."""
    child = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                           timeout=300, errors="backslashreplace")
    assert child.returncode == 0, (child.returncode, child.stderr[-3000:])
    return json.loads(child.stdout.strip().splitlines()[-1])


def _png(path: Path, image: np.ndarray) -> Path:
    """Write ``image`` as the PNG ``path`` by Python (any file name), folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    return path


def _plate(value: int, size: int = 48) -> np.ndarray:
    """A textured (size, size, 3) uint8 BGR image, distinct per ``value``."""
    rng = np.random.default_rng(value)
    return rng.integers(40, 220, (size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- 1. names that are not UTF-8
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_the_station_saves_ng_images_into_an_output_folder_whose_name_is_not_utf8(tmp_path, fmt):
    out = tmp_path / LATIN1 / "station"
    result = _child(
        "import json, sys, numpy as np\n"
        "from pathlib import Path\n"
        "from fair_edge.line.recorder import Recorder\n"
        "from fair_edge.line.settings import RecordSettings\n"
        "from fair_edge.records import Frame, Verdict\n"
        "amap = np.zeros((12, 16), np.float32); amap[3:6, 4:8] = 1.0\n"
        "with Recorder(RecordSettings(dir=Path(sys.argv[1]), min_free_mb=0, image_format=sys.argv[2]), "
        "run_id='R1') as rec:\n"
        "    rec.record(Frame(0, 1.0, np.full((48, 64, 3), 80, np.uint8), 'a.png'), "
        "Verdict(0, 1.0, 0.9, 0.5, True, 1.01, 'a.png'), amap)\n"
        "    assert rec.flush()\n"
        "    stats = rec.stats()\n"
        "print(json.dumps({k: stats[k] for k in ('images', 'write_errors', 'images_failed')}))\n",
        out, fmt)
    assert result == {"images": 1, "write_errors": 0, "images_failed": 0}
    assert sorted(p.name for p in (out / "ng").iterdir()) == [f"R1_00000000_frame.{fmt}", f"R1_00000000_overlay.{fmt}"]
    frame = decode_file(out / "ng" / f"R1_00000000_frame.{fmt}")
    assert frame.shape == (48, 64, 3) and abs(int(frame.mean()) - 80) <= 2


def test_a_video_whose_path_is_not_utf8_is_refused_naming_it_and_the_fix(tmp_path):
    video = tmp_path / f"clip{LATIN1}.avi"
    video.write_bytes(b"RIFF not decoded: refused before OpenCV sees the name")
    result = _child(
        "import json, sys\n"
        "from fair_edge.cameras import OpenCVSource, VideoReplaySource\n"
        "from fair_edge.errors import CameraError\n"
        "said = []\n"
        "for source in (VideoReplaySource(sys.argv[1]), OpenCVSource(sys.argv[1])):\n"
        "    try:\n"
        "        source.open()\n"
        "    except CameraError as exc:\n"
        "        said.append(str(exc).encode('utf-8', 'backslashreplace').decode())\n"
        "print(json.dumps(said))\n",
        video)
    assert len(result) == 2, result
    for said in result:
        assert "clip" + "lat\\xe9n.avi is not UTF-8 (byte 0xe9" in said and "Rename" in said, said


RUN = "20261129T134000Z-00e1"   # a run id as the station writes it: the only runs an export of reviewed parts takes


def test_collect_reviewed_reads_a_station_folder_whose_name_is_not_utf8(tmp_path):
    station = tmp_path / LATIN1
    _png(station / "ng" / "R1_00000003_frame.png", _plate(3))
    (station / "reviews.jsonl").write_text(json.dumps({"run": RUN, "seq": 3, "label": "false_reject",
                                                       "image": "ng/R1_00000003_frame.png"}) + "\n")
    result = _child(
        "import json, sys\n"
        "from fair_edge.training.collect import export_reviewed\n"
        "result = export_reviewed(sys.argv[1], sys.argv[2])\n"
        "print(json.dumps({k: result[k] for k in ('train/good', 'no_image')}))\n",
        station, tmp_path / "dataset")
    assert result == {"train/good": {"saved": 1, "unreadable": 0}, "no_image": 0}
    assert np.array_equal(decode_file(tmp_path / "dataset" / "train" / "good" / f"{RUN}_00000003.png"), _plate(3))


def test_a_console_review_keeps_the_ng_frame_of_a_station_folder_whose_name_is_not_utf8(tmp_path):
    """The reviewed part's frame is no longer in memory: it is read from the recorder's NG image and kept under
    review/ (``StationActions._save_image``, driven here with a stand-in of the station feed)."""
    output = tmp_path / LATIN1
    _png(output / "ng" / "R1_00000004_frame.png", _plate(4))
    result = _child(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from types import SimpleNamespace\n"
        "from fair_edge.console.actions import StationActions\n"
        "from fair_edge.line.settings import RecordSettings\n"
        "from fair_edge.records import Verdict\n"
        "output = Path(sys.argv[1])\n"
        "recorder = SimpleNamespace(dir=output, settings=RecordSettings(dir=output))\n"
        "feed = SimpleNamespace(output=output, recorder=recorder, kept_part=lambda seq, camera: None)\n"
        "me = SimpleNamespace(feed=feed, run_id='R1')\n"
        "verdict = Verdict(4, 1.0, 0.9, 0.5, True, 1.01, 'a.png')\n"
        "print(json.dumps(StationActions._save_image(me, verdict, 'defect')))\n",
        output)
    assert result == "review/R1_00000004_defect.png"
    assert np.array_equal(decode_file(output / result), _plate(4))


def test_tune_writes_its_proxy_set_into_a_folder_whose_name_is_not_utf8(tmp_path):
    held = [_png(tmp_path / "held" / f"{i}.png", _plate(i)) for i in range(3)]
    out = tmp_path / LATIN1 / "proxy"
    result = _child(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from fair_edge.training.data import Sample\n"
        "from fair_edge.training.tune import write_proxy_set\n"
        "from fair_edge.training.tune_candidates import TuneSettings\n"
        "samples = write_proxy_set([Sample(Path(p)) for p in sys.argv[2:]], Path(sys.argv[1]), TuneSettings())\n"
        "print(json.dumps([s.label for s in samples]))\n",
        out, *held)
    assert result == [0, 1] * 3
    assert np.array_equal(decode_file(out / "good" / "0000.png"), _plate(0))


def test_no_module_hands_opencv_a_file_name_it_could_crash_on():
    """The rule behind the fixes above, for code still to come: no image is read or written by OpenCV's own file
    functions (``images.decode_file`` / ``write_image`` do it by Python), and every ``cv2.VideoCapture`` that may be
    given a file is guarded by ``images.utf8_problem``."""
    by_name = re.compile(r"cv2\.(imread|imwrite|imreadmulti|imwritemulti|VideoWriter)\(")
    found, unguarded = [], []
    for folder in ("fair_edge", "cameras", "export", "calibration"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            found += [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}" for m in by_name.finditer(text)]
            if "cv2.VideoCapture(" in text and "utf8_problem(" not in text:
                unguarded.append(str(path.relative_to(ROOT)))
    assert not found, f"OpenCV given a file name at {found}: read with images.decode_file, write with write_image"
    assert not unguarded, f"cv2.VideoCapture without a utf8_problem check in {unguarded}"


def test_utf8_problem_names_the_first_byte_that_is_not_utf8():
    from fair_edge.images import utf8_problem

    assert utf8_problem(Path("/data/é 日本/a.avi")) == ""
    assert (utf8_problem(Path("/data") / f"clip{LATIN1}.avi")
            == "/data/cliplat\\xe9n.avi is not UTF-8 (byte 0xe9 at byte offset 13)")


# ----------------------------------------------------------------------------- 2. folders under test/
def _mvtec(root: Path) -> Path:
    """train/good (4), test/good (2), test/crack (2): a small MVTec-layout product."""
    for i in range(4):
        _png(root / "train" / "good" / f"{i:03d}.png", _plate(i))
    for i in range(2):
        _png(root / "test" / "good" / f"{i:03d}.png", _plate(10 + i))
        _png(root / "test" / "crack" / f"{i:03d}.png", _plate(20 + i))
    return root


@pytest.mark.parametrize("need_train", [True, False], ids=["train", "eval"])
def test_an_empty_or_nas_folder_under_test_stops_neither_train_nor_eval(tmp_path, caplog, need_train):
    root = _mvtec(tmp_path / "plate")
    (root / "test" / "scratch").mkdir()
    (root / "test" / "@eaDir" / "000.png").mkdir(parents=True)   # Synology's thumbnail folder per image
    (root / "test" / "@eaDir" / "SYNOINDEX_MEDIA_INFO").write_bytes(b"x")
    (root / "test" / ".ipynb_checkpoints").mkdir()
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"):
        split = load_dataset(root, need_train=need_train)
    assert len(split.train) == 4
    assert sorted((s.label, s.defect_type, s.path.name) for s in split.test) == [
        (0, "good", "000.png"), (0, "good", "001.png"), (1, "crack", "000.png"), (1, "crack", "001.png")]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and f"test folder {root / 'test' / 'scratch'}: it holds no images" in warned[0], warned


# ----------------------------------------------------------------------------- 3. AppleDouble and hidden files
def _with_mac_litter(folder: Path, names: list[str]) -> Path:
    """``folder`` with a PNG per name, and beside each the AppleDouble ``._NAME`` macOS leaves, plus ``.DS_Store``
    and a hidden PNG."""
    for i, name in enumerate(names):
        _png(folder / name, _plate(i))
        (folder / f"._{name}").write_bytes(APPLEDOUBLE)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _png(folder / ".thumb.png", _plate(99))
    return folder


def test_appledouble_and_hidden_files_are_not_images(tmp_path, caplog):
    folder = _with_mac_litter(tmp_path / "normals", ["a.png", "b.png"])
    assert [p.name for p in list_images(folder)] == ["a.png", "b.png"]
    from fair_edge.image_folders import image_files   # the rule list_images and the folder replay share

    assert [p.name for p in image_files(folder, (".png",))] == ["a.png", "b.png"]
    root = _mvtec(tmp_path / "plate")
    _with_mac_litter(root / "train" / "good", ["004.png"])
    _with_mac_litter(root / "test" / "crack", ["002.png"])
    with caplog.at_level(logging.WARNING):
        split = load_dataset(root)
    assert [s.path.name for s in split.train] == ["000.png", "001.png", "002.png", "003.png", "004.png"]
    assert [s.path.name for s in split.test if s.label] == ["000.png", "001.png", "002.png"]
    assert not caplog.records


def test_the_folder_replay_skips_appledouble_files(tmp_path):
    folder = _with_mac_litter(tmp_path / "replay", ["a.png", "b.png"])
    frames = []
    with FolderReplaySource(folder) as source:
        with pytest.raises(EndOfStream):
            for _ in range(10):
                frames.append(source.read())
        assert source.unreadable == 0
    assert [f.source for f in frames] == ["a.png", "b.png"]


def test_tune_skips_an_unreadable_held_out_image_as_training_does(tmp_path, caplog):
    held = [_png(tmp_path / "held" / f"{i}.png", _plate(i)) for i in range(3)]
    broken = tmp_path / "held" / "._1.png"
    broken.write_bytes(APPLEDOUBLE)
    samples = [Sample(held[0]), Sample(broken), Sample(held[1]), Sample(held[2])]
    with caplog.at_level(logging.WARNING):
        proxy = write_proxy_set(samples, tmp_path / "proxy", TuneSettings())
    assert [s.label for s in proxy] == [0, 1] * 3
    assert sorted(p.name for p in (tmp_path / "proxy" / "good").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert np.array_equal(decode_file(tmp_path / "proxy" / "good" / "0001.png"), _plate(1))
    assert any(str(broken) in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]

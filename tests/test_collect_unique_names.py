"""`fair-edge collect` never overwrites an image already in OUT: two collects into one folder that start in the same
UTC second (two cameras at once) or after the wall clock stepped back named their frames alike
(``UTC-SECOND_SEQ.png``) and the second replaced the first's images while both printed "saved 5". Each collect's
prefix is now its run id (a random suffix), and every frame is created as a new file, taking the next free name."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import fair_edge.cli.collect as collect_cli
from fair_edge.cli import app
from fair_edge.errors import DataError
from fair_edge.training.collect import RUN_ID, Collector, QualitySettings, export_reviewed


def _frames(seed: int, count: int = 5) -> list[np.ndarray]:
    """Distinct textured (128, 128, 3) uint8 frames the quality checks keep."""
    rng = np.random.default_rng(seed)
    return [rng.integers(40, 200, (128, 128, 3), dtype=np.uint8) for _ in range(count)]


def _source(folder, frames) -> None:
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), frame)


def _stored(out) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted(out.glob("*.png"))]


def test_two_collects_into_one_folder_with_the_same_clock_keep_every_image(tmp_path, monkeypatch):
    first, second = _frames(0), _frames(1)
    _source(tmp_path / "cam_a", first)
    _source(tmp_path / "cam_b", second)
    start = time.time()   # both runs see the same wall clock (same second, or NTP stepped it back between them)
    frozen = type("FrozenTime", (), {"__getattr__": lambda self, name: getattr(time, name),
                                     "gmtime": lambda self, secs=None: time.gmtime(start if secs is None else secs)})
    monkeypatch.setattr(collect_cli, "time", frozen(), raising=False)
    monkeypatch.setattr(collect_cli, "collect_prefix", lambda: "20261206T182858Z_", raising=False)  # same prefix
    out = tmp_path / "OUT"
    for cam in ("cam_a", "cam_b"):
        run = CliRunner().invoke(app, ["collect", str(out), "--source", str(tmp_path / cam), "--max-frames", "5"])
        assert run.exit_code == 0 and "saved 5" in " ".join(run.output.split()), run.output
    stored = _stored(out)
    assert len(stored) == 10, sorted(p.name for p in out.iterdir())   # the old code: 5, run a's all replaced
    for frame in first + second:
        assert any(np.array_equal(frame, s) for s in stored)


def test_each_collect_names_its_frames_with_its_own_run_id(tmp_path):
    """Each prefix is a new run id: the UTC second and 4 random hex digits. Twenty drawn in one second all differ
    but for a 1 in 345 chance (a full suite failed once on a repeat), so the test asks for 18 or more: three
    repeats among 20 draws of 65 536 happen about once in 10^8 runs; a suffix that did not vary fails at once."""
    prefixes = [collect_cli.collect_prefix() for _ in range(20)]
    assert all(p.endswith("_") and RUN_ID.fullmatch(p[:-1]) for p in prefixes)
    assert len(set(prefixes)) >= 18


def test_a_collector_takes_the_next_free_name_and_never_replaces_a_file(tmp_path):
    (tmp_path / "P_a.png").write_bytes(b"not ours")
    (tmp_path / "P_a-2.png").write_bytes(b"not ours either")
    frame = _frames(2, 1)[0]
    assert Collector(tmp_path, QualitySettings(), prefix="P_").add(frame, "a") == "saved"
    assert (tmp_path / "P_a.png").read_bytes() == b"not ours"
    assert (tmp_path / "P_a-2.png").read_bytes() == b"not ours either"
    assert np.array_equal(cv2.imread(str(tmp_path / "P_a-3.png")), frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P_a-2.png", "P_a-3.png", "P_a.png"]   # no .tmp left


def test_reserving_names_stops_with_an_error_naming_the_folder_when_all_are_taken(tmp_path):
    from fair_edge.training.collect import reserve_new_png

    (tmp_path / "x.png").touch()
    (tmp_path / "x-2.png").touch()
    with pytest.raises(DataError) as err:
        reserve_new_png(tmp_path, "x", tries=2)
    assert str(tmp_path / "x") in str(err.value) and "new folder" in str(err.value)
    assert reserve_new_png(tmp_path, "x", tries=3) == tmp_path / "x-3.png"


def test_exporting_reviewed_parts_again_still_replaces_their_copy(tmp_path):
    from fair_edge.console.journal import Journal

    station = tmp_path / "station"
    (station / "review").mkdir(parents=True)
    old, new = _frames(3, 2)
    cv2.imwrite(str(station / "review" / "r_1.png"), old)
    Journal(station / "reviews.jsonl").append({"run": "20261129T134000Z-3f2a", "seq": 1, "label": "false_reject",
                                               "image": "review/r_1.png"})
    export_reviewed(station, tmp_path / "ds")
    cv2.imwrite(str(station / "review" / "r_1.png"), new)
    export_reviewed(station, tmp_path / "ds")
    good = tmp_path / "ds" / "train" / "good"
    assert [p.name for p in good.iterdir()] == ["20261129T134000Z-3f2a_00000001.png"]
    assert np.array_equal(cv2.imread(str(good / "20261129T134000Z-3f2a_00000001.png")), new)

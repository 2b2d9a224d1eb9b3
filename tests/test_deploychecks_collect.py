"""`fair-edge collect` removes, at its start, the hidden part files (``.STEM.<16 hex>.part``) that a collect killed
between writing a frame and linking it left in its folder, and says how many: before, each hard crash left one for
good and the disk filled slowly. Only its own names go, and only those unchanged for over ``PART_STALE_S`` seconds,
so a second collect writing into the same folder keeps its own; file ages are judged by a clock handed in."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.training.collect import PART_STALE_S, Collector, write_part
from test_collect_crash_safe import CRASH_EXIT, CRASHING_COLLECT

HOUR_S = 3600.0


def crash_while_saving(folder: Path, times: int = 1) -> list[Path]:
    """Run ``times`` collects into ``folder`` that die (no clean-up) between writing a frame and linking it; the part
    files they left, each made an hour old."""
    for _ in range(times):
        done = subprocess.run([sys.executable, "-c", CRASHING_COLLECT, str(folder)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == CRASH_EXIT, done.stderr
    parts = sorted(folder.glob(".P_00000001.*.part"))
    assert len(parts) == times, sorted(p.name for p in folder.iterdir())
    for part in parts:
        an_hour_ago = time.time() - HOUR_S
        os.utime(part, (an_hour_ago, an_hour_ago))
    return parts


def not_ours(folder: Path) -> list[str]:
    """Files and folders in ``folder``, an hour old, that only look like part files, and an image: none is removed."""
    names = [".P.part", ".P.0123456789ABCDEF.part", "P.0123456789abcdef.part", ".P.0123456789abcdef.part.png",
             ".P.0123456789abcde.part", "P_1.png"]
    for name in names:
        (folder / name).write_bytes(b"x")
    (folder / ".D.0123456789abcdef.part").mkdir()
    (folder / ".L.0123456789abcdef.part").symlink_to(folder / "P_1.png")
    names += [".D.0123456789abcdef.part", ".L.0123456789abcdef.part"]
    for name in names:
        os.utime(folder / name, (time.time() - HOUR_S,) * 2, follow_symlinks=False)
    return sorted(names)


def test_a_collect_removes_the_part_files_killed_collects_left_and_says_how_many(tmp_path, caplog):
    folder = tmp_path / "train" / "good"
    folder.mkdir(parents=True)
    crash_while_saving(folder, times=2)
    kept = not_ours(folder)
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.collect"):
        collector = Collector(folder)
    assert sorted(p.name for p in folder.iterdir()) == kept   # the old code: the two part files stayed
    assert collector.parts_removed == 2
    assert f"{folder}: removed 2 part file(s)" in caplog.text and "collect killed while saving" in caplog.text


def test_a_part_file_another_live_collect_is_writing_is_kept(tmp_path):
    """A part file exists for one write and one link; one younger than PART_STALE_S may be another collect's."""
    part = write_part(tmp_path, "P_00000001", b"png bytes")
    written = part.stat().st_mtime
    assert Collector(tmp_path, clock=lambda: written + PART_STALE_S - 1).parts_removed == 0 and part.is_file()
    assert Collector(tmp_path, clock=lambda: written + PART_STALE_S + 1).parts_removed == 1 and not part.exists()


def test_exporting_reviewed_parts_leaves_part_files_alone(tmp_path):
    """``replace=True`` (export_reviewed) writes whole files its own way and is not the collect that left them."""
    parts = crash_while_saving(tmp_path)
    assert Collector(tmp_path, replace=True).parts_removed == 0 and parts[0].is_file()


def test_the_collect_command_clears_them_before_saving_and_says_so(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    crash_while_saving(out)
    source = tmp_path / "cam"
    source.mkdir()
    cv2.imwrite(str(source / "0.png"), np.random.default_rng(0).integers(40, 200, (128, 128, 3), dtype=np.uint8))
    run = CliRunner().invoke(app, ["collect", str(out), "--source", str(source), "--max-frames", "1"])
    assert run.exit_code == 0, run.output
    assert [p.suffix for p in out.iterdir()] == [".png"], sorted(p.name for p in out.iterdir())
    assert f"{out}: removed 1 part file(s)" in " ".join(run.output.split()), run.output


# a collect on a file system without hard links (FAT / exFAT: os.link fails with EPERM) that dies (no clean-up) after
# creating the frame's name empty and before renaming its part file over it
CRASHING_COLLECT_NO_LINKS = f"""
import errno, os, sys
import numpy as np
from fair_edge.training.collect import write_new_png
def no_hard_links(*args, **kwargs):
    raise OSError(errno.EPERM, "Operation not permitted")
os.link = no_hard_links
os.replace = lambda *args, **kwargs: os._exit({CRASH_EXIT})
frame = np.random.default_rng(0).integers(40, 200, (64, 64, 3), dtype=np.uint8)
write_new_png(__import__("pathlib").Path(sys.argv[1]), "P_00000001", frame)
"""


def test_a_collect_removes_the_empty_png_a_collect_killed_without_hard_links_left(tmp_path, caplog):
    """Killed between reserving the frame's name (NAME.png created empty) and renaming its part file over it, a
    collect on a FAT / exFAT stick left an empty P_00000001.png: the next collect said nothing of it, and train
    listed it as an image and met it as unreadable. It is removed now (only an empty .png unchanged for over
    PART_STALE_S: another live collect's reserved name is milliseconds old), and the warning names it."""
    done = subprocess.run([sys.executable, "-c", CRASHING_COLLECT_NO_LINKS, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == CRASH_EXIT, done.stderr
    empty = tmp_path / "P_00000001.png"
    assert empty.stat().st_size == 0
    (tmp_path / "P_2.png").write_bytes(b"not empty")   # kept: it holds something
    (tmp_path / "notes.txt").touch()                    # kept: empty, but no PNG
    for path in tmp_path.iterdir():
        os.utime(path, (time.time() - HOUR_S,) * 2)
    (tmp_path / "P_3.png").touch()                      # kept: empty, but new (another collect's reserved name)
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.collect"):
        collector = Collector(tmp_path)
    assert collector.empty_pngs_removed == [empty] and collector.parts_removed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P_2.png", "P_3.png", "notes.txt"]
    assert f"{tmp_path}: removed 1 empty PNG(s) (P_00000001.png; unchanged for over" in caplog.text, caplog.text
    assert Collector(tmp_path, clock=lambda: time.time() + HOUR_S, replace=True).empty_pngs_removed == []
    assert (tmp_path / "P_3.png").exists()   # export_reviewed's replace=True leaves such files alone

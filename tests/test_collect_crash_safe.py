"""`fair-edge collect` writes each new frame whole or not at all: a crash while saving leaves no empty or partial
``.png`` in the training folder. Before, the name was reserved by creating an empty ``NAME.png`` and the PNG renamed
over it afterwards, so a crash in between left an empty ``NAME.png`` that a later ``train`` met as a broken image.
Now the PNG is written to a hidden part file (``.NAME.XXXX.part``, which no image listing takes) and hard-linked to
the first free name, which never replaces a file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import fair_edge.training.collect as collect
from fair_edge.errors import DataError
from fair_edge.training.data import folder_images, list_images

CRASH_EXIT = 3
# a process that dies (os._exit: no cleanup, no finally) at the step that gives the written frame its name: the
# rename of the old code (after it created the empty NAME.png) or the link of the new one
CRASHING_COLLECT = f"""
import os, sys
import numpy as np
from fair_edge.training.collect import write_new_png
os.link = os.replace = os.rename = lambda *args, **kwargs: os._exit({CRASH_EXIT})
frame = np.random.default_rng(0).integers(40, 200, (64, 64, 3), dtype=np.uint8)
write_new_png(__import__("pathlib").Path(sys.argv[1]), "P_00000001", frame)
"""


def _frame(seed: int) -> np.ndarray:
    """A textured (64, 64, 3) uint8 BGR frame."""
    return np.random.default_rng(seed).integers(40, 200, (64, 64, 3), dtype=np.uint8)


def test_a_crash_while_saving_leaves_no_png_that_train_would_read(tmp_path):
    folder = tmp_path / "train" / "good"
    folder.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", CRASHING_COLLECT, str(folder)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == CRASH_EXIT, done.stderr
    left = sorted(p.name for p in folder.iterdir())
    assert folder_images(folder) == [], left   # the old code: [P_00000001.png], an empty file
    assert not [name for name in left if name.lower().endswith(".png")], left
    with pytest.raises(DataError, match="holds no images"):
        list_images(folder)


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()],
                         ids=["io_error", "interrupt"])
def test_a_failure_naming_the_frame_removes_its_part_file(tmp_path, monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(collect.os, "link", fail)
    with pytest.raises(DataError if isinstance(failure, OSError) else KeyboardInterrupt) as err:
        collect.write_new_png(tmp_path, "P_a", _frame(0))
    assert list(tmp_path.iterdir()) == []
    if isinstance(failure, OSError):
        assert str(tmp_path / "P_a.png") in str(err.value) and "Input/output error" in str(err.value)


def test_a_failure_writing_the_part_file_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(collect.os, "fdopen", full_disk)
    with pytest.raises(DataError, match="No space left on device"):
        collect.write_new_png(tmp_path, "P_a", _frame(0))
    assert list(tmp_path.iterdir()) == []


def test_without_hard_links_the_frame_is_saved_whole_and_never_over_a_file(tmp_path, monkeypatch):
    """A FAT / exFAT USB stick refuses hard links (EPERM): the name is then reserved empty and the part renamed over
    it, as before, still never over another file."""
    def no_links(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(collect.os, "link", no_links)
    (tmp_path / "P_a.png").write_bytes(b"not ours")
    frame = _frame(1)
    assert collect.write_new_png(tmp_path, "P_a", frame) == tmp_path / "P_a-2.png"
    assert (tmp_path / "P_a.png").read_bytes() == b"not ours"
    assert np.array_equal(cv2.imread(str(tmp_path / "P_a-2.png")), frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P_a-2.png", "P_a.png"]   # no part file left


def test_concurrent_writers_of_one_name_each_get_their_own_whole_file(tmp_path):
    writers, each = 4, 6
    frames = {(w, i): _frame(100 * w + i) for w in range(writers) for i in range(each)}
    start = threading.Barrier(writers)
    saved: dict[tuple[int, int], Path] = {}

    def write(w: int) -> None:
        start.wait()
        for i in range(each):
            saved[(w, i)] = collect.write_new_png(tmp_path, "P_same", frames[(w, i)])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(saved.values())) == writers * each
    for key, path in saved.items():
        assert np.array_equal(cv2.imread(str(path)), frames[key]), path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in saved.values())
    assert os.path.exists(tmp_path / "P_same.png") and os.path.exists(tmp_path / f"P_same-{writers * each}.png")

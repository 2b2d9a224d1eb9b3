"""fair_edge.disk: the cause and fix of a failed write by errno (``write_failure``), one wording for every writer,
and the removal of a half-written file that ignores one never made (``discard_unfinished``)."""

import errno
import logging
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from fair_edge.disk import discard_unfinished, write_failure

Usage = namedtuple("Usage", "total used free")
TORCH_READ_ONLY = "[enforce fail at inline_container.cc:747] . open file failed with strerror: Read-only file system"


@pytest.fixture
def three_mb(monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 << 20, 97 << 20, 3 << 20))


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code), "out/last.pt.tmp")


@pytest.mark.parametrize("exc, expected", [
    (oserror(errno.ENOSPC), "the disk of {d} is full (3.0 MB free on the disk of {d}). Free space on that disk or "
                            "choose an --out on another disk"),
    (RuntimeError("... No space left on device"), "the disk of {d} is full (3.0 MB free on the disk of {d}). Free "
                                                  "space on that disk or choose an --out on another disk"),
    (oserror(errno.EDQUOT), "the disk of {d} is over this account's quota (3.0 MB free on the disk of {d}). Free "
                            "space on that disk or choose an --out on another disk"),
    (oserror(errno.EROFS), "{d} is on a read-only file system. Choose an --out on a writable disk, or remount that "
                           "disk read-write"),
    (RuntimeError(TORCH_READ_ONLY), "{d} is on a read-only file system. Choose an --out on a writable disk, or "
                                    "remount that disk read-write"),
    (PermissionError(errno.EACCES, "Permission denied"), "this account cannot write in {d}. Choose an --out you can "
                                                         "write, or make that folder writable"),
    (oserror(errno.EPERM), "this account cannot write in {d}. Choose an --out you can write, or make that folder "
                           "writable"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 31499392 vs 31499284"),
     "the disk of {d} may be full (3.0 MB free on the disk of {d}). Free space on that disk or choose an --out on "
     "another disk"),
    (OSError("6144 requested and 4064 written"), "the disk of {d} may be full (3.0 MB free on the disk of {d}). Free "
                                                 "space on that disk or choose an --out on another disk"),
    (oserror(errno.EIO), "fix {d} or choose another --out"),
], ids=["ENOSPC", "torch-ENOSPC", "EDQUOT", "EROFS", "torch-EROFS", "EACCES", "EPERM", "torch-short", "numpy-short",
        "EIO"])
def test_write_failure_names_the_cause_and_fix_by_errno(tmp_path, three_mb, exc, expected):
    """Each writer had its own wording, and checkpoints said "Free space on that disk" whatever the errno (a disk
    remounted read-only mid-training included). Now one clause per cause; torch's RuntimeError (no errno) by its
    text; a short write without errno may be a full disk, with its free space."""
    assert write_failure(tmp_path, exc) == expected.format(d=tmp_path)


def test_write_failure_without_an_out_flag_gives_only_the_disks_fix(tmp_path, three_mb):
    """``out_flag=None`` (a unit folder: nothing to choose instead) keeps only the disk's fix; ``named`` names the
    folder as the user knows it while the free space is still the folder's."""
    assert write_failure(tmp_path, oserror(errno.EROFS), None) == (f"{tmp_path} is on a read-only file system. "
                                                                   "Remount that disk read-write")
    assert write_failure(tmp_path, oserror(errno.ENOSPC), None) == (f"the disk of {tmp_path} is full (3.0 MB free on "
                                                                    f"the disk of {tmp_path}). Free space on that disk")
    assert write_failure(tmp_path, oserror(errno.ENOSPC), named="--out b") == (
        f"the disk of --out b is full (3.0 MB free on the disk of {tmp_path}). Free space on that disk or choose an "
        "--out on another disk")


def test_discard_unfinished_ignores_a_file_a_read_only_disk_never_let_be_made(tmp_path, monkeypatch, caplog):
    """On a read-only file system unlinking even a missing file fails with EROFS: the checkpoint's cleanup then
    warned "could not remove the unfinished checkpoint last.pt.tmp (Read-only file system): delete it" about a file
    that never existed. A missing one is now fine; one that exists and cannot be removed is still named."""
    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    with caplog.at_level(logging.WARNING):
        discard_unfinished(tmp_path / "last.pt.tmp", "checkpoint")
        assert caplog.records == []
        (tmp_path / "kept.tmp").write_bytes(b"half")
        discard_unfinished(tmp_path / "kept.tmp", "checkpoint")
    assert [r.getMessage() for r in caplog.records] == [
        f"could not remove the unfinished checkpoint {tmp_path / 'kept.tmp'} (Read-only file system): delete it"]


def test_discard_unfinished_removes_a_half_written_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"half a graph")
    discard_unfinished(tmp_path / "m.onnx")
    discard_unfinished(tmp_path / "never.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_is_told_from_other_names_of_its_file_its_long_name_cut_short_included():
    """``is_temporary_of``: what the console withholds beside a station file (``served_files.withheld``)."""
    from fair_edge.disk import is_temporary_of, temporary_name

    long_name = "line-3-" + "x" * 240 + ".yaml"
    for target in ("station.yaml", long_name):
        assert is_temporary_of(temporary_name(target), target)
    assert len(temporary_name(long_name).encode()) <= 255
    for other in ("station.yaml", "station.yaml.bak", ".station.yaml.swp", ".ab12cd34.other.yaml.tmp",
                  ".ab12cd3.station.yaml.tmp", ".AB12CD34.station.yaml.tmp", "ab12cd34.station.yaml.tmp"):
        assert not is_temporary_of(other, "station.yaml"), other

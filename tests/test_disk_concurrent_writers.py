"""disk.write_whole: two writers of one path at once (two ``fair-edge bench --json same.json``) each write a
temporary of their own, so both end with a whole file under the name; a failed or interrupted write leaves no
temporary behind; the file's mode is the umask's, as a plain open makes it; a name of 251 bytes still fits."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from fair_edge import disk
from fair_edge.disk import write_text_whole, write_whole

WAIT_S = 60   # a bound on a wait that must end at once: a hung test fails instead of hanging the suite


def test_two_writers_of_one_path_at_once_both_end_with_a_whole_file(tmp_path, monkeypatch):
    """Writer A has written its file and is about to rename it when writer B writes the same path whole. Before,
    both used PATH.tmp: B truncated and renamed A's temporary, and A's rename then failed (FileNotFoundError).
    Now each has its own temporary: both renames succeed, the last one's file is under the name, whole."""
    target = tmp_path / "same.json"
    real_replace = os.replace
    a_at_rename, b_done = threading.Event(), threading.Event()

    def replace_pausing_a(src, dst):
        if threading.current_thread().name == "writer-a":
            a_at_rename.set()
            assert b_done.wait(WAIT_S), "writer B never finished"
        real_replace(src, dst)

    monkeypatch.setattr(disk.os, "replace", replace_pausing_a)
    a_failed: list[BaseException] = []

    def writer_a():
        try:
            write_text_whole(target, "A" * 5000, "JSON report")
        except BaseException as exc:   # noqa: BLE001 - handed to the main thread's assertion
            a_failed.append(exc)
            a_at_rename.set()

    a = threading.Thread(target=writer_a, name="writer-a")
    a.start()
    assert a_at_rename.wait(WAIT_S) and not a_failed, a_failed
    write_text_whole(target, "B" * 3000, "JSON report")
    assert target.read_text() == "B" * 3000
    b_done.set()
    a.join(WAIT_S)
    assert not a_failed, a_failed
    assert target.read_text() == "A" * 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.json"]


def test_two_temporaries_of_one_path_have_different_names(tmp_path):
    fd1, first = disk.create_temporary(tmp_path / "r.json")
    fd2, second = disk.create_temporary(tmp_path / "r.json")
    os.close(fd1), os.close(fd2)
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith(".") and first.name.endswith(".r.json.tmp")


def test_a_failed_write_leaves_no_temporary_and_the_earlier_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("earlier")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_text_whole(target, "new", "JSON report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert target.read_text() == "earlier"


def test_a_write_interrupted_by_ctrl_c_leaves_no_temporary(tmp_path, monkeypatch):
    """A KeyboardInterrupt between the write and the rename left PATH.tmp behind (only OSError removed it); with
    a temporary of its own per write, nothing later would ever reuse and replace it. Now any failure removes it."""
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(disk.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_whole(tmp_path / "frame.png", b"png bytes", "NG image", durable=False)
    assert list(tmp_path.iterdir()) == []


def test_the_file_has_the_umasks_mode_as_a_plain_open_gives(tmp_path):
    """A temporary made private (0600, as tempfile.mkstemp makes it) would make every report unreadable to the
    group; the file keeps 0o666 less the umask, as the fixed PATH.tmp opened with open() did."""
    old = os.umask(0o022)
    try:
        write_text_whole(tmp_path / "summary.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_a_name_of_251_bytes_still_fits_its_temporary(tmp_path):
    """evaluate.panel_name leaves room for ``.tmp`` alone (NAME_MAX 255 bytes): the unique temporary cuts the name
    it carries at a whole character rather than fail with "File name too long"."""
    name = "日" * 83 + "xx"   # 249 + 2 bytes: its temporary's 241 bytes of room end inside the 81st character
    assert len(os.fsencode(name)) == 251
    write_whole(tmp_path / name, b"pixels", "image", durable=False)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert len(os.fsencode(disk.temporary_name(name))) <= disk.NAME_MAX_BYTES
    assert disk.temporary_name(name).encode("utf-8").endswith("日.tmp".encode("utf-8"))   # cut between characters

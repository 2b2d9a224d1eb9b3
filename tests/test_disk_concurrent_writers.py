"""disk.write_whole: two writers of one path at once (two ``fair-edge bench --json same.json``) each write a
temporary of their own, so both end with a whole file under the name; a failed or interrupted write leaves no
temporary behind; the file's mode is the umask's, as a plain open makes it; a name of 251 bytes still fits. The same
holds for the writers that had a fixed temporary name of their own (PATH.tmp): checkpoints and systemd unit files."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from fair_edge import disk
from fair_edge.disk import write_text_whole, write_whole

WAIT_S = 60   # a bound on a wait that must end at once: a hung test fails instead of hanging the suite


def paused_writer_a(monkeypatch, write_a) -> tuple[threading.Thread, threading.Event, threading.Event, list]:
    """Writer A (``write_a()`` on a thread named writer-a) paused at its rename (os.replace) until ``b_done`` is set:
    (the thread, started; a_at_rename, set once A is there or has failed; b_done; A's failures)."""
    real_replace = os.replace
    a_at_rename, b_done, a_failed = threading.Event(), threading.Event(), []

    def replace_pausing_a(src, dst):
        if threading.current_thread().name == "writer-a":
            a_at_rename.set()
            assert b_done.wait(WAIT_S), "writer B never finished"
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_pausing_a)

    def run_a():
        try:
            write_a()
        except BaseException as exc:   # noqa: BLE001 - handed to the main thread's assertion
            a_failed.append(exc)
            a_at_rename.set()

    a = threading.Thread(target=run_a, name="writer-a")
    a.start()
    return a, a_at_rename, b_done, a_failed


def test_two_writers_of_one_path_at_once_both_end_with_a_whole_file(tmp_path, monkeypatch):
    """Writer A has written its file and is about to rename it when writer B writes the same path whole. Before,
    both used PATH.tmp: B truncated and renamed A's temporary, and A's rename then failed (FileNotFoundError).
    Now each has its own temporary: both renames succeed, the last one's file is under the name, whole."""
    target = tmp_path / "same.json"
    a, a_at_rename, b_done, a_failed = paused_writer_a(monkeypatch,
                                                       lambda: write_text_whole(target, "A" * 5000, "JSON report"))
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


def test_two_saves_of_one_checkpoint_at_once_both_end_with_a_whole_checkpoint(tmp_path, monkeypatch):
    """save_checkpoint wrote PATH.tmp, a fixed name: a second save of the same checkpoint while the first was about
    to rename its file (two runs on one --out, the console's export beside a training run) truncated and renamed the
    first one's temporary, and the first save then failed ("cannot write checkpoint ... No such file or directory").
    Now each save has a temporary of its own: both succeed, the last rename's checkpoint is under the name, whole."""
    from fair_edge.models.checkpoint import load_checkpoint, save_checkpoint
    from test_checkpoint_fsync import checkpoint

    target = tmp_path / "last.pt"
    a, a_at_rename, b_done, a_failed = paused_writer_a(monkeypatch, lambda: save_checkpoint(target, checkpoint(1)))
    assert a_at_rename.wait(WAIT_S) and not a_failed, a_failed
    save_checkpoint(target, checkpoint(2))
    assert load_checkpoint(target).train_state == {"step": 2}
    b_done.set()
    a.join(WAIT_S)
    assert not a_failed, a_failed
    assert load_checkpoint(target).train_state == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_checkpoint_save_interrupted_by_ctrl_c_leaves_no_temporary(tmp_path, monkeypatch):
    """A KeyboardInterrupt while torch.save wrote the checkpoint left PATH.tmp (only OSError and RuntimeError removed
    it); with a temporary of its own per save, nothing later would reuse it. Now any failure removes it."""
    import torch

    from fair_edge.models.checkpoint import save_checkpoint
    from test_checkpoint_fsync import checkpoint, saved_to

    def interrupted(payload, f, *args, **kwargs):
        saved_to(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last.pt", checkpoint(1))
    assert list(tmp_path.iterdir()) == []


def test_one_checkpoint_saved_twice_is_the_same_bytes_whatever_its_name(tmp_path):
    """torch.save names the records inside the file after the file it is handed: saved by a temporary's random name,
    two saves of one checkpoint would differ (a rebuilt bundle's weights.pt, hence its files' model id). Saved through
    the open temporary, the bytes are the checkpoint's alone, under any name (they named the file before: a.pt's
    records differed from b.pt's)."""
    from fair_edge.models.checkpoint import save_checkpoint
    from test_checkpoint_fsync import checkpoint

    one = checkpoint(1)
    saved = [save_checkpoint(tmp_path / name, one).read_bytes() for name in ("a.pt", "a.pt", "b.pt")]
    assert saved[0] == saved[1] == saved[2]


def test_two_installs_of_one_unit_at_once_both_end_with_a_whole_unit(tmp_path, monkeypatch):
    """install_unit wrote .NAME.tmp, a fixed name: a second install (--force) while the first was about to rename its
    file renamed the first one's temporary away, and the first install then failed with "UNITS does not exist. Is
    this a systemd machine?" (its rename found no file). Now each install has a temporary of its own: both succeed,
    the last rename's unit is in place, whole and 0644."""
    import stat

    from fair_edge.station.service_unit import install_unit, render_unit
    from test_service_unit import settings

    units = tmp_path / "units"
    units.mkdir()
    first, second = settings(tmp_path), settings(tmp_path, environment=("OMP_NUM_THREADS=2",))
    a, a_at_rename, b_done, a_failed = paused_writer_a(monkeypatch, lambda: install_unit(first, units))
    assert a_at_rename.wait(WAIT_S) and not a_failed, a_failed
    unit = install_unit(second, units, replace=True)
    assert unit.read_text() == render_unit(second)
    b_done.set()
    a.join(WAIT_S)
    assert not a_failed, a_failed
    assert unit.read_text() == render_unit(first) != render_unit(second)
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644 and [p.name for p in units.iterdir()] == [unit.name]


def test_a_unit_under_a_symlink_is_replaced_not_written_through(tmp_path):
    """A unit linked into the folder (``systemctl link``) is replaced by the installed file, as the rename of the fixed
    temporary did; the file the link led to is left as it was."""
    from fair_edge.station.service_unit import install_unit, render_unit
    from test_service_unit import settings

    units, elsewhere = tmp_path / "units", tmp_path / "linked.service"
    units.mkdir()
    elsewhere.write_text("[Unit]\n")
    (units / "fair-edge.service").symlink_to(elsewhere)
    unit = install_unit(settings(tmp_path), units, replace=True)
    assert not unit.is_symlink() and unit.read_text() == render_unit(settings(tmp_path))
    assert elsewhere.read_text() == "[Unit]\n"

"""The recorder on a disk out of inodes and on a slow disk (the resources audit).

Inodes: NG images took every free inode (the guard read only the bytes free), so a log's rotation could not make
its next file: ``RotatingJsonl`` then deleted its oldest rotated file, often the one it had just moved to ``.1``, and
logged "disk full ... its rows are gone" with 200 MB free; ``write_failure`` told ``train`` "the disk is full (200.0
MB free ...)". Slow disk: close gave the row writer 5 s whatever its progress, so at 0.3 s a row 56 of 101 verdict
rows were lost at every stop ("a hung disk?"), and nothing had warned of the backlog during the run.
The disk is simulated: ``os.open``/``os.statvfs`` patched to a folder with a fixed number of inodes, row writes that
move a fake clock (the recorder's ``clock``); no mount, and every timing bound is on the fake clock.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import fair_edge.line.disk_room as disk_room
import fair_edge.line.jsonl as jsonl
import fair_edge.line.recorder as recmod
from fair_edge.disk import write_failure
from fair_edge.line.jsonl import RotatingJsonl
from fair_edge.line.recorder import Recorder
from fair_edge.line.settings import RecordSettings
from fair_edge.records import Frame, Verdict

Usage = namedtuple("Usage", "total used free")
MB = 2**20


class FakeClock:
    """Monotonic seconds that move only when a test (or a simulated disk write) moves them."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class InodeDisk:
    """The disk of ``folder``: ``free`` inodes when made, each entry made under the folder (and its ``ng/``) takes
    one, each deleted frees one. ``os.open`` creating a file there with none free fails ENOSPC (as tmpfs with
    nr_inodes does); ``os.statvfs`` shows the inodes free and 200 MB of bytes free."""

    def __init__(self, folder: Path, free: int) -> None:
        self.folder, self.start_free = Path(folder), free
        self.start_entries = self.entries()
        self.real_open, self.real_statvfs = os.open, os.statvfs

    def entries(self) -> int:
        count = 0
        for folder in (self.folder, self.folder / "ng"):
            try:
                count += sum(1 for _ in os.scandir(folder))
            except FileNotFoundError:
                continue
        return count

    def free(self) -> int:
        return self.start_free - (self.entries() - self.start_entries)

    def open(self, path, flags, *args, **kwargs):
        inside = Path(os.path.abspath(path)).is_relative_to(self.folder)
        if inside and flags & os.O_CREAT and not os.path.lexists(path) and self.free() <= 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return self.real_open(path, flags, *args, **kwargs)

    def statvfs(self, path):
        if not Path(os.path.abspath(path)).is_relative_to(self.folder):
            return self.real_statvfs(path)
        return SimpleNamespace(f_files=10**6, f_favail=max(0, self.free()), f_ffree=max(0, self.free()),
                               f_frsize=4096, f_bsize=4096, f_blocks=10**6, f_bfree=200 * 256, f_bavail=200 * 256)

    def install(self, monkeypatch) -> InodeDisk:
        monkeypatch.setattr(os, "open", self.open)
        monkeypatch.setattr(os, "statvfs", self.statvfs)
        return self


def _rows(folder: Path, name: str) -> list[dict]:
    """Every row of the log ``name`` and its rotated files, oldest file first."""
    files = sorted(folder.glob(f"{name}.*"), key=lambda p: -int(p.suffix[1:])) + [folder / name]
    return [json.loads(line) for path in files if path.exists() for line in path.read_text().splitlines()]


def _ng(seq: int) -> tuple[Frame, Verdict, np.ndarray]:
    return (Frame(seq, 1.0, np.full((24, 32, 3), 80, np.uint8), "test"),
            Verdict(seq, 1.0, 0.9, 0.5, True, 1.01, "test"), np.ones((6, 8), np.float32))


# ----------------------------------------------------------------------------------------------------- inodes
def test_write_failure_on_a_disk_out_of_inodes_says_inodes_not_full(tmp_path, monkeypatch):
    """ENOSPC with 200 MB free and no inode left read "the disk is full (200.0 MB free ...)". Now it names inodes
    and ``df -i``; a file system without a fixed number of inodes (btrfs: f_files 0) or with inodes left keeps the
    full-disk words."""
    inodes = {"f_files": 10**6, "f_favail": 0}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1000 * MB, 800 * MB, 200 * MB))
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(**inodes))
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/last.pt.tmp")
    assert write_failure(tmp_path, enospc) == (
        f"no free inodes (files) left on the disk of {tmp_path} (`df -i`; 200.0 MB free on the disk of {tmp_path}): "
        "delete files there or choose an --out on another disk")
    assert write_failure(tmp_path, enospc, None).endswith("): delete files there")
    full = f"the disk of {tmp_path} is full (200.0 MB free on the disk of {tmp_path}). Free space on that disk"
    for files, available in ((0, 0), (10**6, 5000)):
        inodes.update(f_files=files, f_favail=available)
        assert write_failure(tmp_path, enospc, None) == full


def test_a_rotation_on_a_disk_out_of_inodes_keeps_every_row_and_rotates_once_a_file_can_be_made(
        tmp_path, monkeypatch, caplog):
    """Images took the last inode: the rotation moved verdicts.jsonl to .1, could not make the new file, and the
    write then deleted .1 (the rows just rotated) to get an inode. Now the next file is made before anything moves:
    without an inode the log grows past max_bytes (one warning naming inodes), nothing is deleted, and it rotates
    again once an inode is free and ROTATE_RETRY_S has passed."""
    caplog.set_level(logging.INFO, logger="fair_edge.line.jsonl")
    disk = InodeDisk(tmp_path, free=3).install(monkeypatch)
    clock = FakeClock()
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=1000, keep=3, clock=clock)
    for seq in range(40):                          # ~1600 bytes: one rotation on the way
        log.write({"seq": seq, "pad": "x" * 20})
    for i in range(disk.free()):                   # NG images take the inodes left
        (tmp_path / f"image{i}.png").write_bytes(b"png")
    assert disk.free() == 0
    for seq in range(40, 90):                      # within what its 3 rotated files would hold
        log.write({"seq": seq, "pad": "x" * 20})
    assert [r["seq"] for r in _rows(tmp_path, "verdicts.jsonl")] == list(range(90))   # no row deleted
    assert log.files_dropped == 0 and log.rotations == 1 and log.rotations_put_off >= 1
    put_off = [r.getMessage() for r in caplog.records if "not rotated" in r.getMessage()]
    assert len(put_off) == 1 and "no free inodes (files)" in put_off[0] and "df -i" in put_off[0], put_off
    assert not [r for r in caplog.records if "rows are gone" in r.getMessage()]
    (tmp_path / "image0.png").unlink()             # an inode free again; the retry waits for its time
    log.write({"seq": 90})
    assert log.rotations == 1
    clock.t += jsonl.ROTATE_RETRY_S
    log.write({"seq": 91})
    log.close()
    assert log.rotations == 2 and (tmp_path / "verdicts.jsonl").read_text() == '{"seq":91}\n'
    assert [r["seq"] for r in _rows(tmp_path, "verdicts.jsonl")] == list(range(92))
    assert any("rotated again" in r.getMessage() for r in caplog.records)


def test_a_log_file_that_cannot_be_made_for_want_of_inodes_deletes_no_rotated_log(tmp_path, monkeypatch):
    """The log's own file missing (a new folder's gate.jsonl, a log removed) on a disk out of inodes: the write
    deleted the oldest rotated log (a former run's rows) to make it. Now it raises ENOSPC in inode words, and the
    rotated logs stay."""
    for i in (1, 2):
        (tmp_path / f"gate.jsonl.{i}").write_text(f'{{"seq":{i}}}\n')
    disk = InodeDisk(tmp_path, free=0).install(monkeypatch)
    log = RotatingJsonl(tmp_path / "gate.jsonl", max_bytes=1000, keep=3)
    with pytest.raises(OSError) as raised:
        log.write({"seq": 3})
    assert raised.value.errno == errno.ENOSPC and "no free inodes (files)" in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.jsonl.1", "gate.jsonl.2"] and log.files_dropped == 0
    assert disk.free() == 0


def test_ng_images_stop_before_they_take_the_inodes_the_logs_rotation_needs(tmp_path, monkeypatch, caplog):
    """The audit's tmpfs with few inodes: NG images (2 files a part) took them all, and the logs' rotation then
    deleted verdict rows. Now images stop while (keep_files + 1) per log + MIN_FREE_INODES are free (one warning
    naming inodes and ``df -i``, not the bytes), and every verdict row is kept with no log deleted."""
    monkeypatch.setattr(disk_room, "MIN_FREE_INODES", 8, raising=False)   # a small disk: 2 x (10 + 1) + 8 = 30 kept
    disk = InodeDisk(tmp_path, free=80).install(monkeypatch)
    settings = RecordSettings(dir=tmp_path, min_free_mb=1, max_log_mb=0.002, keep_files=10, queue_size=64)
    with Recorder(settings, disk_check_s=0.0, run_id="R") as rec:
        for seq in range(60):
            assert rec.record(*_ng(seq))
            if seq % 10 == 9:
                assert rec.flush(30)               # never past queue_size: images are skipped by the guard only
        stats = rec.stats()
    seqs = [r["seq"] for r in _rows(tmp_path, "verdicts.jsonl")]
    assert seqs == list(range(60)), seqs
    assert stats["log_files_deleted"] == 0 and stats["rows_failed"] == 0 and stats["logged"] == 60, stats
    assert 0 < stats["images"] < 60 and stats["images"] + stats["images_skipped"] == 60, stats
    assert disk.free() >= 8
    warned = [r.getMessage() for r in caplog.records if "no longer saved" in r.getMessage()]
    assert len(warned) == 1 and "free inodes (files)" in warned[0] and "df -i" in warned[0], warned
    assert not [r for r in caplog.records if "rows are gone" in r.getMessage()]


def test_the_inode_guard_reads_statvfs_only_when_it_reads_the_bytes_free(tmp_path):
    """The inodes are read with the free space, at most every disk_check_s (the image writer's cost is unchanged),
    and images resume, with one line, when inodes are back."""
    reads, free = [], {"inodes": 5}
    clock = FakeClock()

    def inodes(path):
        reads.append(clock())
        return free["inodes"]

    settings = RecordSettings(dir=tmp_path, min_free_mb=0, save_ng_images=True)
    rec = Recorder(settings, disk_usage=lambda p: Usage(10**12, 0, 10**11), inodes=inodes, clock=clock, run_id="R")
    try:
        assert not rec._disk_room.has_room() and not rec._disk_room.has_room() and len(reads) == 1
        free["inodes"] = disk_room.MIN_FREE_INODES + 2 * (settings.keep_files + 1)
        clock.t += disk_room.DISK_CHECK_S
        assert rec._disk_room.has_room() and len(reads) == 2
    finally:
        rec.close()


# -------------------------------------------------------------------------------------------------- slow disk
def slow_rows(monkeypatch, clock: FakeClock, step_s: float, hold: threading.Event | None = None,
              hang_after: float | None = None, release: threading.Event | None = None, real_s: float = 0.0):
    """Every row write moves ``clock`` by ``step_s`` (a disk taking that long a row); the first waits for ``hold``;
    one that would end past ``hang_after`` (fake s) hangs until ``release`` (a disk stuck from then on); ``real_s``:
    real seconds each write takes too (a slow disk for code that times with the real clock)."""
    real_write = RotatingJsonl.write
    first = [True]

    def write(self, obj):
        if hold is not None and first[0]:
            first[0] = False
            assert hold.wait(30), "the test never let the first row through"
        if real_s:
            time.sleep(real_s)   # the disk's own slowness, not a synchronisation
        if hang_after is not None and clock.t + step_s > hang_after:
            assert release.wait(30)
        clock.t += step_s
        return real_write(self, obj)

    monkeypatch.setattr(RotatingJsonl, "write", write)


def test_close_waits_for_a_slow_disk_while_it_keeps_writing_rows(tmp_path, monkeypatch, caplog):
    """A disk writing a row every 0.01 s (fake) held 40 rows at close: close gave up after rows_s (0.05 s) of the
    real clock although rows were going in, and counted 30-odd lost_at_close ("a hung disk?"). Now it waits while
    a row is written within rows_s of the last (fake clock), so every row is written."""
    clock = FakeClock()
    started = threading.Event()
    slow_rows(monkeypatch, clock, step_s=0.01, hold=started, real_s=0.005)
    rec = Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, save_ng_images=False), clock=clock, run_id="R")
    for seq in range(40):
        assert rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "test"))
    monkeypatch.setattr(rec._stop, "set", lambda real=rec._stop.set: (real(), started.set()))  # rows go in at close
    rec.close(images_s=0.0, rows_s=0.05)
    stats = rec.stats()
    assert (stats["logged"], stats["lost_at_close"], stats["pending"]) == (40, 0, 0), stats
    assert [r["seq"] for r in _rows(tmp_path, "verdicts.jsonl")] == list(range(40))
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_close_gives_up_at_its_cap_on_a_disk_still_writing_and_says_so(tmp_path, monkeypatch, caplog):
    """Rows still going in rows_max_s after close began: close stops there (the service's stop timeout), counts
    the rest lost_at_close (the counters add up) and says the disk is too slow, not hung."""
    clock = FakeClock()
    started, release = threading.Event(), threading.Event()
    slow_rows(monkeypatch, clock, step_s=1.0, hold=started, hang_after=clock.t + 3.0, release=release)
    rec = Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, save_ng_images=False), clock=clock, run_id="R")
    try:
        for seq in range(10):
            assert rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "test"))
        monkeypatch.setattr(rec._stop, "set", lambda real=rec._stop.set: (real(), started.set()))
        rec.close(images_s=0.0, rows_s=5.0, rows_max_s=3.0)
        stats = rec.stats()
        assert (stats["logged"], stats["lost_at_close"], stats["pending"], stats["queued"]) == (3, 7, 0, 10), stats
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "still writing rows 3 s after closing" in errors[0] and "hung" not in errors[0]
    finally:
        release.set()
        rec._thread.join(10)
    assert not rec._thread.is_alive() and rec.stats()["lost_at_close"] == 7


def test_rows_deadline_follows_the_last_row_up_to_the_cap():
    assert recmod.rows_deadline(100.0, 90.0, 5.0, 15.0) == 105.0     # nothing written since before close
    assert recmod.rows_deadline(100.0, 103.0, 5.0, 15.0) == 108.0    # a row 3 s in: 5 s more from it
    assert recmod.rows_deadline(100.0, 113.0, 5.0, 15.0) == 115.0    # never past the cap


def test_a_slow_disk_alone_gets_the_whole_close_cap_within_the_service_stop_timeout():
    """TimeoutStopSec leaves STOP_MARGIN_S past the belt's drain, and every wait of the stop draws from one deadline
    (station/stop_deadline.py; tests/test_stop_budget.py runs a stop whose every wait hangs). When only the disk is
    slow, the waits before close's rows (a reader blocked in its last read, the drain's extra second and its floor,
    finish_line's NG images and rows) leave it all of CLOSE_ROWS_MAX_S, and STOP_RESERVE_S after it."""
    from fair_edge.cameras.base import CaptureSettings
    from fair_edge.station.line_side import FINISH_ROWS_S, STOP_DRAIN_MIN_S
    from fair_edge.station.service_unit import STOP_MARGIN_S
    from fair_edge.station.stop_deadline import STOP_RESERVE_S

    stop_wait_extra_s = 1.0   # line_side.stop_wait_s: the belt's drain + 1 s
    before_rows_s = (CaptureSettings().stop_timeout_s + stop_wait_extra_s + STOP_DRAIN_MIN_S + recmod.CLOSE_IMAGES_S
                     + FINISH_ROWS_S)
    assert before_rows_s + recmod.CLOSE_ROWS_MAX_S + STOP_RESERVE_S <= STOP_MARGIN_S


def test_rows_falling_behind_a_slow_disk_are_warned_of_once_naming_the_disk(tmp_path, monkeypatch, caplog):
    """0.3 s a row (fake) and 100 rows queued: nothing warned during the run, only the stop lost rows. Now one
    warning names the disk, the rows waiting and the seconds they take at the pace measured."""
    clock = FakeClock()
    queued = threading.Event()
    slow_rows(monkeypatch, clock, step_s=0.3, hold=queued)
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, save_ng_images=False), clock=clock,
                  run_id="R") as rec:
        for seq in range(100):
            assert rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "test"))
        queued.set()
        assert rec.flush(30)
    warned = [r.getMessage() for r in caplog.records if "rows waiting to be written" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path) in warned[0] and "rows/s" in warned[0], warned
    assert rec.stats()["logged"] == 100


def test_a_disk_keeping_pace_gives_no_backlog_warning(tmp_path, monkeypatch, caplog):
    clock = FakeClock()
    slow_rows(monkeypatch, clock, step_s=0.001)
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, save_ng_images=False), clock=clock,
                  run_id="R") as rec:
        for seq in range(2500):
            rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "test"))
        assert rec.flush(30)
    assert not [r for r in caplog.records if "rows waiting to be written" in r.getMessage()]

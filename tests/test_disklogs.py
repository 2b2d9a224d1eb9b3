"""Logs on a full disk, and the journal of a persistent min_gap_ms conflict (the long-run audit).

A full disk stopped verdicts.jsonl and gate.jsonl for good: ``RotatingJsonl`` rotates only when a file would pass
``max_bytes``, so a write that failed for want of space was cut back and failed again for the rest of the run while
the log's own rotated files held the space. The NG image guard kept ``min_free_mb`` for images only, though the two
logs may grow to 2 x (keep_files + 1) x max_log_mb (768 MB by default > 500). And a min_gap_ms conflict that lasts
logged one ERROR line per part (1 672 lines in 40 s)."""

from __future__ import annotations

import builtins
import errno
import json
import logging
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

import fair_edge.line.gate_alarms as gate_alarms
import fair_edge.line.jsonl as jsonl
from fair_edge.line.jsonl import RotatingJsonl
from fair_edge.line.recorder import Recorder
from fair_edge.line.scheduler import RejectScheduler
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.records import Frame, Verdict
from line_replay import RecordingSink

Usage = namedtuple("Usage", "total used free")


class FolderDisk:
    """A disk of ``capacity`` bytes holding the files under ``folder``: what its files hold is used, so deleting one
    frees its bytes, as on a real disk. A log file's write takes what fits, then raises ENOSPC (a short write)."""

    def __init__(self, folder: Path, capacity: int) -> None:
        self.folder, self.capacity = Path(folder), capacity

    def room(self) -> int:
        used = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return max(0, self.capacity - used)

    def open(self, path, mode="r", *args, **kwargs):
        if mode != "ab":
            return builtins.open(path, mode, *args, **kwargs)
        return FolderDiskFile(builtins.open(path, "ab", buffering=0), self)


class FolderDiskFile:
    def __init__(self, raw, disk: FolderDisk) -> None:
        self.raw, self.disk = raw, disk

    def write(self, data: bytes) -> int:
        taken = self.raw.write(data[:self.disk.room()])
        if taken < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return taken

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.raw.close()


def _rows(folder: Path, name: str) -> list[dict]:
    """Every row of the log ``name`` and its rotated files, oldest file first (each line must parse)."""
    files = sorted(folder.glob(f"{name}.*"), key=lambda p: -int(p.suffix[1:])) + [folder / name]
    return [json.loads(line) for path in files if path.exists() for line in path.read_text().splitlines()]


def test_a_full_disk_deletes_the_oldest_rotated_log_and_writes_on(tmp_path, monkeypatch, caplog):
    """4 files of 1000 bytes on a 3000-byte disk: the write that finds it full deleted nothing and raised for the
    rest of the run. Now the oldest rotated file goes, counted and logged with its size, and the row is written;
    the newest rows are all kept, and what was deleted is exactly what is missing."""
    disk = FolderDisk(tmp_path, capacity=3000)
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=1000, keep=3)
    written = 0
    for seq in range(200):
        row = {"seq": seq, "pad": "x" * 20}
        log.write(row)
        written += len(jsonl.json_line(row))
    log.close()
    seqs = [r["seq"] for r in _rows(tmp_path, "verdicts.jsonl")]
    assert seqs == list(range(seqs[0], 200)) and seqs[0] > 0, seqs   # the newest rows, none missing, none torn
    held = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert log.files_dropped >= 1 and log.bytes_dropped == written - held
    deleted = [r.getMessage() for r in caplog.records if "deleted the oldest rotated log" in r.getMessage()]
    assert len(deleted) == log.files_dropped and "verdicts.jsonl.3" in deleted[0] and "rows are gone" in deleted[0]


def test_a_full_disk_with_no_rotated_log_left_still_fails_the_row(tmp_path, monkeypatch):
    """Nothing of the log's own left to delete (keep 0): the write raises as before, so the recorder counts it."""
    disk = FolderDisk(tmp_path, capacity=100)
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=1000, keep=0)
    log.write({"seq": 0})
    try:
        for seq in range(1, 20):
            log.write({"seq": seq, "pad": "x" * 20})
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("a full disk with nothing to delete wrote every row")
    finally:
        log.close()
    assert log.files_dropped == 0 and (tmp_path / "verdicts.jsonl").read_text().endswith("\n")


def test_the_recorder_writes_on_through_a_full_disk_and_counts_the_logs_deleted(tmp_path, monkeypatch, caplog):
    """Every row written (rows_failed stayed > 0 for the rest of the run); ``log_files_deleted`` counts what went."""
    disk = FolderDisk(tmp_path, capacity=4000)
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    settings = RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0, max_log_mb=0.001, keep_files=3)
    with Recorder(settings, run_id="R") as rec:
        for seq in range(100):
            rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "test"))
        assert rec.flush()
        stats = rec.stats()
    assert (stats["rows_failed"], stats["logged"], stats["write_errors"]) == (0, 100, 0), stats
    assert [r["seq"] for r in _rows(tmp_path, "verdicts.jsonl")][-1] == 99
    deleted = [r for r in caplog.records if "deleted the oldest rotated log" in r.getMessage()]
    assert stats["log_files_deleted"] == len(deleted) >= 1


def test_room_to_grow_is_the_rotation_cap_less_what_the_log_holds(tmp_path):
    log = RotatingJsonl(tmp_path / "gate.jsonl", max_bytes=1000, keep=2)
    assert log.room_to_grow() == 3000
    for seq in range(100):
        log.write({"seq": seq, "pad": "x" * 20})
    log.close()
    held = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.jsonl", "gate.jsonl.1", "gate.jsonl.2"]
    assert log.room_to_grow() == 3000 - held


def test_ng_images_leave_the_logs_the_room_their_rotation_needs(tmp_path, caplog):
    """min_free_mb 100, logs that may grow by 5 MB ((4 + 1) x 1 MB): at 103 MB free images stop (they were saved,
    and the logs later found the disk full); at 106 MB they are saved. The warning names both figures."""
    free = {"mb": 103}
    usage = lambda _p: Usage(10**12, 0, free["mb"] * 2**20)  # noqa: E731
    settings = RecordSettings(dir=tmp_path, min_free_mb=100, max_log_mb=1, keep_files=4)
    image, amap = np.full((48, 64, 3), 80, np.uint8), np.ones((12, 16), np.float32)
    with Recorder(settings, disk_usage=usage, disk_check_s=0.0, run_id="R") as rec:
        rec.record(Frame(0, 1.0, image, "test"), Verdict(0, 1.0, 0.9, 0.5, True, 1.01, "test"), amap)
        assert rec.flush()
        skipped = rec.stats()["images_skipped"]
        free["mb"] = 106
        rec.record(Frame(1, 1.0, image, "test"), Verdict(1, 1.0, 0.9, 0.5, True, 1.01, "test"), amap)
        assert rec.flush()
        stats = rec.stats()
    assert (skipped, stats["images"], stats["logged"]) == (1, 1, 2), stats
    warned = [r.getMessage() for r in caplog.records if "no longer saved" in r.getMessage()]
    assert len(warned) == 1 and "record.min_free_mb = 100 + 5 MB the verdict and gate logs" in warned[0], warned


# ------------------------------------------------------------------------------------------- gap_missed journal
class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_gap_miss_log_logs_the_first_at_once_and_the_rest_one_line_per_window():
    from fair_edge.line.gate_alarms import GapMissLog

    clock = FakeClock()
    gaps = GapMissLog(window_s=10.0, clock=clock)
    first = gaps.note(1)
    assert first is not None and first.startswith("part seq 1 not rejected: min_gap_ms")
    assert [gaps.note(seq) for seq in (2, 3)] == [None, None] and gaps.due() is None
    clock.t += 10.0
    line = gaps.due()
    assert line is not None
    assert line.startswith("2 more parts not rejected (gap_missed) in the last 10.0 s, seq 2 .. 3: 2, 3;"), line
    clock.t += 10.0
    assert gaps.due() is None                       # a window without a miss ends the spell ...
    assert gaps.note(9).startswith("part seq 9 ")   # ... so the next miss is logged at once
    for seq in range(10, 40):
        assert gaps.note(seq) is None
    line = gaps.close()
    assert "30 more parts" in line and "seq 10 .. 39" in line and "and 10 more (all in gate.jsonl)" in line
    assert gaps.close() is None


def test_a_persistent_min_gap_conflict_logs_two_lines_not_one_per_part(monkeypatch, caplog):
    """8 NG parts 2 ms apart on a 30 ms pulse slot: the first is rejected, the 7 after it are gap_missed. Each is
    counted, alarmed (the alarms latch beside each other: the fault output names all 7 parts, the first and the
    latest alarm) and has its gate row; the journal has one line for the first miss and one, at the end, for the 6 after it (one line per part
    before). No window ends during the test (GAP_LOG_S far away), so the line count does not depend on its speed."""
    monkeypatch.setattr(gate_alarms, "GAP_LOG_S", 1e9, raising=False)
    caplog.set_level(logging.ERROR, logger="fair_edge.line.scheduler")
    gate_rows: list[dict] = []
    sink, faults = RecordingSink(), RecordingSink("fault")
    settings = RejectSettings(delay_ms=500, pulse_ms=20, min_gap_ms=10, late_ms=10)
    with RejectScheduler(settings, sinks=sink, fault_sinks=faults, on_part=gate_rows.append) as gate:
        t0 = time.monotonic()
        for seq in range(8):
            gate.submit(Verdict(seq, t0 + 0.002 * seq, 0.9, 0.5, True, time.monotonic()))
        assert gate.wait_idle(10.0)
        stats = gate.stats()
        during = [r.getMessage() for r in caplog.records if "not rejected" in r.getMessage()]
    after = [r.getMessage() for r in caplog.records if "not rejected" in r.getMessage()]
    missed = [r["seq"] for r in gate_rows if r.get("gate") == "gap_missed"]
    assert missed == list(range(1, 8)) and [e.seq for _, e in sink.pulses] == [0]
    assert stats["gap_missed"] == 7 and stats["alarms"] == 7
    assert faults.faults[-1] == (True, "7 alarms since the last acknowledgement, parts seq 1 .. 7; not rejected "
                                       "(gap_missed): 7 parts, seq 1, 2, 3, 4, 5, 6, 7; first: part seq 1 not "
                                       "rejected: min_gap_ms after the previous pulse would put its edge past due + "
                                       "late_ms (it would hit the next part); latest: part seq 7 not rejected: "
                                       "min_gap_ms after the previous pulse would put its edge past due + late_ms (it "
                                       "would hit the next part)")
    assert len(during) == 1 and during[0].startswith("reject alarm: part seq 1 not rejected"), during
    assert len(after) == 2 and after[1].startswith("reject alarm: 6 more parts not rejected (gap_missed)"), after
    assert "seq 2 .. 7: 2, 3, 4, 5, 6, 7;" in after[1]

"""A log whose rotation is refused writes on in its current file (the shared record folder audit).

A trial `sudo fair-edge run` long enough to rotate leaves root's verdicts.jsonl.N in the record folder. In a shared
sticky (1777) folder the service account appends to its own verdicts.jsonl but may not move or delete root's files
(EPERM): ``RotatingJsonl``'s rotation raised, and every row after the log reached max_log_mb was counted rows_failed
and lost, with one warning. Now a rotation that fails is put off, as on a disk out of inodes: the log grows past
max_bytes keeping its rows (one warning naming the files and the ``chown``) up to what its rotated files would hold
(past it rows fail, EFBIG, counted and shown as log_rotations_put_off beside rows_failed), is retried every
``ROTATE_RETRY_S`` without deleting another rotated file, and rotates again once it may.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

import fair_edge.line.jsonl as jsonl
from fair_edge.line.jsonl import RotatingJsonl


class FakeClock:
    """Monotonic seconds that move only when the test moves them."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def refuse_moving(monkeypatch, refused: set[str]) -> None:
    """Moving (``os.replace``) or deleting (``Path.unlink``) a file named in ``refused`` fails with EPERM, as the
    kernel refuses it for another account's file in a sticky folder; the rest goes through."""
    real_replace, real_unlink = os.replace, Path.unlink

    def replace(src, dst):
        if Path(src).name in refused:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(src), None, str(dst))
        return real_replace(src, dst)

    def unlink(path, missing_ok=False):
        if path.name in refused:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(path))
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)


def test_a_refused_rotation_keeps_every_row_and_its_retries_delete_no_rotated_log(tmp_path, monkeypatch, caplog):
    """.1 cannot be moved: the first rotation deletes .3 (its own loss) and moves .2 up before it is refused. The
    rows go on into verdicts.jsonl; the retries, every ROTATE_RETRY_S, find .2 free and delete nothing more (the old
    code raised at each write, every row lost, and a retry deleted the rotated log moved to .3); once .1 may be
    moved the log rotates again."""
    caplog.set_level(logging.INFO, logger="fair_edge.line.jsonl")
    for i in (1, 2, 3):
        (tmp_path / f"verdicts.jsonl.{i}").write_text(f'{{"old":{i}}}\n')
    refused = {"verdicts.jsonl.1"}
    refuse_moving(monkeypatch, refused)
    clock = FakeClock()
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=200, keep=3, clock=clock)
    for seq in range(60):                          # ~11 bytes a row: the first rotation near row 19
        log.write({"seq": seq})
        clock.t += jsonl.ROTATE_RETRY_S / 2        # 30 s: ~20 retries
    assert [r["seq"] for r in _rows(tmp_path / "verdicts.jsonl")] == list(range(60))
    assert [_rows(tmp_path / f"verdicts.jsonl.{i}") for i in (1, 3)] == [[{"old": 1}], [{"old": 2}]]
    assert not (tmp_path / "verdicts.jsonl.2").exists()
    assert log.rotations == 0 and log.rotations_put_off == 1 and log.files_dropped == 0   # ~20 retries: 1 spell
    put_off = [r.getMessage() for r in caplog.records if "not rotated" in r.getMessage()]
    assert len(put_off) == 1, put_off
    assert "rotating it was refused" in put_off[0] and "verdicts.jsonl.1" in put_off[0], put_off
    assert "at most to what its rotated files would hold" in put_off[0] and "sudo chown" in put_off[0], put_off
    refused.clear()                                # the files given to the service account
    clock.t += jsonl.ROTATE_RETRY_S
    log.write({"seq": 60})
    log.close()
    assert log.rotations == 1 and _rows(tmp_path / "verdicts.jsonl") == [{"seq": 60}]
    assert [r["seq"] for r in _rows(tmp_path / "verdicts.jsonl.1")] == list(range(60))
    assert [_rows(tmp_path / f"verdicts.jsonl.{i}") for i in (2, 3)] == [[{"old": 1}], [{"old": 2}]]
    assert any("rotated again" in r.getMessage() for r in caplog.records)
    refused.add("verdicts.jsonl.1")                # refused again: a second spell (its .1 holds 3 x max_bytes, so
    for seq in range(61, 90):                      # the log grows no further than max_bytes: rows past it fail)
        try:
            log.write({"seq": seq})
        except OSError as exc:
            assert exc.errno == errno.EFBIG, exc
        clock.t += jsonl.ROTATE_RETRY_S / 2
    log.close()
    assert log.rotations == 1 and log.rotations_put_off == 2


def test_a_log_that_starts_over_in_place_and_may_not_fails_its_rows_past_max_bytes(tmp_path, monkeypatch):
    """keep 0 deletes the log to start over: refused (another account's log in a sticky folder), the log has no
    rotated files whose room it could grow into: a row past max_bytes raises EFBIG (counted rows_failed by the
    recorder) saying why, and nothing is deleted."""
    refuse_moving(monkeypatch, {"gate.jsonl"})
    log = RotatingJsonl(tmp_path / "gate.jsonl", max_bytes=30, keep=0, clock=FakeClock())
    for seq in range(3):                           # 10 bytes a row: 30 of 30
        log.write({"seq": seq})
    for seq in range(3, 5):
        with pytest.raises(OSError) as refused:
            log.write({"seq": seq})
        assert refused.value.errno == errno.EFBIG and "rows are not written until it rotates" in str(refused.value)
    log.close()
    assert [r["seq"] for r in _rows(tmp_path / "gate.jsonl")] == [0, 1, 2] and log.rotations == 0


def _in_child_as(account: pwd.struct_passwd, folder: Path, rows: int) -> dict:
    """Write ``rows`` rows to ``folder``/verdicts.jsonl (max 300 bytes, keep 3) in a child process running as
    ``account`` (fork, setgid, setuid: the service account); returns what it saw: the error, if a write raised, and
    the warnings logged."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        seen: dict = {"error": None, "warnings": []}
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            handler = logging.Handler()
            handler.emit = lambda record: seen["warnings"].append(record.getMessage())
            logging.getLogger("fair_edge.line.jsonl").addHandler(handler)
            log = RotatingJsonl(folder / "verdicts.jsonl", max_bytes=300, keep=3)
            for seq in range(rows):
                log.write({"seq": seq})
            log.close()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            seen["error"] = repr(exc)
        finally:
            os.write(write_end, json.dumps(seen).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        seen = json.loads(pipe.read() or b"{}")
    os.waitpid(pid, 0)
    return seen


@contextlib.contextmanager
def root_owned_sticky_folder():
    """A root-owned 1777 records folder (a shared one, as /tmp) and the ``nobody`` account, removed after; the test
    is skipped unless it runs as root (it makes root's files and runs a child as nobody)."""
    if os.getuid() != 0:
        pytest.skip("making root's file and running as nobody needs root")
    base = Path(tempfile.mkdtemp(prefix="fair-edge-rotation-"))
    try:
        base.chmod(0o755)
        folder = base / "records"
        folder.mkdir()
        folder.chmod(0o1777)
        yield pwd.getpwnam("nobody"), folder
    finally:
        shutil.rmtree(base)


def test_root_s_rotated_log_in_a_shared_sticky_folder_leaves_the_service_s_rows_in_its_log():
    """The real kernel's refusal: a root-owned 1777 record folder, root's verdicts.jsonl.1 (0644) from a trial run,
    the station as ``nobody`` (fork + setuid). Its rotation (.1 to .2) is refused with EPERM; every row stays in its
    verdicts.jsonl and the warning names root's file and the chown."""
    with root_owned_sticky_folder() as (account, folder):
        (folder / "verdicts.jsonl.1").write_text('{"old":1}\n')
        (folder / "verdicts.jsonl.1").chmod(0o644)
        seen = _in_child_as(account, folder, rows=80)
        assert seen["error"] is None, seen
        assert [r["seq"] for r in _rows(folder / "verdicts.jsonl")] == list(range(80))
        assert (folder / "verdicts.jsonl").stat().st_uid == account.pw_uid
        assert _rows(folder / "verdicts.jsonl.1") == [{"old": 1}] and not (folder / "verdicts.jsonl.2").exists()
        put_off = [m for m in seen["warnings"] if "not rotated" in m]
        assert len(put_off) == 1 and "Operation not permitted" in put_off[0], seen
        assert "verdicts.jsonl.1 (root)" in put_off[0], put_off
        assert f"`sudo chown nobody: {folder / 'verdicts.jsonl.1'}`" in put_off[0], put_off


def test_a_refused_rotation_grows_the_log_only_into_its_rotated_files_room_then_fails_rows(tmp_path, monkeypatch):
    """A refused rotation grew the log without bound (a 2 MB log at max_bytes 1000, the disk guard counting none of
    it) with one warning and no counter shown anywhere. Now the log with its rotated files stays within
    (keep + 1) x max_bytes: a row past that raises EFBIG (counted rows_failed by the recorder) naming the cause and
    the fix, and the log takes rows again once it has rotated."""
    (tmp_path / "verdicts.jsonl.1").write_text('{"old":1}\n')              # 10 bytes
    refused = {"verdicts.jsonl.1"}
    refuse_moving(monkeypatch, refused)
    clock = FakeClock()
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=200, keep=2, clock=clock)
    failed = []
    for seq in range(100):                                                   # 11-12 bytes a row: ~1100 bytes
        try:
            log.write({"seq": seq})
        except OSError as exc:
            failed.append(exc)
        clock.t += jsonl.ROTATE_RETRY_S / 4
    size = (tmp_path / "verdicts.jsonl").stat().st_size
    assert 3 * 200 - 10 - 12 < size <= 3 * 200 - 10, size
    assert log.room_to_grow() == (3 * 200 - 10 - size) + (200 - 10) + 200   # its own last bytes; .1, .2 refill
    assert failed and all(exc.errno == errno.EFBIG for exc in failed)
    assert "rows are not written until it rotates" in str(failed[0]) and "sudo chown" in str(failed[0])
    assert len(_rows(tmp_path / "verdicts.jsonl")) + len(failed) == 100 and log.rotations_put_off == 1
    refused.clear()
    clock.t += jsonl.ROTATE_RETRY_S
    log.write({"seq": 100})
    log.close()
    assert log.rotations == 1 and _rows(tmp_path / "verdicts.jsonl") == [{"seq": 100}]


def test_a_row_a_working_rotation_would_write_is_never_refused(tmp_path, monkeypatch):
    """Rotated files holding more than keep x max_bytes (a previous spell's grown log) took the grow limit below
    max_bytes (here -200): after one long row's refusal every short row failed EFBIG with the log under max_bytes,
    and kept failing after the refusal was fixed (short rows never retried the rotation). Now the limit is never
    below max_bytes: short rows are written, and once the refusal is gone the log rotates and takes every row."""
    (tmp_path / "verdicts.jsonl.1").write_text("x" * 599 + "\n")     # 3 x max_bytes: a spell's grown log
    (tmp_path / "verdicts.jsonl.2").write_text("y" * 199 + "\n")
    refused = {"verdicts.jsonl.2"}
    refuse_moving(monkeypatch, refused)
    clock = FakeClock()
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=200, keep=2, clock=clock)
    log.write({"p": "a" * 100})                                             # 111 bytes
    with pytest.raises(OSError) as long_row:
        log.write({"p": "b" * 100})                                         # would pass max_bytes: refused rotation
    assert long_row.value.errno == errno.EFBIG and log.rotations_put_off == 1
    assert f"past {200 / 2**20:.3g} MB" in str(long_row.value) and "sudo chown" in str(long_row.value)
    for seq in range(8):                                                    # 10 bytes a row: under max_bytes
        log.write({"seq": seq})
        clock.t += jsonl.ROTATE_RETRY_S / 4
    assert len(_rows(tmp_path / "verdicts.jsonl")) == 9 and log.rotations == 0
    refused.clear()
    for seq in range(8, 20):                                                # the log passes max_bytes: it rotates
        log.write({"seq": seq})
        clock.t += jsonl.ROTATE_RETRY_S / 4
    log.close()
    rows = _rows(tmp_path / "verdicts.jsonl.1") + _rows(tmp_path / "verdicts.jsonl")
    assert log.rotations == 1 and rows == [{"p": "a" * 100}] + [{"seq": s} for s in range(20)]


def test_the_room_to_grow_covers_what_a_spell_s_grown_log_holds_until_it_ages_out(tmp_path, monkeypatch):
    """After a spell of refused rotations the grown log became .1 and the log with its rotated files took up to
    ~50 % more than (keep + 1) x max_bytes until it aged out, while room_to_grow (what the disk guard keeps free)
    said 0. Now from the refusal on, at every row what the files hold plus room_to_grow covers the most they hold at
    any later row."""
    (tmp_path / "verdicts.jsonl.1").write_text('{"old":1}\n')              # 10 bytes
    refused = {"verdicts.jsonl.1"}
    refuse_moving(monkeypatch, refused)
    clock = FakeClock()
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=200, keep=2, clock=clock)
    held_and_room = []
    for seq in range(300):                                                   # 11-12 bytes a row
        if seq == 60:
            refused.clear()
        try:
            log.write({"seq": seq})
        except OSError as exc:
            assert exc.errno == errno.EFBIG and seq < 70, (seq, exc)
        clock.t += jsonl.ROTATE_RETRY_S / 4
        held = sum(p.stat().st_size for p in tmp_path.iterdir())
        if log.rotations_put_off:
            held_and_room.append((held, log.room_to_grow()))
    log.close()
    assert log.rotations >= 4 and max(held for held, _ in held_and_room) > 3 * 200   # the grown log aged through
    for i, (held, room) in enumerate(held_and_room):
        assert held + room >= max(later for later, _ in held_and_room[i:]), (i, held, room)
    assert held_and_room[-1][0] + held_and_room[-1][1] == 3 * 200                    # aged out: the cap again


def test_refused_rotations_are_shown_where_rows_failed_is(tmp_path, monkeypatch):
    """rotations_put_off was read nowhere outside jsonl.py. The recorder's counters (summary.json, /metrics) now
    carry log_rotations_put_off, and the run summary, the console's counters and the STATUS line show it."""
    from fair_edge.cli.run import recorder_rows
    from fair_edge.console.feed import StationFeed
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.line.recorder import Recorder
    from fair_edge.line.settings import RecordSettings
    from fair_edge.records import Verdict
    from fair_edge.station.inspector import RunSummary
    from fair_edge.station.notify import status_line

    (tmp_path / "verdicts.jsonl.1").write_text('{"old":1}\n')
    refuse_moving(monkeypatch, {"verdicts.jsonl.1"})
    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    settings = RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0, max_log_mb=0.001, keep_files=1)
    with Recorder(settings) as rec:
        feed.attach(None, None, None, rec)
        for seq in range(40):                                                # ~200 bytes a row: 8 KB
            rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "test"))
        assert rec.flush()
        counters = json.loads(json.dumps(feed.counters()))                   # as /api/state serves them
        stats = rec.stats()
        scraped = _scraped_recorder(rec)
    summary = RunSummary(inspected=40, recorder=stats)
    assert (tmp_path / "verdicts.jsonl").stat().st_size <= 2 * 1048 - 11
    assert stats["rows_failed"] > 0 and stats["logged"] + stats["rows_failed"] == 40
    put_off = stats["log_rotations_put_off"]
    assert put_off >= 1 and json.loads(summary.to_json())["recorder"]["log_rotations_put_off"] == put_off
    assert counters["log_rotations_put_off"] == put_off and counters["rows_failed"] == stats["rows_failed"]
    assert status_line(summary).endswith(f"log rows not written, {put_off} log rotations put off")
    assert f"{put_off} log rotation(s) refused and put off" in recorder_rows(stats)[0][1]
    assert f'fair_edge_recorder_total{{event="log_rotations_put_off"}} {float(put_off)}' in scraped


def _scraped_recorder(rec) -> str:
    """/metrics' text of ``rec`` watched as the station watches it (``metrics.watch("recorder", rec.stats)``)."""
    from prometheus_client import generate_latest

    from fair_edge.line.metrics import Metrics

    metrics = Metrics()
    metrics.watch("recorder", rec.stats)
    return generate_latest(metrics.registry).decode()


def test_the_console_shows_refused_rotations():
    """The console's counters card has a cell for log_rotations_put_off, filled by live.js."""
    static = Path(__file__).resolve().parents[1] / "fair_edge" / "console" / "static"
    assert 'id="rotations-put-off"' in (static / "live.html").read_text()
    script = (static / "live.js").read_text()
    assert "c.log_rotations_put_off" in script and '$("rotations-put-off").textContent' in script


def test_a_full_disk_passes_over_a_rotated_log_it_may_not_delete(tmp_path, monkeypatch, caplog):
    """Another account's verdicts.jsonl.7 (above keep, which install-service accepts) in a sticky folder: on a full
    disk _drop_oldest tried only .7, was refused, and every row was lost with one ERROR per row. Now .7 is passed
    over for .2 and .1 (one error for .7), and only once they are gone do rows fail."""
    caplog.set_level(logging.DEBUG, logger="fair_edge.line.jsonl")
    for i in (1, 2, 7):
        (tmp_path / f"verdicts.jsonl.{i}").write_text(f'{{"old":{i}}}\n')
    refuse_moving(monkeypatch, {"verdicts.jsonl.7"})
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", max_bytes=10_000, keep=2, clock=FakeClock())
    real_write = RotatingJsonl._write_line
    full = {"on": True}

    def write_line(self, line):   # the disk is full until a rotated log is deleted, again before each row
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_write(self, line)

    refusing_unlink = Path.unlink

    def unlink(path, missing_ok=False):   # a rotated log deleted: room for one row
        refusing_unlink(path, missing_ok=missing_ok)
        full["on"] = False

    monkeypatch.setattr(RotatingJsonl, "_write_line", write_line)
    monkeypatch.setattr(Path, "unlink", unlink)
    outcomes = []
    for seq in range(10):
        full["on"] = True
        try:
            log.write({"seq": seq})
            outcomes.append("written")
        except OSError as exc:
            outcomes.append(exc.errno)
    log.close()
    assert outcomes == ["written", "written"] + [errno.ENOSPC] * 8
    assert _rows(tmp_path / "verdicts.jsonl") == [{"seq": 0}, {"seq": 1}] and log.files_dropped == 2
    assert _rows(tmp_path / "verdicts.jsonl.7") == [{"old": 7}]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "verdicts.jsonl.7" in errors[0] and "passed over" in errors[0], errors


def test_a_rotation_refused_at_1_deletes_no_rotated_log_first():
    """The real kernel: every number 1..keep taken, root's verdicts.jsonl.1 in a root-owned 1777 folder and the
    service account's .2, .3. The rotation deleted .3 (rotation's own loss) and moved .2 up before .1 refused to
    move: a rotated log gone for a rotation that never happened. Now the files the rotation would move are checked
    first, and nothing is deleted or moved."""
    with root_owned_sticky_folder() as (account, folder):
        for i in (1, 2, 3):
            (folder / f"verdicts.jsonl.{i}").write_text(f'{{"old":{i}}}\n')
            (folder / f"verdicts.jsonl.{i}").chmod(0o644)
            if i > 1:
                os.chown(folder / f"verdicts.jsonl.{i}", account.pw_uid, account.pw_gid)
        seen = _in_child_as(account, folder, rows=40)                       # ~12 bytes a row: past 300
        assert seen["error"] is None, seen
        assert [_rows(folder / f"verdicts.jsonl.{i}") for i in (1, 2, 3)] == [[{"old": 1}], [{"old": 2}], [{"old": 3}]]
        assert [r["seq"] for r in _rows(folder / "verdicts.jsonl")] == list(range(40))
        put_off = [m for m in seen["warnings"] if "not rotated" in m]
        assert len(put_off) == 1 and "verdicts.jsonl.1 (root)" in put_off[0], seen

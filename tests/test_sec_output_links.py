"""The station wrote through symbolic links placed in its output folder (out_symlink_write.sh): ``verdicts.jsonl`` a
link to another file got the verdict rows appended to that file, ``ng`` a link to another folder got the NG images,
``.station.lock`` a link had the linked file truncated to the station's pid. At start the station now refuses (exit 2)
when any file or folder it writes there is a link, naming it, where it leads and the fix; a log link put there after
the start fails that log's writes (opened with O_NOFOLLOW: counted, never written through), and so does a link in the
place of the console's journals (reviews.jsonl, audit.jsonl)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.console.journal import Journal
from fair_edge.errors import ConfigError, RecorderError
from fair_edge.line.jsonl import RotatingJsonl
from fair_edge.line.recorder import Recorder
from fair_edge.line.settings import RecordSettings
from fair_edge.records import Frame, Verdict
from fair_edge.station import locks as station_locks
from fair_edge.station.config import StationConfig

VICTIM_TEXT = "victim config line\n"
# what the station writes in its output folder (with record.dir the same folder): its run lock, the summary, the
# console's journals, review images and exports, the recorder's logs and NG images
WRITTEN = (".station.lock", "summary.json", "reviews.jsonl", "audit.jsonl", "review", "datasets", "verdicts.jsonl",
           "gate.jsonl", "ng")


def victim(tmp_path: Path) -> Path:
    """A file outside the output folder that no station may write."""
    path = tmp_path / "victim" / "victim.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VICTIM_TEXT)
    return path


@pytest.mark.parametrize("name", WRITTEN)
def test_the_station_refuses_to_start_with_a_link_in_the_place_of_what_it_writes(tmp_path, name):
    """Each name the station writes in its output folder: a link there refuses the start (ConfigError: exit 2) naming
    the link, where it leads and the fix, before the lock file is written (a link in its place: the file it leads to
    kept whole)."""
    out, target = tmp_path / "out", victim(tmp_path)
    out.mkdir()
    (out / name).symlink_to(target)
    cfg = StationConfig(output=out, record=RecordSettings(dir=out))
    with pytest.raises(ConfigError) as caught:
        with station_locks.station_lock(cfg):
            pytest.fail("the station started with a link in its output folder")
    text = str(caught.value)
    assert f"{out / name} leads to {target}" in text and f"rm {out / name}" in text, text
    assert target.read_text() == VICTIM_TEXT


def test_a_record_dir_elsewhere_is_checked_too_and_every_link_is_named(tmp_path):
    out, rec, target = tmp_path / "out", tmp_path / "rec", victim(tmp_path)
    out.mkdir()
    rec.mkdir()
    (rec / "ng").symlink_to(target.parent, target_is_directory=True)
    (out / "reviews.jsonl").symlink_to(Path("..") / "victim" / "victim.conf")   # relative: both forms named
    cfg = StationConfig(output=out, record=RecordSettings(dir=rec))
    with pytest.raises(ConfigError, match="found 2 symbolic link") as caught:
        station_locks.refuse_linked_outputs(cfg)
    text = str(caught.value)
    assert f"{rec / 'ng'} leads to {target.parent}" in text, text
    assert f"{out / 'reviews.jsonl'} leads to ../victim/victim.conf ({target})" in text, text


def test_plain_files_and_folders_of_an_earlier_run_start_as_before(tmp_path):
    out = tmp_path / "out"
    (out / "ng").mkdir(parents=True)
    (out / "verdicts.jsonl").write_text("{}\n")
    (out / "elsewhere_link").symlink_to(tmp_path)   # a link the station does not write through is no concern
    cfg = StationConfig(output=out, record=RecordSettings(dir=out))
    with station_locks.station_lock(cfg):
        assert (out / station_locks.STATION_LOCK).is_file()


def test_fair_edge_run_exits_2_naming_the_links_and_writes_nothing_through_them(tmp_path):
    """out_symlink_write.sh: verdicts.jsonl, ng/ and the lock file links out. The old code truncated the victim
    to the lock's pid (then appended the verdict rows): it is untouched now, the exit code 2 and the message names
    each link."""
    out, target, src = tmp_path / "out", victim(tmp_path), tmp_path / "src"
    out.mkdir()
    src.mkdir()
    (out / "verdicts.jsonl").symlink_to(target)
    (out / "ng").symlink_to(target.parent, target_is_directory=True)
    (out / ".station.lock").symlink_to(target)
    run = CliRunner().invoke(app, ["run", "--source", str(src), "--bundle", str(tmp_path / "no_bundle"),
                                   "--out", str(out), "--console", "off"])
    text = " ".join(run.output.split())
    assert run.exit_code == 2, run.output
    assert "found 3 symbolic link(s)" in text and "remove the link(s)" in text, text
    assert target.read_text() == VICTIM_TEXT and sorted(p.name for p in target.parent.iterdir()) == ["victim.conf"]


def test_a_log_link_put_in_place_after_the_start_fails_its_writes_and_is_counted(tmp_path):
    """The recorder started on a plain folder; verdicts.jsonl replaced by a link before its first row: the row is
    not written through (rows_failed, write_errors), the linked file stays as it was."""
    target = victim(tmp_path)
    out = tmp_path / "out"
    with Recorder(RecordSettings(dir=out, min_free_mb=0), run_id="20261129T134000Z-3f2a") as rec:
        (out / "verdicts.jsonl").symlink_to(target)
        rec.record(Frame(1, 1.0, np.zeros((8, 8, 3), np.uint8), "test"), Verdict(1, 1.0, 0.1, 0.5, False, 1.0, "t"))
        assert rec.flush()
        stats = rec.stats()
    assert target.read_text() == VICTIM_TEXT
    assert stats["rows_failed"] == 1 and stats["write_errors"] == 1 and stats["logged"] == 0, stats


def test_a_rotating_log_never_writes_or_cuts_through_a_link(tmp_path):
    """A link in a log's place: the write raises OSError (the recorder counts it) saying what to do; the linked
    file, with a torn last line that the log would cut off a file of its own, is neither appended to nor cut."""
    target = victim(tmp_path)
    target.write_text(VICTIM_TEXT + "no newline")
    (tmp_path / "verdicts.jsonl").symlink_to(target)
    log = RotatingJsonl(tmp_path / "verdicts.jsonl", 1 << 20, 2)
    with pytest.raises(OSError, match="remove the link"):
        log.write({"seq": 1})
    log.close()
    assert target.read_text() == VICTIM_TEXT + "no newline"


def test_a_fifo_in_a_logs_place_fails_its_write_at_once(tmp_path):
    """A FIFO with no reader made ``open(path, "ab")`` wait forever: the recorder's writer thread hung. It opens at
    once now and is refused as no regular file."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this OS")
    fifo = tmp_path / "gate.jsonl"
    os.mkfifo(fifo)
    log = RotatingJsonl(fifo, 1 << 20, 2)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            log.write({"seq": 1})
        except OSError as exc:
            errors.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(timeout=30)   # a bound for a broken build, never reached by a working one
    if writer.is_alive():   # the old code: blocked in open() for a reader; a reader's open lets it go
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=30)
        pytest.fail("writing the log waited on a FIFO in its place")
    assert errors and "expected a regular file for the log, found a FIFO" in str(errors[0]), errors
    log.close()


def test_a_journal_link_fails_the_review_and_writes_nothing_through_it(tmp_path):
    target = victim(tmp_path)
    (tmp_path / "reviews.jsonl").symlink_to(target)
    journal = Journal(tmp_path / "reviews.jsonl")
    with pytest.raises(RecorderError):
        journal.check_writable()
    with pytest.raises(RecorderError):
        journal.append({"run": "20261129T134000Z-3f2a", "seq": 1, "label": "defect"})
    assert target.read_text() == VICTIM_TEXT


def test_the_names_checked_are_all_the_recorder_writes(tmp_path):
    """A recorder that logged a verdict, a gate row and an NG part's images wrote only names of ``RECORD_WRITES``
    (rotations of its logs aside): a new file it writes is added there, so a link in its place is refused too."""
    frame = Frame(1, 1.0, np.full((16, 16, 3), 90, np.uint8), "test")
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="20261129T134000Z-3f2a") as rec:
        rec.record(frame, Verdict(1, 1.0, 0.9, 0.5, True, 1.0, "t"), np.ones((4, 4), np.float32))
        rec.record_gate({"seq": 1, "event": "gate", "t": 1.0, "gate": "rejected_ng"})
        assert rec.flush()
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"verdicts.jsonl", "gate.jsonl", "ng"}, written
    assert written <= set(station_locks.RECORD_WRITES)
    assert set(station_locks.OUTPUT_WRITES + station_locks.RECORD_WRITES) == set(WRITTEN)
    assert all(json.loads(line) for line in (tmp_path / "gate.jsonl").read_text().splitlines())

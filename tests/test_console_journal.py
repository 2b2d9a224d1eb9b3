"""The console's journals (reviews.jsonl, audit.jsonl) on a nearly full disk: Linux writes only what fits and
returns a short count with no error. ``Journal.append`` used to ignore that count and return normally, so an
operator's review or audit row was confirmed while its line was torn (and skipped on reading). Now it writes the
rest, or cuts the file back and raises RecorderError."""

from __future__ import annotations

import errno
import os

import pytest

from fair_edge.console.journal import Journal
from fair_edge.errors import RecorderError


def _script_writes(monkeypatch, journal: Journal, *steps):
    """Replace os.write for the journal's file only: each step is 'half' (write half of what is asked, a short
    count), 'zero' (write nothing, return 0), an OSError (raised) or 'all' (the real write); then real writes."""
    real_write, inode = os.write, journal.path.stat().st_ino
    steps = list(steps)

    def write(fd, data):
        if not steps or os.fstat(fd).st_ino != inode:
            return real_write(fd, data)
        step = steps.pop(0)
        if isinstance(step, OSError):
            raise step
        if step == "zero":
            return 0
        return real_write(fd, data[:len(data) // 2] if step == "half" else data)

    monkeypatch.setattr(os, "write", write)
    return steps


@pytest.mark.parametrize("then", ["zero", OSError(errno.ENOSPC, "No space left on device")])
def test_a_short_write_on_a_full_disk_raises_and_leaves_the_file_as_it_was(tmp_path, monkeypatch, then):
    journal = Journal(tmp_path / "audit.jsonl")
    journal.append({"action": "review", "seq": 1})
    before = journal.path.read_bytes()
    left = _script_writes(monkeypatch, journal, "half", then)
    with pytest.raises(RecorderError, match=r"audit\.jsonl: wrote \d+ of \d+ bytes .* MB free on the disk of .*cut back "
                                            rf"to its {len(before)} bytes"):
        journal.append({"action": "threshold", "old": 0.3, "new": 0.35})
    assert left == []   # the rest was tried again before giving up
    assert journal.path.read_bytes() == before
    assert [e["seq"] for e in journal.read()] == [1] and journal.torn_lines == 0


def test_a_short_write_followed_by_the_rest_records_one_whole_line(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "reviews.jsonl")
    journal.append({"seq": 1, "label": "defect"})
    left = _script_writes(monkeypatch, journal, "half", "half", "all")
    entry = journal.append({"seq": 2, "label": "miss"})
    assert left == []
    assert journal.read() == [journal.read()[0], entry] and journal.torn_lines == 0
    assert journal.path.read_bytes().count(b"\n") == 2

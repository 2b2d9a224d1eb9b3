"""Rows never wait behind NG image writes: a slow ng/ disk (one image write a second) held every verdicts.jsonl and
gate.jsonl row queued behind the NG parts before it, for minutes. The image writer is held here by an event (the
disk check of its first NG image), never by a sleep."""

from __future__ import annotations

import json
import time

import numpy as np

from fair_edge.records import Frame, Verdict

from conftest import held_recorder


def _ng(seq: int) -> tuple[Frame, Verdict, np.ndarray]:
    return (Frame(seq, 1.0, np.full((8, 8, 3), 80, np.uint8), "t"), Verdict(seq, 1.0, 0.9, 0.5, True, 1.01, "t"),
            np.ones((4, 4), np.float32))


def _wait_rows(rec, logged: int, gate_logged: int, timeout_s: float = 10.0) -> dict:
    """The recorder's counters once it has logged this many rows, or after ``timeout_s`` (the assert names them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = rec.stats()
        if stats["logged"] >= logged and stats["gate_logged"] >= gate_logged:
            return stats
        time.sleep(0.005)
    return rec.stats()


def test_rows_reach_the_logs_while_the_image_writer_is_held(tmp_path):
    rec, disk = held_recorder(tmp_path)   # NG part 0 logged; its images held in the disk check until release
    try:
        for seq in (1, 2, 3):
            assert rec.record(*_ng(seq))                                          # NG: row + images
        for seq in (4, 5):
            assert rec.record(None, Verdict(seq, 1.0, 0.1, 0.5, False, 1.01, "t"))   # OK: a row only
        for seq in range(6):
            assert rec.record_gate({"seq": seq, "event": "gate", "t": 1.4, "gate": "passed", "verdict": "ok"})
        stats = _wait_rows(rec, logged=6, gate_logged=6)
        assert (stats["logged"], stats["gate_logged"]) == (6, 6), f"rows waited behind the held NG image: {stats}"
        assert not disk.release.is_set() and stats["images"] == 0   # the image writer is still held in part 0
        verdicts = [json.loads(x)["seq"] for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
        gates = [json.loads(x)["seq"] for x in (tmp_path / "gate.jsonl").read_text().splitlines()]
        assert verdicts == list(range(6)) and gates == list(range(6))
    finally:
        disk.release.set()
        rec.close()
    stats = rec.stats()
    assert stats["images"] == 4 and stats["images_skipped"] == 0 and stats["pending"] == 0
    assert stats["queued"] == 12 == stats["logged"] + stats["gate_logged"]
    saved = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "ng").iterdir())
    assert saved == [f"{seq:08d}_{kind}.png" for seq in range(4) for kind in ("frame", "overlay")]   # each once


def test_stop_images_while_the_image_writer_is_held_skips_the_queued_images_and_every_row_is_logged(tmp_path):
    """The end of a run with NG images unsaved (finish_line): the images still queued are skipped (counted), the one
    being saved is finished, and the rows were never held by either."""
    rec, disk = held_recorder(tmp_path)
    try:
        for seq in (1, 2):
            assert rec.record(*_ng(seq))
        rec.stop_images("the run ended with NG images unsaved")
        assert rec.record(*_ng(3))                        # after stop_images: logged, its images skipped at once
        stats = _wait_rows(rec, logged=4, gate_logged=0)
        assert stats["logged"] == 4 and stats["images_skipped"] == 1, stats
    finally:
        disk.release.set()
        rec.close()
    stats = rec.stats()
    assert (stats["images"], stats["images_skipped"], stats["logged"], stats["pending"]) == (1, 3, 4, 0)

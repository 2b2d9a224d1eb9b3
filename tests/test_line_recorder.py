"""Recorder: JSONL log with rotation, NG images with overlays, disk guard, drop policy."""

from __future__ import annotations

import json
import threading
from collections import namedtuple

import cv2
import numpy as np
import pytest

from fair_edge.plots import colour_bar, heatmap_overlay
from fair_edge.line.recorder import Recorder, dropped_row
from fair_edge.line.settings import RecordSettings
from fair_edge.errors import DataError, RecorderError
from fair_edge.records import Frame, Verdict

from conftest import held_recorder

Usage = namedtuple("Usage", "total used free")


def _frame(seq, h=48, w=64):
    img = np.full((h, w, 3), 80, np.uint8)
    return Frame(seq, 1.0, img, "test")


def _verdict(seq, ng):
    return Verdict(seq, 1.0, 0.9 if ng else 0.1, 0.5, ng, 1.01, "test")


def _amap():
    m = np.zeros((12, 16), np.float32)
    m[3:6, 4:8] = 1.0
    return m


def test_logs_every_verdict_and_saves_ng_overlays(tmp_path):
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R1") as rec:
        for i in range(6):
            assert rec.record(_frame(i), _verdict(i, ng=i in (2, 5)), _amap())
        assert rec.flush()
        stats = rec.stats()
    lines = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(6))
    assert lines[2] == {"run_id": "R1", "time_utc": rec.clock.iso(1.0), **_verdict(2, True).to_json_dict()}
    saved = sorted(p.name for p in (tmp_path / "ng").iterdir())
    assert saved == ["R1_00000002_frame.png", "R1_00000002_overlay.png",
                     "R1_00000005_frame.png", "R1_00000005_overlay.png"]
    overlay = cv2.imread(str(tmp_path / "ng" / "R1_00000002_overlay.png"))
    other = cv2.imread(str(tmp_path / "ng" / "R1_00000005_overlay.png"))
    strip = overlay.shape[0] - 48
    assert strip > 20 and overlay.shape[1] > 64  # text above, colour scale beside the 48 x 64 frame
    expected = heatmap_overlay(_frame(2).image, _amap(), 0.0, 1.0, alpha=0.5)  # scale 0 .. 2 x threshold 0.5
    assert np.array_equal(overlay[strip:, :64], expected)
    assert (overlay[:strip] < 100).any()  # written text
    assert not np.array_equal(overlay[:strip], other[:strip])  # it names the part (seq differs)
    assert np.array_equal(overlay[strip:], other[strip:])  # same frame, same map, same picture
    assert stats["images"] == 2 and stats["logged"] == 6 and stats["write_errors"] == 0


def test_an_ng_overlay_of_a_map_over_part_of_the_frame_keeps_the_frame_around_it(tmp_path):
    """A tiled model's map placed on the frame (NaN where no tile reached): the NG overlay blends the heat map
    inside, leaves the frame as captured outside, and writes without an error."""
    amap = np.full((12, 16), np.nan, np.float32)
    amap[:, 8:] = _amap()[:, 8:]
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R1") as rec:
        assert rec.record(_frame(0), _verdict(0, ng=True), amap)
        assert rec.flush()
        stats = rec.stats()
    overlay = cv2.imread(str(tmp_path / "ng" / "R1_00000000_overlay.png"))
    frame = overlay[overlay.shape[0] - 48 :, :64]
    assert np.array_equal(frame[:, :30], _frame(0).image[:, :30]) and not np.array_equal(frame[:, 34:], _frame(0).image[:, 34:])
    assert stats["images"] == 1 and stats["write_errors"] == 0


def test_overlay_is_hot_where_the_map_is_high():
    img = np.full((40, 40, 3), 100, np.uint8)
    amap = np.zeros((10, 10), np.float32)
    amap[0:3, 0:3] = 5.0
    out = heatmap_overlay(img, amap, 0.0, 5.0, alpha=0.6)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert out[2, 2, 2] > out[35, 35, 2]          # red channel: hot corner vs cold corner
    with pytest.raises(DataError, match="must be"):
        heatmap_overlay(np.zeros((4, 4, 4), np.uint8), amap, 0.0, 5.0)


def test_log_rotation_keeps_n_files(tmp_path):
    settings = RecordSettings(dir=tmp_path, max_log_mb=0.002, keep_files=2, min_free_mb=0,
                              save_ng_images=False, queue_size=256)
    with Recorder(settings) as rec:
        for i in range(200):
            rec.record(None, _verdict(i, False))
        assert rec.flush()
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert names == ["verdicts.jsonl", "verdicts.jsonl.1", "verdicts.jsonl.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 0.002 * 1024 * 1024
    seqs = [json.loads(x)["seq"] for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert seqs[-1] == 199


def test_disk_guard_stops_images_keeps_log_and_resumes(tmp_path, caplog):
    free = {"mb": 10}
    usage = lambda _p: Usage(10**12, 0, free["mb"] * 1024 * 1024)  # noqa: E731
    settings = RecordSettings(dir=tmp_path, min_free_mb=100)
    with Recorder(settings, disk_usage=usage, disk_check_s=0.0) as rec:
        for i in range(3):
            rec.record(_frame(i), _verdict(i, True), _amap())
        rec.flush()
        free["mb"] = 1000
        rec.record(_frame(3), _verdict(3, True), _amap())
        rec.flush()
        stats = rec.stats()
    assert stats["images_skipped"] == 3 and stats["images"] == 1 and stats["logged"] == 4
    assert sum("no longer saved" in r.message for r in caplog.records) == 1


def test_oserror_is_counted_not_raised(tmp_path):
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0)) as rec:
        (tmp_path / "ng").rmdir()
        (tmp_path / "ng").write_text("not a folder")   # image writes now fail
        rec.record(_frame(1), _verdict(1, True), _amap())
        rec.record(_frame(2), _verdict(2, True), _amap())
        assert rec.flush()
        stats = rec.stats()
    assert stats["write_errors"] == 2 and stats["logged"] == 2


def test_a_full_image_queue_logs_the_ng_part_without_its_images_and_never_blocks(tmp_path):
    """A disk too slow for the NG rate: past queue_size NG images waiting, the part's row is still logged (it was
    dropped with its images, so an NG part went missing from verdicts.jsonl); only its images are skipped."""
    gate = threading.Event()

    def slow_usage(_p):
        gate.wait(5)
        return Usage(10**12, 0, 10**12)

    with Recorder(RecordSettings(dir=tmp_path, queue_size=2, min_free_mb=1),
                  disk_usage=slow_usage) as rec:
        results = [rec.record(_frame(i), _verdict(i, True), _amap()) for i in range(6)]
        gate.set()
        rec.flush()
        stats = rec.stats()
    rows = [json.loads(x)["seq"] for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert all(results) and rows == list(range(6)) and stats["dropped"] == 0
    assert stats["images_skipped"] >= 3 and stats["images"] + stats["images_skipped"] == 6


def test_unwritable_dir_is_a_recorder_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecorderError, match="record.dir"):
        Recorder(RecordSettings(dir=blocker / "sub"))


def test_gray_and_malformed_ng_frames_do_not_stop_the_writer(tmp_path):
    settings = RecordSettings(dir=tmp_path, min_free_mb=0)
    gray = Frame(1, 1.0, np.full((48, 64), 90, np.uint8), "test")
    broken = Frame(2, 1.0, np.zeros((48, 64, 5), np.float64), "test")  # a frame the inspector refused
    with Recorder(settings) as rec:
        rec.record(gray, _verdict(1, True), _amap())
        rec.record(broken, _verdict(2, True), _amap())
        rec.record(_frame(3), _verdict(3, True), _amap())
        rec.flush()
        stats = rec.stats()
    assert sorted(p.name for p in (tmp_path / "ng").iterdir())[:2] == [f"{rec.run_id}_00000001_frame.png",
                                                                       f"{rec.run_id}_00000001_overlay.png"]
    assert (tmp_path / "ng" / f"{rec.run_id}_00000003_overlay.png").is_file()
    assert stats["logged"] == 3 and stats["images_failed"] == 1 and stats["write_errors"] == 0   # not the disk


def test_two_runs_into_one_folder_stay_apart_and_dropped_frames_are_logged(tmp_path):
    """seq restarts at 0 in each run: rows carry the run id and UTC time, NG images never overwrite. The two runs
    start in one second with their own run ids (given: two drawn in one second repeat once in 65 536)."""
    settings = RecordSettings(dir=tmp_path, min_free_mb=0)
    given = ["20261207T220000Z-0a01", "20261207T220000Z-0a02"]
    ids = []
    for run_id in given:
        with Recorder(settings, run_id=run_id) as rec:
            rec.record(_frame(0), _verdict(0, True), _amap())
            rec.record_row(dropped_row(_frame(1)))   # what LineSide.on_drop logs
            rec.flush()
            ids.append(rec.run_id)
    rows = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert ids == given and [r["run_id"] for r in rows] == [ids[0], ids[0], ids[1], ids[1]]
    assert [r.get("inspected", True) for r in rows] == [True, False, True, False]
    assert rows[1]["reason"].startswith("dropped") and rows[1]["seq"] == 1
    assert all(r["time_utc"].endswith("Z") and r["time_utc"][:2] == "20" for r in rows)
    assert len(list((tmp_path / "ng").glob("*_frame.png"))) == 2


class FullDisk:
    """A disk with ``room`` bytes left, for the verdict log's file: a write takes what fits and then raises
    ENOSPC (a short write, as a full disk does), and closing a file raises while the disk is full."""

    def __init__(self, room: int) -> None:
        self.room = room

    def open(self, path, mode="r", *args, **kwargs):
        import builtins

        if mode != "ab":
            return builtins.open(path, mode, *args, **kwargs)
        return FullDiskFile(builtins.open(path, "ab", buffering=0), self)


class FullDiskFile:
    def __init__(self, raw, disk: FullDisk) -> None:
        self.raw, self.disk = raw, disk

    def write(self, data: bytes) -> int:
        import errno

        taken = self.raw.write(data[:self.disk.room])
        self.disk.room -= taken
        if taken < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return taken

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        return None

    def close(self) -> None:
        import errno

        self.raw.close()
        if self.disk.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_never_leaves_a_torn_or_glued_row_and_logs_the_failed_close_once(tmp_path, monkeypatch, caplog):
    """A full disk wrote part of a row; after the reopen the next row was glued onto it (an unparseable line),
    and every failed close logged a traceback. Now each failed write is cut back off the file: every line
    parses, ``logged`` counts exactly the rows in the file, and the failed close is logged once."""
    import fair_edge.line.jsonl as jsonl

    disk = FullDisk(room=500)   # a few rows fit, then a row is cut mid-line
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    settings = RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0, queue_size=256)
    with Recorder(settings) as rec:
        for i in range(20):
            rec.record(None, _verdict(i, False))
        assert rec.flush()
        disk.room = 10 ** 9     # the operator frees space
        for i in range(20, 25):
            rec.record(None, _verdict(i, False))
        assert rec.flush()
        stats = rec.stats()
    lines = (tmp_path / "verdicts.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""     # the file ends with a whole line
    rows = [json.loads(line) for line in lines[:-1]]   # every line parses
    seqs = [r["seq"] for r in rows]
    assert stats["write_errors"] >= 15 and stats["logged"] == len(rows) == stats["queued"] - stats["write_errors"]
    assert seqs == sorted(seqs) and seqs[-5:] == [20, 21, 22, 23, 24] and 0 < len(seqs) < 25
    closes = [r for r in caplog.records if "closing" in r.getMessage() and r.levelname == "WARNING"]
    assert len(closes) == 1 and closes[0].exc_info is None


def test_a_log_found_ending_mid_line_is_cut_back_to_its_last_whole_row(tmp_path):
    """A torn last line left by a crash (or a cut that failed) is never glued onto: it is cut off at reopen."""
    from fair_edge.line.jsonl import RotatingJsonl

    path = tmp_path / "verdicts.jsonl"
    path.write_bytes(b'{"seq":1}\n{"seq":2,"sco')
    log = RotatingJsonl(path, max_bytes=10 ** 6, keep=1)
    log.write({"seq": 3})
    log.close()
    assert path.read_text().splitlines() == ['{"seq":1}', '{"seq":3}'] and log.torn_cut == 1


def _settled(stats) -> int:
    """Queued rows that ended one way or another (the new counters read as 0 where a recorder lacks them)."""
    return sum(stats.get(k, 0) for k in ("logged", "gate_logged", "rows_failed", "lost_at_close"))


def test_close_writes_every_queued_row_and_skips_only_the_images_past_its_deadline(tmp_path, monkeypatch, caplog):
    """close() waited 5 s for NG images, then threw away what was still queued: verdict rows vanished and no
    counter said so. Now past the image deadline the rest is written rows only (images counted skipped).
    The writer's NG image writes hang until close gives up on images (a slow disk), so the order is fixed."""
    import fair_edge.line.image_writer as image_writer

    real = image_writer.write_whole
    holder = {}

    def slow_write(path, data, *args, **kwargs):
        assert holder["rec"].images_off.wait(10), "close never stopped the images"
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(image_writer, "write_whole", slow_write)
    rec = holder["rec"] = Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, queue_size=64), run_id="R1")
    for i in range(40):
        assert rec.record(_frame(i), _verdict(i, ng=True), _amap())
    rec.close(images_s=0.0)
    stats = rec.stats()
    rows = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(40))
    assert stats["queued"] == stats["logged"] == 40 and stats["pending"] == 0 and stats["lost_at_close"] == 0
    assert stats["images"] <= 1 and stats["images"] + stats["images_skipped"] == 40 and stats["write_errors"] == 0
    assert sum("no longer saved" in r.getMessage() for r in caplog.records) == 1


class HungDisk:
    """The verdict log's file: every write hangs until ``release`` is set (an unplugged NFS share); ``entered`` is
    set once a write hangs there."""

    def __init__(self) -> None:
        self.release, self.entered = threading.Event(), threading.Event()

    def open(self, path, mode="r", *args, **kwargs):
        import builtins

        f = builtins.open(path, mode, *args, **kwargs)
        if mode != "ab":
            return f
        release, entered = self.release, self.entered

        class Hung:
            def write(self, data):
                entered.set()
                release.wait(30)
                return f.write(data)

            def __getattr__(self, name):
                return getattr(f, name)

        return Hung()


def test_a_writer_hung_at_close_counts_every_unwritten_row_and_close_returns(tmp_path, monkeypatch, caplog):
    """Only a writer stuck past close's row deadline leaves rows unwritten: each is counted lost_at_close
    (the counters add up, pending 0) and logged as an error; close does not wait for the disk; a row handed in
    after close is counted too. The hang lasts until the test releases it, so nothing depends on timing."""
    import fair_edge.line.jsonl as jsonl

    disk = HungDisk()
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    rec = Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, save_ng_images=False))
    try:
        for i in range(5):
            assert rec.record(None, _verdict(i, ng=False))
        rec.close(images_s=0.0, rows_s=0.05)
        stats = rec.stats()
        assert stats["queued"] == 5 and stats["lost_at_close"] == 5 and stats["logged"] == 0 and stats["pending"] == 0
        assert any(r.levelname == "ERROR" and "lost_at_close" in r.getMessage() for r in caplog.records)
        assert not rec.record(None, _verdict(5, ng=False))           # after close: counted, never queued for nobody
        after = rec.stats()
        assert after["queued"] == 6 and after["lost_at_close"] == 6 and after["pending"] == 0
    finally:
        disk.release.set()
        rec._thread.join(10)
    assert not rec._thread.is_alive() and rec.stats()["pending"] == 0   # the late write changed no counter


def test_gate_rows_are_counted_so_queued_adds_up(tmp_path):
    """gate.jsonl rows counted queued but never logged: summary.json showed rows missing with no error."""
    with Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0)) as rec:
        for seq in range(5):
            rec.record(None, _verdict(seq, ng=False))
            rec.record_gate({"seq": seq, "event": "gate", "t": 1.4, "gate": "passed", "verdict": "ok"})
        assert rec.flush()
        stats = rec.stats()
    assert len((tmp_path / "gate.jsonl").read_text().splitlines()) == 5
    assert stats["queued"] == 10 == _settled(stats) and stats.get("gate_logged") == 5 and stats["logged"] == 5


def test_a_malformed_row_is_counted_and_never_stops_the_writer(tmp_path, caplog):
    """A row the log cannot take (no t_capture) killed the writer thread: every later row was lost silently."""
    with Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0)) as rec:
        rec.record_row({"seq": 1, "part": "no capture time"})
        rec.record(None, _verdict(2, ng=False))
        assert rec.flush(timeout=10)
        stats = rec.stats()
    rows = [json.loads(x) for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in rows] == [2]
    assert stats["queued"] == 2 == _settled(stats) and stats.get("rows_failed") == 1 and stats["write_errors"] == 1
    assert any(r.levelname == "ERROR" and "t_capture" in r.getMessage() for r in caplog.records)


def test_the_run_summary_gets_the_recorder_counters_from_after_its_close(tmp_path):
    """finish_line copied the counters before the recorder closed: rows written later (parts the gate abandons
    at its close, the rest of the queue) were in verdicts.jsonl / gate.jsonl but not in summary.json."""
    from fair_edge.station.config import StationConfig
    from fair_edge.station.inspector import RunSummary
    from fair_edge.station.line_side import LineSide, finish_line

    summary = RunSummary()
    with Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0)) as rec:
        rec.record(None, _verdict(0, ng=False))
        finish_line(StationConfig(), LineSide(rec, None, None, None, []), summary, "")
        assert summary.recorder["logged"] == 1                        # now: for the MQTT summary
        rec.record_gate({"seq": 0, "event": "gate", "t": 1.4, "gate": "abandoned", "verdict": "none"})
        rec.record(None, _verdict(1, ng=False))
    final = summary.recorder
    assert final["logged"] == 2 and final.get("gate_logged") == 1 and final["queued"] == 3 == _settled(final)


def test_the_metrics_endpoint_shows_the_recorder_counters_and_pending(tmp_path):
    """metrics.watch("recorder", recorder.stats): every counter a fair_edge_recorder_total event, pending a gauge."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from fair_edge.line.metrics import Metrics

    metrics = Metrics()
    with Recorder(RecordSettings(dir=tmp_path, save_ng_images=False, min_free_mb=0)) as rec:
        metrics.watch("recorder", rec.stats)
        rec.record(None, _verdict(0, ng=False))
        rec.record_gate({"seq": 0, "event": "gate", "t": 1.4, "gate": "passed", "verdict": "ok"})
        assert rec.flush()
        text = generate_latest(metrics.registry).decode()
    assert 'fair_edge_recorder_total{event="gate_logged"} 1.0' in text
    assert 'fair_edge_recorder_total{event="logged"} 1.0' in text
    assert 'fair_edge_recorder_total{event="queued"} 2.0' in text
    assert "fair_edge_recorder_pending 0.0" in text


def _gate_row(seq):
    return {"seq": seq, "event": "gate", "t": 1.0 + seq, "gate": "abandoned", "verdict": "none"}


def test_a_burst_of_gate_rows_is_never_dropped_nor_a_verdict_beside_it(tmp_path, caplog):
    """A run ending with 300 parts on the belt tells 300 gate rows at once: the queue held 64 items of any kind, so
    236 gate rows (and the verdict rows coming in beside them) were dropped, with a warning blaming the disk.
    Rows now only count against the row bound: all are written, none dropped, no warning."""
    rec, disk = held_recorder(tmp_path)
    assert all(rec.record_gate(_gate_row(seq)) for seq in range(1, 301))
    assert all(rec.record(None, _verdict(seq, ng=False)) for seq in range(301, 311))
    assert rec.record(_frame(311), _verdict(311, True), _amap())       # an NG part's images too (1 of 64)
    disk.release.set()
    rec.close()
    stats = rec.stats()
    gate = [json.loads(x) for x in (tmp_path / "gate.jsonl").read_text().splitlines()]
    verdicts = [json.loads(x)["seq"] for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in gate] == list(range(1, 301)) and all(r["gate"] == "abandoned" for r in gate)
    assert verdicts == [0, *range(301, 312)] and stats["images"] == 2
    assert stats["dropped"] == 0 and stats["gate_logged"] == 300 and stats["logged"] == 12
    assert stats["queued"] == 312 == _settled(stats) and stats["pending"] == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "queue" in r.getMessage()]


def test_a_slow_disk_skips_ng_images_past_queue_size_while_every_row_goes_on(tmp_path, caplog):
    """A disk too slow for the NG rate never blocks the loop: past record.queue_size NG images waiting, an NG
    part is logged without its images (images_skipped), warned once naming the images; rows without images (OK
    verdicts, gate rows) still queue and are written (they were dropped with the images)."""
    rec, disk = held_recorder(tmp_path, queue_size=2)
    ng = [rec.record(_frame(seq), _verdict(seq, True), _amap()) for seq in range(1, 5)]
    ok = [rec.record(None, _verdict(seq, ng=False)) for seq in range(5, 10)]
    gate = [rec.record_gate(_gate_row(seq)) for seq in range(1, 5)]
    disk.release.set()
    rec.close()
    stats = rec.stats()
    assert all(ng) and all(ok) and all(gate)
    verdicts = [json.loads(x)["seq"] for x in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    assert verdicts == list(range(10)) and stats["dropped"] == 0 and stats["gate_logged"] == 4
    assert stats["queued"] == 14 == _settled(stats) and stats["images"] == 3 and stats["images_skipped"] == 2
    warned = [r.getMessage() for r in caplog.records if "without their images" in r.getMessage()]
    assert len(warned) == 1 and "2 NG images waiting" in warned[0] and "record.queue_size" in warned[0]


@pytest.mark.parametrize("stuck", [False, True])
def test_rows_past_the_row_limit_are_dropped_and_the_warning_blames_the_disk_only_when_the_writer_is_stuck(
        tmp_path, caplog, monkeypatch, stuck):
    """Past ``row_limit`` rows waiting, the newest row is dropped and counted. The one warning said "the disk is
    too slow" whatever the cause; now it names the disk only when the writer has written nothing for
    WRITER_STUCK_S (monkeypatched to 0 / far away: the time it checks is the test's choice, not luck). The row
    writer is held in its first row by the log's disk (an NG image no longer holds rows: they queue apart)."""
    import fair_edge.line.jsonl as jsonl
    import fair_edge.line.recorder as recmod

    monkeypatch.setattr(recmod, "WRITER_STUCK_S", 0.0 if stuck else 1e9)
    disk = HungDisk()
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    rec = Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, queue_size=2), row_limit=10)
    assert rec.record(None, _verdict(0, ng=False)) and disk.entered.wait(10), "the row writer never took row 0"
    taken = [rec.record_gate(_gate_row(seq)) for seq in range(1, 16)]
    disk.release.set()
    rec.close()
    stats = rec.stats()
    assert taken == [True] * 10 + [False] * 5 and stats["dropped"] == 5 and stats["gate_logged"] == 10
    assert stats["queued"] == 11 == _settled(stats)
    warned = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert len(warned) == 1 and "10 rows waiting" in warned[0]
    assert ("disk under" in warned[0]) is stuck and ("burst" in warned[0]) is not stuck


@pytest.mark.parametrize("score, marked", [(1.0, True), (0.6, False)])
def test_an_ng_overlay_marks_the_threshold_on_the_map_scale_only_when_the_score_is_the_map_maximum(tmp_path, score,
                                                                                                   marked):
    """A re-weighted PatchCore score (0.6 x the map max 1.0) against threshold 0.5: a mark at 0.5 on the map's
    colour scale would show map pixels "above the threshold" in parts judged OK; the overlay names the map max."""
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R1") as rec:
        assert rec.record(_frame(0), Verdict(0, 1.0, score, 0.5, True, 1.01, "test"), _amap())
        assert rec.flush()
    overlay = cv2.imread(str(tmp_path / "ng" / "R1_00000000_overlay.png"))
    bar = overlay[overlay.shape[0] - 48:, 64:]
    assert np.array_equal(bar, colour_bar(48, 0.0, 1.0, 0.5 if marked else None))


def test_an_ng_overlay_of_a_frame_whose_source_name_is_not_utf8_is_written(tmp_path):
    """A replayed file with a Latin-1 name (``d\\xe9g\\xe2t.png`` from a Windows share: surrogates in Python) put
    on the NG overlay crashed the station (OpenCV segfault, exit 139, no summary.json). Run in a child process,
    so a crash fails this test only."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from fair_edge.line.recorder import Recorder\n"
        "from fair_edge.line.settings import RecordSettings\n"
        "from fair_edge.records import Frame, Verdict\n"
        "name = 'd\\udce9g\\udce2t.png'\n"
        "amap = np.zeros((12, 16), np.float32); amap[3:6, 4:8] = 1.0\n"
        "with Recorder(RecordSettings(dir=Path(sys.argv[1]), min_free_mb=0), run_id='R1') as rec:\n"
        "    rec.record(Frame(0, 1.0, np.full((48, 64, 3), 80, np.uint8), name), "
        "Verdict(0, 1.0, 0.9, 0.5, True, 1.01, name), amap)\n"
        "    assert rec.flush()\n"
        "    print(rec.stats()['images'], rec.stats()['write_errors'])\n"
    )
    child = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert child.stdout.split() == ["1", "0"]
    overlay = cv2.imread(str(tmp_path / "ng" / "R1_00000000_overlay.png"))
    assert overlay is not None and overlay.shape[0] > 48


def test_time_utc_follows_a_step_of_the_wall_clock_after_the_recorder_started(tmp_path, monkeypatch, caplog):
    """A Jetson without a clock battery starts the station at its last shutdown time; NTP then steps the clock
    forward by days. ``time_utc`` must name the real moment from then on (as ``audit.jsonl`` does), not stay
    off by the step for the rest of the run; a slew under a second leaves the held offset alone."""
    import time as time_mod
    from datetime import datetime, timezone

    real_time = time_mod.time
    behind_s = [3 * 86400.0]
    monkeypatch.setattr(time_mod, "time", lambda: real_time() - behind_s[0])
    rec = Recorder(RecordSettings(dir=tmp_path, save_ng_images=False))
    try:
        before = datetime.fromisoformat(rec.clock.iso(time_mod.monotonic()).replace("Z", "+00:00"))
        assert (datetime.now(timezone.utc) - before).total_seconds() == pytest.approx(3 * 86400, abs=5)
        behind_s[0] = 0.0                                   # NTP steps the clock to the true time
        with caplog.at_level("WARNING"):
            stamp = rec.clock.iso(time_mod.monotonic())
        after = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((datetime.now(timezone.utc) - after).total_seconds()) < 5, stamp
        assert "wall clock stepped by +259200" in caplog.text
        offset = rec.clock.offset_s
        behind_s[0] = 0.3                                   # a slew under a second: the held offset stays
        rec.clock.iso(time_mod.monotonic())
        assert rec.clock.offset_s == offset
    finally:
        rec.close()


def test_the_end_of_run_warning_counts_only_the_ng_images_it_skips(tmp_path, caplog):
    """stop_images while the writer saves NG part 0's images (held inside them by the disk check) and part 1
    waits: the warning counted every item not yet done (2), part 0 included, whose images were then saved (both
    files, counted images). Now it counts the images it skips (1, = images_skipped) and says part 0 is finished."""
    import re

    rec, disk = held_recorder(tmp_path)
    assert rec.record(_frame(1), _verdict(1, True), _amap())
    with caplog.at_level("WARNING"):
        rec.stop_images("the run ended with NG images unsaved")
    disk.release.set()
    rec.close()
    stats = rec.stats()
    (warned,) = [r.getMessage() for r in caplog.records if "no longer saved" in r.getMessage()]
    assert (stats["images"], stats["images_skipped"]) == (1, 1)
    assert re.findall(r"\d+", warned) == ["1"] and "being saved now is finished" in warned, warned
    saved = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "ng").iterdir())
    assert saved == ["00000000_frame.png", "00000000_overlay.png"], saved


class SlowImages:
    """A fake clock (seconds) moved by the NG image stages the recorder times: drawing an overlay takes
    ``draw_s`` and each image write (encode + write) ``write_s``; the overlay of part ``hold_seq`` waits inside
    until ``release`` is set (the writer held mid-part, by an event)."""

    def __init__(self, draw_s: float, write_s: float, hold_seq: int) -> None:
        self.now, self.draw_s, self.write_s, self.hold_seq = 100.0, draw_s, write_s, hold_seq
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self) -> float:
        return self.now

    def overlay(self, image, amap, verdict):
        self.now += self.draw_s
        if verdict.seq == self.hold_seq:
            self.entered.set()
            assert self.release.wait(30), "the test never released the writer"
        return image

    def write(self, real):
        """``real`` (the recorder's file writer, ``disk.write_whole``) taking ``write_s`` on the fake clock."""
        def write(path, data, *args, **kwargs):
            self.now += self.write_s
            return real(path, data, *args, **kwargs)
        return write


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_full_image_queue_says_how_long_an_ng_part_takes_to_save_not_that_the_disk_is_slow(tmp_path, monkeypatch,
                                                                                            caplog, fmt):
    """With 20 MP frames the PNG encoder (not the disk) falls behind, yet the warning said "the disk under DIR is
    too slow". Now it gives the seconds an NG part's images took (fake clock: 0.7 s drawing, 2 x 0.6 s encoding and
    writing), the rate they keep up with, and the fix: jpg when the format is png; no disk is named then."""
    import fair_edge.line.image_writer as image_writer

    slow = SlowImages(draw_s=0.7, write_s=0.6, hold_seq=1)
    monkeypatch.setattr(image_writer, "write_whole", slow.write(image_writer.write_whole))
    rec = Recorder(RecordSettings(dir=tmp_path, min_free_mb=0, queue_size=2, image_format=fmt), timer=slow)
    rec._images._overlay = slow.overlay
    try:
        assert rec.record(_frame(0), _verdict(0, True), _amap()) and rec.flush(30)   # timed: 1.90 s
        assert rec.record(_frame(1), _verdict(1, True), _amap()) and slow.entered.wait(30)
        with caplog.at_level("WARNING"):
            for seq in (2, 3, 4):   # 2 and 3 wait (record.queue_size 2); 4 is logged without its images
                assert rec.record(_frame(seq), _verdict(seq, True), _amap())
    finally:
        slow.release.set()
        rec.close()
    (warned,) = [r.getMessage() for r in caplog.records if "without their images" in r.getMessage()]
    assert "2 NG images waiting" in warned and "record.queue_size" in warned
    assert (f"take 1.90 s to save here (0.70 s drawing the overlay, 1.20 s encoding {fmt} and writing, mean of 1): "
            "at most 0.53 NG parts a second") in warned, warned
    assert ("record.image_format: jpg" in warned) is (fmt == "png") and "record.save_ng_images: false" in warned
    if fmt == "png":
        assert "disk" not in warned, warned
    assert rec.stats()["images"] == 4 and rec.stats()["images_skipped"] == 1


def test_ng_images_past_record_queue_mb_are_logged_without_their_images(tmp_path, caplog):
    """64 queued 20 MP frames held 3.75 GiB: the image queue is bounded in bytes too (record.queue_mb). With 1 MB
    and frames of 0.75 MB, the writer held in part 0: part 1 waits (none was waiting: always taken), parts 2 and 3
    would pass 1 MB and are logged without their images, warned once naming record.queue_mb."""
    from conftest import StalledDisk

    from fair_edge.errors import ConfigError

    disk = StalledDisk()
    rec = Recorder(RecordSettings(dir=tmp_path, min_free_mb=1, queue_mb=1), disk_usage=disk)
    try:
        assert rec.record(_frame(0, 512, 512), _verdict(0, True), _amap()) and disk.entered.wait(30)
        for seq in (1, 2, 3):
            assert rec.record(_frame(seq, 512, 512), _verdict(seq, True), _amap())
        assert rec.stats()["images_skipped"] == 2
    finally:
        disk.release.set()
        rec.close()
    stats = rec.stats()
    assert (stats["images"], stats["images_skipped"], stats["logged"]) == (2, 2, 4)
    warned = [r.getMessage() for r in caplog.records if "without their images" in r.getMessage()]
    assert len(warned) == 1 and "NG images of 1 MB waiting to be saved (record.queue_mb: 1)" in warned[0], warned
    assert RecordSettings.from_dict({"queue_mb": 512}).queue_mb == 512.0 and RecordSettings().queue_mb == 1024.0
    with pytest.raises(ConfigError, match=r"record\.queue_mb: expected a number >= 1, found 0"):
        RecordSettings.from_dict({"queue_mb": 0})

"""Gray frames shaped (H, W, 1), as a mono camera driver may hand them: ``preprocess.check_frame`` accepts them, so
the station inspects them; the recorder's NG images, the console's overlay and ``collect``'s quality checks must
take them too (each converted only (H, W) gray, so six NG mono parts gave "NG images 0 saved, 6 write errors" and an
empty ng/ folder). A frame the overlay refuses is counted ``images_failed``, never a disk ``write_errors``."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from fair_edge.cli.run import recorder_rows
from fair_edge.console.render import overlay_jpeg
from fair_edge.line.recorder import Recorder
from fair_edge.line.settings import RecordSettings
from fair_edge.preprocess import check_frame
from fair_edge.records import Frame, Verdict
from fair_edge.training.collect import Collector, QualitySettings, frame_problem


def _mono(h: int = 48, w: int = 64) -> np.ndarray:
    """(h, w, 1) uint8: a sharp gray pattern, mid exposure."""
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, (h, w, 1)).astype(np.uint8)


def _amap() -> np.ndarray:
    m = np.zeros((12, 16), np.float32)
    m[3:6, 4:8] = 1.0
    return m


def _ng(seq: int) -> Verdict:
    return Verdict(seq, 1.0, 0.9, 0.5, True, 1.01, "test")


def test_gray_2d_drops_a_channel_of_one_as_a_view_and_leaves_other_frames_alone():
    from fair_edge.images import gray_2d

    mono = _mono()
    flat = gray_2d(mono)
    assert flat.shape == (48, 64) and np.shares_memory(flat, mono) and np.array_equal(flat, mono[:, :, 0])
    for other in (mono[:, :, 0], np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 4), np.uint8)):
        assert gray_2d(other) is other
    assert check_frame(mono).shape == (48, 64)   # the inspector's check: the same definition


def test_recorder_saves_ng_images_of_h_w_1_gray_frames(tmp_path):
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R1") as rec:
        for seq in range(3):
            assert rec.record(Frame(seq, 1.0, _mono(), "test"), _ng(seq), _amap())
        assert rec.flush()
        stats = rec.stats()
    assert (stats["images"], stats["write_errors"], stats.get("images_failed")) == (3, 0, 0), stats
    assert len(list((tmp_path / "ng").iterdir())) == 6
    frame = cv2.imread(str(tmp_path / "ng" / "R1_00000000_frame.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(frame, _mono()[:, :, 0])
    with Recorder(RecordSettings(dir=tmp_path / "flat", min_free_mb=0), run_id="R1") as rec:   # same pixels as (H, W)
        rec.record(Frame(0, 1.0, _mono()[:, :, 0], "test"), _ng(0), _amap())
        assert rec.flush()
    overlay = cv2.imread(str(tmp_path / "ng" / "R1_00000000_overlay.png"))
    assert np.array_equal(overlay, cv2.imread(str(tmp_path / "flat" / "ng" / "R1_00000000_overlay.png")))


def test_an_ng_frame_the_overlay_refuses_is_images_failed_not_a_write_error(tmp_path, caplog):
    broken = Frame(1, 1.0, np.zeros((48, 64, 5), np.float64), "test")   # a frame the inspector refused
    with caplog.at_level(logging.WARNING, logger="fair_edge.line.recorder"):
        with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0)) as rec:
            rec.record(broken, _ng(1), _amap())
            assert rec.flush()
            stats = rec.stats()
    assert (stats["images"], stats["write_errors"], stats.get("images_failed"), stats["logged"]) == (0, 0, 1, 1), stats
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "NG image seq 1 not saved" in said and "(48, 64, 5) float64" in said and "could not be drawn" in said
    assert "saving NG image failed" not in said   # the disk's message


def test_the_summary_says_ng_images_not_drawn_apart_from_write_errors():
    recorder = {"queued": 6, "logged": 6, "rows_failed": 0, "images": 0, "images_skipped": 0, "images_failed": 6,
                "write_errors": 0}
    assert dict(recorder_rows(recorder))["NG images"] == \
        "0 saved, 0 skipped, 0 write errors, 6 not drawn (frame or map refused)"
    recorder.update(images=2, images_failed=0, write_errors=3, rows_failed=1)
    assert dict(recorder_rows(recorder))["NG images"] == "2 saved, 0 skipped, 2 write errors"


def test_console_overlay_of_an_h_w_1_gray_frame_is_that_of_its_h_w_view():
    mono = _mono()
    assert overlay_jpeg(mono, _amap(), 0.5) == overlay_jpeg(mono[:, :, 0], _amap(), 0.5)
    assert overlay_jpeg(mono, None, 0.5) == overlay_jpeg(mono[:, :, 0], None, 0.5)


def test_collect_checks_and_saves_h_w_1_gray_frames(tmp_path):
    q = QualitySettings()
    mono, dark = _mono(), np.full((48, 64, 1), 5, np.uint8)
    assert frame_problem(mono, q) == frame_problem(mono[:, :, 0], q) == ""
    assert frame_problem(dark, q) == "badly_exposed"
    collector = Collector(tmp_path)
    assert collector.add(mono, "a") == "saved" and collector.add(mono.copy(), "b") == "duplicate"
    assert np.array_equal(cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED), mono[:, :, 0])

"""Folder and video replay sources: order, rate, loop, unreadable files, auto-detection."""

from __future__ import annotations

import logging
import struct
import time

import cv2
import numpy as np
import pytest

from fair_edge.cameras import EndOfStream, FolderReplaySource, VideoReplaySource, open_source
from fair_edge.errors import CameraError


def _write_images(folder, names):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((12, 16, 3), 10 * i, np.uint8))
    return folder


def _write_video(path, n=6, fps=50.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 24))
    assert writer.isOpened(), "this OpenCV cannot write MJPG/avi"
    for i in range(n):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    return path


def _read_all(source, limit=100):
    frames = []
    with pytest.raises(EndOfStream):
        for _ in range(limit):
            frames.append(source.read())
    return frames


def test_folder_replays_sorted_by_name_with_file_name_as_source(tmp_path):
    folder = _write_images(tmp_path / "imgs", ["c.png", "a.png", "b.jpg"])
    (folder / "notes.txt").write_text("not an image, not listed")
    with FolderReplaySource(folder) as src:
        frames = _read_all(src)
    assert [f.source for f in frames] == ["a.png", "b.jpg", "c.png"]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert all(f.image.shape == (12, 16, 3) and f.image.dtype == np.uint8 for f in frames)
    assert not frames[0].image.flags.writeable
    assert all(b.t_capture >= a.t_capture for a, b in zip(frames, frames[1:], strict=False))


def test_folder_gray_option_gives_2d_frames(tmp_path):
    folder = _write_images(tmp_path / "imgs", ["a.png"])
    with FolderReplaySource(folder, gray=True) as src:
        assert src.read().image.shape == (12, 16)


def test_folder_rate_is_respected(tmp_path):
    folder = _write_images(tmp_path / "imgs", [f"{i}.png" for i in range(5)])
    t0 = time.monotonic()   # before open(): the first slot is there (its image keeps the time it was grabbed)
    with FolderReplaySource(folder, fps=25) as src:
        frames = _read_all(src)
        elapsed = time.monotonic() - t0
    assert len(frames) == 5
    # never faster than 25 frames/s: frame k is taken k periods after the first slot at the earliest (the pacer's
    # schedule only moves later; a loaded machine makes frames late, never early). How late is a benchmark's.
    assert all(f.t_capture - t0 >= k / 25 for k, f in enumerate(frames))
    assert elapsed >= 4 / 25


def test_folder_loop_repeats_in_order_and_seq_keeps_counting(tmp_path):
    folder = _write_images(tmp_path / "imgs", ["a.png", "b.png"])
    with FolderReplaySource(folder, loop=True) as src:
        frames = [src.read() for _ in range(5)]
    assert [f.source for f in frames] == ["a.png", "b.png", "a.png", "b.png", "a.png"]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]


def test_unreadable_image_is_skipped_with_warning_and_counted(tmp_path, caplog):
    folder = _write_images(tmp_path / "imgs", ["a.png", "c.png"])
    (folder / "b.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING), FolderReplaySource(folder) as src:
        frames = _read_all(src)
        assert src.skipped == src.unreadable == 1
    assert [f.source for f in frames] == ["a.png", "c.png"]
    assert [f.seq for f in frames] == [0, 1]
    assert "b.png" in caplog.text


def test_an_unreadable_image_is_counted_in_the_capture_stats_and_the_run_summary(tmp_path):
    """An unpaced replay of 5 files, one corrupt: 4 verdicts and 1 unreadable, in CaptureStats and in the run
    summary (summary.json), so frames_in + unreadable = the files. Before, only a log line said so."""
    import threading

    from fair_edge.cameras import CaptureSettings, CaptureThread
    from fair_edge.station.inspector import Inspector

    class ZeroScorer:
        reason, graph_threshold = "test: zero maps", None

        def infer_frames(self, frames):
            return np.zeros((len(frames), 4, 4), np.float32), np.zeros(len(frames), np.float32)

    folder = _write_images(tmp_path / "imgs", [f"{i}.png" for i in range(5)])
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with CaptureThread(FolderReplaySource(folder), CaptureSettings(full_policy="block")) as capture:
        summary = Inspector(capture, ZeroScorer(), threshold=1.0).run(threading.Event())
    stats = capture.stats()
    assert stats.frames_in == 4 and stats.unreadable == 1
    assert summary.inspected == summary.frames_in == 4 and summary.to_dict()["unreadable"] == 1
    assert summary.frames_in + summary.unreadable == 5


def test_folder_with_no_readable_image_fails_on_open(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    with pytest.raises(CameraError, match=r"holds no images \(looked for \.png, .*\); put the images") as info:
        FolderReplaySource(folder).open()
    assert "suffixes=" not in str(info.value)  # user words, not a library argument
    (folder / "x.png").write_bytes(b"junk")
    with pytest.raises(CameraError, match="none of the 1 images is readable"):
        FolderReplaySource(folder).open()


def test_a_looping_folder_whose_images_all_became_unreadable_is_a_camera_fault(tmp_path):
    """--loop replaying a folder that is then removed: every file fails, which is a camera fault (CameraError,
    reconnect rules), not the end of a replay (EndOfStream, a normal end and exit 0). It names the folder; the
    capture thread reconnects and, with the folder still gone, gives up: the station's "camera gone" fault.
    Without loop the same folder is refused at open as the end it was."""
    import shutil

    from fair_edge.cameras import CaptureSettings, CaptureState, CaptureThread
    from fair_edge.station.camera import camera_fault

    folder = _write_images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    with FolderReplaySource(folder, loop=True) as src:
        assert src.read().source == "a.png"
        shutil.rmtree(folder)
        with pytest.raises(CameraError, match="none of the 3 images is readable") as info:
            src.read()
    assert not isinstance(info.value, EndOfStream) and str(folder) in str(info.value)

    folder = _write_images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    frames = []

    def remove_after_two(frame):   # on the reader thread, before the frame is queued: no race with the reader
        frames.append(frame.source)
        if len(frames) == 2:
            shutil.rmtree(folder)

    settings = CaptureSettings(queue_size=16, full_policy="block", backoff_initial_s=0.0, max_reconnects=2)
    with CaptureThread(FolderReplaySource(folder, loop=True), settings, on_capture=remove_after_two) as capture:
        assert len(list(capture)) == 2    # until the stream ends: the reader gave up
        stats = capture.stats()
    assert stats.state is CaptureState.ENDED and stats.reconnects == 0 and stats.read_errors == 1
    assert stats.end_reason.startswith("gave up after 2 reconnect attempts")
    assert camera_fault(stats).startswith("camera gone: gave up")

    (folder := tmp_path / "junk").mkdir()
    (folder / "x.png").write_bytes(b"junk")
    with pytest.raises(EndOfStream, match="none of the 1 images is readable"):
        FolderReplaySource(folder).open()
    with pytest.raises(CameraError, match="none of the 1 images is readable"):   # looping: refused at open too
        FolderReplaySource(folder, loop=True).open()


def test_video_replay_reads_every_frame_then_ends(tmp_path):
    path = _write_video(tmp_path / "clip.avi", n=6)
    with VideoReplaySource(path, fps=0) as src:
        frames = _read_all(src)
    assert len(frames) == 6
    assert {f.source for f in frames} == {"clip.avi"}
    assert frames[0].image.shape == (24, 32, 3)
    means = [float(f.image.mean()) for f in frames]
    assert means == sorted(means)  # decoded in file order


def test_video_replay_loops_and_uses_file_rate_by_default(tmp_path, monkeypatch):
    import fair_edge.cameras.base as cameras_base

    monkeypatch.setattr(cameras_base, "CATCH_UP_S", 60.0)   # a read a loaded machine makes late skips no slot here
    path = _write_video(tmp_path / "clip.avi", n=3, fps=50.0)
    with VideoReplaySource(path, loop=True) as src:
        assert src.nominal_fps == pytest.approx(50.0)
        frames = [src.read() for _ in range(7)]
    assert [f.seq for f in frames] == list(range(7))
    assert np.diff([f.t_capture for f in frames]).min() > 0.012  # paced at 1/50 s


class _SleepyClock:
    """A fake monotonic clock (s) whose waits take their timeout plus ``oversleep_s[i]`` on the i-th wait (then 0):
    a thread woken late by a loaded machine, made deterministic."""

    def __init__(self, oversleep_s):
        self.t = 100.0
        self.oversleep_s = list(oversleep_s)

    def monotonic(self):
        return self.t

    def wait(self, timeout):
        self.t += timeout + (self.oversleep_s.pop(0) if self.oversleep_s else 0.0)
        return False


def test_pacer_keeps_its_schedule_after_an_oversleep_and_skips_only_stale_slots(monkeypatch):
    """A paced replay is a camera at its rate: slot k at t0 + k / fps whatever the machine does. A wait that wakes
    50 ms late gives its slot, stamped at the slot's time, and the slots it is late for follow at once (a camera's
    buffered frames): stamps never closer than a period (two replayed parts ~0 ms apart were a burst at the gate)
    and never drifting later. A reader 587 ms behind its next slot skips the 5 slots more than CATCH_UP_S old
    (counted) and gives the oldest one that is not. Before,
    each oversleep moved the schedule later for good (a replay fell behind its sibling) and nothing was counted."""
    from fair_edge.cameras import base

    clock = _SleepyClock([0.050, 0.0, 0.007])       # the first wait wakes 50 ms late, the third 7 ms late
    monkeypatch.setattr(base, "time", clock)
    pacer = base.Pacer(50.0)                          # period 20 ms
    monkeypatch.setattr(pacer._wake, "wait", clock.wait)
    slots = [pacer.wait() for _ in range(6)]
    assert [s.t - 100.0 for s in slots] == pytest.approx([0.0, 0.020, 0.040, 0.060, 0.080, 0.100])
    assert [s.missed for s in slots] == [0] * 6
    clock.t += 0.600                                  # now 100.707: slots at or before 100.207 are stale
    late = pacer.wait()
    assert (late.t - 100.0, late.missed) == (pytest.approx(0.220), 5)
    assert pacer.wait().t == pytest.approx(late.t + 0.020)


def _read_paced(source, clock, oversleep_s, n):
    """n frames of a paced replay on the fake clock, from t = 100 s (each replay reads in its own thread: its own
    timeline), its waits oversleeping by ``oversleep_s`` (the i-th wait that sleeps: s)."""
    clock.t, clock.oversleep_s = 100.0, list(oversleep_s)
    return [source.read() for _ in range(n)]


def test_a_starved_replay_keeps_step_with_its_sibling_and_skips_only_stale_slots(tmp_path, monkeypatch):
    """Two folders replayed at one rate (a cell's cameras, ``match: sequence``); the right one's reader wakes 150 ms
    late once, then 720 ms late (a loaded machine). After the first it catches up: each frame has its sibling's
    seq, file and capture time. The second leaves 3 slots more than CATCH_UP_S old: skipped with their files, and
    its seq counts them (a gap: the capture thread counts them lost, and sequence matching leaves those parts
    without a right view). Before, its schedule moved later for good: same seqs and files, capture times 150 ms,
    then 870 ms apart (more than a part's timeout: every part split)."""
    from fair_edge.cameras import base

    clock = _SleepyClock([])
    monkeypatch.setattr(base, "time", clock)
    names = [f"{i}.png" for i in range(16)]
    left = FolderReplaySource(_write_images(tmp_path / "left", names), fps=10)
    right = FolderReplaySource(_write_images(tmp_path / "right", names), fps=10)
    for source in (left, right):
        monkeypatch.setattr(source._pacer._wake, "wait", clock.wait)
    with left, right:   # both opened at t = 100 s: their first slots are one
        left_frames = _read_paced(left, clock, [], 16)
        right_frames = _read_paced(right, clock, [0.0, 0.150, 0.0, 0.720], 12)
    assert [f.seq for f in right_frames] == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14]   # slots 5-7 skipped
    by_seq = {f.seq: f for f in left_frames}
    assert [(f.source, f.t_capture) for f in right_frames] == \
        [(by_seq[f.seq].source, by_seq[f.seq].t_capture) for f in right_frames]
    assert [f.t_capture - 100.0 for f in right_frames] == pytest.approx([0.1 * f.seq for f in right_frames])


def test_a_paced_video_skips_the_frames_of_the_slots_a_late_reader_missed(tmp_path, monkeypatch):
    """A video at 50 frames/s read 0.525 s after its next slot: the slots more than CATCH_UP_S old are skipped with
    their frames (seq 1 -> 4); the frame given is its slot's (the clip's 5th, looping), stamped at its slot."""
    from fair_edge.cameras import base

    clock = _SleepyClock([])
    monkeypatch.setattr(base, "time", clock)
    with VideoReplaySource(_write_video(tmp_path / "clip.avi", n=6), fps=50.0, loop=True) as src:
        monkeypatch.setattr(src._pacer._wake, "wait", clock.wait)
        first, second = src.read(), src.read()
        clock.t += 0.545
        late = src.read()
    assert [f.seq for f in (first, second, late)] == [0, 1, 4]
    assert [f.t_capture - 100.0 for f in (first, second, late)] == pytest.approx([0.0, 0.020, 0.080])
    assert late.image.mean() == pytest.approx(40 * 4, abs=8)                  # the 5th frame of the clip


def test_video_replay_missing_file_raises_camera_error(tmp_path):
    with pytest.raises(CameraError, match="no such video file"):
        VideoReplaySource(tmp_path / "nope.avi").open()


def test_open_source_detects_folder_and_video(tmp_path):
    folder = _write_images(tmp_path / "imgs", ["a.png"])
    video = _write_video(tmp_path / "clip.avi", n=2)
    with open_source(folder) as src:
        assert isinstance(src, FolderReplaySource)
        assert src.read().source == "a.png"
    with open_source(str(video), fps=0, loop=True) as src:
        assert isinstance(src, VideoReplaySource) and src.loop
        assert src.read().source == "clip.avi"


def _jpeg_with_exif_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``image`` carrying an EXIF APP1 segment whose only tag is Orientation (0x0112)."""
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd  # big-endian TIFF, IFD at offset 8
    data = jpeg.tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]  # APP1 after SOI


@pytest.mark.parametrize("gray", [False, True])
def test_folder_replay_ignores_exif_orientation_as_training_does(tmp_path, gray):
    """One orientation policy: a JPEG tagged "rotate 90" (stored 20 x 60) is 20 x 60 in the training reader
    (train, eval, build, rules check), in its mask and in the station's folder replay; OpenCV's own default
    would turn it to 60 x 20 in the replay only."""
    from fair_edge.training.pixels import read_image, read_mask

    folder = tmp_path / "imgs"
    folder.mkdir()
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, :30] = 200  # left half bright: a rotation would move it
    (folder / "rot.jpg").write_bytes(_jpeg_with_exif_orientation(image, 6))
    assert cv2.imread(str(folder / "rot.jpg")).shape == (60, 20, 3)  # the tag is there; OpenCV honours it by default
    with FolderReplaySource(folder, gray=gray) as src:
        frame = src.read().image
    trained = read_image(folder / "rot.jpg")
    assert trained.shape == (20, 60, 3) and frame.shape[:2] == (20, 60)
    expected = cv2.cvtColor(trained, cv2.COLOR_BGR2GRAY) if gray else trained
    assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 2  # same pixels, same place
    (tmp_path / "rot_mask.jpg").write_bytes(_jpeg_with_exif_orientation(image, 6))
    assert read_mask(tmp_path / "rot_mask.jpg", (20, 60))[:, :30].all()


def test_a_16_bit_png_replays_with_the_pixels_training_reads(tmp_path):
    """OpenCV's imread drops a 16-bit PNG to 8 bits by truncation, training's reader by / 257 rounded: 1 LSB apart
    on about a quarter of the pixels. The replay decodes with the training reader: the same pixels, colour and gray."""
    from fair_edge.cameras.replay import FolderReplaySource
    from fair_edge.images import read_image

    rng = np.random.default_rng(3)
    deep = rng.integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), deep)
    trained = read_image(tmp_path / "a.png")
    assert not np.array_equal(cv2.imread(str(tmp_path / "a.png")), trained)   # the truncating decode differs
    for gray, expected in ((False, trained), (True, cv2.cvtColor(trained, cv2.COLOR_BGR2GRAY))):
        with FolderReplaySource(tmp_path, gray=gray) as source:
            np.testing.assert_array_equal(source.read().image, expected)

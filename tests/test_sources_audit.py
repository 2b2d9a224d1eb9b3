"""The sources audit's eight findings (replays, camera specs, URL redaction, the run's summary):

1. ``--source part.png`` (one image) was replayed by FFmpeg as a one-frame video: other pixels than training's reader
   (a 16-bit PNG truncated, not scaled by 1/257), so another score than the same file in a folder.
2. A video cut short or damaged mid-way ended as a normal end: the frames it declares and never gave were counted
   nowhere (lost 0) and nothing was said.
3. ``redact_url`` stopped at the first '@': ``rtsp://admin:Pr0d@2024@host`` showed ``admin:***@2024@host``.
4. The run's summary table and each camera's row did not show the files a replay could not read (``unreadable``).
5. Every unknown ``KIND:TARGET`` suggested ``video:`` (the loop variable overwrote the typed kind).
6. A skipped unreadable image was named without its reason, and so was a folder none of whose images decodes.
7. The folder replay left ``.pgm`` (and other suffixes it does not read) out silently.
8. ``--loop`` with a live camera was refused only after the model loaded, as "opencv source: unknown option 'loop'".
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureThread, EndOfStream, FolderReplaySource, VideoReplaySource
from fair_edge.cameras.registry import parse_source
from fair_edge.errors import CameraError, ConfigError
from fair_edge.station.inspector import Inspector


def replay_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fair_edge.cameras.replay"]


def read_to_end(source, limit: int = 100) -> list:
    frames = []
    with pytest.raises(EndOfStream):
        for _ in range(limit):
            frames.append(source.read())
    return frames


class ZeroScorer:
    reason, graph_threshold = "test: zero maps", None

    def infer_frames(self, frames):
        return np.zeros((len(frames), 4, 4), np.float32), np.zeros(len(frames), np.float32)


# ---- 1. one image file -------------------------------------------------------------------------------------------
def test_one_image_file_is_replayed_by_the_training_reader_not_as_a_video(tmp_path, monkeypatch):
    from fair_edge.cli.common import replay_spec
    from fair_edge.images import read_image

    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 65535, (24, 32, 3), dtype=np.uint16)
    cv2.imwrite("part.png", pixels)                                  # 16-bit: FFmpeg truncates, training scales
    (tmp_path / "clip.avi").write_bytes(b"not decoded here")
    assert replay_spec(Path("part.png")) == "folder:part.png"
    assert replay_spec(Path("PART2.PNG")) == "PART2.PNG"             # names nothing: as typed
    assert replay_spec(Path("clip.avi")) == "video:clip.avi"         # any other file: still a video
    for spec in (replay_spec(Path("part.png")), "part.png"):         # --source, and the bare-spec guess
        source = parse_source(spec)
        assert isinstance(source, FolderReplaySource), spec
        with source:
            frames = read_to_end(source)
        assert [f.source for f in frames] == ["part.png"]
        np.testing.assert_array_equal(frames[0].image, read_image("part.png"))


def test_a_file_of_another_suffix_given_as_a_folder_is_refused_naming_what_is_expected(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(CameraError, match=r"expected a folder of images or an image file \(\.png, .*\), found "
                                          r"another file at"):
        FolderReplaySource(notes).open()


# ---- 2. a video cut short ----------------------------------------------------------------------------------------
def write_video(path: Path, frames: int = 20) -> Path:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50, (32, 24))
    assert writer.isOpened(), "this OpenCV cannot write MJPG/avi"
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    writer.release()
    return path


def cut_video(tmp_path: Path) -> tuple[Path, int, int]:
    """A 20-frame AVI cut at half its bytes: (path, frames it declares, frames it gives)."""
    whole = write_video(tmp_path / "whole.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    capture = cv2.VideoCapture(str(cut))
    declared, given = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while capture.read()[0]:
        given += 1
    capture.release()
    if not 0 < given < declared:
        pytest.skip(f"this OpenCV reads the cut file as {given} of {declared} frames")
    return cut, declared, given


def test_a_cut_video_warns_both_counts_and_counts_the_frames_it_never_gave_as_lost(tmp_path, caplog):
    cut, declared, given = cut_video(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.replay"):
        with CaptureThread(VideoReplaySource(cut, fps=0), CaptureSettings(full_policy="block")) as capture:
            summary = Inspector(capture, ZeroScorer(), threshold=1.0).run(threading.Event())
    stats = capture.stats()
    assert stats.frames_in == summary.frames_in == given
    assert stats.frames_lost_estimate == summary.lost == declared - given      # the live table and summary.json
    warned = replay_warnings(caplog)
    assert len(warned) == 1 and f"ended after {given} of the {declared} frames it declares" in warned[0]
    assert f"{declared - given} frame(s) lost" in warned[0] and str(cut) in warned[0]
    with VideoReplaySource(cut, fps=0) as src:                     # a read after the end counts nothing more
        read_to_end(src)
        with pytest.raises(EndOfStream):
            src.read()
        assert src.frames_short == declared - given


def test_a_whole_video_warns_nothing_and_loses_nothing(tmp_path, caplog):
    whole = write_video(tmp_path / "whole.avi")
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.replay"), VideoReplaySource(whole, fps=0) as src:
        assert len(read_to_end(src)) == 20
        assert src.frames_short == 0
    assert replay_warnings(caplog) == []


def test_a_looping_cut_video_warns_and_counts_each_pass_once(tmp_path, caplog):
    cut, declared, given = cut_video(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.replay"):
        with VideoReplaySource(cut, fps=0, loop=True) as src:
            for _ in range(2 * given):                  # two passes read; the second one's end not reached yet
                src.read()
            assert src.frames_short == declared - given
            src.read()                                  # the second pass ends: counted once more
            assert src.frames_short == 2 * (declared - given)
    assert len(replay_warnings(caplog)) == 2


# ---- 3. a password holding '@' -----------------------------------------------------------------------------------
@pytest.mark.parametrize("url, shown", [
    ("rtsp://admin:Pr0d@2024@10.0.0.5:554/stream", "rtsp://admin:***@10.0.0.5:554/stream"),
    ("http://admin:p@ss@127.0.0.1:8799/clip.avi", "http://admin:***@127.0.0.1:8799/clip.avi"),
    ("rtsp://admin:secret@cam", "rtsp://admin:***@cam"),
    ("rtsp://cam/path@x:y", "rtsp://cam/path@x:y"),                  # an '@' after the host part: no user info
    ("rtsp://token@cam/s", "rtsp://token@cam/s"),                    # no password to hide
])
def test_redact_url_splits_the_user_info_at_its_last_at_sign(url, shown):
    from fair_edge.cameras.opencv import OpenCVSource, redact_url
    from fair_edge.line.sinks.urls import hide_userinfo

    assert redact_url(url) == shown == hide_userinfo(url)               # the sinks' rule, urlsplit's reading
    assert OpenCVSource(url).name == shown                             # every verdict row's "source"


def test_redact_url_hides_a_url_inside_a_pipeline():
    from fair_edge.cameras.opencv import redact_url

    pipeline = "rtspsrc location=rtsp://admin:Pr0d@2024@cam:554 latency=0 ! appsink"
    assert redact_url(pipeline) == "rtspsrc location=rtsp://admin:***@cam:554 latency=0 ! appsink"


# ---- 4. unreadable files in the run's tables ---------------------------------------------------------------------
def test_the_summary_table_and_each_camera_row_show_unreadable_files(tmp_path, capsys, monkeypatch):
    from fair_edge.cli.run import cell_rows, print_summary
    from fair_edge.station.inspector import RunSummary

    monkeypatch.setenv("COLUMNS", "200")
    camera = dict(inspected=5, ng=1, dropped=0, lost=0)
    summary = RunSummary(frames_in=5, inspected=5, unreadable=3,
                         cameras={"top": dict(camera, unreadable=3), "side": dict(camera, unreadable=0)})
    rows = dict(cell_rows(summary))
    assert rows["camera top"] == "5 inspected, 1 NG, 0 dropped, 0 lost, 3 unreadable"
    assert rows["camera side"] == "5 inspected, 1 NG, 0 dropped, 0 lost"         # none: not shown
    print_summary(summary, tmp_path)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "unreadable files" in line][0].rstrip(" │").endswith("3")
    print_summary(RunSummary(frames_in=5, inspected=5), tmp_path)
    assert "unreadable" not in capsys.readouterr().out


# ---- 5. did you mean ---------------------------------------------------------------------------------------------
def test_an_unknown_kind_suggests_the_kind_it_resembles():
    with pytest.raises(ConfigError, match="did you mean 'folder:'"):
        parse_source("Folder:/data")
    with pytest.raises(ConfigError, match="did you mean 'video:'"):
        parse_source("vidoe:clip.avi")


# ---- 6. the reason an image is unreadable ------------------------------------------------------------------------
def test_a_skipped_image_and_a_folder_with_none_readable_give_the_readers_reason(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((8, 8, 3), 9, np.uint8))
    (folder / "b.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.replay"), FolderReplaySource(folder) as src:
        assert [f.source for f in read_to_end(src)] == ["a.png"]
    warned = replay_warnings(caplog)
    assert len(warned) == 1 and "skipping unreadable image" in warned[0]
    assert f"{folder / 'b.png'} is empty (0 bytes)" in warned[0], warned
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(EndOfStream, match=r"none of the 2 images is readable .*first: .*a\.png is not a readable "
                                          r"image \(truncated"):
        FolderReplaySource(folder).open()


# ---- 7. image files of a suffix the replay does not read ---------------------------------------------------------
def test_pgm_files_are_named_at_the_first_open_and_in_the_refusal_of_a_folder_of_only_them(tmp_path, caplog):
    folder = tmp_path / "mix"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((8, 8, 3), 9, np.uint8))
    cv2.imwrite(str(folder / "b.pgm"), np.full((8, 8), 9, np.uint8))
    (folder / "notes.txt").write_text("no image")                      # no image: not named
    with caplog.at_level(logging.WARNING, logger="fair_edge.cameras.replay"):
        with FolderReplaySource(folder) as src:
            assert [f.source for f in read_to_end(src)] == ["a.png"]
    warned = replay_warnings(caplog)
    assert len(warned) == 1 and "1 image(s) read; 1 image file(s) left out" in warned[0]
    assert "b.pgm; save them as PNG" in warned[0] and "notes.txt" not in warned[0]
    (folder / "a.png").unlink()
    with pytest.raises(CameraError) as info:
        FolderReplaySource(folder).open()
    message = str(info.value)
    assert "holds no images (looked for .png" in message and "1 image file(s) left out" in message
    assert "b.pgm" in message and message.endswith("put the images to replay there, or give a video file.")


# ---- 8. --loop with a live camera --------------------------------------------------------------------------------
def test_loop_with_a_live_camera_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.line.settings import RecordSettings
    from fair_edge.station import run as station_run
    from fair_edge.station.camera import open_capture
    from fair_edge.station.config import CameraSettings, StationConfig

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before --loop was checked")

    monkeypatch.setattr(station_run, "read_bundle", no_model)
    cfg = StationConfig(camera=CameraSettings(source="rtsp://admin:secret@127.0.0.1:1/x", loop=True),
                        bundle=tmp_path / "bundle", output=tmp_path, record=RecordSettings(dir=tmp_path),
                        console=ConsoleSettings(enabled=False))
    with pytest.raises(ConfigError, match=r"--loop / camera\.loop: expected a replayed folder, image or video file"
                                          r".*found the camera rtsp://admin:\*\*\*@127\.0\.0\.1:1/x") as info:
        station_run.run_station(cfg, threading.Event(), max_frames=1)
    assert "secret" not in str(info.value) and "unknown option" not in str(info.value)
    with pytest.raises(ConfigError, match="--loop"):                   # a cell's camera: where its capture is made
        open_capture(cfg)


def test_loop_with_a_replay_is_accepted(tmp_path):
    from fair_edge.station.camera import check_loop
    from fair_edge.station.config import CameraSettings, StationConfig

    folder = tmp_path / "imgs"
    folder.mkdir()
    check_loop(StationConfig(camera=CameraSettings(source=str(folder), loop=True)))
    check_loop(StationConfig(camera=CameraSettings(source="rtsp://cam/x", loop=False)))

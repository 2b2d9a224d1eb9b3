"""A video that OpenCV's FFmpeg backend cannot open or decode while the process cannot start threads: the refusal
says so (FFmpeg fails its codec's open with EAGAIN, or a frame's colour conversion, and tells only stderr: the
failure read as a damaged file or an unsupported codec). The shortage itself is faked here by a ``Thread.start``
that raises as CPython's does at a thread limit (a real one needs a non-root user under ``ulimit -u``, or a
``pthread_create`` shim: /tmp/s13/cameras/repro_item5_ffmpeg_threads.py reproduces it with one); the decoder's
failure is real (a file FFmpeg cannot decode)."""

from __future__ import annotations

import threading

import pytest

from fair_edge.cameras import OpenCVSource, VideoReplaySource
from fair_edge.errors import CameraError

SHORTAGE = "this process cannot start a thread now (can't start new thread), and OpenCV's FFmpeg decoder needs threads"


def _no_threads(monkeypatch) -> None:
    def refuse(self) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)


@pytest.fixture
def undecodable(tmp_path):
    path = tmp_path / "clip.avi"
    path.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(range(256)) * 4)
    return path


@pytest.mark.parametrize("make", [VideoReplaySource, OpenCVSource], ids=["video-replay", "opencv-file"])
def test_a_decoder_failure_under_a_thread_shortage_names_the_shortage(make, undecodable, monkeypatch):
    source = make(str(undecodable))
    _no_threads(monkeypatch)
    with pytest.raises(CameraError) as info:
        source._connect()
    assert SHORTAGE in str(info.value) and "ulimit -u" in str(info.value)


@pytest.mark.parametrize("make", [VideoReplaySource, OpenCVSource], ids=["video-replay", "opencv-file"])
def test_a_decoder_failure_with_threads_to_spare_reads_as_before(make, undecodable):
    with pytest.raises(CameraError) as info:
        make(str(undecodable))._connect()
    assert "thread" not in str(info.value)


def test_the_probe_leaves_no_thread_behind():
    from fair_edge.cameras.opencv import thread_shortage

    before = threading.active_count()
    assert thread_shortage() == ""
    assert threading.active_count() == before

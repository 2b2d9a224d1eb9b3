"""A JPEG damaged mid-file (bytes overwritten, size unchanged: a bad SD card, a flaky share) decodes through
OpenCV with blocks of garbage, and only libjpeg's unnamed stderr line said so: it was trained on as a normal part.
``images.decode_file(check_damage=True)`` reads that line (``jpeg_damage.stderr_lines``) and raises DataError naming
the file, so training's skip rule, eval and build's calibration (``training.pixels.read_image``) leave it out. The
station's readers (folder replay, console) never ask: the check points the process's stderr at a file while a JPEG
decodes."""

from __future__ import annotations

import logging
import os
import threading

import cv2
import numpy as np
import pytest

from fair_edge.cameras import EndOfStream, FolderReplaySource
from fair_edge.errors import DataError
from fair_edge import jpeg_damage
from fair_edge.images import decode_file, read_stored
from fair_edge.training.data import load_dataset
from fair_edge.training.pixels import load_images, read_image

DAMAGE = "Corrupt JPEG data: premature end of data segment"   # what libjpeg says of the file below


def _plate(rng: np.random.Generator) -> np.ndarray:
    """(240, 320, 3) uint8: a grid plate with noise, the audit's part."""
    img = np.full((240, 320, 3), 170, np.float32)
    img[:, ::8] -= 60
    img[::8, :] -= 60
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _write_parts(folder, count: int = 4, damaged: int = 1):
    """``count`` JPEG parts in ``folder``; part ``damaged`` has 64 bytes overwritten in its middle (same size).
    Returns (the damaged file, its pixels as written before the damage)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"part_{i:02d}.jpg"), _plate(rng))
    path = folder / f"part_{damaged:02d}.jpg"
    good = cv2.imread(str(path))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path, good


def test_a_jpeg_damaged_mid_file_is_a_data_error_naming_it_not_garbage_pixels(tmp_path, capfd):
    path, good = _write_parts(tmp_path / "parts")
    with pytest.raises(DataError) as err:
        read_image(path)
    message = str(err.value)
    assert message.startswith(f"image {path} is a damaged JPEG: libjpeg decoded it with the warning \"{DAMAGE}\"")
    assert "Copy the image again from its source, or remove it." in message
    assert DAMAGE not in capfd.readouterr().err   # said once, with the file's name, not as an unnamed line
    # what OpenCV alone makes of it: a quarter of the pixels wrong (the audit: 26 %)
    decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    assert np.mean(np.abs(decoded.astype(int) - good.astype(int)) > 40) > 0.1
    assert capfd.readouterr().err == f"{DAMAGE}\n"   # OpenCV's decode: libjpeg's line, naming no file
    clean = read_image(tmp_path / "parts" / "part_00.jpg")
    assert clean.shape == (240, 320, 3) and capfd.readouterr().err == ""


def test_training_skips_the_damaged_jpeg_by_its_one_skip_rule(tmp_path, caplog):
    path, _ = _write_parts(tmp_path / "parts", count=4, damaged=2)
    with caplog.at_level(logging.WARNING, logger="fair_edge.training.data"):
        images, kept = load_images(load_dataset(tmp_path / "parts").train, 16)
    assert len(kept) == 3 and path not in [s.path for s in kept] and images.shape == (3, 3, 16, 16)
    assert f"skipping image {path} is a damaged JPEG" in caplog.text
    assert "skipped 1 unreadable or undersized image(s) of 4" in caplog.text


@pytest.fixture
def stderr_untouched(monkeypatch):
    """Fails the test when anything points file descriptor 2 elsewhere (``jpeg_damage._redirect_stderr``)."""
    def refuse(sink):
        raise AssertionError("fd 2 redirected by a station reader")
    monkeypatch.setattr(jpeg_damage, "_redirect_stderr", refuse)


def test_the_station_folder_replay_never_redirects_stderr(tmp_path, stderr_untouched, capfd):
    """The replay decodes beside an OpenCV camera's thread and the console: a redirect blamed their libjpeg lines
    on its file (review: 3652 of 3759 good reads refused) and swallowed or reordered their stderr."""
    _write_parts(tmp_path / "parts", count=3, damaged=1)
    with FolderReplaySource(tmp_path / "parts") as src:
        names = []
        with pytest.raises(EndOfStream):
            for _ in range(10):
                names.append(src.read().source)
        assert src.unreadable == 0
    assert names == ["part_00.jpg", "part_01.jpg", "part_02.jpg"]
    assert DAMAGE in capfd.readouterr().err   # libjpeg's own line, where it always went


def test_the_console_reads_stored_frames_without_redirecting_stderr(tmp_path, stderr_untouched):
    _write_parts(tmp_path / "parts", count=2, damaged=1)
    assert read_stored(tmp_path / "parts" / "part_00.jpg", "NG frame").shape == (240, 320, 3)
    assert decode_file(tmp_path / "parts" / "part_01.jpg").shape == (240, 320, 3)   # no check asked: read


def test_extraneous_bytes_before_sos_are_read_by_the_training_reader(tmp_path, capfd):
    """libjpeg warns of bytes between the header and the scan (SOS, 0xda); the pixels are those written."""
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "good.jpg"), _plate(rng))
    data = (tmp_path / "good.jpg").read_bytes()
    sos = data.find(b"\xff\xda")
    (tmp_path / "extra.jpg").write_bytes(data[:sos] + b"\x00\x00" + data[sos:])
    assert np.array_equal(read_image(tmp_path / "extra.jpg"), read_image(tmp_path / "good.jpg"))
    assert "Corrupt JPEG data: 2 extraneous bytes before marker 0xda" in capfd.readouterr().err


def test_a_harmless_libjpeg_warning_decodes_and_stays_on_stderr(tmp_path, capfd):
    """A JFIF header of an unknown revision (3.01): libjpeg warns, the pixels are right; the file is read and the
    line is passed on to stderr as before."""
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.jpg"), _plate(rng))
    data = bytearray((tmp_path / "a.jpg").read_bytes())
    assert data[6:11] == b"JFIF\x00"
    data[11] = 3   # JFIF major version
    (tmp_path / "a.jpg").write_bytes(bytes(data))
    assert decode_file(tmp_path / "a.jpg").shape == (240, 320, 3)
    assert "Warning: unknown JFIF revision number 3.01" in capfd.readouterr().err


def test_stderr_lines_keeps_the_damage_lines_and_passes_the_others_on(capfd):
    """What another thread (or a C library) writes to stderr during a decode is not lost: written on after it."""
    from fair_edge.jpeg_damage import is_jpeg_damage, stderr_lines

    def other_thread():
        os.write(2, b"another thread's log line\n")

    with stderr_lines(is_jpeg_damage) as kept:
        os.write(2, f"{DAMAGE}\n".encode())
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        os.write(2, b"Corrupt JPEG data: bad ICC marker\n")   # metadata only: the pixels are right
    assert kept == [DAMAGE]
    err = capfd.readouterr().err
    assert "another thread's log line\n" in err and "Corrupt JPEG data: bad ICC marker\n" in err
    assert DAMAGE not in err
    os.write(2, b"after\n")   # stderr is back where it was
    assert capfd.readouterr().err == "after\n"


def test_stderr_lines_passes_lines_on_before_giving_stderr_back(monkeypatch, capfd):
    """A line written just after the block (another thread, as fd 2 is pointed back) comes after the block's
    lines, and one written while they are passed on (still into the private file) is not lost."""
    from fair_edge.jpeg_damage import is_jpeg_damage, stderr_lines

    restore = jpeg_damage._restore_stderr

    def restore_as_others_write(saved):
        os.write(2, b"while passing on\n")   # fd 2 still the private file
        restore(saved)
        os.write(2, b"just after\n")

    monkeypatch.setattr(jpeg_damage, "_restore_stderr", restore_as_others_write)
    with stderr_lines(is_jpeg_damage):
        os.write(2, b"during\n")
    assert capfd.readouterr().err == "during\njust after\nwhile passing on\n"


def test_stderr_is_given_back_when_the_decoder_raises(capfd):
    from fair_edge.jpeg_damage import is_jpeg_damage, stderr_lines

    with pytest.raises(ZeroDivisionError):
        with stderr_lines(is_jpeg_damage):
            os.write(2, b"before the error\n")
            raise ZeroDivisionError
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before the error\nafter\n"


@pytest.mark.parametrize("line, damage", [
    ("Corrupt JPEG data: premature end of data segment", True),
    ("Corrupt JPEG data: 4 extraneous bytes before marker 0xd0", True),   # inside a scan: RST0..RST7
    ("Corrupt JPEG data: 12 extraneous bytes before marker 0xd7", True),
    ("Corrupt JPEG data: 4 extraneous bytes before marker 0xd9", False),  # before EOI: the pixels are right
    ("Corrupt JPEG data: 2 extraneous bytes before marker 0xda", False),  # before SOS: the pixels are right
    ("Corrupt JPEG data: bad Huffman code", True),
    ("Premature end of JPEG file", True),
    ("Inconsistent progression sequence for component 0 coefficient 1", True),
    ("Corrupt JPEG data: bad ICC marker", False),
    ("Warning: unknown JFIF revision number 3.01", False),
    ("2026-12-07T01:00:00Z WARNING Corrupt JPEG data in a log line", False),
])
def test_which_libjpeg_lines_mean_wrong_pixels(line, damage):
    from fair_edge.jpeg_damage import is_jpeg_damage

    assert is_jpeg_damage(line) is damage

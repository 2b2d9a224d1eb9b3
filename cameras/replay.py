"""Replay an image folder or a video file as if it were a camera: tests, demos, re-inspection.

Both replay at ``fps`` frames per second (0 = as fast as the reader asks), optionally
looping, in a deterministic order, and set ``Frame.source`` to the file name. A paced replay runs as a camera at
that rate (``base.Pacer``): each frame is stamped with its slot on a fixed schedule (a late reader gets the slots
it missed one after another, stamped at theirs), and slots more than ``base.CATCH_UP_S`` old are skipped, their
images with them, and counted in ``seq`` (a gap: ``lost``), so replays of one line's cameras at one rate keep step
on a loaded machine. A replay that
reaches its end without ``loop`` raises :class:`EndOfStream`, which ends a CaptureThread. A looping
folder replay none of whose images can be read any more (the folder was removed or emptied) raises
:class:`CameraError`: a camera fault, which the CaptureThread's reconnect and give-up rules handle.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from fair_edge.errors import CameraError, DataError
from fair_edge.image_folders import LEFT_OUT_FIX, image_files, left_out_images, unread_text
from fair_edge.image_folders import left_out_text as images_left_out_text
from fair_edge.images import read_image, utf8_problem
from fair_edge.preprocess import IMAGE_SUFFIXES  # the one list: a folder replays the files training reads

from .base import EndOfStream, Pacer, Slot, check_fps
from .capture import SourceBase
from .opencv import thread_shortage

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".ts")


def is_image_file(path: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> bool:
    """True for an existing file whose suffix (case-insensitive) is one of ``suffixes`` (lower-case; default the
    ones training reads): a ``--source part.png`` replayed by the folder replay as one image, not as a video."""
    path = Path(path)
    return path.suffix.lower() in suffixes and path.is_file()


def left_out_text(folder: Path, suffixes: tuple[str, ...]) -> str:
    """The image files of ``folder`` a listing by ``suffixes`` leaves out for their suffix
    (``image_folders.left_out_images``: a ``.pgm``, a ``.gif``), for a message, in training's words
    (``image_folders.left_out_text``): "; 2 image file(s) left out: their suffix is none of those fair-edge reads as
    images (.png, ...): f0.pgm, f1.pgm; save them as PNG to use them, or move them out of the folder". "" when there
    is none (or the folder cannot be read)."""
    try:
        left_out = left_out_images(folder, suffixes)
    except OSError:
        return ""
    return f"; {images_left_out_text(left_out, suffixes)}; {LEFT_OUT_FIX}" if left_out else ""


def unreadable_reason(path: Path, exc: DataError) -> str:
    """Why ``path`` cannot be replayed, from the reader's DataError (empty, truncated, not an image, float pixels),
    naming the file (the reader's text does; else it is put in front), without a closing full stop."""
    text = str(exc).rstrip(".")
    return text if str(path) in text else f"{path}: {text}"


class FolderReplaySource(SourceBase):
    """Images of one folder (not recursive), sorted by file name, or one image file.

    folder: directory holding images with a suffix in ``suffixes`` (case-insensitive; default ``IMAGE_SUFFIXES``,
    the list training reads, WebP included); hidden files (a name starting with ".", e.g. a macOS AppleDouble
    ``._NAME.png``, which holds no image) are not listed (``image_folders.image_files``, training's rule).
    Subfolders holding images, broken links and image files of another suffix (a ``.pgm``:
    ``image_folders.left_out_images``) are not read either: the first open names them in one warning, as training
    does (``image_folders.unread_text``, ``left_out_text``), and a folder holding no image is refused naming them. An image file with one of
    ``suffixes`` (``--source part.png``) is replayed as a folder holding that one file.
    fps: replay rate, frames per second; 0 = as fast as possible.
    loop: start again after the last image; else :class:`EndOfStream`. With loop, a pass over every file in
    which none is readable (the folder removed or emptied while replaying) is a camera fault,
    :class:`CameraError`, never an end: the capture thread reconnects (reads the folder again) and gives up by its
    rules. Without loop, a folder none of whose images is readable is refused at open as :class:`EndOfStream`.
    gray: load as (H, W) uint8 gray instead of (H, W, 3) uint8 BGR.
    Unreadable images are skipped with a warning giving the reader's reason (empty, truncated, float pixels) and
    counted in ``unreadable`` (``CaptureStats.unreadable``, the run summary's ``unreadable``; ``skipped`` is the
    same count); they use no sequence number. A replay none of whose files is readable is refused with the first
    file's reason.
    Frames: ``source`` = the image's file name.
    Each file is decoded by the training reader (``fair_edge.images.read_image``), because every model was
    trained, evaluated and thresholded on the images it gives: pixels as stored (an EXIF orientation tag is
    ignored: applying it would replay a rotated JPEG turned, 20 x 60 as 60 x 20, a part the model never saw that
    way) and 16-bit pixels scaled by 1/257 (OpenCV's own 16 -> 8-bit drop truncates: 1 LSB off on a quarter of the
    pixels). Without its damaged-JPEG check (``check_damage``, training's only): it points the process's stderr at
    a file while a JPEG decodes, which in a station would blame another thread's libjpeg line on this file.
    """

    def __init__(self, folder: str | Path, *, fps: float = 0.0, loop: bool = False, gray: bool = False,
                 suffixes: tuple[str, ...] = IMAGE_SUFFIXES, name: str | None = None) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.fps = check_fps(fps, f"folder {self.folder}")
        self.loop = loop
        self.gray = gray
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.name = name or f"folder:{self.folder}"
        self._files: list[Path] = []
        self._index = 0
        self._unread_named = False   # the subfolders and broken links left unread were named (first open)
        self._pacer = Pacer(self.fps)

    @property
    def nominal_fps(self) -> float | None:
        return self.fps or None

    @property
    def on_demand(self) -> bool:
        """Unpaced: an image is read from its file when asked (``SourceBase``)."""
        return self.fps == 0

    @property
    def skipped(self) -> int:
        """Unreadable files skipped (the name ``unreadable`` has in ``CaptureStats``)."""
        return self.unreadable

    def interrupt(self) -> None:
        """End a pacing wait now (capture is stopping): ``stop()`` need not wait out 1 / fps."""
        self._pacer.wake()

    def _connect(self) -> tuple[np.ndarray, str, float]:
        self._files = self._list_files()
        self._name_unread()
        self._index = 0
        self._pacer.reset()
        return self._next_image()

    def _list_files(self) -> list[Path]:
        """The files to replay: ``[folder]`` for one image file, else the folder's images; CameraError naming what
        is there instead (nothing, another file, a folder without images and what it leaves unread)."""
        if is_image_file(self.folder, self.suffixes):
            return [self.folder]
        if not self.folder.is_dir():
            raise CameraError(f"{self.name}: expected a folder of images or an image file "
                              f"({', '.join(self.suffixes)}), found "
                              f"{'another file' if self.folder.exists() else 'nothing'} at {self.folder}")
        files = image_files(self.folder, self.suffixes)
        if not files:
            raise CameraError(f"{self.name}: the folder {self.folder} holds no images (looked for "
                              f"{', '.join(self.suffixes)}){self._unread_text()}; put the images to replay there, "
                              "or give a video file.")
        return files

    def _unread_text(self) -> str:
        """What the folder holds that may be images and is not read, for a message: image files of another suffix
        (``left_out_text``), subfolders holding images and broken links (``image_folders.unread_text``); "" for one
        image file, or a folder with nothing of the kind."""
        if not self.folder.is_dir():
            return ""
        return left_out_text(self.folder, self.suffixes) + unread_text(self.folder, self.suffixes)

    def _grab(self) -> tuple[np.ndarray, str, float]:
        return self._next_image()

    def _name_unread(self) -> None:
        """Log once (the first open, not each reconnect) the image files of another suffix, the subfolders holding
        images and the broken links the replay leaves unread (``_unread_text``, training's wording); nothing when
        there are none."""
        if self._unread_named:
            return
        self._unread_named = True
        unread = self._unread_text()
        if unread:
            log.warning("camera %s: %s: %d image(s) read%s.", self.name, self.folder, len(self._files), unread)

    def _decode(self, path: Path) -> np.ndarray:
        """The file's pixels as training reads them (``fair_edge.images.read_image``: as stored, 16-bit / 257),
        gray when asked; DataError naming the file and why when it cannot be decoded."""
        image = read_image(path)
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if self.gray else image

    def _next_image(self) -> tuple[np.ndarray, str, float]:
        """Next readable image, paced: (image, file name, its slot's time in monotonic s). The slots the pacer says
        were missed take their files with them, unread, and count in seq (the image read for the first of them is
        dropped)."""
        image, name = self._next_readable()
        slot = self._pacer.wait()
        if slot.missed:
            self._skip_files(slot.missed - 1)
            self._seq += slot.missed
            image, name = self._next_readable()
        return image, name, slot.t

    def _skip_files(self, count: int) -> None:
        """Pass over ``count`` files unread (missed slots), around the folder when looping."""
        self._index += count
        if self.loop and self._files:
            self._index %= len(self._files)

    def _next_readable(self) -> tuple[np.ndarray, str]:
        """Next readable image, not paced; skips and counts unreadable files, each logged with its reason."""
        failures_in_row = 0
        first_reason = ""
        while True:
            if self._index >= len(self._files):
                if not self.loop:
                    raise EndOfStream(f"{self.name}: replayed all {len(self._files)} images")
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            try:
                return self._decode(path), path.name
            except DataError as exc:
                reason = unreadable_reason(path, exc)
            self.unreadable += 1
            failures_in_row += 1
            first_reason = first_reason or reason
            log.warning("camera %s: skipping unreadable image (%d unreadable so far): %s",
                        self.name, self.unreadable, reason)
            if failures_in_row >= len(self._files):
                raise self._none_readable(first_reason)

    def _none_readable(self, first_reason: str) -> CameraError:
        """Every file failed in a row (``first_reason``: the first one's, from the reader). Looping: a camera fault
        (the folder was removed or emptied while it replayed; a reconnect reads it again); else the end of a replay
        that has nothing to give."""
        text = (f"{self.name}: none of the {len(self._files)} images is readable in {self.folder} (expected at "
                f"least one image that decodes; first: {first_reason})")
        if self.loop:
            return CameraError(f"{text}: the folder was removed, emptied or its images damaged; put readable "
                               "images back (a running replay reconnects to them)")
        return EndOfStream(text)

    def _release(self) -> None:
        self._pacer.wake()


class VideoReplaySource(SourceBase):
    """Frames of a video file, decoded by OpenCV.

    path: the video file; its path must be UTF-8 (OpenCV opens it by name and crashes on one that is not: such a
    path is refused at open as a :class:`CameraError` naming it). fps: replay rate in frames per second; ``None`` =
    the file's own rate (as fast as possible if the file does not state one); 0 = as fast as possible.
    loop: rewind at the end; else :class:`EndOfStream`.
    Frames: (H, W, 3) uint8 BGR, ``source`` = the file name.
    A pass that ends before the frame count the file declares (``CAP_PROP_FRAME_COUNT``, when > 0: a file cut
    short by a copy or a full disk, or damaged mid-way) is warned naming both counts, and the frames it never gave
    are counted in ``frames_short`` (the capture's ``frames_lost_estimate``, the run's ``lost``); looping, each
    pass that ends early is warned and counted for the frames it missed.
    """

    def __init__(self, path: str | Path, *, fps: float | None = None, loop: bool = False,
                 name: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.fps = None if fps is None else check_fps(fps, f"video {self.path}")
        self.loop = loop
        self.name = name or f"video:{self.path}"
        self._cap: cv2.VideoCapture | None = None
        self._pacer = Pacer(self.fps or 0.0)
        self._declared = 0       # frames the file says it holds (CAP_PROP_FRAME_COUNT; 0: it does not say)
        self._pass_read = 0      # frames decoded since the file was opened or rewound
        self.frames_short = 0    # frames declared but never decoded, summed over passes (counted lost)

    @property
    def nominal_fps(self) -> float | None:
        period = self._pacer.period
        return 1.0 / period if period > 0 else None

    @property
    def on_demand(self) -> bool:
        """Unpaced: a frame is decoded when asked (``SourceBase``)."""
        return self._pacer.period == 0

    def interrupt(self) -> None:
        """End a pacing wait now (capture is stopping): ``stop()`` need not wait out 1 / fps."""
        self._pacer.wake()

    def _connect(self) -> tuple[np.ndarray, str, float]:
        if not self.path.is_file():
            raise CameraError(f"{self.name}: no such video file {self.path}; check the path")
        problem = utf8_problem(self.path)
        if problem:
            raise CameraError(f"{self.name}: the video path {problem}; OpenCV opens a video only by a UTF-8 name. "
                              "Rename the file or its folder to UTF-8 (`convmv -f latin1 -t utf8 --notest PATH`), "
                              "or copy it to a UTF-8 name.")
        cap = self._cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise CameraError(f"{self.name}: OpenCV could not open {self.path}; check it plays elsewhere "
                              f"or re-encode it (`ffmpeg -i in.mp4 -c:v mjpeg out.avi`){thread_shortage()}")
        if self.fps is None:
            file_fps = cap.get(cv2.CAP_PROP_FPS)
            self._pacer = Pacer(file_fps if 0 < file_fps < 1000 else 0.0)
        self._pacer.reset()
        self._declared = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        ok, image = cap.read()
        if not ok or image is None:
            raise CameraError(f"{self.name}: opened {self.path} but decoded no frame; the file may be "
                              f"empty or its codec unsupported (re-encode to MJPG/H.264){thread_shortage()}")
        self._pass_read = 1
        return image, self.path.name, self._pacer.wait().t

    def _grab(self) -> tuple[np.ndarray, str, float]:
        """The next frame, paced: (image, file name, its slot's time in monotonic s); the slots the pacer says were
        missed take their frames with them and count in seq."""
        image = self._read_frame()
        slot: Slot = self._pacer.wait()
        for _ in range(slot.missed):
            image = self._read_frame()
        self._seq += slot.missed
        return image, self.path.name, slot.t

    def _read_frame(self) -> np.ndarray:
        """The video's next frame, rewound at its end when looping; EndOfStream at its end otherwise. Each end
        checks the pass against the declared frame count (``_count_short``)."""
        ok, image = self._cap.read()
        if not ok or image is None:
            self._count_short()
        if not ok and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._pass_read = 0
            ok, image = self._cap.read()
            if not ok:
                raise CameraError(f"{self.name}: could not rewind {self.path} to loop")
        if not ok or image is None:
            raise EndOfStream(f"{self.name}: end of {self.path.name}")
        self._pass_read += 1
        return image

    def _count_short(self) -> None:
        """At the end of a pass: the frames the file declares and this pass never decoded are warned (both counts)
        and added to ``frames_short``, once per pass (a read after the end counts nothing more); nothing when the
        file declares no count or gave them all."""
        short = self._declared - self._pass_read
        if short <= 0:
            return
        log.warning("camera %s: %s ended after %d of the %d frames it declares: %d frame(s) lost (the file is cut "
                    "short or damaged%s); check it plays to its end elsewhere (`ffprobe -count_frames`), or "
                    "re-encode or copy it again", self.name, self.path, self._pass_read, self._declared, short,
                    "; counted again on each pass" if self.loop else "")
        self.frames_short += short
        self._pass_read = self._declared

    def _release(self) -> None:
        self._pacer.wake()
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


REPLAY_SOURCES = (FolderReplaySource, VideoReplaySource)  # files that can wait for the reader (block policy)

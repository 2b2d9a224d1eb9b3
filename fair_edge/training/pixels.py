"""A dataset's pixels: the training-side readers of its files (``read_image`` with the damaged-JPEG check,
``read_mask`` for ground truth, ``read_frame`` with a model input's checks, and ``read_frames``: the one skip rule of
every command that reads a list of images), and the model images made of them (``load_images``: one preallocated
(N, 3, S, S) buffer, tiles counted from the files' headers first).

Its warnings (a file skipped, a mask that marks nothing) are logged as ``fair_edge.training.data``'s, as the
dataset listings' are: one logger for what reading a dataset found.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from fair_edge.errors import ConfigError, DataError
from fair_edge.image_size import stored_size
from fair_edge.images import read_image as read_image_unchecked  # the check asked for below
from fair_edge.images import read_mask_pixels
from fair_edge.preprocess import check_frame
from fair_edge.tiling import tile_layout
from fair_edge.training.data import Sample

log = logging.getLogger("fair_edge.training.data")   # the datasets' logger (see above)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 BGR, as ``images.read_image`` gives it, and a DataError naming it when it
    is a damaged JPEG (``images.decode_file``'s ``check_damage``): the reader of train, eval, tune, build's and
    fuse's calibration and rules check, which must not learn or judge garbage pixels. The station's readers (folder
    replay, console) read without the check (it points the process's stderr at a file while a JPEG decodes)."""
    return read_image_unchecked(path, check_damage=True)


def read_mask(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask as (H, W) bool, checking it matches the image's (H, W).

    A pixel is a defect pixel when its stored value is nonzero (the MVTec rule), at the file's own bit depth: a
    16-bit mask holding 0 / 1 or 0 / 255 (a uint16 label array saved as PNG) is read at 16 bits, not cut to its
    high byte (which made it all normal). A colour mask is reduced to its luminance (0.299 R + 0.587 G + 0.114 B,
    rounded, at its depth) first, so a defect pixel is one whose luminance is nonzero, as before. A transparent
    pixel (alpha 0, an RGBA or grey + alpha mask) is never a defect pixel, whatever colour it holds.
    As ``read_image``, an orientation tag (EXIF or TIFF) is ignored, so the mask lies on the pixels its image has
    (``images.read_mask_pixels``, the reader of the station's ROI and zone masks too).
    A mask with no defect pixel at all is read as it is and logged as a warning naming it (its defective image
    then adds no defect pixel or region to the pixel metrics).
    Raises DataError naming the mask when it is missing, empty, unreadable or too large (``images.decode_file``)."""
    if not Path(path).is_file():
        raise DataError(f"mask {path} is missing or unreadable.")
    defect = read_mask_pixels(path, "mask")
    if defect.shape != tuple(image_shape):
        raise DataError(
            f"mask {path} is {defect.shape[1]}x{defect.shape[0]} but its image is {image_shape[1]}x{image_shape[0]}; "
            "masks must have the image's size."
        )
    if not defect.any():
        _warn_empty_mask(path)
    return defect


def _warn_empty_mask(path: Path) -> None:
    """Log that the ground-truth mask ``path`` marks no defect pixel, and what to do about it."""
    log.warning("ground-truth mask %s marks no defect pixel (every pixel reads as 0); its defective image adds no "
                "defect pixel or region to the pixel metrics. Draw the defect in it (any nonzero value marks a defect "
                "pixel), or remove the mask (VisA: clear its mask column) to list the image as missing its mask.",
                path)


def read_frame(path: str | Path, tiling=None) -> np.ndarray:
    """``read_image``, then the checks a model input needs: at least 2 x 2 pixels and, for a tiled model
    (``tiling``: a ``fair_edge.tiling.TilingConfig``), room for one tile (in its region of interest).

    Raises DataError naming the file, its size and the fix, so train and eval skip it as an unreadable file.
    """
    image = read_image(path)
    try:
        check_frame(image)
        if tiling is not None:
            tile_layout(tuple(image.shape[:2]), tiling, tiling.tile)
    except ConfigError as exc:
        h, w = image.shape[:2]
        raise DataError(f"{path} ({w} x {h} px) cannot be a model input: {exc} Remove the file from the dataset "
                        "or replace it with a full-size image of the part.") from exc
    return image


_Item = TypeVar("_Item", Sample, Path)   # what read_frames is given, and gives back with each frame


def read_frames(items: Sequence[_Item], tiling=None, *, what: str = "images",
                progress: Callable[[], None] | None = None) -> Iterator[tuple[_Item, np.ndarray]]:
    """(item, frame) for each of ``items`` (``Sample`` records or image paths) whose file ``read_frame`` reads,
    in order, frame (H, W, 3) uint8 BGR; the others (unreadable, truncated, under 2 x 2 px, or too small for one
    tile of ``tiling``, a ``fair_edge.tiling.TilingConfig`` or None) are skipped with a warning naming each, and
    a count once all were read. The one skip rule of every command that reads a list of images (training, build,
    fuse, rules check): a frame is read only as it is asked for, so a replay holds one at a time.

    progress: called once per item, read or skipped. what: the images' role for the refusal ("--normal images").
    Raises DataError naming the first file and its problem when none could be read."""
    skipped, read, first_problem = 0, 0, ""
    for item in items:
        try:
            frame = read_frame(_path_of(item), tiling)
        except DataError as exc:
            skipped += 1
            first_problem = first_problem or str(exc)
            log.warning("skipping %s", exc)
        else:
            read += 1
            yield item, frame
        if progress is not None:
            progress()
    if skipped:
        log.warning("skipped %d unreadable or undersized image(s) of %d", skipped, len(items))
    if not read:
        raise DataError(f"none of the {len(items)} {what} could be read (first: {_path_of(items[0]) if items else '-'}"
                        f"{f'; {first_problem}' if first_problem else ''}).")


def _path_of(item: Sample | Path) -> Path:
    return item.path if isinstance(item, Sample) else Path(item)


# ----------------------------------------------------------------------------- model images
def load_images(samples: list[Sample], size: int, *, tiling=None, progress=None,
                rows: int | None = None) -> tuple[np.ndarray, list[Sample]]:
    """Read and resize samples to colour model images, skipping unreadable files (and images too small to be a
    model input or to hold one tile) with a warning naming each, and a count (``read_frames``).

    tiling: None, or a ``fair_edge.tiling.TilingConfig``: each image then gives its tiles (each resized
    to ``size``), in ``FrameTiler.split`` order. rows: the model images ``samples`` give, when the caller counted
    them (``model_image_count``); counted here otherwise: the buffer is allocated once at that size. Returns
    (images (N, 3, size, size) float32 RGB in [0, 1], N = images read (times tiles per image), the samples that
    were read).
    """
    from fair_edge.preprocess import resize_frame
    from fair_edge.tiling import FrameTiler

    tiler = FrameTiler(tiling, size)
    images, kept = ImageBuffer(model_image_count(samples, tiling) if rows is None else rows), []
    for sample, frame in read_frames(samples, tiling, progress=progress):
        tiles, _ = tiler.split([frame])
        for tile in tiles:
            images.append(resize_frame(tile, size))
        kept.append(sample)
    return images.array(), kept


def model_image_count(samples: Sequence[Sample], tiling=None) -> int:
    """The model images ``load_images`` makes of ``samples``: one a sample untiled (``tiling`` None); tiled (a
    ``fair_edge.tiling.TilingConfig``), every file's own tiles (``image_tiles``: from its header, no pixel
    decoded), so frames of several sizes are counted as they will be read. What the PatchCore fit's memory
    estimate counts, and ``load_images`` allocates."""
    if tiling is None:
        return len(samples)
    return sum(image_tiles(s.path, tiling) for s in samples)


def image_tiles(path: Path, tiling) -> int:
    """The tiles of ``tiling`` (a ``fair_edge.tiling.TilingConfig``) the image file ``path`` gives: ``tile_layout``
    on its size as stored, read from its header (``image_size.stored_size``, a few bytes) or, where the header does
    not say, from its decoded frame (``read_frame``); 0 for a file training skips (unreadable, or too small for
    one tile of its region)."""
    size = stored_size(path)
    try:
        if size is None:
            size = read_frame(path, tiling).shape[:2]
        return tile_layout(tuple(size), tiling, tiling.tile).count
    except (DataError, ConfigError):
        return 0


class ImageBuffer:
    """Model images filled into one preallocated (rows, 3, S, S) array as they are read, so the training set is
    held once, not as a list and then its ``np.stack`` copy (twice the memory at the fit's largest moment).
    rows: the model images expected (``model_image_count``: a tiled folder's tiles counted file by file, from
    the headers). Files that give more than that (a header that said less than the decoder found) grow it by half,
    a copy; skipped files leave rows unused."""

    def __init__(self, rows: int) -> None:
        self.rows, self.count, self._data = max(1, rows), 0, None

    def append(self, image: np.ndarray) -> None:
        """Add one model image ((3, S, S) float32) after those added before."""
        if self._data is None:
            self._data = np.empty((self.rows, *image.shape), image.dtype)
        elif self.count == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data[:max(1, len(self._data) // 2)])])
        self._data[self.count] = image
        self.count += 1

    def array(self) -> np.ndarray:
        """(count, 3, S, S), contiguous: the buffer's filled part (a view: skipped files leave their unused rows
        behind it, never a second copy of the images)."""
        return self._data[:self.count]

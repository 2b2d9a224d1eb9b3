"""Image files -> frames: the one decoder every reader of an image file uses (training, eval, build, the station's
folder replay), so a file gives the same pixels on every path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fair_edge.errors import DataError


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR (gray replicated, alpha dropped, 16-bit scaled).

    Pixels are taken as stored: an EXIF orientation tag is ignored (IMREAD_UNCHANGED never rotates). This is
    the one orientation policy of fair-edge, and 16-bit pixels are scaled by 1/257 (rounded): every model was
    trained on images read here, and the station's folder replay (``fair_edge.cameras.replay``) decodes with this
    same function and the masks (``fair_edge.training.data.read_mask``) the same way, so a part is inspected and
    scored as it was trained. A camera frame carries no EXIF.
    Raises DataError naming the file when it is missing, unreadable or truncated.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"{path} is not a readable image (empty, truncated or an unsupported format).")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: expected 8- or 16-bit pixels; found {image.dtype}.")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image

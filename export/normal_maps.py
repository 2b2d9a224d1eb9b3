"""The held-out normal anomaly maps a bundle keeps, so a station can calibrate a threshold on its own score.

A station with a region of interest (``decision.roi``) scores a frame by max(anomaly map x ROI), not by the
family's image score the bundle's threshold was calibrated on (PatchCore's reweighted top-k, ...). With the
build's normal maps in the bundle, the station calibrates that score's threshold when it opens, by the
build's own rule (``fair_edge.station.decision``).

``normal_maps.npy`` (and ``cpu_normal_maps.npy`` for an INT8 bundle's CPU graph, ``fp32_normal_maps.npy`` for
an FP16/INT8 bundle's FP32 reference graph, which the PyTorch backends' FP32 weights reproduce): (N, h, w) float32,
the maps of that graph on the held-out normal frames (the frame map of a tiled model), exactly as the
threshold's scores came from them. Size cap: at most ``MAX_BYTES`` (64 MiB); a larger set is subsampled to
N = MAX_BYTES // (h * w * 4) evenly spaced maps (the manifest's ``count`` against ``of``). Held-out frames
of several sizes (a tiled model's frame maps differ) are not stored: a station with an ROI then needs
``decision.threshold``. The files are listed in bundle.json's checksums like every other file.
A write that fails (a full disk) is a BundleError naming the file and the free space on its disk
(``fair_edge.disk.free_space``, the wording every writer uses).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from fair_edge.disk import free_space
from fair_edge.errors import BundleError

log = logging.getLogger(__name__)
NORMAL_MAPS = "normal_maps.npy"
CPU_NORMAL_MAPS = "cpu_normal_maps.npy"
FP32_NORMAL_MAPS = "fp32_normal_maps.npy"
MAX_BYTES = 64 << 20


def kept_maps(maps: Sequence[np.ndarray], max_bytes: int = MAX_BYTES) -> np.ndarray | None:
    """maps: N (h, w) float32 host arrays -> (n, h, w) float32, n <= N: all of them, or n evenly spaced ones
    (first and last included) when N maps exceed ``max_bytes``; None when there are none or their grids differ."""
    if not maps:
        return None
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        log.warning("held-out normal maps not stored: frames of %d sizes give maps of shapes %s; a station with "
                    "decision.roi will need decision.threshold", len(shapes), sorted(shapes))
        return None
    h, w = next(iter(shapes))
    n = max(1, min(len(maps), max_bytes // (h * w * 4)))
    index = np.unique(np.linspace(0, len(maps) - 1, n).round().astype(int))
    if index.size < len(maps):
        log.warning("storing %d of %d held-out normal maps (%d x %d): the bundle keeps at most %d MiB of them",
                    index.size, len(maps), h, w, max_bytes >> 20)
    return np.stack([np.asarray(maps[i], np.float32) for i in index])


def write_normal_maps(out: Path, name: str, maps: Sequence[np.ndarray]) -> dict | None:
    """Save the kept maps (``kept_maps``) as ``out/name``; returns the manifest entry {file, count, of, shape},
    or None (nothing written) when none are kept."""
    kept = kept_maps(maps)
    if kept is None:
        return None
    try:
        np.save(out / name, kept, allow_pickle=False)
    except OSError as exc:   # a full disk: numpy says "6144 requested and 4064 written", or ENOSPC
        (out / name).unlink(missing_ok=True)
        raise BundleError(f"cannot write the held-out normal maps {out / name} ({kept.nbytes / 2**20:.2f} MB: "
                          f"{exc.strerror or exc}); {free_space(out)}. Free space on that disk or choose an --out "
                          "on another disk, then build again.") from exc
    return {"file": name, "count": int(kept.shape[0]), "of": len(maps), "shape": [int(s) for s in kept.shape[1:]]}


def read_normal_maps(path: Path) -> np.ndarray:
    """A bundle's normal maps: (N, h, w) float32 host array, N >= 1, finite. BundleError naming the file and what
    was found otherwise (the bundle's checksums were verified when it loaded; this checks the content)."""
    maps = _load(path, mmap=False)
    if maps.ndim != 3 or maps.shape[0] < 1 or maps.dtype != np.float32 or not np.isfinite(maps).all():
        raise BundleError(f"normal maps {path}: expected (N >= 1, h, w) finite float32; found shape {maps.shape}, "
                          f"dtype {maps.dtype}. Rebuild the bundle.")
    return maps


def normal_maps_grid(path: Path) -> tuple[int, int]:
    """(h, w) of a bundle's normal maps, read from the .npy header only (the maps stay on disk). BundleError naming
    the file when it is not an (N, h, w) array."""
    shape = _load(path, mmap=True).shape
    if len(shape) != 3:
        raise BundleError(f"normal maps {path}: expected (N, h, w); found shape {shape}. Rebuild the bundle.")
    return int(shape[1]), int(shape[2])


def _load(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"normal maps {path} cannot be read ({exc}); expected an (N, h, w) float32 .npy written "
                          "by `fair-edge build`. Rebuild the bundle.") from exc

"""The held-out normal anomaly maps a bundle keeps, so a station can calibrate a threshold on its own score.

A station with a region of interest (``decision.roi``) scores a frame by max(anomaly map x ROI), not by the
family's image score the bundle's threshold was calibrated on (PatchCore's reweighted top-k, ...). With the
build's normal maps in the bundle, the station calibrates that score's threshold when it opens, by the
build's own rule (``fair_edge.station.decision``).

``normal_maps.npy`` (and ``cpu_normal_maps.npy`` for an INT8 bundle's CPU graph, ``fp32_normal_maps.npy`` for
an FP16/INT8 bundle's FP32 reference graph, which the PyTorch backends' FP32 weights reproduce): (N, h, w) float32,
the maps of that graph on the held-out normal frames (the frame map of a tiled model), exactly as the
threshold's scores came from them. Size cap: at most ``MAX_BYTES`` (64 MiB). Every held-out map is kept: when
the full maps exceed the cap they are max-pooled by the smallest integer factor f that fits (each f x f block of
map pixels -> its maximum; the last row/column of blocks may be partial) and stored as ``normal_maps.npz``
(``cpu_``, ``fp32_`` alike) holding ``maps`` (N, ceil(h / f), ceil(w / f)) float32, ``pool`` f and ``grid``
(h, w), the full maps' grid; the manifest entry records ``pool`` and ``shape`` [h, w] too. A station
calibrating on pooled maps gets a threshold at or slightly above the one the full maps give, never below
(``station.decision.roi_scores``). Only when even one value per map exceeds the cap are the maps subsampled to
evenly spaced ones (the manifest's ``count`` against ``of``). Bundles built before pooling stored at most
64 MiB of full maps, subsampled (a 20 MP tiled bundle: 3 maps); they still load, and the station warns when
they hold too few maps for the bundle's false-reject rate.
Maps of several grids (a tiled model's held-out frames of several sizes) are not stored (``kept_maps``: None);
`fair-edge build` refuses such frames before (``export.build.check_held_out_grid``): without maps the bundle
records no calibrated grid, and its station could not refuse frames of another size. The files are listed in
bundle.json's checksums like every other file, and reading one checks the cap again before any array is read
(each .npy header's shape x item size, each .npz member's inflated size), so a damaged or hostile file is a
BundleError, not a full memory.
A write that fails (a full or read-only disk) is a BundleError naming the file, the cause and the fix
(``fair_edge.disk.write_failure``, the wording every writer uses).
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fair_edge.disk import discard_unfinished, write_failure
from fair_edge.errors import BundleError

log = logging.getLogger(__name__)
NORMAL_MAPS = "normal_maps.npy"
CPU_NORMAL_MAPS = "cpu_normal_maps.npy"
FP32_NORMAL_MAPS = "fp32_normal_maps.npy"
POOLED_SUFFIX = ".npz"   # pooled maps: normal_maps.npz, with their factor and full grid
MAX_BYTES = 64 << 20
HEADER_ALLOWANCE = 1 << 16   # a .npy header's most bytes (format 2.0 allows more; fair-edge writes 1.0, < 64 KiB)


@dataclass(frozen=True)
class NormalMaps:
    """A bundle's held-out normal maps. maps: (n, h', w') float32 host array; pool: the max-pooling factor f
    (1 = the full maps); grid: (h, w) of the full maps, h' = ceil(h / f), w' = ceil(w / f)."""

    maps: np.ndarray
    pool: int
    grid: tuple[int, int]

    def __len__(self) -> int:
        return int(self.maps.shape[0])


def max_pool(a: np.ndarray, f: int) -> np.ndarray:
    """(..., h, w) -> (..., ceil(h / f), ceil(w / f)): the maximum of each f x f block (a partial last block is
    padded with copies of its edge, which leaves its maximum unchanged). f = 1 returns ``a`` itself."""
    if f == 1:
        return a
    h, w = a.shape[-2:]
    hp, wp = -(-h // f), -(-w // f)
    padded = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, hp * f - h), (0, wp * f - w)], mode="edge")
    return padded.reshape(*a.shape[:-2], hp, f, wp, f).max(axis=(-3, -1))


def pool_factor(n: int, h: int, w: int, max_bytes: int = MAX_BYTES) -> int | None:
    """The smallest integer f >= 1 such that n maps of h x w float32 max-pooled by f fit in ``max_bytes``;
    None when even one value per map (f = max(h, w)) does not."""
    for f in range(1, max(h, w) + 1):
        if n * math.ceil(h / f) * math.ceil(w / f) * 4 <= max_bytes:
            return f
    return None


def kept_maps(maps: Sequence[np.ndarray], max_bytes: int = MAX_BYTES) -> NormalMaps | None:
    """maps: N (h, w) float32 host arrays -> the ``NormalMaps`` to store, within ``max_bytes``: all N full maps
    when they fit, else all N max-pooled by the smallest factor that fits (``pool_factor``), else (not even one
    value per map fits) n evenly spaced ones (first and last included) at one value each. None when there are
    none or their grids differ (a tiled model's frames of several sizes, which `fair-edge build` refuses before)."""
    if not maps:
        return None
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        log.warning("held-out normal maps not stored: frames of %d sizes give maps of shapes %s; a station with "
                    "decision.roi will need decision.threshold", len(shapes), sorted(shapes))
        return None
    h, w = next(iter(shapes))
    f = pool_factor(len(maps), h, w, max_bytes)
    index = np.arange(len(maps))
    if f is None:   # not even one value per map fits: subsample
        f = max(h, w)
        n = max(1, max_bytes // 4)
        index = np.unique(np.linspace(0, len(maps) - 1, n).round().astype(int))
        log.warning("storing %d of %d held-out normal maps (%d x %d, one value each): the bundle keeps at most %d "
                    "MiB of them", index.size, len(maps), h, w, max_bytes >> 20)
    elif f > 1:
        log.info("storing all %d held-out normal maps (%d x %d) max-pooled %d x %d to fit the bundle's %d MiB: a "
                 "station with decision.roi calibrates on them a threshold at or slightly above the full maps' one",
                 len(maps), h, w, f, f, max_bytes >> 20)
    pooled = np.stack([max_pool(np.asarray(maps[i], np.float32), f) for i in index])
    return NormalMaps(pooled, f, (int(h), int(w)))


def stored_name(name: str, pool: int) -> str:
    """The file name the maps are stored under: ``name`` (.npy) for full maps, with .npz when pooled."""
    return name if pool == 1 else str(Path(name).with_suffix(POOLED_SUFFIX))


def write_normal_maps(out: Path, name: str, maps: Sequence[np.ndarray]) -> dict | None:
    """Save the kept maps (``kept_maps`` within ``MAX_BYTES``) as ``out/name`` (.npy), or as ``out/<name>.npz`` when
    pooled; returns the manifest entry {file, count, of, shape: the full maps' [h, w]} plus {pool: f} when pooled,
    or None (nothing written) when none are kept."""
    kept = kept_maps(maps, MAX_BYTES)
    if kept is None:
        return None
    path = out / stored_name(name, kept.pool)
    try:
        if kept.pool == 1:
            np.save(path, kept.maps, allow_pickle=False)
        else:
            with open(path, "wb") as fh:
                np.savez(fh, maps=kept.maps, pool=np.int64(kept.pool), grid=np.asarray(kept.grid, np.int64))
    except OSError as exc:   # a full disk: numpy says "6144 requested and 4064 written", or ENOSPC; or EROFS...
        discard_unfinished(path, "normal maps file")
        raise BundleError(f"cannot write the held-out normal maps {path} ({kept.maps.nbytes / 2**20:.2f} MB: "
                          f"{exc.strerror or exc}): {write_failure(out, exc)}, then build again.") from exc
    entry = {"file": path.name, "count": len(kept), "of": len(maps), "shape": list(kept.grid)}
    return entry if kept.pool == 1 else {**entry, "pool": kept.pool}


def read_normal_maps(path: Path) -> NormalMaps:
    """A bundle's normal maps (full .npy, or pooled .npz with their factor and grid): ``NormalMaps`` with N >= 1
    finite float32 maps. BundleError naming the file and what was found otherwise (the bundle's checksums were
    verified when it loaded; this checks the content)."""
    stored = _load(path, mmap=False)
    if isinstance(stored, np.ndarray):
        _check_maps(path, stored)
        return NormalMaps(stored, 1, (int(stored.shape[1]), int(stored.shape[2])))
    maps, pool, grid = stored
    _check_maps(path, maps)
    if tuple(maps.shape[1:]) != (math.ceil(grid[0] / pool), math.ceil(grid[1] / pool)):
        raise BundleError(f"normal maps {path}: maps of {maps.shape[1]} x {maps.shape[2]} are not the {grid[0]} x "
                          f"{grid[1]} grid max-pooled by {pool}. Rebuild the bundle.")
    return NormalMaps(maps, pool, grid)


def normal_maps_grid(path: Path) -> tuple[int, int]:
    """(h, w) of a bundle's normal maps, the full maps' grid (a pooled .npz records it), read without loading the
    maps. BundleError naming the file when it is not an (N, h, w) array."""
    stored = _load(path, mmap=True)
    if not isinstance(stored, np.ndarray):
        return stored[2]
    if stored.ndim != 3:
        raise BundleError(f"normal maps {path}: expected (N, h, w); found shape {stored.shape}. Rebuild the bundle.")
    return int(stored.shape[1]), int(stored.shape[2])


def _check_maps(path: Path, maps: np.ndarray) -> None:
    if maps.ndim != 3 or maps.shape[0] < 1 or maps.dtype != np.float32 or not np.isfinite(maps).all():
        raise BundleError(f"normal maps {path}: expected (N >= 1, h, w) finite float32; found shape {maps.shape}, "
                          f"dtype {maps.dtype}. Rebuild the bundle.")


def _load(path: Path, mmap: bool) -> np.ndarray | tuple[np.ndarray, int, tuple[int, int]]:
    """The .npy array (memory-mapped with ``mmap``), or a pooled .npz's (maps, pool, grid): its maps are read only
    without ``mmap``, an empty (0, 0, 0) array otherwise. Every array's size is checked against ``MAX_BYTES`` before
    it is read (``_check_sizes``), so a damaged or hostile file is refused instead of filling the memory."""
    try:
        _check_sizes(path)
        stored = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if isinstance(stored, np.ndarray):
            return stored
        with stored:
            return _pooled(path, stored, mmap)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"normal maps {path} cannot be read ({exc}); expected an (N, h, w) float32 .npy or a pooled "
                          ".npz (maps, pool, grid) written by `fair-edge build`. Rebuild the bundle.") from exc
    except MemoryError as exc:
        raise BundleError(f"normal maps {path} do not fit in this machine's memory; `fair-edge build` keeps them "
                          f"within {MAX_BYTES >> 20} MiB. Rebuild the bundle.") from exc


def _check_sizes(path: Path) -> None:
    """BundleError naming the file unless every array it holds is at most ``MAX_BYTES`` (what `fair-edge build`
    writes), judged from the .npy header (shape x item size) and, in a .npz, from each member's stated
    uncompressed size too, before any array is read. zipfile never inflates a member past its stated size."""
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if not is_zip:
        with open(path, "rb") as fh:
            _check_header(path, "", fh, path.stat().st_size)
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.file_size > MAX_BYTES + HEADER_ALLOWANCE:
                raise BundleError(f"normal maps {path}: member {info.filename!r} inflates to {info.file_size} bytes; "
                                  f"a bundle's normal maps are at most {MAX_BYTES} bytes ({MAX_BYTES >> 20} MiB). "
                                  "Rebuild the bundle.")
            with archive.open(info) as fh:
                _check_header(path, f" member {info.filename!r}", fh, info.file_size)


def _check_header(path: Path, member: str, fh, stored_bytes: int) -> None:
    """BundleError unless the .npy array in ``fh`` (``stored_bytes`` long, header included) declares at most
    ``MAX_BYTES`` of data (shape x item size) that its bytes hold."""
    version = np.lib.format.read_magic(fh)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version[0]}.{version[1]}{member}; `fair-edge build` writes 1.0")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fh)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}{member}")
    declared = math.prod(shape) * dtype.itemsize
    if declared > MAX_BYTES or declared > stored_bytes - fh.tell():
        raise BundleError(f"normal maps {path}{member}: declares a {dtype} array of shape {shape} ({declared} bytes) "
                          f"in {stored_bytes} bytes; expected at most {MAX_BYTES} bytes ({MAX_BYTES >> 20} MiB), held "
                          "in the file. Rebuild the bundle.")


def _pooled(path: Path, stored, mmap: bool) -> tuple[np.ndarray, int, tuple[int, int]]:
    pool, grid = np.asarray(stored["pool"]), np.asarray(stored["grid"])
    if pool.shape != () or not np.issubdtype(pool.dtype, np.integer) or int(pool) < 1 or grid.shape != (2,) \
            or not np.issubdtype(grid.dtype, np.integer) or (grid < 1).any():
        raise BundleError(f"normal maps {path}: expected pool (an integer >= 1) and grid (h, w >= 1); found pool "
                          f"{pool!r}, grid {grid!r}. Rebuild the bundle.")
    maps = np.zeros((0, 0, 0), np.float32) if mmap else stored["maps"]
    return maps, int(pool), (int(grid[0]), int(grid[1]))

"""Tiled inspection of large frames: split a frame into overlapping tiles, stitch the tile maps back.

A 5 MP frame shrunk whole to 256 x 256 loses a defect of a few pixels before the model sees it.
With tiling, the region of interest (the whole frame by default) is covered by square tiles of
``tile`` frame pixels that overlap by ``overlap`` pixels; each tile is resized to the model's
``image_size`` exactly as a whole frame would be (a tile *is* a frame to training, export and the
CPU path; the fused GPU kernel crops the tiles out of the uploaded frames in its one launch,
``FusedPreprocessor.run_tiles``), and the tile maps are stitched into one frame map at the model's
scale (``image_size / tile`` map pixels per frame pixel).

Stitching rule (one definition, used by eval, the build's threshold and every runtime backend):
  weight of a tile-map pixel = min(1, d / v), d = distance (in map pixels, from the pixel centre)
  to the nearest tile edge that has a neighbouring tile overlapping it, v = overlap in map pixels;
  frame map = sum(weight * tile map) / sum(weight) over the tiles covering each pixel;
  frame score = max of the frame map.
Tiles on the frame's border keep full weight on their outer side, so the blend only fades a
tile where another tile takes over. A tile's offset in the map is its frame offset times the
scale, rounded to whole map pixels (at most half a map pixel of placement error).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from fair_edge.errors import ConfigError


@dataclass(frozen=True)
class TilingConfig:
    """tile: side of a square tile, frame pixels. overlap: pixels shared by neighbouring tiles.
    roi: (x, y, width, height) in frame pixels of the region to inspect, or None for the whole frame."""

    tile: int
    overlap: int = 0
    roi: tuple[int, ...] | None = None  # (x, y, width, height)

    def __post_init__(self) -> None:
        if not (isinstance(self.tile, int) and self.tile >= 16):
            raise ConfigError(f"tiling.tile must be an integer >= 16 frame pixels; found {self.tile!r}.")
        if not (isinstance(self.overlap, int) and 0 <= self.overlap <= self.tile // 2):
            raise ConfigError(f"tiling.overlap must be an integer in 0..{self.tile // 2} (half a tile); "
                              f"found {self.overlap!r}.")
        if self.roi is not None:
            roi = tuple(int(v) for v in self.roi)
            if len(roi) != 4 or roi[0] < 0 or roi[1] < 0 or roi[2] < self.tile or roi[3] < self.tile:
                raise ConfigError(f"tiling.roi must be (x, y, width, height) with x, y >= 0 and width, height >= "
                                  f"the tile ({self.tile}); found {self.roi!r}.")
            object.__setattr__(self, "roi", roi)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["roi"] = list(self.roi) if self.roi is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> "TilingConfig | None":
        """None (no tiling) for a missing or null entry, as in bundles written before tiling existed."""
        if not data:
            return None
        roi = data.get("roi")
        return cls(int(data["tile"]), int(data.get("overlap", 0)), tuple(int(v) for v in roi) if roi else None)


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one frame size lie. crops: (y, x) frame offsets of each tile's top-left;
    places: (y, x) offsets of each tile map in the frame map; map_hw: frame map (height, width)."""

    tiling: TilingConfig
    frame_hw: tuple[int, int]
    map_size: int
    crops: tuple[tuple[int, int], ...]
    places: tuple[tuple[int, int], ...]
    map_hw: tuple[int, int]

    @property
    def count(self) -> int:
        return len(self.crops)

    def mask_to_map(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool frame mask -> (map_h, map_w) bool on the frame map's grid: the ROI crop, brought to the
        grid by ``fair_edge.masks.mask_on_map_grid`` (nearest sampling, plus the most-covered map pixel of
        each defect region nearest sampling would lose, so every defect inside the ROI keeps a map pixel)."""
        return self.labels_to_map(mask) > 0

    def labels_to_map(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool frame mask -> (map_h, map_w) int32 region labels on the frame map's grid: the ROI crop's
        8-connected defect regions, each keeping its label on the grid (``fair_edge.masks.labels_on_map_grid``;
        ``labels > 0`` is ``mask_to_map``), so eval's AUPRO and region results count a thin scratch once."""
        from fair_edge.masks import labels_on_map_grid  # eval only; keeps SciPy off the station's import

        h, w = self.frame_hw
        x0, y0, rw, rh = self.tiling.roi if self.tiling.roi is not None else (0, 0, w, h)
        return labels_on_map_grid(np.asarray(mask, bool)[y0 : y0 + rh, x0 : x0 + rw], self.map_hw)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets covering [0, length): stride tile - overlap, the last one flush with the end."""
    stride = tile - overlap
    n = max(1, math.ceil((length - tile) / stride) + 1)
    return sorted({min(i * stride, length - tile) for i in range(n)})


@lru_cache(maxsize=32)
def tile_layout(frame_hw: tuple[int, int], tiling: TilingConfig, map_size: int) -> TileLayout:
    """The tile layout for frames of ``frame_hw`` (height, width) pixels; ``map_size`` = model image_size.

    Raises ConfigError when the region of interest does not fit the frame."""
    h, w = frame_hw
    x0, y0, rw, rh = tiling.roi if tiling.roi is not None else (0, 0, w, h)
    if x0 + rw > w or y0 + rh > h or rw < tiling.tile or rh < tiling.tile:
        raise ConfigError(
            f"tiling needs a region of at least {tiling.tile} x {tiling.tile} px inside the frame; found region "
            f"x={x0}, y={y0}, {rw} x {rh} in a {w} x {h} frame. Use a smaller tiling.tile or fix tiling.roi."
        )
    scale = map_size / tiling.tile
    map_hw = (max(map_size, round(rh * scale)), max(map_size, round(rw * scale)))
    ys, xs = _starts(rh, tiling.tile, tiling.overlap), _starts(rw, tiling.tile, tiling.overlap)
    crops = tuple((y0 + y, x0 + x) for y in ys for x in xs)
    places = tuple((min(round(y * scale), map_hw[0] - map_size), min(round(x * scale), map_hw[1] - map_size))
                   for y in ys for x in xs)
    return TileLayout(tiling, (h, w), map_size, crops, places, map_hw)


def place_on_frame(frame_map: np.ndarray, frame_hw: tuple[int, int], area: tuple[int, ...]) -> np.ndarray:
    """The stitched map of a model tiled over ``area`` (``tiling.roi``: x, y, width, height frame pixels) placed
    where it lies in a frame of ``frame_hw`` (H, W), for display: (round(H * sy), round(W * sx)) float32 at the
    map's own scale (sy, sx = map pixels per frame pixel), NaN outside the area (no score there)."""
    x, y, aw, ah = area
    sy, sx = frame_map.shape[0] / ah, frame_map.shape[1] / aw
    out = np.full((round(frame_hw[0] * sy), round(frame_hw[1] * sx)), np.nan, np.float32)
    top, left = round(y * sy), round(x * sx)
    part = frame_map[: out.shape[0] - top, : out.shape[1] - left]
    out[top : top + part.shape[0], left : left + part.shape[1]] = part
    return out


def split_frame(frame: np.ndarray, layout: TileLayout) -> list[np.ndarray]:
    """frame: (H, W, 3) or (H, W) uint8, host memory. Returns ``layout.count`` tile views
    (tile, tile[, 3]) uint8 (no copy), in the layout's order."""
    t = layout.tiling.tile
    return [frame[y : y + t, x : x + t] for y, x in layout.crops]


def _ramp(size: int, fade: float, fade_start: bool, fade_end: bool) -> np.ndarray:
    """(size,) float64 weights: 1, falling linearly to 0 over ``fade`` pixels at the faded ends."""
    centre = np.arange(size, dtype=np.float64) + 0.5
    w = np.ones(size)
    if fade >= 1.0:
        if fade_start:
            w = np.minimum(w, centre / fade)
        if fade_end:
            w = np.minimum(w, (size - centre) / fade)
    return w


def tile_weights(layout: TileLayout) -> np.ndarray:
    """(T, S, S) float32 blending weight of each tile-map pixel (see the module docstring)."""
    s = layout.map_size
    fade = layout.tiling.overlap * s / layout.tiling.tile
    ys = sorted({p[0] for p in layout.places})
    xs = sorted({p[1] for p in layout.places})
    out = np.empty((layout.count, s, s), np.float32)
    for i, (py, px) in enumerate(layout.places):
        wy = _ramp(s, fade, py != ys[0], py != ys[-1])
        wx = _ramp(s, fade, px != xs[0], px != xs[-1])
        out[i] = np.outer(wy, wx)
    return out


def stitch(tile_maps: np.ndarray, layout: TileLayout) -> tuple[np.ndarray, float]:
    """Blend tile maps into one frame map and score.

    tile_maps: (T, S, S) float32, in the layout's order. Returns (frame map (map_h, map_w) float32,
    frame score = its max, float)."""
    if tile_maps.shape != (layout.count, layout.map_size, layout.map_size):
        raise ConfigError(f"stitch expects {layout.count} tile maps of {layout.map_size} x {layout.map_size}; "
                          f"found shape {tuple(tile_maps.shape)}.")
    weights = tile_weights(layout)
    acc = np.zeros(layout.map_hw, np.float64)
    total = np.zeros(layout.map_hw, np.float64)
    s = layout.map_size
    for m, w, (y, x) in zip(tile_maps, weights, layout.places):
        acc[y : y + s, x : x + s] += w * m
        total[y : y + s, x : x + s] += w
    frame_map = (acc / total).astype(np.float32)
    return frame_map, float(frame_map.max())


class FrameTiler:
    """Frames <-> tiles for one tiling (or none): ``split`` before pre-processing, ``stitch`` after inference.

    With ``tiling=None`` both are the identity, so callers handle tiled and whole-frame bundles alike.
    """

    def __init__(self, tiling: TilingConfig | None, image_size: int) -> None:
        self.tiling, self.image_size = tiling, image_size

    def split(self, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[TileLayout | None]]:
        """frames: list of (H, W, 3) / (H, W) uint8. Returns (tiles or frames, one layout per frame)."""
        if self.tiling is None:
            return list(frames), [None] * len(frames)
        tiles: list[np.ndarray] = []
        layouts: list[TileLayout | None] = []
        for frame in frames:
            layout = tile_layout(tuple(frame.shape[:2]), self.tiling, self.image_size)
            tiles.extend(split_frame(frame, layout))
            layouts.append(layout)
        return tiles, layouts

    def stitch(self, maps: np.ndarray, scores: np.ndarray,
               layouts: list[TileLayout | None]) -> tuple[list[np.ndarray], np.ndarray]:
        """maps: (N_tiles, S, S) float32, scores (N_tiles,) float32 from the backend.

        Returns (one map per frame, (map_h, map_w) float32; frame scores (N_frames,) float32)."""
        if self.tiling is None:
            return list(maps), np.asarray(scores, np.float32)
        out_maps, out_scores, start = [], [], 0
        for layout in layouts:
            if layout is None:
                raise ConfigError("a tiled model got a frame without a tile layout; split the frames with this tiler.")
            frame_map, score = stitch(maps[start : start + layout.count], layout)
            out_maps.append(frame_map)
            out_scores.append(score)
            start += layout.count
        return out_maps, np.asarray(out_scores, np.float32)

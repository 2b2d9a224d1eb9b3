"""PNG figures drawn with OpenCV only: line plots (ROC, PRO curves) and anomaly-map overlays.

No matplotlib: evaluation runs on edge boxes where only opencv-python-headless is installed.
Colours are BGR; images are (H, W, 3) uint8.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from fair_edge.errors import ConfigError, DataError
from fair_edge.images import write_png

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of each axis span
_CURVE_COLOURS = ((200, 90, 30), (40, 40, 220), (40, 160, 40), (170, 60, 160), (20, 150, 230))
_BLACK, _GREY, _WHITE = (0, 0, 0), (150, 150, 150), (255, 255, 255)
# Margins around the axes box, pixels: left, right, top, bottom.
_MARGINS = (70, 20, 40, 55)


# ---------------------------------------------------------------- small drawing helpers


def drawable_text(text: object) -> str:
    """``text`` as the Hershey font draws it: ASCII, anything else as a Python backslash escape (é -> \\xe9,
    ≥ -> \\u2265; a file name that is not UTF-8, e.g. Latin-1 from a Windows share, holds surrogates:
    \\udce9). Every text drawn here goes through it: OpenCV crashes the process (segfault) on a surrogate."""
    return str(text).encode("ascii", "backslashreplace").decode("ascii")


def _text_width(text: str, scale: float) -> int:
    """Width in pixels of ``text`` drawn at ``scale`` (after ``drawable_text``)."""
    return cv2.getTextSize(drawable_text(text), _FONT, scale, 1)[0][0]


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, anchor: str = "left") -> None:
    """Draw text with its baseline at org; anchor 'left', 'centre' or 'right' aligns horizontally. Non-ASCII
    characters are drawn escaped (``drawable_text``)."""
    text = drawable_text(text)
    (width, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    shift = {"left": 0, "centre": width // 2, "right": width}[anchor]
    cv2.putText(canvas, text, (org[0] - shift, org[1]), _FONT, scale, _BLACK, 1, cv2.LINE_AA)


def _vertical_text(canvas: np.ndarray, text: str, centre: tuple[int, int], scale: float = 0.45) -> None:
    """Draw text rotated 90 degrees counter-clockwise, centred at centre (x, y); escaped as ``_text`` does."""
    text = drawable_text(text)
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, 1)
    strip = np.full((height + baseline + 4, width + 4, 3), 255, np.uint8)
    cv2.putText(strip, text, (2, height + 2), _FONT, scale, _BLACK, 1, cv2.LINE_AA)
    strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    top, left = centre[1] - strip.shape[0] // 2, centre[0] - strip.shape[1] // 2
    h = min(strip.shape[0], canvas.shape[0] - max(top, 0))
    w = min(strip.shape[1], canvas.shape[1] - max(left, 0))
    if top >= 0 and left >= 0 and h > 0 and w > 0:
        canvas[top : top + h, left : left + w] = np.minimum(canvas[top : top + h, left : left + w], strip[:h, :w])


def _dashed_line(canvas: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], colour, dash: int = 8) -> None:
    """A straight dashed line from p0 to p1 (dash and gap of ``dash`` pixels)."""
    length = float(np.hypot(p1[0] - p0[0], p1[1] - p0[1]))
    steps = max(int(length // dash), 1)
    for i in range(0, steps, 2):
        a, b = i / steps, min(i + 1, steps) / steps
        start = (round(p0[0] + a * (p1[0] - p0[0])), round(p0[1] + a * (p1[1] - p0[1])))
        end = (round(p0[0] + b * (p1[0] - p0[0])), round(p0[1] + b * (p1[1] - p0[1])))
        cv2.line(canvas, start, end, colour, 1, cv2.LINE_AA)


def _check_limits(name: str, limits: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in limits)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ConfigError(f"{name} must be (low, high) with low < high, both finite; found {limits}.")
    return low, high


def _check_curve(index: int, x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 1:
        raise DataError(f"curve {index}: x and y must be 1-D of the same length >= 1; found {x.shape} and {y.shape}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError(f"curve {index}: x and y must be finite; found NaN or inf. Drop those points first.")
    return x, y


def _write_png(path: str | Path, canvas: np.ndarray) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"plot files are PNG; expected a path ending in .png, found {str(path)!r}.")
    write_png(path, canvas)
    return path


# ---------------------------------------------------------------- line plots


def save_line_plot(
    path: str | Path,
    curves: list[tuple[np.ndarray, np.ndarray, str]],
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    ylim: tuple[float, float] = (0.0, 1.0),
    vline: float | None = None,
    size: tuple[int, int] = (640, 480),
    diagonal: bool = False,
) -> Path:
    """Draw curves on white axes and write a PNG of ``size`` = (width, height) pixels.

    curves: list of (x (K,) float, y (K,) float, label); label '' leaves the curve out of the legend.
    Ticks at 0, 25, 50, 75 and 100 % of each axis span. Points outside xlim/ylim are clipped to the
    axes box. vline: x of a dashed grey vertical line (e.g. the FPR limit of AUPRO), or None.
    diagonal: also draw the dashed grey line y = x (the chance level of a ROC curve).
    Creates missing parent folders. Returns the path written; raises ConfigError for bad limits,
    size or a non-.png path, DataError for malformed curves or a failed write.
    """
    width, height = (int(v) for v in size)
    left, right, top, bottom = _MARGINS
    if width < left + right + 50 or height < top + bottom + 50:
        raise ConfigError(f"size must be at least {(left + right + 50, top + bottom + 50)} pixels; found {size}.")
    (x0, x1), (y0, y1) = _check_limits("xlim", xlim), _check_limits("ylim", ylim)
    checked = [(*_check_curve(i, x, y), label) for i, (x, y, label) in enumerate(curves)]
    canvas = np.full((height, width, 3), 255, np.uint8)
    box_w, box_h = width - left - right, height - top - bottom

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = left + (np.clip(x, x0, x1) - x0) / (x1 - x0) * box_w
        py = top + box_h - (np.clip(y, y0, y1) - y0) / (y1 - y0) * box_h
        return np.round(np.column_stack([px, py])).astype(np.int32)

    for frac in _TICKS:  # grid, ticks and tick labels
        gx, gy = left + round(frac * box_w), top + box_h - round(frac * box_h)
        cv2.line(canvas, (gx, top), (gx, top + box_h), (235, 235, 235), 1)
        cv2.line(canvas, (left, gy), (left + box_w, gy), (235, 235, 235), 1)
        cv2.line(canvas, (gx, top + box_h), (gx, top + box_h + 5), _BLACK, 1)
        cv2.line(canvas, (left - 5, gy), (left, gy), _BLACK, 1)
        _text(canvas, f"{x0 + frac * (x1 - x0):g}", (gx, top + box_h + 20), 0.4, "centre")
        _text(canvas, f"{y0 + frac * (y1 - y0):g}", (left - 8, gy + 5), 0.4, "right")
    cv2.rectangle(canvas, (left, top), (left + box_w, top + box_h), _BLACK, 1)
    if vline is not None:
        vx = int(to_px(np.array([vline]), np.array([y0]))[0, 0])
        _dashed_line(canvas, (vx, top), (vx, top + box_h), _GREY)
    if diagonal:
        low, high = max(x0, y0), min(x1, y1)
        if low < high:
            ends = to_px(np.array([low, high]), np.array([low, high]))
            _dashed_line(canvas, tuple(ends[0].tolist()), tuple(ends[1].tolist()), _GREY)
    for i, (x, y, _) in enumerate(checked):
        points = to_px(x, y)
        keep = np.r_[True, np.any(points[1:] != points[:-1], axis=1)]  # one vertex per pixel step
        cv2.polylines(canvas, [points[keep]], False, _CURVE_COLOURS[i % len(_CURVE_COLOURS)], 2, cv2.LINE_AA)
    legend = [(i, label) for i, (_, _, label) in enumerate(checked) if label]
    for row, (i, label) in enumerate(legend):  # legend in the lower-right corner of the box
        y_row = top + box_h - 12 - 20 * (len(legend) - 1 - row)
        x_row = left + box_w - 12 - _text_width(label, 0.45)
        cv2.line(canvas, (x_row - 28, y_row - 4), (x_row - 6, y_row - 4), _CURVE_COLOURS[i % len(_CURVE_COLOURS)], 2)
        _text(canvas, label, (x_row, y_row))
    _text(canvas, title, (left + box_w // 2, top - 14), 0.55, "centre")
    _text(canvas, xlabel, (left + box_w // 2, height - 10), 0.45, "centre")
    _vertical_text(canvas, ylabel, (16, top + box_h // 2))
    return _write_png(path, canvas)


def save_roc_plot(path: str | Path, fpr: np.ndarray, tpr: np.ndarray, auroc: float, name: str = "ROC", **kw) -> Path:
    """ROC curve PNG. fpr, tpr: (K,) float in [0, 1] (e.g. from ``metrics.roc_curve``); auroc in [0, 1].
    The title shows the AUROC in percent; keyword arguments go to ``save_line_plot`` (e.g. size)."""
    title = f"{name}  AUROC = {100 * auroc:.1f}%"
    return save_line_plot(path, [(fpr, tpr, "")], title, "false positive rate", "true positive rate", diagonal=True, **kw)


def save_pro_plot(
    path: str | Path, fpr: np.ndarray, pro: np.ndarray, aupro: float, fpr_limit: float = 0.3, name: str = "PRO", **kw
) -> Path:
    """PRO curve PNG with a dashed vertical line at fpr_limit. fpr, pro: (K,) float in [0, 1] (e.g. from
    ``metrics.pro_curve``); aupro: the normalised area to fpr_limit, shown in percent in the title."""
    title = f"{name}  AUPRO@{fpr_limit:g} = {100 * aupro:.1f}%"
    return save_line_plot(path, [(fpr, pro, "")], title, "false positive rate", "per-region overlap", vline=fpr_limit, **kw)


# ---------------------------------------------------------------- overlays
FUSED_HALF_SCALE = 3.0   # a fused map's heat scale: its threshold -/+ this many normal spreads (heat_scale)


def drawable(anomaly_map: np.ndarray) -> bool:
    """Whether ``heatmap_overlay`` can draw this map: no inf, and at least one scored (not NaN) pixel."""
    return not np.isinf(anomaly_map).any() and not np.isnan(anomaly_map).all()


def heat_scale(anomaly_map: np.ndarray, threshold: float | None, fused: bool = False) -> tuple[float, float]:
    """(vmin, vmax): the map values a station's heat map (NG images, the console) shows as dark blue and dark red,
    the same on every image at one threshold, with ``threshold`` the middle of the colour map (green): pixels above it
    yellow to red, those below cyan to blue.

    anomaly_map: (h, w) float, NaN = unscored (``drawable``). fused: the map is a fused bundle's
    (``records.Verdict.fused``), in its members' normal-spread units (``runtime.fusion``: about -2 .. 0 on normal
    parts and far lower at their edges, whatever the threshold's sign): threshold -/+ ``FUSED_HALF_SCALE`` normal
    spreads. A single bundle's (map >= 0): 0 .. 2 x threshold for a threshold > 0, else threshold -/+
    ``FUSED_HALF_SCALE``. The scale follows what the map is, not the threshold's sign: a fused threshold just above 0
    got 0 .. 2 x threshold, every pixel under 0 dark blue. threshold None or not finite: min(0, the map's minimum) ..
    its maximum."""
    if threshold is not None and math.isfinite(threshold):
        if threshold > 0 and not fused:
            return 0.0, 2.0 * threshold
        return threshold - FUSED_HALF_SCALE, threshold + FUSED_HALF_SCALE
    return min(0.0, float(np.nanmin(anomaly_map))), float(np.nanmax(anomaly_map)) + 1e-6


def heatmap_overlay(
    image_bgr: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5
) -> np.ndarray:
    """Blend a JET-coloured anomaly map over an image.

    image_bgr: (H, W, 3) uint8 BGR. anomaly_map: (h, w) float (any size; resized to (H, W) with
    bilinear interpolation); NaN = no score there (a model tiled over part of the frame,
    ``tiling.place_on_frame``): the image is left as it is. vmin, vmax: map values shown as dark blue and
    dark red; values outside are clipped. alpha: weight of the heat map (0.5 = equal blend).
    Returns (H, W, 3) uint8 BGR; the same inputs always give the same output.
    """
    image_bgr = np.asarray(image_bgr)
    anomaly_map = np.asarray(anomaly_map)
    if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise DataError(f"image_bgr must be (H, W, 3) uint8 BGR; found {image_bgr.shape} {image_bgr.dtype}.")
    if anomaly_map.ndim != 2 or anomaly_map.dtype.kind != "f" or anomaly_map.size == 0:
        raise DataError(
            f"anomaly_map must be (h, w) float; found {anomaly_map.shape} {anomaly_map.dtype}. For (1, h, w) pass map[0]."
        )
    if not drawable(anomaly_map):
        raise DataError("anomaly_map holds inf, or NaN everywhere; fix the scorer output first.")
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise ConfigError(f"need finite vmin < vmax; found vmin={vmin}, vmax={vmax}.")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1]; found {alpha}.")
    height, width = image_bgr.shape[:2]
    resized = cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    unscored = np.isnan(resized)
    scaled = np.clip((np.where(unscored, vmin, resized) - vmin) / (vmax - vmin), 0.0, 1.0) * 255.0
    heat = cv2.applyColorMap(np.round(scaled).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(image_bgr, 1.0 - alpha, heat, alpha, 0.0)
    blended[unscored] = image_bgr[unscored]
    return blended


# ---------------------------------------------------------------- readable heat-map panels
_BAR_WIDTH = 70  # colour bar with its tick labels, pixels
_OUTLINE = (255, 255, 255)  # mask outline colour (BGR)
_LINE_HEIGHT = 22  # text strip line height, pixels


def colour_bar(height: int, vmin: float, vmax: float, threshold: float | None = None) -> np.ndarray:
    """A vertical JET scale for map values vmin (bottom) .. vmax (top), with tick labels and, when
    given, the threshold as a black line. Returns (height, _BAR_WIDTH, 3) uint8 BGR."""
    bar = np.full((height, _BAR_WIDTH, 3), 255, np.uint8)
    ramp = np.linspace(255, 0, height).round().astype(np.uint8)[:, None]
    bar[:, :16] = cv2.applyColorMap(np.repeat(ramp, 16, axis=1), cv2.COLORMAP_JET)
    for frac in (0.0, 0.5, 1.0):
        y = int(round((1.0 - frac) * (height - 1)))
        _text(bar, f"{vmin + frac * (vmax - vmin):.3g}", (20, min(max(y + 4, 10), height - 2)), scale=0.35)
    if threshold is not None and vmin <= threshold <= vmax:
        y = int(round((vmax - threshold) / (vmax - vmin) * (height - 1)))
        cv2.line(bar, (0, y), (18, y), _BLACK, 2)
        _text(bar, "thr", (20, min(max(y + 4, 10), height - 2)), scale=0.35)
    return bar


def threshold_mark(score: float, anomaly_map: np.ndarray, threshold: float | None) -> tuple[float | None, list[str]]:
    """Whether a panel may mark ``threshold`` (image-score scale) on the colour scale of ``anomaly_map`` ((h, w)
    float, NaN = unscored): only when ``score`` is the map's maximum (within 1e-3 relative). PatchCore's default
    re-weighting multiplies the maximum by a weight in (0, 1], a top-k score averages pixels: there a map pixel
    above the mark does not mean a score above the threshold. Returns (threshold, []) when the mark is true, else
    (None, [a text line giving the map's maximum and why the threshold is not marked])."""
    if threshold is None or not drawable(anomaly_map):
        return threshold, []
    top = float(np.nanmax(anomaly_map))
    if abs(score - top) <= 1e-3 * max(abs(score), abs(top)) + 1e-9:
        return threshold, []
    return None, [f"map max {top:.4f}; score != map max, thr not marked"]


def text_strip(width: int, lines: list[str]) -> np.ndarray:
    """White strip with one line of black text per entry. Returns (22 * len(lines) + 6, width, 3) uint8."""
    strip = np.full((_LINE_HEIGHT * len(lines) + 6, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        _text(strip, line, (6, _LINE_HEIGHT * (i + 1)), scale=0.5)
    return strip


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with the boundary of ``mask`` (any size, nonzero = defect) drawn on it."""
    height, width = image.shape[:2]
    resized = cv2.resize(np.asarray(mask, np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours((resized > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = image.copy()
    cv2.drawContours(out, contours, -1, _OUTLINE, max(1, height // 200))
    return out


def heatmap_panel(image_bgr: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, lines: list[str], *,
                  threshold: float | None = None, mask: np.ndarray | None = None, show_original: bool = True,
                  alpha: float = 0.5, min_side: int = 256,
                  marks: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """A figure a person can read: text lines on top (score, threshold, source), then the image as
    captured, the heat map over it, and the colour scale (with the threshold marked).
    marks: draws on the heat-map panel at frame size, e.g. defect region boxes (``regions.draw_regions``).

    image_bgr: (H, W, 3) uint8 BGR. anomaly_map: (h, w) float. mask: optional (h', w') ground truth,
    outlined on both panels. Images smaller than ``min_side`` are enlarged (nearest neighbour).
    Returns (rows, cols, 3) uint8 BGR.
    """
    overlay = heatmap_overlay(image_bgr, anomaly_map, vmin, vmax, alpha)
    original = np.asarray(image_bgr)
    if mask is not None:
        original, overlay = _outline(original, mask), _outline(overlay, mask)
    if marks is not None:
        overlay = marks(overlay)
    if original.shape[0] < min_side:
        size = (round(original.shape[1] * min_side / original.shape[0]), min_side)
        original, overlay = (cv2.resize(p, size, interpolation=cv2.INTER_NEAREST) for p in (original, overlay))
    panels = [original, overlay] if show_original else [overlay]
    row = np.concatenate([*panels, colour_bar(overlay.shape[0], vmin, vmax, threshold)], axis=1)
    return np.concatenate([text_strip(row.shape[1], lines), row], axis=0)

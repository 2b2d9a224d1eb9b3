"""The fused kernel's high-pass as a small separable spatial filter, chosen to match the FFT reference.

The reference (``fair_edge.preprocess.highpass_reference``) multiplies the centred spectrum of the
S x S gray image by H and takes the real inverse FFT. Equivalently (circular convolution theorem)

    highpass = g - l (*) g,   l = real(ifft2(ifftshift(1 - H)))   (circular, S x S taps)

The fused CUDA kernel cannot do an FFT inside one tile, so it uses an approximation of l that is

  1. truncated to a (2R+1) x (2R+1) window around the origin (l decays quickly for the paper's
     settings), and
  2. written as a sum of ``rank`` separable terms (truncated SVD of the window), so one output
     costs ~ rank * 2 * (2R+1) multiply-adds instead of (2R+1)^2, and
  3. DC-corrected: highpass = c0 * g - sum_k col_k (*) (row_k (*) g) with
     c0 = 1 + sum(window approx) - sum(l), so a flat image still gives exactly 0 (the reference's
     DC gain), however the window is cut.

(R, rank) is the cheapest pair whose error, measured on the kernel alone, meets ``ERROR_BUDGET``:
  white    ||dk||_2 / ||h||_2              relative L2 error on white noise,
  natural  the same for a 1/f^2 power spectrum (the usual model of natural images),
  smooth   the same for a 1/f^4 power spectrum (smooth products, e.g. the ELPV solar cells,
           whose high-pass is tiny so low-frequency kernel error shows; 1/f^2 alone let a
           rank-6 default through that measured 1.07e-3 on a real cell image),
  max      0.5 * ||dk||_1                   worst-case max abs error for any input in [0, 1]
where dk = approximate - exact high-pass kernel (DC-free by construction). The remaining budget
(reference tolerance 1e-3) is left to float32 arithmetic, the resize and FP16 output rounding.
Filters with no compact kernel are refused with a ``ConfigError``: ideal, cutoffs so low that the
kernel is wider than ``MAX_RADIUS`` and cutoffs so high that it rings; the error names the nearest
cutoffs that work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

from fair_edge.errors import ConfigError
from fair_edge.preprocess import PreprocessConfig, highpass_transfer

TILE = 32  # output tile side of one CUDA block; must match TILE in preprocess_kernel.cu
MAX_RADIUS = 64  # shared memory: (TILE + 2R)^2 floats; R = 64 -> 124 KiB, fits H100 and Orin opt-in
MAX_RANK = 16
RADII = (2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64)
ERROR_BUDGET = {"white": 2e-4, "natural": 2e-4, "smooth": 2e-4, "max": 5e-4}


@dataclass(frozen=True)
class HighpassPlan:
    """The spatial high-pass the fused kernel applies.

    filter: 'butterworth' | 'gaussian' | 'sobel_xy'. image_size: S, pixels. radius: R, taps per side.
    rank: separable terms (0 for sobel_xy). centre: c0 (dimensionless). row_taps, col_taps:
    (rank, 2R+1) float32, host memory; row taps run along x (columns), col taps along y (rows).
    errors: the measured kernel-only errors named in ``ERROR_BUDGET`` (empty for sobel_xy).
    """

    filter: str
    image_size: int
    radius: int
    rank: int
    centre: float
    row_taps: np.ndarray
    col_taps: np.ndarray
    errors: dict

    @property
    def channels(self) -> int:
        """Channels of the high-pass output: 2 for sobel_xy, else 1."""
        return 2 if self.filter == "sobel_xy" else 1

    @property
    def taps_per_output(self) -> float:
        """Multiply-adds per output pixel including the tile halo (the kernel's arithmetic cost)."""
        if self.filter == "sobel_xy":
            return 12.0
        span = 2 * self.radius + 1
        return self.rank * span * ((TILE + 2 * self.radius) / TILE + 1.0)


def lowpass_kernel(cfg: PreprocessConfig) -> np.ndarray:
    """(S, S) float64 circular low-pass kernel l, centred at (S // 2, S // 2)."""
    lowpass = 1.0 - np.fft.ifftshift(highpass_transfer(cfg))
    return np.fft.fftshift(np.real(np.fft.ifft2(lowpass)))


def _natural_weight(size: int) -> np.ndarray:
    freq = np.fft.fftfreq(size) * size
    power = freq[:, None] ** 2 + freq[None, :] ** 2
    power[0, 0] = np.inf
    return 1.0 / power


def _errors(delta: np.ndarray, exact_hp: np.ndarray, weight: np.ndarray) -> dict:
    """Kernel-only errors of an (S, S) DC-free kernel difference ``delta`` (centred)."""
    spec_delta = np.abs(np.fft.fft2(np.fft.ifftshift(delta))) ** 2
    spec_exact = np.abs(np.fft.fft2(np.fft.ifftshift(exact_hp))) ** 2
    return {
        "white": float(np.sqrt(spec_delta.sum() / spec_exact.sum())),
        "natural": float(np.sqrt((spec_delta * weight).sum() / (spec_exact * weight).sum())),
        "smooth": float(np.sqrt((spec_delta * weight**2).sum() / (spec_exact * weight**2).sum())),
        "max": float(0.5 * np.abs(delta).sum()),
    }


def _within_budget(errors: dict) -> bool:
    return all(errors[k] <= v for k, v in ERROR_BUDGET.items())


def _candidate(l_full: np.ndarray, radius: int, rank: int, svd, weight) -> tuple[dict, float, np.ndarray]:
    size = l_full.shape[0]
    c = size // 2
    u, s, vt = svd
    approx = (u[:, :rank] * s[:rank]) @ vt[:rank]
    centre = 1.0 + approx.sum() - l_full.sum()
    exact_hp = -l_full.copy()
    exact_hp[c, c] += 1.0
    approx_hp = np.zeros_like(l_full)
    approx_hp[c - radius : c + radius + 1, c - radius : c + radius + 1] = -approx
    approx_hp[c, c] += centre
    return _errors(approx_hp - exact_hp, exact_hp, weight), centre, approx


def plan_highpass(cfg: PreprocessConfig, max_radius: int = MAX_RADIUS) -> HighpassPlan:
    """Choose the cheapest (R <= max_radius, rank) meeting ``ERROR_BUDGET`` for ``cfg``.

    ConfigError if none does; its message names the nearest cutoffs, below and above, that work.
    """
    if cfg.filter == "ideal":
        raise ConfigError(
            "filter 'ideal' has no compact spatial kernel (its inverse FFT decays like 1/r), so the fused "
            "CUDA kernel cannot reproduce it; expected butterworth, gaussian or sobel_xy. Retrain with "
            "filter='butterworth' (the paper's best) or run pre-processing on the FFT path "
            "(fair_edge.preprocess.HighPass)."
        )
    plan, radius, floor = _cheapest_plan(cfg, max_radius)
    if plan is not None:
        return plan
    below, above = nearest_supported_cutoffs(cfg, max_radius)
    options = [f"cutoff={c:g} ({side})" for c, side in ((below, "lower"), (above, "higher")) if c is not None]
    hint = (f"The nearest cutoffs that work: {' or '.join(options)}; retrain with one of them," if options
            else "No cutoff within a factor of 5 either way works; retrain with another filter,")
    raise ConfigError(
        f"{cfg.filter} high-pass with cutoff={cfg.cutoff:g}, order={cfg.order} at image_size={cfg.image_size} "
        f"has no compact spatial kernel within the fused kernel's limits: at radius {radius} its errors "
        f"are {', '.join(f'{k} {v:.1e}' for k, v in floor.items())}; expected at most "
        f"{', '.join(f'{k} {v:.0e}' for k, v in ERROR_BUDGET.items())}. {hint} "
        "or run pre-processing on the FFT path (fair_edge.preprocess.HighPass)."
    )


def nearest_supported_cutoffs(cfg: PreprocessConfig, max_radius: int = MAX_RADIUS, steps: int = 12,
                              factor: float = 1.15) -> tuple[float | None, float | None]:
    """The nearest cutoffs below and above ``cfg.cutoff`` (geometric steps of ``factor``, rounded to 0.1)
    that have a plan; None on a side where ``steps`` steps find none. Too low a cutoff needs a wider
    kernel than ``max_radius``; too high a one rings up to the Nyquist frequency, which no short kernel
    follows."""
    found: list[float | None] = []
    for sign in (-1, 1):
        hit = None
        for k in range(1, steps + 1):
            cutoff = round(cfg.cutoff * factor ** (sign * k), 1)
            if 0 < cutoff < cfg.image_size and _cheapest_plan(replace(cfg, cutoff=cutoff), max_radius)[0] is not None:
                hit = cutoff
                break
        found.append(hit)
    return found[0], found[1]


@lru_cache(maxsize=128)
def _cheapest_plan(cfg: PreprocessConfig, max_radius: int) -> tuple[HighpassPlan | None, int, dict]:
    """(plan, 0, {}) for the cheapest plan, or (None, largest radius tried, its best errors)."""
    if cfg.filter == "sobel_xy":
        empty = np.zeros((0, 3), np.float32)
        return HighpassPlan("sobel_xy", cfg.image_size, 1, 0, 1.0, empty, empty, {}), 0, {}
    l_full = lowpass_kernel(cfg)
    weight = _natural_weight(cfg.image_size)
    c = cfg.image_size // 2
    best, tried = None, []
    for radius in (r for r in RADII if r <= min(max_radius, (cfg.image_size - 1) // 2)):
        if best is not None and (2 * radius + 1) * ((TILE + 2 * radius) / TILE + 1.0) >= best.taps_per_output:
            break  # even rank 1 at this radius costs more than the best plan
        window = l_full[c - radius : c + radius + 1, c - radius : c + radius + 1]
        svd = np.linalg.svd(window)
        max_rank = min(MAX_RANK, 2 * radius + 1)
        floor, _, _ = _candidate(l_full, radius, max_rank, svd, weight)
        tried.append((radius, floor))
        if not _within_budget(floor):
            continue
        for rank in range(1, max_rank + 1):
            errors, centre, _ = _candidate(l_full, radius, rank, svd, weight)
            if _within_budget(errors):
                break
        u, s, vt = svd
        plan = HighpassPlan(
            cfg.filter, cfg.image_size, radius, rank, float(centre),
            row_taps=np.ascontiguousarray((vt[:rank] * s[:rank, None]).astype(np.float32)),
            col_taps=np.ascontiguousarray(u[:, :rank].T.astype(np.float32)),
            errors=errors,
        )
        if best is None or plan.taps_per_output < best.taps_per_output:
            best = plan
    if best is not None:
        return best, 0, {}
    radius, floor = tried[-1] if tried else (0, {})
    return None, radius, floor


def separable_highpass(cfg: PreprocessConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The fused kernel's taps run on the CPU: ``cv2.sepFilter2D`` per separable term, circular (as the FFT
    reference), c0 * g - sum_k col_k (*) (row_k (*) g); within the plan's error budget (about 2e-4 relative)
    of the reference. (B, S, S) float32 gray -> (B, 1, S, S) float32.

    Raises ConfigError (from ``plan_highpass``) for filters with no compact kernel, e.g. 'ideal'."""
    plan = plan_highpass(cfg)
    r, centre = plan.radius, np.float32(plan.centre)

    def one(g: np.ndarray) -> np.ndarray:
        padded = cv2.copyMakeBorder(g, r, r, r, r, cv2.BORDER_WRAP)  # circular, as the FFT reference
        acc = np.zeros_like(g)
        for row, col in zip(plan.row_taps, plan.col_taps):  # correlation: out[i] += w[j] * g[i + j - R]
            acc += cv2.sepFilter2D(padded, cv2.CV_32F, row, col, borderType=cv2.BORDER_CONSTANT)[r:-r, r:-r]
        return centre * g - acc

    def run(gray: np.ndarray) -> np.ndarray:
        return np.stack([one(g) for g in gray])[:, None]

    return run

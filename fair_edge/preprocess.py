"""The one definition of FAIR's model input: resize -> [0, 1] float -> BT.601 gray -> high-pass.

Every consumer (training, evaluation, export, the CUDA kernel's tests, the CPU runtime path)
uses the functions here, so a model always sees at run time what it saw in training. The CPU
runtime's pipeline (``CpuPipeline``, NumPy and OpenCV, no torch ops) is at the end of this file.

Order of operations, for a camera frame of any size:
  1. uint8 -> float32 in [0, 1] (x / 255),
  2. bilinear resize to ``image_size`` x ``image_size`` with OpenCV INTER_LINEAR semantics
     (half-pixel centres, edge samples clamped, no anti-aliasing, no centre crop),
  3. BGR -> RGB (the colour image the score compares; gray frames are replicated),
  4. gray = 0.299 R + 0.587 G + 0.114 B (BT.601, OpenCV's BGR2GRAY weights),
  5. high-pass of the gray image.
Resizing the float image equals resizing then converting, because both steps are linear;
doing it in float avoids the uint8 rounding OpenCV applies to 8-bit resizes.

High-pass filters (frequency domain, centred spectrum of the S x S image, circular):
  butterworth  H = 1 / (1 + (D0 / (D + 1e-6)) ** (2 n))      (default: D0 = 30, n = 2)
  gaussian     H = 1 - exp(-D^2 / (2 D0^2))
  ideal        H = [D > D0]
where D(u, v) is the distance of frequency (u, v) from the spectrum centre (S // 2, S // 2)
and the output is the real part of the inverse FFT. ``sobel_xy`` is spatial instead: the
3x3 Sobel gx and gy of the gray image (reflect-101 border, as OpenCV's default), two channels.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fair_edge.errors import ConfigError, DataError
from fair_edge.tiling import TilingConfig

COLOUR = "colour"       # the model input names this module makes (``fair_edge.models.tensors`` re-exports them)
HIGHPASS = "highpass"

FILTERS = ("butterworth", "gaussian", "ideal", "sobel_xy")
# still-image files read as frames (lower-case, compared case-insensitively): the one list of training data,
# eval, build, fuse, tune, rules check (training.data) and the station's folder replay (cameras.replay)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PAPER_IMAGE_SIZE = 256  # pixels
PAPER_CUTOFF = 30.0  # D0 at PAPER_IMAGE_SIZE, frequency-index units


def scaled_cutoff(image_size: int) -> float:
    """The default D0 at ``image_size``: the paper's 30 at 256 px scaled to keep the same cutoff in cycles
    per pixel (30 * S / 256, e.g. 15 at 128 px), so the filter's spatial footprint in pixels stays the same."""
    return PAPER_CUTOFF * image_size / PAPER_IMAGE_SIZE
GRAY_WEIGHTS_RGB = (0.299, 0.587, 0.114)
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that define the model input.

    image_size: side of the square model input, pixels. filter: one of ``FILTERS``.
    cutoff: D0 in frequency-index units of the image_size x image_size spectrum (cycles per image
    side); None (the default) = ``scaled_cutoff(image_size)``, the paper's 30 at 256 px scaled to the size.
    order: Butterworth order n (ignored by the other filters).
    tiling: None (the whole frame is resized to image_size) or a TilingConfig (each tile of the
    frame is resized to image_size; see fair_edge.tiling).
    """

    image_size: int = PAPER_IMAGE_SIZE
    filter: str = "butterworth"
    cutoff: float | None = None
    order: int = 2
    tiling: TilingConfig | None = None

    def __post_init__(self) -> None:
        if self.filter not in FILTERS:
            raise ConfigError(f"filter must be one of {', '.join(FILTERS)}; found {self.filter!r}.")
        if not (isinstance(self.image_size, int) and 16 <= self.image_size <= 4096):
            raise ConfigError(f"image_size must be an integer in 16..4096 pixels; found {self.image_size!r}.")
        if self.cutoff is None:
            object.__setattr__(self, "cutoff", scaled_cutoff(self.image_size))
        if not self.cutoff > 0:
            raise ConfigError(f"cutoff (D0) must be > 0; found {self.cutoff!r}. The paper's default is 30 at 256 px.")
        if not (isinstance(self.order, int) and self.order >= 1):
            raise ConfigError(f"Butterworth order must be an integer >= 1; found {self.order!r}.")

    @property
    def in_channels(self) -> int:
        """Channels of the high-pass image: 2 for sobel_xy, else 1."""
        return 2 if self.filter == "sobel_xy" else 1

    def to_dict(self) -> dict:
        return dict(asdict(self), tiling=self.tiling.to_dict() if self.tiling else None)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        return cls(
            image_size=int(data["image_size"]),
            filter=str(data["filter"]),
            cutoff=float(data["cutoff"]),
            order=int(data["order"]),
            tiling=TilingConfig.from_dict(data.get("tiling")),
        )


# ----------------------------------------------------------------------------- transfer function
def centred_distance(size: int) -> np.ndarray:
    """(size, size) float64: distance of each centred-spectrum index from (size // 2, size // 2)."""
    idx = np.arange(size, dtype=np.float64) - size // 2
    return np.sqrt(idx[:, None] ** 2 + idx[None, :] ** 2)


def highpass_transfer(cfg: PreprocessConfig) -> np.ndarray:
    """(S, S) float64 high-pass transfer function H on the *centred* spectrum (fftshift order)."""
    if cfg.filter == "sobel_xy":
        raise ConfigError("sobel_xy is a spatial filter and has no frequency transfer function.")
    d = centred_distance(cfg.image_size)
    if cfg.filter == "butterworth":
        return 1.0 / (1.0 + (cfg.cutoff / (d + 1e-6)) ** (2 * cfg.order))
    if cfg.filter == "gaussian":
        return 1.0 - np.exp(-(d**2) / (2.0 * cfg.cutoff**2))
    return (d > cfg.cutoff).astype(np.float64)  # ideal


# ----------------------------------------------------------------------------- float64 reference
def resize_linear_reference(image: np.ndarray, size: int) -> np.ndarray:
    """OpenCV INTER_LINEAR resize, written out in float64 (the definition the kernel is tested against).

    image: (H, W) or (H, W, C) float. Returns (size, size[, C]) float64.
    Source coordinate of output pixel i: (i + 0.5) * (H / size) - 0.5, clamped at 0; the two
    neighbours are clamped to the image; no anti-aliasing when shrinking.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[:2]

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        frac = src - i0
        i0 = np.minimum(i0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, frac

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    if img.ndim == 3:
        fy, fx = fy[:, None, None], fx[None, :, None]
    else:
        fy, fx = fy[:, None], fx[None, :]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def highpass_reference(gray: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Float64 NumPy high-pass. gray: (S, S). Returns (C, S, S) float64, C = cfg.in_channels."""
    gray = np.asarray(gray, dtype=np.float64)
    if cfg.filter == "sobel_xy":
        padded = np.pad(gray, 1, mode="reflect")  # reflect-101, OpenCV's default border
        gx = np.zeros_like(gray)
        for dy in range(3):
            for dx in range(3):
                gx += SOBEL_X[dy, dx] * padded[dy : dy + gray.shape[0], dx : dx + gray.shape[1]]
        gy = np.zeros_like(gray)
        for dy in range(3):
            for dx in range(3):
                gy += SOBEL_X.T[dy, dx] * padded[dy : dy + gray.shape[0], dx : dx + gray.shape[1]]
        return np.stack([gx, gy])
    spectrum = np.fft.fftshift(np.fft.fft2(gray))
    filtered = np.fft.ifft2(np.fft.ifftshift(spectrum * highpass_transfer(cfg)))
    return np.real(filtered)[None]


def frame_to_float(frame: np.ndarray) -> np.ndarray:
    """Check a camera frame and scale it to [0, 1].

    frame: (H, W, 3) uint8 BGR, or (H, W) / (H, W, 1) uint8 gray, host memory.
    Returns (H, W, 3) float32 BGR in [0, 1] (gray replicated to three channels).
    """
    return scale_frame(check_frame(frame))


def scale_frame(frame: np.ndarray) -> np.ndarray:
    """A frame already checked by ``check_frame`` ((H, W, 3) uint8 BGR or (H, W) uint8 gray, host memory)
    -> (H, W, 3) float32 BGR in [0, 1]. The station checks each frame once, in the inspection loop."""
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return frame.astype(np.float32) * np.float32(1.0 / 255.0)


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate a camera frame: (H, W, 3) uint8 BGR, or (H, W) / (H, W, 1) uint8 gray, H, W >= 2.

    Returns the frame as (H, W, 3) or (H, W) (a trailing channel of 1 is dropped, no copy).
    Raises ConfigError naming the expected and found dtype or shape.
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        found = type(frame).__name__ if not isinstance(frame, np.ndarray) else frame.dtype
        raise ConfigError(f"frame must be a uint8 numpy array (H, W, 3) BGR or (H, W) gray; found {found}.")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3) or min(frame.shape[:2]) < 2:
        raise ConfigError(f"frame must have shape (H, W, 3) or (H, W) with H, W >= 2; found {frame.shape}.")
    return frame


def reference_input(frame: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference of the whole pre-processing for one frame.

    frame: (H, W, 3) uint8 BGR or (H, W) uint8 gray. Returns (highpass (C, S, S), colour (3, S, S) RGB),
    both float64; colour is in [0, 1].
    """
    bgr = frame_to_float(frame).astype(np.float64)
    resized = resize_linear_reference(bgr, cfg.image_size)
    rgb = resized[:, :, ::-1].transpose(2, 0, 1)
    gray = GRAY_WEIGHTS_RGB[0] * rgb[0] + GRAY_WEIGHTS_RGB[1] * rgb[1] + GRAY_WEIGHTS_RGB[2] * rgb[2]
    return highpass_reference(gray, cfg), np.ascontiguousarray(rgb)


# ----------------------------------------------------------------------------- runtime (float32)
def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Camera frame -> colour model image with OpenCV (float32, same numbers as the reference).

    frame: (H, W, 3) uint8 BGR or (H, W) uint8 gray, host memory.
    Returns (3, size, size) float32 RGB in [0, 1].
    """
    return resize_float(frame_to_float(frame), size)


def resize_float(bgr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) float32 BGR in [0, 1] -> (3, size, size) float32 RGB (OpenCV INTER_LINEAR)."""
    if bgr.shape[:2] != (size, size):
        bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))


def to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) BT.601 gray, same dtype and device."""
    r, g, b = GRAY_WEIGHTS_RGB
    return r * rgb[:, 0:1] + g * rgb[:, 1:2] + b * rgb[:, 2:3]


class HighPass(nn.Module):
    """The high-pass as a torch module (FFT or Sobel), used by training and the CPU runtime.

    forward: gray (B, 1, S, S) float32 -> (B, C, S, S) float32, C = cfg.in_channels, same device.
    """

    def __init__(self, cfg: PreprocessConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.filter == "sobel_xy":
            gx = torch.tensor(SOBEL_X, dtype=torch.float32)
            self.register_buffer("kernel", torch.stack([gx, gx.T])[:, None], persistent=False)
        else:
            transfer = np.fft.ifftshift(highpass_transfer(cfg))  # to unshifted (fft2) order
            self.register_buffer("kernel", torch.tensor(transfer, dtype=torch.float32), persistent=False)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if gray.ndim != 4 or gray.shape[1] != 1 or tuple(gray.shape[2:]) != (size, size):
            raise ConfigError(f"HighPass expects (B, 1, {size}, {size}); found {tuple(gray.shape)}.")
        gray = gray.float()
        if self.cfg.filter == "sobel_xy":
            return F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="reflect"), self.kernel)
        return torch.fft.ifft2(torch.fft.fft2(gray) * self.kernel).real


def model_input(rgb: torch.Tensor, highpass: HighPass) -> torch.Tensor:
    """(B, 3, S, S) RGB in [0, 1] -> (B, C, S, S) network input (gray, then high-pass)."""
    return highpass(to_gray(rgb))


def frames_to_batch(frames: list[np.ndarray], size: int) -> torch.Tensor:
    """List of camera frames -> (B, 3, size, size) float32 RGB CPU tensor in [0, 1]."""
    return torch.from_numpy(np.stack([resize_frame(f, size) for f in frames]))


# ----------------------------------------------------------------------------- CPU runtime pipeline
# The CPU runtime pre-processing: camera frames -> (highpass, colour) batches, in NumPy and OpenCV.
#
# Same numbers as the float64 reference above; no torch ops, so it never fights
# PyTorch's thread pool for a loaded CPU (a 256 x 256 torch FFT took 74 ms with two threads on a busy
# 2-core machine and 1 ms with one: BENCHMARKS.md). Stages, each timed by ``fair-edge bench --mode stages``:
#
#   copy      uint8 frame -> float32 BGR in [0, 1] (``scale_frame``; frames checked once, by the inspection loop),
#   resize    OpenCV INTER_LINEAR to S x S, BGR -> RGB planes,
#   highpass  BT.601 gray, then the high-pass the pipeline is given; by default the exact one:
#             real FFT x the filter's transfer function (``highpass_transfer``), and for ``sobel_xy``
#             OpenCV Sobel (reflect-101 border). The other method, the fused CUDA kernel's separable
#             taps, lives with its plan (``fair_edge/runtime/highpass_plan.py``); ``runtime.backends.cpu_pipeline``
#             picks by name (``HIGHPASS_METHODS``).

STAGES = ("copy", "resize", "highpass")


class StageClock:
    """Accumulates seconds per named stage; ``lap(name)`` charges the time since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


def gray_batch(rgb: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) float32 RGB -> (B, S, S) float32 BT.601 gray."""
    r, g, b = (np.float32(w) for w in GRAY_WEIGHTS_RGB)
    return r * rgb[:, 0] + g * rgb[:, 1] + b * rgb[:, 2]


def _sobel(gray: np.ndarray) -> np.ndarray:
    out = np.empty((len(gray), 2, *gray.shape[1:]), np.float32)
    for i, g in enumerate(gray):
        out[i, 0] = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)
        out[i, 1] = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    return out


def fft_highpass(cfg: PreprocessConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The exact frequency-domain high-pass: (B, S, S) float32 gray -> (B, 1, S, S) float32."""
    size = cfg.image_size
    half = np.fft.ifftshift(highpass_transfer(cfg))[:, : size // 2 + 1]  # rfft2 keeps columns 0..S/2

    def run(gray: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(np.fft.rfft2(gray) * half, s=(size, size)).astype(np.float32)[:, None]

    return run


def exact_highpass(cfg: PreprocessConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The CPU high-pass of ``cfg`` with the reference's numbers: (B, S, S) float32 gray -> (B, C, S, S)
    float32 (the exact FFT filter, or OpenCV's Sobel for ``sobel_xy``). The fused kernel's separable
    taps, run on the CPU, are ``fair_edge.runtime.backends.cpu_pipeline(cfg, "separable")``."""
    return _sobel if cfg.filter == "sobel_xy" else fft_highpass(cfg)


class CpuPipeline:
    """frames -> (highpass (B, C, S, S), colour (B, 3, S, S)) float32 host arrays, stage by stage.

    frames: list of (H, W, 3) uint8 BGR or (H, W) uint8 gray, host memory, any sizes, checked by
    ``preprocess.check_frame`` (the inspection loop checks each frame once; other callers check theirs).
    """

    def __init__(self, cfg: PreprocessConfig, highpass: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.cfg = cfg
        self.highpass = highpass or exact_highpass(cfg)

    def __call__(self, frames: list[np.ndarray], clock: StageClock | None = None) -> tuple[np.ndarray, np.ndarray]:
        clock = clock or StageClock()
        colour = self.colour(frames, clock)
        return self.highpass_of(colour, clock), colour

    def colour(self, frames: list[np.ndarray], clock: StageClock | None = None) -> np.ndarray:
        """The resized RGB images (B, 3, S, S) float32 in [0, 1]; charges 'copy' and 'resize' to ``clock``."""
        size = self.cfg.image_size
        clock = clock or StageClock()
        clock.start()
        colour = np.empty((len(frames), 3, size, size), np.float32)
        for i, frame in enumerate(frames):
            bgr = scale_frame(frame)
            clock.lap("copy")
            colour[i] = resize_float(bgr, size)
            clock.lap("resize")
        return colour

    def highpass_of(self, colour: np.ndarray, clock: StageClock | None = None) -> np.ndarray:
        """(B, 3, S, S) RGB -> (B, C, S, S) float32 high-pass of its gray image; charges 'highpass'."""
        clock = clock or StageClock()
        clock.start()
        highpass = self.highpass(gray_batch(colour))
        clock.lap("highpass")
        return highpass


HOST_BATCH = 32   # frames per pre-processing call in ``host_inputs`` (bounds the float32 copies in flight)


class ModelInputs:
    """frames -> a model's named inputs on the host: the one pre-processing that the build (INT8 calibration,
    threshold, accuracy, quality gate) and the station's CPU backends share (the runtime's ``CpuPreprocessor``
    is this class with a choice of high-pass method). The colour image and a ``highpass`` input come from
    ``CpuPipeline``; any other input from the family's input maker applied to the colour image.
    Returns (B, C, S, S) float32 per input: NumPy arrays (``host`` and every input made by the pipeline) or
    torch tensors on ``device``.

    model: a ``fair_edge.models.registry.ModelSpec`` (input_names, preprocess, input_maker).

    frames: list of (H, W, 3) uint8 BGR (or (H, W) gray) host arrays, checked by ``preprocess.check_frame``.
    pipeline: the ``CpuPipeline`` (default: the exact one of ``model.preprocess``).
    """

    def __init__(self, model, device: torch.device = torch.device("cpu"),
                 pipeline: CpuPipeline | None = None, host: bool = False) -> None:
        self.names, self.device = model.input_names, device
        self.pipeline = pipeline or CpuPipeline(model.preprocess)
        self.make_inputs = model.input_maker("cpu")
        self.host = host and set(self.names) <= {COLOUR, HIGHPASS}

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray], clock: StageClock | None = None) -> dict[str, torch.Tensor | np.ndarray]:
        colour = self.pipeline.colour(frames, clock)
        arrays = {COLOUR: colour}
        if HIGHPASS in self.names:
            arrays[HIGHPASS] = self.pipeline.highpass_of(colour, clock)
        if self.host:
            return {name: arrays[name] for name in self.names}
        inputs = {name: torch.from_numpy(a) for name, a in arrays.items() if name in self.names}
        if len(inputs) < len(self.names):
            inputs = {**self.make_inputs(torch.from_numpy(colour)), **inputs}
        return {name: inputs[name].to(self.device) for name in self.names}


def host_inputs(frames: Iterable[np.ndarray], model, limit: int | None = None) -> dict[str, np.ndarray]:
    """Up to ``limit`` frames as the station's CPU backends feed them to the model.

    frames: iterable of (H, W, 3) uint8 BGR (or (H, W) gray) host arrays.
    Returns {input name: (N, C, S, S) float32 NumPy array}; DataError if N = 0.
    """
    make = ModelInputs(model, host=True)
    frames = list(frames)[:limit]
    if not frames:
        raise DataError("no images to pre-process; pass a folder of normal images.")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in model.input_names}
    for i in range(0, len(frames), HOST_BATCH):
        for name, value in make(frames[i : i + HOST_BATCH]).items():
            parts[name].append(value if isinstance(value, np.ndarray) else value.numpy())
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}

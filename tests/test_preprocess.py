import cv2
import numpy as np
import pytest
import torch

from fair_edge.errors import ConfigError
from fair_edge.preprocess import (
    FILTERS, HighPass, PreprocessConfig, frames_to_batch, highpass_reference, highpass_transfer, reference_input,
    resize_frame, resize_linear_reference, to_gray,
)


def butterworth_by_loops(gray: np.ndarray, d0: float, n: int) -> np.ndarray:
    """The method notes' definition written out independently: centred spectrum, explicit mask loop."""
    rows, cols = gray.shape
    spectrum = np.fft.fftshift(np.fft.fft2(gray))
    mask = np.zeros((rows, cols))
    for u in range(rows):
        for v in range(cols):
            d = np.hypot(u - rows // 2, v - cols // 2)
            mask[u, v] = 1.0 / (1.0 + (d0 / (d + 1e-6)) ** (2 * n))
    return np.real(np.fft.ifft2(np.fft.ifftshift(spectrum * mask)))


def test_reference_equals_the_fft_definition():
    rng = np.random.default_rng(1)
    gray = rng.random((64, 64))
    cfg = PreprocessConfig(image_size=64, cutoff=10.0, order=3)
    np.testing.assert_allclose(highpass_reference(gray, cfg)[0], butterworth_by_loops(gray, 10.0, 3), atol=1e-12)


def test_transfer_function_shapes():
    h = highpass_transfer(PreprocessConfig(image_size=256))
    assert h[128, 128] < 1e-6                      # DC removed
    assert abs(h[128, 128 + 30] - 0.5) < 1e-6       # H(D0) = 1/2 for Butterworth
    g = highpass_transfer(PreprocessConfig(image_size=256, filter="gaussian"))
    assert abs(g[128, 158] - (1 - np.exp(-0.5))) < 1e-12
    ideal = highpass_transfer(PreprocessConfig(image_size=256, filter="ideal"))
    assert ideal[128, 158] == 0 and ideal[128, 159] == 1


@pytest.mark.parametrize("shape", [(256, 256, 3), (480, 640, 3), (777, 1001, 3), (90, 100, 3), (60, 50)])
def test_float64_resize_matches_opencv_inter_linear(shape):
    rng = np.random.default_rng(2)
    img = rng.random(shape).astype(np.float32)
    ours = resize_linear_reference(img, 256)
    theirs = cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


@pytest.mark.parametrize("flt", FILTERS)
def test_torch_highpass_matches_reference(flt):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    cfg = PreprocessConfig(image_size=128, filter=flt, cutoff=15.0)
    ref_hp, ref_col = reference_input(frame, cfg)
    colour = frames_to_batch([frame], 128)
    np.testing.assert_allclose(colour[0].numpy(), ref_col, atol=1e-6)
    hp = HighPass(cfg)(to_gray(colour))[0].numpy()
    assert hp.shape == (cfg.in_channels, 128, 128)
    np.testing.assert_allclose(hp, ref_hp, atol=5e-6)


def test_sobel_matches_opencv():
    rng = np.random.default_rng(4)
    gray = rng.random((64, 64))
    cfg = PreprocessConfig(image_size=64, filter="sobel_xy")
    gx, gy = highpass_reference(gray, cfg)
    np.testing.assert_allclose(gx, cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3), atol=1e-12)
    np.testing.assert_allclose(gy, cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3), atol=1e-12)


def test_gray_and_colour_order():
    frame = np.zeros((20, 20, 3), np.uint8)
    frame[..., 2] = 255  # pure red in BGR
    colour = resize_frame(frame, 16)
    assert colour.shape == (3, 16, 16) and colour.dtype == np.float32
    np.testing.assert_allclose(colour[0], 1.0)  # RGB order: red first
    gray = to_gray(torch.from_numpy(colour)[None])
    np.testing.assert_allclose(gray.numpy(), 0.299, atol=1e-6)
    np.testing.assert_allclose(resize_frame(frame[..., 0], 16), 0.0)  # gray frames are replicated
    assert resize_frame(np.full((9, 9, 1), 255, np.uint8), 16).min() == 1.0


@pytest.mark.parametrize("bad", [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8), [[1, 2]],
                                 np.zeros((1, 10, 3), np.uint8)])
def test_bad_frames_raise_clear_errors(bad):
    with pytest.raises(ConfigError, match="frame must"):
        resize_frame(bad, 16)


def test_config_validation():
    with pytest.raises(ConfigError, match="filter must be one of"):
        PreprocessConfig(filter="laplace")
    with pytest.raises(ConfigError, match="cutoff"):
        PreprocessConfig(cutoff=0)
    assert PreprocessConfig(filter="sobel_xy").in_channels == 2
    cfg = PreprocessConfig(image_size=128, cutoff=12.5)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="expects"):
        HighPass(cfg)(torch.zeros(1, 1, 64, 64))

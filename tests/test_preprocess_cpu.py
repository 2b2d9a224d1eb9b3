"""The CPU runtime pre-processing (NumPy / OpenCV) against the float64 reference, both high-pass methods."""

import numpy as np
import pytest

from fair_edge.errors import ConfigError
from fair_edge.preprocess import CpuPipeline, PreprocessConfig, StageClock, reference_input
from fair_edge.runtime.backends import cpu_pipeline
from frames import KERNEL_CONFIGS, random_frame

SEPARABLE_TOL = 1e-3  # the fused kernel's budget against the reference (fair_edge/runtime/FUSED_KERNEL.md)


def reference_batch(frames, cfg):
    pairs = [reference_input(f, cfg) for f in frames]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.mark.parametrize("cfg", KERNEL_CONFIGS + (PreprocessConfig(filter="ideal", image_size=64),),
                         ids=lambda c: f"{c.filter}-{c.cutoff:g}-{c.order}-{c.image_size}")
def test_fft_matches_reference(cfg):
    frames = [random_frame(320, 200, seed=1), random_frame(cfg.image_size, cfg.image_size, channels=1, seed=2)]
    hp, col = cpu_pipeline(cfg, "fft")(frames)
    ref_hp, ref_col = reference_batch(frames, cfg)
    assert hp.dtype == col.dtype == np.float32
    assert hp.shape == (2, cfg.in_channels, cfg.image_size, cfg.image_size) and col.shape == (2, 3, cfg.image_size, cfg.image_size)
    np.testing.assert_allclose(col, ref_col, atol=2e-6)
    np.testing.assert_allclose(hp, ref_hp, atol=2e-5)


@pytest.mark.parametrize("cfg", KERNEL_CONFIGS, ids=lambda c: f"{c.filter}-{c.cutoff:g}-{c.order}")
def test_separable_matches_reference_within_the_kernel_budget(cfg):
    frames = [random_frame(1920, 1080, seed=3), random_frame(640, 480, seed=4)]
    hp, _ = cpu_pipeline(cfg, "separable")(frames)
    ref_hp, _ = reference_batch(frames, cfg)
    err = np.abs(hp - ref_hp).max()
    assert err <= SEPARABLE_TOL
    if cfg.filter != "sobel_xy":  # not just equal to the fft path: the separable filter is an approximation
        assert err > 1e-7


def test_stage_clock_charges_each_stage():
    clock = StageClock()
    CpuPipeline(PreprocessConfig(image_size=64))([random_frame(640, 480)] * 3, clock)
    assert set(clock.seconds) == {"copy", "resize", "highpass"} and all(v > 0 for v in clock.seconds.values())


def test_unknown_method_and_ideal_separable_are_refused():
    with pytest.raises(ConfigError, match="fft, separable"):
        cpu_pipeline(PreprocessConfig(), "dft")
    with pytest.raises(ConfigError, match="ideal"):
        cpu_pipeline(PreprocessConfig(filter="ideal"), "separable")

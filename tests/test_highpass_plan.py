"""The fused kernel's algorithm, mirrored in NumPy, against the float64 FFT reference."""

import re

import numpy as np
import pytest

from fair_edge.errors import ConfigError
from fair_edge.runtime import fused_mirror
from fair_edge.runtime.highpass_plan import ERROR_BUDGET, MAX_RADIUS, plan_highpass
from fair_edge.runtime.preprocess_gpu import largest_radius, shared_bytes
from fair_edge.preprocess import PreprocessConfig, reference_input
from frames import SIZES, elpv_dir, errors, random_frame, real_frame

CONFIGS = [
    PreprocessConfig(),  # butterworth D0=30 n=2, the paper's default
    PreprocessConfig(filter="butterworth", cutoff=30.0, order=3),
    PreprocessConfig(filter="butterworth", cutoff=10.0, order=2),
    PreprocessConfig(filter="butterworth", cutoff=30.0, order=1),
    PreprocessConfig(filter="butterworth", cutoff=20.0, order=4),
    PreprocessConfig(filter="gaussian", cutoff=30.0),
    PreprocessConfig(filter="gaussian", cutoff=10.0),
    PreprocessConfig(filter="sobel_xy"),
    PreprocessConfig(image_size=128, filter="butterworth", cutoff=15.0, order=2),
]
TOL = 1e-3


def _ids(cfg):
    return f"{cfg.filter}-S{cfg.image_size}-D{cfg.cutoff:g}-n{cfg.order}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["random", "real", "real_gray"])
def test_mirror_matches_fft_reference(cfg, size, kind):
    if kind != "random" and elpv_dir() is None:
        pytest.skip("elpv-dataset (test extra) is not installed; real images unavailable")
    frame = {"random": lambda: random_frame(*size), "real": lambda: real_frame(*size),
             "real_gray": lambda: real_frame(*size, channels=1)}[kind]()
    ref_hp, ref_rgb = reference_input(frame, cfg)
    hp, rgb = fused_mirror.mirror_input(frame, plan_highpass(cfg))
    assert hp.shape == ref_hp.shape and hp.dtype == np.float32
    for found, ref in ((hp, ref_hp), (rgb, ref_rgb)):
        rel, mx = errors(found, ref)
        assert rel <= TOL and mx <= TOL, f"rel {rel:.2e} max {mx:.2e}"


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.filter != "sobel_xy"], ids=_ids)
def test_plan_meets_budget_and_limits(cfg):
    plan = plan_highpass(cfg)
    assert plan.radius <= MAX_RADIUS and 1 <= plan.rank <= 16
    assert plan.row_taps.shape == plan.col_taps.shape == (plan.rank, 2 * plan.radius + 1)
    assert plan.row_taps.dtype == np.float32
    assert all(plan.errors[k] <= v for k, v in ERROR_BUDGET.items())


def test_default_plan_is_radius_20():
    plan = plan_highpass(PreprocessConfig())
    assert (plan.radius, plan.rank) == (20, 7)


def test_gaussian_is_rank_one():
    assert plan_highpass(PreprocessConfig(filter="gaussian", cutoff=30.0)).rank == 1


def test_flat_image_gives_zero_highpass():
    plan = plan_highpass(PreprocessConfig())
    hp = fused_mirror.highpass(np.full((256, 256), 0.7, np.float32), plan)
    assert np.abs(hp).max() < 1e-5


def test_ideal_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="ideal.*no compact spatial kernel.*butterworth"):
        plan_highpass(PreprocessConfig(filter="ideal"))


@pytest.mark.parametrize("cfg", [PreprocessConfig(cutoff=60.0), PreprocessConfig(cutoff=90.0),
                                 PreprocessConfig(filter="gaussian", cutoff=60.0)], ids=_ids)
def test_unreachable_cutoff_is_refused_naming_errors(cfg):
    with pytest.raises(ConfigError, match=f"cutoff={cfg.cutoff:g}.*expected at most.*FFT path"):
        plan_highpass(cfg)


@pytest.mark.parametrize("cutoff, side", [(5.0, "higher"), (70.0, "lower")])
def test_refusal_names_the_nearest_cutoff_that_works(cutoff, side):
    """Too low a cutoff needs too wide a kernel; too high a one rings: the hint points the right way."""
    with pytest.raises(ConfigError, match=rf"cutoffs that work: cutoff=([0-9.]+) \({side}\)") as info:
        plan_highpass(PreprocessConfig(cutoff=cutoff))
    suggested = float(re.search(r"cutoff=([0-9.]+) \(", str(info.value)).group(1))
    assert (suggested > cutoff) == (side == "higher")
    assert plan_highpass(PreprocessConfig(cutoff=suggested)).radius <= MAX_RADIUS


def test_max_radius_limits_the_plan_and_its_hint():
    """A GPU with 48 KiB of shared memory per block takes radius <= 28 (preprocess_gpu.largest_radius)."""
    assert largest_radius(48 * 1024, "butterworth") == 28
    assert shared_bytes(plan_highpass(PreprocessConfig(), max_radius=28)) <= 48 * 1024
    with pytest.raises(ConfigError, match=r"cutoff=10, .*cutoff=([0-9.]+) \(higher\)") as info:
        plan_highpass(PreprocessConfig(cutoff=10.0), max_radius=28)
    suggested = float(re.search(r"cutoff=([0-9.]+) \(higher", str(info.value)).group(1))
    assert plan_highpass(PreprocessConfig(cutoff=suggested), max_radius=28).radius <= 28


def test_source_axis_matches_float64_reference_formula():
    for n_in, size in ((1080, 256), (777, 256), (256, 256), (100, 256), (3, 16)):
        i0, i1, frac = fused_mirror.source_axis(n_in, size)
        src = np.maximum((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0.0)
        np.testing.assert_allclose(np.minimum(i0, n_in - 1) + frac, np.minimum(src, np.maximum(i0, 0) + frac), atol=1e-6)
        assert (i1 <= n_in - 1).all() and (i0 >= 0).all()

"""Anomaly synthesis: shapes, ranges, statistics, determinism, CutPaste provenance, Perlin noise."""

from __future__ import annotations

import math

import pytest
import torch

from fair_edge.models.fair.augment import AUGMENTATIONS, random_augment, rotate_images
from fair_edge.errors import ConfigError
from fair_edge.models.fair.perlin import perlin_noise
from fair_edge.models.fair.synthesis import (
    CLEAN,
    GLOBAL,
    LOCAL,
    AnomalySynthesizer,
    SynthesisConfig,
    cutpaste,
    perlin_masks,
    random_derangement,
    random_rotate,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def images(b: int, size: int | tuple[int, int] = 64, seed: int = 123) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_shapes_dtypes_device_and_range():
    clean = images(6)
    batch = AnomalySynthesizer().sample(clean, gen())
    assert batch.corrupted.shape == clean.shape and batch.corrupted.dtype == torch.float32
    assert batch.mask.shape == (6, 1, 64, 64) and batch.mask.dtype == torch.float32
    assert batch.kind.shape == (6,) and batch.corrupted.device == clean.device == batch.mask.device
    assert batch.corrupted.min() >= 0.0 and batch.corrupted.max() <= 1.0
    assert set(batch.mask.unique().tolist()) <= {0.0, 1.0}
    corrupted, mask = AnomalySynthesizer()(clean, gen())
    assert torch.equal(corrupted, batch.corrupted) and torch.equal(mask, batch.mask)


def test_fraction_left_clean_and_global_share():
    # Binomial bounds at 4.5 sigma: fails by chance with probability ~1e-5 (fixed seed here anyway).
    n = 600
    kind = AnomalySynthesizer().sample(images(n, 16), gen(7)).kind
    clean_frac = (kind == CLEAN).float().mean().item()
    assert abs(clean_frac - 0.5) < 4.5 * math.sqrt(0.25 / n)
    corrupted = (kind != CLEAN).sum().item()
    global_frac = (kind == GLOBAL).sum().item() / corrupted
    assert abs(global_frac - 0.2) < 4.5 * math.sqrt(0.16 / corrupted)


def test_mask_zero_means_untouched_and_clean_samples_have_no_mask():
    clean = images(24, 48)
    batch = AnomalySynthesizer().sample(clean, gen(3))
    is_clean = batch.kind == CLEAN
    assert is_clean.any() and (~is_clean).any()
    assert batch.mask[is_clean].sum() == 0
    assert torch.equal(batch.corrupted[is_clean], clean[is_clean])
    untouched = (batch.mask == 0).expand_as(clean)
    assert torch.equal(batch.corrupted[untouched], clean[untouched])
    changed = (batch.corrupted != clean).any(dim=1, keepdim=True)
    assert not (changed & (batch.mask == 0)).any()


def test_local_masks_cover_a_plausible_area():
    # Thresholding sqrt(2)-scaled Perlin noise at 0.5 marks ~5.5% of pixels on average (as in
    # DRAEM/FAIR), with a long tail; a few masks (coarse periods) are empty.
    cfg = SynthesisConfig(p_clean=0.0, p_global=0.0)
    batch = AnomalySynthesizer(cfg).sample(images(96, 48), gen(5))
    assert (batch.kind == LOCAL).all()
    area = batch.mask.mean(dim=(1, 2, 3))
    assert 0.02 < area.mean().item() < 0.7
    assert (area > 0).float().mean() > 0.8
    assert area.max() < 1.0


def test_same_seed_same_batch_different_seed_differs():
    clean = images(6, 48)
    synth, cfg = AnomalySynthesizer(), SynthesisConfig()
    a = synth(random_rotate(clean, cfg, gen(11)), gen(11))
    b = synth(random_rotate(clean, cfg, gen(11)), gen(11))
    c = synth(random_rotate(clean, cfg, gen(12)), gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_cutpaste_pixels_come_from_the_same_image():
    b = 8
    clean = images(b)
    clean[:, 0] = (torch.arange(b, dtype=torch.float32) / b).view(b, 1, 1)  # red channel = image id
    cfg = SynthesisConfig(p_clean=0.0, p_global=1.0)
    batch = AnomalySynthesizer(cfg).sample(clean, gen(2))
    assert (batch.kind == GLOBAL).all()
    inside = batch.mask[:, 0] > 0
    red = batch.corrupted[:, 0]
    own_id = clean[:, 0]
    assert torch.allclose(red[inside], own_id[inside], atol=1e-5)
    area = batch.mask.mean(dim=(1, 2, 3))
    assert (area > 0.3).all(), area  # an 80-90% patch of random pixels differs almost everywhere


def test_cutpaste_without_rotation_is_a_translated_crop():
    clean = images(4, 48)
    cfg = SynthesisConfig(cutpaste_rotate_deg=0.0)
    pasted, mask = cutpaste(clean, cfg, gen(9))
    for i in range(4):
        ys, xs = torch.nonzero(mask[i, 0], as_tuple=True)
        values = pasted[i, :, ys, xs]  # (3, N)
        # every pasted pixel equals some pixel of the same image (sub-pixel offsets interpolate,
        # so compare against the image's own colour range per channel)
        lo = clean[i].flatten(1).amin(1, keepdim=True)
        hi = clean[i].flatten(1).amax(1, keepdim=True)
        assert ((values >= lo - 1e-6) & (values <= hi + 1e-6)).all()
        assert 0.3 < mask[i].mean() <= 0.81  # at most 0.9 x 0.9 of the image


def test_perlin_noise_zero_mean_smooth_and_thresholds_to_both_classes():
    g = gen(4)
    for period in (1.0, 4.0, 32.0):
        noise = perlin_noise((256, 256), torch.full((4, 2), period), torch.full((4,), 30.0), g, max_period=32)
        assert noise.shape == (4, 1, 256, 256) and noise.dtype == torch.float32
        assert abs(noise.mean().item()) < 0.1 and 0.15 < noise.std().item() < 0.5
        assert noise.abs().max() <= 1.01
        pairs = torch.stack([noise[..., :, 1:].flatten(), noise[..., :, :-1].flatten()])
        assert torch.corrcoef(pairs)[0, 1] > 0.85  # 32 periods on 256 px: 8 px per cell, r ~ 0.94
    masks = perlin_masks(16, (128, 128), SynthesisConfig(), g)
    assert 0.0 < masks.mean().item() < 1.0


def test_perlin_any_period_any_size_and_full_turn_is_identity():
    periods = torch.tensor([[3.0, 5.0], [32.0, 1.0]])  # 40 px is a multiple of neither 3 nor 32
    base = perlin_noise((40, 40), periods, torch.zeros(2), gen(8), max_period=32)
    full = perlin_noise((40, 40), periods, torch.full((2,), 360.0), gen(8), max_period=32)
    turned = perlin_noise((40, 40), periods, torch.full((2,), 45.0), gen(8), max_period=32)
    assert torch.allclose(base, full, atol=1e-4)  # rotation acts on coordinates, nothing resampled
    assert not torch.allclose(base, turned) and turned.abs().max() <= 1.01
    assert base[0].std() > 0.1  # no empty corners, no constant tiles


@pytest.mark.parametrize("size", [96, 100, 37, (64, 100)])
def test_odd_and_non_square_sizes(size):
    clean = images(4, size)
    cfg = SynthesisConfig()
    corrupted, mask = AnomalySynthesizer(cfg)(random_rotate(clean, cfg, gen(1)), gen(1))
    assert corrupted.shape == clean.shape and mask.shape == (4, 1, *clean.shape[2:])
    local = perlin_masks(8, tuple(clean.shape[2:]), cfg, gen(2))
    assert local.shape == (8, 1, *clean.shape[2:])


def test_random_rotate_probability_and_direction():
    clean = images(6)
    assert torch.equal(random_rotate(clean, SynthesisConfig(rotate_prob=0.0), gen()), clean)
    turned = random_rotate(clean, SynthesisConfig(rotate_prob=1.0), gen())
    assert not torch.equal(turned, clean) and turned.shape == clean.shape
    marker = torch.zeros(1, 3, 8, 8)
    marker[:, :, 0, 0] = 1.0  # top-left
    out = rotate_images(marker, torch.tensor([90.0]))
    assert torch.allclose(out, torch.rot90(marker, -1, (2, 3)), atol=1e-4)  # clockwise: now top-right


def test_folder_textures_and_blend_formula():
    clean = images(16)
    textures = torch.full((3, 3, 64, 64), 0.25)
    cfg = SynthesisConfig(p_clean=0.0, p_global=0.0, texture_source="folder", texture_ops=0, beta=(0.5, 0.5))
    corrupted, mask = AnomalySynthesizer(cfg, textures)(clean, gen(6))
    inside = mask.expand_as(clean) > 0
    assert inside.any()
    assert torch.allclose(corrupted[inside], 0.5 * 0.25 + 0.5 * clean[inside], atol=1e-6)


def test_self_textures_come_from_other_images():
    source = random_derangement(9, gen(3))
    assert sorted(source.tolist()) == list(range(9))
    assert (source != torch.arange(9)).all()
    assert random_derangement(1, gen()).tolist() == [0]


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_each_augmentation_keeps_shape_range_and_gray(name):
    colour = images(4, 32)
    out = AUGMENTATIONS[name](colour, gen()).clamp(0, 1)
    assert out.shape == colour.shape and out.dtype == torch.float32
    gray = images(4, 32)[:, :1].expand(4, 3, 32, 32).contiguous()
    out = AUGMENTATIONS[name](gray, gen()).clamp(0, 1)
    if name != "gamma":  # gamma draws one exponent per channel, as imgaug's per_channel does
        assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_equalize_and_autocontrast_stretch_a_dull_image():
    dull = 0.4 + 0.1 * images(2, 32)
    for name in ("equalize", "autocontrast"):
        out = AUGMENTATIONS[name](dull, gen())
        assert out.amax() - out.amin() > 0.8, name
    assert random_augment(dull, gen(), n_ops=0).equal(dull)


def test_bad_settings_and_inputs_raise_our_error():
    for bad in (
        dict(p_clean=1.5),
        dict(beta=(0.8, 0.2)),
        dict(texture_source="dtd"),
        dict(perlin_scale_exp=(0.0, 5)),
        dict(rotate_padding="wrap"),
    ):
        with pytest.raises(ConfigError):
            SynthesisConfig(**bad)
    cfg = SynthesisConfig(beta=(0.1, 0.7))
    assert SynthesisConfig.from_dict({**cfg.to_dict(), "beta": [0.1, 0.7]}) == cfg
    with pytest.raises(ConfigError, match="valid"):
        SynthesisConfig.from_dict({"p_clen": 0.5})
    with pytest.raises(ConfigError, match="folder"):
        AnomalySynthesizer(SynthesisConfig(texture_source="folder"))
    with pytest.raises(ConfigError, match="self"):
        AnomalySynthesizer(SynthesisConfig(), textures=images(2))
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        AnomalySynthesizer()(torch.rand(2, 1, 32, 32), gen())
    with pytest.raises(ConfigError, match="Generator"):
        AnomalySynthesizer()(images(2), None)


def test_a_training_batch_of_8_at_256_is_well_formed_and_reproducible():
    """The training size (256, batch 8): shapes, 0/1 masks, pixels changed only under the mask, same seed ->
    same batch. Its speed is measured by benchmarks/bench_synthesis.py, not asserted here."""
    clean = images(8, 256)
    cfg = SynthesisConfig(p_clean=0.0, p_global=0.0)   # every sample a local anomaly: a mask to check
    synth = AnomalySynthesizer(cfg)
    rotated = random_rotate(clean, cfg, gen(4))
    batch = synth.sample(rotated, gen(4))
    assert batch.corrupted.shape == (8, 3, 256, 256) and batch.mask.shape == (8, 1, 256, 256)
    assert (batch.kind == LOCAL).all() and set(batch.mask.unique().tolist()) == {0.0, 1.0}
    assert batch.corrupted.min() >= 0.0 and batch.corrupted.max() <= 1.0
    changed = (batch.corrupted != rotated).any(dim=1, keepdim=True)
    assert changed.any() and not (changed & (batch.mask == 0)).any()
    again = synth.sample(random_rotate(clean, cfg, gen(4)), gen(4))
    assert torch.equal(again.corrupted, batch.corrupted) and torch.equal(again.mask, batch.mask)

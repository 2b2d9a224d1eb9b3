"""FAIR's training-time anomaly synthesis, batched in PyTorch on the training device.

The trainer holds clean normal images ``clean: (B, 3, H, W) float32 RGB in [0, 1]`` (H = W = S in
FAIR) and does, per batch::

    clean = random_rotate(clean, cfg, generator)            # 30%: whole image turned +-90 deg
    corrupted, mask = synthesizer(clean, generator)         # 50% left clean, else an anomaly
    loss = restoration_loss(unet(highpass(to_gray(corrupted))), clean)

Per sample: with probability ``p_clean`` nothing happens; otherwise a *global* CutPaste (a patch of
80-90% of the image side cut from the same image, rotated, pasted elsewhere) with probability
``p_global``, else a *local* anomaly: a thresholded, rotated Perlin-noise mask filled with a
strongly augmented texture (another image of the batch, or an external texture such as DTD),
blended as  clean * (1 - m) + (1 - beta) * texture * m + beta * clean * m,  beta ~ U(0, 0.8).

GPU behaviour: every step is a batched tensor op on ``clean.device`` (rand, gather, scatter_add,
grid_sample, conv2d, where); all random numbers come from the ``torch.Generator`` passed in, which
must live on that device; there is no host round trip and no ``.item()``, so nothing synchronises
the stream. Both anomaly kinds are computed for every sample and selected with ``torch.where``
(a fixed amount of work and a fixed sequence of random draws, hence reproducible for a seed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from fair_edge.models.fair.augment import affine_source, random_augment, rotate_images, sample_at, uniform
from fair_edge.errors import ConfigError
from fair_edge.models.fair.perlin import perlin_noise

TEXTURE_SOURCES = ("self", "folder")
PADDING_MODES = ("zeros", "border", "reflection")
CLEAN, LOCAL, GLOBAL = 0, 1, 2  # values of SynthesisBatch.kind
CUTPASTE_DIFF_TOL = 1.0 / 512.0  # pasted pixels closer than this (half an 8-bit step) to the original are not pasted


def _check_range(name: str, pair: tuple, lo: float, hi: float) -> None:
    if not (len(pair) == 2 and lo <= pair[0] <= pair[1] <= hi):
        raise ConfigError(f"synthesis.{name} must be (low, high) with {lo} <= low <= high <= {hi}; found {pair!r}.")


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"synthesis.{name} must be a probability in [0, 1]; found {value!r}.")


@dataclass(frozen=True)
class SynthesisConfig:
    """Anomaly-synthesis settings; defaults are FAIR's (and its reference code's where the paper is silent).

    p_clean: probability a sample is left clean. p_global: of the corrupted samples, the fraction
    given a global CutPaste instead of a local Perlin anomaly. perlin_threshold: mask = noise > it.
    perlin_scale_exp: (lo, hi) integer exponents; noise periods are 2^a x 2^b cells per image side,
    a, b ~ U{lo..hi} independently. perlin_rotate_deg: noise rotated by U(-it, it) degrees.
    beta: blend range (0 = texture replaces the image, 1 = image kept). cutpaste_area: (lo, hi)
    side of the CutPaste patch as a fraction of the image side, drawn per axis. cutpaste_rotate_deg:
    patch rotated by U(-it, it) degrees (the reference draws any orientation). rotate_prob,
    rotate_max_deg, rotate_padding: ``random_rotate``'s chance, angle bound (degrees) and corner fill
    (the reference leaves black corners: "zeros"). texture_source: "self" (another image of the batch,
    FAIR's noDTD) or "folder" (textures handed to the synthesizer). texture_ops: augmentations per texture.
    """

    p_clean: float = 0.5
    p_global: float = 0.2
    perlin_threshold: float = 0.5
    perlin_scale_exp: tuple[int, int] = (0, 5)
    perlin_rotate_deg: float = 90.0
    beta: tuple[float, float] = (0.0, 0.8)
    cutpaste_area: tuple[float, float] = (0.8, 0.9)
    cutpaste_rotate_deg: float = 180.0
    rotate_prob: float = 0.3
    rotate_max_deg: float = 90.0
    rotate_padding: str = "zeros"
    texture_source: str = "self"
    texture_ops: int = 3

    def __post_init__(self) -> None:
        for name in ("p_clean", "p_global", "rotate_prob"):
            _check_prob(name, getattr(self, name))
        _check_range("perlin_scale_exp", self.perlin_scale_exp, 0, 10)
        if not all(isinstance(e, int) for e in self.perlin_scale_exp):
            raise ConfigError(f"synthesis.perlin_scale_exp must be two integers; found {self.perlin_scale_exp!r}.")
        _check_range("beta", self.beta, 0.0, 1.0)
        _check_range("cutpaste_area", self.cutpaste_area, 0.05, 1.0)
        for name in ("perlin_rotate_deg", "cutpaste_rotate_deg", "rotate_max_deg"):
            if not 0.0 <= getattr(self, name) <= 180.0:
                raise ConfigError(f"synthesis.{name} must be in [0, 180] degrees; found {getattr(self, name)!r}.")
        if self.rotate_padding not in PADDING_MODES:
            raise ConfigError(
                f"synthesis.rotate_padding must be one of {PADDING_MODES}; found {self.rotate_padding!r}."
            )
        if self.texture_source not in TEXTURE_SOURCES:
            raise ConfigError(
                f"synthesis.texture_source must be one of {TEXTURE_SOURCES}; found {self.texture_source!r}."
            )
        if not (isinstance(self.texture_ops, int) and 0 <= self.texture_ops <= 10):
            raise ConfigError(f"synthesis.texture_ops must be an integer in 0..10; found {self.texture_ops!r}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SynthesisConfig":
        """Inverse of ``to_dict``; lists (from JSON/YAML) become tuples; unknown keys are refused."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown synthesis setting(s) {unknown}; valid: {', '.join(names)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class SynthesisBatch:
    """corrupted: (B, 3, H, W) like ``clean``; mask: (B, 1, H, W) same dtype, 0/1;
    kind: (B,) int64, CLEAN / LOCAL / GLOBAL. All on ``clean.device``. Where mask is 0,
    corrupted equals clean exactly (a LOCAL or GLOBAL sample may still have an empty mask)."""

    corrupted: torch.Tensor
    mask: torch.Tensor
    kind: torch.Tensor


def _check_images(clean: torch.Tensor, generator: torch.Generator) -> None:
    if not isinstance(clean, torch.Tensor) or clean.ndim != 4 or clean.shape[1] != 3 or not clean.is_floating_point():
        raise ConfigError(f"clean must be a (B, 3, H, W) float tensor in [0, 1]; found {_describe(clean)}.")
    if min(clean.shape[2:]) < 8 or clean.shape[0] < 1:
        raise ConfigError(f"clean needs B >= 1 and H, W >= 8 pixels; found {tuple(clean.shape)}.")
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator on {clean.device}; found {type(generator).__name__}.")
    gen = torch.device(generator.device)
    if gen.type != clean.device.type or (gen.index is not None and clean.device.index not in (None, gen.index)):
        raise ConfigError(
            f"generator is on {gen} but clean is on {clean.device}; create it with "
            f"torch.Generator(device=clean.device).manual_seed(seed)."
        )


def _describe(value: object) -> str:
    """Shape and dtype of a tensor, else the type name: for error messages."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return type(value).__name__


def random_rotate(clean: torch.Tensor, cfg: SynthesisConfig, generator: torch.Generator) -> torch.Tensor:
    """With probability ``cfg.rotate_prob`` per sample, rotate the whole image by U(-max, max) degrees.

    Call before synthesis: the result is both the training target and the input to corrupt.
    clean: (B, 3, H, W) float in [0, 1]; generator on clean.device. Returns the same shape, dtype
    and device; unrotated samples are returned bit-exact; corners filled per ``cfg.rotate_padding``.
    """
    _check_images(clean, generator)
    b = clean.shape[0]
    do = torch.rand(b, generator=generator, device=clean.device) < cfg.rotate_prob
    angle = uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg, (b,), generator, clean.device)
    rotated = rotate_images(clean, angle, cfg.rotate_padding)
    return torch.where(do.view(b, 1, 1, 1), rotated, clean)


def perlin_masks(batch: int, shape: tuple[int, int], cfg: SynthesisConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) float32 0/1 masks: rotated Perlin noise with per-axis periods 2^a, thresholded."""
    device = generator.device
    lo, hi = cfg.perlin_scale_exp
    periods = 2.0 ** torch.randint(lo, hi + 1, (batch, 2), generator=generator, device=device).float()
    angle = uniform(-cfg.perlin_rotate_deg, cfg.perlin_rotate_deg, (batch,), generator, device)
    noise = perlin_noise(shape, periods, angle, generator, max_period=2**hi)
    return (noise > cfg.perlin_threshold).float()


def local_anomaly(
    clean: torch.Tensor, texture: torch.Tensor, cfg: SynthesisConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perlin-shaped texture blend. clean, texture: (B, 3, H, W) in [0, 1], same device.
    Returns (corrupted (B, 3, H, W) float32 in [0, 1], mask (B, 1, H, W) float32 0/1)."""
    b = clean.shape[0]
    mask = perlin_masks(b, tuple(clean.shape[2:]), cfg, generator)
    beta = uniform(cfg.beta[0], cfg.beta[1], (b,), generator, clean.device).view(b, 1, 1, 1)
    blended = (1.0 - beta) * texture + beta * clean
    return torch.where(mask > 0, blended, clean), mask


def cutpaste(
    clean: torch.Tensor, cfg: SynthesisConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global CutPaste: a patch of ``cutpaste_area`` x the image side (per axis), cut from a random
    place in the same image, rotated about its centre, pasted centred at another random place.

    clean: (B, 3, H, W) in [0, 1]. Returns (corrupted, mask (B, 1, H, W) float 0/1), same device;
    mask = pasted region where the pasted pixel differs from the original by > CUTPASTE_DIFF_TOL.
    """
    b, _, height, width = clean.shape
    dev, size = clean.device, torch.tensor([width, height], device=clean.device, dtype=torch.float32)
    half = uniform(cfg.cutpaste_area[0], cfg.cutpaste_area[1], (b, 2), generator, dev) * size / 2.0  # (x, y)
    room = size / 2.0 - half  # centres (from the image centre) keep the unrotated patch inside
    src = (2.0 * torch.rand(b, 2, generator=generator, device=dev) - 1.0) * room
    dst = (2.0 * torch.rand(b, 2, generator=generator, device=dev) - 1.0) * room
    rad = torch.deg2rad(uniform(-cfg.cutpaste_rotate_deg, cfg.cutpaste_rotate_deg, (b,), generator, dev))
    cos, sin = torch.cos(rad), torch.sin(rad)
    # source(p) = src + R(-angle) (p - dst): rows [[cos, sin], [-sin, cos]], translation folded in
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], dim=1)  # (B, 2, 2)
    offset = -torch.einsum("bij,bj->bi", rot, dst)  # p -> R(-angle) (p - dst): the patch frame
    local_x, local_y = affine_source(torch.cat([rot, offset.unsqueeze(-1)], dim=2), height, width)
    inside = (local_x.abs() < half[:, 0].view(b, 1, 1)) & (local_y.abs() < half[:, 1].view(b, 1, 1))
    inside = inside.unsqueeze(1)
    pasted = sample_at(clean, local_x + src[:, 0].view(b, 1, 1), local_y + src[:, 1].view(b, 1, 1), "border")
    differs = (pasted - clean).abs().amax(dim=1, keepdim=True) > CUTPASTE_DIFF_TOL
    mask = inside & differs
    return torch.where(mask, pasted, clean), mask.float()


def random_derangement(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) int64 on the generator's device: a random permutation with no fixed point when B > 1
    (a random single cycle), so each sample borrows another sample's image. B = 1 gives [0]."""
    order = torch.randperm(batch, generator=generator, device=generator.device)
    source = torch.empty_like(order)
    source[order] = torch.roll(order, -1)
    return source


class AnomalySynthesizer:
    """``synthesizer(clean, generator) -> (corrupted, mask)``; see the module docstring.

    cfg: SynthesisConfig. textures: only with texture_source "folder": (T, 3, H, W) float RGB in
    [0, 1] on the training device, same H, W as the batches (load and resize them beforehand).
    """

    def __init__(self, cfg: SynthesisConfig = SynthesisConfig(), textures: torch.Tensor | None = None) -> None:
        if cfg.texture_source == "folder":
            ok = isinstance(textures, torch.Tensor) and textures.ndim == 4 and textures.shape[1] == 3
            if not (ok and len(textures) > 0 and textures.is_floating_point()):
                found = _describe(textures)
                raise ConfigError(
                    f"texture_source 'folder' needs textures: a (T, 3, H, W) float tensor in [0, 1], T >= 1; "
                    f"found {found}. Load and resize them first, or use texture_source='self'."
                )
        elif textures is not None:
            raise ConfigError(
                "textures were given but texture_source is 'self'; set texture_source='folder' to use them."
            )
        self.cfg = cfg
        self.textures = textures

    def _texture(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, H, W) strongly augmented texture per sample, on clean.device."""
        if self.textures is None:
            source = clean[random_derangement(clean.shape[0], generator)]
        else:
            if self.textures.device != clean.device or self.textures.shape[2:] != clean.shape[2:]:
                raise ConfigError(
                    f"textures are {tuple(self.textures.shape)} on {self.textures.device}; batches are "
                    f"{tuple(clean.shape)} on {clean.device}. Resize the textures and move them there once."
                )
            index = torch.randint(0, len(self.textures), (clean.shape[0],), generator=generator, device=clean.device)
            source = self.textures[index].to(clean.dtype)
        return random_augment(source, generator, self.cfg.texture_ops)

    def sample(self, clean: torch.Tensor, generator: torch.Generator) -> SynthesisBatch:
        """clean: (B, 3, H, W) float in [0, 1]; generator: torch.Generator on clean.device."""
        _check_images(clean, generator)
        b, dev = clean.shape[0], clean.device
        draw = torch.rand(b, 2, generator=generator, device=dev)
        kind = torch.where(draw[:, 1] < self.cfg.p_global, GLOBAL, LOCAL)
        kind = torch.where(draw[:, 0] < self.cfg.p_clean, CLEAN, kind)
        image = clean.float()
        local, local_mask = local_anomaly(image, self._texture(image, generator), self.cfg, generator)
        pasted, pasted_mask = cutpaste(image, self.cfg, generator)
        k = kind.view(b, 1, 1, 1)
        corrupted = torch.where(k == LOCAL, local, torch.where(k == GLOBAL, pasted, image))
        no_mask = torch.zeros_like(local_mask)
        mask = torch.where(k == LOCAL, local_mask, torch.where(k == GLOBAL, pasted_mask, no_mask))
        return SynthesisBatch(corrupted.to(clean.dtype), mask.to(clean.dtype), kind)

    def __call__(self, clean: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (corrupted (B, 3, H, W) like clean, mask (B, 1, H, W) same dtype, 0/1), on clean.device."""
        batch = self.sample(clean, generator)
        return batch.corrupted, batch.mask

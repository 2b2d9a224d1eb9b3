"""``fair-edge tune``'s candidates and settings: a candidate (``Candidate``: a model family and its
pre-processing, width, length and learning rate, with the `fair-edge train` line that trains it), the tune's own
settings (``TuneSettings``: hold-out share, target false-reject rate, budget, batch, seed, proxy kinds and sizes), and
the default list tried (``default_candidates``: the base, then one change at a time, cheapest first).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from fair_edge.training.loop import check_seed
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE
from fair_edge.errors import ConfigError
from fair_edge.models.registry import FAMILIES, WIDTH_FAMILY, ModelSpec, get_family
from fair_edge.models.tensors import HIGHPASS
from fair_edge.models.training_contract import config_fields, config_from_options
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.proxy_defects import KINDS, SIZES
from fair_edge.shell import dataset_words
from fair_edge.tiling import TilingConfig

log = logging.getLogger("fair_edge.training.tune")   # tune's logger: its warnings keep one name


@dataclass(frozen=True)
class Candidate:
    """One setting to try: family (a registry key), model input, FAIR's UNet width (a settings option that
    families without a width ignore), training steps (None: the family's default length, e.g. LGFDR's 100
    epochs) and learning rate (for families trained by steps; None: the family's default)."""

    name: str
    preprocess: PreprocessConfig
    width: int
    steps: int | None
    lr: float | None = None
    family: str = WIDTH_FAMILY

    def model_spec(self) -> ModelSpec:
        """The model this candidate trains (the family's default settings, with ``width`` where it has one)."""
        impl = get_family(self.family)
        return ModelSpec(impl.key, self.preprocess, impl.settings_from_options({"width": self.width}))

    def train_config(self, batch: int, seed: int) -> Any:
        """The family's default training settings with this candidate's length, learning rate, batch and seed
        (those the family has: a family fitted in one pass takes batch and seed)."""
        base = get_family(self.family).training().default_train_config()
        return config_from_options(base, {"batch": batch, "steps": self.steps, "lr": self.lr,
                                          "seed": seed, "save_every": 10**9})

    def train_command(self, data: str, settings: TuneSettings | None = None, category: str | None = None) -> str:
        """The `fair-edge train` line that trains this candidate (--model, then flags of settings the family has)
        as tune trained it with ``settings`` (their seed, written when it is not the family's default). data and
        category: the dataset as the user gave it (``category``: the product inside an MVTec root or a VisA CSV,
        None when none was picked), written by ``dataset_words`` (DATA quoted as one word, ``./`` before a leading
        ``-``, then ``--category CATEGORY``), so the line runs as it is pasted and trains on the images tune read."""
        p, spec = self.preprocess, self.model_spec()
        settings = settings or TuneSettings()
        cfg = self.train_config(settings.batch, settings.seed)
        fields = config_fields(cfg)
        # --model named always: train's default family may change
        cmd = f"fair-edge train {dataset_words(data, category)} --model {spec.family}"
        cmd += "".join(f" {flag}" for flag in spec.impl.settings_flags(spec.settings))
        cmd += f" --image-size {p.image_size}"
        if HIGHPASS in spec.input_names:
            cmd += f" --filter {p.filter} --cutoff {p.cutoff:g} --order {p.order}"
        cmd += f" --steps {self.steps}" if self.steps is not None and "steps" in fields else ""
        cmd += f" --lr {self.lr:g}" if self.lr is not None and "lr" in fields else ""
        if p.tiling is not None:
            cmd += f" --tile {p.tiling.tile} --tile-overlap {p.tiling.overlap}"
        default = get_family(self.family).training().default_train_config()
        if "seed" in fields and cfg.seed != default.seed:  # tune --seed N trained with N; train's default is 0
            cmd += f" --seed {cfg.seed}"
        return cmd

    def fits(self) -> bool:
        """Whether the family accepts this candidate's pre-processing (e.g. image size a multiple of 16)."""
        return not self.misfit()

    def misfit(self) -> str:
        """Why the family refuses this candidate's pre-processing (its ConfigError), "" when it accepts it."""
        try:
            get_family(self.family).check_preprocess(self.preprocess)
        except ConfigError as exc:
            return str(exc)
        return ""


@dataclass(frozen=True)
class TuneSettings:
    """holdout: share of the normal images held out for the proxy test. false_reject_rate: the target
    rate at which proxy catch is ranked. budget_s: wall-clock budget for all candidates, seconds.
    batch: training batch. seed: split, planting and training seed."""

    holdout: float = 0.2
    false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE
    budget_s: float = 1800.0
    batch: int = 8
    seed: int = 0
    kinds: tuple[str, ...] = tuple(KINDS)
    sizes: tuple[str, ...] = tuple(SIZES)

    def __post_init__(self) -> None:
        if not 0.05 <= self.holdout <= 0.5:
            raise ConfigError(f"holdout must be in 0.05..0.5 of the normal images; found {self.holdout}.")
        if not self.budget_s > 0:
            raise ConfigError(f"budget must be > 0 seconds; found {self.budget_s}.")
        if not 0.0 <= self.false_reject_rate < 1.0:
            raise ConfigError(f"false_reject_rate must be a share in [0, 1) (0.005 is 0.5 %); found "
                              f"{self.false_reject_rate}.")
        check_seed(self.seed)


def default_candidates(base: Candidate, frame_side: int) -> list[Candidate]:
    """The base (FAIR), then one change at a time, cheapest first: every other registered family (LGFDR,
    PatchCore: at the same image size, their default length and learning rate), cutoff x0.5 / x2, Gaussian
    and Sobel filters, steps x2, (when frames are at least 3 model inputs wide) tiling at twice the model's
    scale, else image size x2 (with the cutoff scaled along), and width x2 (about 4x the cost of the base) last,
    when the doubled width is one the family's command line trains (``flag_choices``; FAIR: 32, 64, 128).
    A candidate the family refuses (``Candidate.misfit``) is dropped with a warning naming it and why; ConfigError
    when none is left."""
    p = base.preprocess
    others = []
    for key, impl in FAMILIES.items():
        if key != base.family:
            own = asdict(impl.training().default_train_config())
            others.append(replace(base, name=key, family=key, steps=None, lr=own.get("lr", base.lr)))
    out = [base, *others,
           replace(base, name="cutoff-half", preprocess=replace(p, cutoff=p.cutoff / 2)),
           replace(base, name="cutoff-double", preprocess=replace(p, cutoff=p.cutoff * 2)),
           replace(base, name="gaussian", preprocess=replace(p, filter="gaussian")),
           replace(base, name="sobel-xy", preprocess=replace(p, filter="sobel_xy")),
           replace(base, name="steps-double", steps=2 * base.steps if base.steps else None)]
    if p.tiling is None and frame_side >= 3 * p.image_size:
        tile = 2 * p.image_size
        out.append(replace(base, name="tiled", preprocess=replace(p, tiling=TilingConfig(tile, tile // 8))))
    elif p.tiling is None:
        out.append(replace(base, name="size-double", preprocess=replace(p, image_size=2 * p.image_size,
                                                                        cutoff=2 * p.cutoff)))
    if _width_trainable(base.family, 2 * base.width):
        out.append(replace(base, name="width-double", width=base.width * 2))
    return _fitting(out)


def _width_trainable(family: str, width: int) -> bool:
    """Whether ``fair-edge train --width WIDTH`` accepts ``width`` for ``family`` (any width when the family
    names no choices)."""
    choices = get_family(family).flag_choices.get("width")
    return not choices or width in choices


def _fitting(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates their family accepts; each dropped one is named in a warning with the reason (the base
    first: every other candidate changes one thing of it). ConfigError when none is left."""
    kept, dropped = [], []
    for cand in candidates:
        reason = cand.misfit()
        if reason:
            dropped.append(f"{cand.name}: {reason}")
            log.warning("tune: dropped candidate %s (the %s family refuses it): %s", cand.name, cand.family, reason)
        else:
            kept.append(cand)
    if not kept:
        raise ConfigError(f"no tune candidate fits its model family ({'; '.join(dropped)}); change the base "
                          "settings, e.g. --image-size to a multiple of 16.")
    return kept

"""``fair-edge tune``: choose settings from normal images only.

1. The normal training images are split (fixed seed) into a training part and a held-out part
   (``holdout``, default 20 %).
2. Proxy test set: every held-out image as a normal, plus one copy of it with a planted proxy defect
   (fair_edge.training.proxy_defects: the kind-size pairs, every kind at the small size first, cycled over the
   images, so with fewer held-out images than pairs only the first are planted; tune.json lists those planted).
   The proxy kinds differ from the training synthesis, and no real defect image is ever read.
3. Each candidate (one setting changed at a time from the base: model family, cutoff, filter, width,
   training length, image size or tiling) is trained on the training part and scored on the proxy set.
4. Ranking rule: the share of proxy defects caught at ``false_reject_rate`` on the held-out normals,
   ties broken by proxy image AUROC. Candidates are run in order until ``budget_s`` is spent; those
   not reached are listed as skipped. One that runs out of memory (``score_within_memory``) is listed as
   ``out of memory`` and the next one runs: one candidate too big for the machine does not stop the tune.
Writes OUT/tune.csv (every candidate) and OUT/tune.json (the chosen settings, the train command, the false rejects
its catch was measured at and the proxy defects planted), each under a temporary name beside it (``.NAME.partial``)
and renamed into place, tune.json last, and keeps each candidate's final.pt under OUT/candidates/NAME/ alone: its
trainer keeps no resume state (``keeps_resume_state`` False: no last.pt, about 3x the size, is written beside final.pt,
so a nearly full disk never has to hold both; a family trainer without that setting has its last.pt deleted once
final.pt is written: ``drop_resume_state``), and a candidate's failed save names no `train --resume` command (tune
has none: it starts over). A write that fails (a full disk) is a ``TuneWriteError`` naming OUT, the cause and the fix
(``disk.write_failure``). While the candidates run,
tune.csv ranks those finished so far, rewritten as each one finishes (``KeptRanking``), so a tune that stops after one
(a full disk at the next, an error, Ctrl-C) leaves their figures there, without tune.json: the error says so
(``TuneStopped``), an interrupted tune's caller names the file. A folder
holds one tune run: ``tune`` refuses an OUT that already holds a finished one (tune.json, written last:
``check_fresh_tune``) unless told to delete it first (``clear_tune``, --overwrite); what an interrupted or failed
run left (candidates/, proxy/, a tune.csv without tune.json: ``unfinished_tune``) is deleted by the next run into
OUT.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fair_edge.training import metrics
from fair_edge.training.loop import RESUME_STATE, TrainingInterrupted, check_seed
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE
from fair_edge.disk import discard_unfinished, write_failure
from fair_edge.images import write_png
from fair_edge.training.data import DatasetSplit, Sample
from fair_edge.training.pixels import read_frames
from fair_edge.errors import ConfigError, DataError, FairEdgeError
from fair_edge.training.evaluate import achieved_false_rejects, score_samples
from fair_edge.training.runs import remove_outputs
from fair_edge.models.patchcore.train import FitOutOfMemory
from fair_edge.models.registry import FAMILIES, WIDTH_FAMILY, ModelSpec, get_family
from fair_edge.models.tensors import HIGHPASS
from fair_edge.models.training_contract import config_fields, config_from_options
from fair_edge.shortages import out_of_memory
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.proxy_defects import KINDS, SIZES, plant
from fair_edge.shell import dataset_words
from fair_edge.tiling import TilingConfig

log = logging.getLogger(__name__)
FIXED_RATE = 0.05  # the second catch figure's false-reject rate (tune.csv, the table's catch@5%), besides the target
OUT_OF_MEMORY = "out of memory"   # tune.csv's status of a candidate that ran out of memory (the tune went on)
TUNE_FINISHED = "tune.json"  # renamed into place last, once every candidate has run: a finished run holds it
PARTIAL = ".{}.partial"  # a result file's temporary name beside it until it is renamed into place
TUNE_OUTPUTS = ("tune.json", "tune.csv", "candidates", "proxy",
                PARTIAL.format("tune.json"), PARTIAL.format("tune.csv"))  # what one tune run writes under OUT


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


def check_fresh_tune(out: Path) -> None:
    """ConfigError when ``out`` already holds a finished tune run (``TUNE_FINISHED``: tune.json, written last): a
    new run would replace its results and checkpoints, or mix its files with the new run's. Names the folder and
    the choices. What an interrupted or failed run left (``unfinished_tune``: a tune.csv without tune.json too) is
    no run to keep: the caller deletes it."""
    if (Path(out) / TUNE_FINISHED).exists():
        raise ConfigError(
            f"{out} already holds a tune run ({TUNE_FINISHED}); a new run there would overwrite it. Tune into "
            f"another folder (--out NEW_FOLDER), or pass --overwrite to delete that run first: "
            f"`fair-edge tune DATA --out {shlex.quote(str(out))} --overwrite`."
        )


def unfinished_tune(out: Path) -> list[str]:
    """What an interrupted or failed tune run left in ``out`` (the names of ``TUNE_OUTPUTS`` there: candidates/,
    proxy/, a tune.csv or a temporary ``.NAME.partial``) when it holds no ``TUNE_FINISHED`` (tune.json); [] when
    there is none, or when the run finished."""
    out = Path(out)
    if (out / TUNE_FINISHED).exists():
        return []
    return [name for name in TUNE_OUTPUTS if os.path.lexists(out / name)]


def clear_tune(out: Path) -> list[Path]:
    """Delete what a tune run wrote under ``out`` (``TUNE_OUTPUTS``; --overwrite); returns those deleted. Other
    files are kept."""
    return remove_outputs(out, TUNE_OUTPUTS)


def split_normals(samples: list[Sample], holdout: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training part, held-out part) of the normal samples, a fixed permutation of ``seed``."""
    if len(samples) < 10:
        raise DataError(f"tune needs at least 10 normal images (to hold some out); found {len(samples)}.")
    order = np.random.default_rng(seed).permutation(len(samples))
    n_hold = max(5, int(round(len(samples) * holdout)))
    held = sorted(order[:n_hold])
    rest = sorted(order[n_hold:])
    return [samples[i] for i in rest], [samples[i] for i in held]


def write_proxy_set(held: list[Sample], out: Path, settings: TuneSettings) -> list[Sample]:
    """Held-out normals (label 0) + one planted copy each (label 1), written as PNGs under ``out`` (any file name).
    Each held-out file is read by training's one skip rule (``pixels.read_frames``): an unreadable one (truncated, a
    macOS ``._NAME.png``) is skipped with a warning naming it, as training skips it; DataError when none is
    readable."""
    rng = np.random.default_rng(settings.seed + 1)
    kinds = [(k, s) for s in settings.sizes for k in settings.kinds]
    samples = []
    for i, (_, frame) in enumerate(read_frames(held, what="held-out normal images")):
        good = out / "good" / f"{i:04d}.png"
        write_png(good, frame)
        kind, size = kinds[i % len(kinds)]
        bad_frame, _ = plant(frame, kind, size, rng)
        bad = out / f"{kind}-{size}" / f"{i:04d}.png"
        write_png(bad, bad_frame)
        samples += [Sample(good), Sample(bad, 1, f"{kind}-{size}")]
    return samples


@dataclass
class TuneRow:
    """One candidate's result on the proxy set (None where it was skipped)."""

    candidate: Candidate
    status: str = "skipped (budget)"
    proxy_auroc: float | None = None
    proxy_catch: float | None = None
    proxy_catch_5pct: float | None = None
    train_s: float | None = None
    checkpoint: str = ""
    by_kind: dict = field(default_factory=dict)
    # the false rejects each catch figure was measured at (``evaluate.achieved_false_rejects``: k of n held-out
    # normals, with the note when they are too few to resolve the rate); None where it was skipped
    false_rejects: dict | None = None
    false_rejects_5pct: dict | None = None

    def rank_key(self) -> tuple[float, float]:
        """(catch, AUROC) on the proxy set, -1 for a figure it lacks (skipped, out of memory): a finished candidate
        that caught nothing (0.0) still ranks above one never scored."""
        return (-1.0 if self.proxy_catch is None else self.proxy_catch,
                -1.0 if self.proxy_auroc is None else self.proxy_auroc)


def score_within_memory(cand: Candidate, train: list[Sample], proxy: list[Sample], out: Path,
                        settings: TuneSettings, device: torch.device) -> TuneRow:
    """``score_candidate``, or ``cand``'s row with status ``OUT_OF_MEMORY`` when it ran out of memory
    (``ran_out_of_memory``: an allocation that failed while it trained or was scored, or a fit its family refused for
    the memory it needs): logged as a warning naming the candidate and the allocator's words, and the tune goes on
    with the next candidate (which may need less) instead of stopping at the first. Anything else is raised."""
    start = time.perf_counter()
    try:
        return score_candidate(cand, train, proxy, out, settings, device)
    except Exception as exc:  # noqa: BLE001 - sorted by ran_out_of_memory; anything else is raised as it is
        if not ran_out_of_memory(exc):
            raise
        words = " ".join(str(exc).split())[:300] or type(exc).__name__
    gc.collect()   # what the failed candidate held (its frames are gone with the exception): the next one's room
    log.warning("tune: candidate %s ran out of memory (%s); it is marked %r in tune.csv and the tune goes on with "
                "the next candidate", cand.name, words, OUT_OF_MEMORY)
    return TuneRow(cand, OUT_OF_MEMORY, train_s=time.perf_counter() - start)


def ran_out_of_memory(exc: BaseException) -> bool:
    """Whether a candidate failed for memory: an allocator's failure (``shortages.out_of_memory``), a PatchCore
    fit refused by its memory estimate or its allocation failure in words (``FitOutOfMemory``), or an error of ours
    raised from an allocator's failure."""
    return isinstance(exc, FitOutOfMemory) or out_of_memory(exc) or \
        (isinstance(exc, FairEdgeError) and out_of_memory(exc.__cause__))


def score_candidate(cand: Candidate, train: list[Sample], proxy: list[Sample], out: Path,
                    settings: TuneSettings, device: torch.device) -> TuneRow:
    """Train ``cand`` on ``train`` and measure it on the proxy set. Its trainer keeps no resume state
    (``keeps_resume_state`` False): tune has no --resume and ranks final.pt alone, so the run ends with final.pt
    only, never beside a last.pt, and a save that fails names no `fair-edge train --resume` command."""
    start = time.perf_counter()
    model = cand.model_spec()
    trainer = model.impl.training().make_trainer(DatasetSplit("tune", train), model,
                                                 cand.train_config(settings.batch, settings.seed), out / cand.name, device)
    trainer.keeps_resume_state = False
    final = trainer.run()
    drop_resume_state(final)
    scored = score_samples(final, proxy, device=str(device))
    return proxy_row(cand, scored.samples, scored.scores, settings, time.perf_counter() - start, str(final))


def drop_resume_state(final: Path) -> None:
    """Delete the trainer's ``RESUME_STATE`` (last.pt: the weights with the optimiser's state, about 3x final.pt) beside
    the candidate's written ``final``: tune has no --resume and ranks final.pt alone, so a kept last.pt only fills the
    disk (at width 32: 52 MB per candidate beside its 17 MB final.pt). The families' trainers write none under tune
    (``keeps_resume_state``); this catches a trainer that does. Nothing when ``final`` is missing; one that
    cannot be deleted is a warning naming it."""
    last = Path(final).with_name(RESUME_STATE)
    if not Path(final).is_file():
        return
    try:
        last.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("tune: could not delete %s (%s); tune keeps only final.pt: delete it to free the disk",
                    last, exc.strerror or exc)


def proxy_row(cand: Candidate, samples: Sequence[Sample], scores: np.ndarray, settings: TuneSettings,
              train_s: float, checkpoint: str) -> TuneRow:
    """``cand``'s finished row from its scores on the proxy set: ``samples`` (the held-out normals, label 0, and
    the planted copies, label 1, with their kind-size as defect_type) and ``scores`` ((N,) float, in their order).
    Catch at the target rate and at 5 %, each with the false rejects it was measured at (``false_rejects``,
    ``false_rejects_5pct``: with few held-out normals, the catch at 0 false rejects), and catch by kind."""
    labels = np.array([s.label for s in samples], dtype=np.int64)
    normal = labels == 0
    row = TuneRow(cand, "done", metrics.image_auroc(scores, labels),
                  metrics.catch_rate(scores, labels, settings.false_reject_rate),
                  metrics.catch_rate(scores, labels, FIXED_RATE), train_s, checkpoint,
                  false_rejects=achieved_false_rejects(scores[normal], settings.false_reject_rate),
                  false_rejects_5pct=achieved_false_rejects(scores[normal], FIXED_RATE))
    for kind in sorted({s.defect_type for s in samples if s.label == 1}):
        keep = normal | np.array([s.defect_type == kind for s in samples])
        row.by_kind[kind] = metrics.catch_rate(scores[keep], labels[keep], settings.false_reject_rate)
    return row


def tune(split: DatasetSplit, candidates: list[Candidate], out: Path, settings: TuneSettings = TuneSettings(),
         device: torch.device = torch.device("cpu"), data_name: str = "DATA",
         on_row: Callable[[TuneRow], None] | None = None, category: str | None = None) -> list[TuneRow]:
    """Run the candidates within the budget; write tune.csv and tune.json; rows best first. data_name and
    category: the dataset as the user gave it (DATA and --category, None when no product was picked), for the
    chosen train command. ConfigError before anything is written when there is no candidate. tune.csv ranks the
    finished candidates as each one finishes (``KeptRanking``): a tune stopped after one (an error, Ctrl-C) leaves
    them there, without tune.json, and an error of ours is raised as a ``TuneStopped`` naming that file."""
    if not candidates:
        raise ConfigError("tune needs at least one candidate; found none (default_candidates gives the base and "
                          "one change at a time).")
    out.mkdir(parents=True, exist_ok=True)
    train, held = split_normals(split.train, settings.holdout, settings.seed)
    proxy = write_proxy_set(held, out / "proxy", settings)
    start, rows, kept = time.perf_counter(), [], KeptRanking(out, settings)
    try:
        for cand in candidates:
            if time.perf_counter() - start > settings.budget_s:
                rows.append(TuneRow(cand))
                continue
            row = score_within_memory(cand, train, proxy, out / "candidates", settings, device)
            rows.append(row)
            if row.status != OUT_OF_MEMORY:
                kept.add(row)
                if on_row is not None:
                    on_row(row)
    except BaseException as exc:  # a failure or Ctrl-C: the finished candidates' figures stay in tune.csv
        stopped = kept.stopped(exc)
        if stopped is None:
            raise
        raise stopped from exc
    rows.sort(key=lambda r: r.rank_key(), reverse=True)
    write_results(rows, out, settings, data_name, len(train), len(held), proxy, category=category)
    return rows


class TuneStopped(FairEdgeError):
    """A tune stopped by an error of ours (its ``__cause__``: a checkpoint that could not be written, ...) after at
    least one candidate finished; its message is the cause's, then where the finished candidates' figures are kept
    (``KeptRanking.stopped``)."""


@dataclass
class KeptRanking:
    """The finished candidates of a running tune, ranked in OUT/tune.csv (no tune.json) as each one finishes, so a
    tune stopped later (a disk that the next candidate's checkpoints fill, an error, Ctrl-C) leaves their figures
    there. ``saved``: how many of ``finished`` tune.csv holds; ``write_error``: why the last write failed (None: it
    did not); ``warned``: a failed write was logged (once a run)."""

    out: Path
    settings: TuneSettings
    finished: list[TuneRow] = field(default_factory=list)
    saved: int = 0
    write_error: OSError | None = None
    warned: bool = False

    def add(self, row: TuneRow) -> None:
        """Rank the finished ``row`` with the others in tune.csv; the first write that fails is a warning, and the
        tune goes on (the next candidate's write tries again)."""
        self.finished.append(row)
        self.save()
        if self.write_error is not None and not self.warned:
            self.warned = True
            log.warning("tune: %s not written (%s); tune goes on and writes it again after the next candidate",
                        self.out / "tune.csv", self.write_error.strerror or self.write_error)

    def save(self) -> None:
        """Write tune.csv of every finished row, best first, whole or not at all (``write_whole``)."""
        ranked = self.ranked()
        try:
            write_whole(self.out, {"tune.csv": results_csv(ranked, self.settings)}, ranked[0])
        except TuneWriteError as exc:
            self.write_error = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            return
        self.saved, self.write_error = len(self.finished), None

    def ranked(self) -> list[TuneRow]:
        """The finished rows, best first (``TuneRow.rank_key``)."""
        return sorted(self.finished, key=lambda r: r.rank_key(), reverse=True)

    def stopped(self, exc: BaseException) -> FairEdgeError | None:
        """After the tune was stopped by ``exc``: tune.csv written again if it lacks a finished row, and the error to
        raise in place of ``exc``: a ``TuneStopped`` (``exc``'s message, then ``kept_text``) for an error of ours;
        None for Ctrl-C or SIGTERM (KeyboardInterrupt, ``TrainingInterrupted``: the caller names tune.csv in its line;
        a tune.csv short of rows is a warning with the figures) and for a bug (``kept_text`` logged as an error).
        None as well when no candidate finished."""
        if not self.finished:
            return None
        if self.saved < len(self.finished):
            self.save()
        kept = kept_text(self.ranked(), self.out, self.saved, self.write_error)
        if isinstance(exc, (KeyboardInterrupt, TrainingInterrupted)):
            if self.write_error is not None:
                log.warning("tune: %s", kept)
            return None
        if isinstance(exc, FairEdgeError):
            return TuneStopped(f"{exc} {kept}")
        log.error("tune failed: %s", kept)
        return None


def kept_text(ranked: list[TuneRow], out: Path, saved: int, write_error: OSError | None) -> str:
    """The sentence saying where the finished candidates' figures are (``ranked``, best first): OUT/tune.csv, which
    the next tune into ``out`` deletes as it starts over; or, when tune.csv holds only ``saved`` of them
    (``write_error``: why), their figures themselves."""
    n = len(ranked)
    which = f"The {n} candidate{'' if n == 1 else 's'} that finished before it"
    csv_path = out / "tune.csv"
    if write_error is None:
        return (f"{which} {'is' if n == 1 else 'are'} ranked in {csv_path} (no tune.json: nothing chosen); the next "
                f"tune into {out} deletes it as it starts over: copy it first.")
    figures = "; ".join(f"{r.candidate.name}: proxy catch {r.proxy_catch:.3f}, AUROC {r.proxy_auroc:.3f}"
                        for r in ranked)
    held = f"it holds {saved} of them" if saved else "it was never written"
    return (f"{which} could not all be kept in {csv_path} ({write_error.strerror or write_error}; {held}): "
            f"{figures}.")


def catch_columns(settings: TuneSettings) -> list[str]:
    """tune.csv's catch columns: proxy catch at the target false-reject rate, then at 5 % unless the target is 5 %
    (--false-reject-rate 0.05: one column, not two of one name). Named by ``percent_label``, so two different
    rates never share a name (0.0499: proxy_catch_at_4.99%, beside proxy_catch_at_5.0%)."""
    target, five = (f"proxy_catch_at_{percent_label(rate)}" for rate in (settings.false_reject_rate, FIXED_RATE))
    return [target] if settings.false_reject_rate == FIXED_RATE else [target, five]


def percent_label(rate: float) -> str:
    """A share as the percentage naming a tune.csv column: one decimal where that is exact ("0.5%", "5.0%", as
    named before), else every digit of the rate as written (0.0499: "4.99%", 0.00125: "0.125%"), so two different
    rates never share a label. From the shortest decimal of ``rate`` (its repr), not from rate * 100, which can
    carry float noise (0.0499 * 100 is 4.99 here, 0.07 * 100 is 7.000000000000001)."""
    percent = (Decimal(repr(float(rate))) * 100).normalize()
    if percent == percent.quantize(Decimal("0.1")):
        return f"{percent:.1f}%"
    return f"{percent:f}%"


def planted_pairs(proxy: Sequence[Sample]) -> dict[str, int]:
    """{"KIND-SIZE": count} of the proxy defects ``write_proxy_set`` planted (its defective samples), in planting
    order: with fewer held-out images than kind-size pairs, only the first pairs are planted."""
    counts: dict[str, int] = {}
    for sample in proxy:
        if sample.label == 1:
            counts[sample.defect_type] = counts.get(sample.defect_type, 0) + 1
    return counts


def proxy_summary(planted: dict[str, int], settings: TuneSettings) -> dict:
    """tune.json's proxy entries: proxy_kinds and proxy_sizes, those of ``settings`` that were planted (in its
    order), and proxy_planted, {"KIND-SIZE": count} (``planted_pairs``)."""
    kinds, sizes = zip(*(name.rsplit("-", 1) for name in planted)) if planted else ((), ())
    return {"proxy_kinds": [k for k in settings.kinds if k in kinds],
            "proxy_sizes": [z for z in settings.sizes if z in sizes], "proxy_planted": planted}


class TuneWriteError(FairEdgeError, OSError):
    """tune.csv or tune.json could not be written (``write_results``); an OSError still, for callers that catch one."""


def write_results(rows: list[TuneRow], out: Path, settings: TuneSettings, data: str, n_train: int, n_held: int,
                  proxy: Sequence[Sample] = (), *, category: str | None = None) -> None:
    """OUT/tune.csv (one row per candidate, best first) and OUT/tune.json (the chosen one, with its train command
    on ``data`` and ``category``: the dataset as the user gave it; the false rejects its catch was measured at,
    false_rejects_achieved: ``achieved_false_rejects`` on the held-out normals, k of n, which with fewer than
    1 / false_reject_rate of them is 0; and the proxy defects planted: ``proxy``, the proxy set ``write_proxy_set``
    wrote), each written whole beside its place and renamed
    into it, tune.json last (``write_whole``): a folder without tune.json holds no finished run. DataError (after
    tune.csv, listing every candidate skipped) when no candidate finished within the budget; TuneWriteError when a
    file cannot be written."""
    files = {"tune.csv": results_csv(rows, settings)}
    best = rows[0]
    if best.status != "done":
        write_whole(out, files, best)
        raise DataError(nothing_finished(rows))
    chosen = {"name": best.candidate.name, "family": best.candidate.family, "width": best.candidate.width,
              "steps": best.candidate.steps, "lr": best.candidate.lr, "preprocess": best.candidate.preprocess.to_dict(),
              "train_command": best.candidate.train_command(data, settings, category)}
    summary = {"chosen": chosen, "rule": "max proxy catch at the target false-reject rate, then proxy AUROC",
               "false_reject_rate": settings.false_reject_rate, "false_rejects_achieved": best.false_rejects,
               "train_images": n_train, "held_out_normals": n_held,
               **proxy_summary(planted_pairs(proxy), settings),
               "by_kind": best.by_kind, "table": "tune.csv"}
    files[TUNE_FINISHED] = json.dumps(summary, indent=2) + "\n"
    write_whole(out, files, best, chosen["train_command"])


def nothing_finished(rows: list[TuneRow]) -> str:
    """Why no candidate of ``rows`` finished, for the DataError after tune.csv: those that ran out of memory
    (``OUT_OF_MEMORY``, named, with the fixes) and those the budget skipped, with the fix of each."""
    short = [r.candidate.name for r in rows if r.status == OUT_OF_MEMORY]
    if not short:
        return "the budget ended before any candidate finished; raise --budget-min."
    skipped = len(rows) - len(short)
    text = (f"no candidate finished: {len(short)} ran out of memory ({', '.join(short)})"
            + (f" and {skipped} {'was' if skipped == 1 else 'were'} skipped by the budget" if skipped else "")
            + "; tune with a smaller --image-size or fewer normal images, free memory (other programs; a raised "
            "ulimit -v or container memory limit) or use a machine with more memory")
    return text + (", and raise --budget-min." if skipped else ".")


def results_csv(rows: list[TuneRow], settings: TuneSettings) -> str:
    """tune.csv's text: the header, then one line per candidate in ``rows``' order (best first), ranked from 1."""
    catch = catch_columns(settings)
    fields = ["rank", "name", "family", "status", *catch,
              "proxy_auroc", "train_s", "model", "steps", "image_size", "filter", "cutoff", "tiling", "checkpoint"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(fields)
    for rank, r in enumerate(rows, 1):
        p = r.candidate.preprocess
        c = r.candidate
        caught = [fmt(r.proxy_catch), fmt(r.proxy_catch_5pct)][:len(catch)]
        w.writerow([rank, c.name, c.family, r.status, *caught,
                    fmt(r.proxy_auroc), "" if r.train_s is None else f"{r.train_s:.1f}",
                    c.model_spec().describe(), c.steps or "family default", p.image_size, p.filter,
                    f"{p.cutoff:g}", json.dumps(p.tiling.to_dict()) if p.tiling else "", r.checkpoint])
    return text.getvalue()


def write_whole(out: Path, files: dict[str, str], best: TuneRow, train_command: str = "") -> None:
    """Write each of ``files`` ({name: text}, in order) to ``out/.NAME.partial`` (``PARTIAL``), then rename them
    into place in that order, so each is whole or absent and the last (tune.json) marks a finished run. An OSError
    (a full disk) removes the temporary files and is a TuneWriteError (``tune_write_failure``: ``best``, the best
    candidate, and its ``train_command`` are named, so the ranking is not lost)."""
    staged = []
    try:
        for name, text in files.items():
            staged.append(out / PARTIAL.format(name))
            with staged[-1].open("w", newline="") as fh:
                fh.write(text)
        for name, partial in zip(files, staged):
            os.replace(partial, out / name)
    except OSError as exc:
        for partial in staged:
            discard_unfinished(partial, "tune result")
        raise TuneWriteError(tune_write_failure(out, exc, best, train_command)) from exc


def tune_write_failure(out: Path, exc: OSError, best: TuneRow, train_command: str) -> str:
    """The message of a tune whose results could not be written into ``out`` (``exc``): the file and the error,
    the best candidate (and ``train_command``, "" when none finished), what is left, the cause and the fix by errno
    (``disk.write_failure``: a full disk with its free space, a read-only one, no permission)."""
    where = f"{exc.filename}: " if exc.filename else ""
    ranked = f"; the best candidate was {best.candidate.name} (`{train_command}`)" if train_command else ""
    return (f"the tune results were not written to {out} ({where}{exc.strerror or exc}){ranked}; {out} holds no "
            f"{TUNE_FINISHED}, so the next tune there deletes what this one left: {write_failure(out, exc)}, then "
            "run the same command again.")

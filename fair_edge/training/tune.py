"""``fair-edge tune``: choose settings from normal images only.

1. The normal training images are split (fixed seed) into a training part and a held-out part
   (``holdout``, default 20 %).
2. Proxy test set: every held-out image as a normal, plus one copy of it with a planted proxy defect
   (fair_edge.training.proxy_defects: the kind-size pairs, every kind at the small size first, cycled over the
   images, so with fewer held-out images than pairs only the first are planted; tune.json lists those planted).
   The proxy kinds differ from the training synthesis, and no real defect image is ever read.
3. Each candidate (one setting changed at a time from the base: model family, cutoff, filter, width,
   training length, image size or tiling: ``fair_edge.training.tune_candidates``) is trained on the training part
   and scored on the proxy set.
4. Ranking rule: the share of proxy defects caught at ``false_reject_rate`` on the held-out normals,
   ties broken by proxy image AUROC. Candidates are run in order until ``budget_s`` is spent; those
   not reached are listed as skipped. One that runs out of memory (``score_within_memory``) is listed as
   ``out of memory`` and the next one runs: one candidate too big for the machine does not stop the tune.
Writes OUT/tune.csv (every candidate) and OUT/tune.json (the chosen settings, the train command, the false rejects its
catch was measured at and the proxy defects planted: ``fair_edge.training.tune_results``), each under a temporary name
beside it (``.NAME.partial``) and renamed into place, tune.json last, and keeps each candidate's final.pt under
OUT/candidates/NAME/ alone: its trainer keeps no resume state (``keeps_resume_state`` False: no last.pt, about 3x the
size, is written beside final.pt, so a nearly full disk never has to hold both; a family trainer without that setting
has its last.pt deleted once final.pt is written: ``drop_resume_state``; a candidate stopped by Ctrl-C writes none),
and a candidate's failed save names no `train --resume` command (tune has none: it starts over). A write that fails (a
full disk) is a ``TuneWriteError`` naming OUT, the cause and the fix (``disk.write_failure``). While the candidates
run, tune.csv ranks those finished so far, rewritten as each one finishes (``KeptRanking``), so a tune that stops
after one (a full disk at the next, an error, Ctrl-C) leaves their figures there, without tune.json: the error says so
(``TuneStopped``), an interrupted tune's caller names the file. A folder holds one tune run: ``tune`` refuses an OUT
that already holds a finished one (tune.json, written last: ``check_fresh_tune``) unless told to delete it first
(``clear_tune``, --overwrite); what an interrupted or failed run left (candidates/, proxy/, a tune.csv without
tune.json: ``unfinished_tune``) is deleted by the next run into OUT.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fair_edge.training import metrics
from fair_edge.training.loop import RESUME_STATE
from fair_edge.images import write_png
from fair_edge.training.data import DatasetSplit, Sample
from fair_edge.training.pixels import read_frames
from fair_edge.errors import ConfigError, DataError, FairEdgeError
from fair_edge.training.evaluate import achieved_false_rejects, score_samples
from fair_edge.models.patchcore.train import FitOutOfMemory
from fair_edge.shortages import out_of_memory
from fair_edge.training.proxy_defects import plant
from fair_edge.training.tune_candidates import Candidate, TuneSettings
from fair_edge.training.tune_results import FIXED_RATE, OUT_OF_MEMORY, KeptRanking, TuneRow, write_results

log = logging.getLogger(__name__)


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

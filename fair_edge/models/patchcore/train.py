"""Fitting PatchCore: one pass of the frozen backbone over the normal images, then the coreset.

Nothing is optimised, so there are no training steps: a "step" is one batch of images through the
backbone (the progress bar counts them), and the greedy coreset of all patch features follows, then the bank's
neighbour table; ``on_progress(phase, done, total)`` reports the phases around the pass ("loading" images,
"coreset" rows chosen, "neighbours"), so a display shows the whole fit, not just the pass.
``last.pt`` and then ``final.pt`` are written when the bank is complete; an interrupted fit
leaves nothing half-made (re-running it costs one pass), and resuming a finished fit only re-writes
``final.pt`` from ``last.pt``. A fit that keeps no resume state (``keeps_resume_state`` False: a ``fair-edge tune``
candidate) writes ``final.pt`` alone, never beside a ``last.pt``.

Memory: the fit holds the training images (float32), then their patch features, then the coreset's working set
beside the features (the images freed). ``fit_memory`` estimates the peak from the image count and settings, and
the fitter refuses a fit that does not fit in the memory available (``shortages.available_memory``) before it reads
the images, naming the fixes; an allocation that fails anyway (``shortages.out_of_memory``) ends in the same kind of
message.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
from fair_edge.training.data import DatasetSplit
from fair_edge.training.pixels import load_images, model_image_count
from fair_edge.errors import ConfigError
from fair_edge.models.weights import load_backbone_weights
from fair_edge.models.patchcore.coreset import bank_neighbours, distance_step, greedy_coreset, greedy_coreset_bytes
from fair_edge.models.patchcore.model import BANK_FLIPS, PatchcoreDetector, flipped_views, memory_bytes
from fair_edge.models.registry import ModelSpec
from fair_edge.models.training_contract import resumable_checkpoint
from fair_edge.shortages import available_memory, in_words, out_of_memory
from fair_edge.training.loop import discard_resume_state
from fair_edge.training.resume import ReadImages, check_same_data, training_files

log = logging.getLogger(__name__)
PhaseProgress = Callable[[str, int, int], None]  # on_progress(phase, done, total): a phase's units done of total


@dataclass(frozen=True)
class FitConfig:
    """PatchCore's training settings. batch: images per backbone pass. seed: coreset start and random projection."""

    batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.batch) < 1:
            raise ConfigError(f"batch must be >= 1; found {self.batch}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FitConfig":
        return cls(**{k: data[k] for k in asdict(cls()) if k in data})


def bank_size(patches: int, settings) -> int:
    """Rows of the bank for ``patches`` training patches: ceil(ratio x patches), at most ``bank_max``."""
    return max(1, min(settings.bank_max, math.ceil(patches * settings.coreset_ratio), patches))


RAISE_BANK_MAX = "`fair-edge train --model patchcore --set bank_max=N`"   # a command that has the option


def bank_cap_warning(patches: int, rows: int, settings) -> str:
    """What a capped coreset logs: the rows asked and kept, and the command that raises bank_max."""
    share = 100 * bank_cap_facts(patches, rows, settings)["coreset_ratio_effective"]
    return (f"PatchCore: bank_max={settings.bank_max} caps the coreset: {patches} training patches x "
            f"coreset_ratio={settings.coreset_ratio:g} would keep {math.ceil(patches * settings.coreset_ratio)} rows; "
            f"the bank keeps {rows} ({share:.2f} % of the patches). For the ratio asked, train with a larger "
            f"bank: {RAISE_BANK_MAX}.")


def bank_cap_facts(patches: int, rows: int, settings) -> dict:
    """{"coreset_ratio_effective": rows / patches, "bank_capped": whether bank_max bound (rows below the ratio's)}."""
    return {"coreset_ratio_effective": round(rows / max(patches, 1), 5),
            "bank_capped": rows < min(patches, math.ceil(patches * settings.coreset_ratio))}


UNWEIGHTED_BANK = ("PatchCore: the bank has %d row(s), so no row has a bank neighbour and the reweighting is skipped "
                   "(scores are the unweighted map's); more training images or a larger coreset_ratio give it one")


# bytes per input pixel of a batch that a backbone pass holds (the taps' activations, no gradients), measured at
# 256 px, batch 8, on the CPU: efficientnet_lite0 384, wide_resnet50_2 608
PASS_BYTES_PER_PIXEL = 640
MEMORY_SLACK = 1.1  # the allocator's share on top of the tensors (freed blocks not yet returned, fragmentation)


def patch_rows(images: int, image_size: int, settings) -> int:
    """Rows of the patch features of ``images`` training images (tiles) at ``image_size`` px: images x views
    (``bank_flips``) x the finest tap's grid, ceil(S / stride) squared."""
    grid = math.ceil(image_size / (4 * 2 ** settings.taps[0]))
    return images * (1 + len(BANK_FLIPS[settings.bank_flips])) * grid * grid


def fit_memory(images: int, image_size: int, settings, batch: int, on_cpu: bool = True) -> dict[str, int]:
    """Bytes a fit of ``images`` training images (tiles) needs at its peak, by part and where it lies.

    {"images": float32 (images, 3, S, S); "features": patch rows x feature_dim float32; "coreset": the greedy
    coreset's (or the bank and neighbour table's, if larger) working set beside the features; "pass": one backbone
    batch; "host": the peak in RAM; "device": the peak in accelerator memory (0 when ``on_cpu``)}. Phases: reading
    (the images, held once: ``pixels.ImageBuffer``), the backbone pass (images + features + a batch), the coreset
    (features + coreset: the images are freed). Peaks are times ``MEMORY_SLACK``.
    """
    rows = patch_rows(images, image_size, settings)
    dim = settings.feature_dim
    parts = {"images": images * 3 * image_size * image_size * 4, "features": rows * dim * 4,
             "pass": PASS_BYTES_PER_PIXEL * batch * image_size * image_size}
    bank = bank_size(rows, settings)
    bank_work = memory_bytes(bank, dim, settings.neighbours) + 4 * bank * distance_step(bank, most=4096)
    parts["coreset"] = max(greedy_coreset_bytes(rows, dim), bank_work)
    on_device = parts["features"] + max(parts["pass"], parts["coreset"])
    if on_cpu:
        host = max(parts["images"] + parts["features"] + parts["pass"], on_device)
        return dict(parts, host=int(host * MEMORY_SLACK), device=0)
    return dict(parts, host=int(parts["images"] * MEMORY_SLACK), device=int(on_device * MEMORY_SLACK))


def memory_fixes(settings, on_cpu: bool) -> str:
    """The ways to a smaller fit: fewer images, a smaller --image-size, and the settings that shrink the features."""
    fixes = ["fewer training images", "a smaller --image-size (memory goes with its square)"]
    if settings.channel_reduction == "none" or settings.embed_dim > 64:
        fixes.append("fewer feature channels (--set embed_dim=64"
                     + (" --set channel_reduction=grouped" if settings.channel_reduction == "none" else "") + ")")
    if settings.bank_flips != "none":
        fixes.append(f"--set bank_flips=none (its {len(BANK_FLIPS[settings.bank_flips]) + 1} views multiply the features)")
    if settings.taps[0] == 0:
        fixes.append("taps without the stride-4 map (--set taps=1,2: a quarter of the patches)")
    fixes.append("a machine with more memory" if on_cpu else "a GPU with more memory, or --device cpu")
    return ", ".join(fixes[:-1]) + " or " + fixes[-1]


def describe_fit(images: int, tiles: int, image_size: int, settings, need: dict[str, int]) -> tuple[str, str]:
    """(the fit, its parts) in words: ("16 training images (64 tiles) at 256 px", "images 48 MiB, patch features
    32 MiB = 65536 patches x 128 channels, coreset 71 MiB") for ``need`` = ``fit_memory``."""
    subject = f"{images} training images" + (f" ({tiles} tiles)" if tiles != images else "") + f" at {image_size} px"
    rows = patch_rows(tiles, image_size, settings)
    return subject, (f"images {in_words(need['images'])}, patch features {in_words(need['features'])} = {rows} "
                     f"patches x {settings.feature_dim} channels, coreset {in_words(need['coreset'])}")


def check_fit_memory(need: dict[str, int], what: tuple[str, str], settings, device: torch.device) -> None:
    """FitOutOfMemory before a fit that needs more memory than is available (``need``: ``fit_memory``, against
    ``available_memory`` and, on a GPU, its free memory), naming the fit (``what``: ``describe_fit``), the estimate,
    what is available and the fixes. Otherwise logs the estimate (one line)."""
    on_cpu = device.type != "cuda"
    checks = [(need["host"], *available_memory(), "memory")]
    if not on_cpu:
        free, _ = torch.cuda.mem_get_info(device)
        checks.append((need["device"], int(free), f"free memory of {device}", "GPU memory"))
    subject, parts = what
    for needed, available, source, kind in checks:
        if available is not None and needed > available:
            raise FitOutOfMemory(f"a PatchCore fit of {subject} needs about {in_words(needed)} of {kind} at its "
                                 f"peak ({parts}); {in_words(available)} is available ({source}). Fit with "
                                 f"{memory_fixes(settings, on_cpu)}.")
    room = " and ".join(f"{in_words(n)} of {kind} ({in_words(a)} available)" if a is not None else
                        f"{in_words(n)} of {kind} (available memory unknown)" for n, a, _, kind in checks)
    log.info("PatchCore fit of %s: about %s at its peak (%s)", subject, room, parts)


class FitOutOfMemory(ConfigError):
    """A PatchCore fit that does not fit in the memory available: refused by its estimate (``check_fit_memory``) or
    an allocation that failed (``PatchcoreFitter.out_of_memory_error``); the message names the fit, the memory and the
    fixes. A ConfigError still, for callers that catch one."""


class PatchcoreFitter:
    """Owns the detector and the normal images of one fit. ``run(on_step)`` -> final.pt.

    Refuses (ConfigError) a fit that needs more memory than is available before reading the images
    (``check_fit_memory``); ``images`` (N, 3, S, S) float32 is freed (None) once the backbone pass is done.
    on_progress(phase, done, total), or None: "loading" (images read of the training samples) while constructed;
    in ``run``, after the pass that ``on_step`` counts, "coreset" (rows chosen of the bank's) and "neighbours"
    (bank rows, 0 then all: one block computation). ``after_pass``: those phases in words, for the run's
    first line (the pass alone is often the smaller part: 144 s of 498 s on 4 700 images at 128 px)."""

    fits_once = True  # one pass over the data, no optimisation steps (models.training_contract.FamilyTrainer)
    stop_signals: tuple[int, ...] = ()  # no step boundary to stop at: Ctrl-C ends the fit, nothing half-made is left
    # run() leaves last.pt beside final.pt (`train --resume`); `tune` sets False: final.pt alone, never beside last.pt
    keeps_resume_state = True

    def __init__(self, data: DatasetSplit, model: ModelSpec, cfg: FitConfig, out_dir: Path, device: torch.device,
                 weights: str | Path | None = None, weights_sha256: str | None = None,
                 on_progress: PhaseProgress | None = None) -> None:
        model.settings.check_fit()  # a checkpoint may hold neighbours=1 with reweight; a new fit may not
        self.model, self.cfg, self.out_dir, self.device = model, cfg, Path(out_dir), device
        size, tiling = model.preprocess.image_size, model.preprocess.tiling
        tiles = model_image_count(data.train, tiling)  # every file's own tiles (headers): frames of several sizes
        self.memory_needed = fit_memory(tiles, size, model.settings, min(cfg.batch, tiles), device.type != "cuda")
        self.fit_text = describe_fit(len(data.train), tiles, size, model.settings, self.memory_needed)
        check_fit_memory(self.memory_needed, self.fit_text, model.settings, device)
        self.on_progress = on_progress
        self.detector: PatchcoreDetector = self.within_memory("building its backbone",
                                                              lambda: model.build(device=device))
        self.weight_source = self.within_memory("loading its backbone's weights", lambda: load_backbone_weights(
            self.detector.backbone, model.settings.backbone, weights, weights_sha256))
        self._report("loading", 0, len(data.train))
        read = itertools.count(1)
        images, kept = self.within_memory("reading the images", lambda: load_images(
            data.train, size, tiling=tiling, rows=tiles,
            progress=lambda: self._report("loading", next(read), len(data.train))))
        self.images: torch.Tensor | None = torch.from_numpy(images)
        self.batch = min(cfg.batch, len(self.images))
        self.total_steps = -(-len(self.images) // self.batch)
        self.step = 0
        self.use_amp = False
        self.data_summary = dict(data.summary(), train_images_used=len(kept), train_tiles=len(images),
                                 backbone_weights=self.weight_source.to_dict())
        self.data_files = training_files(data.train)  # names and sizes: --resume refuses other data
        self.read_images = ReadImages.of(data.train, kept)  # each file hashed once: --resume compares the bytes
        self.training_images = self.read_images.record()  # refused as held-out images
        self.run_info: dict = {}  # where the data came from (train_resume.RunSource), stored for --resume
        self.timings: dict[str, float] = {}
        self.bank_facts: dict = {}  # coreset_ratio_effective, bank_capped (bank_cap_facts)
        patches = patch_rows(len(self.images), size, model.settings)
        self.after_pass = (f"then a coreset of {bank_size(patches, model.settings)} of its {patches} patch features "
                           f"and their neighbour table")

    def _report(self, phase: str, done: int, total: int) -> None:
        """on_progress(phase, done, total), when there is one."""
        if self.on_progress is not None:
            self.on_progress(phase, done, total)

    def checkpoint(self, with_train_state: bool = True) -> Checkpoint:
        train_state = {"step": self.step, "config": self.cfg.to_dict(), "run": self.run_info,
                       "data_files": self.data_files, "image_digests": self.read_images.rows(self.run_info),
                       "total_steps": self.total_steps} if with_train_state else None
        summary = dict(self.data_summary, steps=self.step, batch=self.batch, train_config=self.cfg.to_dict(),
                       bank_rows=self.detector.memory.rows, fit_seconds=self.timings, **self.bank_facts)
        return Checkpoint(self.model, self.model.impl.weights(self.detector), summary, train_state,
                          self.training_images)

    def resume(self) -> None:
        """Take the bank of a finished fit in ``out_dir/last.pt`` (same model settings and images, by their bytes),
        so ``run`` only re-writes final.pt, with the ``training_images`` record the bank was fitted on."""
        ckpt = resumable_checkpoint(self.out_dir, self.model)
        check_same_data(self.out_dir / "last.pt", ckpt.train_state, self.data_files, self.total_steps,
                        ckpt.data_summary, self.data_summary, self.read_images.rows(self.run_info),
                        ckpt.training_images)
        if ckpt.training_images is not None:  # what the bank was fitted on (the same bytes: checked)
            self.training_images = ckpt.training_images
        self.model.impl.load_weights(self.detector, ckpt.state_dict)
        self.step = int(ckpt.train_state["step"])
        self.timings = dict(ckpt.data_summary.get("fit_seconds") or {})
        self.bank_facts = {k: ckpt.data_summary[k] for k in ("coreset_ratio_effective", "bank_capped")
                           if k in ckpt.data_summary}

    def within_memory(self, phase: str, make: Callable[[], Any]) -> Any:
        """``make()``, its allocation failure (``out_of_memory``) raised as ``out_of_memory_error(phase)``: the model's
        backbone, its weights and the images are allocated so, each naming its phase (an allocation that failed in
        ``model.build`` under ``ulimit -v`` was a raw allocator traceback). Anything else is raised as it is."""
        try:
            return make()
        except (MemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            raise self.out_of_memory_error(phase, exc) from exc

    def out_of_memory_error(self, phase: str, exc: BaseException) -> FitOutOfMemory:
        """The FitOutOfMemory of an allocation that failed during ``phase`` ("the coreset"): the fit, the estimate,
        what is available, the allocator's words and the fixes."""
        available, source = available_memory()
        there = f"{in_words(available)} available ({source})" if available is not None else "available memory unknown"
        need = self.memory_needed
        estimate = f"about {in_words(need['host'])} of memory" + (
            f" and {in_words(need['device'])} of GPU memory" if need["device"] else "")
        words = " ".join(str(exc).split())[:200] or type(exc).__name__
        return FitOutOfMemory(f"a PatchCore fit of {self.fit_text[0]} ran out of memory during {phase} (estimated "
                              f"peak {estimate}: {self.fit_text[1]}; {there}): {words}. Fit with "
                              f"{memory_fixes(self.model.settings, self.device.type != 'cuda')}.")

    @torch.no_grad()
    def features(self, on_step: Callable[[int, int, float, float], None] | None) -> torch.Tensor:
        """(N * V * h * w, D) float32 patch features of every training image and its V - 1 flipped views
        (``bank_flips``), on ``device``: batch by batch, each view's images in order, written into one tensor
        allocated after the first batch (no second copy, as concatenating the batches made)."""
        if self.images is None:
            raise ConfigError("this fitter's images were freed after its backbone pass (a fit that failed after it); "
                              "make a new PatchcoreFitter to fit again.")
        out, filled = None, 0
        views = 1 + len(BANK_FLIPS[self.model.settings.bank_flips])
        for i in range(self.total_steps):
            t = time.perf_counter()
            chunk = self.images[i * self.batch : (i + 1) * self.batch].to(self.device)
            for view in flipped_views(chunk, self.model.settings.bank_flips):
                f = self.detector.patch_features(view)
                f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                if out is None:
                    out = f.new_empty((len(self.images) * views * (len(f) // len(chunk)), f.shape[1]))
                out[filled : filled + len(f)] = f
                filled += len(f)
            self.step = i + 1
            if on_step is not None:
                on_step(self.step, self.total_steps, float("nan"), len(chunk) / max(time.perf_counter() - t, 1e-9))
        if out is None or filled != len(out):
            raise ConfigError(f"the backbone gave {filled} patch rows for {len(self.images)} images x {views} views; "
                              f"expected {0 if out is None else len(out)} (the same grid for every image).")
        return out

    def run(self, on_step: Callable[[int, int, float, float], None] | None = None) -> Path:
        """Fit the bank (unless resumed from a finished fit); write last.pt and final.pt (without
        ``keeps_resume_state``: any last.pt deleted, then final.pt alone); returns final.pt.

        on_step(step, total, loss, images_per_s) after each backbone batch (loss is NaN: nothing is optimised).
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.step < self.total_steps:
            self.detector.eval()
            phase = "the backbone pass"
            try:
                t0 = time.perf_counter()
                patches = self.features(on_step)
                self.images = None  # not needed any more: the coreset's room
                t1 = time.perf_counter()
                count = len(patches)
                rows = bank_size(count, self.model.settings)
                self.bank_facts = bank_cap_facts(count, rows, self.model.settings)
                if self.bank_facts["bank_capped"]:
                    log.warning(bank_cap_warning(count, rows, self.model.settings))
                phase = "the coreset"
                self._report("coreset", 0, rows)
                bank = patches[greedy_coreset(patches, rows, seed=self.cfg.seed,
                                              on_progress=functools.partial(self._report, "coreset"))]
                self._report("coreset", rows, rows)  # also when every patch is kept (no selection to report)
                del patches
                t2 = time.perf_counter()
                phase = "the bank's neighbour table"
                self._report("neighbours", 0, rows)
                self.detector.set_bank(bank, bank_neighbours(bank, self.model.settings.neighbours))
                self._report("neighbours", rows, rows)
            except (MemoryError, RuntimeError) as exc:
                self.step = 0  # no bank: a second run() must not write one that is empty
                if not out_of_memory(exc):
                    raise
                raise self.out_of_memory_error(phase, exc) from exc
            if self.model.settings.reweight and not self.detector.memory.can_reweight:
                log.warning(UNWEIGHTED_BANK, rows)
            self.timings = {"features": round(t1 - t0, 3), "coreset": round(t2 - t1, 3),
                            "neighbours": round(time.perf_counter() - t2, 3), "patches": count}
        if self.keeps_resume_state:
            save_checkpoint(self.out_dir / "last.pt", self.checkpoint())
        else:
            discard_resume_state(self.out_dir)  # final.pt alone: never beside a last.pt (``keeps_resume_state``)
        return save_checkpoint(self.out_dir / "final.pt", self.checkpoint(with_train_state=False))


def default_train_config() -> FitConfig:
    """Batch 8 images per backbone pass, seed 0."""
    return FitConfig()


def make_trainer(split: DatasetSplit, model: ModelSpec, cfg: FitConfig, out_dir: Path, device: torch.device, *,
                 backbone_weights: str | None = None, backbone_sha256: str | None = None,
                 on_progress: PhaseProgress | None = None) -> PatchcoreFitter:
    """PatchCore's fitter (its extras: the backbone's weight file and SHA-256, as LGFDR takes them; on_progress:
    ``PatchcoreFitter``'s phases, for a display)."""
    return PatchcoreFitter(split, model, cfg, out_dir, device, backbone_weights, backbone_sha256, on_progress)

"""Fitting PatchCore: one pass of the frozen backbone over the normal images, then the coreset.

Nothing is optimised, so there are no training steps: a "step" is one batch of images through the
backbone (the progress bar counts them), and the greedy coreset of all patch features follows.
``final.pt`` and ``last.pt`` are written together when the bank is complete; an interrupted fit
leaves nothing half-made (re-running it costs one pass), and resuming a finished fit only re-writes
``final.pt`` from ``last.pt``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
from fair_edge.training.data import DatasetSplit, load_images
from fair_edge.errors import ConfigError
from fair_edge.models.weights import load_backbone_weights
from fair_edge.models.patchcore.coreset import bank_neighbours, greedy_coreset
from fair_edge.models.patchcore.model import PatchcoreDetector, flipped_views
from fair_edge.models.registry import ModelSpec
from fair_edge.models.training_contract import resumable_checkpoint
from fair_edge.training.resume import check_same_data, training_files

log = logging.getLogger(__name__)


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


class PatchcoreFitter:
    """Owns the detector and the normal images of one fit. ``run(on_step)`` -> final.pt."""

    fits_once = True  # one pass over the data, no optimisation steps (models.training_contract.FamilyTrainer)

    def __init__(self, data: DatasetSplit, model: ModelSpec, cfg: FitConfig, out_dir: Path, device: torch.device,
                 weights: str | Path | None = None, weights_sha256: str | None = None) -> None:
        model.settings.check_fit()  # a checkpoint may hold neighbours=1 with reweight; a new fit may not
        self.model, self.cfg, self.out_dir, self.device = model, cfg, Path(out_dir), device
        self.detector: PatchcoreDetector = model.build(device=device)
        self.weight_source = load_backbone_weights(self.detector.backbone, model.settings.backbone, weights, weights_sha256)
        images, kept = load_images(data.train, model.preprocess.image_size, tiling=model.preprocess.tiling)
        self.images = torch.from_numpy(images)
        self.batch = min(cfg.batch, len(self.images))
        self.total_steps = -(-len(self.images) // self.batch)
        self.step = 0
        self.use_amp = False
        self.data_summary = dict(data.summary(), train_images_used=len(kept), train_tiles=len(images),
                                 backbone_weights=self.weight_source.to_dict())
        self.data_files = training_files(data.train)  # names and sizes: --resume refuses other data
        self.run_info: dict = {}  # where the data came from (train_resume.RunSource), stored for --resume
        self.timings: dict[str, float] = {}
        self.bank_facts: dict = {}  # coreset_ratio_effective, bank_capped (bank_cap_facts)

    def checkpoint(self, with_train_state: bool = True) -> Checkpoint:
        train_state = {"step": self.step, "config": self.cfg.to_dict(), "run": self.run_info,
                       "data_files": self.data_files, "total_steps": self.total_steps} if with_train_state else None
        summary = dict(self.data_summary, steps=self.step, batch=self.batch, train_config=self.cfg.to_dict(),
                       bank_rows=self.detector.memory.rows, fit_seconds=self.timings, **self.bank_facts)
        return Checkpoint(self.model, self.model.impl.weights(self.detector), summary, train_state)

    def resume(self) -> None:
        """Take the bank of a finished fit in ``out_dir/last.pt`` (same model settings and images), so ``run`` only
        re-writes final.pt."""
        ckpt = resumable_checkpoint(self.out_dir, self.model)
        check_same_data(self.out_dir / "last.pt", ckpt.train_state, self.data_files, self.total_steps)
        self.model.impl.load_weights(self.detector, ckpt.state_dict)
        self.step = int(ckpt.train_state["step"])
        self.timings = dict(ckpt.data_summary.get("fit_seconds") or {})
        self.bank_facts = {k: ckpt.data_summary[k] for k in ("coreset_ratio_effective", "bank_capped")
                           if k in ckpt.data_summary}

    @torch.no_grad()
    def features(self, on_step: Callable[[int, int, float, float], None] | None) -> torch.Tensor:
        """(N * V * h * w, D) float32 patch features of every training image and its V - 1 flipped views
        (``bank_flips``), on ``device``."""
        out = []
        for i in range(self.total_steps):
            t = time.perf_counter()
            chunk = self.images[i * self.batch : (i + 1) * self.batch].to(self.device)
            for view in flipped_views(chunk, self.model.settings.bank_flips):
                f = self.detector.patch_features(view)
                out.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
            self.step = i + 1
            if on_step is not None:
                on_step(self.step, self.total_steps, float("nan"), len(chunk) / max(time.perf_counter() - t, 1e-9))
        return torch.cat(out)

    def run(self, on_step: Callable[[int, int, float, float], None] | None = None) -> Path:
        """Fit the bank (unless resumed from a finished fit); write last.pt and final.pt; returns final.pt.

        on_step(step, total, loss, images_per_s) after each backbone batch (loss is NaN: nothing is optimised).
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.step < self.total_steps:
            self.detector.eval()
            t0 = time.perf_counter()
            patches = self.features(on_step)
            t1 = time.perf_counter()
            rows = bank_size(len(patches), self.model.settings)
            self.bank_facts = bank_cap_facts(len(patches), rows, self.model.settings)
            if self.bank_facts["bank_capped"]:
                log.warning(bank_cap_warning(len(patches), rows, self.model.settings))
            chosen = greedy_coreset(patches, rows, seed=self.cfg.seed)
            bank = patches[chosen]
            t2 = time.perf_counter()
            self.detector.set_bank(bank, bank_neighbours(bank, self.model.settings.neighbours))
            if self.model.settings.reweight and not self.detector.memory.can_reweight:
                log.warning(UNWEIGHTED_BANK, rows)
            self.timings = {"features": round(t1 - t0, 3), "coreset": round(t2 - t1, 3),
                            "neighbours": round(time.perf_counter() - t2, 3), "patches": len(patches)}
        save_checkpoint(self.out_dir / "last.pt", self.checkpoint())
        return save_checkpoint(self.out_dir / "final.pt", self.checkpoint(with_train_state=False))


def default_train_config() -> FitConfig:
    """Batch 8 images per backbone pass, seed 0."""
    return FitConfig()


def make_trainer(split: DatasetSplit, model: ModelSpec, cfg: FitConfig, out_dir: Path, device: torch.device, *,
                 backbone_weights: str | None = None, backbone_sha256: str | None = None) -> PatchcoreFitter:
    """PatchCore's fitter (its extras: the backbone's weight file and SHA-256, as LGFDR takes them)."""
    return PatchcoreFitter(split, model, cfg, out_dir, device, backbone_weights, backbone_sha256)

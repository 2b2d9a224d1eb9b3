"""Training LGFDR: the backbone is frozen, so its features are computed once; each step adds
Gaussian noise to a batch of (standardised) features and teaches both towers and the SRH to
reconstruct the clean ones.

Loss = mean over scales of (1 - cosine) between the clean features and the fused reconstruction,
plus half the same for each tower's own reconstruction (so that both towers learn to reconstruct
and the gate chooses between two working reconstructions, instead of one tower absorbing all).
Resuming is exact, as in FAIR's trainer: step, optimizer, scheduler and the noise generator are saved, and
Ctrl-C (SIGINT), and under `fair-edge train` SIGTERM (``stop_signals``), only asks the loop to stop: the step in
flight finishes, then ``last.pt`` is written at that step boundary (a second Ctrl-C stops at once, without saving; a
second SIGTERM is ignored). With tiling, a batch, an epoch and the step budget count
tiles (one feature map each), as FAIR's do. A finished run writes ``last.pt`` then ``final.pt``, or, keeping no resume
state (``keeps_resume_state`` False: a ``fair-edge tune`` candidate), ``final.pt`` alone, never beside a ``last.pt``,
and nothing when stopped (tune starts over).
"""

from __future__ import annotations

import functools
import itertools
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
from fair_edge.training.data import DatasetSplit
from fair_edge.training.pixels import load_images
from fair_edge.errors import ConfigError, FairEdgeError
from fair_edge.models.lgfdr.model import LgfdrDetector
from fair_edge.models.weights import load_backbone_weights
from fair_edge.models.registry import ModelSpec
from fair_edge.models.training_contract import resumable_checkpoint
from fair_edge.training.resume import ReadImages, TrainingClock, check_same_data, training_files
from fair_edge.training.loop import (LossLog, TrainingInterrupted, check_schedule, discard_resume_state, epoch_order,
                                     saved_run_hint, signals_request_stop, steps_per_epoch, usable_batch)

FEATURE_CHUNK = 16  # images per backbone pass when precomputing features
TOWER_WEIGHT = 0.5  # weight of each tower's own reconstruction loss
# keys of FAIR's training settings that LGFDR runs saved before LGFDR had its own (read and dropped on --resume)
BORROWED_KEYS = ("width", "amp", "synthesis")
PhaseProgress = Callable[[str, int, int], None]  # on_progress(phase, done, total): a phase's units done of total


def _no_progress(phase: str, done: int, total: int) -> None:
    """The on_progress of a trainer nobody watches."""


@dataclass(frozen=True)
class LgfdrTrainConfig:
    """LGFDR's training settings. batch: feature maps (images, or tiles when tiled) per step.
    lr: AdamW learning rate. epochs: passes over the training images' (or tiles') precomputed features.
    steps: optimisation steps (overrides epochs).
    lr_milestones: fractions of training at which the learning rate is multiplied by lr_gamma.
    lr_gamma: the learning-rate factor at each milestone. save_every: write last.pt every this many steps.
    log_every: a loss.csv row every this many steps. seed: weights, image order and feature noise."""

    batch: int = 8
    lr: float = 1e-3
    epochs: int = 100
    steps: int | None = None
    lr_milestones: tuple[float, ...] = (0.8, 0.9)
    lr_gamma: float = 0.2
    save_every: int = 500
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_schedule(self, ("batch", "epochs", "save_every", "log_every"))

    def total_steps(self, n_images: int) -> int:
        return self.steps or self.epochs * steps_per_epoch(n_images, self.batch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LgfdrTrainConfig":
        """Inverse of ``to_dict``; FAIR's keys in runs saved before LGFDR had its own settings are dropped."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k not in BORROWED_KEYS}
        return cls(**values)


def cosine_loss(recon: torch.Tensor, target: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
    """Mean over scale groups and locations of 1 - cos(recon, target); both (B, C, h, w)."""
    parts = [1.0 - F.cosine_similarity(r, t, dim=1, eps=1e-6).mean()
             for r, t in zip(torch.split(recon, channels, 1), torch.split(target, channels, 1))]
    return torch.stack(parts).mean()


@torch.no_grad()
def precompute_features(detector: LgfdrDetector, images: torch.Tensor, device: torch.device,
                        on_progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Unstandardised features (N, C, h, w) float32 on ``device`` of images (N, 3, S, S) float32 RGB [0, 1].
    on_progress(images done, N) at the start and after each chunk of ``FEATURE_CHUNK`` images."""
    mean, std = detector.feature_mean.clone(), detector.feature_std.clone()
    detector.feature_mean.zero_()
    detector.feature_std.fill_(1.0)
    chunks = []
    try:
        for start in range(0, len(images), FEATURE_CHUNK):
            if on_progress is not None:
                on_progress(start, len(images))
            chunks.append(detector.features(images[start : start + FEATURE_CHUNK].to(device)))
        if on_progress is not None:
            on_progress(len(images), len(images))
        return torch.cat(chunks)
    finally:
        detector.feature_mean.copy_(mean)
        detector.feature_std.copy_(std)


class LgfdrTrainer:
    """Owns the detector, optimizer and the precomputed features of one training run.

    cfg: LGFDR's training settings (``LgfdrTrainConfig``).
    weights / weights_sha256: the backbone's initialisation (``weights.load_backbone_weights``).
    on_progress(phase, done, total), or None: while constructed, "loading" (images read of the training samples),
    then "features" (images, or tiles, through the backbone of all: the features every step reuses).
    """

    fits_once = False  # trained by optimisation steps (models.training_contract.FamilyTrainer)
    stop_signals: tuple[int, ...] = (signal.SIGINT,)  # stop at a step boundary on these; `train` adds SIGTERM
    # run() leaves last.pt beside final.pt (`train --resume`); `tune` sets False: final.pt alone, never beside last.pt
    keeps_resume_state = True

    def __init__(self, data: DatasetSplit, model: ModelSpec, cfg: LgfdrTrainConfig, out_dir: Path, device: torch.device,
                 weights: str | Path | None = None, weights_sha256: str | None = None,
                 on_progress: PhaseProgress | None = None) -> None:
        self.model, self.cfg, self.out_dir, self.device = model, cfg, Path(out_dir), device
        torch.manual_seed(cfg.seed)
        self.detector: LgfdrDetector = model.build(device=device)
        self.weight_source = load_backbone_weights(self.detector.backbone, model.settings.backbone, weights, weights_sha256)
        report = on_progress or _no_progress
        report("loading", 0, len(data.train))
        read = itertools.count(1)
        images, kept = load_images(data.train, model.preprocess.image_size, tiling=model.preprocess.tiling,
                                   progress=lambda: report("loading", next(read), len(data.train)))
        self.images = precompute_features(self.detector, torch.from_numpy(images), device,
                                          functools.partial(report, "features"))
        self.detector.feature_mean.copy_(self.images.mean((0, 2, 3)))
        self.detector.feature_std.copy_(self.images.std((0, 2, 3)).clamp_min(1e-6))
        self.images = (self.images - self.detector.feature_mean.view(1, -1, 1, 1)) / self.detector.feature_std.view(1, -1, 1, 1)
        n_maps = len(self.images)  # feature maps: one per image, or per tile when tiled
        items = "training tiles" if model.preprocess.tiling is not None else "training images"
        self.batch = usable_batch(cfg.batch, n_maps, items)
        self.total_steps = cfg.total_steps(n_maps)
        self.data_summary = dict(data.summary(), train_images_used=len(kept), train_tiles=n_maps,
                                 backbone_weights=self.weight_source.to_dict())
        self.data_files = training_files(data.train)  # names and sizes: --resume refuses other data
        self.read_images = ReadImages.of(data.train, kept)  # each file hashed once: --resume compares the bytes
        self.training_images = self.read_images.record()  # refused as held-out images
        self.params = [p for n, p in self.detector.named_parameters() if not n.startswith("backbone.")]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=1e-4)
        milestones = sorted({max(1, int(m * self.total_steps)) for m in cfg.lr_milestones})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=cfg.lr_gamma)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.step = 0
        self.clock = TrainingClock()  # training seconds, carried over a resume (loss.csv's elapsed_s)
        self.use_amp = False
        self.stop_requested, self.stop_signal = False, signal.SIGINT
        self.run_info: dict = {}  # where the data came from (train_resume.RunSource), stored for --resume

    # -------------------------------------------------------------------- checkpoints
    def checkpoint(self, with_train_state: bool = True) -> Checkpoint:
        train_state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                       "generator": self.generator.get_state(), "config": self.cfg.to_dict(),
                       "run": self.run_info, "data_files": self.data_files,
                       "image_digests": self.read_images.rows(self.run_info),
                       "total_steps": self.total_steps, "elapsed_s": self.clock.elapsed()} if with_train_state else None
        summary = dict(self.data_summary, steps=self.step, batch=self.batch,
                       train_config=self.cfg.to_dict())
        return Checkpoint(self.model, self.model.impl.weights(self.detector), summary, train_state,
                          self.training_images)

    def resume_text(self) -> str | None:
        """The command a failed save names to continue this run (``loop.saved_run_hint``): None under tune."""
        return saved_run_hint(self.out_dir, self.keeps_resume_state)

    def save(self, name: str = "last.pt") -> Path:
        return save_checkpoint(self.out_dir / name, self.checkpoint(), resume=self.resume_text())

    def resume(self) -> None:
        """Load ``out_dir/last.pt`` and check it was made with the same model settings, images (by their bytes) and
        step budget; its ``training_images`` record goes on into the checkpoints saved from here."""
        ckpt = resumable_checkpoint(self.out_dir, self.model)
        state = ckpt.train_state
        check_same_data(self.out_dir / "last.pt", state, self.data_files, self.total_steps, ckpt.data_summary,
                        self.data_summary, self.read_images.rows(self.run_info), ckpt.training_images)
        if ckpt.training_images is not None:  # what its first steps trained on (the same bytes: checked)
            self.training_images = ckpt.training_images
        self.model.impl.load_weights(self.detector, ckpt.state_dict)
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.clock = TrainingClock.resumed(state)

    # -------------------------------------------------------------------- one step
    def train_step(self, step: int) -> float:
        """Noise a batch of clean features, reconstruct, optimise; returns the loss."""
        per_epoch = steps_per_epoch(len(self.images), self.batch)
        epoch, k = divmod(step, per_epoch)
        idx = epoch_order(len(self.images), self.cfg.seed, epoch)[k * self.batch : (k + 1) * self.batch].to(self.device)
        clean = self.images[idx]
        noise = torch.randn(clean.shape, generator=self.generator, device=self.device)
        self.detector.train()
        fused, local, glob = self.detector.reconstruct(clean + self.model.settings.noise_std * noise)
        channels = self.detector.channels
        loss = cosine_loss(fused, clean, channels) + TOWER_WEIGHT * (cosine_loss(local, clean, channels) + cosine_loss(glob, clean, channels))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    # -------------------------------------------------------------------- the loop
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the step in flight: ``run`` then saves ``last.pt`` and raises TrainingInterrupted (saying
        ``signum``, the signal that asked: SIGINT for Ctrl-C, SIGTERM)."""
        self.stop_requested, self.stop_signal = True, signum

    def run(self, on_step=None) -> Path:
        """Train to ``total_steps``; returns ``final.pt``. on_step(step, total, loss, images_per_s) after each step.
        Ctrl-C, a signal of ``stop_signals`` (or ``request_stop()``) finishes the current step, saves ``last.pt`` at
        that step boundary (without ``keeps_resume_state``: nothing) and raises TrainingInterrupted. loss.csv's
        ``lr`` is the learning rate the logged step trained with. At the end: ``last.pt``, then ``final.pt``;
        without ``keeps_resume_state``, any ``last.pt`` deleted, then ``final.pt`` alone."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_file = LossLog(self.out_dir / "loss.csv", keep_until=self.step)
        self.stop_requested, self.stop_signal = False, signal.SIGINT
        try:
            with signals_request_stop(self.request_stop, self.stop_signals):
                self._loop(on_step, log_file)
        finally:
            log_file.close()
        self.detector.eval()
        if self.keeps_resume_state:
            self.save()
        else:
            discard_resume_state(self.out_dir)  # final.pt alone: never beside a last.pt (``keeps_resume_state``)
        return save_checkpoint(self.out_dir / "final.pt", self.checkpoint(with_train_state=False),
                               resume=self.resume_text())

    def _loop(self, on_step, log_file: LossLog) -> None:
        """Steps until ``total_steps``, or until a stop is requested (then: save ``last.pt``, TrainingInterrupted)."""
        self.clock.start()
        while self.step < self.total_steps:
            t = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]  # this step's; train_step ends with scheduler.step()
            loss = self.train_step(self.step)
            self.step += 1
            rate = self.batch / max(time.perf_counter() - t, 1e-9)
            if math.isnan(loss):
                raise FairEdgeError(f"loss became NaN at step {self.step}; lower --lr or check the data.")
            if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                log_file.write(self.step, self.step // steps_per_epoch(len(self.images), self.batch), loss, lr, rate,
                               self.clock.elapsed())
            if self.step % self.cfg.save_every == 0:
                self.save()
            if on_step is not None:
                on_step(self.step, self.total_steps, loss, rate)
            if self.stop_requested and self.step < self.total_steps:
                raise TrainingInterrupted(self.save() if self.keeps_resume_state else None, self.step,
                                          self.stop_signal)


def default_train_config() -> LgfdrTrainConfig:
    """AdamW 1e-3, batch 8, 100 epochs over the (precomputed) features, x0.2 at 80 % and 90 %."""
    return LgfdrTrainConfig()


def make_trainer(split: DatasetSplit, model: ModelSpec, cfg: LgfdrTrainConfig, out_dir: Path, device: torch.device, *,
                 textures=None, backbone_weights: str | None = None, backbone_sha256: str | None = None,
                 on_progress: PhaseProgress | None = None) -> LgfdrTrainer:
    """LGFDR's trainer; ConfigError for FAIR-only options. on_progress: ``LgfdrTrainer``'s phases, for a display."""
    if textures is not None:
        raise ConfigError("--textures feeds FAIR's anomaly synthesis; LGFDR trains on normal features only. Leave it out.")
    return LgfdrTrainer(split, model, cfg, out_dir, device, backbone_weights, backbone_sha256, on_progress)

"""FAIR's trainer: restore clean colour images from the high-pass of synthetically corrupted ones.

The whole pipeline after image decoding runs on the training device: the resized colour images
are held there as one tensor, and rotation, anomaly synthesis, gray, high-pass, UNet and loss are
batched torch ops, so a GPU is never starved by CPU-side augmentation.

Resuming is exact: the checkpoint holds the step, optimizer, scheduler and every random state,
and each epoch's image order is derived from (seed, epoch). Ctrl-C (SIGINT), and under `fair-edge train`
SIGTERM (``stop_signals``), only asks the loop to stop: the step in flight finishes, then ``last.pt`` is written
at that step boundary, so it equals the periodic save of the same step (a second Ctrl-C stops at once, without
saving; a second SIGTERM is ignored). A finished run writes ``last.pt`` (its last step, kept for ``train --resume``),
then ``final.pt``; a run that keeps no resume state (``keeps_resume_state`` False: a ``fair-edge tune`` candidate)
writes ``final.pt`` alone, so the disk never holds both at once, and writes nothing when stopped (tune starts over).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fair_edge.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.registry import ModelSpec
from fair_edge.training.data import DatasetSplit
from fair_edge.training.pixels import load_images
from fair_edge.errors import CheckpointError, ConfigError, FairEdgeError
from fair_edge.models.fair.losses import restoration_loss
from fair_edge.preprocess import HighPass, PreprocessConfig, model_input
from fair_edge.models.fair.synthesis import AnomalySynthesizer, SynthesisConfig, random_rotate
from fair_edge.models.fair.unet import UNet
from fair_edge.training.ddp import SingleProcess
from fair_edge.training.resume import ReadImages, TrainingClock, check_same_data, training_files
from fair_edge.training.loop import (LossLog, TrainingInterrupted, check_schedule, discard_resume_state, epoch_order,
                                     saved_run_hint, signals_request_stop, steps_per_epoch, usable_batch)

# keys of training settings saved by runs before they moved to the model settings (read and dropped on --resume)
MOVED_TO_MODEL_SETTINGS = ("width",)


@dataclass(frozen=True)
class TrainConfig:
    """FAIR's training settings; defaults are the paper's (batch 8, Adam 1e-4, 800 epochs, learning rate x0.2
    at 80% and 90% of training). The UNet width is a model setting (``FairSettings.width``), not one of these.
    batch: images per step.
    lr: learning rate (Adam as the paper; the demo uses 1e-3 for its short run).
    epochs: passes over the training images (the paper's 800 on MVTec; 400 VisA).
    steps: optimisation steps (overrides epochs). lr_milestones: fractions of training at which the learning
    rate is multiplied by lr_gamma. lr_gamma: the learning-rate factor at each milestone.
    save_every: write last.pt every this many steps. log_every: a loss.csv row every this many steps.
    seed: random seed (weights, image order, anomaly synthesis). amp: bf16 autocast on CUDA.
    synthesis: the anomaly synthesis settings."""

    batch: int = 8
    lr: float = 1e-4
    epochs: int = 800
    steps: int | None = None
    lr_milestones: tuple[float, ...] = (0.8, 0.9)
    lr_gamma: float = 0.2
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    amp: bool = True
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)

    def __post_init__(self) -> None:
        check_schedule(self, ("batch", "epochs", "save_every", "log_every"))

    def total_steps(self, n_images: int) -> int:
        return self.steps or self.epochs * steps_per_epoch(n_images, self.batch)

    def to_dict(self) -> dict:
        """Primitives and tuples only, so ``torch.load(weights_only=True)`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of ``to_dict`` (sequences become tuples again; unknown keys are an error). ``width``, which
        runs saved before it became only a model setting hold, is dropped: the checkpoint's model settings
        carry the width."""
        def tuples(d: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        values = tuples({k: v for k, v in data.items() if k not in MOVED_TO_MODEL_SETTINGS})
        synthesis = SynthesisConfig(**tuples(values.pop("synthesis", {}) or {}))
        return cls(**values, synthesis=synthesis)


@dataclass
class TrainState:
    """Everything that changes during training."""

    unet: UNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    step: int = 0
    clock: TrainingClock = field(default_factory=TrainingClock)  # training seconds, carried over a resume

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "elapsed_s": self.clock.elapsed(),
        }

    def load(self, state: dict) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.clock = TrainingClock.resumed(state)


class Trainer:
    """Owns the model, optimizer and data tensor of one training run."""

    fits_once = False  # trained by optimisation steps (models.training_contract.FamilyTrainer)
    stop_signals: tuple[int, ...] = (signal.SIGINT,)  # stop at a step boundary on these; `train` adds SIGTERM
    # run() leaves last.pt beside final.pt (`train --resume`); `tune` sets False: final.pt alone, never beside last.pt
    keeps_resume_state = True

    def __init__(
        self,
        data: DatasetSplit,
        preprocess: PreprocessConfig,
        settings: FairSettings,
        cfg: TrainConfig,
        out_dir: Path,
        device: torch.device,
        textures: np.ndarray | None = None,
        parallel=None,
    ) -> None:
        """settings: the model's (UNet width and scoring); cfg: how it is trained.
        textures: (T, S, S, 3) float32 RGB [0, 1] synthesis textures, or None. parallel: see ``make_trainer``."""
        if preprocess.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16 for the UNet; found {preprocess.image_size}.")
        if not isinstance(settings, FairSettings):
            raise ConfigError(f"FAIR's Trainer takes the model settings (FairSettings) after the pre-processing; "
                              f"found {type(settings).__name__}. Pass model.settings, then the TrainConfig.")
        self.preprocess, self.cfg, self.settings = preprocess, cfg, settings
        self.model = ModelSpec("fair", preprocess, settings)
        self.out_dir, self.device = Path(out_dir), device
        images, kept = load_images(data.train, preprocess.image_size, tiling=preprocess.tiling)
        self.images = torch.from_numpy(images).to(device)
        self.data_summary = dict(data.summary(), train_images_used=len(kept), train_tiles=len(images))
        self.data_files = training_files(data.train)  # names and sizes: --resume refuses other data
        self.read_images = ReadImages.of(data.train, kept)  # each file hashed once: --resume compares the bytes
        self.training_images = self.read_images.record()  # refused as held-out images
        self.parallel = parallel or SingleProcess()  # DDP hooks (fair_edge.training.ddp); identities in one process
        items = "training tiles" if preprocess.tiling is not None else "training images"
        self.batch = usable_batch(cfg.batch, len(images), items, self.parallel.world)
        self.total_steps = cfg.total_steps(len(images))
        self.highpass = HighPass(preprocess).to(device)
        tex = torch.from_numpy(textures).to(device) if textures is not None else None
        self.synthesizer = AnomalySynthesizer(cfg.synthesis, textures=tex)
        torch.manual_seed(cfg.seed)
        unet = self.parallel.prepare(UNet(settings.width, preprocess.in_channels).to(device).train())
        self.forward = self.parallel.wrap(unet)  # unet itself, or its DDP wrapper (same parameters)
        optimizer = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
        milestones = sorted({max(1, int(m * self.total_steps)) for m in cfg.lr_milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_gamma)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.state = TrainState(unet, optimizer, scheduler, generator)
        self.use_amp = cfg.amp and device.type == "cuda"
        self.stop_requested, self.stop_signal = False, signal.SIGINT
        self.run_info: dict = {}  # where the data came from (data, category, textures), stored for --resume

    @property
    def step(self) -> int:
        return self.state.step

    # -------------------------------------------------------------------- checkpoints
    def checkpoint(self, with_train_state: bool = True) -> Checkpoint:
        return Checkpoint(
            model=self.model,
            state_dict=self.state.unet.state_dict(),
            data_summary=dict(self.data_summary, steps=self.state.step, batch=self.batch,
                              train_config={k: v for k, v in asdict(self.cfg).items() if k != "synthesis"}),
            train_state=dict(self.state.to_dict(), config=self.cfg.to_dict(), run=self.run_info,
                             data_files=self.data_files, image_digests=self.read_images.rows(self.run_info),
                             total_steps=self.total_steps)
            if with_train_state else None,
            training_images=self.training_images,
        )

    def resume_text(self) -> str | None:
        """The command a failed save names to continue this run (``loop.saved_run_hint``): None under tune."""
        return saved_run_hint(self.out_dir, self.keeps_resume_state)

    def save(self, name: str = "last.pt") -> Path:
        """Write ``out_dir/name`` (rank 0 only under DDP; the others wait for it)."""
        if self.parallel.is_main:
            save_checkpoint(self.out_dir / name, self.checkpoint(), resume=self.resume_text())
        self.parallel.barrier()
        return self.out_dir / name

    def resume(self) -> None:
        """Load ``out_dir/last.pt`` and check it was made with the same settings, images (by their bytes) and step
        budget; its ``training_images`` record goes on into the checkpoints saved from here."""
        ckpt = load_checkpoint(self.out_dir / "last.pt")
        if ckpt.train_state is None:
            raise CheckpointError(f"{self.out_dir / 'last.pt'} holds no training state to resume from.")
        if ckpt.model != self.model:
            raise CheckpointError(
                f"cannot resume: {self.out_dir / 'last.pt'} was trained as {ckpt.model.describe()} with "
                f"{ckpt.preprocess}; this run asks for {self.model.describe()} with {self.preprocess}."
            )
        check_same_data(self.out_dir / "last.pt", ckpt.train_state, self.data_files, self.total_steps,
                        ckpt.data_summary, self.data_summary, self.read_images.rows(self.run_info),
                        ckpt.training_images)
        self.state.unet.load_state_dict(ckpt.state_dict)
        self.state.load(ckpt.train_state)
        if ckpt.training_images is not None:  # what its first steps trained on (the same bytes: checked)
            self.training_images = ckpt.training_images

    # -------------------------------------------------------------------- one step
    def batch_indices(self, step: int) -> torch.Tensor:
        per_epoch = steps_per_epoch(len(self.images), self.batch)
        epoch, k = divmod(step, per_epoch)
        return epoch_order(len(self.images), self.cfg.seed, epoch)[k * self.batch : (k + 1) * self.batch]

    def train_step(self, step: int) -> float:
        """One optimisation step on batch ``step``: rotate, synthesise, high-pass, all on the device."""
        s = self.state
        clean = self.images[self.batch_indices(step).to(self.device)]
        clean = random_rotate(clean, self.cfg.synthesis, s.generator)
        corrupted, _ = self.synthesizer(clean, s.generator)
        shard = self.parallel.shard
        return self.optimise(shard(model_input(corrupted, self.highpass)), shard(clean))

    def optimise(self, x: torch.Tensor, clean: torch.Tensor) -> float:
        """UNet + loss + optimizer and scheduler step on a prepared batch; returns the loss.

        x: (B, C, S, S) float32 high-pass model input; clean: (B, 3, S, S) float32 RGB target in
        [0, 1]; both on ``self.device``. (The high-pass is float32 FFT work, outside bf16 autocast.)
        """
        s = self.state
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            restored = self.forward(x)
        loss = restoration_loss(restored, clean)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        s.scheduler.step()
        return self.parallel.mean(loss.detach())

    # -------------------------------------------------------------------- the loop
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the step in flight: ``run`` then saves ``last.pt`` and raises TrainingInterrupted (saying
        ``signum``, the signal that asked: SIGINT for Ctrl-C, SIGTERM)."""
        self.stop_requested, self.stop_signal = True, signum

    def run(self, on_step=None) -> Path:
        """Train to ``total_steps``; returns the path of ``final.pt``.

        on_step(step, total, loss, images_per_s) is called after every step (progress display).
        Ctrl-C, a signal of ``stop_signals`` (or ``request_stop()``) finishes the current step, saves ``last.pt`` at
        that step boundary (without ``keeps_resume_state``: nothing) and raises TrainingInterrupted. Under DDP the
        ranks agree on the step to stop at (a rank whose signal comes a moment later stops at the same boundary).
        loss.csv's ``lr`` is the learning rate the logged step trained with (read before the scheduler steps). At
        the end: ``last.pt``, then ``final.pt``; without ``keeps_resume_state``, any ``last.pt`` deleted, then
        ``final.pt`` alone.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_file = LossLog(self.out_dir / "loss.csv", keep_until=self.state.step) if self.parallel.is_main else None
        self.stop_requested, self.stop_signal = False, signal.SIGINT
        try:
            with signals_request_stop(self.request_stop, self.stop_signals):
                self._loop(on_step, log_file)
        finally:
            if log_file:
                log_file.close()
        if self.keeps_resume_state:
            self.save()
        elif self.parallel.is_main:
            discard_resume_state(self.out_dir)  # final.pt alone: never beside a last.pt (``keeps_resume_state``)
        if self.parallel.is_main:
            save_checkpoint(self.out_dir / "final.pt", self.checkpoint(with_train_state=False),
                            resume=self.resume_text())
        self.parallel.barrier()
        return self.out_dir / "final.pt"

    def _loop(self, on_step, log_file: "LossLog | None") -> None:
        """Steps until ``total_steps``; ``log_file`` is None on DDP ranks other than 0."""
        per_epoch = steps_per_epoch(len(self.images), self.batch)
        t_window = time.perf_counter()
        self.state.clock.start()
        n_window = 0
        while self.state.step < self.total_steps:
            lr = self.state.optimizer.param_groups[0]["lr"]  # this step's; train_step ends with scheduler.step()
            loss = self.train_step(self.state.step)
            self.state.step += 1
            n_window += self.batch
            rate = n_window / max(time.perf_counter() - t_window, 1e-9)
            if math.isnan(loss):
                raise FairEdgeError(f"loss became NaN at step {self.state.step}; lower --lr or check the data.")
            if log_file and (self.state.step % self.cfg.log_every == 0 or self.state.step == self.total_steps):
                elapsed = self.state.clock.elapsed()
                log_file.write(self.state.step, self.state.step // per_epoch, loss, lr, rate, elapsed)
                t_window, n_window = time.perf_counter(), 0
            if self.state.step % self.cfg.save_every == 0:
                self.save()
            if on_step is not None:
                on_step(self.state.step, self.total_steps, loss, rate)
            if self.state.step < self.total_steps and self.parallel.any(self.stop_requested):
                raise TrainingInterrupted(self.save() if self.keeps_resume_state else None, self.state.step,
                                          self.stop_signal)


def default_train_config() -> TrainConfig:
    """The paper's schedule (``TrainConfig`` defaults: Adam 1e-4, batch 8, 800 epochs)."""
    return TrainConfig()


def make_trainer(split: DatasetSplit, model: ModelSpec, cfg: TrainConfig, out_dir: Path, device: torch.device, *,
                 textures: np.ndarray | None = None, parallel=None) -> Trainer:
    """FAIR's Trainer for ``model`` (its settings: UNet width and scoring) trained as ``cfg`` says.
    textures: (T, S, S, 3) float32 RGB [0, 1] images (--textures); given, the synthesis takes its textures from
    them (texture_source "folder"). parallel: this rank's ``train_ddp.DataParallel`` under torchrun, else None.
    FAIR has no backbone, so it takes no backbone extras (``training_contract.check_extras`` refuses them)."""
    if textures is not None and cfg.synthesis.texture_source != "folder":
        cfg = replace(cfg, synthesis=replace(cfg.synthesis, texture_source="folder"))
    return Trainer(split, model.preprocess, model.settings, cfg, out_dir, device, textures, parallel=parallel)

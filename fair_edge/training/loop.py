"""The family-neutral pieces of a training loop: device choice, epoch order, the loss log, Ctrl-C handling.

Each family's trainer (``fair_edge/models/<family>/train.py``) drives its own loop with these.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import numbers
import re
import signal
import threading
from pathlib import Path

import torch

from fair_edge.errors import ConfigError, FairEdgeError

log = logging.getLogger(__name__)

LOSS_CSV_FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s")


class TrainingInterrupted(FairEdgeError):
    """Training stopped by Ctrl-C; ``checkpoint`` holds the state to resume from."""

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(f"interrupted after step {step}; state saved to {checkpoint}.")
        self.checkpoint, self.step = checkpoint, step


@contextlib.contextmanager
def sigint_requests_stop(request_stop):
    """While active, the first SIGINT calls ``request_stop()`` instead of raising KeyboardInterrupt
    mid-step; a second SIGINT raises KeyboardInterrupt as usual. Outside the main thread (where
    Python delivers no signals) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request_stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


SEED_MAX = 2**32 - 1  # the largest seed numpy's legacy seeding takes; torch takes it too


def check_seed(seed: int, flag: str = "--seed") -> None:
    """ConfigError unless ``seed`` is a whole number in 0..2^32-1 (torch and numpy take it; past 2^63 torch's
    generators raise OverflowError), naming ``flag`` and the value found."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed ({flag}) must be a whole number from 0 to {SEED_MAX}; found {seed!r}. "
                          f"Pass e.g. {flag} 0.")


def _check_rate(name: str, value: float, fix: str) -> None:
    """ConfigError unless ``value`` is a finite number > 0: nan and inf train on to a NaN loss."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        finite = " (not a finite number)" if isinstance(value, float) and not math.isfinite(value) else ""
        raise ConfigError(f"{name} must be > 0; found {value}{finite}. {fix}")


def check_schedule(cfg, counts: tuple[str, ...]) -> None:
    """A stepped trainer's settings: ConfigError unless each field of ``counts`` is >= 1, ``steps`` is None or
    >= 1, ``lr`` and (where the trainer has one) ``lr_gamma`` are finite and > 0, and ``seed`` is in
    0..2^32-1, naming the field, its flag and the value found."""
    for name in counts:
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"{name} must be >= 1; found {getattr(cfg, name)}.")
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1; found {cfg.steps}.")
    _check_rate("lr", cfg.lr, "Set the learning rate with --lr to a finite number above 0, e.g. --lr 1e-4.")
    if hasattr(cfg, "lr_gamma"):
        _check_rate("lr_gamma", cfg.lr_gamma, "--lr-gamma multiplies the learning rate at each milestone "
                    "(0 stops learning, a negative factor climbs the loss): set a finite factor above 0, e.g. "
                    "--lr-gamma 0.2 (the default), or 1 to keep the rate.")
    if hasattr(cfg, "seed"):
        check_seed(cfg.seed)


def steps_per_epoch(n_images: int, batch: int) -> int:
    return max(1, n_images // batch)


def usable_batch(batch: int, n_items: int, items: str = "training images", world: int = 1) -> int:
    """The batch a run trains with: ``batch`` (per step, over all processes) when ``n_items`` (the images, or tiles,
    one step draws from) hold that many, else the largest multiple of ``world`` (processes) not above ``n_items``,
    with a warning naming both counts. ConfigError when there are fewer items than processes."""
    if batch <= n_items:
        return batch
    reduced = n_items - n_items % world
    if reduced < 1:
        raise ConfigError(f"--batch {batch}: only {n_items} {items} for {world} processes, each of which needs at "
                          f"least one per step; use --nproc {n_items} or fewer, or more {items}.")
    of = f" (a multiple of the {world} processes)" if world > 1 else ""
    log.warning("only %d %s: batch reduced from %d to %d%s", n_items, items, batch, reduced, of)
    return reduced


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"  # what --device accepts (train, eval, tune, demo): N a GPU's index


def resolve_device(name: str) -> torch.device:
    """--device: 'auto' -> cuda when available, else cpu; 'cpu', 'cuda' or 'cuda:N' (N >= 0, the GPU's index) as
    named (case and surrounding spaces ignored). Raises ConfigError for any other name (torch's own devices, 'mps', 'gpu', 'cuda:x', are not offered) and
    for CUDA when no GPU is visible."""
    typed, name = name, name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", name):
        raise ConfigError(f"--device must be one of {DEVICE_NAMES} (N the GPU's index, e.g. cuda:0); found {typed!r}. "
                          "Use cuda for an NVIDIA GPU, cpu for the processor, or auto (a GPU when one is visible).")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible to PyTorch. Use --device cpu or auto.")
    return device


def epoch_order(n_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The image order of one epoch, a function of (seed, epoch) alone, so resuming repeats it."""
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class LossLog:
    """Append-only CSV of the training loss; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, keep_until: int) -> None:
        rows = []
        if keep_until > 0 and path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_until]
        self.fh = path.open("w", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=LOSS_CSV_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.fh.flush()

    def write(self, step: int, epoch: int, loss: float, lr: float, rate: float, elapsed: float) -> None:
        self.writer.writerow({"step": step, "epoch": epoch, "loss": f"{loss:.6f}", "lr": f"{lr:.3g}",
                              "images_per_s": f"{rate:.2f}", "elapsed_s": f"{elapsed:.1f}"})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()

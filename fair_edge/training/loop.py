"""The family-neutral pieces of a training loop: device choice, epoch order, the loss log, stopping on Ctrl-C
and SIGTERM.

Each family's trainer (``fair_edge/models/<family>/train.py``) drives its own loop with these.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import math
import numbers
import os
import re
import signal
import threading
from pathlib import Path

import torch

from fair_edge.errors import ConfigError, FairEdgeError

log = logging.getLogger(__name__)

LOSS_CSV_FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s")

# The signals `fair-edge train` stops at a step boundary on (a trainer's ``stop_signals``): Ctrl-C, and SIGTERM
# (kill, timeout, systemctl stop, a batch scheduler's time limit). A trainer takes only SIGINT unless told.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(FairEdgeError):
    """Training stopped by Ctrl-C (``signum`` SIGINT) or SIGTERM at a step boundary; ``checkpoint`` holds the state
    to resume from, None for a run that keeps no resume state (a ``fair-edge tune`` candidate: nothing was saved).
    ``exit_code``: 128 + the signal number (130, 143)."""

    def __init__(self, checkpoint: Path | None, step: int, signum: int = signal.SIGINT) -> None:
        how = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
        kept = f"state saved to {checkpoint}" if checkpoint is not None else "nothing saved (no resume state kept)"
        super().__init__(f"{how} after step {step}; {kept}.")
        self.checkpoint, self.step, self.signum = checkpoint, step, signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def _ignore_signal(signum, frame) -> None:
    """A second SIGTERM while a requested stop is under way: nothing (a Python handler, not SIG_IGN, which a
    process started meanwhile would inherit)."""


@contextlib.contextmanager
def signals_request_stop(request_stop, signals: tuple[int, ...] = (signal.SIGINT,)):
    """While active, the first of ``signals`` (SIGINT, SIGTERM) to arrive calls ``request_stop(signum)`` instead of
    raising KeyboardInterrupt or ending the process mid-step. After it, a SIGINT raises KeyboardInterrupt as usual (a
    second Ctrl-C stops at once, without saving) and a SIGTERM is ignored (systemd and torchrun may both send one:
    the save at the step boundary is not cut short; SIGKILL still ends it). On leaving, each signal's previous
    handler is back. Outside the main thread (where Python delivers no signals) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_stop_signal(signum, frame) -> None:
        for taken in signals:
            signal.signal(taken, signal.default_int_handler if taken == signal.SIGINT else _ignore_signal)
        request_stop(signum)

    previous = {taken: signal.signal(taken, on_stop_signal) for taken in signals}
    try:
        yield
    finally:
        for taken, handler in previous.items():
            signal.signal(taken, handler)


def resume_hint(out: Path, quote: bool = False) -> str:
    """The command that continues an interrupted run in ``out``, in as many processes as it ran in: under torchrun
    (``WORLD_SIZE``) on one machine with ``--nproc``; on several machines, the same torchrun launch on each.
    quote: the command in backticks, for a sentence (the several-machine text quotes its own part)."""
    import shlex

    from fair_edge.training.resume import resume_command

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > int(os.environ.get("LOCAL_WORLD_SIZE", world)):  # several machines: not launched by --nproc
        args = shlex.join(["train", "--resume", "--out", str(out)])
        return f"the same torchrun command on every machine, with `{args}` after `-m fair_edge.cli`"
    command = resume_command(out, world)
    return f"`{command}`" if quote else command


RESUME_STATE = "last.pt"  # a run's resume state: weights with the optimiser's state (about 3x final.pt for FAIR)


def saved_run_hint(out: Path, keeps_resume_state: bool) -> str | None:
    """What a failed checkpoint write of the run in ``out`` names to continue it (``save_checkpoint``'s ``resume``):
    the quoted ``resume_hint`` for a run that keeps its resume state (``fair-edge train``); None for one that keeps
    none (a ``fair-edge tune`` candidate: tune has no --resume and starts over, so the error says to run again)."""
    return resume_hint(out, quote=True) if keeps_resume_state else None


def discard_resume_state(out: Path) -> None:
    """Delete ``out/last.pt`` (``RESUME_STATE``) of a run that keeps no resume state, before its final.pt is
    written, so the disk never holds both (a periodic save may have left one). Nothing when there is none; one
    that cannot be deleted is a warning naming it (the run goes on: it only costs disk)."""
    path = Path(out) / RESUME_STATE
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete %s (%s); this run keeps no resume state: delete it to free the disk",
                    path, exc.strerror or exc)


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
    """Append-only CSV of the training loss (``LOSS_CSV_FIELDS``); on resume, rows after the resumed step are
    dropped. A row that cannot be written (a full disk: ENOSPC; a file-size limit: EFBIG) does not stop training:
    the first failure is one warning naming the file, the error and the fix; the row is left out whole (what part
    of it reached the file is cut off again, so every row there is complete) and later rows are tried as they
    come (the disk may have room again). ``close`` says how many rows were left out."""

    def __init__(self, path: Path, keep_until: int) -> None:
        rows = []
        if keep_until > 0 and path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_until]
        self.path = path
        self.lost_steps: list[int] = []  # the steps whose row is not in the file
        self.error: OSError | None = None  # the first write that failed
        self.size = 0  # bytes in the file, whole rows only
        self.fh = path.open("wb", buffering=0)  # unbuffered: a row is in the file, or cut off again, at once
        self.head = _csv_text([dict(zip(LOSS_CSV_FIELDS, LOSS_CSV_FIELDS)), *rows])  # header and kept rows
        self.head_rows = len(rows)
        if self._append(self.head):
            self.head = None  # written; else it goes before the next row that can be written

    def write(self, step: int, epoch: int, loss: float, lr: float, rate: float, elapsed: float) -> None:
        row = _csv_text([{"step": step, "epoch": epoch, "loss": f"{loss:.6f}", "lr": f"{lr:.3g}",
                          "images_per_s": f"{rate:.2f}", "elapsed_s": f"{elapsed:.1f}"}])
        if self._append((self.head or "") + row):
            self.head = None
        else:
            self.lost_steps.append(step)

    def _append(self, text: str) -> bool:
        """Write ``text`` at the end of the whole rows; False (and the file as it was) when the write fails."""
        data = memoryview(text.encode("utf-8"))
        written = 0
        try:
            while written < len(data):
                count = self.fh.write(data[written:])  # fewer bytes than asked on a nearly full disk
                if not count:
                    raise OSError(f"wrote 0 of {len(data) - written} bytes")
                written += count
        except OSError as exc:
            self._cut_back()
            self._warn_once(exc)
            return False
        self.size += written
        return True

    def _cut_back(self) -> None:
        """Drop the part of a failed row that reached the file (shrinking a file needs no free space)."""
        try:
            self.fh.truncate(self.size)
        except OSError:
            pass  # not a regular file (e.g. /dev/full): nothing to cut
        try:
            self.fh.seek(self.size)
        except OSError:
            pass

    def _warn_once(self, exc: OSError) -> None:
        """The first failed write: one warning naming the file, the error and its fix; later ones say nothing."""
        if self.error is not None:
            return
        self.error = exc
        log.warning("cannot write the loss log %s (%s): %s. Training goes on without the loss rows that cannot be "
                    "written (counted at the end); the checkpoints need room on that disk too.",
                    self.path, _error_text(exc), _write_fix(self.path, exc))

    def close(self) -> None:
        """Close the file, saying how many rows were left out. Never raises: it runs in a ``finally``, and the run's
        own outcome (done, interrupted, a failed checkpoint) is what the user is told."""
        if self.lost_steps or self.head is not None:
            kept = (f" and the {self.head_rows} rows of the resumed run before them" if self.head is not None and
                    self.head_rows else "")
            steps = _steps_text(self.lost_steps) if self.lost_steps else "its header"
            log.warning("%s: %s%s could not be written (%s); training was not stopped for them.",
                        self.path, steps, kept, _error_text(self.error))
        try:
            self.fh.close()
        except OSError as exc:
            log.warning("%s: closing it failed (%s).", self.path, _error_text(exc))


def _steps_text(steps: list[int]) -> str:
    """'1 loss row (step 40)' or '37 loss rows between steps 40 and 200'."""
    if len(steps) == 1:
        return f"1 loss row (step {steps[0]})"
    return f"{len(steps)} loss rows between steps {steps[0]} and {steps[-1]}"


def _csv_text(rows: list[dict]) -> str:
    """``rows`` (dicts over ``LOSS_CSV_FIELDS``) as CSV lines, as ``csv.DictWriter`` writes them."""
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=LOSS_CSV_FIELDS).writerows(rows)
    return buffer.getvalue()


def _write_fix(path: Path, exc: OSError) -> str:
    """The cause and fix of a failed write of the file ``path``: a file-size limit (EFBIG: ``ulimit -f`` or the file
    system's largest file), else by errno as every writer says it (``disk.write_failure``: a full disk with its free
    space, ...)."""
    from fair_edge.disk import write_failure

    if exc.errno == errno.EFBIG:
        return (f"{path} reached the largest file size this process may write (a file-size limit: `ulimit -f`, "
                "or the file system's largest file). Raise that limit")
    return write_failure(path.parent, exc, None)


def _error_text(exc: BaseException | None) -> str:
    """An OSError's reason ("No space left on device"), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

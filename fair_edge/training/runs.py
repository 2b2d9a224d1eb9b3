"""Where training runs live on disk, and how other commands find them.

A training run writes to ``runs/train-{tag}`` by default (``--out`` overrides), where the tag is
the model family's (``ModelSpec.tag``: ``w32`` for FAIR width 32, ``lgfdr-efficientnet_lite0``):
  last.pt       the newest checkpoint (rolling; also written on Ctrl-C),
  final.pt      written when training completes,
  loss.csv      one row per logged step.
A folder holds one run: ``fair-edge train`` without ``--resume`` refuses a folder that already holds
``last.pt`` or ``final.pt`` (``check_fresh_run``), so re-running a command never wipes an interrupted run and
never leaves an earlier run's ``final.pt`` beside a newer run's ``last.pt``; ``--overwrite`` deletes that run
first (``clear_run``).
One process at a time per folder: ``hold_run_lock`` holds ``OUT/.train.lock`` for the whole run (``--resume`` and
``--overwrite`` too; under DDP the ``--nproc`` launcher or rank 0), taken before anything is read or written there,
so a second ``fair-edge train`` into the same ``--out`` is refused naming the first one's pid, even before the
first has saved its first ``last.pt``. A lone ``loss.csv`` (a run that crashed before its first save) is no run
to keep: the same command run again starts afresh, as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
from pathlib import Path
from typing import Iterator

from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.runlock import LockHolder, hold_lock

RUNS_ROOT = Path("runs")
RUN_FILES = ("last.pt", "final.pt", "loss.csv")  # what one run writes; last.pt or final.pt: a run is there
RUN_LOCK = ".train.lock"   # in OUT while a run trains there (hold_run_lock)
RUN_LOCK_ENV = "FAIR_EDGE_TRAIN_LOCK"   # set while held: the lock file a --nproc launcher holds for its ranks
RUN_BUSY = ("--out {folder}: a training run is already writing to this folder ({holder}); a second one would write "
            "the same last.pt, final.pt and loss.csv. Wait for it to finish (or stop it with Ctrl-C, then continue "
            "it with `fair-edge train --resume --out {folder}`), or train into another --out folder.")


def default_train_dir(tag: str, root: Path = RUNS_ROOT) -> Path:
    return root / f"train-{tag}"


def find_latest_checkpoint(tag: str, root: Path = RUNS_ROOT, train_hint: str = "fair-edge train DATA") -> Path:
    """The checkpoint of the latest finished run under ``root/train-{tag}*`` (``tag``: ``ModelSpec.tag``, e.g.
    ``w32``): the newest ``final.pt`` (by modification time) of any run folder; only when no run has finished, the
    newest ``last.pt`` (an unfinished run's save, which ``fair-edge build`` then warns about). An interrupted
    experiment's ``last.pt`` saved after a finished run's ``final.pt`` is not picked over it. Raises CheckpointError
    naming ``train_hint``, the command that makes one."""
    runs = sorted(Path(root).glob(f"train-{tag}*"))
    for name in ("final.pt", "last.pt"):
        candidates = [run_dir / name for run_dir in runs if (run_dir / name).is_file()]
        if candidates:
            return max(candidates, key=lambda p: p.stat().st_mtime)
    raise CheckpointError(
        f"no {tag} checkpoint under {Path(root).resolve()}/train-{tag}*. Train one with "
        f"`{train_hint}` or pass the checkpoint path explicitly."
    )


def check_fresh_run(out: Path) -> None:
    """ConfigError when ``out`` already holds a run (``last.pt`` or ``final.pt``): a new run there would overwrite
    an interrupted run's work, or leave the old ``final.pt`` beside the new ``last.pt`` (``find_latest_checkpoint``
    would pick the old one). Names the folder and the choices."""
    found = [name for name in RUN_FILES[:2] if (Path(out) / name).is_file()]
    if found:
        folder = shlex.quote(str(out))
        raise ConfigError(
            f"{out} already holds a training run ({' and '.join(found)}); a new run there would overwrite it. "
            f"Continue that run with `fair-edge train --resume --out {folder}`, train into another --out folder, "
            "or pass --overwrite to delete it and start again."
        )


@contextlib.contextmanager
def hold_run_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.train.lock`` (``RUN_LOCK``) while the block runs, ``out`` made if missing (and removed again if
    the run leaves it empty): ConfigError (``RUN_BUSY``, naming the other run's pid and the choices) when another
    ``fair-edge train`` holds it. Take it before the run reads or writes ``out`` (``check_fresh_run``, ``clear_run``,
    ``--resume``). Under torchrun only rank 0 takes it, and a rank that a ``--nproc`` launcher started (the launcher
    holds it: ``RUN_LOCK_ENV`` names its lock file) takes nothing."""
    from fair_edge.training.ddp import is_main_process

    path = Path(out).resolve() / RUN_LOCK
    if not is_main_process() or os.environ.get(RUN_LOCK_ENV) == str(path):
        yield
        return
    with hold_lock(Path(out), RUN_LOCK, "fair-edge train", functools.partial(run_busy, out)):
        before = os.environ.get(RUN_LOCK_ENV)
        os.environ[RUN_LOCK_ENV] = str(path)   # the ranks a --nproc launch starts inherit it
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(RUN_LOCK_ENV, None)
            else:
                os.environ[RUN_LOCK_ENV] = before


def run_busy(out: Path, holder: LockHolder) -> str:
    """The refusal of a run whose ``--out`` another run holds (``holder``: who holds the lock, written as its pid and
    what it runs: ``LockHolder.__str__``)."""
    return RUN_BUSY.format(folder=shlex.quote(str(out)), holder=holder)


def clear_run(out: Path) -> list[Path]:
    """Delete the run files (``RUN_FILES``) of ``out`` (``--overwrite``); returns those deleted. Other files
    (an eval folder, notes) are kept."""
    return remove_outputs(out, RUN_FILES)


def remove_outputs(out: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete ``out/NAME`` for each of ``names`` that is there (a folder with what it holds; a link, not what it
    points to): what a command's ``--overwrite`` clears of its earlier run. Returns those deleted."""
    deleted = []
    for name in names:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(path)
    return deleted

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
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from fair_edge.errors import CheckpointError, ConfigError

RUNS_ROOT = Path("runs")
RUN_FILES = ("last.pt", "final.pt", "loss.csv")  # what one run writes; last.pt or final.pt: a run is there


def default_train_dir(tag: str, root: Path = RUNS_ROOT) -> Path:
    return root / f"train-{tag}"


def find_latest_checkpoint(tag: str, root: Path = RUNS_ROOT, train_hint: str = "fair-edge train DATA") -> Path:
    """The newest ``final.pt`` (else ``last.pt``) under ``root/train-{tag}*`` (``tag``: ``ModelSpec.tag``, e.g.
    ``w32``); raises CheckpointError naming ``train_hint``, the command that makes one."""
    candidates = []
    for run_dir in sorted(Path(root).glob(f"train-{tag}*")):
        for name in ("final.pt", "last.pt"):
            if (run_dir / name).is_file():
                candidates.append(run_dir / name)
                break
    if not candidates:
        raise CheckpointError(
            f"no {tag} checkpoint under {Path(root).resolve()}/train-{tag}*. Train one with "
            f"`{train_hint}` or pass the checkpoint path explicitly."
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


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

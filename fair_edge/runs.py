"""Where training runs live on disk, and how other commands find them.

A training run writes to ``runs/train-{tag}`` by default (``--out`` overrides), where the tag is
the model family's (``ModelSpec.tag``: ``w32`` for FAIR width 32, ``lgfdr-efficientnet_lite0``):
  last.pt       the newest checkpoint (rolling; also written on Ctrl-C),
  final.pt      written when training completes,
  loss.csv      one row per logged step.
"""

from __future__ import annotations

from pathlib import Path

from fair_edge.errors import CheckpointError

RUNS_ROOT = Path("runs")


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

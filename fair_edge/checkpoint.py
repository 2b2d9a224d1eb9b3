"""The checkpoint: one self-describing file with weights and every setting that defines the model.

Layout (a plain dict of tensors and primitives, so ``torch.load(weights_only=True)`` can read it):
  format, format_version, fair_edge_version,
  preprocess: PreprocessConfig dict, width: int, scoring: ScoringConfig dict,
  state_dict: UNet weights, data_summary: dict (where the normal images came from, how many),
  train_state: optional dict to resume exactly (step, optimizer, scheduler, scaler, RNG states).
Files are written atomically (temporary file + rename), so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fair_edge
from fair_edge.models.fair.detector import FairDetector
from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.preprocess import PreprocessConfig
from fair_edge.models.fair.scoring import ScoringConfig

FORMAT = "fair-edge-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    preprocess: PreprocessConfig
    width: int
    scoring: ScoringConfig
    state_dict: dict
    data_summary: dict = field(default_factory=dict)
    train_state: dict | None = None

    def build_detector(self, device: str | torch.device = "cpu") -> FairDetector:
        """A FairDetector with these weights, in eval mode, on ``device``."""
        detector = FairDetector(self.width, self.preprocess.in_channels, self.scoring)
        try:
            detector.unet.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint weights do not fit a width-{self.width} UNet with "
                f"{self.preprocess.in_channels} input channel(s): {exc}"
            ) from exc
        return detector.eval().to(device)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fair_edge_version": fair_edge.__version__,
        "preprocess": ckpt.preprocess.to_dict(),
        "width": ckpt.width,
        "scoring": ckpt.scoring.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "data_summary": ckpt.data_summary,
        "train_state": ckpt.train_state,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Train one with `fair-edge train DATA --out DIR`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {str(exc)[:200]}). "
            "Use an earlier checkpoint from the same folder or train again."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fair-edge checkpoint (no '{FORMAT}' marker).")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this fair-edge ({fair_edge.__version__}) reads "
            f"version {FORMAT_VERSION}. Use the fair-edge release that wrote it, or retrain."
        )
    try:
        return Checkpoint(
            preprocess=PreprocessConfig.from_dict(payload["preprocess"]),
            width=int(payload["width"]),
            scoring=ScoringConfig.from_dict(payload["scoring"]),
            state_dict=payload["state_dict"],
            data_summary=payload.get("data_summary") or {},
            train_state=payload.get("train_state"),
        )
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path} is missing or has an invalid field: {exc}") from exc

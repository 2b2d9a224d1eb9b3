"""The checkpoint: one self-describing file with weights and every setting that defines the model.

Layout (a plain dict of tensors and primitives, so ``torch.load(weights_only=True)`` can read it):
  format, format_version (2), fair_edge_version,
  family: registry key ("fair", ...), family_version: int, settings: the family's settings dict,
  preprocess: PreprocessConfig dict, state_dict: the family's weights,
  data_summary: dict (where the normal images came from, how many),
  train_state: optional dict to resume exactly (step, optimizer, scheduler, RNG states).
Version 1 files (written before model families existed: ``width`` and ``scoring`` instead of
``family``/``settings``) are FAIR checkpoints and still load.
Files are written atomically (temporary file + rename), so a crash never leaves half a checkpoint.
Loading checks every record's CRC-32 in the zip container first (``_verify_crc``), so a file damaged later
(one flipped bit on a disk or in a copy) is refused instead of loading with altered weights.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fair_edge
from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.models.registry import LEGACY_FAMILY, ModelSpec
from fair_edge.preprocess import PreprocessConfig

FORMAT = "fair-edge-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class Checkpoint:
    """model: family, settings and pre-processing. state_dict: the family's weights (``ModelFamily.weights``)."""

    model: ModelSpec
    state_dict: dict
    data_summary: dict = field(default_factory=dict)
    train_state: dict | None = None

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.model.preprocess

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def settings(self) -> Any:
        return self.model.settings

    def build_detector(self, device: str | torch.device = "cpu") -> nn.Module:
        """The family's module with these weights, in eval mode, on ``device``."""
        return self.model.build(self.state_dict, device)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fair_edge_version": fair_edge.__version__,
        **ckpt.model.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "data_summary": ckpt.data_summary,
        "train_state": ckpt.train_state,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _model_spec(payload: dict) -> ModelSpec:
    """The model of a version-2 payload, or of a version-1 (FAIR, pre-family) one."""
    if payload["format_version"] == 1:
        legacy = {"width": payload["width"], "scoring": payload["scoring"]}
        payload = {**payload, "family": LEGACY_FAMILY, "family_version": 1, "settings": legacy}
    return ModelSpec.from_dict(payload)


_FIX = "Use an earlier checkpoint from the same folder or train again."


def _verify_crc(path: Path) -> None:
    """CheckpointError naming the first record of the zip container (``torch.save``'s format) whose CRC-32
    differs from the one recorded when it was written. A file that is no zip at all (an old ``torch.save``
    format, or a foreign file) is left to ``torch.load``; a damaged zip directory raises BadZipFile."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its record {bad} fails the CRC-32 check (the file changed after it "
            f"was written: a disk or copy error). {_FIX}"
        )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Train one with `fair-edge train DATA --out DIR`.")
    try:
        _verify_crc(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {str(exc)[:200]}). {_FIX}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fair-edge checkpoint (no '{FORMAT}' marker).")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this fair-edge ({fair_edge.__version__}) reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}. Use the fair-edge release that wrote it, or retrain."
        )
    try:
        return Checkpoint(
            model=_model_spec(payload),
            state_dict=payload["state_dict"],
            data_summary=payload.get("data_summary") or {},
            train_state=payload.get("train_state"),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path} is missing or has an invalid field: {exc}") from exc

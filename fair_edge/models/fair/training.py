"""FAIR's training entry points for the family registry (the loop itself is ``fair_edge.training.train``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fair_edge.training.data import DatasetSplit
from fair_edge.errors import ConfigError
from fair_edge.models.registry import ModelSpec
from fair_edge.training.train import TrainConfig, Trainer


def default_train_config() -> TrainConfig:
    """The paper's schedule (``TrainConfig`` defaults: Adam 1e-4, batch 8, 800 epochs)."""
    return TrainConfig()


def make_trainer(split: DatasetSplit, model: ModelSpec, cfg: TrainConfig, out_dir: Path, device: torch.device, *,
                 textures: np.ndarray | None = None, backbone_weights: str | None = None,
                 backbone_sha256: str | None = None, parallel=None) -> Trainer:
    """FAIR's Trainer for ``model`` (its width and scoring win over ``cfg.width``).
    parallel: this rank's ``train_ddp.DataParallel`` under torchrun, else None."""
    if backbone_weights is not None or backbone_sha256 is not None:
        raise ConfigError("--backbone-weights and --backbone-sha256 are for LGFDR (--model lgfdr); FAIR has no backbone.")
    return Trainer(split, model.preprocess, replace(cfg, width=model.settings.width), out_dir, device,
                   model.settings.scoring, textures, parallel=parallel)

"""FAIR's training entry points for the family registry (the loop itself is ``fair_edge.train``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fair_edge.data import DatasetSplit
from fair_edge.models.registry import ModelSpec
from fair_edge.train import TrainConfig, Trainer


def default_train_config() -> TrainConfig:
    """The paper's schedule (``TrainConfig`` defaults: Adam 1e-4, batch 8, 800 epochs)."""
    return TrainConfig()


def make_trainer(split: DatasetSplit, model: ModelSpec, cfg: TrainConfig, out_dir: Path, device: torch.device, *,
                 textures: np.ndarray | None = None, parallel=None) -> Trainer:
    """FAIR's Trainer for ``model`` (its width and scoring win over ``cfg.width``).
    parallel: this rank's ``train_ddp.DataParallel`` under torchrun, else None. FAIR has no backbone, so it
    takes no backbone extras (``training_contract.check_extras`` refuses them)."""
    return Trainer(split, model.preprocess, replace(cfg, width=model.settings.width), out_dir, device,
                   model.settings.scoring, textures, parallel=parallel)

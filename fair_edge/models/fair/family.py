"""FAIR as a model family: inputs (high-pass, colour), the UNet + scoring module, INT8 scope /unet/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from fair_edge.errors import ConfigError
from fair_edge.models.fair.detector import FairDetector, HalfUNetDetector
from fair_edge.models.fair.scoring import ScoringConfig
from fair_edge.models.fair.unet import WIDTHS
from fair_edge.models.family import ModelFamily, refuse_unknown_settings
from fair_edge.models.tensors import COLOUR, HIGHPASS, TensorSpec
from fair_edge.preprocess import HighPass, PreprocessConfig, model_input

UNET_SCOPE = "/unet/"  # node-name prefix of every UNet node in the exported graph


@dataclass(frozen=True)
class FairSettings:
    """width: UNet base width c: 32 (fastest), 64 or 128 (the paper's). scoring: the anomaly map and score settings."""

    width: int = 128
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        if self.width < 1:  # the CLI offers 32, 64, 128 (unet.WIDTHS); tests use smaller ones
            raise ConfigError(f"FAIR width must be >= 1; found {self.width}.")

    def to_dict(self) -> dict:
        return {"width": self.width, "scoring": self.scoring.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FairSettings":
        """Inverse of ``to_dict``; a key that is no field, here or in ``scoring`` (a newer release's setting), is a
        ConfigError naming it (``refuse_unknown_settings``), never dropped."""
        refuse_unknown_settings("FAIR", data, ("width", "scoring"))
        refuse_unknown_settings("FAIR scoring", data["scoring"], ScoringConfig().to_dict())
        return cls(width=int(data["width"]), scoring=ScoringConfig.from_dict(data["scoring"]))


class FairInputs(nn.Module):
    """forward(colour (B, 3, S, S) float32 RGB [0, 1]) -> {highpass: (B, C, S, S), colour: the same colour}."""

    def __init__(self, preprocess: PreprocessConfig) -> None:
        super().__init__()
        self.highpass = HighPass(preprocess)

    def forward(self, colour: torch.Tensor) -> dict[str, torch.Tensor]:
        return {HIGHPASS: model_input(colour, self.highpass), COLOUR: colour}


class FairFamily(ModelFamily):
    key = "fair"
    title = "FAIR"
    summary = "FAIR: a UNet restores the colour image from its high-pass; MSGMS + CIELAB colour difference"
    cli_help = "UNet restoration"
    training_module = "fair_edge.models.fair.train"
    flag_choices = {"width": WIDTHS}  # the command line trains the paper's widths (the library takes any >= 1)
    network_scope = (UNET_SCOPE,)
    int8_scope = network_scope

    def default_settings(self) -> FairSettings:
        return FairSettings()

    def settings_from_dict(self, data: Mapping[str, Any]) -> FairSettings:
        return FairSettings.from_dict(data)

    def inputs(self, preprocess: PreprocessConfig) -> tuple[TensorSpec, ...]:
        size = preprocess.image_size
        return (TensorSpec(HIGHPASS, preprocess.in_channels, size, f"{preprocess.filter} high-pass of the gray frame"),
                TensorSpec(COLOUR, 3, size, "resized RGB frame in [0, 1]"))

    def input_maker(self, preprocess: PreprocessConfig) -> nn.Module:
        return FairInputs(preprocess)

    def build(self, settings: FairSettings, preprocess: PreprocessConfig) -> nn.Module:
        return FairDetector(settings.width, preprocess.in_channels, settings.scoring)

    def half(self, module: nn.Module) -> nn.Module:
        return HalfUNetDetector(module)

    def describe(self, settings: FairSettings) -> str:
        return f"FAIR width {settings.width}"

    def tag(self, settings: FairSettings) -> str:
        return f"w{settings.width}"

    def check_preprocess(self, preprocess: PreprocessConfig) -> None:
        if preprocess.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16 for the UNet; found {preprocess.image_size}.")

    def load_weights(self, module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
        module.unet.load_state_dict(state_dict)

    def weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.unet.state_dict()

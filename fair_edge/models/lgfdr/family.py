"""LGFDR as a model family: input colour only, the whole detector in one graph, INT8 on the network."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from fair_edge.errors import ConfigError
from fair_edge.models.backbones import BACKBONES
from fair_edge.models.family import ColourInput, ModelFamily
from fair_edge.models.lgfdr.model import LgfdrDetector, LgfdrSettings
from fair_edge.models.tensors import COLOUR, TensorSpec
from fair_edge.preprocess import PreprocessConfig

# node-name prefixes of the exported graph's network; normalisation, standardisation and scoring (cosine,
# upsampling, smoothing) are outside it and stay float32
NETWORK_SCOPE = ("/backbone/", "/local_tower/", "/global_tower/", "/srh/")
# what INT8 quantises: the towers and the SRH. The frozen backbone stays float: quantised, it moved the scores
# of held-out normal ELPV cells by 1.7 normal-score spreads (towers and SRH alone: 0.02) and cost a converged
# model 6.9 points of image AUROC (towers and SRH alone: 0.0); BENCHMARKS.md, issue #14
INT8_SCOPE = ("/local_tower/", "/global_tower/", "/srh/")


class LgfdrFamily(ModelFamily):
    key = "lgfdr"
    title = "LGFDR"
    summary = "LGFDR: local + global towers reconstruct frozen ImageNet features; 1 - cosine per scale"
    cli_help = "feature reconstruction on a frozen ImageNet backbone, docs/lgfdr.md"
    training_module = "fair_edge.models.lgfdr.train"
    flag_choices = {"backbone": tuple(BACKBONES)}
    flag_aliases = {"noise_std": ("--feature-noise",)}  # the flag's name before flags came from the settings
    network_scope = NETWORK_SCOPE
    int8_scope = INT8_SCOPE

    def default_settings(self) -> LgfdrSettings:
        return LgfdrSettings()

    def settings_from_dict(self, data: Mapping[str, Any]) -> LgfdrSettings:
        return LgfdrSettings.from_dict(data)

    def inputs(self, preprocess: PreprocessConfig) -> tuple[TensorSpec, ...]:
        return (TensorSpec(COLOUR, 3, preprocess.image_size, "resized RGB frame in [0, 1]"),)

    def input_maker(self, preprocess: PreprocessConfig) -> nn.Module:
        return ColourInput()

    def build(self, settings: LgfdrSettings, preprocess: PreprocessConfig) -> nn.Module:
        return LgfdrDetector(settings, preprocess.image_size)

    def half(self, module: nn.Module) -> nn.Module:
        half = copy.deepcopy(module)
        for part in (half.backbone, half.local_tower, half.global_tower, half.srh):
            part.half()
        half.net_dtype = torch.float16
        return half

    def describe(self, settings: LgfdrSettings) -> str:
        return f"LGFDR on {settings.backbone}"

    def tag(self, settings: LgfdrSettings) -> str:
        return f"lgfdr-{settings.backbone}"

    def check_preprocess(self, preprocess: PreprocessConfig) -> None:
        if preprocess.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16 for LGFDR (backbone stride 16); found {preprocess.image_size}.")

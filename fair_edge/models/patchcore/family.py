"""PatchCore as a model family: input colour only; backbone, bank search, upsampling and blur in one graph."""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping

import torch
from torch import nn

from fair_edge.errors import ConfigError
from fair_edge.models.backbones import BACKBONES
from fair_edge.models.family import ColourInput, ModelFamily
from fair_edge.models.patchcore.model import (BANK_FLIPS, CHANNEL_REDUCTIONS, LOCAL_PADS, NORMALISATIONS,
                                              PatchcoreDetector, PatchcoreSettings, fitted_before, memory_bytes)
from fair_edge.models.tensors import COLOUR, TensorSpec
from fair_edge.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

# the network is the frozen backbone; patch aggregation, the bank search and the map stay float32 in every
# precision (a float16 or int8 |a|^2 - 2ab + |b|^2 would cancel catastrophically)
NETWORK_SCOPE = ("/backbone/",)


def int8_scope(backbone: str) -> tuple[str, ...]:
    """What INT8 quantises: the backbone after the stride-8 tap, which makes the stride-16 tap (``Backbone.after_stride8``:
    Lite0 blocks 5-10, Lite1 and Lite2 blocks 7-14, ResNet layer3). On Lite0, quantising the whole backbone moved
    the normal ELPV test cells' scores by 0.74 normal-score spreads and cost 0.85 points of image AUROC (TensorRT
    Q/DQ graph); the part after the stride-8 tap alone 0.01 spreads and 0.03 points (BENCHMARKS.md, "PatchCore")."""
    return tuple(f"/backbone/{name}/" for name in BACKBONES[backbone].after_stride8)


INT8_SCOPE = int8_scope(PatchcoreSettings.backbone)  # of the default backbone; a model's own: int8_scope_for


# a model with reweight on whose neighbour table has one column: neighbours=1 (which fits refuse since; before, the
# weight was 0, so every score was 0) or a one-row bank
UNWEIGHTED_CHECKPOINT = ("this PatchCore model has reweight on but a one-column neighbour table (neighbours=%d, %d bank "
                         "row(s)), so no bank row has a neighbour to weigh against: it scores without the weight. Such "
                         "a model scored 0 for every image in releases that applied the weight anyway, so a bundle "
                         "built from it then has threshold 0 and rejects no part: build it again (fair-edge build), or "
                         "fit again with neighbours >= 2.")


class PatchcoreFamily(ModelFamily):
    key = "patchcore"
    title = "PatchCore"
    summary = "PatchCore: nearest-neighbour distance to a coreset memory bank of frozen ImageNet patch features"
    cli_help = "distance to a memory bank of frozen ImageNet patch features, fitted in one pass, docs/patchcore.md"
    training_module = "fair_edge.models.patchcore.train"
    # 2: the settings added while 1 was written (taps, local_windows, score_top_k, position_weight, local_pad,
    # normalisation, channel_reduction, bank_flips, colour_weight, score_shifts) change scores, and a release that
    # reads only 1 dropped those it lacked unread (a model fitted with local_pad=counted or score_shifts=2 scored
    # otherwise there), so it must refuse them. Every checkpoint and bundle is written as 2, whatever its values:
    # releases that read 1 know different subsets of these settings, so no one set of values is safe for all of them
    # (today's default local_pad=counted is already misread by a release without local_pad). 1 is read as before.
    version = 2
    flag_choices = {"backbone": tuple(BACKBONES), "local_pad": LOCAL_PADS, "normalisation": NORMALISATIONS,
                    "channel_reduction": CHANNEL_REDUCTIONS, "bank_flips": tuple(BANK_FLIPS)}
    network_scope = NETWORK_SCOPE
    int8_scope = INT8_SCOPE

    def int8_scope_for(self, settings: PatchcoreSettings) -> tuple[str, ...]:
        return int8_scope(settings.backbone)

    def default_settings(self) -> PatchcoreSettings:
        return PatchcoreSettings()

    def settings_from_dict(self, data: Mapping[str, Any]) -> PatchcoreSettings:
        """Settings of a checkpoint or bundle; one written before a setting existed says what it was fitted with."""
        settings = PatchcoreSettings.from_dict(data)
        old = fitted_before(data)
        if old:
            log.warning("this PatchCore model was fitted before %s were settings: it keeps %s (today's defaults: %s); "
                        "fit it again to use them", ", ".join(old), ", ".join(f"{k}={v}" for k, v in old.items()),
                        ", ".join(f"{k}={getattr(PatchcoreSettings(), k)}" for k in old))
        return settings

    def inputs(self, preprocess: PreprocessConfig) -> tuple[TensorSpec, ...]:
        return (TensorSpec(COLOUR, 3, preprocess.image_size, "resized RGB frame in [0, 1]"),)

    def input_maker(self, preprocess: PreprocessConfig) -> nn.Module:
        return ColourInput()

    def build(self, settings: PatchcoreSettings, preprocess: PreprocessConfig) -> nn.Module:
        return PatchcoreDetector(settings, preprocess.image_size)

    def half(self, module: nn.Module) -> nn.Module:
        half = copy.deepcopy(module)
        half.backbone.half()
        half.net_dtype = torch.float16
        return half

    def describe(self, settings: PatchcoreSettings) -> str:
        return f"PatchCore on {settings.backbone}"

    def tag(self, settings: PatchcoreSettings) -> str:
        return f"patchcore-{settings.backbone}"

    def tiled_score_ignores(self, settings: PatchcoreSettings) -> dict[str, str]:
        """{setting: what it does} for the settings whose values a tiled model's frame score leaves out: that score
        is the maximum of the stitched map (``tiling.stitch``), not this graph's score (``score_top_k`` > 1, the
        ``reweight`` weight); `fair-edge train --tile` warns when one was typed."""
        ignored = {}
        if settings.score_top_k > 1:
            ignored["score_top_k"] = f"the image score as the mean of the {settings.score_top_k} highest map pixels"
        if settings.reweight:
            ignored["reweight"] = "the paper's image-score weight"
        return ignored

    def check_preprocess(self, preprocess: PreprocessConfig) -> None:
        if preprocess.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16 for PatchCore (backbone stride 16); "
                              f"found {preprocess.image_size}.")

    def facts(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The memory bank: rows, feature dim and its size in MB as the graph holds it (``memory_bytes``: the
        bank, its norms, the neighbour table and the search's column table; the graph's largest initializers)."""
        bank = state_dict["memory.bank_t"]
        table = state_dict["memory.neighbours"]
        mb = memory_bytes(int(bank.shape[1]), int(bank.shape[0]), int(table.shape[1])) / 1e6
        return {"memory_bank": {"rows": int(bank.shape[1]), "dim": int(bank.shape[0]), "neighbours": int(table.shape[1]),
                                "mb": round(mb, 3)}}

    def load_weights(self, module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Install the checkpoint's bank (its size is the fit's) and load the rest."""
        missing = [k for k in ("memory.bank_t", "memory.neighbours") if k not in state_dict]
        if missing:
            raise RuntimeError(f"PatchCore weights without {', '.join(missing)}")
        module.set_bank(state_dict["memory.bank_t"].t(), state_dict["memory.neighbours"])
        module.load_state_dict(state_dict)
        if module.settings.reweight and not module.memory.can_reweight:
            log.warning(UNWEIGHTED_CHECKPOINT, module.settings.neighbours, module.memory.rows)

"""The family registry and ``ModelSpec``: which family, with which settings, on which input size.

Adding a family: write ``fair_edge/models/<key>/family.py`` with a ``ModelFamily`` subclass and add
one line to ``FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from fair_edge.errors import CheckpointError, ConfigError, lookup
from fair_edge.models.fair.family import FairFamily
from fair_edge.models.family import ModelFamily
from fair_edge.models.lgfdr.family import LgfdrFamily
from fair_edge.models.patchcore.family import PatchcoreFamily
from fair_edge.models.tensors import TensorSpec
from fair_edge.preprocess import PreprocessConfig

FAMILIES: dict[str, ModelFamily] = {
    "fair": FairFamily(),
    "lgfdr": LgfdrFamily(),
    "patchcore": PatchcoreFamily(),
}
LEGACY_FAMILY = "fair"  # what checkpoints written before families existed hold
WIDTH_FAMILY = "fair"  # the family whose settings --width / --synthetic-width name (FAIR's UNet width)
# What `fair-edge train DATA` fits without --model: PatchCore, chosen on the development suite by the rule
# written before the run (BENCHMARKS.md, "The family `fair-edge train` fits without --model").
TRAIN_FAMILY = "patchcore"


def get_family(key: str) -> ModelFamily:
    """The family registered as ``key``; ConfigError with "did you mean" and the valid list."""
    return lookup(FAMILIES, key, "model family")


@dataclass(frozen=True)
class ModelSpec:
    """One model: its family key, the family's settings dataclass and the pre-processing settings."""

    family: str
    preprocess: PreprocessConfig
    settings: Any

    def __post_init__(self) -> None:
        impl = get_family(self.family)
        if not isinstance(self.settings, type(impl.default_settings())):
            raise ConfigError(f"family {self.family!r} needs {type(impl.default_settings()).__name__} settings; "
                              f"found {type(self.settings).__name__}.")
        impl.check_preprocess(self.preprocess)

    @property
    def impl(self) -> ModelFamily:
        return get_family(self.family)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.impl.inputs(self.preprocess)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    def describe(self) -> str:
        return self.impl.describe(self.settings)

    @property
    def int8_scope(self) -> tuple[str, ...]:
        """Node-name prefixes of this model's exported graph that INT8 quantises (``ModelFamily.int8_scope_for``)."""
        return self.impl.int8_scope_for(self.settings)

    @property
    def tag(self) -> str:
        return self.impl.tag(self.settings)

    def build(self, state_dict: Mapping[str, torch.Tensor] | None = None, device: str | torch.device = "cpu") -> nn.Module:
        """The family's module with ``state_dict`` loaded, in eval mode on ``device``; CheckpointError on a mismatch."""
        module = self.impl.build(self.settings, self.preprocess)
        if state_dict is not None:
            try:
                self.impl.load_weights(module, state_dict)
            except RuntimeError as exc:
                raise CheckpointError(f"the weights do not fit a {self.describe()} model "
                                      f"({self.preprocess.in_channels} high-pass channel(s)): {str(exc)[:400]}") from exc
        return module.eval().to(device)

    def input_maker(self, device: str | torch.device = "cpu") -> nn.Module:
        return self.impl.input_maker(self.preprocess).to(device)

    def to_dict(self) -> dict:
        return {"family": self.family, "family_version": self.impl.version, "settings": self.settings.to_dict(),
                "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """From ``to_dict()``; refuses a family version newer than this code reads."""
        impl = get_family(data["family"])
        version = int(data.get("family_version", 1))
        if version > impl.version:
            raise ConfigError(f"family {impl.key!r} settings version {version} is newer than this fair-edge reads "
                              f"({impl.version}); upgrade fair-edge or use the release that wrote it.")
        return cls(impl.key, PreprocessConfig.from_dict(data["preprocess"]), impl.settings_from_dict(data["settings"]))

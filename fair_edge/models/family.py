"""What a model family declares, so that everything downstream works on named tensors alone.

A family is one module (``fair_edge/models/<key>/family.py``) with one ``ModelFamily`` subclass:
  inputs        the graph inputs (names from ``models.tensors``), shapes and how each is made
  input_maker   the torch module that makes those inputs from the resized colour batch
  build         its PyTorch module: forward(*inputs in ``inputs`` order) -> (anomaly_map, score)
  half          the module the FP16 graph is exported from (float16 network, float32 scoring)
  network_scope node-name prefixes of the exported graph's network (what is not pre- or post-processing)
  int8_scope    node-name prefixes of the exported graph whose convolutions get Q/DQ in INT8 (within the network);
                ``int8_scope_for(settings)`` where they depend on the settings (PatchCore: on the backbone)
  settings      a frozen dataclass with ``to_dict``/``from_dict``, stored in checkpoints and bundles
  training      the module whose trainer writes this family's checkpoints (``training_module``)
and one line in ``fair_edge.models.registry.FAMILIES``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from fair_edge.errors import ConfigError
from fair_edge.models.tensors import COLOUR, TensorSpec
from fair_edge.preprocess import PreprocessConfig


class ModelFamily(ABC):
    """One detector family. Subclasses set the class attributes and implement the methods."""

    key: ClassVar[str]
    title: ClassVar[str]  # the family's name in prose and help texts, e.g. "LGFDR"
    summary: ClassVar[str]
    cli_help: ClassVar[str]  # a few words after the key in `--model` help texts
    # of the settings/weights layout this code writes; it reads every version up to it, and a release refuses a
    # newer one (``ModelSpec.from_dict``): raise it with each setting whose value an older release would not apply
    version: ClassVar[int] = 1
    network_scope: ClassVar[tuple[str, ...]]
    int8_scope: ClassVar[tuple[str, ...]]
    training_module: ClassVar[str]  # dotted name of the module with make_trainer / default_train_config
    # `fair-edge train` makes one option of every scalar field of the settings and the training settings
    # (``training_contract.setting_flags``); these add allowed values and further flag names to some of them
    flag_choices: ClassVar[Mapping[str, tuple]] = {}
    flag_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @abstractmethod
    def default_settings(self) -> Any:
        """The family's settings dataclass with its defaults."""

    @abstractmethod
    def settings_from_dict(self, data: Mapping[str, Any]) -> Any:
        """Settings from their ``to_dict()`` form; ConfigError naming a bad field."""

    @abstractmethod
    def inputs(self, preprocess: PreprocessConfig) -> tuple[TensorSpec, ...]:
        """The graph inputs, in the order ``build(...).forward`` takes them."""

    @abstractmethod
    def input_maker(self, preprocess: PreprocessConfig) -> nn.Module:
        """forward(colour (B, 3, S, S) float32 RGB [0, 1], any device) -> {input name: tensor}."""

    @abstractmethod
    def build(self, settings: Any, preprocess: PreprocessConfig) -> nn.Module:
        """A fresh module: forward(*inputs) -> (anomaly_map (B, 1, S, S), score (B,)) float32."""

    @abstractmethod
    def half(self, module: nn.Module) -> nn.Module:
        """A float16 copy of the network part of ``module`` with the same inputs/outputs (FP16 graph)."""

    @abstractmethod
    def describe(self, settings: Any) -> str:
        """One line for tables and logs, e.g. 'FAIR width 32'."""

    @abstractmethod
    def tag(self, settings: Any) -> str:
        """A short file-name part for default run and bundle folders, e.g. 'w32'."""

    def training(self) -> ModuleType:
        """The family's training module (``training_module``), imported on first use.

        It keeps the contract of ``fair_edge.models.training_contract``: ``default_train_config()`` (the family's
        own training settings) and ``make_trainer(split, model, cfg, out_dir, device, **extras)`` returning a
        ``FamilyTrainer``. Named, not imported here, so that reading a checkpoint (which needs the registry)
        never loads the training stack, and no import cycle forms.
        """
        return importlib.import_module(self.training_module)

    def setting_names(self) -> tuple[str, ...]:
        """The fields of this family's settings (``default_settings().to_dict()`` keys)."""
        return tuple(self.default_settings().to_dict())

    def settings_from_options(self, options: Mapping[str, Any], given: Iterable[str] = ()) -> Any:
        """The default settings with the non-None ``options`` whose names are settings fields (command-line flags).
        A name in ``given`` (an option the user typed) that is no field of this family is a ConfigError."""
        base = self.default_settings().to_dict()
        foreign = [name for name in given if name not in base and options.get(name) is not None]
        if foreign:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in foreign)
            raise ConfigError(f"{flags} is not a setting of {self.title} (--model {self.key}), whose settings are "
                              f"{', '.join(base)}. Leave {flags} out, or pick the family it belongs to.")
        return self.settings_from_dict({**base, **{k: v for k, v in options.items() if k in base and v is not None}})

    def settings_conflicts(self, settings: Any, options: Mapping[str, Any]) -> list[str]:
        """'--NAME VALUE' for each non-None option that ``settings`` has with another value or does not have at
        all: what a command that selects a checkpoint by flags (``build --width``) must refuse."""
        values = settings.to_dict()
        return [f"--{name.replace('_', '-')} {value}" for name, value in options.items()
                if value is not None and (name not in values or values[name] != value)]

    def settings_flags(self, settings: Any) -> list[str]:
        """`fair-edge train` flags that give ``settings`` from the defaults: '--NAME VALUE' for each scalar
        field that differs (booleans as --NAME / --no-NAME); other fields are not flags (``--set``)."""
        defaults, values = self.default_settings().to_dict(), settings.to_dict()
        out = []
        for name, value in values.items():
            dashed = name.replace("_", "-")
            if value == defaults.get(name) or not isinstance(value, (bool, int, float, str)):
                continue
            if isinstance(value, bool):
                out.append(f"--{dashed}" if value else f"--no-{dashed}")
            else:
                out.append(f"--{dashed} {value}")
        return out

    def check_preprocess(self, preprocess: PreprocessConfig) -> None:
        """ConfigError when ``preprocess`` (e.g. the image size) does not suit this family."""

    def tiled_score_ignores(self, settings: Any) -> dict[str, str]:
        """{setting: what it does} for settings whose values a tiled model's frame score (the stitched map's
        maximum) leaves out. Default: none."""
        return {}

    def int8_scope_for(self, settings: Any) -> tuple[str, ...]:
        """The ``int8_scope`` of a model with these settings. Default: the family's ``int8_scope``."""
        return self.int8_scope

    def load_weights(self, module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a checkpoint's ``state_dict`` into ``module`` (RuntimeError on a mismatch)."""
        module.load_state_dict(state_dict)

    def facts(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Figures about one trained model that bundle.json and ``fair-edge bench`` report (PatchCore: its
        memory bank's rows and MB); JSON primitives. Default: none."""
        return {}

    def weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The state dict a checkpoint stores for ``module`` (inverse of ``load_weights``)."""
        return module.state_dict()


def refuse_unknown_settings(what: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    """ConfigError naming the keys of a checkpoint's or bundle's settings dict ``data`` that are no field in
    ``known`` (this release's fields of ``what``, e.g. "PatchCore"): settings of a newer fair-edge, which dropped
    unread would make the model score otherwise than the one that was fitted."""
    known = tuple(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{what} setting(s) {', '.join(unknown)} are unknown to this fair-edge, which reads "
                          f"{', '.join(known)}: the checkpoint or bundle was written by a newer fair-edge, and "
                          "without them the model would score otherwise than it was fitted to. Upgrade fair-edge "
                          "to the release that wrote it (or newer), or train and build the model again with this one.")


class ColourInput(nn.Module):
    """forward(colour (B, 3, S, S) float32 RGB [0, 1]) -> {colour: colour}."""

    def forward(self, colour: torch.Tensor) -> dict[str, torch.Tensor]:
        return {COLOUR: colour}

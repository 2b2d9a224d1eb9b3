"""What ``fair-edge train --resume`` continues: the settings saved in ``OUT/last.pt``.

A resumed run needs only its folder: the data spec, pre-processing and training settings (step
budget included) come from the checkpoint. A flag given again must agree with the saved value;
one that differs is refused, because it would silently make a different run (another learning-rate
schedule, another filter). ``--device`` and ``--save-every`` may change, they do not change the result.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.training_contract import config_from_options, settings_overrides

# flag (the train command's parameter name) -> (part of the saved run, attribute) for the options that are no
# family's settings; an option made from a settings field (``training_contract.setting_flags``) is compared with
# the saved family's settings or training settings field of its name, and not compared when the family lacks it
SAVED_FLAGS = {
    "data": ("run", "data"), "category": ("run", "category"), "textures": ("run", "textures"),
    "backbone_weights": ("run", "backbone_weights"), "backbone_sha256": ("run", "backbone_sha256"),
    "model": ("model", "family"),
    "filter": ("preprocess", "filter"), "cutoff": ("preprocess", "cutoff"), "order": ("preprocess", "order"),
    "image_size": ("preprocess", "image_size"),
}
FREE_ON_RESUME = ("device", "save_every", "out", "resume", "verbose")
_MISSING = object()


@dataclass(frozen=True)
class RunSource:
    """Where a run's inputs came from: the DATA argument, --category, --textures and the backbone file (as given)."""

    data: str
    category: str | None = None
    textures: str | None = None
    backbone_weights: str | None = None
    backbone_sha256: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SavedRun:
    """run: where the inputs came from. model: family, settings and pre-processing. train: the
    family's training settings (for FAIR a ``fair_edge.models.fair.train.TrainConfig``)."""

    run: RunSource
    model: ModelSpec
    train: Any


def read_saved_run(out: Path) -> SavedRun:
    """The settings stored in ``out/last.pt``; CheckpointError if it cannot be resumed from."""
    path = Path(out) / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume: {path} does not exist. Pass the --out folder of the run to continue "
                              "(it holds last.pt), or start a new run without --resume.")
    ckpt = load_checkpoint(path)
    state = ckpt.train_state or {}
    if "config" not in state or not (state.get("run") or {}).get("data"):
        raise CheckpointError(f"{path} was written by an older fair-edge that did not store its settings; "
                              "resume it with that release, or start a new run.")
    config_type = type(ckpt.model.impl.training().default_train_config())
    try:
        train = config_type.from_dict(state["config"])
        run = RunSource(**state["run"])
    except (TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path} holds invalid training settings ({exc}); start a new run.") from exc
    return SavedRun(run, ckpt.model, train)


def resume_settings(out: Path, given: dict, save_every: int | None) -> SavedRun:
    """The saved run of ``out``, checked against the flags the user ``given`` (name -> value).

    Raises ConfigError listing every given flag that differs from the saved value.
    """
    saved = read_saved_run(out)
    parts = {"run": saved.run, "model": saved.model, "settings": saved.model.settings,
             "preprocess": saved.model.preprocess, "train": saved.train}
    conflicts = []
    given = dict(given)
    overrides = settings_overrides(saved.model.impl, given.pop("set_", None) or ())
    given.update({f"set {k}": v for k, v in overrides.items()})
    for name, value in given.items():
        if name.startswith("set "):  # --set KEY=VALUE: a field of the saved family's settings
            stored = getattr(saved.model.settings, name[4:])
            if _normalise(value) != _normalise(stored):
                conflicts.append(f"--{name}={value} (saved: {stored})")
            continue
        if name in FREE_ON_RESUME:
            continue
        if name in SAVED_FLAGS:
            part, attr = SAVED_FLAGS[name]
            stored = getattr(parts[part], attr, _MISSING)
        elif name in saved.model.impl.setting_names():
            stored = getattr(saved.model.settings, name)
        else:
            stored = getattr(saved.train, name, _MISSING)
        if stored is not _MISSING and _normalise(value) != _normalise(stored):
            conflicts.append(f"--{name.replace('_', '-')} {value} (saved: {stored})")
    if conflicts:
        raise ConfigError(
            f"--resume continues {out} with the settings saved in its last.pt; these flags differ: "
            f"{'; '.join(conflicts)}. Drop them to continue that run, or train into a new --out folder."
        )
    if save_every is not None:  # a family that saves only at the end has no save_every: nothing to change
        saved = replace(saved, train=config_from_options(saved.train, {"save_every": save_every}))
    return saved


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out`` (everything else is read from its last.pt)."""
    return shlex.join(["fair-edge", "train", "--resume", "--out", str(out)])


def _normalise(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value

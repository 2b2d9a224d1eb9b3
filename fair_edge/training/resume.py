"""What ``fair-edge train --resume`` continues: the settings saved in ``OUT/last.pt``.

A resumed run needs only its folder: the data spec, pre-processing and training settings (step
budget included) come from the checkpoint. A flag given again must agree with the saved value;
one that differs is refused, because it would silently make a different run (another learning-rate
schedule, another filter, another tiling). ``--device`` and ``--save-every`` may change, they do not change
the result. The training images are compared too: each trainer stores their names and sizes
(``training_files``) and its step budget in ``train_state``, and ``check_same_data`` refuses a resume on
images added, removed or changed since, which would be another epoch length and learning-rate schedule; on the
same images with another budget (a release that counts the budget otherwise) it names that cause and the options.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.training_contract import config_from_options, settings_overrides

log = logging.getLogger(__name__)
NAMED = 3  # files named in a refusal, per kind (added, missing, changed); the rest are counted

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
# flags compared with the saved pre-processing's tiling (``TilingConfig``; None: no tiling) by ``_saved_tiling``
TILING_FLAGS = ("tile", "tile_overlap", "roi")
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
        if name in TILING_FLAGS:
            stored, value = _saved_tiling(saved.model.preprocess.tiling, name), _given_tiling(name, value)
        elif name in SAVED_FLAGS:
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


def training_files(samples) -> list[list]:
    """[[path, bytes], ...] of the training images (``Sample``s), sorted by path: what identifies the data a run
    trains on (``train_state["data_files"]``). A file that cannot be read counts with -1 bytes."""
    def size(path: Path) -> int:
        try:
            return Path(path).stat().st_size
        except OSError:
            return -1

    return sorted([str(s.path), size(s.path)] for s in samples)


def check_same_data(path: Path, state: dict, files: list, total_steps: int) -> None:
    """ConfigError unless the run saved in ``path`` (its ``train_state``) was trained on the same ``files``
    (``training_files``) with the same step budget ``total_steps``: naming the images added, missing or changed
    (a few, then a count) and the fix. A run saved before these were stored is resumed with a warning."""
    if "data_files" not in state or "total_steps" not in state:
        log.warning("%s was saved by an older fair-edge that did not record its training images: the data of this "
                    "resume cannot be compared with the data it was trained on.", path)
        return
    saved = {name: size for name, size in state["data_files"]}
    now = {name: size for name, size in files}
    changes = [_named(what, names) for what, names in (
        ("added", sorted(now.keys() - saved.keys())), ("missing", sorted(saved.keys() - now.keys())),
        ("changed (another size)", sorted(n for n in now.keys() & saved.keys() if now[n] != saved[n])))
        if names]
    budget = int(state["total_steps"])
    if not changes and budget == total_steps:
        return
    if not changes:
        raise ConfigError(_budget_changed(path, state, len(files), budget, total_steps))
    found = "; ".join(changes)
    raise ConfigError(
        f"cannot resume {path}: it was trained on {len(saved)} images with a budget of {budget} steps (saved at step "
        f"{state.get('step')}); the data now has {len(files)} images, a budget of {total_steps}: {found}. --resume "
        "continues the same run, so it needs the same images: restore the images as they were to continue it, or start "
        "a new run on the data as it is now (another --out, or --overwrite to replace this one)."
    )


def _budget_changed(path: Path, state: dict, n_files: int, budget: int, total_steps: int) -> str:
    """The refusal of a resume on unchanged images whose step budget this release computes otherwise (e.g. LGFDR with
    --tile counts --epochs in tiles since 75ab9ff: a saved budget of 4000 is 24000 now): the files are not the
    cause, and a flag cannot change the budget of a resumed run (--steps is refused as a changed setting)."""
    again = (f", with --steps {budget} to train as many steps as this run planned"
             if "steps" in (state.get("config") or {}) else "")
    return (f"cannot resume {path}: its {n_files} training images are unchanged, but this release computes a budget "
            f"of {total_steps} steps for its saved settings where the release that wrote the run computed {budget} "
            f"(saved at step {state.get('step')}): the step budget, and the learning-rate schedule with it, is counted "
            "differently now. --resume continues the same run with the same budget, which this release cannot do, "
            "and no flag changes it. Either finish the run with the fair-edge release that wrote it, or start a new "
            f"run with this one in another --out (or --overwrite to replace this one){again}.")


def _named(what: str, names: list[str]) -> str:
    """'2 added (a.png, b.png)' or '12 added (a.png, b.png, c.png and 9 more)'."""
    shown = ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")
    return f"{len(names)} {what} ({shown})"


def _saved_tiling(tiling, name: str):
    """The value of --tile / --tile-overlap / --roi that made the saved ``tiling`` (None: the run is not tiled)."""
    if name == "tile":
        return None if tiling is None else tiling.tile
    if name == "tile_overlap":
        return 0 if tiling is None else tiling.overlap
    return None if tiling is None or tiling.roi is None else ",".join(map(str, tiling.roi))


def _given_tiling(name: str, value):
    """--roi as typed, spaces dropped ('8, 8, 48, 48' is the saved '8,8,48,48'); the other tiling flags as given."""
    return value.replace(" ", "") if name == "roi" and isinstance(value, str) else value


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out`` (everything else is read from its last.pt)."""
    return shlex.join(["fair-edge", "train", "--resume", "--out", str(out)])


def _normalise(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value

"""The training contract between a family's training module and the commands that train it.

A family's ``training_module`` (``ModelFamily.training_module``) defines:
  default_train_config()  the family's own training settings: a frozen dataclass with ``to_dict`` /
                          ``from_dict`` (FAIR: ``fair_edge.training.train.TrainConfig``; PatchCore: batch and seed)
  make_trainer(split, model, cfg, out_dir, device, **extras) -> a ``FamilyTrainer``
                          extras: named run inputs a command got from its user, passed only when given
                          (``RUN_EXTRAS``); the family takes the ones it uses as keyword parameters, and
                          ``check_extras`` refuses the others before any work, naming the families that take them.
The commands never ask which family they hold: flags become training settings through
``config_from_options`` (a flag the user typed that the family's settings lack is refused), and model
settings through ``ModelFamily.settings_from_options`` and ``settings_overrides`` (``--set KEY=VALUE``).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sized

from fair_edge.errors import ConfigError, lookup

# run inputs a command may hand to make_trainer (each only when given):
#   textures (N, S, S, 3) float32 RGB [0, 1] texture images; backbone_weights: a weight file or "random";
#   backbone_sha256: the SHA-256 that file must have; parallel: this rank's train_ddp.DataParallel
RUN_EXTRAS = ("textures", "backbone_weights", "backbone_sha256", "parallel")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class FamilyTrainer(Protocol):
    """What ``make_trainer`` returns. step / total_steps: done and planned units of work (optimisation steps,
    or for a ``fits_once`` family the batches of its one pass over the data). batch: images per unit.
    images: the training images (or their features). run_info: where the data came from, stored for --resume."""

    step: int
    total_steps: int
    batch: int
    images: Sized
    use_amp: bool
    fits_once: bool
    run_info: dict

    def run(self, on_step: Callable[[int, int, float, float], None] | None = None) -> Path:
        """Train to the end; returns final.pt. on_step(step, total, loss, images_per_s); loss NaN when fitting once."""

    def resume(self) -> None:
        """Continue from out_dir/last.pt (CheckpointError when it does not fit)."""


def resumable_checkpoint(out_dir: Path, model):
    """``out_dir/last.pt`` if it holds training state for ``model`` (a ModelSpec); CheckpointError otherwise."""
    from fair_edge.models.checkpoint import load_checkpoint
    from fair_edge.errors import CheckpointError

    path = Path(out_dir) / "last.pt"
    ckpt = load_checkpoint(path)
    if ckpt.train_state is None:
        raise CheckpointError(f"{path} holds no training state to resume from.")
    if ckpt.model != model:
        raise CheckpointError(f"cannot resume: {path} is {ckpt.model.describe()} with {ckpt.preprocess}; "
                              f"this run asks for {model.describe()} with {model.preprocess}.")
    return ckpt


def config_fields(cfg: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cfg))


def config_from_options(cfg: Any, options: Mapping[str, Any], given: Iterable[str] = (), family: str = "") -> Any:
    """``cfg`` with the non-None ``options`` that are its fields. A name in ``given`` (flags the user typed)
    that ``cfg`` has no field for is a ConfigError: it would silently do nothing."""
    fields = config_fields(cfg)
    unused = [name for name in given if name in options and name not in fields]
    if unused:
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in unused)
        verb = "does" if len(unused) == 1 else "do"
        raise ConfigError(f"{flags} {verb} not apply to {family or 'this family'}'s training, whose settings are "
                          f"{', '.join(fields)}. Leave {flags} out.")
    return dataclasses.replace(cfg, **{k: v for k, v in options.items() if k in fields and v is not None})


def trainer_parameters(make_trainer: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(make_trainer).parameters)


def check_extras(training, extras: Mapping[str, Any], family: str, describe: str) -> None:
    """ConfigError naming the first given extra that ``training.make_trainer`` does not take, and who does."""
    from fair_edge.models.registry import FAMILIES

    taken = trainer_parameters(training.make_trainer)
    for name, value in extras.items():
        if value is None or name in taken:
            continue
        if name == "parallel":
            raise ConfigError(f"{describe} does not train under DDP yet; run it without --nproc / torchrun.")
        users = [k for k, impl in FAMILIES.items() if name in trainer_parameters(impl.training().make_trainer)]
        flag = f"--{name.replace('_', '-')}"
        raise ConfigError(f"{flag} is not used by {describe} (--model {family}); it is for "
                          f"{', '.join(f'--model {k}' for k in users) or 'no registered family'}. Leave {flag} out.")


def families_with_setting(name: str) -> tuple[str, ...]:
    """Keys of the registered families whose model settings have the field ``name`` (for help texts)."""
    from fair_edge.models.registry import FAMILIES

    return tuple(k for k, impl in FAMILIES.items() if name in impl.default_settings().to_dict())


def _parse_value(text: str, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        word = text.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ConfigError(f"--set {key}={text}: expected true or false.")
        return word in TRUE_WORDS
    if isinstance(default, tuple) and default and all(isinstance(v, int) and not isinstance(v, bool) for v in default):
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected comma-separated integers "
                              f"(default {','.join(map(str, default))}).") from None
    try:
        return type(default)(text) if isinstance(default, (int, float, str)) else None
    except ValueError:
        raise ConfigError(f"--set {key}={text}: expected a {type(default).__name__} (default {default!r}).") from None


def settings_overrides(impl, items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> {field: value} of ``impl``'s model settings, typed like the defaults.

    ConfigError for a malformed item, an unknown field ("did you mean") or a nested field."""
    defaults = impl.default_settings().to_dict()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE (a {impl.key} setting); found {item!r}.")
        key = key.strip().lower()
        lookup(defaults, key, f"a {impl.key} setting for --set")
        value = _parse_value(text, defaults[key], key)
        if value is None:
            raise ConfigError(f"--set {key}: the {impl.key} setting {key} is not a single value; it cannot be set here.")
        out[key] = value
    return out

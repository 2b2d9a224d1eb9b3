"""The training contract between a family's training module and the commands that train it.

A family's ``training_module`` (``ModelFamily.training_module``) defines:
  default_train_config()  the family's own training settings: a frozen dataclass with ``to_dict`` /
                          ``from_dict`` (FAIR: ``fair_edge.models.fair.train.TrainConfig``, LGFDR: ``LgfdrTrainConfig``,
                          PatchCore: ``FitConfig``, batch and seed)
  make_trainer(split, model, cfg, out_dir, device, **extras) -> a ``FamilyTrainer``
                          extras: named run inputs a command got from its user, passed only when given
                          (``RUN_EXTRAS``); the family takes the ones it uses as keyword parameters, and
                          ``check_extras`` refuses the others before any work, naming the families that take them.
The commands never ask which family they hold: every scalar field of a registered family's settings and
training settings (no name in both: ``check_one_place``) is a `fair-edge train` option (``setting_flags``: typed, its help from the dataclass docstring's
``name: text`` and its defaults from the dataclass); flags become training settings through
``config_from_options`` (a flag the user typed that the family's settings lack is refused), and model
settings through ``ModelFamily.settings_from_options`` and ``settings_overrides`` (``--set KEY=VALUE``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sized, runtime_checkable

from fair_edge.errors import ConfigError, lookup

# run inputs a command may hand to make_trainer (each only when given):
#   textures (N, S, S, 3) float32 RGB [0, 1] texture images; backbone_weights: a weight file or "random";
#   backbone_sha256: the SHA-256 that file must have; parallel: this rank's train_ddp.DataParallel
# (a family's make_trainer may also take on_progress(phase, done, total), told of the phases before and after its
# steps, e.g. PatchCore's loading, coreset and neighbours; `fair-edge train` passes it to those that take it)
RUN_EXTRAS = ("textures", "backbone_weights", "backbone_sha256", "parallel")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@runtime_checkable
class FamilyTrainer(Protocol):
    """What ``make_trainer`` returns. step / total_steps: done and planned units of work (optimisation steps,
    or for a ``fits_once`` family the batches of its one pass over the data). batch: images per unit.
    images: the training images (or their features). run_info: where the data came from, stored for --resume.
    keeps_resume_state: whether ``run`` leaves last.pt beside final.pt (True: `train --resume` continues it); `tune`
    sets False before ``run``: final.pt alone, never beside a last.pt, and no last.pt when stopped. stop_signals: the
    signals (``signal.SIGINT``, ...) on which ``run`` finishes the step in flight, saves last.pt (with
    ``keeps_resume_state``) and stops (``loop.signals_request_stop``);
    `train` sets ``loop.STOP_SIGNALS`` (Ctrl-C and SIGTERM) before ``run`` on a trainer that does not ``fits_once``;
    () where a fit in one pass has no step to stop at."""

    step: int
    total_steps: int
    batch: int
    images: Sized
    use_amp: bool
    fits_once: bool
    run_info: dict
    keeps_resume_state: bool
    stop_signals: tuple[int, ...]

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
    """``KEY=VALUE`` strings -> {field: value} of ``impl``'s model settings, typed like the defaults. A key
    ``GROUP.FIELD`` sets one field of a nested group (FAIR's ``scoring.k_color=0``): {GROUP: the group's
    defaults with every such field set}.

    ConfigError for a malformed item, an unknown field or group field ("did you mean"), or a group given whole."""
    defaults = impl.default_settings().to_dict()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE (a {impl.key} setting); found {item!r}.")
        key = key.strip().lower()
        group, dot, field = key.partition(".")
        lookup(defaults, group, f"a {impl.key} setting for --set")
        default = defaults[group]  # a value, or a group's {field: value}
        if isinstance(default, dict) and not dot:
            raise ConfigError(f"--set {key}: {group} is a group of {impl.key} settings; set one of them, e.g. --set "
                              f"{group}.{next(iter(default))}=VALUE ({', '.join(default)}).")
        if dot and not isinstance(default, dict):
            raise ConfigError(f"--set {key}: the {impl.key} setting {group} has no fields; use --set {group}=VALUE.")
        if dot:
            lookup(default, field, f"a {impl.key} {group} setting for --set {group}.FIELD")
        value = _parse_value(text, default[field] if dot else default, key)
        if value is None:
            raise ConfigError(f"--set {key}: the {impl.key} setting {key} is not a single value; it cannot be set here.")
        out[group] = {**default, **out.get(group, {}), field: value} if dot else value
    return out


# ----------------------------------------------------------------------------- settings as command-line options
FLAG_TYPES = (bool, int, float, str)  # field types that become options; tuples and nested settings stay --set / files


@dataclass(frozen=True)
class SettingFlag:
    """One `fair-edge train` option made from a settings field that one or more families have.

    name: the field name (the option is --name with '_' -> '-'). kind: bool, int, float or str.
    defaults: (family key, its default) for each family with the field, registry order. text: what the field
    means (from the first family's docstring that says). choices: allowed values (``ModelFamily.flag_choices``),
    empty for any. aliases: further flag names (``ModelFamily.flag_aliases``)."""

    name: str
    kind: type
    defaults: tuple[tuple[str, Any], ...]
    text: str
    choices: tuple = ()
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.defaults)

    def help(self, titles: Mapping[str, str], every_family: bool) -> str:
        """'LGFDR / PatchCore: what it is (one of a, b) [default: x]' ('fair 1e-4, lgfdr 1e-3' when they differ)."""
        who = "" if every_family else " / ".join(titles[k] for k in self.families) + ": "
        choices = f" (one of {', '.join(map(str, self.choices))})" if self.choices else ""
        values = {repr(v) for _, v in self.defaults}
        shown = [(k, v) for k, v in self.defaults if v is not None]
        if not shown:
            default = ""
        elif len(values) == 1:
            default = f" [default: {_show(shown[0][1])}]"
        else:
            default = " [default: " + ", ".join(f"{k} {_show(v)}" for k, v in shown) + "]"
        text = self.text[:1].upper() + self.text[1:] if not who else self.text
        return f"{who}{text}{choices}{default}."

    def check(self, value: Any) -> None:
        """ConfigError when ``value`` is not among ``choices`` ("did you mean")."""
        if value is not None and self.choices and value not in self.choices:
            from fair_edge.errors import did_you_mean

            raise ConfigError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}; found {value}."
                              f"{did_you_mean(value, self.choices, sentence=True)}")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag_type(hint: Any) -> type | None:
    """int for ``int`` or ``int | None``; None for anything that is not one scalar of FLAG_TYPES."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in FLAG_TYPES else None


def field_texts(cls: type) -> dict[str, str]:
    """{field: its first sentence} from a settings dataclass docstring written 'name: text. other / more: text.'"""
    doc = " ".join((cls.__doc__ or "").split()).replace("``", "")
    names = "|".join(re.escape(f.name) for f in dataclasses.fields(cls))
    labels = list(re.finditer(rf"(?:^|(?<=[\s.;]))((?:{names})(?: / (?:{names}))*): ", doc))
    out: dict[str, str] = {}
    for label, following in zip(labels, labels[1:] + [None]):
        text = doc[label.end(): following.start() if following else len(doc)].strip(" ;")
        text = re.split(r"(?<=[^.]\.) ", text, maxsplit=1)[0].rstrip(".;, ")
        for name in label.group(1).split(" / "):
            out.setdefault(name, text)
    return out


def check_one_place(family: str, model: Any, train: Any) -> None:
    """ConfigError when a field is in both the model settings and the training settings of ``family``: a
    setting lives in one place (the model's, stored in checkpoints and bundles), and its trainer reads it there."""
    both = sorted(set(config_fields(model)) & set(config_fields(train)))
    if both:
        names = ", ".join(map(repr, both))
        raise ConfigError(f"the {family} family has {names} in both its model settings ({type(model).__name__}) and "
                          f"its training settings ({type(train).__name__}); a setting lives in one place. Keep it in "
                          f"the model settings and let make_trainer read it from the model.")


def setting_flags(families: Mapping[str, Any], reserved: Iterable[str] = ()) -> tuple[SettingFlag, ...]:
    """One SettingFlag per scalar field name over every family's settings and training settings dataclasses.

    families: key -> ModelFamily (the registry). reserved: option names the command has of its own; a field
    with one of those names, or with another type in another family, is a ConfigError naming both."""
    reserved = set(reserved)
    found: dict[str, dict] = {}
    for key, impl in families.items():
        model, train = impl.default_settings(), impl.training().default_train_config()
        check_one_place(key, model, train)
        for settings in (model, train):
            hints, texts = typing.get_type_hints(type(settings)), field_texts(type(settings))
            for f in dataclasses.fields(settings):
                kind = _flag_type(hints.get(f.name))
                if kind is None:
                    continue
                if f.name in reserved:
                    raise ConfigError(f"the {key} family's setting {f.name!r} has the name of a `fair-edge train` "
                                      f"option ({', '.join(sorted(reserved))}); rename the setting.")
                entry = found.setdefault(f.name, {"kind": kind, "defaults": {}, "text": "", "choices": (),
                                                  "aliases": ()})
                if entry["kind"] is not kind:
                    other = next(iter(entry["defaults"]))
                    raise ConfigError(f"setting {f.name!r} is a {kind.__name__} in the {key} family and a "
                                      f"{entry['kind'].__name__} in the {other} family; one option cannot take both. "
                                      "Rename one, or give both the same type.")
                entry["defaults"].setdefault(key, getattr(settings, f.name))
                entry["text"] = entry["text"] or texts.get(f.name, "")
                entry["choices"] = entry["choices"] or tuple(impl.flag_choices.get(f.name, ()))
                entry["aliases"] += tuple(a for a in impl.flag_aliases.get(f.name, ()) if a not in entry["aliases"])
    return tuple(SettingFlag(name, e["kind"], tuple(e["defaults"].items()),
                             e["text"] or f"the {name.replace('_', ' ')} setting", e["choices"], e["aliases"])
                 for name, e in found.items())


def family_from_flags(given: Iterable[str], flags: Iterable[SettingFlag], default: str) -> str:
    """The family `fair-edge train` fits when --model is left out: ``default``, unless a settings option the user
    typed is not ``default``'s; then the one family that has every such option (``--width``: FAIR), or a
    ConfigError naming the options and the families they belong to."""
    by_name = {f.name: f for f in flags}
    foreign = [by_name[name] for name in given if name in by_name and default not in by_name[name].families]
    if not foreign:
        return default
    common = set(foreign[0].families).intersection(*(f.families for f in foreign[1:]))
    if len(common) == 1:
        return common.pop()
    owners = "; ".join(f"{f.flag} is a setting of {', '.join(f.families)}" for f in foreign)
    choices = sorted(common) or sorted({k for f in foreign for k in f.families})
    typed = ", ".join(f.flag for f in foreign)
    raise ConfigError(f"`fair-edge train` without --model fits {default}, which has no {typed} ({owners}). "
                      f"Add {' or '.join(f'--model {k}' for k in choices)}, or leave {typed} out.")


def refuse_foreign_flags(impl, given: Iterable[str], flags: Iterable[SettingFlag], describe: str = "") -> None:
    """ConfigError for a settings option the user typed that ``impl`` has in neither of its settings, naming
    the families it is for: it would silently do nothing. describe: the model, e.g. 'FAIR width 32'."""
    by_name = {f.name: f for f in flags}
    own = set(impl.setting_names()) | set(config_fields(impl.training().default_train_config()))
    for name in given:
        if name in by_name and name not in own:
            flag = by_name[name]
            raise ConfigError(f"{flag.flag} does not apply to {describe or impl.title}'s training or model settings; "
                              f"it is a setting of {', '.join(f'--model {k}' for k in flag.families)}. "
                              f"Leave {flag.flag} out.")

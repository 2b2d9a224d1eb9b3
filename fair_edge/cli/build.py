"""``fair-edge build``: checkpoint -> bundle (ONNX, threshold, optional TensorRT engine).

A thin typer command over ``fair_edge.export.build.build_bundle``; register it with
``app.command("build")(build)``.

bundle.json keeps the command that rebuilds the bundle (``build_command``, quoted by every "Rebuild it with"
error): every option that changes the result, the checkpoint and datasets as absolute paths. SIGTERM (``kill``,
``systemctl stop``, a CI timeout) stops a build as Ctrl-C does: the temporary staging folder is removed and the
previous bundle kept, said in one line (``stopped_line``); the command then exits 143 (128 + SIGTERM), 130 after
Ctrl-C. A stop while the new bundle is swapped in waits until it is in place; one while the previous bundle's copy
is removed after it leaves the new bundle, finished, and says so (``export.build.StoppedAfterMove``).
bundle.json records the checkpoint built from (``source_checkpoint``: path and SHA-256): a bundle at --out built from
another checkpoint (the default --out is shared by every checkpoint of one model tag and precision) is not replaced
without --overwrite (``export.build.check_replacing``); a rebuild from the same checkpoint replaces it. A checkpoint
an unfinished training run saved (last.pt: step N of M) is built with a warning naming how to finish the run.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Callable, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fair_edge.calibration.int8 import METHODS, Int8Settings
from fair_edge.calibration.int8_gate import QualityGate
from fair_edge.calibration.ranges import require_int8_onnxruntime
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE, Threshold
from fair_edge.regions import DEFAULT_PIXEL_QUANTILE
from fair_edge.models.checkpoint import TrainingImages, load_checkpoint
from fair_edge.training.held_out import ROLE_FLAGS, ROLE_FOLDERS, ROLE_WORDS, images_for
from fair_edge.training.pixels import read_frames
from fair_edge.cli.common import (check_width, friendly_errors, interrupt_exit_code, print_plain, progress_bar,
                                  shell_word, sigterm_as_interrupt, stopped_by_sigterm)
from fair_edge.errors import ConfigError, DataError, did_you_mean
from fair_edge.export.build import (GATE_DONE, BuildOptions, BuildResult, SourceCheckpoint, StoppedAfterMove,
                                    build_bundle, check_inputs, check_replacing, in_place)
from fair_edge.export.bundle import Bundle
from fair_edge.runtime.backends import cpu_graph
from fair_edge.runtime.highpass_plan import plan_highpass
from fair_edge.runtime.selection import fp32_threshold, openvino_graph, uncalibrated_openvino
from fair_edge.models.registry import FAMILIES, WIDTH_FAMILY, get_family
from fair_edge.models.tensors import HIGHPASS
from fair_edge.preprocess import PreprocessConfig
from fair_edge.training.resume import resume_command
from fair_edge.training.runs import find_latest_checkpoint

console = Console()  # the summary table goes to stdout; errors go to stderr (fair_edge.cli.common)
log = logging.getLogger(__name__)

app = typer.Typer()


def _precision(fp16: bool, int8: bool) -> str:
    if fp16 and int8:
        raise ConfigError("--fp16 and --int8 exclude each other; pass one (or neither for fp32).")
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def _spec(spec: str) -> str:
    """A dataset spec as it will still work from another folder: existing paths made absolute."""
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def _command(ckpt: Path, width: Optional[int], precision: str, calib: Optional[str], calib_images: int,
             calib_method: str, normal: Optional[str], defects: Optional[str], frr: float, max_batch: int,
             out: Path, max_drop: Optional[float] = None, pixel_quantile: float = DEFAULT_PIXEL_QUANTILE,
             category: Optional[str] = None, engine: bool = True) -> str:
    """The ``fair-edge build`` command line that builds this bundle again, from any folder: every option that
    changes the result (--model is not needed: the checkpoint it chose is named)."""
    args = ["fair-edge", "build", str(ckpt.resolve())] + (["--width", str(width)] if width is not None else [])
    args += {"fp16": ["--fp16"], "int8": ["--int8"]}.get(precision, [])
    if calib is not None:
        args += ["--calib", _spec(calib), "--calib-images", str(calib_images), "--calib-method", calib_method]
    for flag, folder in (("--normal", normal), ("--defects", defects)):
        if folder is not None:
            args += [flag, _spec(folder)]
    args += ["--category", category] if category is not None else []   # the product inside a VisA CSV / MVTec root
    args += ["--false-reject-rate", str(frr), "--max-batch", str(max_batch), "--out", os.path.abspath(out)]
    args += ["--max-drop", str(max_drop)] if max_drop is not None else []
    args += ["--pixel-quantile", str(pixel_quantile)] if pixel_quantile != DEFAULT_PIXEL_QUANTILE else []
    args += [] if engine else ["--no-engine"]
    return shlex.join(args)


# a stop before the build writes anything (while the checkpoint and the images load)
EARLY_STOP = "nothing unfinished is left at --out (a bundle there is as it was). Run the command again to build it."
BUILD_STOPPED = f"build stopped by SIGTERM; {EARLY_STOP}"
BUILD_INTERRUPTED = f"build interrupted; {EARLY_STOP}"


def stopped_line(exc: KeyboardInterrupt, out: Path, command: str = "build", what: str = "bundle") -> str:
    """The one line of a ``command`` ("build", "fuse") stopped by ``exc`` (Ctrl-C, or SIGTERM: ``stopped_by_sigterm``)
    while it wrote its ``what`` ("bundle", "fused bundle") for ``out``: once the new one was in place
    (``StoppedAfterMove``), that it is complete and where the previous one's copy is left; otherwise that the
    unfinished one was removed and whether a previous one at ``out`` is kept (read from the disk now)."""
    how = "stopped by SIGTERM" if stopped_by_sigterm(exc) else "interrupted"
    if isinstance(exc, StoppedAfterMove):
        left = (f"; the previous {what}'s copy {exc.leftover} is left, and the next build or fuse into {out} removes "
                "it" if exc.leftover is not None else "")
        return f"{command} {how} once the new {what} was in place: {out} is complete and ready to use{left}."
    previous = f"the previous {what} there is kept" if out.exists() else "none was there"
    return (f"{command} {how}; no new {what} was written to {out} (its unfinished files were removed); {previous}. "
            "Run the same command again.")


def exit_stopped(exc: KeyboardInterrupt, out: Path, command: str = "build", what: str = "bundle") -> typer.Exit:
    """Print ``stopped_line`` on stderr (as an error unless the new ``what`` is in place) and return the Exit to raise:
    130 after Ctrl-C, 143 after SIGTERM."""
    line = stopped_line(exc, out, command, what)
    print_plain(line if isinstance(exc, StoppedAfterMove) else f"error: {line}")
    return typer.Exit(interrupt_exit_code(exc))


def _summary(result: BuildResult) -> None:
    b = result.bundle
    table = Table(title=escape(f"bundle {b.root}"), show_header=False)
    for rel in sorted(b.files):
        table.add_row("file", escape(rel), f"{(b.root / rel).stat().st_size / 1e6:.2f} MB")
    inputs = ", ".join(f"{s.name} {s.channels}x{s.size}x{s.size}" for s in b.model.inputs)
    highpass = HIGHPASS in b.model.input_names
    table.add_row("model", escape(b.model.describe()),
                  escape(f"inputs {inputs}" + (f"; filter {b.preprocess.filter}" if highpass else "")))
    table.add_row("precision", b.precision, f"max batch {b.max_batch}")
    for key, value in b.facts.items():
        table.add_row(key.replace("_", " "), escape(describe_fact(value)), "")
    table.add_row("fp32 parity", f"max |map diff| ONNX vs PyTorch {result.parity_max_abs:.1e}", "")
    if result.delta is not None:
        d = result.delta
        table.add_row(escape(f"{b.precision} vs fp32 ({b.onnx_path.name})"),
                      f"map max {d.map_max_abs:.2e}, score max {d.score_max_abs:.2e}",
                      f"score pearson {d.score_pearson:.4f}, spearman {d.score_spearman:.4f} (n={d.n_images})")
    for row in [*threshold_rows(b), *pixel_threshold_rows(b)]:
        table.add_row(*row)
    gpu_note = (gpu_preprocessing_note(b.preprocess) if highpass else
                ("reference (CPU resize, then upload)", "the model takes the colour image only (no high-pass)"))
    for row in quality_gate_rows(result):
        table.add_row(*row)
    table.add_row("GPU pre-processing", *gpu_note)
    table.add_row("TensorRT engine", "built" if result.engine_built else "NOT built", escape(result.engine_note))
    table.add_row("time", f"{result.seconds:.1f} s", "calibration cache reused" if result.calibration_reused else "")
    console.print(table)
    root = escape(shell_word(b.root))
    console.print(f"next: [bold]fair-edge run --bundle {root} --source IMAGES[/] (replay) or [bold]--camera 0[/]",
                  soft_wrap=True)


# the backends in the order the threshold rows name them: the precision's graph (TensorRT), the CPU engines', FP32
BACKEND_ORDER = ("tensorrt", "onnxruntime", "openvino", "torch-cuda", "torch-cpu")


def threshold_rows(bundle: Bundle) -> list[tuple[str, str, str]]:
    """Summary rows of the decision thresholds: one per graph that has one ("threshold model.int8.onnx", value,
    the backends that decide with it, then its false-reject rate on the normals and its F1-optimal threshold),
    as the INT8 gate rows name their graph. An FP32 bundle has one (every backend runs its graph); an FP16 one
    two (the PyTorch backends run the FP32 weights); an INT8 one four (ONNX Runtime and OpenVINO run its CPU
    graph, each with a threshold calibrated on its own scores), three where OpenVINO has none (its row then says
    why). One "threshold none" row when the build had no normal images."""
    if bundle.threshold is None:
        return [("threshold", "none", "no normal images given (--calib or --normal); set one in the station file")]
    rows = []
    for graph, (threshold, backends) in graph_thresholds(bundle).items():
        rows.append((escape(f"threshold {graph}"), f"{threshold.value:.6g}",
                     escape(f"used by {backend_names(bundle, backends)}; {describe_threshold(threshold)}")))
    return rows


def backend_names(bundle: Bundle, backends: list[str]) -> str:
    """``backends`` for a summary row, TensorRT marked "(no engine built)" when the bundle has none, OpenVINO with
    why it shares ONNX Runtime's INT8 threshold when it has none of its own (``selection.uncalibrated_openvino``)."""
    return ", ".join(_backend_name(bundle, b) for b in backends)


def _backend_name(bundle: Bundle, backend: str) -> str:
    if backend == "tensorrt" and bundle.engine is None:
        return "tensorrt (no engine built)"
    why = uncalibrated_openvino(bundle) if backend == "openvino" else ""
    return f"openvino (not calibrated on OpenVINO: {why}; auto leaves it out, a named one warns)" if why else backend


def pixel_threshold_rows(bundle: Bundle) -> list[tuple[str, str, str]]:
    """Summary rows of the defect regions' pixel thresholds, one per graph as ``threshold_rows`` (each graph's own,
    ``Bundle.graph_pixel_threshold``, the one its backends cut regions at). None without a pixel threshold."""
    if bundle.pixel_threshold is None or bundle.threshold is None:
        return []
    rows = []
    for graph, (threshold, backends) in graph_thresholds(bundle).items():
        p = bundle.pixel_threshold if graph == bundle.onnx_path.name else bundle.graph_pixel_threshold(threshold)
        rows.append((escape(f"pixel threshold {graph}"), f"{p.value:.6g}", escape(
            f"defect regions on {backend_names(bundle, backends)}: the {p.quantile:.4%} quantile of {p.n_pixels} "
            f"map pixels of {p.n_images} {p.source}")))
    return rows


def graph_thresholds(bundle: Bundle) -> dict[str, tuple[Threshold, list[str]]]:
    """{graph file name: (the threshold calibrated on it, the backends that decide with it)}, in ``BACKEND_ORDER``:
    the threshold each backend's scorer carries (``runtime.selection``: TensorRT the bundle's own, ONNX Runtime
    and OpenVINO their CPU graph's, ``backends.cpu_graph``, OpenVINO's calibrated on its own scores of an INT8 CPU
    graph under "GRAPH on openvino", ``selection.openvino_graph``; the PyTorch backends the FP32 weights',
    ``selection.fp32_threshold``; None there: the bundle's own). For a bundle with a threshold."""
    cpu_path, cpu_threshold, _ = cpu_graph(bundle)
    openvino_threshold = openvino_graph(bundle)[1]
    openvino_row = cpu_path.name if openvino_threshold == cpu_threshold else f"{cpu_path.name} on openvino"
    reference = bundle.reference_onnx_path.name
    by_backend = {"tensorrt": (bundle.onnx_path.name, None),
                  "onnxruntime": (cpu_path.name, cpu_threshold), "openvino": (openvino_row, openvino_threshold),
                  "torch-cuda": (reference, fp32_threshold(bundle, "torch-cuda")),
                  "torch-cpu": (reference, fp32_threshold(bundle, "torch-cpu"))}
    graphs: dict[str, tuple[Threshold, list[str]]] = {}
    for name in BACKEND_ORDER:
        graph, threshold = by_backend[name]
        graphs.setdefault(graph, (threshold or bundle.threshold, []))[1].append(name)
    return graphs


class GateTask:
    """``build_bundle``'s ``on_gate_step``: the INT8 quality gate as a task of its own on ``progress`` (a
    ``progress_bar``), made at its first step ("measuring ..."), its description the latest step, finished at its last
    (``export.build.GATE_DONE``), so its line shows the gate's own clock, not the calibration's count and time."""

    def __init__(self, progress) -> None:
        self.progress, self.task = progress, None

    def __call__(self, text: str) -> None:
        description = f"INT8 quality gate: {text}"
        if self.task is None:
            self.task = self.progress.add_task(description, total=None)
        done = {"total": 1, "completed": 1} if text.startswith(GATE_DONE) else {}
        self.progress.update(self.task, description=description, **done)


def describe_threshold(t: Threshold) -> str:
    """'false-reject 3.39% on 59 held-out normal images (target 5.00%), F1-optimal 6.7 (F1 0.950)', with a note
    when the normals are too few to resolve the target rate (0 < n x rate < 1; a target of 0 asks for no false
    reject, which any n resolves)."""
    f1 = f", F1-optimal {t.f1_threshold:.5g} (F1 {t.f1:.3f})" if t.f1_threshold is not None else ""
    few = " - too few normals to resolve the target rate" if 0 < t.n_normal * t.false_reject_rate < 1 else ""
    return (f"false-reject {t.measured_false_reject_rate:.2%} on {t.n_normal} {t.source} "
            f"(target {t.false_reject_rate:.2%}){few}{f1}")


def quality_gate_rows(result: BuildResult) -> list[tuple[str, str, str]]:
    """Summary rows of the INT8 quality gate: one per INT8 graph (metric, FP32, INT8, drop, limit, layers kept float)."""
    report = result.quality_gate
    if report is None:
        return []
    rows = []
    for g in report.graphs:
        kept = f"{len(g.kept_float)} of {g.layers} layers kept float32: {', '.join(g.kept_float)}" if g.kept_float else \
            f"all {g.layers} layers INT8"
        rows.append((f"INT8 gate {g.graph}", escape(f"{report.metric}: FP32 {g.fp32:.4f}, INT8 {g.int8:.4f}, drop {g.drop:.3g} "
                                                    f"(limit {report.limit:g} {report.unit})"),
                     escape(f"{kept}; all-INT8 drop {g.full_drop:.3g}; {report.n_normal} normal, {report.n_defect} defective")))
    return rows


def describe_fact(value) -> str:
    """'rows 2560, dim 128, mb 1.3' for a dict of figures; the value itself otherwise."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def gpu_preprocessing_note(cfg: PreprocessConfig) -> tuple[str, str]:
    """(path, detail): whether a GPU station will pre-process with the fused CUDA kernel, and why not."""
    try:
        plan = plan_highpass(cfg)
    except ConfigError as exc:
        return "reference (PyTorch)", escape(f"the fused CUDA kernel cannot take these settings: {exc}")
    if plan.filter == "sobel_xy":
        return "fused CUDA kernel", "3x3 Sobel-xy"
    return "fused CUDA kernel", f"radius {plan.radius}, {plan.rank} separable term(s)"


def held_frames(spec: Optional[str], role: str, category: Optional[str], tiling, flag: str,
                limit: Optional[int] = None, check: Optional[Callable] = None) -> Optional[list]:
    """The frames ((H, W, 3) uint8 BGR) of the first ``limit`` images of ``spec`` that play ``role``
    (``images_for``), None without ``spec``. Files that cannot be a model input (unreadable, truncated, under
    2 x 2 px or smaller than one tile of ``tiling``) are skipped with a warning naming each, and counted, as
    train and eval skip them (``read_frames``); DataError naming ``flag`` when none is left. check(paths, given,
    role), before any is read: ``held_out_check``'s refusal of the model's own training images."""
    if spec is None:
        return None
    paths = images_for(spec, role, category)[:limit]
    if check is not None:
        check(paths, f"{flag} {spec}", role)
    return [frame for _, frame in read_frames(paths, tiling, what=f"{flag} images")]


NAMED_TRAINED = 3   # training images a refusal names; the rest are counted
# why each held-out role must not hold a training image, and where its images come from instead
TRAINED_REASONS = {
    "normal": "a model scores its own training images low (a PatchCore bank holds their very patches), so a "
              "threshold calibrated on them sits below the scores of normal parts it never saw and rejects them",
    "defect": "training took them as normal, so they show no defect, and the F1-optimal threshold found with them "
              "says nothing of real defects"}
TEST_SPLIT_SOURCES = {"normal": "its normal test images, e.g. an MVTec folder's test/good; with none, train again on "
                                "a folder that leaves some normals out, and pass those",
                      "defect": "its defective test images"}


def held_out_check(ckpt, checkpoint: Path, given: Sequence[str]) -> Optional[Callable]:
    """``refuse_training_images`` for the images ``ckpt`` (loaded from ``checkpoint``) was fitted on, as
    ``held_frames``' check; None for a checkpoint that does not record them (written before it did), with one
    warning when ``given`` names held-out options ("--normal", "--defects") whose images then go unchecked."""
    if ckpt.training_images is not None:
        record = ckpt.training_images
        return lambda paths, images, role: refuse_training_images(record, paths, images, role, str(checkpoint))
    if given:
        log.warning("%s does not record which images it was trained on (an earlier fair-edge wrote it): the "
                    "images of %s are not checked against them. Make sure training did not see them, or train "
                    "again to record them.", checkpoint, " and ".join(given))
    return None


def refuse_training_images(record: TrainingImages, paths: Sequence[Path], given: str, role: str, model: str) -> None:
    """DataError when any of ``paths``, the images of ``given`` ("--normal data/plain") in ``role`` ("normal",
    "defect"), is a file ``model`` ("runs/a/final.pt") was fitted on (``record``: the same bytes, under any name),
    naming how many, the first few (with the training image's name where it differs: "mix/x.png = plain/003.png")
    and the fix. Some are refused as all are: a threshold calibrated on a mix of
    training and unseen normals still sits too low."""
    found = record.found_among(paths)
    if not found:
        return
    named = ", ".join(str(p) if str(p) == name else f"{p} = {name}" for p, name in found[:NAMED_TRAINED])
    named += f" and {len(found) - NAMED_TRAINED} more" if len(found) > NAMED_TRAINED else ""
    some = len(found) < len(paths)
    count = f"{len(found)} of the {len(paths)}" if some else f"all {len(paths)}"
    are = "is, byte for byte, an image" if len(found) == 1 else "are, byte for byte, images"
    mix = (f"; the other {len(paths) - len(found)} do not make up for it: a threshold calibrated on a mix still sits "
           "too low" if some and role == "normal" else "")
    fix = (f"Leave the training images out of {ROLE_FLAGS[role]}, or pass" if some else "Pass")
    raise DataError(f"{given}: {count} {ROLE_WORDS[role]} {are} {model} was trained on ({named}): "
                    f"{TRAINED_REASONS[role]}{mix}. {fix} {ROLE_FOLDERS[role]}, or a dataset with a test split "
                    f"({TEST_SPLIT_SOURCES[role]}).")


def latest_run(width: Optional[int], model: Optional[str]) -> Path:
    """The latest finished run's checkpoint of ``model`` (no model: the family --width names, FAIR) with its default
    settings (and ``width``, which the family must have: ConfigError otherwise): a final.pt, else (no run of it has
    finished) the newest last.pt (``training.runs.find_latest_checkpoint``)."""
    impl = get_family(model or WIDTH_FAMILY)
    tag = impl.tag(impl.settings_from_options({"width": width}, given=("width",)))
    hint = f"fair-edge train DATA --width {width}" if width is not None else f"fair-edge train DATA --model {impl.key}"
    return find_latest_checkpoint(tag, train_hint=hint)


def unfinished_run_warning(ckpt, checkpoint: Path) -> Optional[str]:
    """The warning for building ``ckpt`` (loaded from ``checkpoint``) when an unfinished training run saved it (a
    last.pt, saved every --save-every steps and on Ctrl-C or SIGTERM, whose ``train_state`` says step N of M, N < M):
    the step it stopped at and how to finish the run (resume it, then build its final.pt). None for a finished
    run's checkpoint (final.pt keeps no train_state; a last.pt saved at the last step holds the finished weights)."""
    state = ckpt.train_state
    if not isinstance(state, dict) or "step" not in state:
        return None
    step = int(state["step"])
    total = state.get("total_steps") or (ckpt.data_summary.get("train_config") or {}).get("steps")
    if total is not None and step >= int(total):
        return None
    progress = f"step {step} of {int(total)}" if total is not None else f"step {step} (of a budget it does not record)"
    resume = (f"`{resume_command(checkpoint.parent)}`" if checkpoint.name == "last.pt" else
              "`fair-edge train --resume --out RUN` in the run folder it was saved in")
    return (f"{checkpoint} is an unfinished training run's save ({progress}), not a finished run's final.pt: the "
            f"bundle holds a model that stopped at {progress}. Finish the run with {resume} (with --nproc N if it "
            "trained in N processes) and build its final.pt, or pass a finished run's final.pt.")


def model_family(model: Optional[str]) -> Optional[str]:
    """The registry key --model names (case and spaces ignored), None when not given; ConfigError naming --model,
    the families and the closest one for a name that is none, with or without CHECKPOINT."""
    if model is None:
        return None
    try:
        return get_family(model).key
    except ConfigError as exc:
        raise ConfigError(f"--model: {exc}") from None


def check_same_family(family: Optional[str], ckpt, checkpoint: Path) -> None:
    """ConfigError when --model names a family (``family``, a registry key; None: not given) other than the one
    of the checkpoint ``ckpt`` loaded from ``checkpoint``: the bundle is built from the checkpoint's model, so
    --model, like --width, must match it."""
    if family is None or family == ckpt.model.family:
        return
    raise ConfigError(f"--model {family} does not match the checkpoint {checkpoint}, a {ckpt.model.family} model "
                      f"({ckpt.model.describe()}); the bundle is built from the checkpoint's model. Leave out --model, "
                      f"or pass a {family} checkpoint.")


def _titles_with(setting: str) -> str:
    """'FAIR' (the titles of the registered families with ``setting``), for help texts."""
    return " / ".join(impl.title for impl in FAMILIES.values() if setting in impl.setting_names())


def _networks() -> str:
    """'FAIR, LGFDR or PatchCore', from the registry, for help texts."""
    titles = [impl.title for impl in FAMILIES.values()]
    return ", ".join(titles[:-1]) + " or " + titles[-1] if len(titles) > 1 else titles[0]


def _default_tags() -> str:
    """'w128 (fair), lgfdr-efficientnet_lite0 (lgfdr), ...': each family's tag at its default settings."""
    return ", ".join(f"{impl.tag(impl.default_settings())} ({key})" for key, impl in FAMILIES.items())


@app.command("build")
@friendly_errors(smaller="build with fewer --calib-images (INT8 calibration holds every image's activations) or a "
                         "smaller --max-batch")
@sigterm_as_interrupt(BUILD_STOPPED, BUILD_INTERRUPTED)
def build(
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint (.pt); default: the latest run of --width or --model."),
    width: Optional[int] = typer.Option(None, "--width", help=f"{_titles_with('width')}: UNet width 32, 64 or 128; "
                                        "must match the checkpoint."),
    model: Optional[str] = typer.Option(None, "--model", help="Without CHECKPOINT: the latest training run of this "
                                        "model family with its default settings (runs/train-{tag}*); with one, "
                                        "must match its family."),
    fp16: bool = typer.Option(False, "--fp16", help=f"The model's network in float16 ({_networks()}); "
                              "pre-processing and scoring stay float32."),
    int8: bool = typer.Option(False, "--int8", help=f"The convolutions of the model's INT8 scope in int8 (Q/DQ) "
                              f"({_networks()}; docs/<family>.md says which), calibrated on --calib images."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Normal images for INT8 calibration: a folder, or any "
                                        "dataset `train` accepts (MVTec folder, VisA CSV, elpv:mono): its training images."),
    calib_images: int = typer.Option(64, "--calib-images", help="Number of calibration images (first N, sorted)."),
    calib_method: str = typer.Option("percentile", "--calib-method", help="entropy, percentile or max."),
    normal: Optional[str] = typer.Option(None, "--normal", help="Held-out normal images for the decision threshold: a "
                                         "folder, or a dataset with a test split (its normal test images)."),
    defects: Optional[str] = typer.Option(None, "--defects", help="Defect images (a folder, or a dataset: its "
                                          "defective test images): also report the F1-optimal threshold."),
    category: Optional[str] = typer.Option(None, "--category", help="Product inside a VisA CSV or an MVTec root "
                                           "given to --calib / --normal / --defects."),
    false_reject_rate: float = typer.Option(DEFAULT_FALSE_REJECT_RATE, "--false-reject-rate",
                                            help="Target share of normal images rejected, for the decision threshold."),
    max_batch: int = typer.Option(8, "--max-batch", help="Largest batch the engine/runtime accepts."),
    out: Optional[Path] = typer.Option(None, "--out", help=f"Bundle directory [default: runs/bundle-TAG-PRECISION, "
                                       f"TAG naming the model: {_default_tags()}]. A bundle there built from another "
                                       "checkpoint is refused unless --overwrite; one built from this checkpoint is "
                                       "replaced."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a bundle at --out that was built from another "
                                   "checkpoint."),
    engine: bool = typer.Option(True, "--engine/--no-engine", help="Build a TensorRT engine where TensorRT is installed."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="INT8 quality gate: the most the INT8 graphs may "
                                             "lose against FP32 on held-out images: image AUROC points with --normal and "
                                             "--defects, else FP32 normal-score spreads (mean |INT8 - FP32| / std) with "
                                             "--normal. Over it, the most sensitive layers stay float32 (up to half of "
                                             "them) or the build is refused. Figures go in bundle.json."),
    pixel_quantile: float = typer.Option(DEFAULT_PIXEL_QUANTILE, "--pixel-quantile", help="Defect regions: the pixel "
                                         "threshold is this quantile of all normal map pixels (same normal images as "
                                         "the threshold); in bundle.json as pixel_threshold."),
) -> None:
    """Export a trained checkpoint to a self-describing bundle (and a TensorRT engine where possible)."""
    if width is not None:
        check_width(width)
    family = model_family(model)
    precision = _precision(fp16, int8)
    if precision == "int8" and calib is None:
        raise ConfigError("--int8 needs normal images for calibration; pass --calib with a folder of normal images "
                          "or a dataset (e.g. data/bracket or elpv:mono, whose training images are used).")
    if calib_method not in METHODS:
        raise ConfigError(f"--calib-method must be one of {', '.join(METHODS)}; found {calib_method!r}."
                          + did_you_mean(calib_method, METHODS, sentence=True))
    if precision == "int8":
        require_int8_onnxruntime()   # before the checkpoint loads and the FP32 graph exports: not after
    if checkpoint is None:
        if width is None and model is None:
            raise ConfigError("pass a CHECKPOINT, or --width {32,64,128} / --model FAMILY to use the latest training "
                              "run of that model.")
        checkpoint = latest_run(width, model)
    ckpt = load_checkpoint(checkpoint)
    check_same_family(family, ckpt, checkpoint)
    unfinished = unfinished_run_warning(ckpt, checkpoint)
    if unfinished:
        log.warning("%s", unfinished)
    conflicts = ckpt.model.impl.settings_conflicts(ckpt.settings, {"width": width})
    if conflicts:
        raise ConfigError(f"{'; '.join(conflicts)} does not match the checkpoint {checkpoint} "
                          f"({ckpt.model.describe()}). Leave out --width, or pass another checkpoint.")
    default_out = out is None
    out = out or Path("runs") / f"bundle-{ckpt.model.tag}-{precision}"
    source = SourceCheckpoint.of(checkpoint)
    replaced = check_replacing(out, source, overwrite, default_out)
    settings = Int8Settings(method=calib_method, num_images=calib_images)
    options = BuildOptions(precision, max_batch, settings, false_reject_rate, engine,
                           _command(checkpoint, width, precision, calib, calib_images, calib_method,
                                    normal, defects, false_reject_rate, max_batch, out, max_drop, pixel_quantile,
                                    category, engine),
                           QualityGate(max_drop) if max_drop is not None else None, pixel_quantile,
                           f"--normal {normal}" if normal else "", source, f"--calib {calib}" if calib else "",
                           f"--defects {defects}" if defects else "")
    check_inputs(out, options, has_calib=calib is not None, has_normal=normal is not None)
    tiling = ckpt.preprocess.tiling
    calib_frames = held_frames(calib, "train", category, tiling, "--calib", calib_images)
    check = held_out_check(ckpt, checkpoint, [f for f, spec in (("--normal", normal), ("--defects", defects)) if spec])
    normal_frames = held_frames(normal, "normal", category, tiling, "--normal", check=check)
    defect_frames = held_frames(defects, "defect", category, tiling, "--defects", check=check)

    def say_building() -> None:   # once build_bundle has checked the inputs (the held-out frames' map sizes)
        if replaced:
            console.print(escape(f"--overwrite: replacing {out}, built from {replaced}"), highlight=False)
        console.print(escape(f"building {precision} bundle from {checkpoint} ({ckpt.model.describe()}) -> {out}"))

    try:
        with progress_bar() as progress:
            task = progress.add_task(f"build, INT8 calibration ({calib_method})" if precision == "int8" else "build",
                                     total=len(calib_frames or ()) or None)
            result = build_bundle(ckpt, out, options, calib_frames, normal_frames,
                                  defect_frames, on_calibration_image=lambda: progress.advance(task),
                                  on_gate_step=GateTask(progress), on_checked=say_building)
        with in_place(out):   # a stop while the summary prints finds the bundle complete
            _summary(result)
    except KeyboardInterrupt as exc:   # Ctrl-C, or SIGTERM (Terminated): the staging folder is gone
        raise exit_stopped(exc, out) from None

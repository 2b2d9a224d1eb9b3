"""The ``fair-edge`` command line: eval, demo, run, bench (train lives in cli_train, build in cli_build).

Commands are thin: they parse options, call library code, and show progress and results.
Every error of ours is printed as one red line naming the problem and the fix, exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from fair_edge.cli_common import VerboseAnywhere, check_width, console, friendly_errors, progress_bar
from fair_edge.cli_train import run_training, train
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE
from fair_edge.demo_config import DEMO_DATA, DEMO_FALSE_REJECT_RATE, DEMO_MODEL, DEMO_STEPS, demo_model, demo_train_config
from fair_edge.errors import ConfigError
from fair_edge.models.registry import DEFAULT_FAMILY, FAMILIES
from fair_edge.station_doc import station_reference

app = typer.Typer(
    cls=VerboseAnywhere,
    help="fair-edge: train FAIR anomaly detectors from normal images, build them for NVIDIA GPUs, "
    "and run an inspection station.\n\nStart with `fair-edge demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: "[default: ...]" must not be read as rich markup and vanish
)


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging (also accepted "
                                              "after the command, e.g. `fair-edge train DATA -v`).")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )


# ----------------------------------------------------------------------------- train
app.command()(train)



# ----------------------------------------------------------------------------- eval
def print_metrics(result: dict, out: Path) -> None:
    table = Table(title=f"evaluation ({out})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    catch = [k for k in result if k.startswith("catch_at_")]
    for key in ("images", "normal", "defective", "image_auroc", *catch, "f1_max", "f1_threshold", "pixel_auroc",
                "aupro", "suggested_threshold"):
        if key in result:
            value = result[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    for key in ("note", "pixel_metrics"):
        if key in result:
            console.print(f"[yellow]{result[key]}[/]")


def run_eval(checkpoint: Path, data: str, out: Path, *, device: str, batch: int, false_reject_rate: float,
             category: Optional[str] = None) -> dict:
    from fair_edge.data import load_dataset
    from fair_edge.evaluate import evaluate
    from fair_edge.train import resolve_device

    split = load_dataset(data, category)
    with progress_bar() as bar:
        task = bar.add_task("eval", total=len(split.test))
        result = evaluate(checkpoint, split, out, device=str(resolve_device(device)), batch=batch,
                          false_reject_rate=false_reject_rate, progress=lambda n: bar.advance(task, n))
    print_metrics(result, out)
    return result


@app.command("eval")
@friendly_errors
def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `fair-edge train` (e.g. runs/train-w32/final.pt)."),
    data: str = typer.Argument(..., help="Dataset with a test split: MVTec category folder, VisA CSV, or 'elpv'."),
    out: Optional[Path] = typer.Option(None, help="Report folder [default: next to the checkpoint, eval/]."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch: int = typer.Option(16, help="Images per forward pass."),
    false_reject_rate: float = typer.Option(DEFAULT_FALSE_REJECT_RATE, "--false-reject-rate",
                                            help="Target share of normal images rejected, for the suggested threshold "
                                            "(the same setting and default as `build --false-reject-rate`)."),
    frr: Optional[float] = typer.Option(None, "--frr", hidden=True, help="Deprecated: --false-reject-rate."),
    category: Optional[str] = typer.Option(None, help="Product inside a VisA CSV or an MVTec root."),
) -> None:
    """Evaluate a checkpoint: metrics.json, scores.csv, ROC/PRO plots, worst-case heatmaps, threshold."""
    if frr is not None:
        console.print("[yellow]--frr is deprecated; use --false-reject-rate.[/]")
        false_reject_rate = frr
    out = out or checkpoint.parent / "eval"
    run_eval(checkpoint, data, out, device=device, batch=batch, false_reject_rate=false_reject_rate, category=category)
    console.print(f"[green]report:[/] {out}")


# ----------------------------------------------------------------------------- demo
def demo_pulse_text(row: dict) -> str:
    if row["pulse_error_ms"] is not None:
        how = "on time" if row["in_time"] and row["ng"] else "fail-safe, uninspected"
        return f"{how} ({row['pulse_error_ms']:+.1f} ms)"
    return "-" if row["in_time"] and not row["ng"] else "[red]none[/]"


def print_demo(report: dict) -> None:
    out = Console()
    table = Table(title="conveyor: defective cells")
    for col in ("seq", "cell", "score", "verdict", "reject pulse"):
        table.add_column(col, justify="right" if col in ("seq", "score") else "left")
    for row in report["parts"]:
        if not row["defective"]:
            continue
        verdict = ("[green]caught[/]" if row["ng"] else "[red]missed[/]") if row["in_time"] else (
            "[red]missed (verdict late)[/]" if row["inspected"] else "[red]missed (not inspected: dropped)[/]")
        table.add_row(str(row["seq"]), row["source"].split("_", 2)[-1], f"{row['score']:.4f}", verdict,
                      demo_pulse_text(row))
    out.print(table)
    s, lat, line = report["summary"], report["summary"]["latency"], report["line"]
    out.print(
        f"conveyor {line['fps']:g} cells/s, gate {line['gate_delay_ms']:g} ms | frames in {s['frames_in']}, "
        f"inspected {s['inspected']}, dropped {s['dropped']}, lost {s['lost']} | defective {report['defective']}: "
        f"caught {report['caught']}, missed {report['missed']} (not inspected in time "
        f"{report['missed_not_inspected']}, of which rejected by the fail-safe "
        f"{report['missed_but_rejected_uninspected']}) | false rejects {report['false_rejects']} | pulses on time "
        f"{report['pulses_on_time']}/{report['pulses_due']} | latency p50 {lat['p50_ms']:.1f} ms, "
        f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms | {s['backend'].split(' (')[0]}"
    )
    pulses, rejects = report["pulse_error_ms"], report.get("reject_stats") or {}
    if pulses["n"]:
        out.print(f"reject pulses vs due time: median {pulses['p50']:+.2f} ms, p99 {pulses['p99']:+.2f} ms, "
                  f"range {pulses['min']:+.2f} .. {pulses['max']:+.2f} ms; late verdicts "
                  f"{rejects.get('late_verdicts', 0)}, rejected uninspected {rejects.get('rejected_uninspected', 0)}")


def can_continue(out: Path, cfg, model) -> bool:
    """True when ``out/last.pt`` is an interrupted run of exactly this model and these training settings."""
    from fair_edge.errors import CheckpointError
    from fair_edge.train_resume import read_saved_run

    if not (out / "last.pt").is_file():
        return False
    try:
        saved = read_saved_run(out)
    except CheckpointError as exc:
        console.print(f"[yellow]not continuing {out / 'last.pt'}: {escape(str(exc))}[/] Training from the start.")
        return False
    same = saved.train == cfg and saved.model == model
    if not same:
        console.print(f"[yellow]{out / 'last.pt'} was trained with other settings (e.g. --steps or --model); training "
                      "from the start.[/]")
    return same


def reusable_demo_model(final: Path, model) -> bool:
    """True when ``final`` holds a model of ``model``'s family; ConfigError (nothing overwritten) when it
    holds the other family's."""
    from fair_edge.checkpoint import load_checkpoint
    from fair_edge.errors import ConfigError

    found = load_checkpoint(final).model
    if found.family != model.family:
        raise ConfigError(f"{final} holds a {found.describe()} model from an earlier demo; this run asks for "
                          f"--model {model.family}. Pass --model {found.family} to reuse it, --retrain to replace it, "
                          f"or --out NEW_FOLDER to keep both.")
    return True


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Demo folder (model, report, bundle, station output)."),
    model: str = typer.Option(DEMO_MODEL, "--model", help="Detector family: lgfdr (what `fair-edge tune` chooses "
                              "from ELPV's normal cells; about twice FAIR's catch at 0.5 % false rejects for the same "
                              "training time, BENCHMARKS.md) or fair (the FAIR UNet, width 32)."),
    steps: Optional[int] = typer.Option(None, help="Training steps when no demo model exists yet [default: LGFDR 100 "
                                        f"epochs over the normal cells; FAIR {DEMO_STEPS}]."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if OUT/final.pt exists."),
    fps: float = typer.Option(10.0, help="Conveyor rate, cells per second."),
    device: str = typer.Option("auto", help="Training/eval device: auto, cpu, cuda or cuda:N."),
    backend: str = typer.Option("auto", help="Station backend: auto, tensorrt, torch-cuda, torch-cpu, onnxruntime, openvino."),
    false_reject_rate: float = typer.Option(DEMO_FALSE_REJECT_RATE, "--false-reject-rate",
                                            help="Threshold target: share of normal cells rejected. The demo asks for "
                                            "5 % where build and eval default to 0.5 %: its threshold comes from 59 "
                                            "normal cells, too few to resolve 0.5 %."),
) -> None:
    """The built-in demo, no hardware needed: train a small detector (LGFDR by default, or FAIR) on ELPV
    mono solar cells (normal cells only), evaluate it, build its bundle, and replay a conveyor of normal
    and defective cells through the station with a simulated PLC (Modbus TCP on 127.0.0.1) firing the
    reject gate."""
    from fair_edge.demo import run_demo
    from fair_edge.train import TrainingInterrupted

    spec = demo_model(model)

    def train_or_reuse() -> Path:
        final = out / "final.pt"
        if final.is_file() and not retrain and reusable_demo_model(final, spec):
            console.print(f"reusing demo model {final} (--retrain to train again)")
            return final
        cfg = demo_train_config(steps, spec.family)
        resume = not retrain and can_continue(out, cfg, spec)
        if resume:
            console.print(f"continuing the interrupted demo training in {out / 'last.pt'} (--retrain to start over)")
        return run_training(DEMO_DATA, preprocess=spec.preprocess, cfg=cfg, out=out, device=device, resume=resume,
                            model=spec)[0]

    try:
        report = run_demo(out, train=train_or_reuse, fps=fps, backend=backend,
                          false_reject_rate=false_reject_rate,
                          say=console.print,
                          evaluate=lambda final: run_eval(final, DEMO_DATA, out / "report", device=device, batch=32,
                                                          false_reject_rate=false_reject_rate))
    except TrainingInterrupted as exc:
        console.print(f"[yellow]{escape(str(exc))}[/] Run the same `fair-edge demo` command again to continue.",
                      highlight=False)
        raise typer.Exit(130) from None
    print_demo(report)
    console.print(f"[green]demo report:[/] {out / 'demo_report.json'}; verdicts: {out / 'station' / 'verdicts.jsonl'}")


# ----------------------------------------------------------------------------- run
def reject_rows(rejects: dict) -> list[tuple[str, object]]:
    """Rows for the reject gate in the live table and the summary (empty without sinks)."""
    if not rejects:
        return []
    from fair_edge.run_station import undelivered_sinks

    sinks = rejects.get("sinks") or {}
    delivered = sum(st.get("delivered", 0) for st in sinks.values())
    missed = sum(st.get("missed", 0) + st.get("dropped", 0) for st in sinks.values())
    rows: list[tuple[str, object]] = [
        ("rejects: NG / uninspected", f"{rejects.get('rejected_ng', 0)} / {rejects.get('rejected_uninspected', 0)}"),
        ("passed uninspected / late verdicts", f"{rejects.get('passed_uninspected', 0)} / "
                                              f"{rejects.get('late_verdicts', 0)}"),
        ("pulses delivered / missed", f"{delivered} / {missed}")]
    if rejects.get("fault_output"):
        rows.append(("fault output", f"[bold red]ON: {rejects['fault_output']}[/]"))
    dead = undelivered_sinks(rejects)
    if dead:
        rows.append(("[bold red]sinks that delivered nothing[/]", ", ".join(dead)))
    return rows


def live_table(inspector) -> Table:
    s, lat = inspector.summary, inspector.latency.percentiles(window=2000)
    camera = inspector.capture.stats()
    table = Table(title=f"fair-edge station (run {s.run_id})", show_header=False)
    for name, value in (("camera", camera.state.value), ("frames in", camera.frames_in),
                        ("dropped (queue full) / lost", f"{camera.dropped_queue_full} / {camera.frames_lost_estimate}"),
                        ("inspected", s.inspected), ("NG", s.ng), ("malformed", s.malformed),
                        ("inference errors", s.inference_errors), ("p50 / p99 / max latency",
                        f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.1f} ms"),
                        *reject_rows(s.rejects)):
        table.add_row(name, str(value))
    return table


def reject_overrides(settings, sinks: Optional[list[str]], delay_ms: Optional[float], fail_safe: Optional[str]):
    """The station file's reject section with the command line's --reject / --reject-delay-ms /
    --fail-safe applied, validated like the file (``RejectSettings.from_dict``)."""
    from dataclasses import asdict

    from fair_edge.line.settings import RejectSettings

    changes = {k: v for k, v in (("sinks", list(sinks or []) or None), ("delay_ms", delay_ms),
                                 ("fail_safe", fail_safe)) if v is not None}
    if not changes:
        return settings
    data = dict(asdict(settings), **changes)
    if data["encoder_distance"] is not None and "delay_ms" in changes:
        raise ConfigError("--reject-delay-ms: the station file times rejects by reject.encoder_distance; "
                          "remove one of them")
    if data["encoder_distance"] is not None:
        data.pop("delay_ms")
    return RejectSettings.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()})


def print_summary(summary, out: Path) -> None:
    lat = summary.latency
    table = Table(title=f"run summary ({out}, run {summary.run_id})")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [("backend", summary.backend), ("frames in", summary.frames_in), ("inspected", summary.inspected),
            ("dropped (queue full)", summary.dropped), ("lost (camera)", summary.lost),
            ("not inspected (queued at stop)", summary.not_inspected),
            ("NG", summary.ng), ("malformed", summary.malformed), ("inference errors", summary.inference_errors),
            ("frames/s", f"{summary.fps:.1f}"),
            ("latency p50 / p99 / max", f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} / {lat['max_ms']:.2f} ms"),
            *reject_rows(summary.rejects)]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    if summary.fault:
        console.print(f"[bold red]station fault:[/] {summary.fault}")


@app.command(epilog="Exit codes: 0 stopped normally (Ctrl-C, SIGTERM, --max-frames, --duration, end of a replay); "
             "2 the station could not start (bad flag or station file, missing bundle, a camera that cannot be "
             "opened, reject.require_sinks_at_start with a sink unreachable); 3 the station faulted while running "
             "(the backend kept failing, or the camera is gone for good); 4 rejects were due but a reject sink "
             "delivered none of them (PLC unreachable, wrong address).\n\nThe station file (--station), every field at its default:\n\n\b\n" + station_reference())
@friendly_errors
def run(
    station: Optional[Path] = typer.Option(None, help="Station YAML (camera, bundle, backend, batching, decision, "
                                           "output, reject, record, metrics, mqtt). Flags override it."),
    camera: Optional[str] = typer.Option(None, help="Camera: index (0), /dev/videoN, RTSP URL, video file, "
                                         "gst:PIPELINE, csi:0, genicam:SERIAL, aravis:DEVICE_ID."),
    source: Optional[Path] = typer.Option(None, help="Replay an image folder or video file instead of a camera."),
    bundle: Optional[Path] = typer.Option(None, help="Model bundle from `fair-edge build`."),
    backend: Optional[str] = typer.Option(None, help="auto (default), tensorrt, torch-cuda, torch-cpu, onnxruntime, openvino."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold (score > threshold = NG); "
                                              "default: the bundle's calibrated one."),
    roi: Optional[Path] = typer.Option(None, help="Region-of-interest mask image (white = inspected)."),
    max_batch: Optional[int] = typer.Option(None, help="Frames per inference (default 1)."),
    max_wait_ms: Optional[float] = typer.Option(None, help="How long a partial batch waits for frames (default 2)."),
    fps: Optional[float] = typer.Option(None, help="Replay --source at this rate, as a camera would (frames "
                                        "inspection cannot keep up with are dropped); default: every frame, "
                                        "as fast as inspection takes them."),
    loop: bool = typer.Option(False, "--loop", help="Replay --source forever."),
    out: Optional[Path] = typer.Option(None, help="Output folder: verdicts.jsonl, NG images, summary.json."),
    max_frames: Optional[int] = typer.Option(None, help="Stop after this many inspected frames."),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    reject: Optional[list[str]] = typer.Option(None, "--reject", help="Reject sink URL, repeatable, e.g. "
                                               "modbus://10.0.0.5:502?unit=1&coil=0, opcua://HOST:4840/?node=ns=2;s=Reject, "
                                               "gpio://gpiochip0/17, log:// (replaces the station file's reject.sinks)."),
    reject_delay_ms: Optional[float] = typer.Option(None, help="Camera -> reject gate travel time, ms "
                                                    "(reject.delay_ms)."),
    fail_safe: Optional[str] = typer.Option(None, help="A part with no verdict by its due time: reject (reject "
                                            "it then) or alarm (let it pass, raise the fault output)."),
    console_mode: Optional[str] = typer.Option(None, "--console", help="on | off: serve the operator console "
                                               "(live view, NG review, threshold tuning) [default: on, "
                                               "http://127.0.0.1:8765/; station file section console:]."),
    console_port: Optional[int] = typer.Option(None, help="Console TCP port (0 = any free port)."),
) -> None:
    """Inspect frames from a camera (or a replayed folder/video) and write a verdict per frame.

    A folder or video replayed without --fps is read with back-pressure: every frame is inspected.
    Ctrl-C or SIGTERM stops capture, finishes the frames in flight, prints the summary and exits 0.
    SIGHUP loads the bundle the station file names (or reloads the current one) without stopping
    capture."""
    import signal
    import threading

    from rich.live import Live

    from fair_edge.run_station import EXIT_REJECTS_UNDELIVERED, exit_code, run_station, undelivered_sinks
    from fair_edge.station import StationConfig, load_station

    cfg = load_station(station) if station else StationConfig()
    if camera is not None and source is not None:
        raise ConfigError("give either --camera or --source, not both.")
    cam = cfg.camera
    if camera is not None or source is not None:
        cam = replace(cam, source=str(camera if camera is not None else source))
    cam = replace(cam, fps=fps if fps is not None else cam.fps, loop=loop or cam.loop)
    batching = replace(cfg.batching, **{k: v for k, v in (("max_batch", max_batch), ("max_wait_ms", max_wait_ms))
                                        if v is not None})
    record = replace(cfg.record, dir=out) if out is not None else cfg.record
    cfg = cfg.override(camera=cam, bundle=bundle, backend=backend, threshold=threshold, roi=roi,
                       batching=batching, output=out, record=record,
                       reject=reject_overrides(cfg.reject, reject, reject_delay_ms, fail_safe),
                       console=console_settings(cfg.console, console_mode, console_port))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    on_console = (lambda c: signal.signal(signal.SIGHUP, lambda *_: c.reload_bundle("SIGHUP"))) \
        if hasattr(signal, "SIGHUP") else None
    live = Live(console=console, refresh_per_second=2, transient=True) if console.is_terminal else None
    with live or contextlib.nullcontext():
        summary = run_station(cfg, stop, max_frames=max_frames, duration_s=duration,
                              on_start=lambda text: console.print(text),
                              on_tick=(lambda insp: live.update(live_table(insp))) if live else None,
                              on_console=on_console)
    print_summary(summary, cfg.output)
    console.print(f"verdicts: {cfg.record.dir / 'verdicts.jsonl'}")
    code = exit_code(summary)
    if code == EXIT_REJECTS_UNDELIVERED:
        console.print(f"[bold red]rejects were due but {', '.join(undelivered_sinks(summary.rejects))} "
                      f"delivered none[/] (exit code {code}): check the PLC link and the sink URL.")
    if code:
        raise typer.Exit(code)


def console_settings(current, mode: Optional[str], port: Optional[int]):
    """The station file's console settings with --console on|off and --console-port applied."""
    if mode is not None and mode not in ("on", "off"):
        raise ConfigError(f"--console: expected on or off, found {mode!r}.")
    changes = {k: v for k, v in (("enabled", None if mode is None else mode == "on"), ("port", port)) if v is not None}
    out = replace(current, **changes)
    out.check()
    return out


# ----------------------------------------------------------------------------- bench
def print_bench(report) -> None:
    env = report.environment
    if report.stages:
        from fair_edge.bench_stages import stage_table

        wide = Console(width=160)
        wide.print(f"per-stage ms per frame, CPU path: {env['cpu']} ({report.settings['frames']} frames)")
        return stage_table(report.stages, lambda line: wide.print(line, highlight=False))
    table = Table(title=f"fair-edge bench: {env['gpu'] or env['cpu']} ({report.settings['frames']} frames, "
                        f"feed {report.settings['feed']})")
    for name in ("role", "backend", "pre", "mode", "batch", "frames/s", "vs base", "p50/p99/max ms", "drops", "mean b"):
        table.add_column(name, justify="left" if name in ("role", "backend", "pre", "mode") else "right")
    for r in report.rows:
        ratio = "" if r.vs_baseline is None else f"{r.vs_baseline:.2f}"
        table.add_row(r.role, r.backend, r.preprocess, r.mode, str(r.batch), f"{r.fps:.1f}", ratio,
                      f"{r.p50_ms:.1f}/{r.p99_ms:.1f}/{r.max_ms:.1f}", str(r.dropped), f"{r.mean_batch:.1f}")
    out = Console()
    (out if out.is_terminal else Console(width=160)).print(table)  # a piped log keeps whole rows
    console.print(f"backend: {report.rows[0].detail}" if report.rows else "no rows timed")
    for key, value in report.bundle.get("facts", {}).items():
        console.print(f"{key.replace('_', ' ')}: {describe_fact(value)}")
    for key, best in report.best.items():
        console.print(f"best batch {key}: {best['batch']} ({best['fps']:.1f} frames/s)")
    for batch, seconds in report.compile_seconds.items():
        console.print(f"torch.compile batch {batch}: {seconds:.1f} s (first call; cached for later runs)")


@app.command()
@friendly_errors
def bench(
    bundle: Optional[Path] = typer.Argument(None, help="Model bundle from `fair-edge build` (or use --synthetic-model)."),
    backend: str = typer.Option("auto", help="auto, tensorrt, torch-cuda, torch-cpu, onnxruntime, openvino."),
    baseline: str = typer.Option("torch-eager-cpu-pre", help="Also time PyTorch eager + CPU pre-processing on the "
                                 "backend's device (torch-eager-cpu-pre), or not (none)."),
    batches: str = typer.Option("1,4,8,16", help="Batch sizes (LoopSettings.max_batch), comma-separated."),
    frames: str = typer.Option("1920x1080", help="Synthetic frame size WIDTHxHEIGHT, uint8 BGR, held in memory."),
    seconds: float = typer.Option(10.0, help="Timed seconds per backend, batch and mode."),
    warmup: float = typer.Option(1.0, help="Untimed seconds before each timing (after CUDA graph capture)."),
    mode: str = typer.Option("loop", help="loop (camera thread -> Inspector), compute (pre-process + infer "
                             "on ready batches), both, or stages (CPU path: ms per frame of copy, resize, "
                             "high-pass (fft and separable), inference, scoring, decision)."),
    feed: str = typer.Option("closed", help="loop feeding: closed (<= queue frames in flight, no drops), "
                             "free (fps=0, drop_oldest), or a line rate in frames/s."),
    queue: int = typer.Option(0, help="Capture queue size (closed: frames in flight); 0 = 2 x batch."),
    max_wait_ms: float = typer.Option(2.0, help="How long a partial batch waits for frames."),
    threads: int = typer.Option(0, help="torch.set_num_threads; 0 = PyTorch's default."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile (inductor) the torch-cpu / torch-cuda "
                                 "backend; compile time per batch size is reported, cached on disk for later runs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
    synthetic_model: Optional[str] = typer.Option(None, help="No bundle: build one with random weights of this model "
                                                  f"family ({', '.join(FAMILIES)}) in a temporary folder."),
    synthetic_width: Optional[int] = typer.Option(None, help="FAIR UNet width (32, 64, 128) of the synthetic bundle; "
                                                  "implies --synthetic-model fair."),
    image_size: int = typer.Option(256, help="Model input size of the synthetic bundle."),
    precision: str = typer.Option("fp32", help="Precision of the synthetic bundle: fp32, fp16, int8."),
) -> None:
    """Sustained frames/s and capture -> verdict latency per batch size, against a PyTorch eager baseline.

    Speed does not depend on the weights: `fair-edge bench --synthetic-width 64` or
    `--synthetic-model lgfdr` needs no trained model."""
    import shlex
    import sys

    from fair_edge.bench import run_bench, run_synthetic_bench, synthetic_model as make_synthetic_model
    from fair_edge.bench_settings import BenchSettings, parse_batches, parse_feed, parse_frames
    from fair_edge.export.bundle import load_bundle

    settings = BenchSettings(backend=backend, baseline=baseline, batches=parse_batches(batches),
                             frame_hw=parse_frames(frames), seconds=seconds, mode=mode, feed=parse_feed(feed),
                             max_wait_ms=max_wait_ms, queue_size=queue, warmup_s=warmup, torch_threads=threads,
                             compile=compile)
    synthetic = synthetic_model is not None or synthetic_width is not None
    if (bundle is None) != synthetic:
        raise ConfigError("give either a BUNDLE or --synthetic-model / --synthetic-width (random weights), not both or neither.")
    if synthetic_width is not None:
        check_width(synthetic_width, flag="--synthetic-width")
    command = shlex.join(sys.argv)
    show = lambda row: console.print(f"{row.role} {row.mode} batch {row.batch}: {row.fps:.1f} frames/s")  # noqa: E731
    if bundle is not None:
        report = run_bench(load_bundle(bundle), settings, command, on_row=show)
    else:
        model = make_synthetic_model(synthetic_model or DEFAULT_FAMILY, synthetic_width, image_size)
        report = run_synthetic_bench(model, precision, settings, command, on_row=show)
    print_bench(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"[green]results:[/] {json_out}")


from fair_edge.cli_build import build, describe_fact  # noqa: E402  (the build command lives in its own module)

app.command("build")(build)
from fair_edge.cli_collect import collect  # noqa: E402

app.command("collect")(collect)

from fair_edge.cli_tune import tune  # noqa: E402  (the tune command lives in its own module)

app.command("tune")(tune)

from fair_edge.cli_fuse import fuse  # noqa: E402  (the fuse command lives in its own module)

app.command("fuse")(fuse)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""``fair-edge run``: the inspection station from a station file and flags, with a live table and a summary."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fair_edge.cli.camera_flags import FLIP_HELP, camera_over_file
from fair_edge.cli.common import console, friendly_errors, print_plain, replay_spec
from fair_edge.errors import ConfigError
from fair_edge.runtime.selection import BACKENDS
from fair_edge.station.doc import station_reference

app = typer.Typer()


def reject_rows(rejects: dict) -> list[tuple[str, object]]:
    """Rows for the reject gate in the live table and the summary (empty without sinks); ``rejects``:
    ``RunSummary.rejects``; a gate with no reject output (no ``sinks``: ``reject.fault_sinks`` only) shows the NG
    parts it passed instead of rejects and pulses, and one that decides no part (``decides_parts`` False: a fault
    lamp on a handshake station) no part rows at all, only its fault output. Pulses delivered / missed / unconfirmed
    add up to the pulses handed to the sinks (delivered: every pulse written, a late write too; missed: with the
    dropped ones). In red: the pulses row once a pulse was missed or unconfirmed, rows shown only when above 0:
    parts refused a pulse (``gap_missed``: too close to the previous one), ``position_lost``. A lane station's top level holds the totals over its lanes
    (``station.cell_line.CellLine.reject_stats``), then a row per lane (``lane_rows``); its fault output row names
    each lane whose fault is on."""
    if not rejects:
        return []
    from fair_edge.station.run import undelivered_sinks

    hs = rejects.get("handshake")
    rows: list[tuple[str, object]] = [] if hs is None else handshake_rows(hs)
    if hs is not None and "fanout" in hs:   # several cameras: triggers a camera never took (it was not reading)
        rows.append(("handshake: camera triggers expired / overflow",
                     f"{hs['fanout']['expired']} / {hs['fanout']['overflow']}"))
    if "sinks" not in rejects:
        return rows
    sinks = rejects.get("sinks") or {}
    delivered = sum(st.get("delivered", 0) for st in sinks.values())
    missed = sum(st.get("missed", 0) + st.get("dropped", 0) for st in sinks.values())
    unconfirmed = sum(st.get("unconfirmed", 0) for st in sinks.values())   # written, no reply: may have landed
    pulses = f"{delivered} / {missed} / {unconfirmed}"
    decided = [
        ("rejects: NG / uninspected", f"{rejects.get('rejected_ng', 0)} / {rejects.get('rejected_uninspected', 0)}"),
        ("passed uninspected / late verdicts", f"{rejects.get('passed_uninspected', 0)} / "
                                              f"{rejects.get('late_verdicts', 0)}"),
        ("pulses delivered / missed / unconfirmed", f"[bold red]{pulses}[/]" if missed or unconfirmed else pulses)]
    if not sinks:   # no reject output (reject.fault_sinks only): nothing rejected, nothing pulsed
        decided = [("NG parts passed: no reject output (passed_ng)", rejects.get("passed_ng", 0)), decided[1]]
    if rejects.get("decides_parts") is False:   # the PLC rejects from the handshake's results, counted above
        decided = []
    rows += [*decided, *lane_rows(rejects.get("lanes") or {})]
    if rejects.get("gap_missed"):   # min_gap_ms would have pushed the pulse past due + late_ms: onto the next part
        rows.append(("[bold red]not rejected: too close to the previous pulse (gap_missed)[/]", rejects["gap_missed"]))
    if rejects.get("position_lost"):   # encoder mode: the gate could not know where these parts were
        rows.append(("[bold red]position lost (no pulse, alarmed)[/]", rejects["position_lost"]))
    if rejects.get("fault_output"):
        rows.append(("fault output", f"[bold red]ON: {rejects['fault_output']}[/]"))
    dead = undelivered_sinks(rejects)
    if dead:
        rows.append(("[bold red]sinks that delivered nothing[/]", escape(", ".join(dead))))
    return rows


def lane_rows(lanes: dict) -> list[tuple[str, object]]:
    """A row per lane of a lane station (``RunSummary.rejects["lanes"]``: camera -> its gate's counters): the parts
    it rejected NG / uninspected and passed uninspected, the three numbers whose totals the rows above show."""
    return [(escape(f"lane {name}: rejects NG / uninspected / passed uninspected"),
             f"{st.get('rejected_ng', 0)} / {st.get('rejected_uninspected', 0)} / {st.get('passed_uninspected', 0)}")
            for name, st in lanes.items()]


def handshake_rows(hs: dict) -> list[tuple[str, object]]:
    """Rows for the PLC handshake (``Handshake.stats()``, ``RunSummary.rejects["handshake"]``), the live table's and the
    run summary's: triggers, results and acks; the answers (OK / NG / not inspected: 3); ack timeouts, expired parts,
    triggers past ``max_parts`` (``overruns``) and the code on Error; parts answered 3 for a camera's late frame,
    triggers found already 1 after an outage (``stale_triggers``) and acks for no result (``stale_acks``), in red when
    any; frames taken before their trigger and skipped (``stale_frames``); the link (up, or down in red) with its I/O
    errors, device refusals, reconnects and the results up at a reconnect, withdrawn (``withdrawn``). Every counter of
    ``HANDSHAKE_COUNTERS``; a key the dict lacks (an older summary) reads 0."""
    def counts(*keys: str) -> str:
        return " / ".join(str(hs.get(key, 0)) for key in keys)

    def red_if_any(text: str, *keys: str) -> str:
        return f"[bold red]{text}[/]" if any(hs.get(key, 0) for key in keys) else text

    stale = counts("late_frames", "stale_triggers", "stale_acks")
    link = "up" if hs.get("connected") else "[bold red]down[/]"
    link_counts = counts("io_errors", "device_errors", "reconnects", "withdrawn")
    return [("handshake: triggers / results / acked", counts("triggers", "results", "acked")),
            ("handshake: OK / NG / not inspected", counts("ok", "ng", "not_inspected")),
            ("handshake: ack timeouts / expired / overruns / error",
             counts("ack_timeouts", "expired", "overruns", "error")),
            ("handshake: late frames / stale triggers / stale acks",
             red_if_any(stale, "late_frames", "stale_triggers", "stale_acks")),
            ("handshake: stale frames (taken before the trigger, skipped)", counts("stale_frames")),
            ("handshake: link (I/O errors / refused / reconnects / results withdrawn)",
             f"{link}: {red_if_any(link_counts, 'io_errors', 'device_errors')}")]


def latency_text(lat: dict, digits: int = 1) -> str:
    """'p50 / p99 / max ms' of a latency dict (``LatencyStats.percentiles``); '- (no frame inspected)' when its
    values are None."""
    if lat.get("p50_ms") is None:
        return "- (no frame inspected)"
    return " / ".join(f"{lat[k]:.{digits}f}" for k in ("p50_ms", "p99_ms", "max_ms")) + " ms"


def live_table(inspector) -> Table:
    """The table ``fair-edge run`` redraws on a terminal at each tick: the camera (with several, all of them), the
    inspector's counters (with several cameras they count views), latency, the reject gate and, for a station of
    several cameras, the part counters and each camera's (``cell_rows``: the summary's ``parts`` and ``cameras``,
    brought up to date at each tick by ``station.cell.counting_tick``; the numbers summary.json ends with)."""
    s, lat = inspector.summary, inspector.latency.percentiles(window=inspector.latency.window)   # the last 2000
    camera = inspector.capture.stats()
    table = Table(title=f"fair-edge station (run {s.run_id})", show_header=False)
    for name, value in (("camera", camera.state.value), ("frames in", camera.frames_in),
                        ("dropped (queue full) / lost", f"{camera.dropped_queue_full} / {camera.frames_lost_estimate}"),
                        ("inspected", s.inspected), ("NG", s.ng), ("malformed", s.malformed),
                        ("inference errors", s.inference_errors), ("region errors", s.region_errors),
                        ("p50 / p99 / max latency", latency_text(lat)),
                        *reject_rows(s.rejects), *cell_rows(s)):
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


def cell_rows(summary) -> list[tuple[str, object]]:
    """Rows for a station of several cameras (``RunSummary.parts`` and ``.cameras``; the live table's and the run
    summary's): the parts (NG, of them not inspected: fail-safe; with ``group.match: sequence``, the times a camera
    fell out of step and was matched again, ``resyncs``, and a camera's frames taken twice and skipped,
    ``duplicate_views``), the parts OK, the views that came after their part closed
    (``late_views``) when there are any, then each camera (empty with one camera), with the files its replay could
    not decode when there are any (``unreadable``)."""
    rows: list[tuple[str, object]] = []
    if summary.parts:
        p = summary.parts
        resyncs = f", {p['resyncs']} resyncs (a camera out of step)" if "resyncs" in p else ""
        duplicates = f", {p['duplicate_views']} duplicate views skipped" if "duplicate_views" in p else ""
        rows.append(("parts", f"{p['parts']}: {p['ng']} NG, {p['not_inspected']} not inspected{resyncs}{duplicates}"))
        rows.append(("parts OK", p["ok"]))
        if p.get("late_views"):
            rows.append(("views after their part closed", p["late_views"]))
    for name, c in summary.cameras.items():
        unreadable = f", {c['unreadable']} unreadable" if c.get("unreadable") else ""
        rows.append((escape(f"camera {name}"), f"{c['inspected']} inspected, {c['ng']} NG, {c['dropped']} "
                                               f"dropped, {c['lost']} lost{unreadable}"))
    return rows


def recorder_rows(recorder: dict) -> list[tuple[str, object]]:
    """Rows for the recorder in the summary (``RunSummary.recorder``, ``Recorder.stats()``; empty when the run has
    none): the verdict log's rows written, and in red the rows that were not (``rows_failed``: their write raised,
    a full or unplugged disk; ``dropped``: the writer's backlog full; ``lost_at_close``: a hung disk at the stop),
    then, only when some NG images were not saved, how many were, were skipped (``images_skipped``: disk guard,
    queue, close deadline), failed on the disk (image write errors: ``write_errors`` less ``rows_failed``) and, when
    any, could not be drawn (``images_failed``: a frame or map the overlay refuses, not the disk). ``rows_failed``
    covers gate.jsonl rows too. ``log_files_deleted`` (rotated log files deleted to write on a full disk: their rows
    are gone) and ``log_rotations_put_off`` (times a rotation was refused, each until it went through: the log grows
    past max_log_mb), in red on the verdict log's row when any."""
    if not recorder:
        return []
    logged = f"{recorder.get('logged', 0)}"
    label = "verdict log"
    if recorder.get("gate_logged"):
        logged, label = f"{logged} / {recorder['gate_logged']}", "verdict log / gate log"
    parts = [f"{logged} logged"]
    for key, words in (("rows_failed", "not written (write errors)"), ("dropped", "dropped (writer backlog full)"),
                       ("lost_at_close", "lost at close (disk hung)"),
                       ("log_files_deleted", "rotated log file(s) deleted (disk full)"),
                       ("log_rotations_put_off", "log rotation(s) refused and put off (see the warning)")):
        if recorder.get(key):
            parts.append(f"[bold red]{recorder[key]} {words}[/]")
    rows: list[tuple[str, object]] = [(label, ", ".join(parts))]
    image_errors = recorder.get("write_errors", 0) - recorder.get("rows_failed", 0)
    not_drawn = recorder.get("images_failed", 0)
    if recorder.get("images_skipped") or image_errors > 0 or not_drawn:
        text = (f"{recorder.get('images', 0)} saved, {recorder.get('images_skipped', 0)} skipped, "
                f"{image_errors} write errors")
        rows.append(("NG images", text + (f", {not_drawn} not drawn (frame or map refused)" if not_drawn else "")))
    return rows


def rows_not_logged(recorder: dict) -> int:
    """Rows handed to the recorder that never reached its logs: ``rows_failed`` + ``dropped`` + ``lost_at_close``."""
    return sum(recorder.get(key, 0) for key in ("rows_failed", "dropped", "lost_at_close"))


def print_summary(summary, out: Path, log_dir: Path | None = None) -> None:
    """The run's summary table (out: the output folder, in its title; files a replay could not decode, when there
    are any), then, in red, a station fault and rows the recorder did not write (log_dir: where it writes, named in
    the fix; default ``out``)."""
    table = Table(title=escape(f"run summary ({out}, run {summary.run_id})"))
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [("backend", summary.backend), ("frames in", summary.frames_in), ("inspected", summary.inspected),
            ("dropped (queue full)", summary.dropped), ("lost (camera)", summary.lost),
            *([("unreadable files", summary.unreadable)] if summary.unreadable else []),
            ("not inspected (queued at stop)", summary.not_inspected),
            ("NG", summary.ng), ("malformed", summary.malformed), ("inference errors", summary.inference_errors),
            ("region errors", summary.region_errors), ("frames/s", f"{summary.fps:.1f}"),
            ("latency p50 / p99 / max", latency_text(summary.latency, digits=2)),
            *recorder_rows(summary.recorder), *reject_rows(summary.rejects), *cell_rows(summary)]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    if summary.fault:
        console.print(f"[bold red]station fault:[/] {escape(str(summary.fault))}")
    lost = rows_not_logged(summary.recorder)
    if lost:
        console.print(f"[bold red]{lost} log row(s) not written[/] (the verdict log row above says why); they are "
                      f"not in the log: check the disk under {escape(str(log_dir or out))} (full, unplugged, "
                      "read-only).")


@app.command(epilog="Exit codes: 0 stopped normally (Ctrl-C, SIGTERM, --max-frames, --duration, end of a replay); "
             "2 the station could not start (bad flag or station file, missing bundle, a camera that cannot be "
             "opened, reject.require_sinks_at_start with a sink unreachable); 3 the station faulted while running "
             "(the backend kept failing, or the camera is gone for good or still down when the run stopped); 4 "
             "rejects were due but a reject sink delivered none of them (PLC unreachable, wrong address).\n\nThe station file (--station), every field at its default:\n\n\b\n" + station_reference())
@friendly_errors
def run(
    station: Optional[Path] = typer.Option(None, help="Station YAML (camera or cameras + group, bundle, backend, "
                                           "batching, decision, output, reject, record, metrics, mqtt, console, "
                                           "regions). Flags override it, and a reload (SIGHUP) keeps --bundle and "
                                           "--threshold over the file it re-reads, until a threshold applied from "
                                           "the console is in force. Relative paths in it are read from the "
                                           "current folder, not the file's (README, \"The station file\")."),
    camera: Optional[str] = typer.Option(None, help="Camera: index (0), /dev/videoN, RTSP URL, video file, "
                                         "gst:PIPELINE, csi:0, genicam:SERIAL, aravis:DEVICE_ID."),
    source: Optional[Path] = typer.Option(None, help="Replay an image folder, one image or a video file instead of a "
                                          "camera. --camera or --source over a station file leaves out the file "
                                          "camera's settings for another kind of source (timeout_s, flip), saying "
                                          "so."),
    flip: Optional[int] = typer.Option(None, help=FLIP_HELP),
    bundle: Optional[Path] = typer.Option(None, help="Model bundle from `fair-edge build`."),
    backend: Optional[str] = typer.Option(None, help="auto (default), " + ", ".join(BACKENDS) + "."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold (score > threshold = NG); "
                                              "default: the bundle's calibrated one (with --roi: calibrated at "
                                              "start on the bundle's normal maps x ROI)."),
    roi: Optional[Path] = typer.Option(None, help="Region-of-interest mask image (white = inspected); the score is "
                                       "then max(anomaly map x ROI)."),
    max_batch: Optional[int] = typer.Option(None, help="Frames per inference (default 1)."),
    max_wait_ms: Optional[float] = typer.Option(None, help="How long a partial batch waits for frames (default 2)."),
    fps: Optional[float] = typer.Option(None, help="Replay --source at this rate, as a camera would (frames "
                                        "inspection cannot keep up with are dropped); default: every frame, "
                                        "as fast as inspection takes them. With a cameras: list, every "
                                        "replayed camera."),
    loop: bool = typer.Option(False, "--loop", help="Replay --source (or every camera of a cameras: list) forever."),
    out: Optional[Path] = typer.Option(None, help="Output folder: verdicts.jsonl, NG images, summary.json."),
    max_frames: Optional[int] = typer.Option(None, help="Stop after this many inspected frames."),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    reject: Optional[list[str]] = typer.Option(None, "--reject", help="Reject sink URL, repeatable, e.g. "
                                               "modbus://10.0.0.5:502?unit=1&coil=0, opcua://HOST:4840/?node=ns=2;s=Reject, "
                                               "gpio://gpiochip0/17, log:// (replaces the station file's reject.sinks)."),
    reject_delay_ms: Optional[float] = typer.Option(None, help="Camera -> reject gate travel time, ms "
                                                    "(reject.delay_ms); required with --reject unless the station "
                                                    "file sets it or encoder_distance: the default 0 is a gate at "
                                                    "the camera, where no verdict is in time. A folder or video "
                                                    "with --reject needs --fps (a timed line)."),
    fail_safe: Optional[str] = typer.Option(None, help="A part with no verdict by its due time: reject (reject "
                                            "it then) or alarm (let it pass, raise the fault output)."),
    console_mode: Optional[str] = typer.Option(None, "--console", help="on | off: serve the operator console "
                                               "(live view, NG review, threshold tuning) [default: on, "
                                               "http://127.0.0.1:8765/; station file section console:]."),
    console_port: Optional[int] = typer.Option(None, help="Console TCP port (0 = any free port)."),
) -> None:
    """Inspect frames from a camera (or a replayed folder/video) and write a verdict per frame.

    Several cameras (a cameras: list in the station file) share one process and one model per bundle;
    their views of one part give one verdict and one reject (group: by part), or each camera is a lane
    with its own reject output (group: by lane).

    A folder or video replayed without --fps is read with back-pressure: every frame is inspected.
    Ctrl-C or SIGTERM stops capture, finishes the frames in flight, prints the summary and exits 0.
    SIGHUP loads the bundle the station file names (or reloads the current one) without stopping
    capture; with cameras: in the station file, every camera's bundle as the file names it. --bundle and
    --threshold stay over the file across a reload (the log names them), until a threshold applied from
    the console (written to the file) is in force: a reload keeps that one."""
    from rich.live import Live

    from fair_edge.console.station_hook import ReloadFlags
    from fair_edge.station.cell import run as run_any
    from fair_edge.station.run import EXIT_REJECTS_UNDELIVERED, exit_code, undelivered_sinks
    from fair_edge.station.config import StationConfig, load_station
    from fair_edge.training.collect import export_reviewed

    check_stop_flags(max_frames, duration)
    cfg = load_station(station) if station else StationConfig()
    file_at_start = cfg   # before the flags: what a reload compares the re-read file with
    if camera is not None and source is not None:
        raise ConfigError("give either --camera or --source, not both.")
    if cfg.cameras and (camera is not None or source is not None or flip is not None):
        raise ConfigError(f"--camera / --source / --flip: the station file {station} lists {len(cfg.cameras)} "
                          "cameras (cameras:); change a camera's source or flip there, or drop the flag.")
    spec = camera if camera is not None else replay_spec(source) if source is not None else None
    cam = camera_over_file(cfg.camera, spec, flip)
    cam = replace(cam, fps=fps if fps is not None else cam.fps, loop=loop or cam.loop)
    if cfg.cameras and (fps is not None or loop):   # --fps / --loop: every camera's replay
        cfg = replace(cfg, cameras=tuple(replace(v, fps=fps if fps is not None else v.fps, loop=loop or v.loop)
                                         for v in cfg.cameras))
    batching = replace(cfg.batching, **{k: v for k, v in (("max_batch", max_batch), ("max_wait_ms", max_wait_ms))
                                        if v is not None})
    record = replace(cfg.record, dir=out) if out is not None else cfg.record
    cfg = cfg.override(camera=cam, bundle=bundle, backend=backend, threshold=threshold, roi=roi,
                       batching=batching, output=out, record=record,
                       reject=reject_overrides(cfg.reject, reject, reject_delay_ms, fail_safe),
                       console=console_settings(cfg.console, console_mode, console_port))
    signals = StationSignals(ReloadFlags(bundle=bundle, threshold=threshold, backend=backend, roi=roi),
                             file_at_start)
    if cfg.bundle is not None or cfg.cameras:
        print_plain(bundles_text(cfg))   # as found from here: a relative bundle: is read from the current folder
    live = Live(console=console, refresh_per_second=2, transient=True) if console.is_terminal else None

    def show_live(inspector) -> None:
        live.update(live_table(inspector))

    with live or contextlib.nullcontext():
        summary = run_any(cfg, signals.stop, max_frames=max_frames, duration_s=duration, on_start=print_plain,
                              on_tick=show_live if live else None, on_console=signals.wire_sighup,
                              export_reviewed=export_reviewed)
    print_summary(summary, cfg.output, cfg.record.dir)
    print_plain(f"verdicts: {cfg.record.dir / 'verdicts.jsonl'}")
    code = exit_code(summary)
    if code == EXIT_REJECTS_UNDELIVERED:
        console.print(f"[bold red]rejects were due but {escape(', '.join(undelivered_sinks(summary.rejects)))} "
                      f"delivered none[/] (exit code {code}): check the PLC link and the sink URL.")
    if code:
        raise typer.Exit(code)


def bundles_text(cfg) -> str:
    """The start line naming the bundle the station loads as an absolute path (with a cameras: list, each camera's:
    ``bundles: top /abs/a, side /abs/b``), and, when one was given relative, the current folder it is read from,
    e.g. "bundle /srv/line3/bundle (relative paths in the station file are read from the current folder,
    /srv/line3)". A station started in another folder runs that folder's bundle of the same name: this line shows
    which. cfg: the StationConfig with the flags applied."""
    given = {view.name: view.bundle or cfg.bundle for view in cfg.cameras} or {"": cfg.bundle}
    named = ", ".join(f"{name} {os.path.abspath(path) if path else '(none)'}".strip() for name, path in given.items())
    relative = any(path is not None and not Path(path).is_absolute() for path in given.values())
    where = (f" (relative paths in the station file are read from the current folder, {os.getcwd()})" if relative
             else "")
    return f"{'bundles:' if cfg.cameras else 'bundle'} {named}{where}"


def check_stop_flags(max_frames: Optional[int], duration: Optional[float]) -> None:
    """``--max-frames`` (inspected frames) and ``--duration`` (seconds): None (run until stopped) or > 0, and a
    finite duration. 0 or -1 stopped the station at once with exit 0, as if it had run; NaN never compared as
    reached, so the run never stopped."""
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames: expected a number of inspected frames >= 1, found {max_frames}; give how "
                          "many frames to inspect, or leave it out to run until stopped.")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise ConfigError(f"--duration: expected a finite number of seconds > 0, found {duration:g}; give how long "
                          "to run, or leave it out to run until stopped.")


class StationSignals:
    """`fair-edge run`'s signals: Ctrl-C and SIGTERM set ``stop`` (the station drains and exits 0); SIGHUP,
    once the console exists, loads the bundle the station file names (``StationConsole.reload_bundle``) on the
    console's reload thread: the handler only asks (``request_reload``), so nothing a reload meets is raised in the
    main thread, and SIGHUPs in a row never run two reloads at once. reload_flags: the command line's flags over
    the station file (``station_hook.ReloadFlags``), which every reload applies again over the file it re-reads
    (None: none given). file_at_start: the station file's StationConfig as loaded, before the flags (None: not
    known), which a reload compares the re-read file with: only edits since the start are named as not applied,
    never what a flag sets (``StationConsole.keep_file_at_start``)."""

    def __init__(self, reload_flags=None, file_at_start=None) -> None:
        self.stop = threading.Event()
        self.console = None
        self.reload_flags = reload_flags
        self.file_at_start = file_at_start
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.on_stop)

    def on_stop(self, signum: int, frame: object) -> None:
        self.stop.set()

    def wire_sighup(self, station_console) -> None:
        """``run_station``'s on_console hook: the command line's flags kept over the station file across reloads, the
        file as loaded before them, and, where the OS has SIGHUP, the reload thread and the handler."""
        self.console = station_console
        if self.reload_flags is not None:
            station_console.keep_flags(self.reload_flags)
        if self.file_at_start is not None:
            station_console.keep_file_at_start(self.file_at_start)
        if hasattr(signal, "SIGHUP"):
            station_console.watch_reloads()
            signal.signal(signal.SIGHUP, self.on_hup)

    def on_hup(self, signum: int, frame: object) -> None:
        """Runs in the main thread, wherever the inspection loop is: only asks for the reload (raises nothing)."""
        self.console.request_reload("SIGHUP")


def console_settings(current, mode: Optional[str], port: Optional[int]):
    """The station file's console settings with --console on|off and --console-port applied."""
    if mode is not None and mode not in ("on", "off"):
        raise ConfigError(f"--console: expected on or off, found {mode!r}.")
    changes = {k: v for k, v in (("enabled", None if mode is None else mode == "on"), ("port", port)) if v is not None}
    out = replace(current, **changes)
    out.check()
    return out

"""The built-in demo: a complete station with no hardware.

1. Train (or reuse) a small FAIR model on ELPV mono solar cells, normal cells only.
2. Evaluate it on the held-out normal and defective cells (report folder).
3. Build its bundle (FP32 ONNX) with a threshold calibrated on half of the held-out normal cells.
4. Warm up: time the station's inspection of a few threshold cells on this machine. If it cannot
   keep up with the conveyor rate, slow the conveyor (and say so); place the reject gate beyond
   the measured p99 with a margin (and say so).
5. Replay a conveyor of the other held-out normal cells mixed with defective cells at that rate
   through the station loop, with a simulated PLC (a real Modbus TCP server on 127.0.0.1) as the
   reject output, and check, part by part, that each rejected part's pulse arrived on time.
   Every part is accounted for: a defective cell that was not inspected in time (dropped from the
   queue, verdict late) counts as missed even when the fail-safe rejected it. The tally is read back from the
   station's verdict log: one that holds fewer rows than the station inspected and dropped (a disk that filled
   during the run) is an error after the report is written (``incomplete_tally``), never a tally of 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fair_edge.demo.config import DEMO_FALSE_REJECT_RATE
from fair_edge.errors import DataError, RecorderError
from fair_edge.training.collect import export_reviewed
from fair_edge.training.data import DatasetSplit, Sample, elpv_split
from fair_edge.training.pixels import read_image

log = logging.getLogger(__name__)
TRAVEL_MS = 400.0  # least camera -> reject gate travel time of the simulated conveyor
PULSE_MS = 30.0
LATE_MS = 10.0
WARMUP_FRAMES = 24
GATE_MARGIN = 3.0      # gate delay >= GATE_MARGIN x warm-up p99 + GATE_EXTRA_MS (queueing, jitter)
GATE_EXTRA_MS = 100.0
MAX_LOAD = 0.6         # the conveyor may use at most this share of the measured inspection rate
REPLACED_FOLDERS = ("report", "bundle", "conveyor")   # OUT's folders the demo deletes or writes anew, besides station/


@dataclass(frozen=True)
class ConveyorPlan:
    """threshold_normals: held-out normal cells that calibrate the threshold.
    parts: the conveyor, in order (normal cells not used for the threshold, and defective cells)."""

    threshold_normals: list[Sample]
    parts: list[Sample]


def plan_conveyor(split: DatasetSplit, n_good: int, n_defect: int, seed: int = 0) -> ConveyorPlan:
    """Split the held-out normal cells in two halves (threshold / conveyor) and mix in defects."""
    rng = np.random.default_rng(seed)
    normals = [s for s in split.test if s.label == 0]
    defects = [s for s in split.test if s.label == 1]
    half = len(normals) // 2
    goods = normals[half:][:n_good]
    chosen = [defects[i] for i in sorted(rng.choice(len(defects), size=min(n_defect, len(defects)), replace=False))]
    parts = goods + chosen
    order = rng.permutation(len(parts))
    return ConveyorPlan(normals[:half], [parts[i] for i in order])


def write_conveyor(parts: list[Sample], folder: Path) -> None:
    """Copy the parts into ``folder`` as NNN_<good|defect>_<cell>.png, in conveyor order, in place of what it held:
    under its station lock (``demo_folder``), so a station running with ``folder`` as its output refuses the demo
    (ConfigError naming its pid) before anything is deleted."""
    with demo_folder(folder):
        for i, part in enumerate(parts):
            tag = "defect" if part.label else "good"
            shutil.copyfile(part.path, folder / f"{i:03d}_{tag}_{part.path.stem}.png")


@contextlib.contextmanager
def demo_folder(folder: Path) -> Iterator[Path]:
    """Hold ``folder``'s station lock (``station.locks.hold_station_folder``, as a station holds its output folder) and
    empty it, all but the lock file, for the demo to write anew: a station running there (`fair-edge demo --out runs`
    beside a station with ``output: runs/station``) refuses the demo with a ConfigError naming its pid and the fix
    (another --out) before anything is deleted; one started there while the block runs is refused in turn. The same
    thread may hold it again inside (the demo's own station does). Yields ``folder``."""
    from fair_edge.station.locks import STATION_LOCK

    with demo_lock(folder):
        clear_folder(folder, keep=STATION_LOCK)
        yield folder


def demo_lock(folder: Path, out: Path | None = None) -> contextlib.AbstractContextManager[Path]:
    """``folder``'s station lock held as the demo's (``station.locks.hold_station_folder``; the lock file names
    `fair-edge demo --out OUT`, ``out``: OUT, None for ``folder``'s parent, as OUT/station's): ConfigError naming the
    running station's pid and the fix while one runs there."""
    from fair_edge.station.locks import hold_station_folder

    out = folder.parent if out is None else out
    return hold_station_folder(folder, f"fair-edge demo --out {out.resolve()}", "demo")


@contextlib.contextmanager
def demo_out_locks(out: Path) -> Iterator[None]:
    """Hold the station locks of OUT (the model, loss log and report go there) and OUT/station (emptied by
    ``run_conveyor``) for the whole demo, and check each of OUT's ``REPLACED_FOLDERS`` that exists: a station whose
    output folder is any of them (its own output folder typed as --out) refuses the demo with a ConfigError naming
    its pid, the folder and the fix (another --out), before the demo trains, deletes or writes anything. A station
    started on OUT or OUT/station while the demo runs is refused in turn, naming the demo; OUT/conveyor is locked
    again while it is written (``write_conveyor``)."""
    with demo_lock(out, out), demo_lock(out / "station"):
        for name in REPLACED_FOLDERS:
            if (out / name).is_dir():   # a folder not made yet is no running station's
                with demo_lock(out / name):
                    pass
        yield


def clear_folder(folder: Path, keep: str) -> None:
    """Delete everything in ``folder`` (made if missing) but its entry named ``keep`` (the lock file held on it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@dataclass(frozen=True)
class LinePlan:
    """What the warm-up decided. fps: conveyor rate, cells/s (lowered when the machine is too slow).
    delay_ms: camera -> gate travel. warmup_ms: inspection time per cell, p50 / p99 / mean."""

    fps: float
    delay_ms: float
    warmup_ms: dict
    notes: list[str]


def measure_inspection_ms(bundle_root: Path, backend: str, images: list[np.ndarray]) -> dict:
    """Time the station's inspection (pre-process + inference + decision) of each image, one at a
    time, with the station's own Inspector and backend; the first call is not timed."""
    from fair_edge.runtime.backends import close_scorer
    from fair_edge.runtime.selection import select_backend
    from fair_edge.export.bundle import load_bundle
    from fair_edge.station.inspector import Inspector
    from fair_edge.records import Frame

    scorer = select_backend(load_bundle(bundle_root), backend)
    try:
        inspector = Inspector(None, scorer, threshold=1.0)
        times = []
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            inspector.inspect([Frame(i, time.monotonic(), image)])
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        close_scorer(scorer)
    t = np.asarray(times[1:] or times)
    return {"n": int(t.size), "p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99)),
            "mean": float(t.mean())}


def plan_line(fps: float, warmup_ms: dict) -> LinePlan:
    """Slow the conveyor if the machine cannot keep up; gate delay above p99 with a margin."""
    notes = []
    capacity = 1000.0 / warmup_ms["mean"]
    if fps > MAX_LOAD * capacity:
        slowed = math.floor(MAX_LOAD * capacity * 10) / 10 or 0.1
        notes.append(f"this machine inspects {capacity:.1f} cells/s now (mean {warmup_ms['mean']:.0f} ms): "
                     f"conveyor slowed from {fps:g} to {slowed:g} cells/s ({MAX_LOAD:.0%} load)")
        fps = slowed
    wanted = GATE_MARGIN * warmup_ms["p99"] + GATE_EXTRA_MS
    delay = max(TRAVEL_MS, math.ceil(wanted / 50.0) * 50.0)
    notes.append(f"warm-up p99 {warmup_ms['p99']:.1f} ms -> reject gate {delay:g} ms downstream "
                 f"({GATE_MARGIN:g} x p99 + {GATE_EXTRA_MS:g} ms, at least {TRAVEL_MS:g} ms)")
    return LinePlan(fps, delay, warmup_ms, notes)


def match_pulses(verdicts: list[dict], rises: list[float], travel_ms: float, late_ms: float,
                 pulses: dict[int, str] | None = None) -> list[dict]:
    """For each logged part (inspected or dropped), the reject pulse that belongs to it: the rising
    edge nearest its due time (t_capture + travel) within +-late_ms; for a part whose sink reported
    its pulse written late (``pulses``: seq -> delivered / late / missed, the gate log's pulse rows),
    the first edge after due + late_ms. Returns one row per part with ``pulse`` ("on time", "late",
    "missed" = the sink did not write it, "unconfirmed" = written without a reply and no edge seen,
    None = no pulse), pulse_error_ms (None: no pulse seen),
    ``defective``, ``in_time`` (``verdict_in_time``: the gate decided the part on its verdict) and ``score``
    (None for a part without one: dropped, or failed)."""
    rises, pulses = sorted(rises), pulses or {}
    rows = []
    for v in verdicts:
        due = v["t_capture"] + travel_ms / 1000.0
        near = [r for r in rises if abs(r - due) * 1000.0 <= late_ms]
        error = min(((r - due) * 1000.0 for r in near), key=abs) if near else None
        pulse = "on time" if near else None
        after = [r for r in rises if (r - due) * 1000.0 > late_ms]
        if error is None and pulses.get(v["seq"]) == "late" and after:
            error, pulse = (after[0] - due) * 1000.0, "late"
        elif error is None and pulses.get(v["seq"]) in ("missed", "unconfirmed"):
            pulse = pulses[v["seq"]]
        inspected = v.get("inspected", True)
        in_time = verdict_in_time(v, due)
        rows.append(dict(v, defective="_defect_" in v["source"], pulse_error_ms=error, pulse=pulse,
                         inspected=inspected, in_time=in_time, ng=v.get("ng", False),
                         score=v.get("score")))   # a dropped part has none: None (JSON null), never NaN
    return rows


def verdict_in_time(row: dict, due: float) -> bool:
    """Whether the gate decided the part of verdict-log ``row`` on its verdict: an inspected frame whose
    verdict came before the gate's decision cut-off (``DISPATCH_LEAD_S`` before ``due``, monotonic s), that the
    station did not log as late (``verdict_late``: the gate had decided it, e.g. rejected it fail-safe) and that
    carries no ``error`` (a verdict with an error is no verdict to the gate: ``fail_safe`` decided the part)."""
    from fair_edge.line.scheduler import DISPATCH_LEAD_S

    return (bool(row.get("inspected", True)) and not row.get("verdict_late") and not row.get("error")
            and row["t_verdict"] < due - DISPATCH_LEAD_S)


def read_pulse_results(gate_log: Path) -> dict[int, str]:
    """seq -> what the reject sink reported of its pulse (delivered / late / missed / unconfirmed), from gate.jsonl."""
    return {e["seq"]: e["pulse"] for e in read_rows(gate_log) if e.get("event") == "pulse"}


def read_rows(log_file: Path) -> list[dict]:
    """The whole JSON rows of the JSONL file ``log_file`` (verdicts.jsonl, gate.jsonl), in order: none when it is
    missing (never created: a full disk), and a line that is no JSON (one cut short by a full disk) is left out with
    a warning; ``check_tally_complete`` counts the verdict rows missing."""
    if not log_file.is_file():
        return []
    rows, cut = [], 0
    for text in log_file.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            cut += 1
    if cut:
        log.warning("%d line(s) of %s are no JSON row (cut short as it was written: a full disk?); left out", cut,
                    log_file)
    return rows


def pulse_error_stats(rows: list[dict]) -> dict:
    """Rising edge minus due time over every pulse seen (on time and late), ms: n, p50, p99, min, max."""
    errors = np.array([r["pulse_error_ms"] for r in rows if r["pulse_error_ms"] is not None])
    if not errors.size:
        return {"n": 0}
    return {"n": int(errors.size), "p50": float(np.percentile(errors, 50)), "p99": float(np.percentile(errors, 99)),
            "min": float(errors.min()), "max": float(errors.max())}


def tally(rows: list[dict]) -> dict:
    """Demo counts: a defective part is caught only when inspected in time and NG; every other
    defective part is missed (those rejected uninspected by the fail-safe are counted too)."""
    defective = [r for r in rows if r["defective"]]
    return {
        "defective": len(defective),
        "caught": sum(r["in_time"] and r["ng"] for r in defective),
        "missed": sum(not (r["in_time"] and r["ng"]) for r in defective),
        "missed_not_inspected": sum(not r["in_time"] for r in defective),
        "missed_but_rejected_uninspected": sum(not r["in_time"] and r["pulse"] == "on time"
                                               for r in defective),
        "false_rejects": sum((not r["defective"]) and r["in_time"] and r["ng"] for r in rows),
        "rejected_uninspected_good": sum((not r["defective"]) and not r["in_time"]
                                         and r["pulse"] == "on time" for r in rows),
        "pulses_on_time": sum(r["pulse"] == "on time" for r in rows),
        "pulses_late": sum(r["pulse"] == "late" for r in rows),
        "pulses_due": sum((r["in_time"] and r["ng"]) or not r["in_time"] for r in rows),
    }


def run_demo(out: Path, *, train: Callable[[], Path], evaluate: Callable[[Path], dict], fps: float = 10.0,
             n_good: int = 40, n_defect: int = 20, backend: str = "auto", false_reject_rate: float = DEMO_FALSE_REJECT_RATE,
             say: Callable[[str], None] = print) -> dict:
    """Run steps 3 to 5 after ``train()`` (returns final.pt) and ``evaluate(final)`` (returns metrics), holding the
    station locks of OUT and OUT/station from the start (``demo_out_locks``): a station running in OUT or a folder
    the demo writes there refuses the demo before it trains, deletes or writes anything."""
    with demo_out_locks(out):   # OUT/station emptied by run_conveyor, under the lock still
        return _run_demo(out, train, evaluate, fps, n_good, n_defect, backend, false_reject_rate, say)


def _run_demo(out: Path, train: Callable[[], Path], evaluate: Callable[[Path], dict], fps: float, n_good: int,
              n_defect: int, backend: str, false_reject_rate: float, say: Callable[[str], None]) -> dict:
    """``run_demo``'s steps, under OUT/station's station lock."""
    from fair_edge.models.checkpoint import load_checkpoint
    from fair_edge.export.build import BuildOptions, SourceCheckpoint, build_bundle

    final = train()
    metrics = evaluate(final)
    plan = plan_conveyor(elpv_split("mono"), n_good, n_defect)
    say(f"building the bundle (threshold for {false_reject_rate:.1%} false rejects on "
        f"{len(plan.threshold_normals)} held-out normal cells)")
    warm_images = [read_image(s.path) for s in plan.threshold_normals]
    result = build_bundle(load_checkpoint(final), out / "bundle",
                          BuildOptions(precision="fp32", engine=False, command="fair-edge demo",
                                       false_reject_rate=false_reject_rate, source=SourceCheckpoint.of(final)),
                          normal_frames=warm_images)
    write_conveyor(plan.parts, out / "conveyor")
    line = plan_line(fps, measure_inspection_ms(result.bundle.root, backend, warm_images[:WARMUP_FRAMES]))
    for note in line.notes:
        say(note)
    summary, rows, rises = run_conveyor(out, result.bundle.root, backend, line, len(plan.parts), say)
    report = {
        "line": {"fps": line.fps, "requested_fps": fps, "gate_delay_ms": line.delay_ms,
                 "warmup_ms": line.warmup_ms, "notes": line.notes},
        "pulse_error_ms": pulse_error_stats(rows),
        "reject_stats": summary.rejects,
        "eval": metrics, "threshold": result.bundle.threshold.value if result.bundle.threshold else None,
        "summary": summary.to_dict(), "parts": rows, "pulses_received": len(rises), **tally(rows),
        "verdict_rows": verdict_rows(len(rows), summary),
    }
    finish_report(report, out)
    return report


def finish_report(report: dict, out: Path) -> None:
    """Write OUT/demo_report.json (``write_report``), then raise the ``incomplete_tally`` error when its tally was made
    of fewer verdict rows than the station logged; one that could not be written is a DataError, or, with a tally
    incomplete too, that RecorderError saying both."""
    incomplete = incomplete_tally(report["verdict_rows"], out / "station" / "verdicts.jsonl")
    path = out / "demo_report.json"
    try:
        write_report(report, path)
    except DataError as exc:
        if incomplete is None:
            raise
        reason = getattr(exc.__cause__, "strerror", None) or exc.__cause__ or exc
        raise RecorderError(f"{incomplete} The demo report {path} was not written either ({reason}; an earlier one "
                            "there is left as it was).") from exc
    if incomplete is not None:
        raise incomplete


def write_report(report: dict, path: Path) -> None:
    """``report`` as strict JSON (a NaN or infinite number, e.g. an undefined metric, written as null), whole or not
    at all (``disk.write_text_whole``: an earlier report stays whole until the new one is complete). DataError naming
    the file, the cause and the fix when it cannot be written (a full disk)."""
    from fair_edge.disk import write_failure
    from fair_edge.disk import write_text_whole
    from fair_edge.records import json_file_text

    try:
        write_text_whole(path, json_file_text(report), "demo report")
    except OSError as exc:
        raise DataError(f"cannot write the demo report {path} ({exc.strerror or exc}; an earlier one there is left as "
                        f"it was): {write_failure(path.parent, exc)}, then run `fair-edge demo` again.") from exc


def verdict_rows(logged: int, summary) -> dict:
    """The report's ``verdict_rows``: {"read": the verdict-log rows the tally was made of (``logged``), "expected":
    one per part the station inspected or dropped (``summary``: a RunSummary, its ``inspected`` and ``dropped``)}."""
    return {"read": logged, "expected": summary.inspected + summary.dropped}


def incomplete_tally(rows: dict, verdict_log: Path) -> RecorderError | None:
    """The RecorderError to raise when the tally was made of fewer verdict-log rows than the station logged parts
    (``rows``: ``verdict_rows``; ``verdict_log``: the file read): the log could not be written in full (a disk that
    filled during the run), so the counts (defective, caught, missed, pulses) are of those rows only, not of the
    run. None when every row was read back."""
    if rows["read"] >= rows["expected"]:
        return None
    from fair_edge.disk import free_space

    return RecorderError(
        f"the demo's tally is incomplete: the verdict log could not be written in full ({rows['read']} of "
        f"{rows['expected']} rows in {verdict_log}, one per part the station inspected or dropped), so its counts "
        f"(defective, caught, missed, pulses) would leave parts out; {free_space(verdict_log.parent)}. Free space on "
        "that disk or choose an --out on another disk, then run `fair-edge demo` again.")


def run_conveyor(out: Path, bundle_root: Path, backend: str, line: LinePlan, n_parts: int,
                 say: Callable[[str], None]):
    """Replay OUT/conveyor through the station into a simulated PLC, into OUT/station emptied first under its
    station lock (``demo_folder``: refused while another station runs there). Returns (summary, rows, rises)."""
    from fair_edge.line.settings import RecordSettings, RejectSettings
    from fair_edge.line.sim_sink_plc import SimulatedPlc
    from fair_edge.station.run import run_station
    from fair_edge.station.config import CameraSettings, StationConfig

    station_dir = out / "station"
    with demo_folder(station_dir), contextlib.closing(SimulatedPlc().start()) as plc:   # its station: lock again
        cfg = StationConfig(
            camera=CameraSettings(source=str(out / "conveyor"), fps=line.fps, queue_size=8),
            bundle=bundle_root, backend=backend, output=station_dir,
            reject=RejectSettings(sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0",), delay_ms=line.delay_ms,
                                  pulse_ms=PULSE_MS, min_gap_ms=10.0, late_ms=LATE_MS),
            record=RecordSettings(dir=station_dir, save_ng_images=True),
        )
        say(f"replaying {n_parts} cells at {line.fps:g} cells/s; simulated PLC on 127.0.0.1:{plc.port}, "
            f"reject gate {line.delay_ms:g} ms downstream")
        summary = run_station(cfg, threading.Event(), on_start=say, export_reviewed=export_reviewed)
        threading.Event().wait(0.2)  # the station waited for the gate; let the last writes land
        rises = plc.rises(0)
    verdicts = read_rows(station_dir / "verdicts.jsonl")
    pulses = read_pulse_results(station_dir / "gate.jsonl")
    return summary, match_pulses(verdicts, rises, line.delay_ms, LATE_MS, pulses), rises

"""The built-in demo: a complete station with no hardware.

1. Train (or reuse) a small FAIR model on ELPV mono solar cells, normal cells only.
2. Evaluate it on the held-out normal and defective cells (report folder).
3. Build its bundle (FP32 ONNX) with a threshold calibrated on half of the held-out normal cells.
4. Replay a conveyor of the other held-out normal cells mixed with defective cells at a set rate
   through the station loop, with a simulated PLC (a real Modbus TCP server on 127.0.0.1) as the
   reject output, and check, part by part, that each NG part's pulse arrived on time.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fair_edge.demo_config import DEMO_FALSE_REJECT_RATE
from fair_edge.data import DatasetSplit, Sample, elpv_split, read_image

TRAVEL_MS = 400.0  # camera -> reject gate travel time of the simulated conveyor
PULSE_MS = 30.0
LATE_MS = 10.0


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
    """Copy the parts into ``folder`` as NNN_<good|defect>_<cell>.png, in conveyor order."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, part in enumerate(parts):
        tag = "defect" if part.label else "good"
        shutil.copyfile(part.path, folder / f"{i:03d}_{tag}_{part.path.stem}.png")


def match_pulses(verdicts: list[dict], rises: list[float], travel_ms: float, late_ms: float) -> list[dict]:
    """For each verdict, the reject pulse that belongs to it: the rising edge nearest its due time
    (t_capture + travel) within +-late_ms. Returns one row per verdict with pulse_error_ms or None."""
    rises = sorted(rises)
    rows = []
    for v in verdicts:
        due = v["t_capture"] + travel_ms / 1000.0
        near = [r for r in rises if abs(r - due) * 1000.0 <= late_ms]
        error = min(((r - due) * 1000.0 for r in near), key=abs) if near else None
        rows.append(dict(v, defective="_defect_" in v["source"], pulse_error_ms=error))
    return rows


def run_demo(out: Path, *, train: Callable[[], Path], evaluate: Callable[[Path], dict], fps: float = 10.0,
             n_good: int = 40, n_defect: int = 20, backend: str = "auto", false_reject_rate: float = DEMO_FALSE_REJECT_RATE,
             say: Callable[[str], None] = print) -> dict:
    """Run steps 3 and 4 after ``train()`` (returns final.pt) and ``evaluate(final)`` (returns metrics)."""
    from fair_edge.checkpoint import load_checkpoint
    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.line.settings import RecordSettings, RejectSettings
    from fair_edge.line.sim_plc import SimulatedPlc
    from fair_edge.run_station import run_station
    from fair_edge.station import CameraSettings, StationConfig

    final = train()
    metrics = evaluate(final)
    plan = plan_conveyor(elpv_split("mono"), n_good, n_defect)
    say(f"building the bundle (threshold for {false_reject_rate:.1%} false rejects on "
        f"{len(plan.threshold_normals)} held-out normal cells)")
    result = build_bundle(load_checkpoint(final), out / "bundle",
                          BuildOptions(precision="fp32", engine=False, command="fair-edge demo",
                                       false_reject_rate=false_reject_rate),
                          normal_frames=[read_image(s.path) for s in plan.threshold_normals])
    write_conveyor(plan.parts, out / "conveyor")
    plc = SimulatedPlc().start()
    try:
        station_dir = out / "station"
        if station_dir.exists():
            shutil.rmtree(station_dir)
        cfg = StationConfig(
            camera=CameraSettings(source=str(out / "conveyor"), fps=fps, queue_size=8),
            bundle=result.bundle.root, backend=backend, output=station_dir,
            reject=RejectSettings(sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0",), delay_ms=TRAVEL_MS,
                                  pulse_ms=PULSE_MS, min_gap_ms=10.0, late_ms=LATE_MS),
            record=RecordSettings(dir=station_dir, save_ng_images=True),
        )
        say(f"replaying {len(plan.parts)} cells at {fps:g} cells/s; simulated PLC on 127.0.0.1:{plc.port}, "
            f"reject gate {TRAVEL_MS:g} ms downstream")
        summary = run_station(cfg, threading.Event(), on_start=say)
        threading.Event().wait(TRAVEL_MS / 1000.0 + 0.2)  # let the last pulses fall due
        rises = plc.rises(0)
    finally:
        plc.close()
    verdicts = [json.loads(line) for line in (station_dir / "verdicts.jsonl").read_text().splitlines()]
    rows = match_pulses(verdicts, rises, TRAVEL_MS, LATE_MS)
    errors = np.array([r["pulse_error_ms"] for r in rows if r["pulse_error_ms"] is not None])
    station_stats = json.loads((station_dir / "summary.json").read_text())
    report = {
        "pulse_error_ms": {"n": int(errors.size), **({"p50": float(np.percentile(errors, 50)),
                           "p99": float(np.percentile(errors, 99)), "min": float(errors.min()),
                           "max": float(errors.max())} if errors.size else {})},
        "reject_stats": station_stats.get("reject"),
        "eval": metrics, "threshold": result.bundle.threshold.value if result.bundle.threshold else None,
        "summary": summary.to_dict(), "parts": rows, "pulses_received": len(rises),
        "defective": sum(r["defective"] for r in rows), "caught": sum(r["defective"] and r["ng"] for r in rows),
        "false_rejects": sum((not r["defective"]) and r["ng"] for r in rows),
        "pulses_on_time": sum(r["ng"] and r["pulse_error_ms"] is not None for r in rows),
    }
    (out / "demo_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report

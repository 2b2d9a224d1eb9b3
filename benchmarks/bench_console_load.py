"""What ten connected browsers cost the inspection loop: the same replayed line with 0 and 10 console
clients, alternating, measuring inspection rate, capture -> verdict latency and reject pulse timing
on a simulated PLC (a real Modbus TCP server on 127.0.0.1).

Each client behaves like the live page: it holds the server-sent event stream open and fetches
the live image (frame + heat map, JPEG) after every event.

    python benchmarks/bench_console_load.py --json runs/console-load.json     # ~3 min on 2 idle CPU cores

Without --bundle it builds a random-weight width-32 bundle at --image-size (speed does not depend
on the weights) and replays synthetic --frame-size frames, with a threshold that rejects ~30 % of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np


def client(url: str, stop: threading.Event, counts: dict, key: int) -> None:
    """One browser: read /api/events; after each state event, GET /api/live.jpg."""
    import httpx

    with httpx.Client(timeout=10) as http:
        try:
            with http.stream("GET", url + "api/events") as events:
                for line in events.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("data: "):
                        counts[key] = counts.get(key, 0) + 1
                        http.get(url + "api/live.jpg")
        except httpx.HTTPError:
            if not stop.is_set():
                raise


def measure(bundle_root: Path, source: Path, out: Path, *, clients: int, fps: float, frames: int,
            threshold: float | None = None, delay_ms: float = 400.0, late_ms: float = 10.0, warmup: int = 10) -> dict:
    """Replay ``frames`` frames of ``source`` at ``fps`` through a station with ``clients`` console clients.
    Rate (parts inspected per second, steady state), latency and pulse timing leave out the first
    ``warmup`` parts (first inferences, connections)."""
    from fair_edge.console.settings import ConsoleSettings
    from fair_edge.demo.run import match_pulses
    from fair_edge.line.settings import RecordSettings, RejectSettings
    from fair_edge.line.sim_sink_plc import SimulatedPlc
    from fair_edge.station.run import run_station
    from fair_edge.station.config import CameraSettings, StationConfig

    plc = SimulatedPlc().start()
    stop, done = threading.Event(), threading.Event()
    counts: dict = {}
    threads: list[threading.Thread] = []

    def start_clients(console) -> None:
        for i in range(clients):
            t = threading.Thread(target=client, args=(console.url, done, counts, i), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(0.5)  # let them connect before the first frame matters

    cfg = StationConfig(
        camera=CameraSettings(source=str(source), fps=fps, loop=True, queue_size=64), bundle=bundle_root,
        backend="onnxruntime", threshold=threshold, output=out,
        reject=RejectSettings(sinks=(f"modbus://127.0.0.1:{plc.port}?unit=1&coil=0",), delay_ms=delay_ms,
                              pulse_ms=20, min_gap_ms=10, late_ms=late_ms),
        record=RecordSettings(dir=out, save_ng_images=False), console=ConsoleSettings(port=0))
    load_before = os.getloadavg()[0]
    try:
        summary = run_station(cfg, stop, max_frames=frames, on_console=start_clients)
        time.sleep(0.2)
        rises = plc.rises(0)
    finally:
        done.set()
        plc.close()
        for t in threads:
            t.join(5)
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()][warmup:]
    rows = [r for r in match_pulses(verdicts, rises, delay_ms, late_ms) if r["ng"]]
    errors = [r["pulse_error_ms"] for r in rows if r["pulse_error_ms"] is not None]
    lat = [v["latency_ms"] for v in verdicts]
    steady = (len(verdicts) - 1) / (verdicts[-1]["t_verdict"] - verdicts[0]["t_verdict"])
    return {"clients": clients, "frames": frames, "fps_set": fps, "inspected": summary.inspected,
            "frames_in": summary.frames_in, "dropped": summary.dropped, "fps": round(steady, 2),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 2),
            "ng": len(rows), "pulses_on_time": len(errors),
            "on_time_share": round(len(errors) / len(rows), 4) if rows else None,
            "pulse_error_p50_ms": round(statistics.median(errors), 2) if errors else None,
            "pulse_error_max_abs_ms": round(max(map(abs, errors)), 2) if errors else None,
            "client_events": sum(counts.values()), "clients_served": sum(1 for n in counts.values() if n > 0),
            "loadavg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def synthetic_line(folder: Path, size: tuple[int, int], count: int = 40) -> list[np.ndarray]:
    """``count`` textured uint8 BGR frames of ``size`` (H, W), written as PNG into ``folder``."""
    from fair_edge.bench.run import synthetic_frames

    folder.mkdir(parents=True, exist_ok=True)
    images = synthetic_frames(*size, count=count, seed=3)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return images


def threshold_for(bundle, images: list[np.ndarray], ng_share: float = 0.3) -> float:
    """The score quantile that makes ``ng_share`` of ``images`` NG on this bundle (ONNX Runtime)."""
    from fair_edge.runtime.selection import select_backend

    scorer = select_backend(bundle, "onnxruntime")
    scores = [float(scorer.infer_frames([im])[1][0]) for im in images]
    return float(np.quantile(scores, 1.0 - ng_share))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: a random-weight width-32 bundle)")
    parser.add_argument("--fps", type=float, default=8.0, help="replay rate, frames/s")
    parser.add_argument("--frames", type=int, default=200, help="frames per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per client count, alternating")
    parser.add_argument("--clients", type=int, default=10, help="console clients in the loaded runs")
    parser.add_argument("--image-size", type=int, default=128, help="model input size of the random-weight bundle")
    parser.add_argument("--frame-size", default="640x480", help="synthetic frame size WIDTHxHEIGHT")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from fair_edge.bench.run import synthetic_bundle
    from fair_edge.bench.settings import parse_frames
    from fair_edge.export.bundle import load_bundle

    with tempfile.TemporaryDirectory(prefix="fair-edge-console-load-") as tmp:
        tmp = Path(tmp)
        images = synthetic_line(tmp / "line", size=parse_frames(args.frame_size))
        bundle = load_bundle(args.bundle) if args.bundle else synthetic_bundle(tmp / "bundle", 32, args.image_size,
                                                                                 calib_frames=images[:8])
        threshold = threshold_for(bundle, images)
        results = []
        for rep in range(args.repeats):
            for n in (0, args.clients):
                r = measure(bundle.root, tmp / "line", tmp / f"out-{rep}-{n}", clients=n, fps=args.fps,
                            frames=args.frames, threshold=threshold)
                print(json.dumps(r), flush=True)
                results.append(r)
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "date_utc":
              time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "runs": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

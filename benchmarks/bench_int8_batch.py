"""PatchCore INT8 on the CPU: does batching pay? ms per frame at batch 1 and B of the INT8 bundle (issue #29 item 2).

    python benchmarks/bench_int8_batch.py [--image-size 256] [--batches 1,4] [--rounds 7]
        [--seconds 1.0] [--threads 0] [--frames 1920x1080] [--profile] [--json runs/bench-int8-batch.json]

Builds one synthetic PatchCore INT8 bundle (random weights, its default 10 000-row random bank, as
``fair-edge bench --synthetic-model patchcore --precision int8`` does) and times, per batch:
  compute   what ``fair-edge bench BUNDLE --backend onnxruntime --mode compute`` times (with ``--threads``):
            CPU pre-processing of 1080p uint8 frames + the CPU INT8 graph (``model.int8-cpu.onnx``), the bundle's scorer;
  int8-cpu  the CPU INT8 graph alone on prepared (B, 3, S, S) inputs;
  int8-trt  the TensorRT Q/DQ graph (``model.int8.onnx``) alone: what ONNX Runtime runs without the CPU graph;
  fp32      the bundle's FP32 graph alone on the same inputs (the reference: batching paid there, #29 item 1).
Rounds interleave every (case, batch) so that the load of a shared machine falls on all alike; the report gives
the median over rounds, batch 1 / batch B per frame of those medians (> 1: batching pays) and the median of the
per-round ratios (each round's batch 1 and batch B timed seconds apart). ``--profile`` adds ONNX Runtime's
per-operator time (ms per frame, summed by op type, search nodes apart) of every graph at each batch.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench_bank_search import ms_per_frame   # run from benchmarks/: the script's folder is on sys.path
from fair_edge.bench.run import environment, synthetic_bundle, synthetic_frames, synthetic_model
from fair_edge.calibration.int8_cpu import CPU_INT8_ONNX
from fair_edge.runtime.backends import BundleScorer, CpuPreprocessor, OnnxRuntimeBackend, cpu_graph


def session(path: Path, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int, tmp: Path) -> dict[str, float]:
    """ms per frame by op type (search nodes apart: '/memory') of ``runs`` runs of the graph at ``path`` on
    ``x`` (B, 3, S, S), after three untimed runs (the arena grown: steady state, as the timed loop)."""
    s = session(path, threads, str(tmp / f"prof_{path.stem}_{len(x)}"))
    name = s.get_inputs()[0].name
    for _ in range(runs + 3):
        s.run(None, {name: x})
    events = json.loads(Path(s.end_profiling()).read_text())
    start = sorted(e["ts"] for e in events if e.get("name") == "model_run")[3]
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"] + (" /memory" if "/memory/" in e["name"] else "")] += e["dur"] / 1e3
    return {op: round(ms / runs / len(x), 3) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads; 0 = its default")
    ap.add_argument("--frames", default="1920x1080", help="WIDTHxHEIGHT of the compute case's uint8 frames")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    width, height = (int(v) for v in args.frames.split("x"))
    model = synthetic_model("patchcore", None, args.image_size)
    frames = synthetic_frames(height, width, count=8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = synthetic_bundle(tmp / "bundle", model, "int8", max_batch=max(batches),
                                  calib_frames=synthetic_frames(height, width, count=8, seed=1))
        graphs = {"int8-cpu": bundle.root / CPU_INT8_ONNX, "int8-trt": bundle.onnx_path,
                  "fp32": bundle.root / "model.fp32.onnx"}
        sessions = {name: session(path, args.threads) for name, path in graphs.items()}
        path, threshold, what = cpu_graph(bundle)  # as `--backend onnxruntime` selects it, with --threads
        scorer = BundleScorer(OnnxRuntimeBackend(path, bundle.model.input_names, threads=args.threads),
                              CpuPreprocessor(bundle.model, host=True), f"ONNX Runtime on the CPU ({what})", threshold)
        print(f"compute backend: {scorer.backend.path.name}", file=sys.stderr)
        rng = np.random.default_rng(0)
        inputs = {b: rng.random((b, 3, args.image_size, args.image_size), dtype=np.float32) for b in batches}
        times: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            for b in batches:
                chunk = [frames[i % len(frames)] for i in range(b)]
                times.setdefault(("compute", b), []).append(ms_per_frame(lambda: scorer.infer_frames(chunk), b, args.seconds))
                for name, s in sessions.items():
                    feed = {s.get_inputs()[0].name: inputs[b]}
                    times.setdefault((name, b), []).append(ms_per_frame(lambda: s.run(None, feed), b, args.seconds))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        profiles = ({f"{name} B={b}": op_profile(path, inputs[b], args.threads, 5, tmp)
                     for name, path in graphs.items() for b in batches} if args.profile else {})
        scorer.backend.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for (case, b), m in sorted(med.items()):
        one = med[(case, batches[0])]
        paired = statistics.median(t1 / t for t1, t in zip(times[(case, batches[0])], times[(case, b)]))
        rows.append({"case": case, "batch": b, "ms_per_frame": round(m, 2), "frames_per_s": round(1e3 / m, 2),
                     "batch1_over_batch": round(one / m, 3), "paired_ratio_median": round(paired, 3),
                     "rounds_ms": [round(t, 2) for t in times[(case, b)]]})
        print(f"{case:9s} B={b}: {m:8.2f} ms/frame ({1e3 / m:6.2f} frames/s)  B{batches[0]}/B{b} per frame {one / m:5.3f}"
              f"  (per-round ratios: median {paired:5.3f})")
    for key, ops in profiles.items():
        print(f"profile {key}: " + ", ".join(f"{op} {ms}" for op, ms in list(ops.items())[:8]) + " (ms/frame)")
    machine = environment(set())
    print(f"{machine['date_utc']} {machine['cpu']} ({machine['cpu_count']} cores); ORT {ort.__version__}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"command": "python " + " ".join(sys.argv), "machine": machine, "rows": rows, "profiles": profiles}
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Everything owed on a GPU, in one prepared run of at most 9 minutes on one H100 / H200.

Steps, in order of value, each a subprocess with its own time cap (a step that runs over is killed,
recorded as ``timeout`` and the run goes on; no step starts without its cap left in ``--budget``):

  1 gpu_tests       ``pytest -m gpu``: the fused kernel, CUDA graphs, NVRTC, on the real GPU
  2 preprocess      fused kernel vs unfused path per 1080p frame, batch 1 and 16, and tiled frames:
                    tiles cut on the host vs cropped in the launch (bench_preprocess.py)
  3 station         the station loop, c = 32 / 64 / 128, batches 1, 8, 32: CUDA graphs + fused kernel
                    vs eager + CPU pre-processing (``fair-edge bench``), best batch per width
  4 station_compile the same backend with ``torch.compile`` (compute mode, batch 1 and each width's
                    best batch from step 3; one compile per shape), compile seconds reported
  5 train_speed     training images/s per width, device-side vs CPU-side data (bench_train.py)
  6 elpv            a short ELPV mono training (c = 32, 256 px) and its evaluation (image AUROC)
  7 families        every other model family in the registry: a short train + eval each (PatchCore: its
                    one-pass fit; flags a family's training has no use for, e.g. --lr, are left out)
  8 family_engines  each of those runs built as an FP16 bundle with its TensorRT engine and timed by
                    ``fair-edge bench --backend tensorrt`` (PatchCore: backbone + bank search + blur in the
                    one engine; the bundle's memory-bank rows and MB reported)
  9 cameras         four cameras (#29): one cell, one model, frames batched across the cameras, against four
                    single-camera stations with a model copy each (``fair-edge bench --mode cameras``), on
                    torch-cuda (FAIR c = 32, 1080p frames), then on TensorRT with step 8's PatchCore engine
                    when it was built. Last and small: the caps of steps 1-8 add up to 535 of the 540 s, so
                    it runs when they finished at least 40 s under their caps, else it is listed as skipped

Output (``--out``): ``gpu_evidence.json`` (environment, command, per step: cap, seconds, status,
parsed results), ``gpu_evidence.md`` (rows for BENCHMARKS.md) and ``logs/STEP.log`` per step.

``--dry-run`` runs the same steps on the CPU with tiny sizes (``tests/test_gpu_evidence.py``, CI).

On the GPU machine (Python 3.12 with torch (CUDA), cuda-bindings, cupy, onnx, onnxruntime, OpenCV,
typer, pyyaml, scikit-learn already installed; the rest travels as wheels in ``wheels/``, built here
with ``pip download --only-binary :all: --python-version 3.12 -d wheels elpv-dataset rich pymodbus``):

    pip install --no-index --no-deps wheels/*.whl && pip install --no-deps --no-build-isolation -e . \
      && python benchmarks/gpu_evidence.py --out runs/gpu-evidence

then copy ``runs/gpu-evidence/gpu_evidence.md`` rows into BENCHMARKS.md with the GPU, date and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [PY, "-m", "fair_edge.cli"]


@dataclass
class Context:
    """What the steps share: dry run or not, the output folder, results of earlier steps."""

    dry: bool
    out: Path
    results: dict
    data: str = "elpv:mono"

    def size(self, gpu, dry):
        return dry if self.dry else gpu


@dataclass(frozen=True)
class Step:
    """name: key in the JSON. cap_s: seconds allowed on the GPU (dry_cap_s on the CPU).
    commands: argv lists, built when the step starts (may use earlier results). collect: parses its files."""

    name: str
    cap_s: float
    dry_cap_s: float
    commands: Callable[[Context], list[list[str]]]
    collect: Callable[[Context], tuple[dict, list[str]]]


# ----------------------------------------------------------------------------- steps
def _widths(ctx: Context) -> tuple[int, ...]:
    return ctx.size((32, 64, 128), (32,))  # the CLI takes the paper's widths only; the dry run's size is 32 px


def gpu_tests(ctx: Context) -> list[list[str]]:
    files = ["tests/test_preprocess_gpu.py"] if ctx.dry else []
    return [[PY, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={ctx.out / 'gpu_tests.xml'}",
             *files]]


def collect_gpu_tests(ctx: Context) -> tuple[dict, list[str]]:
    suite = ET.parse(ctx.out / "gpu_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts, [f"| gpu tests (`pytest -m gpu`) | {counts['passed']} passed, {counts['failures'] + counts['errors']} "
                    f"failed, {counts['skipped']} skipped |"]


def preprocess(ctx: Context) -> list[list[str]]:
    extra = ["--device", "cpu", "--iters", "2", "--batches", "1", "2", "--frames", "320x240"] if ctx.dry else []
    return [[PY, "benchmarks/bench_preprocess.py", "--json", str(ctx.out / "preprocess.json"), *extra]]


def collect_preprocess(ctx: Context) -> tuple[dict, list[str]]:
    data = json.loads((ctx.out / "preprocess.json").read_text())
    rows = []
    for r in data["rows"]:
        fused = r["fused_device_us"]
        ratio = f"{r['unfused_us'] / fused:.1f}x" if fused else "n/a"
        rows.append(f"| pre-processing {data['frames']} batch {r['batch']} | unfused {r['unfused_us']:.1f} us/frame, "
                    f"fused host {_us(r['fused_host_us'])}, fused device {_us(fused)} ({ratio}) |")
        if r.get("tiled"):
            t = r["tiled"]
            rows.append(f"| tiled pre-processing {data['frames']} batch {r['batch']}, {t['tiles']} tiles of {t['tile']} px "
                        f"| host-cut {_us(t['host_cut_us'])}, cropped in the launch {_us(t['in_launch_us'])} "
                        f"({t['host_cut_us'] / t['in_launch_us']:.1f}x) |")
    return data, rows


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} us/frame"


def _bench(ctx: Context, width: int, name: str, extra: list[str]) -> list[str]:
    size = ctx.size(["--image-size", "256", "--frames", "1920x1080", "--backend", "torch-cuda"],
                    ["--image-size", "32", "--frames", "64x48", "--backend", "torch-cpu", "--threads", "1"])
    return [*CLI, "bench", "--synthetic-width", str(width), *size, "--json", str(ctx.out / f"{name}_c{width}.json"), *extra]


def station(ctx: Context) -> list[list[str]]:
    timing = ctx.size(["--batches", "1,8,32", "--seconds", "3", "--warmup", "1"],
                      ["--batches", "1,2", "--seconds", "0.3", "--warmup", "0.1"])
    return [_bench(ctx, c, "station", [*timing, "--mode", "loop"]) for c in _widths(ctx)]


def _best_batch(ctx: Context, width: int) -> int:
    best = ctx.results.get("station", {}).get(str(width), {}).get("best_batch", {})
    return int(best.get("backend/loop", {}).get("batch", ctx.size(8, 2)))


def _compile_batches(ctx: Context, width: int) -> str:
    """Batch 1 and the width's best loop batch (one compile each); batch 1 alone in the dry run."""
    best = _best_batch(ctx, width)
    return "1" if ctx.dry or best == 1 else f"1,{best}"


def station_compile(ctx: Context) -> list[list[str]]:
    timing = ctx.size(["--seconds", "3", "--warmup", "1"], ["--seconds", "0.3", "--warmup", "0"])
    return [_bench(ctx, c, "compile", [*timing, "--mode", "compute", "--compile", "--baseline", "none",
                                       "--batches", _compile_batches(ctx, c)])
            for c in _widths(ctx)]


def _bench_rows(ctx: Context, name: str, title: str) -> tuple[dict, list[str]]:
    results, rows = {}, []
    for width in _widths(ctx):
        path = ctx.out / f"{name}_c{width}.json"
        if not path.is_file():
            rows.append(f"| {title} c={width} | not run (time cap) |")
            continue
        report = results[str(width)] = json.loads(path.read_text())
        for r in report["results"]:
            ratio = f", {r['vs_baseline']:.2f}x baseline" if r["vs_baseline"] else ""
            rows.append(f"| {title} c={width} {r['role']} {r['backend']} ({r['preprocess']} pre) {r['mode']} batch "
                        f"{r['batch']} | {r['fps']:.1f} frames/s{ratio}, p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms |")
        for batch, seconds in report.get("compile_seconds", {}).items():
            rows.append(f"| {title} c={width} compile batch {batch} | {seconds:.1f} s |")
    return results, rows


def train_speed(ctx: Context) -> list[list[str]]:
    size = ctx.size(["--widths", "32", "64", "128", "--image-size", "256", "--steps", "30", "--warmup", "5",
                     "--device", "cuda", "--workers", "4"],
                    ["--widths", "32", "--image-size", "32", "--steps", "2", "--warmup", "1", "--device", "cpu",
                     "--workers", "0"])
    return [[PY, "benchmarks/bench_train.py", "--data", ctx.data, "--batch", "8", *size,
             "--out", str(ctx.out / "train_speed.json")]]


def collect_train_speed(ctx: Context) -> tuple[dict, list[str]]:
    data = json.loads((ctx.out / "train_speed.json").read_text())
    return data, [f"| training c={r['width']} batch {r['batch']} | device-side {r['device_side']['images_per_s']:.1f} "
                  f"images/s, CPU-side {r['cpu_side']['images_per_s']:.1f} ({r['ratio_device_over_cpu']:.2f}x) |"
                  for r in data["results"]]


def _train_eval(ctx: Context, name: str, model: list[str], family: str = "fair") -> list[list[str]]:
    """Train (with the flags ``family``'s training settings have) and evaluate one run."""
    from fair_edge.models.registry import get_family
    from fair_edge.models.training_contract import config_fields

    fields = config_fields(get_family(family).training().default_train_config())
    run = ctx.out / name
    size = ctx.size(["--image-size", "256", "--device", "cuda"], ["--image-size", "32", "--cutoff", "4", "--device", "cpu"])
    steps = ["--steps", ctx.size("1500", "2")] if "steps" in fields else []
    lr = ["--lr", "1e-3"] if "lr" in fields else []
    return [[*CLI, "train", ctx.data, *model, "--batch", "8", *lr, *steps, *size, "--out", str(run), "--overwrite"],
            [*CLI, "eval", str(run / "final.pt"), ctx.data, "--device", ctx.size("cuda", "cpu"),
             "--out", str(run / "eval")]]


def elpv(ctx: Context) -> list[list[str]]:
    return _train_eval(ctx, "elpv-w32", ["--model", "fair", "--width", "32"])


def _metrics_row(ctx: Context, name: str, title: str) -> tuple[dict, list[str]]:
    metrics = json.loads((ctx.out / name / "eval" / "metrics.json").read_text())
    return metrics, [f"| {title} | image AUROC {metrics['image_auroc']:.4f} on {metrics['normal']} normal + "
                     f"{metrics['defective']} defective images of {ctx.data} |"]


def other_families() -> list[str]:
    """Model families in the registry other than FAIR (the steps above cover FAIR)."""
    from fair_edge.models.registry import FAMILIES, WIDTH_FAMILY

    return [key for key in FAMILIES if key != WIDTH_FAMILY]


def families(ctx: Context) -> list[list[str]]:
    return [cmd for family in other_families()
            for cmd in _train_eval(ctx, f"family-{family}", ["--model", family], family)]


def collect_families(ctx: Context) -> tuple[dict, list[str]]:
    results, rows = {}, []
    for family in other_families():
        results[family], more = _metrics_row(ctx, f"family-{family}", f"ELPV mono, family {family}")
        rows += more
    return results, rows or ["| other model families | none registered besides FAIR |"]


def family_engines(ctx: Context) -> list[list[str]]:
    """FP16 bundle with its engine of each family run of step 7, then `fair-edge bench` on TensorRT."""
    engine = ctx.size([], ["--no-engine"])
    timing = ctx.size(["--backend", "tensorrt", "--frames", "1920x1080", "--batches", "1,8", "--seconds", "2",
                       "--warmup", "1"],
                      ["--backend", "onnxruntime", "--frames", "64x48", "--batches", "1", "--seconds", "0.3",
                       "--warmup", "0.1", "--threads", "1"])
    cmds = []
    for family in other_families():
        bundle = ctx.out / f"engine-{family}"
        cmds += [[*CLI, "build", str(ctx.out / f"family-{family}" / "final.pt"), "--fp16", *engine, "--out", str(bundle)],
                 [*CLI, "bench", str(bundle), *timing, "--mode", "compute", "--baseline", "none",
                  "--json", str(ctx.out / f"engine-{family}.json")]]
    return cmds


def collect_family_engines(ctx: Context) -> tuple[dict, list[str]]:
    results, rows = {}, []
    for family in other_families():
        report = results[family] = json.loads((ctx.out / f"engine-{family}.json").read_text())
        manifest = json.loads((ctx.out / f"engine-{family}" / "bundle.json").read_text())
        facts = "; ".join(f"{k} {v}" for k, v in report["bundle"].get("facts", {}).items())
        built = "engine built" if manifest.get("engine") else "no engine"
        for r in report["results"]:
            rows.append(f"| family {family} fp16 ({built}) {r['backend']} batch {r['batch']} | {r['fps']:.1f} frames/s, "
                        f"p50 {r['p50_ms']:.2f} ms{'; ' + facts if facts else ''} |")
    return results, rows


CAMERAS = 4   # the camera count of step 9


def cameras(ctx: Context) -> list[list[str]]:
    """Step 9: ``--mode cameras`` on torch-cuda (synthetic FAIR c = 32), then on step 8's PatchCore engine
    (TensorRT; the dry run: that bundle without an engine on ONNX Runtime) when step 8 built it."""
    counts = str(ctx.size(CAMERAS, 2))
    rounds = ctx.size(["--rounds", "2", "--seconds", "2", "--warmup", "0.5"],
                      ["--rounds", "1", "--seconds", "0.3", "--warmup", "0.1"])
    timing = ["--mode", "cameras", "--cameras", counts, *rounds]
    cmds = [_bench(ctx, 32, "cameras", timing)]
    engine = ctx.out / "engine-patchcore"
    if (engine / "bundle.json").is_file():
        backend = ctx.size(["--backend", "tensorrt", "--frames", "1920x1080"],
                           ["--backend", "onnxruntime", "--frames", "64x48", "--threads", "1"])
        cmds.append([*CLI, "bench", str(engine), *backend, *timing, "--json", str(ctx.out / "cameras_engine.json")])
    return cmds


def collect_cameras(ctx: Context) -> tuple[dict, list[str]]:
    """Rows of step 9: per arrangement frames/s and latency, the cell / stations ratio on the cell's row."""
    results, rows = {}, []
    for key, path, what in (("torch", ctx.out / "cameras_c32.json", "FAIR c=32"),
                            ("engine", ctx.out / "cameras_engine.json", "PatchCore engine")):
        if not path.is_file():
            continue
        report = results[key] = json.loads(path.read_text())
        for r in report["cameras"]["rows"]:
            ratio = "" if r["vs_stations"] is None else f", {r['vs_stations']:.2f}x the stations"
            rows.append(f"| {r['cameras']} cameras {what} {r['backend']} {r['arrangement']} ({r['models']} model(s), "
                        f"max batch {r['max_batch']}, mean {r['mean_batch']:.2f}) | {r['fps']:.1f} frames/s{ratio}, "
                        f"p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms |")
    if not results:
        raise FileNotFoundError("no cameras_*.json")
    return results, rows


STEPS = (
    Step("gpu_tests", 75, 60, gpu_tests, collect_gpu_tests),
    Step("preprocess", 35, 30, preprocess, collect_preprocess),
    Step("station", 110, 60, station, lambda ctx: _bench_rows(ctx, "station", "station loop")),
    Step("station_compile", 70, 120, station_compile, lambda ctx: _bench_rows(ctx, "compile", "torch.compile")),
    Step("train_speed", 50, 60, train_speed, collect_train_speed),
    Step("elpv", 100, 90, elpv, lambda ctx: _metrics_row(ctx, "elpv-w32", "short training c=32, 1500 steps")),
    Step("families", 45, 120, families, collect_families),
    Step("family_engines", 50, 150, family_engines, collect_family_engines),
    Step("cameras", 45, 60, cameras, collect_cameras),
)


# ----------------------------------------------------------------------------- running
def run_command(argv: list[str], timeout: float, log) -> int | None:
    """Run ``argv`` in its own process group from the repository root; None when it ran past ``timeout``."""
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def run_step(step: Step, ctx: Context, cap: float) -> dict:
    """One step: its commands in order within ``cap`` seconds, then its results parsed."""
    start, status, code = time.monotonic(), "ok", 0
    with (ctx.out / "logs" / f"{step.name}.log").open("w") as log:
        for argv in step.commands(ctx):
            code = run_command(argv, cap - (time.monotonic() - start), log)
            if code != 0:
                status = "timeout" if code is None else "failed"
                break
    record = {"name": step.name, "cap_s": cap, "seconds": round(time.monotonic() - start, 1), "status": status,
              "returncode": code}
    try:
        record["result"], record["markdown"] = step.collect(ctx)
    except (OSError, KeyError, ValueError, ET.ParseError, IndexError) as exc:  # nothing (complete) to parse
        record["result"], record["markdown"] = {}, [f"| {step.name} | no results ({status}): {type(exc).__name__} |"]
        if status == "ok":
            record["status"] = "failed"
    ctx.results[step.name] = record["result"]
    return record


def environment() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "gpu": gpu,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-evidence"))
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny sizes")
    parser.add_argument("--budget", type=float, default=540.0, help="total seconds for all steps (9 minutes)")
    parser.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS], help="run only these steps")
    parser.add_argument("--data", default="elpv:mono", help="dataset of the training steps (a tiny one for tests)")
    args = parser.parse_args(argv)
    env = environment()
    if not args.dry_run and env["gpu"] is None:
        print("gpu_evidence: no CUDA GPU visible to torch; run with --dry-run on a CPU.", file=sys.stderr)
        return 2
    ctx = Context(args.dry_run, args.out.resolve(), {}, args.data)
    (ctx.out / "logs").mkdir(parents=True, exist_ok=True)
    report = {"command": shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "dry_run": args.dry_run, "budget_s": args.budget, "environment": env, "steps": []}
    start = time.monotonic()
    for step in (s for s in STEPS if not args.steps or s.name in args.steps):
        cap = step.dry_cap_s if args.dry_run else step.cap_s
        left = args.budget - (time.monotonic() - start)
        if left < cap:
            report["steps"].append({"name": step.name, "cap_s": cap, "status": "skipped", "seconds": 0.0,
                                    "markdown": [f"| {step.name} | skipped: {left:.0f} s of the budget left |"]})
            continue
        record = run_step(step, ctx, cap)
        report["steps"].append(record)
        print(f"{step.name}: {record['status']} in {record['seconds']:.1f} s (cap {cap:.0f} s)", flush=True)
    report["total_s"] = round(time.monotonic() - start, 1)
    write_report(report, ctx.out)
    return 0 if all(s["status"] == "ok" for s in report["steps"]) else 1


def write_report(report: dict, out: Path) -> None:
    env = report["environment"]
    (out / "gpu_evidence.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"GPU evidence: {env['gpu'] or 'CPU (dry run)'}, torch {env['torch']}, {env['date_utc']}, "
             f"{report['total_s']:.0f} s; `{report['command']}`", "", "| step | result |", "| --- | --- |"]
    for step in report["steps"]:
        lines += [f"| **{step['name']}** ({step['status']}, {step['seconds']:.0f} s of {step['cap_s']:.0f} s) | |",
                  *step["markdown"]]
    (out / "gpu_evidence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

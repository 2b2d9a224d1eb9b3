"""Training throughput (images/s) per UNet width: the device-side data pipeline against a CPU-side one.

    python benchmarks/bench_train.py [--data elpv:mono] [--widths 32 64 128] [--image-size 256] [--batch 8]
        [--steps 50] [--warmup 10] [--device auto] [--workers 4] [--out runs/bench-train.json]

For each width, one ``fair_edge.models.fair.train.Trainer`` (same model, Adam, scheduler, loss and bf16 autocast
on CUDA as ``fair-edge train``) is timed with two data pipelines, in the same run:

  device-side  ``Trainer.train_step``: the resized colour images already live on the device; rotation,
               anomaly synthesis, gray and FFT high-pass are batched torch ops there.
  CPU-side     a ``torch.utils.data.DataLoader`` (``--workers`` processes, pinned memory on CUDA) whose
               item k is training batch k prepared on the CPU with the same functions (``random_rotate``,
               ``AnomalySynthesizer``, ``model_input``) and a CPU generator; the batch is copied to the
               device (non_blocking) and only UNet + loss + optimizer step run there
               (``Trainer.optimise``, the second half of ``train_step``).

Synthesis works per batch, not per sample: FAIR's no-DTD texture is another image of the same batch.
Each timing runs ``--warmup`` steps, then ``--steps`` steps between two clock reads, each preceded by
``torch.cuda.synchronize``. Images/s = steps x batch / seconds. Both pipelines end every step with
``float(loss)`` as the Trainer does. "loader-only" times the CPU-side DataLoader alone (no model): the
most the CPU-side pipeline can deliver with these workers. The DataLoader prefetches up to
2 x workers batches during warm-up, which can only flatter the CPU-side numbers.
A JSON report (device, torch version, date, command line, settings, results) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fair_edge.training.data import DatasetSplit, load_dataset
from fair_edge.errors import FairEdgeError
from fair_edge.preprocess import HighPass, PreprocessConfig, model_input
from fair_edge.models.fair.synthesis import AnomalySynthesizer, SynthesisConfig, random_rotate
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.train import TrainConfig, Trainer
from fair_edge.training.loop import resolve_device

PIPELINES = {
    "device_side": "Trainer.train_step: images held on the device; rotate, synthesis, gray, high-pass, "
                   "UNet, loss, step all there",
    "cpu_side": "DataLoader workers do rotate, synthesis, gray, high-pass on the CPU; non_blocking copy; "
                "Trainer.optimise (UNet, loss, step) on the device",
    "loader_only": "the cpu_side DataLoader alone, no model: the most it can deliver",
}


class CpuBatches(Dataset):
    """Item k: training batch k prepared on the CPU, as ``Trainer.train_step`` prepares it on the device.

    images: (N, 3, S, S) float32 RGB in [0, 1], CPU. batches: per step, (B,) int64 indices into images.
    Returns (x (B, C, S, S) float32 high-pass model input, clean (B, 3, S, S) float32 rotated target),
    CPU tensors. Batch k draws its random numbers from a CPU generator seeded with (seed, k), so any
    worker can make any batch.
    """

    def __init__(self, images: torch.Tensor, batches: list[torch.Tensor], synthesis: SynthesisConfig,
                 preprocess: PreprocessConfig, seed: int = 0) -> None:
        self.images, self.batches, self.seed = images, batches, seed
        self.synthesis = synthesis
        self.synthesizer = AnomalySynthesizer(synthesis)
        self.highpass = HighPass(preprocess)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        with torch.no_grad():
            clean = random_rotate(self.images[self.batches[k]], self.synthesis, generator)
            corrupted, _ = self.synthesizer(clean, generator)
            return model_input(corrupted, self.highpass), clean


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], float], warmup: int, steps: int, batch: int, device: torch.device) -> dict:
    """Run step(0..warmup-1) untimed, then time step(warmup..warmup+steps-1); returns images/s and more."""
    for k in range(warmup):
        step(k)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    loss = float("nan")
    for k in range(warmup, warmup + steps):
        loss = step(k)
    synchronize(device)
    seconds = time.perf_counter() - start
    result = {"images_per_s": steps * batch / seconds, "seconds": seconds, "steps": steps, "last_loss": loss}
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def make_loader(dataset: CpuBatches, workers: int, device: torch.device) -> DataLoader:
    """One item = one whole batch (batch_size=None); pinned memory when the target is a GPU."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda")


def drain(batches: Iterator) -> None:
    """Exhaust a DataLoader iterator so that it shuts its workers down."""
    for _ in batches:
        pass


def bench_width(width: int, split: DatasetSplit, args: argparse.Namespace, device: torch.device, out_dir: Path) -> dict:
    """Time the three pipelines for one UNet width on one Trainer (same model and optimizer)."""
    preprocess = PreprocessConfig(image_size=args.image_size)
    n_steps = args.warmup + args.steps
    cfg = TrainConfig(batch=args.batch, steps=3 * n_steps, amp=True)
    trainer = Trainer(split, preprocess, FairSettings(width=width), cfg, out_dir, device)
    batch = trainer.batch
    results = {"width": width, "batch": batch, "train_images": len(trainer.images)}
    results["device_side"] = time_steps(trainer.train_step, args.warmup, args.steps, batch, device)

    dataset = CpuBatches(trainer.images.cpu(), [trainer.batch_indices(k) for k in range(n_steps)],
                         cfg.synthesis, preprocess, cfg.seed)
    batches = iter(make_loader(dataset, args.workers, device))

    def cpu_fed_step(_k: int) -> float:
        x, clean = next(batches)
        return trainer.optimise(x.to(device, non_blocking=True), clean.to(device, non_blocking=True))

    results["cpu_side"] = time_steps(cpu_fed_step, args.warmup, args.steps, batch, device)
    drain(batches)

    batches = iter(make_loader(dataset, args.workers, device))

    def fetch_only(_k: int) -> float:
        next(batches)
        return 0.0

    results["loader_only"] = time_steps(fetch_only, args.warmup, args.steps, batch, torch.device("cpu"))
    del results["loader_only"]["last_loss"]  # no model in this one
    drain(batches)
    results["ratio_device_over_cpu"] = (results["device_side"]["images_per_s"]
                                        / results["cpu_side"]["images_per_s"])
    return results


def cpu_name() -> str:
    """The host CPU's model name (from /proc/cpuinfo on Linux), else platform.processor()."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "host_cpus": os.cpu_count(), "host_cpu": cpu_name(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "python_executable": sys.executable, "platform": platform.platform()}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; found {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; found {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="elpv:mono", help="dataset spec for fair_edge.training.data.load_dataset")
    parser.add_argument("--widths", type=positive_int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--image-size", type=positive_int, default=256, help="multiple of 16")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--steps", type=positive_int, default=50, help="timed steps per pipeline")
    parser.add_argument("--warmup", type=non_negative_int, default=10, help="untimed steps before each timing")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--workers", type=non_negative_int, default=4, help="DataLoader workers (CPU-side)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train.json"))
    return parser.parse_args(argv)


def print_table(rows: list[dict]) -> None:
    print(f"{'width':>5} {'batch':>5} {'device-side':>12} {'CPU-side':>10} {'ratio':>6} {'loader-only':>12}"
          "  (images/s; ratio = device-side / CPU-side)")
    for r in rows:
        print(f"{r['width']:>5} {r['batch']:>5} {r['device_side']['images_per_s']:>12.1f} "
              f"{r['cpu_side']['images_per_s']:>10.1f} {r['ratio_device_over_cpu']:>5.2f}x "
              f"{r['loader_only']['images_per_s']:>12.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args, argv)
    except FairEdgeError as exc:
        print(f"bench_train: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    device = resolve_device(args.device)
    env = environment(device)
    split = load_dataset(args.data)
    print(f"{env['device_name']} | torch {env['torch']} | data {args.data} ({len(split.train)} train images) | "
          f"S={args.image_size} batch {args.batch} | {args.warmup} warm-up + {args.steps} timed steps | "
          f"{args.workers} DataLoader workers | bf16 autocast {'on' if device.type == 'cuda' else 'off (CPU)'}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:  # Trainer needs an out_dir; unused
        for width in args.widths:
            rows.append(bench_width(width, split, args, device, Path(scratch)))
            r = rows[-1]
            print(f"  c={width}: device-side {r['device_side']['images_per_s']:.1f}, CPU-side "
                  f"{r['cpu_side']['images_per_s']:.1f}, loader-only {r['loader_only']['images_per_s']:.1f} images/s")
    print_table(rows)
    report = {
        "benchmark": "training throughput, device-side vs CPU-side data pipeline",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv) if argv is None else [__file__, *argv],
        "environment": env,
        "pipelines": PIPELINES,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"amp_bf16": device.type == "cuda", "pin_memory": device.type == "cuda",
           "preprocess": PreprocessConfig(image_size=args.image_size).to_dict(),
           "synthesis": SynthesisConfig().to_dict()},
        "data": split.summary(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

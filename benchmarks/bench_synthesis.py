"""FAIR's anomaly synthesis (rotation + Perlin/CutPaste corruption) per training batch, on the CPU.

The timing that tests/test_synthesis.py used to print: a batch of 8 x 3 x 256 x 256 took ~0.1 s on an
idle 2-core machine; a per-pixel Python loop would take minutes. Wall clock, after one warm-up batch.

    python benchmarks/bench_synthesis.py [--batch 8] [--size 256] [--iters 10] [--threads N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fair_edge.models.fair.synthesis import AnomalySynthesizer, SynthesisConfig, random_rotate


def time_batches(batch: int, size: int, iters: int) -> list[float]:
    """Seconds per ``synth(random_rotate(clean))`` call on a (batch, 3, size, size) float32 batch."""
    clean = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    synth, cfg, g = AnomalySynthesizer(), SynthesisConfig(), torch.Generator().manual_seed(1)
    synth(random_rotate(clean, cfg, g), g)  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        synth(random_rotate(clean, cfg, g), g)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    times_ms = [1000.0 * t for t in time_batches(args.batch, args.size, args.iters)]
    result = {"batch": args.batch, "size": args.size, "iters": args.iters, "threads": torch.get_num_threads(),
              "median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms)}
    print(f"synthesis, batch {args.batch} x 3 x {args.size} x {args.size}, CPU ({result['threads']} threads): "
          f"median {result['median_ms']:.0f} ms, min {result['min_ms']:.0f} ms, max {result['max_ms']:.0f} ms "
          f"over {args.iters} batches")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

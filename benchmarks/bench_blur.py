"""The map blur's cost: the separable Gaussian (``models.kernels.GaussianBlur``, two 1-D Convs) against the
k x k 2-D Conv the families ran before, on (B, 1, S, S) float32 maps, one torch thread, interleaved rounds.

    python benchmarks/bench_blur.py [--size 256] [--batch 8] [--rounds 15] [--sigmas 4 8 16]

Prints, per sigma, the median ms per batch of each and their ratio (2-D / separable) with its range over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fair_edge.models.kernels import GaussianBlur, gaussian_taps


def conv2d_blur(maps: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    p = len(taps) // 2
    return F.conv2d(F.pad(maps, (p, p, p, p), mode="replicate"), torch.outer(taps, taps)[None, None])


def timed(fn, maps: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(maps)
    return 1000 * (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    maps = torch.rand(args.batch, 1, args.size, args.size)
    print("| sigma px | taps | 2-D Conv ms | separable ms | ratio (median, range) |\n|---|---|---|---|---|")
    with torch.no_grad():
        for sigma in args.sigmas:
            blur, taps = GaussianBlur(sigma), gaussian_taps(sigma)
            torch.testing.assert_close(blur(maps), conv2d_blur(maps, taps), rtol=1e-4, atol=1e-5)
            full, sep = [], []
            for _ in range(args.rounds):
                full.append(timed(lambda m: conv2d_blur(m, taps), maps))
                sep.append(timed(blur, maps))
            ratios = [a / b for a, b in zip(full, sep)]
            print(f"| {sigma:g} | {len(taps)} | {statistics.median(full):.1f} | {statistics.median(sep):.1f} | "
                  f"{statistics.median(ratios):.1f} ({min(ratios):.1f}-{max(ratios):.1f}) |")


if __name__ == "__main__":
    main()

"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling, Roth et al. CVPR 2022, sec. 3.2).

Iterative farthest-point selection: start from one point, then repeatedly take the point farthest
from everything chosen so far. Distances are computed on a random linear projection of the
features to ``PROJECTION_DIM`` dimensions (Johnson-Lindenstrauss), as the paper does to make the
selection cheap; the chosen *indices* then pick rows of the full-dimensional features.

Vectorised: a running (N,) vector holds each point's squared distance to the nearest chosen point;
each iteration is one (N, d) x (d,) product and one elementwise minimum, on the features' device.
"""

from __future__ import annotations

from typing import Callable

import torch

from fair_edge.errors import ConfigError

PROJECTION_DIM = 128


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """(N, D) float32 -> (N, min(D, dim)) float32: features times a seeded Gaussian (D, dim) / sqrt(dim)."""
    n, d = features.shape
    if d <= dim:
        return features
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(d, dim, generator=gen).to(features.device) / dim ** 0.5
    return features @ matrix


def greedy_coreset(features: torch.Tensor, count: int, seed: int = 0, projection_dim: int = PROJECTION_DIM,
                   on_progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Indices (count,) int64 of a greedy k-center coreset of ``features`` (N, D) float32, any device.

    The first point is drawn with ``seed``; ``count`` >= N returns every index (in order).
    on_progress(done, count) is called every 256 selections and at the end.
    """
    n = features.shape[0]
    if count < 1:
        raise ConfigError(f"a coreset needs at least 1 point; found count={count}.")
    if count >= n:
        return torch.arange(n, device=features.device)
    x = random_projection(features.float(), projection_dim, seed)
    sq = (x * x).sum(1)
    chosen = torch.empty(count, dtype=torch.int64, device=x.device)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen[0] = first
    nearest = torch.full((n,), float("inf"), device=x.device)
    last = first
    for i in range(1, count):
        # squared distance to the point chosen last: ||x||^2 - 2 x.c + ||c||^2
        d = sq - 2.0 * (x @ x[last]) + sq[last]
        torch.minimum(nearest, d, out=nearest)
        last = int(torch.argmax(nearest))
        chosen[i] = last
        if on_progress is not None and i % 256 == 0:
            on_progress(i, count)
    if on_progress is not None:
        on_progress(count, count)
    return chosen


def bank_neighbours(bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """(M, k) int64: for each bank row its ``k`` nearest bank rows (itself first), by Euclidean distance.

    bank: (M, D) float32. Computed in chunks of ``chunk`` rows so memory stays (chunk, M).
    """
    m = bank.shape[0]
    k = min(k, m)
    sq = (bank * bank).sum(1)
    out = []
    for start in range(0, m, chunk):
        rows = bank[start : start + chunk]
        d = sq[start : start + chunk, None] - 2.0 * rows @ bank.T + sq[None, :]
        d[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = -1.0  # itself first
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out)

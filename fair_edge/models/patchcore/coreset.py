"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling, Roth et al. CVPR 2022, sec. 3.2).

Iterative farthest-point selection: start from one point, then repeatedly take the point farthest
from everything chosen so far. Distances are computed on a random linear projection of the
features to ``PROJECTION_DIM`` dimensions (Johnson-Lindenstrauss), as the paper does to make the
selection cheap; the chosen *indices* then pick rows of the full-dimensional features.

Vectorised: a running (N,) vector holds each point's squared distance to the nearest chosen point;
each selection is one (A, d) x (d,) product over the A points still in the running (``greedy_coreset``:
lazy updates, exact) and one elementwise minimum, on the features' device.

Memory: the distances of all N points to a batch of chosen ones are computed in (N, step) blocks of at most
``CHUNK_BYTES`` (or ``MIN_STEP`` columns; ``distance_step``), in place, so the selection needs one such block plus a
few (N,) vectors beside the features (``greedy_coreset_bytes``); ``bank_neighbours`` bounds its blocks the same way.
The blocks cut the 256-column blocks used before, so the coreset is the same (``column_blocks``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from fair_edge.errors import ConfigError

PROJECTION_DIM = 128
# share of the points each selection updates (greedy_coreset); the result does not depend on it, the time does:
# 50 000 random 128-d points to 5 000, one core: 11.2 s CPU updating all, 3.3 s at 0.125, 2.5 s at 0.05, 2.6 s at 0.02
ACTIVE_SHARE = 0.05
# bytes of one (N, step) float32 distance block (_squared_to, bank_neighbours): the coreset's memory beside the
# features. 0.8 M 128-d patches (3.2 MB a column): the budget's 20 columns raised to MIN_STEP = 32, 98 MiB a block,
# where 256 columns in three temporaries took 2.4 GiB (and 4x the time: 1 024 columns on 2 cores took 8.7 s, now
# 2.6 s; 2.1 s in blocks of 256)
CHUNK_BYTES = 64 << 20
MIN_STEP = 32  # columns of a block at least (narrower blocks take other BLAS kernels: other rounding, slower)


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """(N, D) float32 -> (N, min(D, dim)) float32: features times a seeded Gaussian (D, dim) / sqrt(dim)."""
    n, d = features.shape
    if d <= dim:
        return features
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(d, dim, generator=gen).to(features.device) / dim ** 0.5
    return features @ matrix


def distance_step(rows: int, budget: int | None = None, most: int = 256) -> int:
    """Columns of one (rows, step) float32 distance block of at most ``budget`` bytes (default ``CHUNK_BYTES``):
    MIN_STEP..most (MIN_STEP columns when even those exceed the budget; ``most`` when smaller)."""
    budget = CHUNK_BYTES if budget is None else budget
    return max(min(MIN_STEP, most), min(most, budget // (4 * max(rows, 1))))


def column_blocks(count: int, step: int, block: int = 256) -> list[tuple[int, int]]:
    """[start, stop) ranges covering ``count`` columns: the blocks of ``block`` that ``_squared_to`` (256) and
    ``bank_neighbours`` (its ``chunk`` rows) always used, each cut into equal parts (+-1) of at most ``step``. A part
    of a cut block is at least step // 2 wide (16 at MIN_STEP), and BLAS computes a column of such a block as of the
    wide one (MKL: any block of 12 or more), so the distances, the coreset and the neighbours are those of the wide
    blocks; a block no wider than ``step`` is kept whole."""
    out = []
    for start in range(0, count, block):
        width = min(block, count - start)
        parts = -(-width // step)
        size, extra = divmod(width, parts)
        for i in range(parts):
            stop = start + size + (i < extra)
            out.append((start, stop))
            start = stop
    return out


def squared_norms(x: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """(N,) float32 ||x_i||^2 of ``x`` (N, d), ``rows`` rows at a time: (x * x).sum(1) without its (N, d) temporary."""
    return torch.cat([(part * part).sum(1) for part in x.split(rows)]) if len(x) else x.new_zeros(0)


def _squared_to(x: torch.Tensor, sq: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(N,) squared distance of every row of ``x`` (N, d) to the nearest of ``x[rows]``, in (N, step) blocks of at
    most ``CHUNK_BYTES`` (``distance_step``, ``column_blocks``), each computed in place: ||x_i||^2 - 2 x_i.x_j +
    ||x_j||^2 in that order of operations, the numbers of one (N, 256) block computed out of place."""
    out = torch.full((x.shape[0],), float("inf"), device=x.device)
    for start, stop in column_blocks(len(rows), distance_step(x.shape[0])):
        part = rows[start:stop]
        d = torch.mm(x, x[part].T)  # the one (N, step) block
        d.mul_(-2.0).add_(sq[:, None]).add_(sq[part][None, :])
        torch.minimum(out, d.amin(1), out=out)
        del d
    return out


def greedy_coreset_bytes(points: int, dim: int, projection_dim: int = PROJECTION_DIM,
                         active_share: float = ACTIVE_SHARE) -> int:
    """Bytes ``greedy_coreset`` needs beside ``points`` x ``dim`` float32 features: the projection (when dim >
    projection_dim), one distance block (``CHUNK_BYTES`` at most), the active points' copy and about eight (N,)
    vectors (norms, nearest distances, the block's minimum, the top-k)."""
    width = min(dim, projection_dim)
    projected = points * width * 4 if dim > projection_dim else 0
    block = 4 * points * distance_step(points)
    active = math.ceil(points * active_share) * (width * 4 + 16)
    return projected + block + active + 32 * points


def greedy_coreset(features: torch.Tensor, count: int, seed: int = 0, projection_dim: int = PROJECTION_DIM,
                   on_progress: Callable[[int, int], None] | None = None, active_share: float = ACTIVE_SHARE) -> torch.Tensor:
    """Indices (count,) int64 of a greedy k-center coreset of ``features`` (N, D) float32, any device.

    The first point is drawn with ``seed``; ``count`` >= N returns every index (in order).
    on_progress(done, count) is called every 256 selections and at the end.

    Lazy, and the same selection as updating every point up to floating-point near-ties: each selection
    updates only the ``active_share`` of the points farthest from the chosen set (one matrix-vector product
    over them). The others' stored distances only overestimate (distances to the chosen set only shrink), so
    while the farthest active point is at least as far as the largest stored distance outside the active set,
    it is the farthest point of all. When it is not, every point is brought up to date with the selections
    since (one matrix product, whose rounding differs from the matrix-vector one: on ELPV's 120 320 patches,
    9 649 of 10 000 rows came out the same and in the same order) and the active set is chosen again.
    """
    n = features.shape[0]
    if count < 1:
        raise ConfigError(f"a coreset needs at least 1 point; found count={count}.")
    if count >= n:
        return torch.arange(n, device=features.device)
    x = random_projection(features.float(), projection_dim, seed)
    sq = squared_norms(x)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = _squared_to(x, sq, torch.tensor([first], device=x.device))
    width = max(1, min(n, int(n * active_share)))
    pending: list[int] = []  # chosen since the points outside the active set were last brought up to date
    active = bound = xa = sqa = near = None
    for i in range(1, count):
        if active is not None:
            j = int(torch.argmax(near))
        if active is None or float(near[j]) < bound:
            if active is not None:
                nearest[active] = near
            if pending:
                torch.minimum(nearest, _squared_to(x, sq, torch.tensor(pending, device=x.device)), out=nearest)
                pending = []
            top = torch.topk(nearest, min(width + 1, n))
            active, bound = top.indices[:width], float(top.values[-1]) if width < n else -float("inf")
            xa, sqa, near = x[active], sq[active], nearest[active]
            j = int(torch.argmax(near))
        last = int(active[j])
        chosen.append(last)
        pending.append(last)
        torch.minimum(near, sqa - 2.0 * (xa @ x[last]) + sq[last], out=near)
        if on_progress is not None and i % 256 == 0:
            on_progress(i, count)
    if on_progress is not None:
        on_progress(count, count)
    return torch.tensor(chosen, dtype=torch.int64, device=x.device)


def bank_neighbours(bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """(M, k) int64: for each bank row its ``k`` nearest bank rows (itself first), by Euclidean distance.

    bank: (M, D) float32. Computed in blocks of at most ``chunk`` rows and ``CHUNK_BYTES`` (``distance_step``,
    ``column_blocks``), in place, so memory stays one (rows, M) float32 block.
    """
    m = bank.shape[0]
    k = min(k, m)
    sq = squared_norms(bank)
    out = []
    for start, stop in column_blocks(m, distance_step(m, most=chunk), block=chunk):
        rows = bank[start:stop]
        d = torch.mm(rows, bank.T)  # ||r||^2 - 2 r.b + ||b||^2, the order of operations of the out-of-place sum
        d.mul_(-2.0).add_(sq[start:stop, None]).add_(sq[None, :])
        d[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = -1.0  # itself first
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out)

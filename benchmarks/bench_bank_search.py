"""PatchCore's bank search on the CPU: the TopK search of before issue #29 against the two-level minimum of today.

    python benchmarks/bench_bank_search.py [--rows 10000] [--dim 128] [--image-size 256] [--batches 1,4]
        [--rounds 7] [--seconds 0.5] [--threads 0] [--json runs/bench-bank-search.json]

Times ms per frame of
  search   ``NearestBank`` alone on random patches (B, P, D), P = (image_size / 8)^2 (the default stride-8 tap),
           against a random bank of ``--rows`` x ``--dim``: ``topk`` is the search as it was (||a||^2 - 2 a.B +
           ||b||^2 over the whole (B P, M) matrix, then TopK k=1), ``grouped`` the module as it is now;
  detector the whole default PatchCore graph (random backbone weights and bank; its backbone, features, search,
           upsampling and blur) with either search, ONNX Runtime only,
in ONNX Runtime (CPU provider, opset 17, dynamic batch, as ``fair-edge build`` exports) and PyTorch eager, at each
batch. Rounds interleave every (case, batch) so that the load of a shared machine falls on all alike; the report
gives the median over rounds and the ratio old / new of those medians (> 1: the new search is faster), and
batch 1 / batch B per frame for each (> 1: batching pays). Also checks that both searches agree (max |distance|
difference, index mismatches). Prints one line per result and writes the JSON with the command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from fair_edge.bench.run import environment
from fair_edge.models.patchcore.model import NearestBank, PatchcoreDetector, PatchcoreSettings


class TopKSearch(NearestBank):
    """The search before issue #29 (commit bcbc06f), kept here as the baseline."""

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sq = (patches * patches).sum(-1, keepdim=True)
        d2 = sq - 2.0 * torch.matmul(patches, self.bank_t) + self.bank_sq
        nearest, index = torch.topk(d2, 1, dim=-1, largest=False)
        return torch.sqrt(torch.clamp(nearest[..., 0], min=0.0)), index[..., 0]


SEARCHES = {"topk": TopKSearch, "grouped": NearestBank}


def export(module: nn.Module, example: torch.Tensor, path: Path, threads: int) -> ort.InferenceSession:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["a", "b"], dynamic_axes={"x": {0: "batch"}}, do_constant_folding=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ms_per_frame(call, batch: int, seconds: float) -> float:
    """Wall ms per frame of ``call`` over at least ``seconds`` (after one untimed call)."""
    call()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        call()
        n += 1
    return (time.perf_counter() - start) / n / batch * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=PatchcoreSettings().bank_max)
    ap.add_argument("--dim", type=int, default=PatchcoreSettings().embed_dim)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads and torch threads; 0 = default")
    ap.add_argument("--no-detector", action="store_true", help="time the search only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    patches_n = (args.image_size // 8) ** 2
    bank = torch.randn(args.rows, args.dim)
    table = torch.zeros(args.rows, 1, dtype=torch.int64)
    modules = {name: cls(bank, table).eval() for name, cls in SEARCHES.items()}
    settings = PatchcoreSettings(bank_max=args.rows, embed_dim=args.dim)
    detectors = {}
    if not args.no_detector:
        base = PatchcoreDetector(settings, args.image_size).eval()
        base.set_bank(bank, torch.zeros(args.rows, settings.neighbours, dtype=torch.int64))
        for name, cls in SEARCHES.items():
            det = PatchcoreDetector(settings, args.image_size).eval()
            det.load_state_dict(base.state_dict(), strict=False)
            det.memory = cls(bank, torch.zeros(args.rows, settings.neighbours, dtype=torch.int64)).eval()
            detectors[name] = det
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {("search", n): export(m, torch.randn(1, patches_n, args.dim), Path(tmp) / f"s_{n}.onnx", args.threads)
                    for n, m in modules.items()}
        sessions.update({("detector", n): export(d, torch.rand(1, 3, args.image_size, args.image_size),
                                                 Path(tmp) / f"d_{n}.onnx", args.threads) for n, d in detectors.items()})
        inputs = {b: (np.random.default_rng(b).standard_normal((b, patches_n, args.dim), dtype=np.float32),
                      np.random.default_rng(b).random((b, 3, args.image_size, args.image_size), dtype=np.float32))
                  for b in batches}
        agree = {}
        for b in batches:
            (d0, i0), (d1, i1) = (sessions[("search", n)].run(None, {"x": inputs[b][0]}) for n in SEARCHES)
            agree[b] = {"max_abs_distance": float(np.abs(d0 - d1).max()), "index_mismatches": int((i0 != i1).sum())}
        times: dict[tuple[str, str, str, int], list[float]] = {}
        for r in range(args.rounds):
            for b in batches:
                patches, colour = (torch.from_numpy(x) for x in inputs[b])
                for (part, name), session in sessions.items():
                    x = inputs[b][0 if part == "search" else 1]
                    times.setdefault(("onnxruntime", part, name, b), []).append(
                        ms_per_frame(lambda: session.run(None, {"x": x}), b, args.seconds))
                for name, module in modules.items():
                    with torch.no_grad():
                        times.setdefault(("torch", "search", name, b), []).append(
                            ms_per_frame(lambda: module(patches), b, args.seconds))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for (backend, part, name, b), m in sorted(med.items()):
        old = med[(backend, part, "topk", b)]
        one = med[(backend, part, name, batches[0])]
        rows.append({"backend": backend, "part": part, "search": name, "batch": b, "ms_per_frame": round(m, 2),
                     "frames_per_s": round(1e3 / m, 2), "old_over_new": round(old / m, 3),
                     "batch1_over_batch": round(one / m, 3), "rounds_ms": [round(t, 2) for t in times[(backend, part, name, b)]]})
        print(f"{backend:11s} {part:8s} {name:7s} B={b}: {m:8.2f} ms/frame ({1e3 / m:6.2f} frames/s)  "
              f"topk/this {old / m:5.3f}  B{batches[0]}/B{b} per frame {one / m:5.3f}")
    for b, a in agree.items():
        print(f"agreement B={b}: max |distance| difference {a['max_abs_distance']:.2e}, index mismatches {a['index_mismatches']}")
    machine = environment(set())
    print(f"{machine['date_utc']} {machine['cpu']} ({machine['cpu_count']} cores, torch threads {machine['torch_threads']}); "
          f"python {' '.join(sys.argv)}")
    report = {"command": "python " + " ".join(sys.argv), "machine": machine,
              "rows": args.rows, "dim": args.dim, "patches": patches_n, "rounds": args.rounds, "results": rows,
              "agreement": {str(b): a for b, a in agree.items()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

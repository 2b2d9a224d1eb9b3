"""Fused pre-processing kernel vs the unfused path, per 1080p frame, on one GPU (CUDA events).

Unfused (what runs without the kernel): OpenCV resize + BGR->RGB on the CPU (fair_edge.preprocess
.frames_to_batch), copy to the GPU, gray + torch.fft high-pass on the GPU (fair_edge.preprocess.HighPass).
Fused: host batch -> FusedPreprocessor (one copy + one launch), and device-resident frames (one launch).
Tiled (``--tile``, overlap tile/8, 256 px model input): every tile of the batch, cut on the host and sent
as frames (split + stack + copy + launch) vs cropped by the kernel from the frames sent whole (run_tiles).
All on torch's current stream; times are medians over --iters, per frame. Needs a CUDA build of torch
and cuda-bindings; exits with a message where no GPU is present, unless ``--device cpu``: then only the
unfused path is timed, on the CPU with a wall clock (the dry run of ``benchmarks/gpu_evidence.py``).

    python benchmarks/bench_preprocess.py [--iters 50] [--half] [--batches 1 16] [--frames 1920x1080]
        [--device cuda|cpu] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def timed(fn, iters: int, torch) -> float:
    """Median milliseconds of fn() between CUDA events on the current stream (fn enqueues work)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timed_cpu(fn, iters: int) -> float:
    """Median milliseconds of fn() on the CPU (wall clock)."""
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - t))
    return statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--half", action="store_true", help="FP16 outputs for the fused kernel")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--frames", default="1920x1080", help="WIDTHxHEIGHT of the uint8 BGR frames")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: unfused path only")
    parser.add_argument("--tile", type=int, default=512, help="tile side in frame pixels for the tiled rows")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU visible to torch; this benchmark needs one (or --device cpu).", file=sys.stderr)
        return 2
    from fair_edge.preprocess import HighPass, PreprocessConfig

    cfg = PreprocessConfig()
    s, dev = cfg.image_size, torch.device(args.device)
    width, height = (int(v) for v in args.frames.lower().split("x"))
    highpass = HighPass(cfg).to(dev)
    out_dtype = torch.float16 if args.half else torch.float32
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, filter {cfg.filter} D0={cfg.cutoff} n={cfg.order}, S={s}, "
          f"fused outputs {out_dtype}, {width}x{height} BGR frames")
    rows = [bench_batch(batch, cfg, args, torch, highpass, (height, width), out_dtype) for batch in args.batches]
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "frames": args.frames,
                                         "half": args.half, "rows": rows}, indent=2) + "\n")
    if args.device == "cuda":
        print("Bandwidth floor, device frames: 6.2 MB read + 1 MB written (FP32) per frame / HBM bandwidth.")
    return 0


def bench_batch(batch: int, cfg, args, torch, highpass, hw: tuple[int, int], out_dtype) -> dict:
    """One batch size: microseconds per frame of the unfused path and (on CUDA) of the fused kernel."""
    from fair_edge.preprocess import frames_to_batch, to_gray

    s, dev = cfg.image_size, torch.device(args.device)
    rng = np.random.default_rng(0)
    host = torch.from_numpy(rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8))
    host_np = host.numpy()

    def unfused():
        rgb = frames_to_batch(list(host_np), s)
        rgb = rgb.pin_memory().to(dev, non_blocking=True) if args.device == "cuda" else rgb
        return highpass(to_gray(rgb)), rgb

    if args.device == "cpu":
        t_unfused = timed_cpu(unfused, args.iters) / batch
        print(f"batch {batch:2d}: unfused {t_unfused * 1e3:9.1f} us/frame (CPU; the fused kernel needs CUDA)")
        return {"batch": batch, "unfused_us": t_unfused * 1e3, "fused_host_us": None, "fused_device_us": None}
    from fair_edge.runtime.preprocess_gpu import DeviceFrames, FusedPreprocessor

    host = host.pin_memory()
    host_np = host.numpy()
    with FusedPreprocessor(cfg, half=args.half) as pre:
        hp = torch.empty((batch, cfg.in_channels, s, s), dtype=out_dtype, device=dev)
        col = torch.empty((batch, 3, s, s), dtype=out_dtype, device=dev)
        stream = torch.cuda.current_stream().cuda_stream
        dframes = DeviceFrames.from_cuda_array(host.to(dev))
        t_unfused = timed(unfused, args.iters, torch) / batch
        t_host = timed(lambda: pre.run(host_np, hp, col, stream), args.iters, torch) / batch
        t_dev = timed(lambda: pre.run(dframes, hp, col, stream), args.iters, torch) / batch
        tiled = bench_tiles(pre, host_np, args, torch, out_dtype, stream)
    print(f"batch {batch:2d}: unfused {t_unfused * 1e3:9.1f} us/frame | fused host-pinned "
          f"{t_host * 1e3:8.1f} us/frame ({t_unfused / t_host:6.1f}x) | fused device "
          f"{t_dev * 1e3:8.1f} us/frame ({t_unfused / t_dev:6.1f}x) | {tiled['tiles']} tiles/frame: host-cut "
          f"{tiled['host_cut_us']:8.1f} us/frame, cropped in the launch {tiled['in_launch_us']:8.1f} us/frame "
          f"({tiled['host_cut_us'] / tiled['in_launch_us']:5.1f}x)")
    return {"batch": batch, "unfused_us": t_unfused * 1e3, "fused_host_us": t_host * 1e3, "fused_device_us": t_dev * 1e3,
            "tiled": tiled}


def bench_tiles(pre, host_np: np.ndarray, args, torch, out_dtype, stream) -> dict:
    """Microseconds per frame for all tiles of pinned host frames: cut on the host vs cropped by the kernel."""
    from fair_edge.tiling import TilingConfig, split_frame, tile_layout

    s, batch = pre.plan.image_size, len(host_np)
    layout = tile_layout(host_np.shape[1:3], TilingConfig(args.tile, args.tile // 8), s)
    n = batch * layout.count
    hp = torch.empty((n, pre.plan.channels, s, s), dtype=out_dtype, device="cuda")
    col = torch.empty((n, 3, s, s), dtype=out_dtype, device="cuda")
    host_cut = timed(lambda: pre.run(np.stack([t for f in host_np for t in split_frame(f, layout)]), hp, col, stream),
                     args.iters, torch) / batch
    in_launch = timed(lambda: pre.run_tiles(host_np, layout.crops, args.tile, hp, col, stream), args.iters, torch) / batch
    return {"tile": args.tile, "tiles": layout.count, "host_cut_us": host_cut * 1e3, "in_launch_us": in_launch * 1e3}


if __name__ == "__main__":
    sys.exit(main())

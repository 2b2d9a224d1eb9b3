"""Fused pre-processing kernel vs the unfused path, per 1080p frame, on one GPU (CUDA events).

Unfused (what runs without the kernel): OpenCV resize + BGR->RGB on the CPU (fair_edge.preprocess
.frames_to_batch), copy to the GPU, gray + torch.fft high-pass on the GPU (fair_edge.preprocess.HighPass).
Fused: host batch -> FusedPreprocessor (one copy + one launch), and device-resident frames (one launch).
All on torch's current stream; times are medians over --iters, per frame. Needs a CUDA build of torch
and cuda-bindings; exits with a message where no GPU is present.

    python benchmarks/bench_preprocess.py [--iters 50] [--half]
"""

from __future__ import annotations

import argparse
import statistics
import sys

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--half", action="store_true", help="FP16 outputs for the fused kernel")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("No CUDA GPU visible to torch; this benchmark needs one.", file=sys.stderr)
        return 2
    from fair_edge.export.preprocess_gpu import DeviceFrames, FusedPreprocessor
    from fair_edge.preprocess import HighPass, PreprocessConfig, frames_to_batch, to_gray

    cfg = PreprocessConfig()
    s, dev = cfg.image_size, torch.device("cuda")
    highpass = HighPass(cfg).to(dev)
    out_dtype = torch.float16 if args.half else torch.float32
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, filter {cfg.filter} D0={cfg.cutoff} "
          f"n={cfg.order}, S={s}, fused outputs {out_dtype}, 1920x1080 BGR frames")
    with FusedPreprocessor(cfg, half=args.half) as pre:
        for batch in (1, 16):
            rng = np.random.default_rng(0)
            host = torch.from_numpy(rng.integers(0, 256, (batch, 1080, 1920, 3), dtype=np.uint8)).pin_memory()
            host_np = host.numpy()
            device = host.to(dev)
            hp = torch.empty((batch, cfg.in_channels, s, s), dtype=out_dtype, device=dev)
            col = torch.empty((batch, 3, s, s), dtype=out_dtype, device=dev)
            stream = torch.cuda.current_stream().cuda_stream
            dframes = DeviceFrames.from_cuda_array(device)

            def unfused():
                rgb = frames_to_batch(list(host_np), s).pin_memory().to(dev, non_blocking=True)
                return highpass(to_gray(rgb)), rgb

            t_unfused = timed(unfused, args.iters, torch) / batch
            t_host = timed(lambda: pre.run(host_np, hp, col, stream), args.iters, torch) / batch
            t_dev = timed(lambda: pre.run(dframes, hp, col, stream), args.iters, torch) / batch
            print(f"batch {batch:2d}: unfused {t_unfused * 1e3:9.1f} us/frame | fused host-pinned "
                  f"{t_host * 1e3:8.1f} us/frame ({t_unfused / t_host:6.1f}x) | fused device "
                  f"{t_dev * 1e3:8.1f} us/frame ({t_unfused / t_dev:6.1f}x)")
    print("Bandwidth floor, device frames: 6.2 MB read + 1 MB written (FP32) per frame / HBM bandwidth.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU emulation of the fused CUDA kernel: its own source, built with g++, launched as the host would.

``tests/cuda_emu/harness.cpp`` says how a launch is emulated (a std::thread per CUDA thread, a barrier
per ``__syncthreads``, NaN-filled shared memory and outputs, exact-size buffers). This module rewrites
the two GPU-only lines of ``preprocess_kernel.cu``, compiles it with the plan's ``-D`` options under a
sanitizer, and runs it on frames through ``kernel_launch``: the launch the GPU path makes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np

from fair_edge.runtime.highpass_plan import plan_highpass
from fair_edge.runtime.preprocess_gpu import (DeviceFrames, compile_options, kernel_launch, kernel_source, tile_items,
                                             tile_offsets)
from fair_edge.preprocess import PreprocessConfig, reference_input
from frames import KERNEL_CONFIGS, SIZES, elpv_dir, errors, random_frame, real_frame

HARNESS = Path(__file__).parent / "cuda_emu" / "harness.cpp"
FRAMES_ID, HIGHPASS_ID, COLOUR_ID, OFFSETS_ID = 1, 2, 3, 4  # the harness's buffer ids, passed as "pointers"
REWRITES = (
    ('asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));', "h = emu_f32_to_f16_rn(v);"),
    ("extern __shared__ float smem[];", "float* smem = emu_shared_memory;"),
)


def compiler() -> str | None:
    """Path of g++, or None where there is none."""
    return shutil.which("g++")


def emulation_source() -> str:
    """The kernel source with its PTX half conversion and shared-memory declaration made host C++."""
    source = kernel_source()
    for old, new in REWRITES:
        if source.count(old) != 1:
            raise AssertionError(f"preprocess_kernel.cu no longer has exactly one {old!r}; update REWRITES")
        source = source.replace(old, new)
    return source


class KernelEmulator:
    """The kernel for one (PreprocessConfig, precision), compiled for the CPU into ``build_dir``.

    sanitize: g++ ``-fsanitize=`` value ("address,undefined" checks every access; "thread" finds races).
    source: kernel source to build instead of the shipped one (the tests break it on purpose).
    """

    def __init__(self, cfg: PreprocessConfig, half: bool, build_dir: Path, sanitize: str = "address,undefined",
                 source: str | None = None):
        self.cfg, self.half, self.plan = cfg, half, plan_highpass(cfg)
        options = compile_options(self.plan, half)
        source = emulation_source() if source is None else source
        taps = np.concatenate([self.plan.row_taps.ravel(), self.plan.col_taps.ravel()]).astype(np.float32)
        key = hashlib.sha256("\0".join((source, HARNESS.read_text(), sanitize, *options)).encode()
                             + taps.tobytes()).hexdigest()[:16]  # one folder per binary and tap table
        self.dir = build_dir / key
        self.binary = self.dir / "harness"
        if not self.binary.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "kernel_emu.inc").write_text(source)
            cmd = [compiler(), "-std=c++20", "-O1", "-g", "-pthread", f"-fsanitize={sanitize}",
                   "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", f"-I{self.dir}",
                   '-DEMU_KERNEL="kernel_emu.inc"', *options, str(HARNESS), "-o", str(self.binary)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        taps.tofile(self.dir / "taps.bin")  # the __constant__ tap tables, read by every run

    def run(self, frames: np.ndarray, row_pad: int = 0, image_pad: int = 0,
            crops: list[tuple[int, int]] | None = None, tile: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Pre-process (B, H, W, 3) or (B, H, W) uint8 frames; returns (highpass, colour) as the kernel wrote them.

        row_pad / image_pad: extra bytes between rows / frames, filled with noise the kernel must not read.
        The frame buffer ends at the last pixel, so a read past it is an AddressSanitizer error.
        crops / tile: cut these (y, x) ``tile`` x ``tile`` tiles of every frame in the launch (the tiled
        path, ``FusedPreprocessor.run_tiles``); outputs then hold B * len(crops) items.
        """
        b, h, w = frames.shape[:3]
        c = frames.shape[3] if frames.ndim == 4 else 1
        row_pitch = w * c + row_pad
        image_pitch = row_pitch * h + image_pad
        size = (b - 1) * image_pitch + (h - 1) * row_pitch + w * c
        buffer = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
        for i in range(b):
            for y in range(h):
                at = i * image_pitch + y * row_pitch
                buffer[at : at + w * c] = frames[i, y].reshape(-1)
        src = DeviceFrames(FRAMES_ID, b, h, w, c, row_pitch, image_pitch)
        src.validate()
        offsets = np.empty(0, np.int64)
        if crops is not None:
            offsets = tile_offsets(src, crops, tile)
            src = tile_items(src, tile, OFFSETS_ID, len(offsets))
            src.validate()
        launch = kernel_launch(self.plan, src, HIGHPASS_ID, COLOUR_ID)
        s, item, n = self.plan.image_size, 2 if self.half else 4, src.batch
        hp_shape, colour_shape = (n, self.plan.channels, s, s), (n, 3, s, s)
        numbers = [*launch.grid, *launch.block, launch.shared_bytes, size, int(np.prod(hp_shape)) * item,
                   int(np.prod(colour_shape)) * item, offsets.nbytes, *launch.values]
        (self.dir / "launch.txt").write_text(" ".join(repr(v) for v in numbers))
        buffer.tofile(self.dir / "frames.bin")
        offsets.tofile(self.dir / "offsets.bin")
        result = subprocess.run([str(self.binary), *(str(self.dir / n) for n in
                                 ("launch.txt", "frames.bin", "taps.bin", "highpass.bin", "colour.bin", "offsets.bin"))],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise AssertionError(f"emulated kernel failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
        dtype = np.float16 if self.half else np.float32
        return (np.fromfile(self.dir / "highpass.bin", dtype).reshape(hp_shape),
                np.fromfile(self.dir / "colour.bin", dtype).reshape(colour_shape))


def sample_batch(width: int, height: int, channels: int) -> np.ndarray:
    """(2, H, W[, 3]) uint8: noise and, where the ELPV images are installed, a real cell photo."""
    second = (real_frame(width, height, channels) if elpv_dir() is not None
              else random_frame(width, height, channels, seed=1))
    return np.stack([random_frame(width, height, channels), second])


def error_table(build_dir: Path) -> None:
    """Print the worst errors vs the float64 reference per setting and precision (FUSED_KERNEL.md's table)."""
    for cfg in (*KERNEL_CONFIGS, PreprocessConfig(image_size=200)):
        for half in (False, True):
            emulator = KernelEmulator(cfg, half, build_dir)
            worst = np.zeros(4)
            for width, height in SIZES:
                for channels in (3, 1):
                    frames = sample_batch(width, height, channels)
                    hp, colour = emulator.run(frames, row_pad=13, image_pad=7)
                    for i, frame in enumerate(frames):
                        ref_hp, ref_colour = reference_input(frame, cfg)
                        worst = np.maximum(worst, [*errors(hp[i], ref_hp), *errors(colour[i], ref_colour)])
            plan = emulator.plan
            print(f"| {cfg.filter} S={cfg.image_size} D0={cfg.cutoff:g} n={cfg.order} | R={plan.radius} rank={plan.rank} "
                  f"| {'FP16' if half else 'FP32'} | rel {worst[0]:.1e}, max {worst[1]:.1e} "
                  f"| rel {worst[2]:.1e}, max {worst[3]:.1e} |", flush=True)


if __name__ == "__main__":  # python tests/kernel_emulator.py [BUILD_DIR]
    import sys
    import tempfile

    error_table(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="kernel-emulation-")))

"""Compile CUDA C with NVRTC (run time, no nvcc), cached on disk per source, options and GPU arch.

Cache: ``$FAIR_EDGE_CACHE`` or ``~/.cache/fair-edge/kernels``, one file per
sha256(source, options, target, NVRTC version), so a new source, a new setting or a new NVRTC
never loads a stale binary. Targets: ``sm_XX`` gives a cubin (for the GPU at hand; loads under
CUDA minor-version compatibility), ``compute_XX`` gives PTX (portable, JIT-compiled by the driver).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from fair_edge.disk import user_cache
from fair_edge.errors import KernelError
from fair_edge.export.cuda_api import check, import_cuda

log = logging.getLogger(__name__)

TARGET = re.compile(r"^(sm|compute)_\d{2,3}[af]?$")


def cache_dir() -> Path:
    """Folder of compiled kernels (created on first use): under ``$FAIR_EDGE_CACHE``, else this account's cache
    (``fair_edge.disk.user_cache``: a temp folder when there is no home folder)."""
    root = os.environ.get("FAIR_EDGE_CACHE") or user_cache()
    return Path(root) / "kernels"


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library cuda-python found; GpuUnavailableError if none."""
    _, nvrtc = import_cuda()
    try:
        return tuple(check(nvrtc.nvrtcVersion(), "nvrtcVersion"))
    except (RuntimeError, OSError) as exc:  # cuda-pathfinder: library not found
        raise KernelError(f"NVRTC library not found ({exc}); install nvidia-cuda-nvrtc-cu12 (CUDA 12) "
                          "or nvidia-cuda-nvrtc (CUDA 13) next to cuda-bindings.") from exc


def compile_source(source: str, name: str, target: str, options: tuple[str, ...] = ()) -> bytes:
    """Compile ``source`` with NVRTC. target: 'sm_90' (cubin) or 'compute_87' (PTX). Returns the binary."""
    if not TARGET.match(target):
        raise KernelError(f"GPU target must look like 'sm_90' or 'compute_87'; found {target!r}.")
    _, nvrtc = import_cuda()
    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={target}", "--std=c++17", *options]
        opts_b = [o.encode() for o in opts]
        result = nvrtc.nvrtcCompileProgram(prog, len(opts_b), opts_b)
        if int(result[0]) != 0:
            log = _program_log(nvrtc, prog)
            raise KernelError(f"NVRTC could not compile {name} for {target} with {' '.join(opts)}:\n{log}")
        if target.startswith("sm_"):
            size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            out = b" " * size
            check(nvrtc.nvrtcGetCUBIN(prog, out), "nvrtcGetCUBIN")
        else:
            size = check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            out = b" " * size
            check(nvrtc.nvrtcGetPTX(prog, out), "nvrtcGetPTX")
        return out
    finally:
        check(nvrtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")


def _program_log(nvrtc, prog) -> str:
    size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    log = b" " * size
    check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
    return log.decode(errors="replace").rstrip("\x00 \n")


CACHE_DIGEST = 32   # bytes of SHA-256 in front of each cached binary: an entry whose digest fails is compiled again


def cached_compile(source: str, name: str, target: str, options: tuple[str, ...] = ()) -> bytes:
    """``compile_source`` through the disk cache. An entry is the binary's SHA-256 followed by the binary, written
    to a temporary file, fsynced and renamed into place; one whose digest does not match (a torn write, a disk
    error, an entry of an older layout) is compiled again and replaced, never handed to the driver."""
    key = hashlib.sha256("\0".join([source, target, *options, repr(nvrtc_version())]).encode()).hexdigest()
    path = cache_dir() / f"{Path(name).stem}-{target}-{key[:24]}.{'cubin' if target.startswith('sm_') else 'ptx'}"
    cached = path.read_bytes() if path.is_file() else b""
    digest, binary = cached[:CACHE_DIGEST], cached[CACHE_DIGEST:]
    if binary and hashlib.sha256(binary).digest() == digest:
        return binary
    if cached:
        log.warning("kernel cache entry %s is damaged (its checksum fails); compiling the kernel again", path)
    binary = compile_source(source, name, target, options)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(hashlib.sha256(binary).digest() + binary)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)
    return binary

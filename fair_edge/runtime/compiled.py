"""``torch.compile`` for the PyTorch backends: inductor, one compiled graph per input shape, timed and cached.

Compilation happens at the first call with a new shape (each batch size the loop forms) and can take
minutes on a small CPU (inductor writes and builds C++ with the system compiler; Triton on CUDA).
Inductor's on-disk caches (FX graph cache, compiled kernels) make a later process reuse that work;
they live under ``TORCHINDUCTOR_CACHE_DIR``, which defaults here to ``~/.cache/fair-edge/inductor``
instead of PyTorch's ``/tmp`` folder so the cache survives a reboot of the station PC. Without a home folder
(HOME unset and a uid with no passwd entry, as in a container run with ``--user``) it falls back to
``<tempdir>/fair-edge-<uid>/inductor``; the folder is worked out at the first compile, never at import.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from fair_edge.disk import user_cache

log = logging.getLogger(__name__)
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def default_cache() -> Path:
    """``~/.cache/fair-edge/inductor``; ``<tempdir>/fair-edge-<uid>/inductor`` when there is no home folder
    (``fair_edge.disk.user_cache``)."""
    return user_cache() / "inductor"


def cache_dir() -> Path:
    """The inductor cache folder in use (``TORCHINDUCTOR_CACHE_DIR``, set to ``default_cache()`` if unset)."""
    if not os.environ.get(CACHE_ENV):
        os.environ[CACHE_ENV] = str(default_cache())
    return Path(os.environ[CACHE_ENV])


class CompiledModule:
    """``module`` compiled with inductor (static shapes); ``seconds[batch]`` = wall time of each shape's first call.

    Call it like the module: (highpass (B, C, S, S), colour (B, 3, S, S)) float32 on the module's device.
    """

    def __init__(self, module: nn.Module) -> None:
        cache = cache_dir()
        self.module = torch.compile(module, backend="inductor", dynamic=False)
        self.seconds: dict[int, float] = {}
        log.info("torch.compile (inductor), cache %s", cache)

    def __call__(self, *inputs: torch.Tensor):
        batch = int(inputs[0].shape[0])
        if batch in self.seconds:
            return self.module(*inputs)
        start = time.perf_counter()
        out = self.module(*inputs)
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        self.seconds[batch] = time.perf_counter() - start
        log.info("torch.compile: batch %d compiled in %.1f s", batch, self.seconds[batch])
        return out

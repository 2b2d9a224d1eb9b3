"""What a hot swap releases: a retired scorer's backend AND its pre-processing. On the GPU backends (TensorRT,
PyTorch on CUDA) each scorer owns a fused pre-processing kernel (``runtime.pytorch.FusedGpuPreprocessor``) holding a
CUDA module, a primary-context retain and a staging buffer of max_batch frames on the device; a swap that closed
only the backend left all three behind, one more set per swap. These tests run on the CPU: a fake CUDA driver
stands in for cuda-python and counts what is alive."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import fair_edge.runtime.preprocess_gpu as preprocess_gpu
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.fair.scoring import ScoringConfig
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.records import Frame
from fair_edge.runtime.backends import BundleScorer
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import ModelChange
from fair_edge.runtime.pytorch import FusedGpuPreprocessor
from fair_edge.station.inspector import Inspector


class _AnyName:
    """An enum-like namespace of the driver (CUdevice_attribute...): every attribute is its own name."""

    def __getattr__(self, name: str) -> str:
        return name


class FakeDriver:
    """The cuda-python driver calls FusedPreprocessor makes, counting live allocations (address -> bytes), loaded
    modules and primary-context retains; ``current`` is the context made current (None: none on this thread)."""

    CUdevice_attribute = _AnyName()
    CUfunction_attribute = _AnyName()
    ATTRIBUTES = {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": 8, "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": 7,
                  "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN": 163 * 1024}

    def __init__(self) -> None:
        self.next, self.allocs, self.modules, self.retains, self.current = 0x10000, {}, set(), 0, None

    def _address(self) -> int:
        self.next += 0x100000
        return self.next

    def cuInit(self, flags): return (0,)
    def cuDeviceGetCount(self): return (0, 1)
    def cuDeviceGet(self, ordinal): return (0, ordinal)
    def cuDeviceGetAttribute(self, attr, dev): return (0, self.ATTRIBUTES[attr])

    def cuDevicePrimaryCtxRetain(self, dev):
        self.retains += 1
        return (0, "primary")

    def cuDevicePrimaryCtxRelease(self, dev):
        self.retains -= 1
        return (0,)

    def cuCtxSetCurrent(self, ctx):
        self.current = ctx
        return (0,)

    def cuModuleLoadData(self, binary):
        module = self._address()
        self.modules.add(module)
        return (0, module)

    def cuModuleUnload(self, module):
        assert self.current == "primary", "cuModuleUnload unloads from the current context: none was current"
        self.modules.remove(module)
        return (0,)

    def cuModuleGetFunction(self, module, name): return (0, "preprocess")
    def cuFuncSetAttribute(self, fn, attr, value): return (0,)
    def cuModuleGetGlobal(self, module, symbol): return (0, 0x9000, 4096)
    def cuMemcpyHtoD(self, dst, src, n): return (0,)
    def cuMemcpyHtoDAsync(self, dst, src, n, stream): return (0,)
    def cuLaunchKernel(self, *args): return (0,)

    def cuMemAlloc(self, nbytes):
        address = self._address()
        self.allocs[address] = nbytes
        return (0, address)

    def cuMemFree(self, address):
        self.allocs.pop(int(address))
        return (0,)


class _DeviceArray:
    """What a CUDA tensor shows the kernel: only its ``__cuda_array_interface__`` is read."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "strides": None, "data": (0x5000, False),
                                         "version": 3}


class GpuBackend:
    """Stands for TensorRTBackend / TorchBackend: zero maps; counts its closes."""

    name = "tensorrt"

    def __init__(self) -> None:
        self.closes = 0

    def infer(self, inputs):
        batch = inputs["highpass"].shape[0]
        return {"anomaly_map": np.zeros((batch, 1, 8, 8), np.float32), "score": np.zeros(batch, np.float32)}

    def close(self) -> None:
        self.closes += 1


MODEL = ModelSpec("fair", PreprocessConfig(image_size=64, cutoff=8.0), FairSettings(4, ScoringConfig(smooth=5)))


@pytest.fixture
def driver(monkeypatch) -> FakeDriver:
    """The fake driver behind every FusedPreprocessor made in the test (no GPU, no NVRTC)."""
    fake = FakeDriver()
    monkeypatch.setattr(preprocess_gpu, "import_cuda", lambda: (fake, None))
    monkeypatch.setattr(preprocess_gpu, "cached_compile", lambda *args, **kwargs: b"cubin")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *args, **kwargs: types.SimpleNamespace(cuda_stream=0))
    size = MODEL.preprocess.image_size
    monkeypatch.setattr(FusedGpuPreprocessor, "_outputs", lambda self, batch: (
        _DeviceArray((batch, self.cfg.in_channels, size, size)), _DeviceArray((batch, 3, size, size))))
    return fake


def gpu_scorer() -> BundleScorer:
    """What selection makes for TensorRT: BundleScorer(backend, gpu_preprocessor(bundle)), max_batch 4."""
    return BundleScorer(GpuBackend(), FusedGpuPreprocessor(MODEL), "test: TensorRT", max_batch=4)


def test_each_hot_swap_on_a_gpu_backend_frees_the_old_kernels_device_memory_module_and_context(driver):
    """20 swaps, a batch after each (the staging buffer is allocated at the first batch): one staging buffer, one
    module and one context retain stay, the running scorer's; retiring that one at exit leaves nothing."""
    frames = [np.zeros((120, 160, 3), np.uint8)] * 4
    inspector = Inspector(capture=None, scorer=gpu_scorer(), threshold=1.0)
    seq = 0

    def batch() -> None:
        nonlocal seq
        inspector.apply_switch()
        inspector.inspect([Frame(seq + i, 0.0, f, camera="cam") for i, f in enumerate(frames)])
        seq += len(frames)

    batch()
    one_buffer = dict(driver.allocs)
    assert len(one_buffer) == 1 and sum(one_buffer.values()) == 4 * 120 * 160 * 3
    replaced = []
    for i in range(20):
        replaced.append(inspector.scorer)
        inspector.switch.request(ModelChange(scorer=gpu_scorer(), threshold=1.0, model=f"m{i}"))
        driver.current = None   # the loop's thread: a thread that swaps need not have the context current
        batch()
    assert [s.backend.closes for s in replaced] == [1] * 20
    assert (len(driver.allocs), len(driver.modules), driver.retains) == (1, 1, 1), \
        f"after 20 swaps: {len(driver.allocs)} staging buffers, {len(driver.modules)} modules, {driver.retains} retains"
    assert sum(driver.allocs.values()) == sum(one_buffer.values())
    close_scorer(inspector.scorer)
    close_scorer(inspector.scorer)   # twice (a swap, then the station's exit): harmless
    assert (driver.allocs, driver.modules, driver.retains) == ({}, set(), 0)


class _Closing:
    """A backend or pre-processing whose close is recorded in ``log``, or raises ``error``."""

    name = "test"

    def __init__(self, what: str, log: list[str], error: Exception | None = None) -> None:
        self.what, self.log, self.error = what, log, error

    def __call__(self, frames):
        raise AssertionError("not run here")

    def close(self) -> None:
        self.log.append(self.what)
        if self.error is not None:
            raise self.error


def test_retire_closes_the_pre_processing_even_when_the_backend_fails_to_close(caplog):
    """A backend whose close raises is logged; the kernel still closes (its device memory is the larger part)."""
    closed: list[str] = []
    scorer = BundleScorer(_Closing("backend", closed, RuntimeError("engine busy")), _Closing("kernel", closed), "test")
    with caplog.at_level(logging.ERROR, logger="fair_edge.runtime.hotswap"):
        close_scorer(scorer)
    assert closed == ["backend", "kernel"]
    assert "closing the backend (_Closing) of a model no longer used failed" in caplog.text and "engine busy" in caplog.text


def test_a_fused_scorer_retires_every_members_backend_and_kernel():
    """A fused bundle's scorer (runtime.fusion): its backend is the members'; retiring it closes each member's
    backend and pre-processing, a failing member not keeping the next one open."""
    from fair_edge.runtime.fusion import _Members

    closed: list[str] = []
    members = [BundleScorer(_Closing("backend 0", closed, RuntimeError("gone")), _Closing("kernel 0", closed), "m0"),
               BundleScorer(_Closing("backend 1", closed), _Closing("kernel 1", closed), "m1")]
    close_scorer(types.SimpleNamespace(backend=_Members(members)))   # a FusedScorer has no preprocess of its own
    assert closed == ["backend 0", "kernel 0", "backend 1", "kernel 1"]


def test_a_load_that_fails_after_opening_the_scorer_closes_its_kernel_too(monkeypatch, tmp_path):
    """station.bundles.load_change: the threshold cannot be decided after the backend opened (a console swap, a
    SIGHUP): nothing changes, and the opened scorer's backend and kernel are both closed."""
    from fair_edge.errors import ConfigError
    from fair_edge.station import bundles

    closed: list[str] = []
    scorer = BundleScorer(_Closing("backend", closed), _Closing("kernel", closed), "test")
    monkeypatch.setattr(bundles, "read_bundle", lambda path: types.SimpleNamespace(root=Path(path)))
    monkeypatch.setattr(bundles, "load_roi", lambda path, bundle: None)
    monkeypatch.setattr(bundles, "open_scorer", lambda bundle, backend: scorer)

    def no_threshold(*args, **kwargs):
        raise ConfigError("no threshold")

    monkeypatch.setattr(bundles, "change_for", no_threshold)
    with pytest.raises(ConfigError, match="no threshold"):
        bundles.load_change(tmp_path, "tensorrt", None)
    assert closed == ["backend", "kernel"]

"""``auto`` on a machine without a GPU names why it did not use TensorRT in words true there (audit: every run, bench
and demo line said "bundle ... has no TensorRT engine; build one with `fair-edge build` on this GPU.;" on a CPU-only
machine: no GPU to build on, and a stray ".;" where the reasons are joined)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from fair_edge.errors import ConfigError
from fair_edge.runtime import selection
from fair_edge.runtime.selection import select_backend

BUNDLE = SimpleNamespace(root=Path("bundles/b"), engine=None, image_size=8, build_command="",
                         preprocess=SimpleNamespace(tiling=None))


@dataclass(frozen=True)
class CpuScorer:
    """ONNX Runtime's scorer as ``fastest_cpu`` uses it."""

    reason: str = "ONNX Runtime on the CPU (fp32 graph)"
    graph_threshold: None = None
    max_batch: None = None
    backend: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(name="onnxruntime", close=lambda: None))

    def infer_frames(self, frames):
        return np.zeros((len(frames), 4, 4), np.float32), np.ones(len(frames), np.float32)


def cpu_engines(monkeypatch) -> None:
    def missing(bundle, options):
        raise ConfigError("the openvino backend needs OpenVINO: pip install openvino.")

    monkeypatch.setitem(selection.BACKENDS, "onnxruntime", lambda bundle, options: CpuScorer())
    monkeypatch.setitem(selection.BACKENDS, "openvino", missing)


def test_auto_without_a_gpu_says_where_to_build_the_engine_without_a_stray_full_stop(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu_engines(monkeypatch)
    reason = select_backend(BUNDLE, "auto").reason
    assert ("tensorrt: bundle bundles/b has no TensorRT engine; build one with `fair-edge build` on the GPU machine "
            "that will run it; torch-cuda: --backend torch-cuda: PyTorch sees no CUDA GPU)") in reason
    assert ".;" not in reason and "on this GPU" not in reason


def test_with_a_gpu_the_engine_is_to_be_built_on_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        selection.BACKENDS["tensorrt"](BUNDLE, selection.BackendOptions())
    except ConfigError as exc:
        assert str(exc) == "bundle bundles/b has no TensorRT engine; build one with `fair-edge build` on this machine."
    else:
        raise AssertionError("a bundle without an engine ran on TensorRT")

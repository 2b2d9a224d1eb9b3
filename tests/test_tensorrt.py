"""TensorRT layer without TensorRT: lazy import, install hints, version branching, the CUDA checker,
parser-error reporting and the build sequence against a recording fake of the TensorRT API
(the CUDA result checker is main's ``cuda_api.check``, tested in test_cuda_api.py).
A real engine build runs only where TensorRT and a GPU exist (marked gpu)."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
from export_fixtures import PRE, make_frames

from fair_edge.checkpoint import load_checkpoint
from fair_edge.errors import EngineError, TensorRTMissingError
from fair_edge.export import tensorrt as trt_mod
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle


def test_module_imports_without_tensorrt_and_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    importlib.reload(trt_mod)
    with pytest.raises(TensorRTMissingError) as info:
        trt_mod.import_tensorrt()
    msg = str(info.value)
    assert "pip install tensorrt" in msg and "python3-libnvinfer" in msg and "no engine was built" in msg
    assert isinstance(info.value, ImportError)


def test_stub_only_tensorrt_package_is_not_mistaken_for_tensorrt(tmp_path, monkeypatch):
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")  # what tensorrt-stubs installs
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    with pytest.raises(TensorRTMissingError, match="without the bindings"):
        trt_mod.import_tensorrt()


# ----------------------------------------------------------------------------- a recording fake of the API
class FakeTRT(types.ModuleType):
    """Only the calls build_engine makes, with the 10.x/11.x names; records what it was given."""

    def __init__(self, version="10.13.0.35", strongly_typed=True, parse_ok=True):
        super().__init__("tensorrt")
        self.__version__, self.calls = version, []
        fake = self
        flags = {"STRONGLY_TYPED": 1} if strongly_typed else {}
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

        class Logger:
            WARNING = "W"

            def __init__(self, severity):
                pass

        class Dims(list):
            pass

        class ParserError:
            def node(self): return 7
            def node_name(self): return "/scorer/Einsum"
            def node_operator(self): return "Einsum"
            def desc(self): return "unsupported equation"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0 if parse_ok else 1

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return parse_ok

            def get_error(self, i):
                return ParserError()

        class Cache:
            def serialize(self): return b"timing"

        class Config:
            builder_optimization_level = 3
            def set_memory_pool_limit(self, pool, size): fake.calls.append(("pool", pool, size))
            def create_timing_cache(self, data): fake.calls.append(("timing_in", bytes(data))); return Cache()
            def set_timing_cache(self, cache, ignore_mismatch): return True
            def get_timing_cache(self): return Cache()
            def add_optimization_profile(self, profile): fake.calls.append(("profile", profile.shapes)); return 0

        class Profile:
            def __init__(self): self.shapes = {}
            def set_shape(self, name, mn, opt, mx): self.shapes[name] = (list(mn), list(opt), list(mx))

        class Builder:
            def __init__(self, logger): pass
            def create_network(self, flags): fake.calls.append(("flags", flags)); return object()
            def create_builder_config(self): return Config()
            def create_optimization_profile(self): return Profile()
            def build_serialized_network(self, network, config): return b"ENGINE"

        self.Logger, self.Dims, self.OnnxParser, self.Builder = Logger, Dims, OnnxParser, Builder


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kwargs):
        fake = FakeTRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr(trt_mod, "device_properties", lambda device=0: ("NVIDIA H100 80GB HBM3", (9, 0)))
        return fake
    return install


def test_network_flags_branch_on_version(fake_trt):
    fake_trt(version="10.3.0")
    assert trt_mod.network_flags() == 1 << 1
    fake_trt(version="11.4.0.106")  # 11.x: STRONGLY_TYPED kept, EXPLICIT_BATCH gone (never used)
    assert trt_mod.network_flags() == 1 << 1
    fake_trt(version="11.9.0", strongly_typed=False)
    assert trt_mod.network_flags() == 0
    fake_trt(version="10.0.0", strongly_typed=False)
    with pytest.raises(EngineError, match="no STRONGLY_TYPED"):
        trt_mod.network_flags()
    fake_trt(version="8.6.1")
    with pytest.raises(EngineError, match="too old"):
        trt_mod.network_flags()


def test_build_sequence_and_bundle_engine_entry(fake_trt, tiny_ckpt_path, tmp_path):
    fake = fake_trt(version="10.13.0.35")
    options = BuildOptions("fp16", max_batch=6, command="fair-edge build x --fp16")
    result = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", options)
    assert result.engine_built and "NVIDIA H100" in result.engine_note
    assert ("flags", 2) in fake.calls
    shapes = next(c[1] for c in fake.calls if c[0] == "profile")  # {name: (min, opt, max)}
    assert shapes["highpass"] == ([1, 1, 32, 32], [6, 1, 32, 32], [6, 1, 32, 32])
    assert shapes["colour"] == ([1, 3, 32, 32], [6, 3, 32, 32], [6, 3, 32, 32])
    b = load_bundle(tmp_path / "b")
    assert b.engine is not None and b.engine.tensorrt_version == "10.13.0.35" and b.engine.compute_capability == (9, 0)
    assert b.engine.path.read_bytes() == b"ENGINE" and b.engine.timing_cache.read_bytes() == b"timing"
    build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", options)  # rebuild reads the persisted cache
    assert ("timing_in", b"timing") in fake.calls


def test_parser_error_names_the_failing_node(fake_trt, tiny_ckpt_path, tmp_path):
    fake_trt(parse_ok=False)
    with pytest.raises(EngineError, match=r"cannot parse .*model.fp32.onnx: node 7 \(/scorer/Einsum, op Einsum\): unsupported equation"):
        build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32"))
    assert load_bundle(tmp_path / "b").engine is None  # the ONNX bundle is still valid


@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(tiny_ckpt_path, tmp_path):
    pytest.importorskip("tensorrt")
    from fair_edge.calibration.frames import preprocess_frames
    from fair_edge.export.cuda_runtime import CudaStream
    from fair_edge.runtime.ort import OnnxRuntimeBackend

    result = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32", max_batch=4))
    b = load_bundle(tmp_path / "b", target=trt_mod.current_target())
    hp, col = preprocess_frames(make_frames(3, seed=1), PRE)
    with CudaStream() as stream, trt_mod.EngineRunner.from_bundle(b) as engine, \
            trt_mod.TensorRTRunner(engine, stream) as runner:
        amap, score = runner.infer(hp, col)
        with runner.capture_graph(3) as graph:
            graph.launch(stream)
            stream.synchronize()
    ref_map, ref_score = OnnxRuntimeBackend(b.onnx_path).infer(hp, col)
    assert result.engine_built and np.abs(amap - ref_map).max() < 1e-3 and np.abs(score - ref_score).max() < 1e-3

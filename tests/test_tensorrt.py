"""TensorRT layer without TensorRT: lazy import, install hints, version branching, parser-error
reporting, the build sequence, and the production TensorRT backend (deserialise, bind by name,
enqueue) against a recording fake of the TensorRT API that computes on the bound host memory.
A real engine build runs only where TensorRT and a GPU exist (marked gpu)."""

from __future__ import annotations

import ctypes
import importlib
import sys
import types

import numpy as np
import pytest
import torch
from export_fixtures import MODEL, make_frames

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.errors import BundleError, EngineError, TensorRTMissingError
from fair_edge.export import tensorrt as trt_mod
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle
from fair_edge.runtime import tensorrt as trt_backend
from fair_edge.runtime.backends import OnnxRuntimeBackend


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
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.nptype = lambda dtype: np.float32 if dtype == "FLOAT" else np.float16
        self.Runtime = lambda logger: FakeRuntime(fake)


class FakeRuntime:
    """Deserialises b"ENGINE" into an engine whose I/O follow ``fake.io``: {name: (mode, dims with -1 batch)}."""

    def __init__(self, fake):
        self.fake = fake

    def deserialize_cuda_engine(self, data):
        return FakeEngine(self.fake) if data == b"ENGINE" else None


class FakeEngine:
    def __init__(self, fake):
        self.fake, self.io = fake, fake.io
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i): return list(self.io)[i]
    def get_tensor_mode(self, name): return self.io[name][0]
    def get_tensor_dtype(self, name): return self.fake.dtypes.get(name, "FLOAT")
    def get_tensor_shape(self, name): return list(self.io[name][1])
    def get_tensor_profile_shape(self, name, profile): return [[1] + self.io[name][1][1:], None, [4] + self.io[name][1][1:]]
    def create_execution_context(self): return FakeContext(self)


class FakeContext:
    """Records shapes and addresses; execute_async_v3 reads the bound inputs through their pointers and writes
    anomaly_map = mean over channels of colour, score = per-image max of highpass (so binding mistakes show)."""

    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _array(self, name, shape):
        count = int(np.prod(shape))
        return np.ctypeslib.as_array(ctypes.cast(self.addresses[name], ctypes.POINTER(ctypes.c_float)), (count,)).reshape(shape)

    def execute_async_v3(self, stream):
        self.engine.fake.calls.append(("enqueue", stream))
        batch = self.shapes["colour"][0]
        colour, highpass = self._array("colour", self.shapes["colour"]), self._array("highpass", self.shapes["highpass"])
        size = colour.shape[-1]
        self._array("anomaly_map", (batch, 1, size, size))[:] = colour.mean(axis=1, keepdims=True)
        self._array("score", (batch,))[:] = highpass.reshape(batch, -1).max(axis=1)
        return True


@pytest.fixture
def fake_trt(monkeypatch):
    def install(io=None, **kwargs):
        fake = FakeTRT(**kwargs)
        fake.io = io or {"highpass": ("INPUT", [-1, 1, 32, 32]), "colour": ("INPUT", [-1, 3, 32, 32]),
                         "anomaly_map": ("OUTPUT", [-1, 1, 32, 32]), "score": ("OUTPUT", [-1])}
        fake.dtypes = {}
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
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []  # a failed build leaves nothing


def test_backend_binds_named_tensors_and_returns_named_outputs(fake_trt, tiny_ckpt_path, tmp_path):
    """The production backend, on CPU tensors against the fake: every tensor bound by name to its own memory."""
    fake = fake_trt()
    build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32", max_batch=4))
    b = load_bundle(tmp_path / "b")
    inputs = {n: torch.from_numpy(a) for n, a in preprocess_frames(make_frames(3, seed=1), MODEL).items()}
    with trt_backend.TensorRTBackend(b.engine.path, b.model.input_names, torch.device("cpu")) as backend:
        out = backend.infer(inputs)
        assert backend.max_batch == 4 and ("enqueue", 0) in fake.calls
        with pytest.raises(EngineError, match="batch must be 1..4"):
            backend.infer({n: t.repeat(2, 1, 1, 1) for n, t in inputs.items()})
    assert out["anomaly_map"].shape == (3, 1, 32, 32) and out["score"].shape == (3,)
    np.testing.assert_allclose(out["anomaly_map"], inputs["colour"].mean(1, keepdim=True).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["score"], inputs["highpass"].flatten(1).max(1).values.numpy(), rtol=1e-6)


def test_backend_refuses_an_engine_of_another_model(fake_trt, tiny_ckpt_path, tmp_path):
    fake_trt(io={"image": ("INPUT", [-1, 3, 32, 32]), "anomaly_map": ("OUTPUT", [-1, 1, 32, 32]), "score": ("OUTPUT", [-1])})
    build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32"))
    b = load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match=r"needs inputs \['highpass', 'colour'\]"):
        trt_backend.TensorRTBackend(b.engine.path, b.model.input_names, torch.device("cpu"))
    fake = fake_trt()
    fake.dtypes["highpass"] = "HALF"
    with pytest.raises(EngineError, match="must be float32"):
        trt_backend.TensorRTBackend(b.engine.path, b.model.input_names, torch.device("cpu"))


@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(tiny_ckpt_path, tmp_path):
    pytest.importorskip("tensorrt")
    result = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32", max_batch=4))
    b = load_bundle(tmp_path / "b", target=trt_mod.current_target())
    inputs = preprocess_frames(make_frames(3, seed=1), MODEL)
    with trt_backend.TensorRTBackend.from_bundle(b) as backend:
        out = backend.infer({n: torch.from_numpy(a).cuda() for n, a in inputs.items()})
    ref = OnnxRuntimeBackend(b.onnx_path, b.model.input_names).infer(inputs)
    assert result.engine_built and all(np.abs(out[n] - ref[n]).max() < 1e-3 for n in ref)


def test_a_station_batch_over_the_engine_limit_is_split_into_engine_batches(fake_trt, tiny_ckpt_path, tmp_path, monkeypatch):
    """An untiled bundle's station batch (batching.max_batch, or several cameras' frames) larger than the engine
    profile's max batch goes to the engine in chunks of at most that limit, not in one call it refuses."""
    import fair_edge.runtime.pytorch as torch_runtime
    from fair_edge.runtime.backends import CpuPreprocessor
    from fair_edge.runtime.selection import select_backend

    fake = fake_trt()
    b = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32", max_batch=4)).bundle
    init = trt_backend.TensorRTBackend.__init__   # the fake computes on host memory: CPU tensors, CPU pre-processing
    monkeypatch.setattr(trt_backend.TensorRTBackend, "__init__",
                        lambda self, path, names, device=None: init(self, path, names, torch.device("cpu")))
    monkeypatch.setattr(torch_runtime, "gpu_preprocessor", lambda bundle: CpuPreprocessor(bundle.model))
    scorer = select_backend(b, "tensorrt")
    frames = make_frames(10, seed=3)
    before = sum(c[0] == "enqueue" for c in fake.calls)
    maps, scores = scorer.infer_frames(frames)   # before the fix: EngineError "batch must be 1..4", every frame lost
    assert sum(c[0] == "enqueue" for c in fake.calls) - before == 3   # 4 + 4 + 2
    assert scorer.max_batch == 4 and scorer.backend.max_batch == 4 and scorer.graph == "model.fp32.onnx"
    expected = preprocess_frames(frames, MODEL)["highpass"].reshape(10, -1).max(axis=1)   # the fake's score
    assert maps.shape == (10, 32, 32) and scores.shape == (10,)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def _timing_caches_per_gpu(fake, monkeypatch) -> dict:
    """Make the fake's timing caches follow TensorRT's documented rule (``IBuilderConfig.set_timing_cache``: "A failure
    will be reported if the CUDA device property in the provided cache is different from current environment"): a cache
    remembers the GPU that made it and is refused, False, on another. Returns {"gpu": name}: change it to move GPUs."""
    gpu = {"gpu": "NVIDIA GeForce RTX 4090"}

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data or f"timings of {gpu['gpu']}".encode()

        def serialize(self) -> bytes:
            return self.data

    def create_timing_cache(self, data):
        fake.calls.append(("timing_in", bytes(data)))
        self.cache = Cache(bytes(data))
        return self.cache

    def set_timing_cache(self, cache, ignore_mismatch):
        return bool(ignore_mismatch) or cache.data == f"timings of {gpu['gpu']}".encode()

    config = type(fake.Builder(None).create_builder_config())
    monkeypatch.setattr(config, "create_timing_cache", create_timing_cache)
    monkeypatch.setattr(config, "set_timing_cache", set_timing_cache)
    monkeypatch.setattr(config, "get_timing_cache", lambda self: self.cache)
    return gpu


def test_a_timing_cache_of_another_gpu_is_replaced_not_an_error(fake_trt, tiny_ckpt_path, tmp_path, monkeypatch,
                                                                 caplog):
    """A bundle built with its engine on one GPU, rebuilt (the command its refusal prints) on another: TensorRT refuses
    the kept timing cache, and the build goes on with a new one (a warning) instead of failing every time on a file
    of the removed staging folder."""
    fake = fake_trt()
    gpu = _timing_caches_per_gpu(fake, monkeypatch)
    ckpt, out = load_checkpoint(tiny_ckpt_path), tmp_path / "b"
    build_bundle(ckpt, out, BuildOptions("fp32"))
    assert (out / "timing.cache").read_bytes() == b"timings of NVIDIA GeForce RTX 4090"
    gpu["gpu"] = "Orin"
    fake.calls.clear()
    with caplog.at_level("WARNING", logger="fair_edge.export.tensorrt"):
        result = build_bundle(ckpt, out, BuildOptions("fp32"))
    assert result.engine_built and "refused the timing cache" in caplog.text and "another GPU" in caplog.text
    assert [c for c in fake.calls if c[0] == "timing_in"] == [("timing_in", b"timings of NVIDIA GeForce RTX 4090"),
                                                              ("timing_in", b"")]
    assert load_bundle(out).engine.timing_cache.read_bytes() == b"timings of Orin"   # replaced by this GPU's


def test_a_no_engine_rebuild_does_not_keep_the_timing_cache(fake_trt, tiny_ckpt_path, tmp_path):
    """docs/jetson.md: the workstation rebuilds with --no-engine into the same --out; the workstation GPU's timing cache
    is not carried into that bundle (the Jetson's engine build would only be refused it)."""
    fake_trt()
    ckpt, out = load_checkpoint(tiny_ckpt_path), tmp_path / "b"
    assert build_bundle(ckpt, out, BuildOptions("fp32")).engine_built and (out / "timing.cache").is_file()
    b = build_bundle(ckpt, out, BuildOptions("fp32", engine=False)).bundle
    assert b.engine is None and "timing.cache" not in b.files and not (out / "timing.cache").exists()

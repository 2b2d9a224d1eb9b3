"""The Jetson entrypoint's engine cache: hit for the same bundle, rebuild for a changed bundle, a corrupt cached
engine, another TensorRT; atomic on a failed build. TensorRT is absent here, so the builder is a stand-in that
writes bytes derived from the graph (the real one is ``export.tensorrt.build_engine``, type-checked elsewhere)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from export_fixtures import make_frames

from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.errors import EngineError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import MANIFEST, EngineTarget, load_bundle
from fair_edge.export.engine_cache import device_bundle, engine_key, main

ORIN = EngineTarget(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability=(8, 7))


class Builder:
    """Records calls; writes an 'engine' = SHA-256 of the graph + target, and a timing cache."""

    def __init__(self, target: EngineTarget = ORIN, fail: bool = False) -> None:
        self.target, self.fail, self.calls = target, fail, []

    def __call__(self, onnx: Path, engine: Path, bundle, timing_cache: Path) -> EngineTarget:
        self.calls.append((onnx.name, bundle.max_batch, timing_cache.is_file()))
        if self.fail:
            raise EngineError("simulated: TensorRT failed to build an engine")
        digest = hashlib.sha256(onnx.read_bytes() + self.target.tensorrt_version.encode()).digest()
        engine.write_bytes(digest * 64)
        timing_cache.write_bytes(b"timings")
        return self.target


@pytest.fixture(scope="module")
def sources(tiny_ckpt_path, tmp_path_factory):
    """Two different bundles of one model (int8 and fp16): different files, different metadata checksums."""
    ckpt, root = load_checkpoint(tiny_ckpt_path), tmp_path_factory.mktemp("src")
    calib, normal = make_frames(8, seed=100), make_frames(8, seed=1)
    return {p: build_bundle(ckpt, root / p, BuildOptions(p, max_batch=4, engine=False), calib, normal).bundle.root
            for p in ("int8", "fp16")}


def test_first_start_builds_then_the_same_bundle_is_a_hit(sources, tmp_path):
    build = Builder()
    first = device_bundle(sources["int8"], tmp_path / "cache", ORIN, build)
    assert not first.hit and "no cached engine" in first.reason and len(build.calls) == 1
    assert build.calls[0] == ("model.int8.onnx", 4, False)
    b = load_bundle(first.bundle, ORIN)  # verified, and its engine is for this machine
    assert b.engine.path.name == "model.engine" and b.engine.gpu_name == "Orin" and b.precision == "int8"
    data = json.loads((first.bundle / MANIFEST).read_text())
    source_digest = json.loads((sources["int8"] / MANIFEST).read_text())["metadata_sha256"]
    assert data["device_bundle"]["source_metadata_sha256"] == source_digest
    assert first.key == engine_key(source_digest, ORIN) and first.bundle.name == first.key[:16]
    again = device_bundle(sources["int8"], tmp_path / "cache", ORIN, build)
    assert again.hit and again.bundle == first.bundle and len(build.calls) == 1  # no second build
    assert load_bundle(sources["int8"]).engine is None  # the source bundle is untouched


def test_a_changed_bundle_or_another_tensorrt_rebuilds(sources, tmp_path):
    build = Builder()
    int8 = device_bundle(sources["int8"], tmp_path / "cache", ORIN, build)
    fp16 = device_bundle(sources["fp16"], tmp_path / "cache", ORIN, build)
    assert not fp16.hit and fp16.key != int8.key and len(build.calls) == 2
    newer = replace(ORIN, tensorrt_version="10.7.0")
    other = device_bundle(sources["int8"], tmp_path / "cache", newer, Builder(newer))
    assert not other.hit and other.key != int8.key and load_bundle(other.bundle, newer).engine.tensorrt_version == "10.7.0"


def test_a_corrupt_or_truncated_cached_engine_is_rebuilt(sources, tmp_path):
    build = Builder()
    first = device_bundle(sources["int8"], tmp_path / "cache", ORIN, build)
    engine = first.bundle / "model.engine"
    good = engine.read_bytes()
    engine.write_bytes(bytes(len(good)))  # same size, wrong bytes (a bad flash block)
    second = device_bundle(sources["int8"], tmp_path / "cache", ORIN, build)
    assert not second.hit and "fails its checksum" in second.reason and len(build.calls) == 2
    assert (second.bundle / "model.engine").read_bytes() == good
    assert build.calls[1][2] is True  # the shared timing cache seeded the rebuild
    engine.write_bytes(good[:100])  # truncated
    third = device_bundle(sources["int8"], tmp_path / "cache", ORIN, build)
    assert not third.hit and "bytes" in third.reason and load_bundle(third.bundle, ORIN)


def test_a_failed_build_leaves_the_cache_as_it_was(sources, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(EngineError, match="simulated"):
        device_bundle(sources["int8"], cache, ORIN, Builder(fail=True))
    assert [p.name for p in cache.iterdir()] == []  # no entry, no staging folder
    ok = device_bundle(sources["int8"], cache, ORIN, Builder())
    assert not ok.hit and sorted(p.name for p in cache.iterdir()) == sorted([ok.bundle.name, "timing.cache"])


def test_old_entries_are_pruned_to_keep(sources, tmp_path):
    cache = tmp_path / "cache"
    a = device_bundle(sources["int8"], cache, ORIN, Builder())
    b = device_bundle(sources["fp16"], cache, ORIN, Builder(), keep=1)
    assert not a.bundle.exists() and b.bundle.exists()


def test_command_line_without_tensorrt_says_what_to_install(sources, tmp_path, capsys):
    code = main(["--bundle", str(sources["int8"]), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr()
    assert code == 2 and err.out == "" and "TensorRT is not installed" in err.err

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


def _format_1(src: Path, root: Path) -> Path:
    """A copy of bundle ``src`` with bundle.json as format 1 wrote it: the FAIR layout before model families
    (model {width, in_channels, image_size}, top-level preprocess and scoring) and no metadata checksum."""
    import shutil

    from fair_edge.models.tensors import OUTPUT_NAMES

    shutil.copytree(src, root)
    data = json.loads((root / MANIFEST).read_text())
    data.pop("metadata_sha256")
    model = data.pop("model")
    pre, settings = model["preprocess"], model["settings"]
    data.update(format_version=1, preprocess=pre, scoring=settings["scoring"],
                model={"width": settings["width"], "in_channels": 1, "image_size": pre["image_size"]})
    data["graph"].update(inputs=["highpass", "colour"], outputs=list(OUTPUT_NAMES))
    (root / MANIFEST).write_text(json.dumps(data, indent=2))
    return root


def test_a_format_1_bundle_is_cached_by_the_sha256_of_its_bundle_json(sources, tmp_path):
    """Format-1 bundles still load, so the cache takes them: keyed on the SHA-256 of bundle.json (format 1 has no
    metadata checksum), a format-1 device bundle with the engine; a hit the second time, and a rebuild when
    bundle.json changes (format 1 cannot verify its settings, so the file's bytes are what identifies it)."""
    old = _format_1(sources["fp16"], tmp_path / "v1")
    build = Builder()
    first = device_bundle(old, tmp_path / "cache", ORIN, build)
    digest = hashlib.sha256((old / MANIFEST).read_bytes()).hexdigest()
    data = json.loads((first.bundle / MANIFEST).read_text())
    assert not first.hit and first.key == engine_key(digest, ORIN) and len(build.calls) == 1
    assert data["format_version"] == 1 and data["device_bundle"]["source_metadata_sha256"] == digest
    b = load_bundle(first.bundle, ORIN)
    assert b.engine.gpu_name == "Orin" and b.precision == "fp16" and b.model == load_bundle(old).model
    assert device_bundle(old, tmp_path / "cache", ORIN, build).hit and len(build.calls) == 1
    edited = json.loads((old / MANIFEST).read_text())
    edited["build_command"] = "fair-edge build final.pt --fp16"
    (old / MANIFEST).write_text(json.dumps(edited, indent=2))
    again = device_bundle(old, tmp_path / "cache", ORIN, build)
    assert not again.hit and again.key != first.key and len(build.calls) == 2


def test_the_entrypoint_reports_a_format_1_bundle_and_any_unexpected_error_without_a_traceback(
        sources, tmp_path, capsys, monkeypatch):
    """``main`` (the container's entrypoint) on a format-1 bundle prints the device bundle's path, exit 0; an error
    that is not the bundle's or the volume's (a builder bug) is one line naming it, exit 1, no traceback."""
    import fair_edge.export.engine_cache as engine_cache
    import fair_edge.export.tensorrt as tensorrt

    old = _format_1(sources["fp16"], tmp_path / "v1")
    monkeypatch.setattr(tensorrt, "current_target", lambda: ORIN)
    monkeypatch.setattr(engine_cache, "tensorrt_builder", Builder())
    code = main(["--bundle", str(old), "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert code == 0 and Path(out.out.strip()).parent == tmp_path / "cache" and "Traceback" not in out.err

    def broken(onnx, engine, bundle, timing_cache):
        raise KeyError("optimization_profile")

    monkeypatch.setattr(engine_cache, "tensorrt_builder", broken)
    code = main(["--bundle", str(sources["int8"]), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr()
    assert code == 1 and err.out == "" and "Traceback" not in err.err
    assert "error: engine cache" in err.err and "KeyError" in err.err and "optimization_profile" in err.err
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []   # no staging left


def _with_timing_cache(src: Path, root: Path) -> Path:
    """A copy of bundle ``src`` that carries a timing.cache of another GPU among its checksummed files, as a
    --no-engine rebuild over a bundle with an engine kept it (before that was fixed)."""
    import shutil

    from fair_edge.export.bundle import write_manifest

    shutil.copytree(src, root)
    (root / "timing.cache").write_bytes(b"timings of NVIDIA GeForce RTX 4090")
    data = json.loads((root / MANIFEST).read_text())
    for key in ("files", "format", "format_version"):
        data.pop(key)
    write_manifest(root, data)
    return root


def test_the_source_bundles_timing_cache_is_never_used(sources, tmp_path):
    """The device engine is built with the cache volume's own timing cache (none on a first start), never with one the
    source bundle carries: TensorRT refuses a cache made on another GPU."""
    src = _with_timing_cache(sources["fp16"], tmp_path / "src")
    assert "timing.cache" in load_bundle(src).files
    build = Builder()
    first = device_bundle(src, tmp_path / "cache", ORIN, build)
    assert build.calls == [("model.fp16.onnx", 4, False)]    # no timing cache when the engine was built
    assert (first.bundle / "timing.cache").read_bytes() == b"timings" and load_bundle(first.bundle, ORIN)


def test_a_device_bundle_has_the_modes_of_the_umask(sources, tmp_path):
    """The device bundle's folder (mkdtemp: 0700) and the files written for it get the umask's modes, so the station's
    service account reads what the entrypoint (maybe another account) cached."""
    import os

    old = os.umask(0o022)
    try:
        entry = device_bundle(sources["int8"], tmp_path / "cache", ORIN, Builder()).bundle
    finally:
        os.umask(old)
    assert (entry.stat().st_mode & 0o777) == 0o755
    for name in ("model.engine", "timing.cache", MANIFEST):
        assert ((entry / name).stat().st_mode & 0o777) == 0o644, name


def test_the_entrypoint_words_an_os_error_by_where_its_file_lies(sources, tmp_path, capsys, monkeypatch):
    """An unreadable file of the source bundle (built by another account) is named with the permissions fix, not
    blamed on the cache volume; an unwritable cache volume still says to mount a writable one."""
    import tempfile

    import fair_edge.export.engine_cache as engine_cache
    import fair_edge.export.tensorrt as tensorrt

    monkeypatch.setattr(tensorrt, "current_target", lambda: ORIN)
    monkeypatch.setattr(engine_cache, "tensorrt_builder", Builder())

    def unreadable(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    with monkeypatch.context() as m:
        m.setattr(engine_cache, "_link_or_copy", unreadable)
        code = main(["--bundle", str(sources["int8"]), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read {sources['int8']}/" in err and "of the bundle" in err, err
    assert f"chmod -R a+rX {sources['int8']}" in err and "Mount a writable volume" not in err

    def read_only(prefix=None, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(dir) / f"{prefix}xyz"))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkdtemp", read_only)
        code = main(["--bundle", str(sources["int8"]), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and f"engine cache {tmp_path / 'cache'}" in err and "Mount a writable volume" in err, err


def test_the_folders_of_engine_builds_killed_outright_are_removed_and_a_live_builds_kept(sources, tmp_path, caplog):
    """A container stopped mid-build leaves its staging folder (an engine of hundreds of MB on an SD card) in the
    cache; the next build removes those whose process no longer runs, never a live build's."""
    import os

    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1 if Path("/proc/sys/kernel/pid_max").exists() else 2**22 + 1
    cache = tmp_path / "cache"
    stale = [cache / f".{'a' * 16}.building-{dead}-abcd_123", cache / f".{'b' * 16}.old-{dead}",
             cache / f".{'d' * 16}.building-{os.getpid()}-abcd_123"]   # a container's entrypoint: the same pid each start
    live = cache / f".{'c' * 16}.building-{os.getppid()}-abcd_123"
    for folder in (*stale, live):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.engine").write_bytes(b"x" * 64)
    with caplog.at_level("WARNING", logger="fair_edge.export.engine_cache"):
        entry = device_bundle(sources["int8"], cache, ORIN, Builder())
    assert not entry.hit and all(not folder.exists() for folder in stale) and live.is_dir()
    assert all(str(folder) in caplog.text for folder in stale) and str(live) not in caplog.text
    assert not [p for p in cache.iterdir() if ".building-" in p.name and p != live]  # this build's own is gone too

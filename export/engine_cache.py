"""TensorRT engines built on the device at first start and cached by bundle hash (the Jetson container's entrypoint).

Engines only load on the GPU and TensorRT version that built them, and a bundle built on a workstation carries
none for a Jetson. ``device_bundle(source, cache, target, build)`` gives the station a bundle with an engine for
*this* machine:
  key         SHA-256 over the source bundle's own checksum (bundle.json's ``metadata_sha256``, which covers
              every file's SHA-256 and every setting; a format-1 bundle, written before that checksum existed,
              the SHA-256 of its bundle.json file, which lists every file's), the GPU name, its compute
              capability and the TensorRT version: the same three facts ``bundle.check_engine_target`` refuses
              a mismatch on;
  CACHE/KEY/  a device bundle: the source bundle's files (hard links where the file system allows), the
              engine and its timing cache, and a bundle.json rewritten by ``write_manifest`` with the engine
              and ``device_bundle: {source, source_metadata_sha256, key}`` (so every file is checksummed again;
              a format-1 source gives a format-1 device bundle: its settings keep their format-1 layout);
  hit         ``load_bundle(CACHE/KEY, target)`` passes (files, checksums, engine target) and it was made from
              this very source bundle; anything else (no entry, a truncated or corrupt engine, a changed
              bundle, another GPU or TensorRT) rebuilds the entry in a staging folder moved into place whole.
              A staging folder names its builder's process (``.KEY.building-PID-xxxxxxxx``): one a build killed
              outright left is removed by the next build (``clear_killed_builds``).
``python -m fair_edge.export.engine_cache --bundle B --cache DIR`` prints the device bundle's path (stdout only);
an error is one line on stderr, never a traceback: exit 2 for a bad bundle or cache volume, 1 for anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fair_edge.errors import BundleError, FairEdgeError
from fair_edge.export.build import ENGINE, TIMING_CACHE, apply_umask, pid_alive
from fair_edge.export.bundle import MANIFEST, METADATA_KEY, Bundle, EngineTarget, load_bundle, write_manifest

log = logging.getLogger(__name__)
SHARED_TIMING_CACHE = "timing.cache"  # in the cache root: tactic timings reused across bundles on this device
DEFAULT_KEEP = 3

# build(onnx, engine_path, bundle, timing_cache) -> the target it built for (``export.tensorrt.build_engine``)
EngineBuilder = Callable[[Path, Path, Bundle, Path], EngineTarget]


@dataclass(frozen=True)
class CachedEngine:
    """bundle: the device bundle to run. hit: it was in the cache. key: its cache key. reason: why it was
    (re)built, '' on a hit. seconds: the engine build time (0 on a hit)."""

    bundle: Path
    hit: bool
    key: str
    reason: str = ""
    seconds: float = 0.0


def engine_key(source_digest: str, target: EngineTarget) -> str:
    """The cache key (64 hex) of a source bundle (its ``metadata_sha256``) on ``target``."""
    parts = [source_digest, target.gpu_name, f"sm_{target.compute_capability[0]}{target.compute_capability[1]}",
             target.tensorrt_version]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def _source(root: Path) -> tuple[dict, str]:
    """(bundle.json's content, the source digest the key is made from) of a loaded bundle: its
    ``metadata_sha256``, or for a format-1 bundle (no such checksum) the SHA-256 of its bundle.json bytes, read
    once, so the digest is of the very content used."""
    raw = (root / MANIFEST).read_bytes()
    data = json.loads(raw)
    if data.get(METADATA_KEY) is not None:
        return data, str(data[METADATA_KEY])
    if data.get("format_version") == 1:
        return data, hashlib.sha256(raw).hexdigest()
    raise BundleError(f"{root / MANIFEST} has no {METADATA_KEY} (format {data.get('format_version')!r}): expected "
                      "one in every bundle of format 2 or later. Rebuild the bundle with `fair-edge build`.")


def _write_device_manifest(staging: Path, manifest: dict, format_version: int) -> None:
    """bundle.json of the device bundle (``write_manifest``: every file checksummed). A format-1 source stays
    format 1, as its settings are laid out (without the metadata checksum format 1 never had)."""
    path = write_manifest(staging, manifest)
    if format_version == 1:
        data = json.loads(path.read_text())
        data.pop(METADATA_KEY, None)
        data["format_version"] = 1
        path.write_text(json.dumps(data, indent=2) + "\n")


def _check_entry(entry: Path, digest: str, target: EngineTarget) -> str:
    """'' when ``entry`` is a device bundle of the source ``digest`` with an engine for ``target``; else why not."""
    if not entry.is_dir():
        return "no cached engine for this bundle, GPU and TensorRT version"
    try:
        load_bundle(entry, target)
        recorded = _manifest(entry).get("device_bundle", {}).get("source_metadata_sha256")
    except (BundleError, OSError, json.JSONDecodeError) as exc:
        return f"cached entry is not usable ({exc})"
    if recorded != digest:
        return f"cached entry was made from another bundle ({str(recorded)[:12]}..., this one is {digest[:12]}...)"
    return ""


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy is as good, only larger
        shutil.copy2(src, dst)


def _assemble(staging: Path, source: Bundle, data: dict, digest: str, key: str, cache: Path,
              build: EngineBuilder) -> float:
    """The device bundle in ``staging``: source files (not its engine nor any timing cache: one made on another GPU,
    kept by an older build even with --no-engine, would only be refused), a new engine, the rewritten manifest."""
    old_engine = data.get("engine") or {}
    skip = {old_engine.get("file"), old_engine.get("timing_cache"), ENGINE, TIMING_CACHE}
    for rel in data["files"]:
        if rel not in skip:
            _link_or_copy(source.root / rel, staging / rel)
    shared = cache / SHARED_TIMING_CACHE
    if shared.is_file():
        shutil.copy2(shared, staging / TIMING_CACHE)
    start = time.perf_counter()
    built = build(staging / source.onnx_path.name, staging / ENGINE, source, staging / TIMING_CACHE)
    seconds = time.perf_counter() - start
    if (staging / TIMING_CACHE).is_file():
        shutil.copy2(staging / TIMING_CACHE, shared)
    manifest = {k: v for k, v in data.items() if k not in ("format", "format_version", "files", METADATA_KEY)}
    manifest["engine"] = {"file": ENGINE, "tensorrt_version": built.tensorrt_version, "gpu_name": built.gpu_name,
                          "compute_capability": list(built.compute_capability),
                          "timing_cache": TIMING_CACHE if (staging / TIMING_CACHE).is_file() else None}
    manifest["device_bundle"] = {"source": str(source.root), "source_metadata_sha256": digest, "key": key}
    _write_device_manifest(staging, manifest, data.get("format_version"))
    return seconds


def _replace(staging: Path, entry: Path) -> None:
    if entry.exists():
        old = entry.with_name(f".{entry.name}.old-{os.getpid()}")
        os.replace(entry, old)
        shutil.rmtree(old, onerror=_log_leftover)
    os.replace(staging, entry)


def _log_leftover(func, path, exc_info) -> None:
    log.warning("engine cache: could not remove %s: %s", path, exc_info[1])


KILLED_BUILD = re.compile(r"\.[0-9a-f]{16}\.(?:building|old)-(\d+)(?:-[a-z0-9_]{8})?")  # .KEY.building-PID-xxxxxxxx


def clear_killed_builds(cache: Path) -> list[Path]:
    """Remove what engine builds killed outright (the container stopped, a power cut) left in ``cache``: staging
    folders ``.KEY.building-PID-xxxxxxxx`` and replaced entries ``.KEY.old-PID`` whose process no longer runs, each
    named in a warning (an engine can be hundreds of MB on a Jetson's SD card); those of a live process stay.
    Returns the folders removed."""
    removed = []
    for path in sorted(cache.iterdir()):
        match = KILLED_BUILD.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink() and not pid_alive(int(match.group(1))):
            log.warning("engine cache: removing %s, left by an engine build whose process %s no longer runs",
                        path, match.group(1))
            shutil.rmtree(path, onerror=_log_leftover)
            removed.append(path)
    return removed


def prune(cache: Path, keep: int, current: Path) -> list[Path]:
    """Remove all but the ``keep`` most recently used entries (``current`` always stays); returns those removed."""
    entries = sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".") and p != current),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    removed = entries[max(keep - 1, 0):]
    for path in removed:
        shutil.rmtree(path, onerror=_log_leftover)
    return removed


def device_bundle(source: str | Path, cache: str | Path, target: EngineTarget, build: EngineBuilder,
                  keep: int = DEFAULT_KEEP) -> CachedEngine:
    """The cached device bundle of ``source`` for ``target``, built with ``build`` when missing or unusable
    (see the module doc). Raises BundleError for a bad source bundle; a failed engine build leaves the cache as
    it was (no entry, or the unusable one) and raises what ``build`` raised."""
    src = load_bundle(source)
    data, digest = _source(src.root)
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    key = engine_key(digest, target)
    entry = cache / key[:16]
    reason = _check_entry(entry, digest, target)
    if not reason:
        os.utime(entry)  # most recently used, for prune
        return CachedEngine(entry, True, key)
    log.warning("engine cache: building a TensorRT engine for %s: %s", src.root, reason)
    clear_killed_builds(cache)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.building-{os.getpid()}-", dir=cache))
    try:
        seconds = _assemble(staging, src, data, digest, key, cache, build)
        load_bundle(staging, target)  # verified before it is moved into place
        apply_umask(staging, linked=False)  # mkdtemp's 0700 would leave it to this account; links keep the source's
        _replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, onerror=_log_leftover)
        raise
    prune(cache, keep, entry)
    return CachedEngine(entry, False, key, reason, seconds)


def tensorrt_builder(onnx: Path, engine: Path, bundle: Bundle, timing_cache: Path) -> EngineTarget:
    """The real builder: ``export.tensorrt.build_engine`` with the bundle's inputs and batch limit."""
    from fair_edge.export.tensorrt import EngineSettings, build_engine

    return build_engine(onnx, engine, bundle.model.inputs, EngineSettings(max_batch=bundle.max_batch), timing_cache)


def _under(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def os_error_line(exc: OSError, bundle: Path, cache: Path) -> str:
    """The entrypoint's one line for ``exc``, worded by where its file lies: in the source ``bundle`` (this account
    cannot read it: permissions), in the ``cache`` volume or none named (not writable, or full), or elsewhere."""
    path = Path(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
    if path is not None and _under(path, bundle):
        return (f"error: cannot read {path} of the bundle {bundle}: {exc.strerror or exc}. The engine cache runs as an "
                f"account that must be able to read every file of the bundle: make it readable (`chmod -R a+rX "
                f"{bundle}`), or rebuild it with `fair-edge build`, which gives it the modes of the builder's umask.")
    if path is None or _under(path, cache):
        return f"error: engine cache {cache}: {exc}. Mount a writable volume there (docs/jetson.md)."
    return f"error: engine cache for {bundle}: {exc}. Check that this account can read and write {path}."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print the path of BUNDLE's device bundle with a TensorRT engine for "
                                 "this GPU, building and caching the engine on first use.")
    ap.add_argument("--bundle", type=Path, required=True, help="bundle folder from `fair-edge build`")
    ap.add_argument("--cache", type=Path, required=True, help="cache folder (a persistent volume)")
    ap.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="cache entries kept (most recently used)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="engine cache: %(message)s", stream=sys.stderr)
    from fair_edge.export.tensorrt import current_target

    try:
        result = device_bundle(args.bundle, args.cache, current_target(), tensorrt_builder, args.keep)
    except FairEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unreadable bundle file, or a read-only or full cache volume
        print(os_error_line(exc, args.bundle, args.cache), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the container's entrypoint: one clear line, not a traceback
        log.debug("engine cache failed", exc_info=True)
        print(f"error: engine cache for {args.bundle} failed unexpectedly: {type(exc).__name__}: {exc}. Check the "
              f"bundle (`fair-edge bench {args.bundle}`), or rebuild it with `fair-edge build`; please report this.",
              file=sys.stderr)
        return 1
    note = "cached" if result.hit else f"built in {result.seconds:.0f} s ({result.reason})"
    print(f"engine cache: {result.bundle} ({note})", file=sys.stderr)
    print(result.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())

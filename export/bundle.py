"""The model bundle: a directory with the ONNX graph(s), an optional TensorRT engine and bundle.json.

bundle.json (format "fair-edge-bundle", version 2) carries every setting the runtime needs:
  model: {family, family_version, settings, preprocess, inputs, outputs} (``ModelSpec.to_dict`` plus
  the graph's named inputs with shapes and the outputs); precision: fp32 | fp16 | int8;
  weights: the fp32 checkpoint file (PyTorch backend); graph: {onnx, reference_onnx, opset, max_batch,
  cpu: {onnx, threshold, pixel_threshold, normal_maps, openvino} of the INT8 graph for CPU engines, or null; its
  pixel_threshold absent in bundles built before each graph kept its own; threshold and pixel_threshold are
  ONNX Runtime's; openvino: {threshold, pixel_threshold, version, missing, normal_maps} calibrated on OpenVINO's
  scores of the same graph and normal images, and OpenVINO's maps of them (``EngineThresholds``; thresholds and
  normal_maps null and missing saying why where OpenVINO was not installed or could not score it; normal_maps absent
  in bundles built before they were kept), absent in bundles built before it was kept};
  threshold: Threshold or null; pixel_threshold: the defect regions' PixelThreshold (``fair_edge.regions``)
  or null (absent in bundles built before regions); normal_maps: {file, count, of, shape: the full maps' [h, w],
  pool: f when max-pooled by f to fit 64 MiB (the file then .npz)} of the held-out normal anomaly maps (``export.normal_maps``: a station with an ROI calibrates its threshold on them), or
  null (absent in bundles built before them); fp32_threshold, fp32_pixel_threshold, fp32_normal_maps: FP16/INT8
  bundles: the Threshold, the PixelThreshold and the {file, count, of, shape} normal maps of the FP32 reference
  graph (the numbers the PyTorch backends' FP32 weights make, parity-checked), null for FP32 bundles or without
  normal images (absent in bundles built before them; fp32_pixel_threshold also in those built before each graph
  kept its own pixel threshold); calibration: {method, num_images, percentile, cache} or null;
  accuracy: measured deltas of this precision vs fp32; training: the checkpoint's data summary;
  facts: the family's figures about this model (``ModelFamily.facts``, e.g. PatchCore's memory bank MB);
  versions: libraries that wrote it; engine: {file, tensorrt_version, gpu_name,
  compute_capability, timing_cache} or null; build_command: the command that rebuilds it;
  quality_gate: INT8 built with --max-drop: {metric, unit, limit, n_normal, n_defect, graphs: {onnx name:
  {fp32, int8, drop, full_drop, kept_float, layers, sensitivity}}} (``calibration.int8_gate``), else null;
  files: {relative name: {sha256, bytes}} for every other file in the bundle (names without '..' that stay inside
  its folder, links followed: ``inside_folder``; a graph's external-data files, if any, among them);
  metadata_sha256: SHA-256 of bundle.json itself (canonical JSON of every other key, ``metadata_digest``),
  so an edited threshold, cutoff or any other setting is refused like a modified file.
``load_bundle`` verifies all of it, and that each graph takes the model's inputs and returns its outputs
(``export.onnx_scan`` reads that from the graph without its weights); ``check_engine_target`` refuses an engine
built elsewhere. A bundle built before fair-edge 9850f8b holds each threshold exactly on its top held-out normal's score
(today's build puts it a margin above): it loads with that margin applied, logged once (``apply_load_margins``).
Version 1 bundles (before model families: model {width, in_channels, image_size}, top-level
preprocess and scoring) are FAIR bundles and still load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Mapping

from fair_edge.calibration.threshold import MARGIN_COMMIT, Threshold, margin_at_load
from fair_edge.regions import PixelThreshold
from fair_edge.checksums import sha256_file
from fair_edge.disk import write_text_whole
from fair_edge.errors import BundleError, ConfigError
from fair_edge.export.onnx_scan import FLOAT, GraphFacts, GraphFormatError, scan_graph
from fair_edge.export.precision import PRECISIONS
from fair_edge.models.registry import LEGACY_FAMILY, ModelSpec
from fair_edge.models.tensors import OUTPUT_NAMES
from fair_edge.preprocess import PreprocessConfig

log = logging.getLogger(__name__)
FORMAT = "fair-edge-bundle"
FORMAT_VERSION = 2
POOLED_MAPS_VERSION = 3   # a bundle holding max-pooled normal maps (*normal_maps.npz): fair-edge before them refuses it
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "bundle.json"
FUSION_MANIFEST = "fusion.json"   # a fused bundle's manifest (written by fair_edge.runtime.fusion)
METADATA_KEY = "metadata_sha256"


@dataclass(frozen=True)
class EngineInfo:
    """A TensorRT engine inside the bundle and what it was built for (engines are not portable)."""

    path: Path
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    timing_cache: Path | None = None


@dataclass(frozen=True)
class EngineTarget:
    """The machine that wants to run an engine: TensorRT version, GPU name, compute capability."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class EngineThresholds:
    """The image and pixel thresholds of a graph calibrated on another engine's scores of it: an INT8 bundle's CPU
    graph on OpenVINO (``graph.cpu.openvino``), whose int8 kernels score it up to ~0.9 % apart from ONNX Runtime's,
    on which ``Bundle.cpu_threshold`` was calibrated (a threshold 1e-3 above the top normal would reject it there).

    threshold: Threshold, None when the build had no images or the engine could not score them (``missing`` says
    why); pixel_threshold: PixelThreshold or None; version: the engine's version that scored them; missing: why
    there are none ("OpenVINO is not installed"), "" when there are; normal_maps_path: the held-out normal maps
    that engine made of the graph (``export.normal_maps``, checksummed; a station with decision.roi calibrates its ROI
    threshold on them), None without them or in bundles built before they were kept. ``to_dict`` leaves it out: the
    build writes the maps' manifest entry (``normal_maps``), ``from_dict`` is given the path it names."""

    threshold: Threshold | None
    pixel_threshold: PixelThreshold | None
    version: str = ""
    missing: str = ""
    normal_maps_path: Path | None = None

    def to_dict(self) -> dict:
        return {"threshold": self.threshold.to_dict() if self.threshold else None,
                "pixel_threshold": self.pixel_threshold.to_dict() if self.pixel_threshold else None,
                "version": self.version, "missing": self.missing}

    @classmethod
    def from_dict(cls, data: dict, normal_maps_path: Path | None = None) -> "EngineThresholds":
        return cls(Threshold.from_dict(data["threshold"]) if data.get("threshold") else None,
                   _pixel_threshold(data.get("pixel_threshold")), str(data.get("version") or ""),
                   str(data.get("missing") or ""), normal_maps_path)


@dataclass(frozen=True)
class MarginMove:
    """A threshold of a bundle built before fair-edge 9850f8b that sat on its top held-out normal score, moved at load
    by today's margin rule (``calibration.threshold.margin_at_load``). attribute: the Bundle's ('threshold',
    'cpu_threshold', 'fp32_threshold'); key: its bundle.json key; old: the value bundle.json holds; new: the one in
    force (score units)."""

    attribute: str
    key: str
    old: float
    new: float


# the Bundle fields holding a build's image thresholds, each with its bundle.json key (``apply_load_margins``)
THRESHOLD_FIELDS = (("threshold", "threshold"), ("cpu_threshold", "graph.cpu.threshold"),
                    ("fp32_threshold", "fp32_threshold"))


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Paths are absolute; mappings are read-only.

    model: family, settings and pre-processing. onnx_path: the graph of ``precision`` (inputs
    ``model.inputs`` by name, outputs anomaly_map (B, 1, S, S), score (B,) float32).
    reference_onnx_path: the fp32 graph.
    threshold: None when the build had no normal images (the station file must then set one).
    weights_path: fp32 weights as a fair-edge checkpoint (no training state), for the PyTorch backend.
    cpu_onnx_path, cpu_threshold: INT8 bundles: the graph CPU engines run (``calibration.int8_cpu``;
    the TensorRT Q/DQ graph runs slower than FP32 there) and the threshold calibrated on ONNX Runtime's scores of it.
    cpu_openvino: the CPU graph's thresholds calibrated on OpenVINO's scores of it, and its normal maps
    (``EngineThresholds``); None in bundles built before they were kept, and for FP32/FP16 bundles (both engines
    score those graphs alike).
    pixel_threshold: the defect regions' pixel threshold (``fair_edge.regions``), calibrated on the same
    normal images as ``threshold``; None in bundles built before regions (the station then finds none
    unless its file sets ``regions.pixel_threshold``). cpu_pixel_threshold, fp32_pixel_threshold: the same,
    calibrated on the CPU graph's / the FP32 reference graph's own normal maps (None where that graph is absent, or
    in bundles built before each graph kept its own); ``graph_pixel_threshold`` picks a backend's.
    normal_maps_path, cpu_normal_maps_path: the held-out normal maps of the graph / of the CPU graph
    (``export.normal_maps``: (N, h, w) float32 .npy, checksummed), None in bundles built before them or
    without normal images.
    fp32_threshold, fp32_normal_maps_path: FP16/INT8 bundles: the threshold and normal maps of the FP32
    reference graph, which the PyTorch backends' FP32 weights reproduce (parity-checked at build); None for
    FP32 bundles (``threshold`` is the FP32 graph's), without normal images, or in bundles built before them.
    margin_moves: the thresholds moved at load (``apply_load_margins``), () when none was.
    """

    root: Path
    model: ModelSpec
    precision: str
    onnx_path: Path
    reference_onnx_path: Path
    opset: int
    max_batch: int
    threshold: Threshold | None
    engine: EngineInfo | None
    build_command: str
    weights_path: Path | None = None
    cpu_onnx_path: Path | None = None
    cpu_threshold: Threshold | None = None
    pixel_threshold: PixelThreshold | None = None
    normal_maps_path: Path | None = None
    cpu_normal_maps_path: Path | None = None
    fp32_threshold: Threshold | None = None
    fp32_normal_maps_path: Path | None = None
    cpu_pixel_threshold: PixelThreshold | None = None
    fp32_pixel_threshold: PixelThreshold | None = None
    cpu_openvino: EngineThresholds | None = None
    calibration: Mapping[str, Any] = field(default_factory=dict)
    accuracy: Mapping[str, float] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    margin_moves: tuple[MarginMove, ...] = ()

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.model.preprocess

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @property
    def map_area(self) -> tuple[int, ...] | None:
        """The frame rectangle (x, y, width, height) its anomaly map covers: a tiled model's ``tiling.roi``;
        None = the whole frame."""
        tiling = self.preprocess.tiling
        return tiling.roi if tiling is not None else None

    def graph_pixel_threshold(self, graph_threshold: Threshold | None) -> PixelThreshold | None:
        """The defect regions' pixel threshold calibrated on the graph a backend runs, told by the image threshold
        its scorer carries (``FrameScorer.graph_threshold``) as ``station.decision.normal_maps_path`` tells that
        graph's normal maps: ``fp32_pixel_threshold`` for ``fp32_threshold`` (the PyTorch backends on an FP16/INT8
        bundle), ``cpu_pixel_threshold`` for ``cpu_threshold`` (ONNX Runtime on an INT8 bundle), ``cpu_openvino``'s for
        its threshold (OpenVINO there), else (None: the bundle's own graph) ``pixel_threshold``. A bundle built before
        each graph kept its own gives ``pixel_threshold``, the main graph's, with a warning logged once per bundle and
        graph."""
        if graph_threshold is None:
            return self.pixel_threshold
        if graph_threshold == self.fp32_threshold:
            graph, own = self.reference_onnx_path, self.fp32_pixel_threshold
        elif graph_threshold == self.cpu_threshold:
            graph, own = self.cpu_onnx_path, self.cpu_pixel_threshold
        elif self.cpu_openvino is not None and graph_threshold == self.cpu_openvino.threshold:
            graph, own = self.cpu_onnx_path, self.cpu_openvino.pixel_threshold
        else:   # a scorer made by hand with a threshold of its own: no graph of the bundle to tell
            return self.pixel_threshold
        if own is None and self.pixel_threshold is not None:
            _warn_main_pixel_threshold(self, graph)
        return own if own is not None else self.pixel_threshold

    def margin_move(self, threshold: Threshold | None) -> MarginMove | None:
        """The move ``apply_load_margins`` made to get ``threshold`` (one of this bundle's thresholds, e.g. a scorer's
        ``graph_threshold``), None where it made none."""
        if threshold is None:
            return None
        return next((move for move in self.margin_moves if getattr(self, move.attribute) == threshold), None)


# (bundle folder, bundle.json checksum) whose thresholds' margin at load was logged
_MARGIN_LOGGED: set[tuple[Path, str]] = set()


def apply_load_margins(bundle: Bundle, data: dict) -> Bundle:
    """``bundle`` (read from the manifest ``data``) with today's threshold rule applied to each image threshold of
    ``THRESHOLD_FIELDS`` (``margin_at_load``): one a build before fair-edge 9850f8b put exactly on the top held-out
    normal score (the station would reject that normal on another backend's ~1e-6) is moved ``margin`` above it,
    recorded in ``margin_moves``; any other is kept. Logged once per bundle (``_log_load_margins``)."""
    moves, unresolved, moved = [], [], {}
    for name, key in THRESHOLD_FIELDS:
        threshold = getattr(bundle, name)
        if threshold is None:
            continue
        result = margin_at_load(threshold)
        if result.moved:
            moved[name] = replace(threshold, value=result.value)
            moves.append(MarginMove(name, key, threshold.value, result.value))
        elif result.unresolved:
            unresolved.append(f"{key} {threshold.value:.9g}: {result.unresolved}")
    _log_load_margins(bundle, data, moves, unresolved)
    return replace(bundle, **moved, margin_moves=tuple(moves)) if moves else bundle


def _log_load_margins(bundle: Bundle, data: dict, moves: list[MarginMove], unresolved: list[str]) -> None:
    """Log, once per bundle folder and bundle.json, the thresholds moved at load (old and new value) and those
    whose margin the bundle does not record enough to apply, each with the command that rebuilds the bundle."""
    key = (bundle.root, str(data.get(METADATA_KEY, "")))
    if (not moves and not unresolved) or key in _MARGIN_LOGGED:
        return
    _MARGIN_LOGGED.add(key)
    rebuild = _rebuild_hint(data)
    if moves:
        told = ", ".join(f"{m.key} {m.old:.9g} -> {m.new:.9g}" for m in moves)
        log.warning("bundle %s was built before fair-edge %s: its thresholds sit exactly on its top held-out normal's "
                    "score, where another backend's ~1e-6 makes that normal NG (a false-reject rate above the one "
                    "bundle.json claims). Applied at load, as today's build does, 1e-3 of the value + 1e-6 above it: "
                    "%s. %s", bundle.root, MARGIN_COMMIT, told, rebuild)
    if unresolved:
        log.warning("bundle %s may hold thresholds on a held-out normal's score (built before fair-edge %s put them a "
                    "margin above), which another backend's ~1e-6 can make NG, and it does not record enough to apply "
                    "the margin at load: %s. They are used as they are. %s", bundle.root, MARGIN_COMMIT,
                    "; ".join(unresolved), rebuild)


# (bundle folder, graph file name) whose fallback to the main graph's pixel threshold was logged
_MAIN_PIXEL_WARNED: set[tuple[Path, str]] = set()


def _warn_main_pixel_threshold(bundle: Bundle, graph: Path | None) -> None:
    """Log once per bundle and graph that a backend running ``graph`` finds defect regions at the main graph's pixel
    threshold: the bundle was built before each graph kept its own."""
    name = graph.name if graph is not None else "?"
    if (bundle.root, name) in _MAIN_PIXEL_WARNED:
        return
    _MAIN_PIXEL_WARNED.add((bundle.root, name))
    hint = f"`{bundle.build_command}`" if bundle.build_command else "`fair-edge build CHECKPOINT --out BUNDLE`"
    main = bundle.pixel_threshold
    log.warning("bundle %s keeps no pixel threshold calibrated on %s, the graph this backend runs (built before each "
                "graph kept its own): defect regions use the main graph's (%s), %.6g, so the share of this graph's "
                "normal map pixels above it can differ from the %.4g %% asked. Rebuild the bundle with %s, or set "
                "regions.pixel_threshold in the station file.", bundle.root, name, bundle.onnx_path.name, main.value,
                100 * (1 - main.quantile), hint)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the bundle's numbers."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    import fair_edge

    return {"fair_edge": fair_edge.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}


def metadata_digest(data: dict) -> str:
    """SHA-256 (hex) of bundle.json's content without its own checksum key, as canonical JSON
    (sorted keys, no whitespace, ASCII), so formatting does not matter and every value does."""
    body = {k: v for k, v in data.items() if k != METADATA_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(root: str | Path, manifest: dict) -> Path:
    """Add ``format``, ``format_version``, the checksums of every file under ``root`` and the metadata
    checksum; write bundle.json atomically. The version is ``FORMAT_VERSION``, or ``POOLED_MAPS_VERSION`` when the
    bundle holds max-pooled normal maps (``export.normal_maps``: maps over 64 MiB), so a station of a fair-edge
    that cannot read those refuses the bundle naming its version instead of failing on the maps; a ``manifest``
    naming its own ``format_version`` (a device bundle keeps its source's) keeps it."""
    root = Path(root)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")):
        rel = path.relative_to(root).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    pooled = any(rel.endswith("normal_maps.npz") for rel in files)
    return write_signed_json(root / MANIFEST, {"format": FORMAT,
                                              "format_version": POOLED_MAPS_VERSION if pooled else FORMAT_VERSION,
                                              **manifest, "files": files})


def write_signed_json(path: Path, data: dict) -> Path:
    """Write ``data`` with its metadata checksum (``METADATA_KEY``: ``metadata_digest`` of the rest; any old one
    replaced) to ``path``, atomically (temporary file + rename: a crash leaves the old file or the new one, never
    half of one). bundle.json and fusion.json are written so."""
    data = {k: v for k, v in data.items() if k != METADATA_KEY}
    data[METADATA_KEY] = metadata_digest(data)
    write_text_whole(path, json.dumps(data, indent=2) + "\n", path.name)
    return path


def _rebuild_hint(data: dict) -> str:
    cmd = data.get("build_command") if isinstance(data, dict) else None
    return f"Rebuild it with `{cmd}`." if cmd else "Rebuild it with `fair-edge build CHECKPOINT --out BUNDLE`."


def _unreadable(root: Path, path: Path, exc: OSError, data: dict) -> BundleError:
    """The BundleError for a file or folder of the bundle at ``root`` that cannot be read (``exc``'s file, else
    ``path``): for want of permission, what the account loading it needs and how to give it; otherwise the system's
    reason and the rebuild hint."""
    name = exc.filename if isinstance(exc.filename, (str, os.PathLike)) else path
    if isinstance(exc, PermissionError):
        return BundleError(
            f"bundle file {name} cannot be read by this account: {exc.strerror or exc}. A bundle must be readable "
            "(files) and searchable (folders) by the account that loads it, e.g. a station's service account: make it "
            f"so (`chmod -R a+rX {root}`, or chown it to that account), or rebuild it with `fair-edge build`, which "
            "gives it the modes of the builder's umask (0644 files, 0755 folders under umask 022).")
    return BundleError(f"bundle file {name} cannot be read: {type(exc).__name__}: {exc}. {_rebuild_hint(data)}")


def _fused_given(root: Path) -> str:
    """The refusal for a fused bundle (``fusion.json``, members ``m0``, ``m1``, ...) given where one bundle is read."""
    members = sorted(p.name for p in root.glob("m[0-9]*") if (p / MANIFEST).is_file())
    held = f" (members {', '.join(members)})" if members else ""
    first = root / (members[0] if members else "m0")
    return (f"{root} is a fused bundle: it holds {FUSION_MANIFEST}{held}, not {MANIFEST}; this command takes one "
            f"bundle. Give one of its members (e.g. {first}), or run the fused bundle with `fair-edge run --bundle "
            f"{root}`.")


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    try:
        if not root.is_dir():
            raise BundleError(f"bundle {root} does not exist or is not a directory. Build one with `fair-edge build`.")
        if not path.is_file() and (root / FUSION_MANIFEST).is_file():
            raise BundleError(_fused_given(root))
        if not path.is_file():
            raise BundleError(f"{root} has no {MANIFEST}; it is not a fair-edge bundle. Build one with `fair-edge build`.")
        raw = path.read_bytes()
    except OSError as exc:
        raise _unreadable(root, path, exc, {}) from exc
    try:
        data = json.loads(raw.decode("utf-8-sig"))   # a BOM (Notepad's) is no damage; the checksum guards content
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is damaged. Rebuild it with `fair-edge build`.") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path} is not a fair-edge bundle manifest (format {FORMAT!r} expected).")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(
            f"{path} has bundle format version {data.get('format_version')!r}; this fair-edge reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. {_rebuild_hint(data)}"
        )
    _verify_metadata(path, data)
    return data


def _verify_metadata(path: Path, data: dict) -> None:
    """Refuse a bundle.json whose content differs from what its build recorded. A format-1 bundle without the metadata
    checksum (written before it existed) loads with a warning; one that carries it (later format-1 builds wrote it) is
    verified like format 2."""
    if data.get("format_version") == 1 and METADATA_KEY not in data:
        log.warning("%s is bundle format 1: its settings carry no checksum and are not verified. %s",
                    path, _rebuild_hint(data))
        return
    recorded, found = data.get(METADATA_KEY), metadata_digest(data)
    if recorded is None:
        raise BundleError(f"{path} has no {METADATA_KEY} (written by an older fair-edge), so its settings cannot be "
                          f"verified. {_rebuild_hint(data)}")
    if recorded != found:
        raise BundleError(
            f"{path} was changed after the build: its metadata checksum is {found[:16]}..., the build recorded "
            f"{str(recorded)[:16]}.... A bundle's settings (threshold, cutoff, image size, ...) are fixed when it is "
            "built. For another decision threshold set decision.threshold in the station file or pass "
            f"`fair-edge run --threshold`; for any other change, rebuild. {_rebuild_hint(data)}"
        )


def _verify_files(root: Path, data: dict) -> dict[str, str]:
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{root / MANIFEST} lists no files. {_rebuild_hint(data)}")
    checksums = {}
    for rel, entry in files.items():
        inside_folder(root, rel, root / MANIFEST, "file", _rebuild_hint(data))
        _check_entry(root, data, rel, entry)
        try:
            checksums[rel] = _verify_file(root, data, rel, entry)
        except OSError as exc:
            raise _unreadable(root, root / rel, exc, data) from exc
    return checksums


def inside_folder(root: Path, rel: object, named_in: Path, what: str, fix: str) -> Path:
    """``root / rel`` when ``rel`` is a relative name without '..' whose path, links followed, stays inside the
    folder ``root`` (a link to another file of the folder is kept; the folder itself may be reached through one);
    else BundleError naming ``named_in`` (the manifest that names it), the name, what was found and ``fix``. A
    bundle's files (bundle.json) and a fused bundle's members (fusion.json) are checked so: a manifest naming
    '../other.onnx', an absolute path or a link leading out would have the station run files nobody verified."""
    expected = f"a relative name inside {root}, without '..'"
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{named_in} names a {what} {rel!r}: expected {expected}. {fix}")
    name = PurePosixPath(rel)
    if name.is_absolute() or ".." in name.parts:
        found = "an absolute path" if name.is_absolute() else "a name with '..'"
        raise BundleError(f"{named_in} names the {what} {rel!r}, outside the bundle: expected {expected}; found "
                          f"{found}. {fix}")
    path, folder = root / rel, root.resolve()
    target = path.resolve()
    if not target.is_relative_to(folder):
        raise BundleError(f"{named_in} names the {what} {rel!r}, a symbolic link leading outside the bundle (to "
                          f"{target}): expected {expected}, links included. {fix}")
    return path


def _verify_file(root: Path, data: dict, rel: str, entry: dict) -> str:
    """The SHA-256 of the bundle file ``rel``; BundleError unless it exists with the size and SHA-256 of ``entry``."""
    path = root / rel
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing (listed in {MANIFEST}). {_rebuild_hint(data)}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise BundleError(
            f"bundle file {path} is {size} bytes; {MANIFEST} expects {entry['bytes']} (truncated or replaced). "
            f"{_rebuild_hint(data)}"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise BundleError(
            f"bundle file {path} fails its checksum: SHA-256 {digest[:16]}..., expected {entry['sha256'][:16]}... "
            f"(modified after the build). {_rebuild_hint(data)}"
        )
    return digest


def _check_entry(root: Path, data: dict, rel: str, entry: object) -> None:
    """BundleError naming the file unless its ``files`` entry is {sha256: 64 hex digits, bytes: size >= 0} (a
    damaged entry in a format-1 manifest, whose content carries no checksum, would otherwise fail as a traceback)."""
    ok = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
          and isinstance(entry.get("bytes"), int) and not isinstance(entry.get("bytes"), bool) and entry["bytes"] >= 0)
    if not ok:
        found = repr(entry) if len(repr(entry)) <= 120 else repr(entry)[:117] + "..."
        raise BundleError(f"{root / MANIFEST} has a damaged checksum entry for {rel!r}: expected {{\"sha256\": 64 hex "
                          f"digits, \"bytes\": file size}}; found {found}. The manifest was edited or damaged after the "
                          f"build, so the file cannot be verified. {_rebuild_hint(data)}")


def _listed(root: Path, data: dict, rel: str | None, what: str) -> Path:
    if not rel or rel not in data["files"]:
        raise BundleError(f"{root / MANIFEST} names {what} {rel!r}, which is not among its checksummed files. {_rebuild_hint(data)}")
    return root / rel


def _engine(root: Path, data: dict) -> EngineInfo | None:
    eng = data.get("engine")
    if eng is None:
        return None
    cache = eng.get("timing_cache")
    return EngineInfo(
        path=_listed(root, data, eng.get("file"), "engine"), tensorrt_version=str(eng["tensorrt_version"]),
        gpu_name=str(eng["gpu_name"]), compute_capability=(int(eng["compute_capability"][0]), int(eng["compute_capability"][1])),
        timing_cache=_listed(root, data, cache, "timing cache") if cache else None,
    )


def _cpu_graph(root: Path, data: dict, cpu: dict | None) -> dict:
    """Bundle fields of the manifest's ``graph.cpu`` entry (absent before the CPU INT8 graph existed)."""
    if not cpu:
        return {}
    threshold = Threshold.from_dict(cpu["threshold"]) if cpu.get("threshold") else None
    openvino = _engine_thresholds(root, data, cpu.get("openvino"))
    return {"cpu_onnx_path": _listed(root, data, cpu["onnx"], "CPU graph"), "cpu_threshold": threshold,
            "cpu_pixel_threshold": _pixel_threshold(cpu.get("pixel_threshold")),
            "cpu_normal_maps_path": _maps(root, data, cpu.get("normal_maps")), "cpu_openvino": openvino}


def _engine_thresholds(root: Path, data: dict, entry: dict | None) -> EngineThresholds | None:
    """``graph.cpu.openvino`` with its normal maps' file among the checksummed ones (``_maps``); None when absent."""
    return EngineThresholds.from_dict(entry, _maps(root, data, entry.get("normal_maps"))) if entry else None


def _pixel_threshold(entry: dict | None) -> PixelThreshold | None:
    """The PixelThreshold of a manifest entry (None when null or absent: built before it was kept)."""
    return PixelThreshold.from_dict(entry) if entry else None


def _maps(root: Path, data: dict, entry: dict | None) -> Path | None:
    """The normal maps file of a manifest's ``normal_maps`` entry (None when absent: built before them)."""
    return _listed(root, data, entry["file"], "normal maps") if entry else None


def model_manifest(model: ModelSpec) -> dict:
    """The ``model`` entry of bundle.json: the spec plus the graph's named inputs and outputs."""
    return {**model.to_dict(), "inputs": [spec.to_dict() for spec in model.inputs], "outputs": list(OUTPUT_NAMES)}


def _model_spec(data: dict) -> ModelSpec:
    """The model of a version-2 manifest, or of a version-1 (FAIR, pre-family) one; checks its inputs."""
    model = data["model"]
    if data["format_version"] == 1:
        settings = {"width": model["width"], "scoring": data["scoring"]}
        spec = ModelSpec.from_dict({"family": LEGACY_FAMILY, "settings": settings, "preprocess": data["preprocess"]})
        if int(model["in_channels"]) != spec.preprocess.in_channels or int(model["image_size"]) != spec.preprocess.image_size:
            raise ConfigError(f"model {model} disagrees with preprocess {spec.preprocess}")
        return spec
    spec = ModelSpec.from_dict(model)
    listed = [(i["name"], list(i["shape"][1:])) for i in model["inputs"]]
    expected = [(i.name, list(i.shape()[1:])) for i in spec.inputs]
    if listed != expected:
        raise ConfigError(f"model inputs {listed} disagree with the {spec.describe()} settings, which make {expected}")
    return spec


def _check_graphs(bundle: Bundle, data: dict) -> None:
    """Refuse a graph of the bundle (its precision's, the FP32 reference, the INT8 CPU one) that ONNX Runtime or
    OpenVINO would run on files nobody verified, or that disagrees with bundle.json's model: read from the graph's
    protobuf without its weights (``onnx_scan``), so before any engine loads it."""
    for path in dict.fromkeys(p for p in (bundle.onnx_path, bundle.reference_onnx_path, bundle.cpu_onnx_path) if p):
        facts = _scan(bundle.root, data, path)
        _check_external_data(bundle.root, data, path, facts)
        _check_graph_io(data, path, bundle.model, facts)


def _scan(root: Path, data: dict, path: Path) -> GraphFacts:
    try:
        return scan_graph(path)
    except GraphFormatError as exc:
        raise BundleError(f"graph {path} is not a readable ONNX model ({exc}). {_rebuild_hint(data)}") from exc
    except OSError as exc:
        raise _unreadable(root, path, exc, data) from exc


def _check_external_data(root: Path, data: dict, path: Path, facts: GraphFacts) -> None:
    """BundleError unless every external-data file the graph names (weights kept beside it, which ONNX Runtime and
    OpenVINO read) is a bundle file listed with its checksum. `fair-edge build` writes graphs with their weights
    inside, so a bundle it built names none."""
    for location in facts.external_files:
        side = PurePosixPath(location)
        rel = None if not location or side.is_absolute() or ".." in side.parts else \
            (PurePosixPath(path.relative_to(root).as_posix()).parent / side).as_posix()
        if rel is None or rel not in data["files"]:
            where = "a file outside the bundle" if rel is None else f"a file {MANIFEST} does not list with a checksum"
            raise BundleError(
                f"graph {path} keeps weights in the external-data file {location!r}, {where}: ONNX Runtime and "
                f"OpenVINO would run the graph on weights nobody verified. Expected every tensor inside the graph (as "
                f"`fair-edge build` writes it) or in a checksummed bundle file. {_rebuild_hint(data)}")


def _dims_text(dims: tuple | None) -> str:
    return "unstated" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _check_graph_io(data: dict, path: Path, model: ModelSpec, facts: GraphFacts) -> None:
    """BundleError unless the graph takes bundle.json's model inputs (names in order; float32; every fixed dim as the
    model's (B, C, S, S), the batch dim not fixed) and returns ``OUTPUT_NAMES``: a graph that disagrees would load,
    then fail on every frame."""
    hint = _rebuild_hint(data)
    expected_names, found_names = list(model.input_names), [i.name for i in facts.inputs]
    if found_names != expected_names:
        raise BundleError(f"graph {path} takes inputs {found_names}; {MANIFEST}'s model ({model.describe()}) "
                          f"feeds {expected_names}. {hint}")
    for spec, found in zip(model.inputs, facts.inputs):
        expected = spec.shape()
        agrees = found.dims is None or (len(found.dims) == len(expected) and all(
            not isinstance(f, int) if isinstance(e, str) else (f == e or not isinstance(f, int))
            for e, f in zip(expected, found.dims)))
        if not agrees or found.elem_type not in (0, FLOAT):
            dtype = "float32" if found.elem_type in (0, FLOAT) else f"ONNX element type {found.elem_type}"
            raise BundleError(f"graph {path} takes input {spec.name!r} as {dtype} {_dims_text(found.dims)}; "
                              f"{MANIFEST}'s model ({model.describe()}) feeds it float32 {_dims_text(expected)}. {hint}")
    missing = [n for n in OUTPUT_NAMES if n not in facts.outputs]
    if missing:
        raise BundleError(f"graph {path} returns outputs {list(facts.outputs)}; a bundle's graph must return "
                          f"{list(OUTPUT_NAMES)} (missing {missing}). {hint}")


def load_bundle(path: str | Path, target: EngineTarget | None = None) -> Bundle:
    """Read and verify a bundle directory (or its bundle.json).

    Checks the format version, that every listed file lies inside the bundle folder (``inside_folder``) and exists
    with its size and SHA-256, the settings' validity, and that each graph keeps no weights in unlisted files and
    takes the model's inputs and returns its outputs (``_check_graphs``). With ``target`` (the TensorRT runtime's machine), also requires an engine
    built for exactly that TensorRT version and GPU. Raises BundleError naming the problem and the
    command that rebuilds the bundle.
    """
    root = Path(path)
    root = (root.parent if root.name == MANIFEST else root).resolve()
    data = _read_manifest(root)
    files = _verify_files(root, data)
    try:
        graph = data["graph"]
        precision = str(data["precision"])
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        threshold = Threshold.from_dict(data["threshold"]) if data.get("threshold") else None
        bundle = Bundle(
            root=root, model=_model_spec(data), precision=precision, onnx_path=_listed(root, data, graph["onnx"], "graph"),
            reference_onnx_path=_listed(root, data, graph["reference_onnx"], "reference graph"),
            opset=int(graph["opset"]), max_batch=int(graph["max_batch"]), threshold=threshold,
            engine=_engine(root, data), build_command=str(data.get("build_command", "")),
            weights_path=_listed(root, data, data["weights"], "weights") if data.get("weights") else None,
            **_cpu_graph(root, data, graph.get("cpu")),
            pixel_threshold=_pixel_threshold(data.get("pixel_threshold")),
            normal_maps_path=_maps(root, data, data.get("normal_maps")),
            fp32_threshold=Threshold.from_dict(data["fp32_threshold"]) if data.get("fp32_threshold") else None,
            fp32_normal_maps_path=_maps(root, data, data.get("fp32_normal_maps")),
            fp32_pixel_threshold=_pixel_threshold(data.get("fp32_pixel_threshold")),
            calibration=MappingProxyType(dict(data.get("calibration") or {})),
            accuracy=MappingProxyType({k: float(v) for k, v in (data.get("accuracy") or {}).items()}),
            training=MappingProxyType(dict(data.get("training") or {})),
            facts=MappingProxyType(dict(data.get("facts") or {})),
            versions=MappingProxyType({k: str(v) for k, v in (data.get("versions") or {}).items()}),
            files=MappingProxyType(files),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BundleError(f"{root / MANIFEST} has a missing or invalid field: {type(exc).__name__}: {exc}. {_rebuild_hint(data)}") from exc
    _check_graphs(bundle, data)
    bundle = apply_load_margins(bundle, data)
    if target is not None:
        check_engine_target(bundle, target)
    return bundle


def check_engine_target(bundle: Bundle, target: EngineTarget) -> EngineInfo:
    """The bundle's engine if it was built for ``target``; else BundleError with the rebuild command."""
    command = shlex.join(w for w in shlex.split(bundle.build_command or "fair-edge build") if w != "--no-engine")
    hint = f"Rebuild on this machine with `{command}`."   # the engine is what is wanted: without --no-engine
    eng = bundle.engine
    if eng is None:
        raise BundleError(f"bundle {bundle.root} has no TensorRT engine (built where TensorRT was absent). {hint}")
    if eng.tensorrt_version != target.tensorrt_version:
        raise BundleError(
            f"engine {eng.path.name} was built with TensorRT {eng.tensorrt_version}; this machine has "
            f"TensorRT {target.tensorrt_version}. Engines only load in the version that built them. {hint}"
        )
    if eng.compute_capability != target.compute_capability or eng.gpu_name != target.gpu_name:
        built = f"{eng.gpu_name} (sm_{eng.compute_capability[0]}{eng.compute_capability[1]})"
        here = f"{target.gpu_name} (sm_{target.compute_capability[0]}{target.compute_capability[1]})"
        raise BundleError(f"engine {eng.path.name} was built for {built}; this GPU is {here}. {hint}")
    return eng

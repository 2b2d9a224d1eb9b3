"""checkpoint -> bundle: export, precision, threshold, optional TensorRT engine, manifest.

``build_bundle`` is the library behind ``fair-edge build``; it never prints. Order of work:
  1. fp32 ONNX + parity with PyTorch (max |map diff| <= PARITY_TOL, else ExportError),
  2. the precision's graph (fp16 casts, or int8 Q/DQ calibrated on normal frames); with a quality gate
     (``--max-drop``), the INT8 graphs are measured on held-out frames and their most sensitive layers
     kept float32 until within the limit, or the build is refused (``calibration.int8_gate``),
  3. accuracy of that graph vs fp32 on the available normal frames (ONNX Runtime, CPU),
  4. decision threshold from normal scores of the deployed graph (plus F1 with defects); the normal frames'
     anomaly maps are kept (``normal_maps.npy``: a station with an ROI calibrates its own threshold on them);
     likewise for every other graph a backend runs, with its own pixel threshold: an INT8 bundle's CPU graph
     (``graph.cpu``; scored on OpenVINO too where it is installed, for OpenVINO's own thresholds and normal maps of
     it, ``graph.cpu.openvino``, ``openvino_normal_maps.npy``: its int8 kernels score that graph up to 0.9 % apart)
     and, for FP16/INT8, the FP32
     reference graph (``fp32_threshold``, ``fp32_pixel_threshold``, ``fp32_normal_maps.npy``: the PyTorch backends
     run the FP32 weights). The FP32 graph is scored on the
     held-out frames once per build (``_HeldOut``), shared by the quality gate, the accuracy probe and its threshold,
  5. bundle.json written and verified; then, where TensorRT is importable, the engine is built and
     the manifest rewritten with it. Without TensorRT the result says what to install.
Before any of it, a tiled model's held-out frames (the threshold's, and the defects) must all give one frame map size
(``check_held_out_grid``): its score is the maximum over a map whose size follows the frame's, and only maps of one
size are kept, the grid the station checks every frame against. bundle.json records the checkpoint file built from
(``source_checkpoint``: path and SHA-256, ``SourceCheckpoint``); ``check_replacing`` is `fair-edge build`'s refusal
to replace a bundle built from another one without --overwrite.
All of it happens in a temporary folder next to the target, moved into place only when complete, its folder and
files given the modes a plain ``mkdir``/``open`` would have (``apply_umask``: the account that loads the bundle, e.g. a
station's service account, reads it as it reads any other file of the builder's). A rebuild into the same ``--out``
reuses the previous bundle's caches (``KEPT_ON_REBUILD``) only where they still match its bundle.json.
The staging folder's name carries the builder's process id (``.NAME.building-PID-xxxxxxxx``): what a killed build
(SIGKILL, a power cut) leaves beside ``--out`` is removed by the next build or fuse into it (``clear_leftovers``),
and a previous bundle a kill left renamed aside (``.NAME.replaced-PID``) is put back. Ctrl-C and SIGTERM wait
while the new bundle is swapped for the previous one (``move_into_place``), so a stop never leaves ``--out``
missing; one during the previous bundle's removal after it is ``StoppedAfterMove``: the build is done. A full,
over-quota or read-only disk is a BundleError naming ``--out``'s disk and its free space (``disk_problem``), never a
traceback. An ``--out`` that is a symbolic link (to a folder on another disk) is followed (``bundle_target``): the
bundle goes where it points, the link is kept.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from fair_edge.calibration.frames import model_frames, preprocess_frames
from fair_edge.calibration.int8 import Int8Settings, quantize_int8
from fair_edge.calibration.int8_cpu import CPU_CALIB_CACHE, CPU_INT8_ONNX, CPU_INT8_OPS, quantize_int8_cpu
from fair_edge.calibration.int8_gate import GateReport, HeldOut, Int8Graph, QualityGate, check_gate_inputs, run_gate
from fair_edge.calibration.onnx_graph import OnnxGraph
from fair_edge.calibration.openvino_graph import OpenVinoGraph, openvino_version
from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE, Threshold, calibrate_threshold, check_spread
from fair_edge.checksums import sha256_file
from fair_edge.models.checkpoint import Checkpoint, save_checkpoint
from fair_edge.errors import BundleError, ConfigError, DataError, ExportError, FairEdgeError, TensorRTMissingError
from fair_edge.export.accuracy import GraphDelta, graph_delta
from fair_edge.export.bundle import (FUSION_MANIFEST, MANIFEST, Bundle, EngineThresholds, library_versions, load_bundle,
                                     model_manifest, write_manifest)
from fair_edge.disk import stops_deferred, write_failure
from fair_edge.shell import shell_word
from fair_edge.export.normal_maps import CPU_NORMAL_MAPS, FP32_NORMAL_MAPS, NORMAL_MAPS, write_normal_maps
from fair_edge.export.onnx_export import OPSET, example_inputs, export_onnx, torch_reference
from fair_edge.export.precision import PRECISIONS, get_precision
from fair_edge.models.tensors import ANOMALY_MAP, SCORE
from fair_edge.regions import DEFAULT_PIXEL_QUANTILE, PixelThreshold, calibrate_pixel_threshold
from fair_edge.tiling import tile_layout

log = logging.getLogger(__name__)
PARITY_TOL = 1e-4
CALIB_CACHE = "calibration.json"
TIMING_CACHE = "timing.cache"
ENGINE = "model.engine"
WEIGHTS = "weights.pt"
KEPT_ON_REBUILD = (CALIB_CACHE, CALIB_CACHE + ".key", CPU_CALIB_CACHE, CPU_CALIB_CACHE + ".key", TIMING_CACHE)
# with --no-engine the TensorRT timing cache is not kept: no engine is built, and a cache of another GPU must not travel
# in the bundle to the machine that builds its engine (the Jetson's engine cache)
ENGINE_ONLY = (TIMING_CACHE,)
GATE_DONE = "done: "   # the start of the quality gate's last step (``on_gate_step``): the gate is over
# the manifest's FP32 reference entries of a bundle without them (FP32: its own thresholds are that graph's; no frames)
NO_FP32_REFERENCE = {"fp32_threshold": None, "fp32_pixel_threshold": None, "fp32_normal_maps": None}
STALE_AGE_S = 3600.0   # a staging folder without a process id (older fair-edge) unchanged this long is abandoned, s
# the INT8 CPU graph's held-out normal maps as OpenVINO scores them (``graph.cpu.openvino.normal_maps``): a station with
# decision.roi calibrates OpenVINO's ROI threshold on them, as ONNX Runtime's on ``cpu_normal_maps.npy``
OPENVINO_NORMAL_MAPS = "openvino_normal_maps.npy"


@dataclass(frozen=True)
class SourceCheckpoint:
    """The checkpoint file a bundle is built from, as bundle.json records it (``source_checkpoint``). path: the
    file's absolute path when built; sha256: the hex SHA-256 of its bytes ("" where not recorded: a bundle built
    before it was, whose path comes from its ``build_command``)."""

    path: str
    sha256: str = ""

    @classmethod
    def of(cls, checkpoint: Path) -> SourceCheckpoint:
        """The record of the checkpoint file ``checkpoint`` (read once, whole, for its SHA-256)."""
        return cls(str(Path(checkpoint).resolve()), sha256_file(Path(checkpoint)))

    def same_as(self, other: SourceCheckpoint) -> bool:
        """The same checkpoint: the same file (path), or the same bytes under another name (a copy, a moved run)."""
        return self.path == other.path or bool(self.sha256) and self.sha256 == other.sha256

    def describe(self) -> str:
        """'/abs/runs/pc/final.pt (SHA-256 1a2b3c4d5e6f...)', for messages."""
        return f"{self.path} (SHA-256 {self.sha256[:12]}...)" if self.sha256 else self.path

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class BuildOptions:
    """precision: fp32 | fp16 | int8. max_batch: the engine profile's and runtime's batch limit.
    int8: calibration settings. false_reject_rate: threshold target on normal images.
    engine: try to build a TensorRT engine. command: the command line that rebuilds (stored).
    quality: INT8 only: the quality gate (``calibration.int8_gate``), None = none.
    pixel_quantile: the defect regions' pixel threshold = this quantile of the normal maps' pixels
    (``fair_edge.regions``). threshold_images: the option and folder the held-out normal images came from, for
    messages ("--normal data/dup"); "" names none; calib_images, defect_images: the same for the calibration
    ("--calib data/train") and defect ("--defects data/ng") images. source: the checkpoint file built from (``SourceCheckpoint``),
    recorded in bundle.json as ``source_checkpoint``; None (a library caller's checkpoint in memory): null there."""

    precision: str = "fp32"
    max_batch: int = 8
    int8: Int8Settings = field(default_factory=Int8Settings)
    false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE
    engine: bool = True
    command: str = ""
    quality: QualityGate | None = None
    pixel_quantile: float = DEFAULT_PIXEL_QUANTILE
    threshold_images: str = ""
    source: SourceCheckpoint | None = None
    calib_images: str = ""
    defect_images: str = ""

    def __post_init__(self) -> None:
        get_precision(self.precision)
        if not 1 <= self.max_batch <= 1024:
            raise ConfigError(f"max_batch must be in 1..1024; found {self.max_batch}.")
        if not 0.5 <= self.pixel_quantile < 1.0:
            raise ConfigError(f"--pixel-quantile must be in [0.5, 1); found {self.pixel_quantile}.")


@dataclass(frozen=True)
class BuildResult:
    """bundle: the verified bundle. seconds: wall time. engine_note: why no engine, or its build time.
    delta: this precision vs fp32 (None for fp32). calibration_reused: the INT8 cache was reused."""

    bundle: Bundle
    seconds: float
    engine_built: bool
    engine_note: str
    delta: GraphDelta | None
    parity_max_abs: float
    calibration_reused: bool = False
    quality_gate: GateReport | None = None


def check_inputs(out: Path, options: BuildOptions, has_calib: bool, has_normal: bool = False) -> None:
    """Everything that can be refused before any work: where the bundle goes and what the precision needs."""
    check_gate_inputs(options.quality, options.precision, has_normal)
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file; pass a directory for the bundle.")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(f"--out {out} exists and is not a fair-edge bundle; choose an empty or new directory.")
    if get_precision(options.precision).needs_calibration and not has_calib:
        raise DataError(f"--{options.precision} needs normal images for calibration; pass --calib with a folder of "
                        "normal images or a dataset (e.g. data/bracket, elpv:mono): its training images are used.")


def recorded_source(out: Path) -> SourceCheckpoint | None:
    """The checkpoint the bundle at ``out`` was built from, as its bundle.json records it: ``source_checkpoint``, or
    (a bundle built before that was recorded) the checkpoint path its ``build_command`` names; None when it records
    neither (built by the library, ``fair-edge demo`` or bench) or its bundle.json cannot be read."""
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    source = data.get("source_checkpoint") if isinstance(data, dict) else None
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        return SourceCheckpoint(source["path"], str(source.get("sha256") or ""))
    try:
        words = shlex.split(str(data.get("build_command") or ""))
    except ValueError:
        return None
    if words[:2] == ["fair-edge", "build"] and len(words) > 2 and not words[2].startswith("-"):
        return SourceCheckpoint(words[2])
    return None


def check_replacing(out: Path, source: SourceCheckpoint, overwrite: bool, default_out: bool = False) -> str | None:
    """BundleError when ``out`` holds a bundle built from another checkpoint than ``source`` (``recorded_source``;
    one that records none counts as another) and ``overwrite`` (--overwrite) is not given: the build would replace
    it, and a station running it would load the other model at its next start or reload. Names both checkpoints and
    the fixes; default_out: ``out`` is build's default, shared by every checkpoint of one model tag and precision.
    Returns the replaced bundle's checkpoint in words when ``overwrite`` replaces another's (None otherwise). A
    rebuild from the same checkpoint (recalibrating, another --normal) replaces its bundle as before."""
    if not (out / MANIFEST).is_file():
        return None
    recorded = recorded_source(out)
    if recorded is not None and recorded.same_as(source):
        return None
    if overwrite:
        return (f"another checkpoint, {recorded.describe()}" if recorded is not None else
                "a checkpoint its bundle.json does not record")
    shared = (" (the default --out, runs/bundle-TAG-PRECISION, is the same for every checkpoint of this model and "
              "precision)" if default_out else "")
    held, even = ((f"holds a bundle built from another checkpoint, {recorded.describe()}, not from {source.describe()}",
                   "") if recorded is not None else
                  ("holds a bundle whose bundle.json does not record the checkpoint it was built from (made by the "
                   "library, or an earlier `fair-edge demo` or bench), so fair-edge cannot tell whether it is the model "
                   f"of {source.describe()}", " (needed even when it is that model)"))
    alternative = out.with_name(f"{out.name}-{Path(source.path).parent.name}")
    raise BundleError(
        f"--out {out}{shared} {held}: this build would replace it, and a station running it would load the new model "
        f"at its next start or reload. Pass another --out (e.g. --out {shell_word(str(alternative))}), or --overwrite "
        f"to replace it{even}.")


def check_held_out_grid(preprocess, threshold: tuple[str, Sequence[np.ndarray]],
                        defects: tuple[str, Sequence[np.ndarray]]) -> None:
    """DataError when a tiled model's held-out frames do not all give one frame map (``tiling.tile_layout``'s
    map_hw): threshold: (the option they came from, "--normal data/x", the threshold's frames: (H, W, 3) uint8 each);
    defects: the same for --defects. A tiled model's score is the maximum over a map whose size follows the frame's,
    so a threshold calibrated on a mix holds for none of the sizes, and the bundle could keep no normal maps, so no
    calibrated grid: the station would decide frames of any size against it, without its frame-size check
    (``station.inspector.ViewDecider.off_grid``). Names each frame size with its count, the map it gives and the
    fix. Whole-frame models (every frame resized to the model's size) are not checked."""
    tiling = preprocess.tiling
    if tiling is None:
        return
    grids: dict[tuple[int, int], Counter] = {}
    for name, frames in (threshold, defects):
        for frame in frames or ():
            frame_hw = tuple(int(v) for v in np.shape(frame)[:2])
            grid = tile_layout(frame_hw, tiling, preprocess.image_size).map_hw
            grids.setdefault(tuple(grid), Counter())[(frame_hw, name)] += 1
    if len(grids) <= 1:
        return
    found = "; ".join(f"{grid[0]} x {grid[1]} from " + ", ".join(
        f"{w} x {h} px frames ({count} of {name})" for ((h, w), name), count in counts.items())
        for grid, counts in grids.items())
    raise DataError(
        f"{' and '.join(dict.fromkeys(n for n, f in (threshold, defects) if f))}: a tiled model's held-out frames "
        f"must all give one frame map size, as the station's camera frames do; found {len(grids)} map sizes: {found}. "
        "Its score is the maximum over the frame map, whose size follows the frame's: a threshold calibrated on a mix "
        "holds for none of the sizes, and the bundle could record no calibrated map size, so the station would decide "
        "frames of any size against it without its frame-size check. Pass held-out normal (and defect) images of the "
        "station camera's frame size only.")


def staging_folder(out: Path, options: BuildOptions) -> Path:
    """A fresh folder next to ``out`` (same file system, so the final move is a rename), seeded with the
    previous bundle's reusable caches (``_kept_files``). BundleError naming ``--out`` where that folder cannot be
    made (a read-only or someone else's folder)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        disk = disk_problem(out, exc)
        if disk:
            raise BundleError(f"--out {out}: cannot create the bundle's temporary folder in {out.parent}: {disk}, "
                              "then run it again.") from exc
        raise BundleError(
            f"--out {out}: cannot create the bundle's temporary folder in {out.parent} ({exc.strerror or exc}); the "
            "bundle is built next to --out and moved into place, so that folder must be writable by this account. "
            "Choose an --out in a folder you can write, or make that folder writable.") from exc
    name = None
    try:
        for name in _kept_files(out, options):
            shutil.copy2(out / name, staging / name)
    except OSError as exc:
        discard_staging(staging)
        disk = disk_problem(out, exc)
        fix = f"{disk}, then run it again" if disk else f"Make it readable, or delete {out} to build afresh"
        cache = out / name if name else exc.filename
        raise BundleError(f"--out {out}: cannot copy the previous bundle's cache {cache} ({exc.strerror or exc}). "
                          f"{fix}.") from exc
    return staging


def disk_problem(out: Path, exc: OSError) -> str | None:
    """What a write beside ``out`` that failed on its disk means and the fix, as one clause ("the disk of --out B is
    full (12.0 MB free on the disk of DIR). Free space ... disk"; ``disk.write_failure``, the wording every writer
    uses): full (ENOSPC), over quota (EDQUOT) or read-only (EROFS); None for any other OSError (a permission, a
    missing folder: the caller's own words)."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return None
    return write_failure(out.parent, exc, named=f"--out {out}")


def bundle_target(out: Path) -> Path:
    """The folder a build or fuse into ``--out out`` writes: ``out`` itself, or, when ``out`` is a symbolic link (to a
    folder, or to one not made yet), where it points, resolved once and said in a warning. The link is kept: renaming
    it aside put the bundle beside it, on the link's disk, and left the link as ``.NAME.replaced-PID``, which is
    tidied here (``clear_leftovers`` beside the link; the target's side is the caller's)."""
    if not out.is_symlink():
        return out
    try:
        os.path.realpath(out, strict=True)
    except FileNotFoundError:
        pass   # a link to a folder not made yet: built there
    except OSError as exc:   # ELOOP: the link leads back to itself
        raise BundleError(f"--out {out} is a symbolic link that never reaches a folder ({exc.strerror}: "
                          f"{os.readlink(out)!r}); remove the link (`rm {shell_word(str(out))}`) or point it at a folder, then "
                          "run the command again.") from exc
    clear_leftovers(out)
    target = Path(os.path.realpath(out))
    log.warning("--out %s is a link to %s: the bundle is written there and the link kept", out, target)
    return target


def clear_leftovers(out: Path, now: float | None = None) -> None:
    """Tidy what killed builds or fuses into ``out`` (SIGKILL, a power cut: no cleanup ran) left beside it, each
    named in a warning: staging folders ``.NAME.building-PID-xxxxxxxx`` whose process no longer runs, and those of
    an older fair-edge (no PID) unchanged for ``STALE_AGE_S`` (``now``: time.time(), s) are removed; a previous
    bundle renamed aside (``.NAME.replaced-PID``, its process gone) is removed when ``out`` exists (a kill while
    deleting it), and put back as ``out`` when ``out`` is missing (a kill between ``move_into_place``'s two
    renames) and it is the only one and holds a manifest; otherwise the warning names the ``mv`` that restores it.
    Such a leftover that is a symbolic link (an older fair-edge renamed a linked ``--out`` aside) is unlinked, what
    it points to kept, or put back as ``out`` alike.
    Folders of live processes (a build running beside this one) are kept. Never raises."""
    try:
        names = sorted(os.listdir(out.parent))
    except OSError:
        return   # no folder yet (nothing to tidy), or unreadable: the build's own checks name it
    now = time.time() if now is None else now
    building = re.compile(rf"\.{re.escape(out.name)}\.building-(?:(\d+)-)?[a-z0-9_]{{8}}")
    replaced = re.compile(rf"\.{re.escape(out.name)}\.replaced-(\d+)")
    for name in names:
        match = building.fullmatch(name)
        if match and _real_dir(out.parent / name):
            why = _abandoned(out.parent / name, match.group(1), now)
            if why:
                _remove_leftover(out.parent / name, f"an unfinished build or fuse into {out} ({why})")
    dead = [out.parent / n for n in names if (m := replaced.fullmatch(n)) and _dir_or_link(out.parent / n)
            and not pid_alive(int(m.group(1)))]
    if dead and os.path.lexists(out):
        for old in dead:
            _remove_leftover(old, f"the previous version of {out}, which a finished build replaced")
    elif dead:
        _restore(out, dead)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (this account's or another's) and is not this one (a leftover named with
    this process's pid is an earlier process's: a container's entrypoint gets the same pid at every start); always
    True where that cannot be asked without signalling it (not POSIX), so nothing of a live build is ever removed."""
    if os.name != "posix":
        return True
    if pid == os.getpid():
        return False
    if pid <= 0:
        return False   # never a builder's id (0 and negatives address process groups)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True    # exists, owned by another account
    except (OverflowError, ValueError):
        return False   # no process can have that id
    return True


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _dir_or_link(path: Path) -> bool:
    """A real folder, or a symbolic link (to anything, or dangling): what a previous ``--out`` renamed aside can be."""
    return path.is_symlink() or path.is_dir()


def _abandoned(folder: Path, pid: str | None, now: float) -> str | None:
    """Why the staging ``folder`` is abandoned ("process 123 no longer runs"), or None while its builder may run."""
    if pid is not None:
        return None if pid_alive(int(pid)) else f"process {pid} no longer runs"
    try:
        newest = max([folder.stat().st_mtime] + [p.lstat().st_mtime for p in folder.rglob("*")])
    except OSError:
        return None
    idle = now - newest
    return f"unchanged for {idle / 60:.0f} min" if idle > STALE_AGE_S else None


def _folder_mb(folder: Path) -> float:
    """The size of the files under ``folder``, MB (2**20 bytes); what can be read of it."""
    total = 0
    try:
        for path in folder.rglob("*"):
            try:
                total += 0 if path.is_dir() else path.lstat().st_size
            except OSError:
                pass
    except OSError:
        pass
    return total / 2**20


def _remove_leftover(folder: Path, what: str) -> None:
    """Remove the leftover ``folder`` with a warning naming it, ``what`` left it and its size; a symbolic link is
    unlinked, what it points to kept."""
    if folder.is_symlink():
        try:
            target = os.readlink(folder)
            folder.unlink()
            log.warning("removing %s: a link to %s left by %s (%s itself is kept)", folder, target, what, target)
        except OSError as exc:
            log.warning("could not remove %s, left by %s: %s", folder, what, exc.strerror or exc)
        return
    size = _folder_mb(folder)
    log.warning("removing %s: left by %s, %.1f MB", folder, what, size)
    discard_staging(folder)


def _restore(out: Path, dead: list[Path]) -> None:
    """``out`` is missing and ``dead`` hold previous versions a killed build renamed aside: the only one, if it holds a
    manifest, is put back as ``out``; else a warning names them and the fix."""
    old = dead[0]
    if len(dead) == 1 and any((old / m).is_file() for m in (MANIFEST, FUSION_MANIFEST)):
        try:
            os.replace(old, out)
            log.warning("%s was missing: a build or fuse killed while moving its result into place left the previous "
                        "version in %s; it is back as %s", out, old, out)
            return
        except OSError as exc:
            log.warning("cannot put back %s as %s (%s)", old, out, exc.strerror or exc)
    log.warning("%s is missing; %s: previous versions of it that killed builds or fuses renamed aside, not put back "
                "(more than one, or no manifest in it). To restore one: `mv %s %s`", out, ", ".join(map(str, dead)),
                old, out)


def _kept_files(out: Path, options: BuildOptions) -> list[str]:
    """The ``KEPT_ON_REBUILD`` files of the bundle at ``out`` that a rebuild may reuse: each listed in its bundle.json
    with the SHA-256 it has now (a damaged or changed cache is left behind and made anew: INT8 ranges
    recalibrated, a timing cache rebuilt); not the timing cache when no engine is wanted (``ENGINE_ONLY``)."""
    names = [n for n in KEPT_ON_REBUILD if (out / n).is_file() and (options.engine or n not in ENGINE_ONLY)]
    if not names:
        return []
    try:
        listed = json.loads((out / MANIFEST).read_text()).get("files") or {}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s is unreadable (%s): none of its caches is reused", out / MANIFEST, exc)
        return []
    kept = []
    for name in names:
        entry = listed.get(name) if isinstance(listed, dict) else None
        if isinstance(entry, dict) and entry.get("sha256") == sha256_file(out / name):
            kept.append(name)
        else:
            anew = "TensorRT times its tactics anew" if name in ENGINE_ONLY else "the INT8 ranges are calibrated again"
            log.warning("%s does not match the SHA-256 its bundle.json records (damaged or changed after the build): "
                        "not reused; %s", out / name, anew)
    return kept


def current_umask() -> int:
    """The process's file mode creation mask (e.g. 0o022), read from /proc where Linux shows it, so that no other
    thread ever sees a changed mask; elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_umask(root: Path, linked: bool = True) -> None:
    """Give ``root``, its folders and files the modes a plain ``mkdir``/``open`` makes under the current umask: folders
    0o777 & ~umask, files 0o666 & ~umask (e.g. 0o755 and 0o644). ``tempfile.mkdtemp`` makes 0o700 and ONNX Runtime
    writes its calibration caches 0o600, which would survive the final rename: a bundle readable by its builder
    alone. linked=False leaves files with other hard links (shared with a source bundle) as they are."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        elif linked or path.stat().st_nlink == 1:
            os.chmod(path, 0o666 & ~mask)


class StoppedAfterMove(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that stopped ``move_into_place`` once the new folder was in place at ``out``: the build or fuse
    is finished, only the removal of the previous version was cut short. ``leftover``: that version's copy beside
    ``out`` (``.NAME.replaced-PID``, which the next build or fuse into ``out`` removes: ``clear_leftovers``), None when
    none is left. Raised from the interrupt itself (``__cause__``: KeyboardInterrupt, or the CLI's Terminated)."""

    def __init__(self, out: Path, leftover: Path | None) -> None:
        super().__init__(f"stopped once {out} was in place" + (f"; {leftover} is left" if leftover else ""))
        self.out, self.leftover = out, leftover


def move_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` (absent or a previous bundle) by the finished ``staging`` folder, given the umask's modes. The
    previous bundle is renamed aside first, then ``staging`` renamed to ``out``, with Ctrl-C and SIGTERM held back
    between (``disk.stops_deferred``), so no stop leaves ``out`` missing; when the second rename fails the previous
    bundle is put back and the error raised (``out`` as it was). Once both renames ran the move is done: the previous
    bundle's removal is cleanup, a warning naming it when it fails, and a stop during it (or one held back until
    then) is StoppedAfterMove. A stop before the renames is raised as it came, ``staging`` and ``out`` untouched."""
    apply_umask(staging)
    old = out.parent / f".{out.name}.replaced-{os.getpid()}" if out.exists() else None
    try:
        with stops_deferred():
            _swap(staging, out, old)
        if old is not None:
            shutil.rmtree(old, onerror=lambda _f, path, exc_info: log.warning(
                "%s is in place, but its previous version could not be removed (%s): delete %s", out, exc_info[1], old))
    except KeyboardInterrupt as stop:
        if os.path.lexists(staging):   # not moved: out is as it was
            raise
        leftover = old if old is not None and os.path.lexists(old) else None
        raise StoppedAfterMove(out, leftover) from stop


@contextmanager
def in_place(out: Path) -> Iterator[None]:
    """For work after ``move_into_place`` put the new folder at ``out`` (loading it back): a Ctrl-C or SIGTERM inside
    is StoppedAfterMove (nothing left beside ``out``), so it is not taken for a stop before the move."""
    try:
        yield
    except StoppedAfterMove:
        raise
    except KeyboardInterrupt as stop:
        raise StoppedAfterMove(out, None) from stop


def _swap(staging: Path, out: Path, old: Path | None) -> None:
    """Rename ``out`` to ``old`` (None: there is no ``out``), then ``staging`` to ``out``; on any exception before the
    second rename ran, ``old`` is put back as ``out`` and the exception raised."""
    try:
        if old is not None:
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException:
        if old is not None and os.path.lexists(staging) and os.path.lexists(old) and not os.path.lexists(out):
            os.replace(old, out)
        raise


def named_in_place(exc: FairEdgeError, staging: Path, out: Path) -> FairEdgeError:
    """``exc`` with every path in the (removed) staging folder named as in ``out``: the file the user can act on (a
    kept cache came from there); ``exc`` itself when it names none."""
    message = str(exc)
    if str(staging) not in message:
        return exc
    try:
        renamed = type(exc)(message.replace(str(staging), str(out)))
    except TypeError:  # an error class with another constructor: keep it as raised
        return exc
    renamed.__dict__.update(exc.__dict__)
    return renamed


@contextmanager
def staged(out: Path, options: BuildOptions) -> Iterator[Path]:
    """A staging folder beside ``out`` (``staging_folder``) for the body to write the new bundle into. On any exception
    it is removed (``discard_staging``), and a FairEdgeError naming a path in it is raised again naming that path in
    ``out`` (``named_in_place``), the file the user can act on; an OSError of a full, over-quota or read-only disk
    is a BundleError naming ``out``'s disk and its free space (``disk_problem``)."""
    staging = staging_folder(out, options)
    try:
        yield staging
    except FairEdgeError as exc:
        discard_staging(staging)
        renamed = named_in_place(exc, staging, out)
        if renamed is exc:
            raise
        raise renamed from exc
    except OSError as exc:
        disk = disk_problem(out, exc)
        written = _folder_mb(staging) if disk else 0.0
        discard_staging(staging)
        if disk is None:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        raise named_in_place(BundleError(
            f"--out {out}: cannot write the bundle ({where}{exc.strerror or exc}; {written:.1f} MB were written): "
            f"{disk}, then run it again. {out} is left as it was."), staging, out) from exc
    except StoppedAfterMove:
        raise   # the staging folder is the bundle at ``out`` now
    except BaseException:
        discard_staging(staging)
        raise


def discard_staging(staging: Path) -> None:
    """Remove the staging folder of an unfinished bundle; what cannot be removed is a warning naming it. One that is
    gone already (moved into place, or removed by the caller) is fine."""
    if not os.path.lexists(staging):
        return

    def report(func, path, exc_info) -> None:
        log.warning("could not remove %s of an unfinished bundle: %s", path, exc_info[1])

    shutil.rmtree(staging, onerror=report)


Inputs = dict[str, np.ndarray]


def _fp32_with_parity(ckpt: Checkpoint, out: Path) -> tuple[Path, float]:
    detector = ckpt.build_detector("cpu")
    path = export_onnx(ckpt.model, detector, out / PRECISIONS["fp32"].onnx_name, "fp32")
    inputs = {n: t.numpy() for n, t in example_inputs(ckpt.model, batch=3, seed=1).items()}
    ref = torch_reference(detector, inputs, ckpt.model.input_names)
    got = OnnxGraph(path, ckpt.model.input_names).infer(inputs)
    err = float(np.abs(got[ANOMALY_MAP] - ref[ANOMALY_MAP]).max())
    if not err <= PARITY_TOL:
        raise ExportError(f"fp32 ONNX differs from PyTorch by {err:.2e} (max |map diff|); expected <= {PARITY_TOL:.0e}.")
    return path, err


def _precision_graph(ckpt: Checkpoint, out: Path, fp32: Path, options: BuildOptions,
                     calib: Inputs | None, on_image: Callable[[], None] | None) -> tuple[Path, bool]:
    prec = get_precision(options.precision)
    if prec.name == "fp32":
        return fp32, False
    if prec.name == "fp16":
        return export_onnx(ckpt.model, ckpt.build_detector("cpu"), out / prec.onnx_name, "fp16"), False
    reused = quantize_int8(fp32, out / prec.onnx_name, calib, ckpt.model.int8_scope, options.int8,
                           out / CALIB_CACHE, on_image)
    return out / prec.onnx_name, reused


class _HeldOut(HeldOut):
    """``HeldOut`` that runs the FP32 reference graph on the held-out frames once per build: its outputs are kept and
    shared by the quality gate (``held.scores(fp32)``), the accuracy probe (``reference_graph``) and the thresholds
    of an FP32 bundle or of the FP32 weights (``maps_scores(fp32)``). Every other graph runs as in ``HeldOut``."""

    def __init__(self, model, normal: Sequence[np.ndarray], defects: Sequence[np.ndarray], reference: Path) -> None:
        super().__init__(model, normal, defects)
        self.reference, self._outputs = Path(reference), None

    def reference_outputs(self) -> dict[str, np.ndarray]:
        """{anomaly_map: (T, 1, S, S), score: (T,)} float32: the FP32 graph on all T held-out inputs (tiles), run once."""
        if self._outputs is None:
            graph = OnnxGraph(self.reference, self.model.input_names)
            try:
                self._outputs = graph.infer_batched(self.inputs)
            finally:
                graph.close()
        return self._outputs

    def maps_scores(self, graph: Path, engine: Callable = OnnxGraph) -> tuple[list[np.ndarray], np.ndarray]:
        if Path(graph) != self.reference or engine is not OnnxGraph:
            return super().maps_scores(graph, engine)
        out = self.reference_outputs()
        maps, scores = self.tiler.stitch(out[ANOMALY_MAP][:, 0], out[SCORE], self.layouts)
        scores = np.asarray(scores, np.float64)
        bad = int((~np.isfinite(scores)).sum())
        if bad:
            raise ExportError(f"{self.reference.name} scores {bad} of {len(scores)} held-out images as NaN or infinite; "
                              "expected finite scores. Check the checkpoint (train again if its weights hold NaN).")
        return maps, scores

    def reference_graph(self) -> "_RecordedNormals":
        """The FP32 graph's kept outputs on the normal inputs, as ``graph_delta``'s reference graph."""
        return _RecordedNormals(self)


class _RecordedNormals:
    """An ``OnnxGraph`` stand-in for ``graph_delta``: ``infer_batched(held.normal_inputs)`` returns the FP32 outputs
    ``_HeldOut`` kept ({anomaly_map: (T_normal, 1, S, S), score: (T_normal,)}); other inputs run the graph."""

    def __init__(self, held: _HeldOut) -> None:
        self.held = held

    def infer_batched(self, inputs: Inputs, batch: int = 8) -> dict[str, np.ndarray]:
        held, n = self.held, self.held.n_normal_tiles
        kept = len(next(iter(inputs.values()))) == n and all(
            np.may_share_memory(inputs[k], held.inputs[k]) for k in held.model.input_names)
        if not kept:
            return OnnxGraph(held.reference, held.model.input_names).infer_batched(inputs, batch)
        return {k: v[:n] for k, v in held.reference_outputs().items()}


def _threshold(graph: Path, options: BuildOptions, held: HeldOut | None, source: str,
               engine: Callable = OnnxGraph) -> tuple[Threshold | None, PixelThreshold | None, list[np.ndarray]]:
    """The image threshold from whole-frame scores of the deployed graph (stitched for a tiled model) on the
    held-out frames, pre-processed once per build (``HeldOut``), the pixel threshold (defect regions) from the
    same normal frames' maps, and those maps ((h, w) float32 each; kept in the bundle: ``export.normal_maps``).
    engine: what scores the graph, ``OnnxGraph`` (ONNX Runtime) or ``OpenVinoGraph`` (``_openvino_thresholds``)."""
    if held is None:
        return None, None, []
    maps, scores = held.maps_scores(graph, engine)
    defect_scores = scores[held.n_normal:] if held.n_defect else None
    normal_maps = maps[: held.n_normal]
    return (calibrate_threshold(scores[: held.n_normal], defect_scores, options.false_reject_rate, source=source),
            calibrate_pixel_threshold(normal_maps, options.pixel_quantile, source=source), normal_maps)


def check_normal_spread(held: _HeldOut, options: BuildOptions) -> None:
    """DataError naming ``options.threshold_images`` when the FP32 graph's scores of the held-out normal frames do not
    spread (``calibration.threshold.check_spread``, fusion's rule): copies of one frame all score alike, and a
    threshold on them sits on that one frame's score, claiming a false-reject rate no other normal part shares.
    Checked once per build, before any precision work, on the FP32 scores every graph's threshold follows. A single
    frame has no spread to check (its threshold says "on 1 ... image"). Not for the fallback on calibration images:
    training images may all score alike on a model fitted on them (a PatchCore memory bank holding their patches),
    and that threshold's source already says it is training data."""
    _, scores = held.maps_scores(held.reference)
    normal = scores[: held.n_normal]
    if normal.size < 2:
        return
    check_spread(normal, f"{options.threshold_images or '--normal'}: the FP32 graph's scores", "so a threshold "
                 "calibrated on them would sit on one image's score and its false-reject rate would say nothing of "
                 "other normal parts", "pass images of different normal parts that training did not see with --normal "
                 "(copies of one frame count as one image).")


def _cpu_int8_graph(ckpt: Checkpoint, out: Path, fp32: Path, options: BuildOptions, calib: Inputs | None) -> Path | None:
    """INT8 only: the CPU engines' graph beside the TensorRT one (``calibration.int8_cpu``), same calibration images."""
    if options.precision != "int8" or calib is None:
        return None
    quantize_int8_cpu(fp32, out / CPU_INT8_ONNX, calib, ckpt.model.int8_scope, options.int8, out / CPU_CALIB_CACHE)
    return out / CPU_INT8_ONNX


def _quality_gate(ckpt: Checkpoint, out: Path, fp32: Path, options: BuildOptions, calib: Inputs,
                  held: HeldOut, on_step: Callable[[str], None] | None) -> GateReport | None:
    """INT8 with ``options.quality``: gate both INT8 graphs (already written in full INT8) on the held-out frames,
    rewriting them with their most sensitive layers float32 where needed (``calibration.int8_gate``)."""
    if options.quality is None:
        return None
    say = on_step or (lambda text: None)
    scope, settings = ckpt.model.int8_scope, options.int8

    def tensorrt_graph(path: Path, keep_float) -> bool:
        return quantize_int8(fp32, path, calib, scope, settings, out / CALIB_CACHE, keep_float=keep_float)

    def cpu_graph(path: Path, keep_float) -> bool:
        return quantize_int8_cpu(fp32, path, calib, scope, settings, out / CPU_CALIB_CACHE, keep_float=keep_float)

    graphs = (Int8Graph(out / get_precision("int8").onnx_name, tensorrt_graph, ("Conv",)),
              Int8Graph(out / CPU_INT8_ONNX, cpu_graph, CPU_INT8_OPS))
    say(f"measuring {', '.join(g.path.name for g in graphs)} against FP32 on {held.n_normal + held.n_defect} "
        "held-out images")
    report = run_gate(fp32, graphs, scope, held, options.quality, on_step)
    say(GATE_DONE + ", ".join(f"{g.graph} drop {g.drop:.3g}" for g in report.graphs)
        + f" ({report.metric}, limit {report.limit:g})")
    return report


def _fp32_reference(graph: Path, fp32: Path, options: BuildOptions, held: HeldOut | None, source: str,
                    out: Path) -> dict:
    """FP16/INT8: the manifest's ``fp32_threshold``, ``fp32_pixel_threshold`` and ``fp32_normal_maps``
    (``fp32_normal_maps.npy`` written): the image and pixel thresholds and the maps of the FP32 reference graph,
    which the PyTorch backends' FP32 weights reproduce (parity-checked); all None for an FP32 bundle (its
    thresholds are that graph's) or without frames."""
    if graph == fp32 or held is None:
        return dict(NO_FP32_REFERENCE)
    threshold, pixel, maps = _threshold(fp32, options, held, source)
    return {"fp32_threshold": threshold.to_dict() if threshold else None,
            "fp32_pixel_threshold": pixel.to_dict() if pixel else None,
            "fp32_normal_maps": write_normal_maps(out, FP32_NORMAL_MAPS, maps)}


def _cpu_entry(cpu_graph: Path, options: BuildOptions, held: HeldOut | None, source: str, out: Path) -> dict:
    """INT8: the manifest's ``graph.cpu``: the CPU graph's file, its image and pixel thresholds (calibrated on ONNX
    Runtime's scores and held-out normal maps, as the main graph's), those maps (``cpu_normal_maps.npy`` written), and
    the thresholds and maps of OpenVINO's scores of it (``openvino``: ``_openvino_entry``)."""
    threshold, pixel, maps = _threshold(cpu_graph, options, held, source)
    return {"onnx": cpu_graph.name, "threshold": threshold.to_dict() if threshold else None,
            "pixel_threshold": pixel.to_dict() if pixel else None,
            "normal_maps": write_normal_maps(out, CPU_NORMAL_MAPS, maps),
            "openvino": _openvino_entry(cpu_graph, options, held, source, out)}


def _openvino_entry(cpu_graph: Path, options: BuildOptions, held: HeldOut | None, source: str, out: Path) -> dict:
    """The manifest's ``graph.cpu.openvino``: ``_openvino_thresholds``' thresholds and the held-out normal maps
    OpenVINO made of the CPU graph (``openvino_normal_maps.npy`` written; ``normal_maps`` null without them), on which
    a station with decision.roi calibrates OpenVINO's ROI threshold: ONNX Runtime's maps are up to 0.9 % off its
    scale, as its scores are (a threshold on them rejected a held-out normal on OpenVINO)."""
    thresholds, maps = _openvino_thresholds(cpu_graph, options, held, source)
    return {**thresholds.to_dict(), "normal_maps": write_normal_maps(out, OPENVINO_NORMAL_MAPS, maps)}


def _openvino_thresholds(cpu_graph: Path, options: BuildOptions, held: HeldOut | None,
                         source: str) -> tuple[EngineThresholds, list[np.ndarray]]:
    """(the INT8 CPU graph's image and pixel thresholds calibrated on OpenVINO's scores and maps of the held-out frames
    (defects too: its F1), as ``_cpu_entry``'s are on ONNX Runtime's; OpenVINO's (h, w) float32 maps of the held-out
    normal frames, [] where it gave none). OpenVINO's int8 kernels score that graph up to
    0.9 % apart (PatchCore, 118 ELPV normals; 0.7 % on 12 bracket ones), and a threshold 1e-3 above the top normal on
    ONNX Runtime rejected that normal on OpenVINO. FP32 and FP16 graphs are not scored twice: the two engines agree
    on them within 2.1e-6 relative (the same bundles), far inside the 1e-3 margin (``calibration.threshold.margin``),
    so their one threshold holds on both. Where OpenVINO is not installed, or cannot load or score the graph, the
    thresholds are None and ``missing`` says why (logged): the runtime then keeps OpenVINO off this graph for ``auto``
    and warns on a named one (``runtime.selection``)."""
    version = openvino_version()
    if version is None:
        log.info("OpenVINO is not installed: the INT8 CPU graph's thresholds are calibrated on ONNX Runtime only, and "
                 "`backend: auto` will not pick OpenVINO for this bundle (pip install openvino, then rebuild, to have "
                 "both)")
        return EngineThresholds(None, None, "", "OpenVINO was not installed where the bundle was built"), []
    try:
        threshold, pixel, maps = _threshold(cpu_graph, options, held, f"{source}, scored by OpenVINO {version}",
                                            OpenVinoGraph)
    except Exception as exc:  # noqa: BLE001 - OpenVINO's own error types, NaN scores (ExportError): named, not fatal
        why = f"OpenVINO {version} could not score {cpu_graph.name}: {type(exc).__name__}: {str(exc)[:200]}"
        log.warning("%s; the bundle keeps ONNX Runtime's thresholds only, and `backend: auto` will not pick OpenVINO "
                    "for it", why)
        return EngineThresholds(None, None, version, why), []
    return EngineThresholds(threshold, pixel, version), maps


def _manifest(ckpt: Checkpoint, options: BuildOptions, graph: Path, threshold: Threshold | None,
              delta: GraphDelta | None, calib_count: int, engine: dict | None, cpu: dict | None = None,
              gate: GateReport | None = None, pixel: PixelThreshold | None = None, maps: dict | None = None,
              fp32: dict | None = None) -> dict:
    calibration = None
    if options.precision == "int8":
        calibration = {**options.int8.to_dict(), "images_used": calib_count, "cache": CALIB_CACHE, "library": "onnxruntime.quantization"}
    return {
        "model": model_manifest(ckpt.model), "facts": ckpt.model.impl.facts(ckpt.state_dict), "precision": options.precision,
        "graph": {"onnx": graph.name, "reference_onnx": PRECISIONS["fp32"].onnx_name, "opset": OPSET,
                  "max_batch": options.max_batch, "cpu": cpu},
        "threshold": threshold.to_dict() if threshold else None, "calibration": calibration,
        "pixel_threshold": pixel.to_dict() if pixel else None, "normal_maps": maps,
        **(fp32 or NO_FP32_REFERENCE),
        "weights": WEIGHTS, "accuracy": delta.to_dict() if delta else {}, "training": ckpt.data_summary,
        "versions": library_versions(),
        "engine": engine, "build_command": options.command,
        "source_checkpoint": options.source.to_dict() if options.source is not None else None,
        "quality_gate": gate.to_dict() if gate else None,
    }


def _try_engine(out: Path, graph: Path, ckpt: Checkpoint, options: BuildOptions) -> tuple[dict | None, str]:
    """Build the engine where TensorRT is importable; (None, what to install) where it is not.
    Parser and build errors propagate as EngineError (and the build leaves no bundle; --no-engine skips it)."""
    from fair_edge.export import tensorrt as trt_build

    if not options.engine:
        return None, "engine build skipped (--no-engine)"
    try:
        trt_build.import_tensorrt()
    except TensorRTMissingError as exc:
        return None, str(exc)
    start = time.perf_counter()
    settings = trt_build.EngineSettings(max_batch=options.max_batch)
    target = trt_build.build_engine(graph, out / ENGINE, ckpt.model.inputs, settings, timing_cache=out / TIMING_CACHE)
    info = {"file": ENGINE, "tensorrt_version": target.tensorrt_version, "gpu_name": target.gpu_name,
            "compute_capability": list(target.compute_capability), "timing_cache": TIMING_CACHE}
    return info, f"built in {time.perf_counter() - start:.1f} s for {target.gpu_name} with TensorRT {target.tensorrt_version}"


def build_bundle(ckpt: Checkpoint, out: str | Path, options: BuildOptions, calib_frames: Sequence[np.ndarray] | None = None,
                 normal_frames: Sequence[np.ndarray] | None = None, defect_frames: Sequence[np.ndarray] | None = None,
                 on_calibration_image: Callable[[], None] | None = None,
                 on_gate_step: Callable[[str], None] | None = None,
                 on_checked: Callable[[], None] | None = None) -> BuildResult:
    """Write a bundle for ``ckpt`` at ``out`` (see the module docstring).

    calib_frames: normal training images, (H, W, 3) uint8 BGR (INT8 calibration; threshold fallback).
    normal_frames: held-out normal images for the threshold (and the INT8 quality gate). defect_frames:
    optional, for the F1 threshold (and the gate's AUROC). on_gate_step: one line per quality-gate step, from
    "measuring ..." at its start to its last, which starts with ``GATE_DONE``. on_checked: called once the inputs
    are checked (``check_inputs``, ``check_held_out_grid``), before anything is written.
    The bundle is built in a temporary folder next to ``out`` and moved into place when complete: a
    failed build leaves ``out`` as it was (absent, or the previous bundle) and nothing else behind.
    """
    start = time.perf_counter()
    out = bundle_target(Path(out))   # a link to a folder: built there, the link kept
    clear_leftovers(out)   # first: a previous bundle it puts back is checked as --out
    check_inputs(out, options, bool(calib_frames), bool(normal_frames))
    check_held_out_grid(ckpt.preprocess, (threshold_images_name(options, bool(normal_frames)),
                                          threshold_frames(options, calib_frames, normal_frames)),
                        (options.defect_images or "--defects", defect_frames or ()))
    if on_checked is not None:
        on_checked()
    with staged(out, options) as staging:
        parts = _build_into(staging, ckpt, options, calib_frames, normal_frames, defect_frames, on_calibration_image,
                            on_gate_step)
        move_into_place(staging, out)
    delta, parity, reused, engine_built, note, gate = parts
    with in_place(out):   # the bundle's checksums are verified: a stop now finds it complete
        bundle = load_bundle(out)
    return BuildResult(bundle, time.perf_counter() - start, engine_built, note, delta, parity, reused, gate)


def threshold_images_name(options: BuildOptions, has_normal: bool) -> str:
    """The threshold's images for a message: the held-out normals' option and folder ("--normal data/dup"), else
    the calibration images' ("--calib data/train (the threshold's images without --normal)")."""
    if has_normal:
        return options.threshold_images or "--normal"
    return f"{options.calib_images or '--calib'} (the threshold's images without --normal)"


def threshold_frames(options: BuildOptions, calib_frames: Sequence[np.ndarray] | None,
                     normal_frames: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """The frames the threshold is calibrated on ((H, W, 3) uint8 each): the held-out normals, else the first
    ``options.int8.num_images`` calibration images (training data: the threshold's source says so); [] for none."""
    if normal_frames:
        return list(normal_frames)
    return list(calib_frames)[: options.int8.num_images] if calib_frames else []


def _build_into(out: Path, ckpt: Checkpoint, options: BuildOptions, calib_frames, normal_frames, defect_frames,
                on_calibration_image, on_gate_step=None) -> tuple[GraphDelta | None, float, bool, bool, str, GateReport | None]:
    """All files of the bundle into ``out``; returns (delta, parity, calibration reused, engine built, note, gate)."""
    save_checkpoint(out / WEIGHTS, Checkpoint(ckpt.model, ckpt.state_dict, ckpt.data_summary,  # its training images:
                                              training_images=ckpt.training_images))         # fuse refuses them
    fp32, parity = _fp32_with_parity(ckpt, out)
    # held-out frames (else the first calibration images) are pre-processed once, here, for the INT8
    # calibration (without held-out normals), the accuracy probe, the thresholds and the quality gate
    held_frames = threshold_frames(options, calib_frames, normal_frames)
    held = _HeldOut(ckpt.model, held_frames, list(defect_frames or ()), fp32) if held_frames else None
    if normal_frames:
        check_normal_spread(held, options)
    calib = None   # INT8 only
    if options.precision == "int8" and calib_frames:
        calib = held.normal_inputs if not normal_frames else preprocess_frames(   # the same first num_images frames
            model_frames(calib_frames, ckpt.preprocess, options.int8.num_images), ckpt.model)
    graph, reused = _precision_graph(ckpt, out, fp32, options, calib, on_calibration_image)
    cpu_graph = _cpu_int8_graph(ckpt, out, fp32, options, calib)
    gate = _quality_gate(ckpt, out, fp32, options, calib, held, on_gate_step) if normal_frames else None
    source = "held-out normal images" if normal_frames else "calibration images (training data; pass held-out normals for an unbiased rate)"
    delta = None
    if graph != fp32:
        probe = held.normal_inputs if held is not None else {
            n: t.numpy() for n, t in example_inputs(ckpt.model, 4).items()}
        names = ckpt.model.input_names
        reference = held.reference_graph() if held is not None else OnnxGraph(fp32, names)
        delta = graph_delta(reference, OnnxGraph(graph, names), probe)
    threshold, pixel, normal_maps = _threshold(graph, options, held, source)
    maps = write_normal_maps(out, NORMAL_MAPS, normal_maps)
    cpu = _cpu_entry(cpu_graph, options, held, source, out) if cpu_graph is not None else None
    fp32_ref = _fp32_reference(graph, fp32, options, held, source, out)
    calib_count = 0 if calib is None else len(next(iter(calib.values())))
    write_manifest(out, _manifest(ckpt, options, graph, threshold, delta, calib_count, None, cpu, gate, pixel, maps,
                                  fp32_ref))
    engine, note = _try_engine(out, graph, ckpt, options)
    if engine is not None:
        write_manifest(out, _manifest(ckpt, options, graph, threshold, delta, calib_count, engine, cpu, gate, pixel,
                                      maps, fp32_ref))
    load_bundle(out)  # verified before it is moved into place
    return delta, parity, reused, engine is not None, note, gate

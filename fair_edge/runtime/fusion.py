"""Score fusion: one decision from several models (any families, sizes or tilings) with one threshold.

A fused bundle is a folder holding ordinary bundles (``m0/``, ``m1/``, ...) and ``fusion.json``:
  format "fair-edge-fusion", version 1; members: [{path, manifest_sha256, fitted_on: {backend, graph}, grid}]
  (fitted_on: the backend ``fair-edge fuse --backend`` ran the member on and the file name of the graph whose
  numbers it made, ``BundleScorer.graph``; absent in fusion.json files fused before it; grid: [h, w] of the
  member's own maps of the held-out images, which its statistics and so the threshold were fitted on: a tiled
  member's map grows with the frame, whatever its place among the members; absent in fusion.json files fused
  before it, where only the first member's grid is known, the top-level grid: a warning at load when a later
  member is tiled, ``_member_grids``); rule; stats: per member
  {mean, std} of the maximum of its anomaly map on held-out normal images (its map max, not its score, which a
  family may compute otherwise: the map is what the rule normalises); threshold: Threshold of the fused score;
  grid: [h, w] of the fused maps that threshold was calibrated on, the first member's (null or absent: no grid check);
  metadata_sha256: SHA-256 of fusion.json itself (canonical JSON of every other key, ``export.bundle.metadata_digest``),
  so an edited threshold, member std or rule is refused like an edited bundle.json. A fusion.json without it
  (fused before it was written) is refused with the fix, as bundle.json is: the `fair-edge fuse` command that fuses
  its members again with the rule and false-reject rate it records (``refuse_command``).
Rule (one definition, used by calibration, eval and the station):
  z_i       = (anomaly map_i - mean_i) / std_i      (each model's map in units of its own normal spread)
  fused map = RULE(z_1, ..., z_n) per pixel, on the first member's map grid (others resized bilinearly),
              so every member's map must cover the same part of the frame (the same ``tiling.roi``, or none)
  score     = max of the fused map
RULES: "mean" (default: agreement between models lifts a defect, a single model's noise is halved)
or "max" (a defect seen by any model counts; false rejects add up).
Every member runs on the backend the station selects for it, so fusion runs wherever they run. The member
statistics and the threshold hold for the graphs they were fitted on: a station whose backend runs a member on
another graph (PyTorch's FP32 weights, or TensorRT's FP16/INT8 graph, where the fusion ran an INT8 member's CPU
graph on ONNX Runtime) loads with a warning naming the fix: fuse with ``--backend`` matching the station's, or run
the station on the backend the fusion was fitted on. A warning, not a refusal, by the rule a bundle's threshold
follows on another graph (``selection.fp32_threshold``): such stations ran before, and the fix is the
operator's; a fusion.json without ``fitted_on`` loads with a warning too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from fair_edge.calibration.threshold import DEFAULT_FALSE_REJECT_RATE, Threshold, calibrate_threshold, check_spread
from fair_edge.errors import BundleError, ConfigError, DataError, did_you_mean
from fair_edge.export.bundle import FUSION_MANIFEST
from fair_edge.runtime.backends import close_scorer
from fair_edge.shell import shell_word

log = logging.getLogger(__name__)
FORMAT, FORMAT_VERSION, MANIFEST = "fair-edge-fusion", 1, FUSION_MANIFEST
FUSE_COMMAND = "`fair-edge fuse B1 B2 --normal DIR --out FUSED`"   # the fix named when fusion.json is refused


def fuse_command(backend: str) -> str:
    """``FUSE_COMMAND`` with ``--backend backend``: the fix named when a member runs another graph than it was fitted on."""
    return f"{FUSE_COMMAND[:-1]} --backend {backend}`"


RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda z: z.mean(axis=0),
    "max": lambda z: z.max(axis=0),
}
# a member's own fix at the end of its BundleError (``export.bundle._rebuild_hint``): not the fix for a fused copy
REBUILD_HINT = re.compile(r"\s*Rebuild (?:it|on this machine) with `[^`]*`\.?\s*$")


def check_rule(rule: str) -> str:
    """``rule`` when it names one of ``RULES``; else ConfigError naming them and the closest ("did you mean"). Checked
    before any member scores an image (``build_fused_bundle``; the CLI's --rule offers ``RULES`` as its choices)."""
    if rule not in RULES:
        raise ConfigError(f"fusion rule must be one of {', '.join(RULES)}; found {rule!r}."
                          + did_you_mean(rule, RULES, sentence=True))
    return rule


@dataclass(frozen=True)
class NormalStats:
    """Mean and standard deviation of one model's map maximum (the largest pixel of its (h, w) anomaly map per frame,
    score units) on held-out normal images: the unit the fusion rule measures that model's map in. Not the model's
    score, which a family may compute otherwise (PatchCore's reweights its map maximum)."""

    mean: float
    std: float

    @classmethod
    def fit(cls, normal_scores: np.ndarray, member: str = "a member") -> "NormalStats":
        """Mean and std (ddof 0) of ``normal_scores`` ((N,) map maxima of one model, one per frame). member: the
        model, for messages. DataError when there are fewer than 2 finite scores, or when they do not spread (std 0, or
        under 1e-6 of their mean: float32 rounding; ``calibration.threshold.check_spread``, the build's threshold
        rule too): the spread is the unit of the fused map, and a unit of 0 would make every part's fused
        score near infinite (as the INT8 gate's ``normal_spread``)."""
        scores = np.asarray(normal_scores, np.float64)
        if scores.size < 2 or not np.all(np.isfinite(scores)):
            raise DataError(f"fusion needs >= 2 finite normal map maxima per model; found {scores.size}.")
        return cls(*check_spread(scores, f"{member}: its map maxima", "so its map has no unit to be fused in",
                                 "pass more varied normal images with --normal (different parts, not copies of one "
                                 "image)."))


def fuse_maps(maps: Sequence[np.ndarray], stats: Sequence[NormalStats], rule: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """maps[i]: (N, h_i, w_i) float32 anomaly maps of model i for the same N frames.

    Returns (fused maps (N, h_0, w_0) float32, fused scores (N,) float32); see the module docstring."""
    check_rule(rule)
    if len(maps) != len(stats) or len(maps) < 2:
        raise ConfigError(f"fusion needs >= 2 models with one NormalStats each; found {len(maps)} maps, {len(stats)} stats.")
    n, h, w = np.asarray(maps[0]).shape
    z = np.empty((len(maps), n, h, w), np.float32)
    for i, (m, st) in enumerate(zip(maps, stats)):
        m = np.asarray(m, np.float32)
        if m.shape[1:] != (h, w):
            m = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in m])
        z[i] = (m - st.mean) / st.std
    fused = RULES[rule](z)
    return fused, fused.reshape(n, -1).max(axis=1)


# ----------------------------------------------------------------------------- the fused bundle
@dataclass(frozen=True)
class FittedOn:
    """What a member's statistics were fitted on: backend, the ``selection.BACKENDS`` name ``fair-edge fuse`` ran it
    on; graph, the file name of the member's graph whose numbers that backend made (``BundleScorer.graph``)."""

    backend: str
    graph: str

    @classmethod
    def of(cls, scorer) -> "FittedOn":
        return cls(str(getattr(scorer, "backend_name", "")), str(getattr(scorer, "graph", "")))


@dataclass(frozen=True)
class FusedBundle:
    """A verified fused bundle: member bundles (export.bundle.Bundle), stats, rule and threshold."""

    root: Path
    members: tuple
    stats: tuple[NormalStats, ...]
    rule: str
    threshold: Threshold
    grid: tuple[int, int] | None = None   # (h, w) of the fused maps ``threshold`` was calibrated on
    manifest_sha256: str = ""             # SHA-256 of fusion.json (stats, rule, threshold, members)
    fitted_on: tuple[FittedOn | None, ...] = ()   # per member; None: fused before it was recorded
    member_grids: tuple[tuple[int, int] | None, ...] = ()   # per member: (h, w) of its own maps its stats were fitted
                                                            # on; None: not recorded (fused before it, or no grid)

    @property
    def image_size(self) -> int:
        return self.members[0].image_size

    @property
    def map_area(self) -> tuple[int, ...] | None:
        """The frame rectangle every member's map covers (``Bundle.map_area``; checked equal when fused and loaded)."""
        return self.members[0].map_area

    @property
    def files(self) -> dict[str, str]:
        """Every member's files (``mI/NAME`` -> SHA-256) and fusion.json's, so a fused bundle has a model id like
        any other, and another threshold, rule or member statistics is another model id."""
        files = {f"m{i}/{name}": sha for i, m in enumerate(self.members) for name, sha in m.files.items()}
        return {**files, MANIFEST: self.manifest_sha256}


def is_fused(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_fused_bundle(member_dirs: Sequence[str | Path], out: str | Path, normal_frames: Sequence[np.ndarray],
                       rule: str = "mean", false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE,
                       backend: str = "onnxruntime") -> FusedBundle:
    """Copy the member bundles into ``out``, fit each one's normal stats and the fused threshold on
    ``normal_frames`` ((H, W, 3) uint8 BGR held-out normals), write fusion.json; returns the loaded bundle.

    As ``fair-edge build`` does (``export.build``), the fused bundle is made in a temporary folder next to ``out``
    and moved into place when complete: members may be read from inside ``out`` (``fair-edge fuse FUSED/m0 FUSED/m1
    --out FUSED``, the copies a fused bundle holds), and a failure leaves ``out`` as it was. An ``out`` that holds
    something other than a fused bundle is refused (it would be replaced); an OSError is a BundleError naming the path."""
    from fair_edge.export.build import BuildOptions, bundle_target, clear_leftovers, in_place, staged
    from fair_edge.export.bundle import load_bundle

    out = bundle_target(Path(out))   # a link to a folder: fused there, the link kept
    clear_leftovers(out)   # what a killed fuse left beside --out; first, so a previous bundle it puts back is checked
    check_rule(rule)   # before anything is copied or scored
    if len(member_dirs) < 2:
        raise ConfigError(f"fusion needs at least 2 bundles; found {len(member_dirs)}.")
    if len(normal_frames) < 2:
        raise DataError("fusion needs held-out normal images for each model's score statistics (--normal).")
    _check_out(out)
    check_same_area([load_bundle(src) for src in member_dirs], "")   # verifies each before anything is copied
    with staged(out, BuildOptions(engine=False)) as staging:   # a fused bundle has no build caches of its own to keep
        try:
            _fuse_into(staging, member_dirs, normal_frames, rule, false_reject_rate, backend)
        except OSError as exc:
            raise BundleError(f"--out {out}: cannot write the fused bundle ({_os_error(exc)}); {out} is left as it "
                              "was. Free disk space or make its folder writable, then `fair-edge fuse` again.") from exc
        _replace_out(staging, out)   # inside: a stop before the move removes the staging folder too
    with in_place(out):   # a stop while it is read back finds it complete (StoppedAfterMove)
        return load_fused_bundle(out)


def _check_out(out: Path) -> None:
    """BundleError unless ``out`` is absent, empty or a fused bundle (which the new one replaces whole)."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file; pass a directory for the fused bundle.")
    if out.is_dir() and any(out.iterdir()) and not is_fused(out):
        raise BundleError(f"--out {out} exists and is not a fused bundle (no {MANIFEST}); the fused bundle replaces "
                          "its --out whole, so choose an empty or new directory, or a fused bundle to replace.")


def _fuse_into(root: Path, member_dirs: Sequence[str | Path], normal_frames: Sequence[np.ndarray], rule: str,
               false_reject_rate: float, backend: str) -> None:
    """Every file of the fused bundle into the (empty, temporary) folder ``root``: members m0, m1, ..., fusion.json."""
    from fair_edge.export.bundle import MANIFEST as MEMBER_MANIFEST, load_bundle

    entries = []
    for i, src in enumerate(member_dirs):
        dst = root / f"m{i}"
        _copy_member(Path(src), dst)
        entries.append({"path": dst.name, "manifest_sha256": _sha(dst / MEMBER_MANIFEST)})
    members = [load_bundle(root / e["path"]) for e in entries]
    maps = []
    for entry, member in zip(entries, members):
        member_maps, fitted = _member_maps(member, normal_frames, backend)
        maps.append(member_maps)
        entry["fitted_on"] = vars(fitted)
        entry["grid"] = list(member_maps.shape[1:])   # each member's: a tiled one's map grows with the frame
    stats = [NormalStats.fit(m.reshape(len(m), -1).max(axis=1), f"member m{i} ({src})")
             for i, (m, src) in enumerate(zip(maps, member_dirs))]
    _, fused_scores = fuse_maps(maps, stats, rule)
    threshold = calibrate_threshold(fused_scores, None, false_reject_rate, source="held-out normal images")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "members": entries, "rule": rule,
                "stats": [vars(s) for s in stats], "threshold": threshold.to_dict(), "grid": list(maps[0].shape[1:])}
    write_fusion_manifest(root, manifest)


def _copy_member(src: Path, dst: Path) -> None:
    """Copy the member bundle ``src`` to ``dst`` (in the staging folder beside --out); BundleError naming the file and
    the fix by the first failure's errno: a full or over-quota disk (ENOSPC, EDQUOT) or a read-only one (EROFS) is
    --out's disk, with its free space (``export.build.disk_problem``); any other is a member file that could not be
    read."""
    failures: list[OSError] = []   # copytree keeps only the text of a file's OSError: its errno is kept here

    def copy(a: str, b: str) -> object:
        try:
            return shutil.copy2(a, b)
        except OSError as exc:
            failures.append(exc)
            raise

    try:
        shutil.copytree(src, dst, copy_function=copy)
    except OSError as exc:
        raise BundleError(_copy_failure(src, dst, (failures or [exc])[0], exc)) from exc


def _copy_failure(src: Path, dst: Path, first: OSError, exc: OSError) -> str:
    """The message of a member copy that failed with ``exc`` (``first``: the first file's OSError inside it)."""
    from fair_edge.export.build import disk_problem

    disk = disk_problem(dst.parent, first)   # dst.parent: the staging folder, named as --out when raised (``staged``)
    if disk:
        return (f"cannot copy member bundle {src} into the fused bundle ({_os_error(exc)}): {disk}, then "
                "`fair-edge fuse` again. Nothing was changed.")
    return (f"cannot copy member bundle {src} into the fused bundle ({_os_error(exc)}); nothing was changed. Make its "
            "files readable by this account, then `fair-edge fuse` again.")


def _os_error(exc: OSError) -> str:
    """``exc`` as "PATH: reason", the first failure of a ``shutil.Error`` (copytree's list of them) included."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        first = exc.args[0][0]
        return f"{first[0]}: {first[-1]}" if isinstance(first, tuple) and len(first) == 3 else str(first)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _replace_out(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out`` (``export.build.move_into_place``: the previous fused bundle
    there is renamed aside, put back if the move fails, else removed). BundleError naming ``out`` where the move
    fails."""
    from fair_edge.export.build import discard_staging, move_into_place

    try:
        move_into_place(staging, out)
    except OSError as exc:
        discard_staging(staging)
        raise BundleError(f"--out {out}: cannot move the fused bundle into place ({_os_error(exc)}); {out} is left "
                          "as it was. Make its folder writable by this account, then `fair-edge fuse` again.") from exc


def write_fusion_manifest(root: str | Path, manifest: dict) -> Path:
    """Write ``root/fusion.json`` with its metadata checksum, atomically (``export.bundle.write_signed_json``)."""
    from fair_edge.export.bundle import write_signed_json

    return write_signed_json(Path(root) / MANIFEST, manifest)


def _verify_metadata(path: Path, data: dict) -> None:
    """BundleError unless fusion.json's content is what ``fair-edge fuse`` wrote (its recorded metadata checksum).
    One without a checksum (fused before it was written) is refused too, as bundle.json is: its threshold,
    member statistics and rule cannot be verified."""
    from fair_edge.export.bundle import METADATA_KEY, metadata_digest

    recorded, found = data.get(METADATA_KEY), metadata_digest(data)
    if recorded is None:
        command = refuse_command(path.parent, data)
        which = "" if command == FUSE_COMMAND else (" with the rule and false-reject rate it records, DIR being "
                                                    "held-out normal images of the product")
        raise BundleError(f"{path} has no {METADATA_KEY} (fused by an older fair-edge), so its threshold, member "
                          f"statistics and rule cannot be verified. Fuse the member bundles again{which}: {command}.")
    if recorded != found:
        raise BundleError(f"{path} was changed after fusion: its metadata checksum is {found[:16]}..., `fair-edge "
                          f"fuse` recorded {str(recorded)[:16]}.... A fused bundle's threshold, member statistics and "
                          "rule are fixed when it is fused. For another decision threshold set decision.threshold in "
                          "the station file or pass `fair-edge run --threshold`; for any other change, fuse the member "
                          f"bundles again: {FUSE_COMMAND}.")


def refuse_command(root: Path, data: dict, copies: bool = True) -> str:
    """The `fair-edge fuse` command that fuses the members of the fused bundle ``root`` again as its fusion.json
    ``data`` records them: its member folders (ROOT/m0 ROOT/m1 ...: a fuse reads them before it replaces ROOT; with
    ``copies`` False, B1 B2 ...: the bundles they were copied from, where a copy is damaged), --rule,
    --false-reject-rate, --backend where every member records the one it was fitted on, and --out ROOT,
    each path quoted for the shell (``shell.shell_word``); --normal stays DIR (fusion.json does not record the
    images). ``FUSE_COMMAND`` where the members, rule or rate cannot be read: a command without them would fuse
    with the defaults (rule mean, 0.5 % false rejects), another decision than the one the operator had."""
    try:
        entries = data["members"]
        members = [root / _member_folder(entry["path"]) for entry in entries]
        rule, rate = data["rule"], float(data["threshold"]["false_reject_rate"])
        if len(members) < 2 or not isinstance(rule, str) or rule not in RULES or not 0.0 < rate < 1.0:
            return FUSE_COMMAND
    except (KeyError, IndexError, TypeError, ValueError):
        return FUSE_COMMAND
    sources = map(shell_word, members) if copies else (f"B{i + 1}" for i in range(len(members)))
    words = ["fair-edge", "fuse", *sources, "--normal", "DIR", "--rule", rule,
             "--false-reject-rate", repr(rate)]
    backend = _recorded_backend(entries)
    words += ["--backend", backend] if backend else []
    return "`" + " ".join([*words, "--out", shell_word(root)]) + "`"


def _member_folder(name: object) -> str:
    """A member entry's ``path``: one folder name inside the fused bundle (``m0``); ValueError otherwise."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise ValueError(f"member path {name!r} is no folder name inside the fused bundle")
    return name


def _recorded_backend(entries: list) -> str | None:
    """The ``selection.BACKENDS`` name every member entry's ``fitted_on`` records, when they all record the same
    one; None otherwise (fused before it was recorded: ``fair-edge fuse``'s default, onnxruntime, then stands)."""
    from fair_edge.runtime.selection import BACKENDS

    names = set()
    for entry in entries:
        fitted = entry.get("fitted_on")
        names.add(fitted.get("backend") if isinstance(fitted, dict) else None)
    name = names.pop() if len(names) == 1 else None
    return name if isinstance(name, str) and name in BACKENDS else None


def _member_maps(bundle, frames: Sequence[np.ndarray], backend: str, batch: int = 8) -> tuple[np.ndarray, FittedOn]:
    """(the member's maps (N, h, w) float32 of ``frames`` on ``backend``, what they were made on).

    Frames are scored one size at a time (a tiled member takes one size per call). DataError naming two of the
    held-out images when a tiled member's maps of them differ in size: the fused threshold is calibrated on
    maps of one grid."""
    from fair_edge.runtime.selection import select_backend

    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, frame in enumerate(frames):
        by_size.setdefault(tuple(frame.shape[:2]), []).append(i)
    scorer = select_backend(bundle, backend)
    try:
        maps: list = [None] * len(frames)
        for index in by_size.values():
            for start in range(0, len(index), batch):
                chunk = index[start : start + batch]
                for i, m in zip(chunk, scorer.infer_frames([frames[i] for i in chunk])[0]):
                    maps[i] = m
        _check_one_grid(bundle, frames, maps)
        return np.stack(maps), FittedOn.of(scorer)
    finally:
        close_scorer(scorer)


def _check_one_grid(bundle, frames: Sequence[np.ndarray], maps: list[np.ndarray]) -> None:
    """DataError naming two held-out images (by position in --normal's file-name order) and their sizes when
    the member's maps of them differ in size (a tiled member on images of several sizes)."""
    other = next((i for i, m in enumerate(maps) if m.shape != maps[0].shape), None)
    if other is None:
        return
    (h0, w0), (h1, w1) = frames[0].shape[:2], frames[other].shape[:2]
    raise DataError(f"member {Path(bundle.root).name} is tiled and maps held-out normal image 1 ({w0} x {h0} px) to a "
                    f"{maps[0].shape[1]} x {maps[0].shape[0]} map but image {other + 1} ({w1} x {h1} px) to "
                    f"{maps[other].shape[1]} x {maps[other].shape[0]} (images in file-name order); the fused threshold "
                    "is calibrated on maps of one grid. Pass --normal images of one size, the size the station's "
                    "camera gives, then `fair-edge fuse` again.")


def _fitted_on(root: Path, entries: list) -> tuple[FittedOn | None, ...]:
    """Each member entry's ``fitted_on`` (None where absent: fused before it was recorded, with a warning)."""
    fitted = tuple(FittedOn(str(e["fitted_on"]["backend"]), str(e["fitted_on"]["graph"])) if e.get("fitted_on") else None
                   for e in entries)
    if any(f is None for f in fitted):
        log.warning("%s records no graph its member statistics and threshold were fitted on (fused by an older "
                    "fair-edge): if the station's backend runs a member on another graph than `fair-edge fuse --backend` "
                    "did (default onnxruntime), the fused threshold was calibrated on another graph and its false-reject "
                    "rate can differ. Fuse again with --backend matching the station's: %s.",
                    root / MANIFEST, fuse_command("BACKEND"))
    return fitted


def _member_grids(root: Path, data: dict, grid: tuple[int, int] | None, members: Sequence) -> tuple:
    """Each member entry's ``grid`` as (h, w) (ValueError or TypeError when it is not two numbers). Where a
    fusion.json fused before member grids were recorded lacks them, the first member's is the top-level ``grid``
    (the fused map lies on its grid) and the others' are None, with a warning when one of those is tiled (its map
    grows with the frame unchecked) naming the command that fuses the members again (``refuse_command``)."""
    grids = [None if e.get("grid") is None else _grid_pair(e["grid"]) for e in data["members"]]
    if grids and grids[0] is None:
        grids[0] = grid
    unknown = [m.root.name for m, g in zip(members, grids) if g is None and m.preprocess.tiling is not None]
    if unknown and grid is not None:
        log.warning("%s records the map grid its threshold was calibrated on for its first member only (fused by an "
                    "older fair-edge): frames are checked on that grid only, so tiled member %s is decided on frames "
                    "of any size, where its map maximum is another quantity than the one fused. Fuse again to "
                    "record every member's grid: %s.", root / MANIFEST, ", ".join(unknown), refuse_command(root, data))
    return tuple(grids)


def _grid_pair(value) -> tuple[int, int]:
    """A recorded [h, w] as (h, w); ValueError unless it is exactly two numbers."""
    if len(value) != 2:
        raise ValueError(f"grid {value!r} is not [h, w]")
    return int(value[0]), int(value[1])


def load_fused_bundle(path: str | Path) -> FusedBundle:
    """Read and verify ``fusion.json`` and every member bundle (checksums of their manifests)."""
    from fair_edge.export.bundle import MANIFEST as MEMBER_MANIFEST, inside_folder

    root = Path(path)
    try:
        raw = (root / MANIFEST).read_bytes()
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{root / MANIFEST} is missing or not JSON ({exc}); rebuild with `fair-edge fuse`.") from exc
    if not isinstance(data, dict):
        data = {"format": type(data).__name__}
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root / MANIFEST}: expected format {FORMAT} version {FORMAT_VERSION}; "
                          f"found {data.get('format')} version {data.get('format_version')}.")
    _verify_metadata(root / MANIFEST, data)
    try:
        entries, rule = data["members"], str(data["rule"])
        stats = tuple(NormalStats(float(s["mean"]), float(s["std"])) for s in data["stats"])
        threshold = Threshold.from_dict(data["threshold"])
        grid = None if data.get("grid") is None else _grid_pair(data["grid"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BundleError(f"{root / MANIFEST} is missing or has an invalid field ({exc}); rebuild with `fair-edge fuse`.") from exc
    if rule not in RULES or len(stats) != len(entries):
        raise BundleError(f"{root / MANIFEST}: rule {rule!r} (expected one of {', '.join(RULES)}) with "
                          f"{len(stats)} stats for {len(entries)} members; rebuild with `fair-edge fuse`.")
    members = []
    for entry in entries:
        # fuse copies each member inside the fused folder (m0, m1, ...): a path leading out names one never verified
        member = inside_folder(root, entry.get("path") if isinstance(entry, dict) else None, root / MANIFEST,
                               "member", f"Rebuild with {FUSE_COMMAND}.")
        manifest = member / MEMBER_MANIFEST
        if not manifest.is_file() or _sha(manifest) != entry.get("manifest_sha256"):
            raise BundleError(f"member {entry['path']} of {root} is missing or changed since fusion "
                              f"(bundle.json checksum differs). {member_fix(root, data)}.")
        members.append(_load_member(member, root, data))
    check_same_area(members, f" of {root}")
    try:
        fitted = _fitted_on(root, entries)
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{root / MANIFEST} has an invalid members[].fitted_on ({exc}); rebuild with `fair-edge fuse`.") from exc
    try:
        member_grids = _member_grids(root, data, grid, members)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{root / MANIFEST} has an invalid members[].grid ({exc}); rebuild with `fair-edge fuse`.") from exc
    return FusedBundle(root, tuple(members), stats, rule, threshold, grid, hashlib.sha256(raw).hexdigest(), fitted,
                       member_grids)


def _load_member(member: Path, root: Path, data: dict):
    """The member bundle in folder ``member`` of the fused bundle ``root`` (``export.bundle.load_bundle``), its
    fusion.json ``data`` naming the fix. Its BundleError (a file that fails its checksum, a bundle.json that does not
    read) is raised again naming the fused bundle and the member, without the member's own fix (``fair-edge build``
    into it: a member rebuilt in place is then refused as changed since fusion) and with ``member_fix``."""
    from fair_edge.export.bundle import load_bundle

    try:
        return load_bundle(member)
    except BundleError as exc:
        found = REBUILD_HINT.sub("", str(exc)).rstrip()
        raise BundleError(f"member {member.name} of fused bundle {root} does not load: {found}"
                          f"{'' if found.endswith('.') else '.'} {member_fix(root, data)}.") from exc


def member_fix(root: Path, data: dict) -> str:
    """The fix, a sentence, for a member of the fused bundle ``root`` that is missing, damaged or changed (fusion.json
    ``data``): fusing again from the bundles the members were copied from (``refuse_command`` naming them B1 B2
    ...), since fusion.json pins each copy (its bundle.json's checksum) and one rebuilt in place is refused."""
    names = ", ".join(str(e.get("path")) for e in data.get("members", []) if isinstance(e, dict)) or "m0, m1"
    return (f"A fused bundle's members ({names}) are the copies `fair-edge fuse` made, pinned in its {MANIFEST} (a "
            "member rebuilt in place is refused as changed since fusion), so fuse again from the bundles they were "
            f"copied from: {refuse_command(root, data, copies=False)} (B1 B2 ...: those bundles, in the order of "
            "the members; DIR: held-out normal images of the product)")


def check_same_area(members: Sequence, where: str) -> None:
    """ConfigError naming each member's area unless every member's map covers the same frame rectangle
    (``Bundle.map_area``): the fused map adds them pixel by pixel on the first member's grid."""
    areas = [m.map_area for m in members]
    if len(set(areas)) > 1:
        found = "; ".join(f"{m.root.name}: {'the whole frame' if a is None else f'tiling.roi {list(a)}'}"
                          for m, a in zip(members, areas))
        raise ConfigError(f"the members{where} map different parts of the frame ({found}); the fused map adds them "
                          "pixel by pixel, so they must cover the same one: train them with the same --roi (or "
                          "none), then `fair-edge fuse` again.")


# ----------------------------------------------------------------------------- runtime
class _Members:
    """The member backends as one closable object (what the station closes on exit)."""

    name = "fusion"

    def __init__(self, scorers: list) -> None:
        self.scorers = scorers

    def close(self) -> None:
        """Close each member's backend, then its pre-processing where that has a ``close`` (a GPU member's fused
        kernel: its device buffer and CUDA module), with ``runtime.backends.close_scorer``, which calls this for a
        fused scorer. A failing close is logged and does not keep the other members open."""
        for scorer in self.scorers:
            close_scorer(scorer)


class FusedScorer:
    """A ``runtime.backends.FrameScorer`` over the member bundles: each member's backend scores the frames,
    ``fuse_maps`` makes one map and score. ``graph_threshold`` is None: the fused bundle's one threshold is
    calibrated on the fused score, of the graphs the members ran on when fused (``FusedBundle.fitted_on``); a
    member run here on another graph is warned about (``check_fitted_graphs``). The fused map lies on the first
    member's grid, so a later tiled member's map, resized onto it, no longer shows the frame's size: the station
    checks each tiled member's grid from the frame size itself (``runtime.hotswap.map_off_grid``: NG, fail-safe)."""

    graph_threshold = None

    def __init__(self, bundle: FusedBundle, backend: str = "auto") -> None:
        from fair_edge.runtime.selection import select_backend

        self.bundle = bundle
        self.backend = _Members([select_backend(m, backend) for m in bundle.members])
        self.reason = f"fusion ({bundle.rule}) of " + "; ".join(c.reason for c in self.backend.scorers)
        self.off_graph = check_fitted_graphs(bundle, self.backend.scorers)

    def infer_frames(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """frames: list of (H, W, 3) uint8 BGR. Returns (fused maps (N, h, w) float32, scores (N,) float32)."""
        maps = [c.infer_frames(frames)[0] for c in self.backend.scorers]
        return fuse_maps(maps, self.bundle.stats, self.bundle.rule)


def check_fitted_graphs(bundle: FusedBundle, scorers: Sequence) -> list[str]:
    """One line per member whose scorer here runs another graph than the one its statistics were fitted on
    (``FittedOn.graph`` against ``BundleScorer.graph``), each also logged as a warning naming both fixes; [] when
    all match or were not recorded (an older fusion.json: warned about when loaded)."""
    lines = []
    for i, (fitted, scorer) in enumerate(zip(bundle.fitted_on, scorers)):
        graph = getattr(scorer, "graph", "")
        if fitted is None or not graph or not fitted.graph or graph == fitted.graph:
            continue
        here = getattr(scorer, "backend_name", "") or scorer.backend.name
        lines.append(f"member {bundle.members[i].root.name} runs {graph} on {here}, but its statistics and the "
                     f"fused threshold were fitted on {fitted.graph} ({fitted.backend})")
        log.warning("%s of %s: the fused threshold was calibrated on another graph, so the false-reject rate can differ "
                    "from the one fusion measured. Fuse again with the station's backend (%s), or run the station "
                    "with --backend %s.", lines[-1], bundle.root, fuse_command(here), fitted.backend)
    return lines

"""Threshold tuning from what the line has seen: score distributions and projected rates.

Normal parts: recent parts that passed and were not flagged as a miss, plus NG parts reviewed as
*false reject*. Defects: parts reviewed as *confirmed defect* or *miss*. NG parts not yet
reviewed belong to neither (their count is shown), so an unreviewed defect never counts as a
normal part. For a proposed threshold t (NG = score > t):

    projected false-reject rate = share of normal parts with score > t
    projected catch rate        = share of defects with score > t

Passed parts all scored <= the threshold in force, so the normal sample is cut off there: the
projection is exact for lowering the threshold and a lower bound on what raising it saves. The
bundle's calibration distribution (held-out normals) is shown beside it for that reason.

All of this holds only where the score decides. Where a camera's region rules decide the verdict (``regions:`` with
a rule that can fire), a part is NG exactly when a rule fires, whatever its score: the threshold changes no verdict,
so the console projects nothing and applies no threshold there (``threshold_refusals.rules_decide_note``).
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from fair_edge.disk import create_temporary, discard_unfinished
from fair_edge.errors import ConfigError
from fair_edge.fields import dump_station_yaml, is_number, read_station_text, require, station_yaml
from fair_edge.records import Verdict

BINS = 30
DEFECT_LABELS = ("defect", "miss")


def split_scores(recent: list[Verdict], labels: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(normal scores, defect scores, unreviewed NG count) from recent verdicts and review labels by view key
    (camera, seq); a bare seq is camera "" (one camera)."""
    normal, defect, unreviewed = [], [], 0
    for v in recent:
        if v.score is None:  # not scored (malformed frame, inference failure)
            continue
        label = labels.get((v.camera, v.seq), None if v.camera else labels.get(v.seq))
        if label in DEFECT_LABELS:
            defect.append(v.score)
        elif label == "false_reject" or (not v.ng and label is None):
            normal.append(v.score)
        elif v.ng:
            unreviewed += 1
    return np.array(normal), np.array(defect), unreviewed


def projection(normal: np.ndarray, defect: np.ndarray, threshold: float) -> dict:
    """Projected rates at ``threshold`` (None where there are no parts of that kind)."""
    return {"threshold": threshold,
            "false_reject_rate": float((normal > threshold).mean()) if normal.size else None,
            "catch_rate": float((defect > threshold).mean()) if defect.size else None,
            "normal_parts": int(normal.size), "defect_parts": int(defect.size)}


def histograms(normal: np.ndarray, defect: np.ndarray, quantiles, current: float) -> dict:
    """Counts over shared bins spanning the scores and the threshold in force (a proposal far outside is
    drawn at the edge by the page); the calibration distribution as expected counts per 100 parts."""
    q = np.asarray(quantiles, np.float64)
    values = np.concatenate([normal, defect, q if q.size else [], [current]])
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi + (hi - lo) * 1e-9, BINS + 1)
    calib = None
    if q.size == 101:  # each percentile interval holds 1 % of the calibration scores
        mids = (q[:-1] + q[1:]) / 2
        calib = np.histogram(mids, bins=edges)[0].tolist()
    return {"edges": edges.tolist(), "normal": np.histogram(normal, edges)[0].tolist(),
            "defect": np.histogram(defect, edges)[0].tolist(), "calibration_per_100": calib}


def check_threshold(value, below_zero: bool = False, where: str = "threshold") -> float:
    """A threshold from the console (JSON or a query) as a float, else a ConfigError (the API's 400) naming what was
    found: a finite number > 0, or with ``below_zero`` (the model in force can score below 0: ``scores_below_zero``)
    any finite number. An integer too large for a float (JSON allows 400 digits) is refused as not finite. where:
    the field the message names (the station's start, swap and reload check ``decision.threshold / --threshold`` by
    this rule too: ``station.decision.decide_threshold``)."""
    wanted = "a finite number" if below_zero else "a finite number > 0"
    if is_number(value) and not _float_holds(value):
        raise ConfigError(f"{where}: expected {wanted}, found an integer too large for a float "
                          f"({value.bit_length()} bits); send the threshold the page proposes")
    require(is_number(value) and math.isfinite(value) and (below_zero or value > 0), where, wanted, value)
    return float(value)


def bundle_scores_below_zero(bundle) -> bool:
    """``scores_below_zero`` for a loaded bundle (``export.bundle.Bundle`` or ``runtime.fusion.FusedBundle``) before
    its scorer runs: a fused bundle's scores can be below 0, a single bundle's never are."""
    from fair_edge.runtime.fusion import FusedBundle   # here: tuning's numbers need no model runtime

    return isinstance(bundle, FusedBundle)


def scores_below_zero(scorer) -> bool:
    """Whether ``scorer`` (the ``FrameScorer`` in force; None: not known) can score a part below 0, so a threshold
    at or below 0 means something: a fused bundle's (``runtime.fusion.FusedScorer``) does, its scores being in units
    of its members' normal spread (normal parts about -2 .. 0, its calibrated threshold often below 0). A single
    bundle's never does: PatchCore's score is a feature distance (times a weight in [0, 1]), FAIR's 1 - MSGMS (GMS
    <= 1) plus a squared colour difference, LGFDR's 1 - cosine similarity, each smoothed with non-negative weights
    and taken as a maximum (over an ROI's weights and tiles too), so a threshold <= 0 would reject every part."""
    from fair_edge.runtime.fusion import FusedScorer   # here: tuning's numbers need no model runtime

    return isinstance(scorer, FusedScorer)


def _float_holds(value: int | float) -> bool:
    """Whether a float holds ``value`` (an int past about 1.8e308 does not: ``float()`` and ``math.isfinite`` raise
    OverflowError on it)."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def write_station_threshold(path: Path, value: float, load_station: Callable[[Path], Any], camera: str = "",
                            bundle: Path | None = None) -> dict:
    """Set ``decision.threshold`` in the station file, or with ``camera`` that camera's ``cameras[].threshold``
    (atomic replace, fsync'd, keeping the file's mode and owner, through a symlink to its target; YAML comments
    are not kept). bundle: the bundle the threshold was applied on (the one in force); where the file names another
    (``bundle:``; with ``camera``, its own ``cameras[].bundle``, else the station's; a link leading to it names it and
    is kept: ``names_folder``), it is written in the same
    replace (one camera: ``bundle:``; with ``camera``: its ``cameras[].bundle``), so the file never pairs the
    threshold with a bundle it was not applied on (a bundle swapped in from the console is not written by the swap).
    Returns {"old": the bundle the file named (None: none), "new": the one written} when the bundle was written,
    else {}. The result is read back through ``load_station``
    (the station loader, ``station.config.load_station``, handed in: it raises ConfigError for a file that would
    not load), so a file that would not load is never left behind. Every failure (a file that cannot be read or
    written, is not valid YAML, or is not a station file's mapping) is a ConfigError naming the file and the fix,
    with the file left as it was."""
    path = Path(path)
    data = _station_data(path)
    if camera:
        entries = data.get("cameras") or []
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: cameras: expected a list of cameras, found {type(entries).__name__}; "
                              "fix the station file, then apply the threshold again (it was not changed)")
        names = [e.get("name", f"cam{i}") if isinstance(e, dict) else None for i, e in enumerate(entries)]
        if camera not in names:
            raise ConfigError(f"{path}: expected camera {camera!r} in its cameras: list, found "
                              f"{', '.join(map(str, names)) or 'none'}; the threshold was not written")
        entry = entries[names.index(camera)]
        entry["threshold"] = float(value)
        paired = _pair_bundle(entry, entry.get("bundle") or data.get("bundle"), bundle)
    else:
        decision = data.get("decision") or {}
        if not isinstance(decision, dict):
            raise ConfigError(f"{path}: decision: expected a mapping, found {type(decision).__name__}; fix the "
                              "station file, then apply the threshold again (it was not changed)")
        data["decision"] = {**decision, "threshold": float(value)}
        paired = _pair_bundle(data, data.get("bundle"), bundle)
    target = path.resolve()   # a symlinked station file: its target is rewritten, the link stays
    tmp: Path | None = None
    try:
        tmp = _write_like(target, lambda f: dump_station_yaml(data, f))
        load_station(tmp)  # raises ConfigError (and leaves the original untouched) if it would not load
        os.replace(tmp, target)
    except ConfigError as exc:   # named as the operator knows it: the station file, not its temporary copy
        text = str(exc) if tmp is None else str(exc).replace(str(tmp), str(path))
        raise ConfigError(f"{text}; fix the station file, then apply the threshold again (it was not "
                          "changed)") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: could not be written ({exc.strerror or exc}); free disk space or make its "
                          "folder writable, then apply the threshold again (it was not changed)") from exc
    finally:
        if tmp is not None:
            discard_unfinished(tmp, "station file")   # gone after the replace; else what would not load
    return paired


def _pair_bundle(section: dict, named, bundle: Path | None) -> dict:
    """Write ``bundle`` (absolute, links kept) as ``section``'s ``bundle`` when the file names another one (``named``:
    the bundle it names for this camera now, None: none; a path leading to ``bundle``'s folder, a link among them,
    names it: ``names_folder``); returns {"old": named, "new": written} then, else {}."""
    if bundle is None or (named is not None and names_folder(named, bundle)):
        return {}
    written = os.path.abspath(bundle)
    section["bundle"] = written
    return {"old": None if named is None else str(named), "new": written}


def same_bundle(a, b) -> bool:
    """Whether two bundle paths (a station file's, relative to the working folder as the station reads them, ``~``
    expanded; or a Path) name the same folder, links not followed (a link is its own name for a bundle)."""
    return os.path.abspath(os.path.expanduser(str(a))) == os.path.abspath(os.path.expanduser(str(b)))


def names_folder(named, folder) -> bool:
    """Whether the station file's bundle path ``named`` (relative to the working folder as the station reads it, ``~``
    expanded) leads to ``folder`` now, links followed: ``bundles/current`` linked to the bundle in force names it.
    The console knows the bundle in force by its loaded root, a link's target (``load_bundle`` resolves it), so
    written over with that target the link would no longer move the camera at the next rollout (the link pointed at
    another bundle, then SIGHUP)."""
    return same_bundle(named, folder) or real_folder(named) == real_folder(folder)


def reference_graph(bundle) -> str:
    """The SHA-256 (hex) of loaded ``bundle``'s FP32 reference graph (``export.bundle.Bundle.reference_onnx_path``,
    among its checked ``files``): the network its map comes from, the same in every precision built from one
    checkpoint and after a calibration again; "" for a fused bundle (it has none) or a stand-in."""
    path, root, files = (getattr(bundle, name, None) for name in ("reference_onnx_path", "root", "files"))
    if path is None or root is None or not files:
        return ""
    try:
        return str(files.get(Path(path).relative_to(root).as_posix(), ""))
    except ValueError:   # not inside its folder: never for a loaded bundle (``export.bundle.inside_folder``)
        return ""


def real_folder(path) -> Path:
    """``path`` (a station file's, as ``same_bundle`` reads it; or a Path) absolute, with every link followed as far
    as it leads (one to nowhere, or in a loop, raises nothing here: ``os.path.realpath``; the load names it)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _write_like(original: Path, write: Callable[[IO[str]], object]) -> Path:
    """A new file beside ``original`` (``.XXXXXXXX.NAME.tmp``, ``disk.create_temporary``: a name of its own, so two
    writes at once never share or remove each other's, NAME cut short where a long one would pass the file system's
    limit), written by ``write(file)``, flushed and fsynced, with ``original``'s mode and, where this account may, its
    owner: a station file kept 0600 because it holds ``console.token`` stays so. Returns its path; a write that fails
    removes it (``disk.discard_unfinished``). Created with O_EXCL and mode 0600 until the original's mode is set: a
    planted link is never followed, and no other account opens it before then."""
    st = original.stat()
    fd, tmp = create_temporary(original, mode=0o600)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            with contextlib.suppress(PermissionError):   # only root may give a file away; the mode is what matters
                os.fchown(fd, st.st_uid, st.st_gid)
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        discard_unfinished(tmp, "station file")   # half written: never left behind
        raise
    return tmp


def _station_data(path: Path) -> dict:
    """The station file's YAML as a mapping ({} for an empty file); ConfigError naming the file and the fix for a
    file that cannot be read or decoded (``fields.read_station_text``), gives a key twice (``fields.StationLoader``),
    is not valid YAML or is not a mapping."""
    try:
        data = station_yaml(read_station_text(path), path)
    except ConfigError as exc:   # unreadable, undecodable, a key given twice: named with its fix in fields
        raise ConfigError(f"{exc}, then apply the threshold again (it was not changed)") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: expected valid YAML, found {getattr(exc, 'problem', None) or exc}{line}; fix "
                          "the station file, then apply the threshold again (it was not changed)") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of station settings, found {type(data).__name__}; fix the "
                          "station file, then apply the threshold again (it was not changed)")
    return data

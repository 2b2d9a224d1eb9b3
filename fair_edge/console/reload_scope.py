"""What a reload (SIGHUP, `systemctl reload`) applies from the station file it re-reads, and what it does not.

A reload loads the bundle, the threshold (``decision.threshold``) and ``regions:`` the file names now
(``StationConsole.reload_bundle``). Everything else (the camera, the output folder, the console's and the metrics'
ports, MQTT, the reject outputs, ...) is opened once, at the start: an edit of those sections is not applied until
the station restarts. ``unapplied_sections`` names the sections of a re-read file that differ from the file as it was
loaded at the start (before the command-line flags: a restart with the same command applies them again), so the reload
can say so instead of applying them silently in part.

What a reload applies, camera by camera, is a ``CameraBundle`` (its bundle, threshold and ``regions:`` as the file
names them now); ``reload_plan`` loads each bundle folder once for the cameras that run it; ``ReloadFrom`` says where
a refused reload took the bundle at fault (the station file's field, or --bundle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fair_edge.console import tuning
from fair_edge.systemd_unit import own_unit

# StationConfig field -> its name in the station file, for the fields a reload does not apply (a restart does). Not
# here: bundle, threshold and regions (a reload applies them) and source_file (not a setting).
RESTART_SECTIONS = {"camera": "camera", "cameras": "cameras", "backend": "backend", "batching": "batching",
                    "roi": "decision.roi", "output": "output", "reject": "reject", "record": "record",
                    "metrics": "metrics", "mqtt": "mqtt", "console": "console", "group": "group"}
# the settings of one camera of several (``cameras:``) that a reload applies: each camera's bundle, threshold and
# regions as the file names them now (``station.cell_console.CellLoader.camera_bundles``); its source, fps, ROI,
# reject, ... are opened once, at the start
RELOADED_CAMERA_FIELDS = ("bundle", "threshold", "regions")


def unapplied_sections(at_start: Any, now: Any) -> list[str]:
    """The station file's sections, as it reads ``now`` (a re-read StationConfig), that differ from the file as it was
    loaded at the start (``at_start``: a StationConfig, before the command-line flags; several cameras: the whole
    file, every camera) and that a reload does not apply (``RESTART_SECTIONS``), by their names in the file
    ("output", "cameras"): edited since the start, in force only after a restart. ``cameras:`` is one section,
    compared without what a reload applies of each camera (``RELOADED_CAMERA_FIELDS``): a camera added, removed or
    renamed, or its source, fps, ROI, ... edited."""
    return [name for field, name in RESTART_SECTIONS.items()
            if _restart_part(now, field) != _restart_part(at_start, field)]


def _restart_part(cfg: Any, field: str) -> Any:
    """The part of ``cfg``'s ``field`` that only a restart applies: the field itself, but for ``cameras`` each
    camera (``ViewSettings``) with its ``RELOADED_CAMERA_FIELDS`` left out (None)."""
    value = getattr(cfg, field, None)
    if field != "cameras":
        return value
    return tuple(replace(view, **dict.fromkeys(RELOADED_CAMERA_FIELDS)) for view in value or ())


def restart_words() -> str:
    """How to restart this station: ``systemctl restart UNIT`` when it runs as a systemd service
    (``systemd_unit.own_unit``: the unit it runs as, never a guessed name), else stop it (Ctrl-C, or SIGTERM to its
    pid) and start it again."""
    unit = own_unit()
    if unit is not None:
        return f"`{unit.command('restart')}`"
    return f"Ctrl-C or `kill -TERM {os.getpid()}`, then start it again"


@dataclass(frozen=True)
class CameraBundle:
    """One camera of several and the bundle it runs. own: the camera names it (``cameras[].bundle``); else it
    is the station's (``bundle:``). threshold: the one the station file sets for the camera (its own, else the
    station's ``decision.threshold``); None = the bundle's, by the station's rule. regions: the camera's
    ``regions:`` settings as the station file sets them (``station.config.view_config``: its own keys over the
    station's), which a reload applies; None = keep the ones in force."""

    camera: str
    bundle: Path
    own: bool
    threshold: float | None = None
    regions: Any = None


@dataclass(frozen=True)
class ReloadFrom:
    """A reload's swap, as its refusal names it: who asked (``SIGHUP``), each camera's ``CameraBundle`` as the reload
    read it (one camera: camera ""), in the station file's order, the station file it read (None: none, the bundles
    in force reloaded in place) and --bundle where it stood for the station's ``bundle:`` (None: not given)."""

    who: str
    named: tuple[CameraBundle, ...]
    station_file: Path | None = None
    flag: Path | None = None

    def refusal(self, text: str, cameras: tuple[str, ...] = ()) -> str:
        """The line a refused reload logs and its swap status shows: ``text`` (what refused it), after where the
        reload took the bundle of ``cameras`` (those whose load failed; (): not one bundle's fault)."""
        where = self.where(cameras)
        return f"bundle reload refused ({self.who}): {where + ': ' if where else ''}{text}"

    def where(self, cameras: tuple[str, ...]) -> str:
        """Where the reload took the bundle of ``cameras``: the station file's field, ``cameras[i] (name).bundle`` for a
        camera naming its own and ``bundle`` (the station's) for the others, or ``--bundle PATH`` where the flag stood
        for it; without a station file, the bundle in force. "" for no camera."""
        chosen = [(i, c) for i, c in enumerate(self.named) if c.camera in cameras]
        shared = [c.camera for _, c in chosen if not c.own or self.station_file is None]
        fields = [f"{self.station_file}: cameras[{i}] ({c.camera}).bundle" for i, c in chosen
                  if c.own and self.station_file is not None]
        if shared:
            fields.append(self._shared_field(shared))
        return "; ".join(fields)

    def _shared_field(self, cameras: list[str]) -> str:
        """Where the reload took the bundle of ``cameras`` that name none of their own (one camera: [""])."""
        named = ", ".join(c for c in cameras if c)
        of = f" (for camera{'s' if len(cameras) > 1 else ''} {named})" if named else ""
        if self.station_file is None:
            return f"the bundle in force{of}, reloaded in place"
        if self.flag is not None:
            return f"--bundle {self.flag}{of}, over {self.station_file}'s bundle"
        return f"{self.station_file}: bundle{of}"


def reload_plan(named) -> dict[Path, tuple[str, ...]]:
    """Bundle folder -> the cameras to run it, in the station file's order, for ``StationActions.swap_cameras``: one
    load per folder however the cameras spell its path (relative or absolute, through a link), keyed by the folder
    resolved (``tuning.real_folder``), as ``station.cell_models.CellModels`` keys its models at the start: cameras
    that share a backend there share one after a reload too. named: each camera's ``CameraBundle``."""
    plan: dict[Path, tuple[str, ...]] = {}
    for c in named:
        folder = tuning.real_folder(c.bundle)
        plan[folder] = (*plan.get(folder, ()), c.camera)
    return plan

"""What a reload (SIGHUP, `systemctl reload`) applies from the station file it re-reads, and what it does not.

A reload loads the bundle, the threshold (``decision.threshold``) and ``regions:`` the file names now
(``StationConsole.reload_bundle``). Everything else (the camera, the output folder, the console's and the metrics'
ports, MQTT, the reject outputs, ...) is opened once, at the start: an edit of those sections is not applied until
the station restarts. ``unapplied_sections`` names the sections of a re-read file that differ from the file as it was
loaded at the start (before the command-line flags: a restart with the same command applies them again), so the reload
can say so instead of applying them silently in part.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

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

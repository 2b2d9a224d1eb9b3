"""What a reload (SIGHUP, `systemctl reload`) applies from the station file it re-reads, and what it does not.

A reload loads the bundle, the threshold (``decision.threshold``) and ``regions:`` the file names now
(``StationConsole.reload_bundle``). Everything else (the camera, the output folder, the console's and the metrics'
ports, MQTT, the reject outputs, ...) is opened once, at the start: an edit of those sections is not applied until
the station restarts. ``unapplied_sections`` names the sections of a re-read file that differ from those the station
runs with, so the reload can say so instead of applying them silently in part.
"""

from __future__ import annotations

import os
from typing import Any

from fair_edge.systemd_unit import own_unit

# StationConfig field -> its name in the station file, for the fields a reload does not apply (a restart does). Not
# here: bundle, threshold and regions (a reload applies them) and source_file (not a setting).
RESTART_SECTIONS = {"camera": "camera", "backend": "backend", "batching": "batching", "roi": "decision.roi",
                    "output": "output", "reject": "reject", "record": "record", "metrics": "metrics",
                    "mqtt": "mqtt", "console": "console", "group": "group"}
# the fields that hold one camera's settings: a station of several cameras runs with its first camera's view of the
# file (``config.view_config``: its camera and ROI), not comparable with the file's: only its station-wide sections
# are compared
VIEW_FIELDS = ("camera", "roi")


def unapplied_sections(running: Any, now: Any, cell: bool = False) -> list[str]:
    """The station file's sections, as it reads ``now`` (a re-read StationConfig), that differ from those the station
    runs with (``running``: the StationConfig it started with, command-line flags applied) and that a reload does
    not apply (``RESTART_SECTIONS``), by their names in the file ("output", "metrics"): edited since the start (or
    set otherwise by a flag), in force only after a restart. cell: a station of several cameras (``running`` is its
    first camera's view): its station-wide sections only, not a camera's own settings."""
    fields = [f for f in RESTART_SECTIONS if not (cell and f in VIEW_FIELDS)]
    return [RESTART_SECTIONS[f] for f in fields if getattr(now, f, None) != getattr(running, f, None)]


def restart_words() -> str:
    """How to restart this station: ``systemctl restart UNIT`` when it runs as a systemd service
    (``systemd_unit.own_unit``: the unit it runs as, never a guessed name), else stop it (Ctrl-C, or SIGTERM to its
    pid) and start it again."""
    unit = own_unit()
    if unit is not None:
        return f"`{unit.command('restart')}`"
    return f"Ctrl-C or `kill -TERM {os.getpid()}`, then start it again"

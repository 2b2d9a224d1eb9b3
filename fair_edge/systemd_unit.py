"""The systemd service this process runs as, if any: the unit a refusal names to stop a running station
(``systemctl stop fair-edge-line1.service``: a site with ``install-service --name fair-edge-line1/2`` has no unit
called ``fair-edge``, and where line 1 is the default ``fair-edge`` that name stops the other line) and the one a
reload names for a restart.

A process started by a service carries ``$INVOCATION_ID`` (systemd sets it for each start) and sits in the unit's
cgroup, whose path (``/proc/self/cgroup``: cgroup v1's ``name=systemd`` line, else the unified hierarchy's ``0::``
line) ends in ``NAME.service``. Both are asked for: a station started by hand sits in a ``session-N.scope`` (or a
terminal's scope), and a shell left in a service's cgroup (a login through an sshd that no PAM module moved into a
session) has no ``$INVOCATION_ID`` (sshd does not hand its environment on). A unit of a user's own manager
(``.../user@1000.service/app.slice/NAME.service``) is one of ``systemctl --user``. Anywhere else (a container, no
systemd, Windows): no unit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

CGROUP_FILE = Path("/proc/self/cgroup")   # this process's cgroups, one "ID:CONTROLLERS:PATH" line per hierarchy
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]+\.service")   # a service unit's name as systemd spells it (escapes kept)
USER_FLAG = "--user"   # systemctl's flag for a unit of a user's own manager, as written in a lock file


@dataclass(frozen=True)
class ServiceUnit:
    """A systemd service: ``name`` (``fair-edge-line1.service``), ``user``: of a user's own manager (``systemctl
    --user``) rather than the system's."""

    name: str
    user: bool = False

    def command(self, verb: str) -> str:
        """The systemctl command that does ``verb`` (stop, restart, status) to this unit."""
        return f"systemctl {USER_FLAG + ' ' if self.user else ''}{verb} {self.name}"

    def words(self) -> str:
        """The unit as one line of a lock file (``runlock``): ``NAME`` or ``--user NAME``; read by ``from_words``."""
        return f"{USER_FLAG} {self.name}" if self.user else self.name

    @classmethod
    def from_words(cls, text: str) -> ServiceUnit | None:
        """The unit ``words`` wrote; None for text that is no such line (a lock file of another version)."""
        parts = text.split()
        user = parts[:1] == [USER_FLAG]
        names = parts[1:] if user else parts
        if len(names) != 1 or not UNIT_NAME.fullmatch(names[0]):
            return None
        return cls(names[0], user)


def own_unit(environ: Mapping[str, str] | None = None, cgroup_file: Path | None = None) -> ServiceUnit | None:
    """The service this process runs as (see the module doc), None when it runs as none or the cgroup file cannot
    be read. environ: the environment to look in (default ``os.environ``); cgroup_file: default ``CGROUP_FILE``."""
    environ = os.environ if environ is None else environ
    if not environ.get("INVOCATION_ID"):
        return None
    try:
        text = Path(cgroup_file or CGROUP_FILE).read_text()
    except OSError:
        return None
    return unit_of_cgroup(text)


def unit_of_cgroup(text: str) -> ServiceUnit | None:
    """The service whose cgroup ``text`` (``/proc/PID/cgroup``'s content) places the process in: the last component
    of the systemd hierarchy's path when it is a ``.service`` (a ``.scope``, a slice or ``/``: None)."""
    parts = [p for p in systemd_cgroup_path(text).split("/") if p]
    if not parts or not UNIT_NAME.fullmatch(parts[-1]):
        return None
    return ServiceUnit(parts[-1], user=any(p.startswith("user@") and p.endswith(".service") for p in parts[:-1]))


def systemd_cgroup_path(text: str) -> str:
    """The cgroup path systemd keeps its units in, from ``/proc/PID/cgroup``'s ``text``: cgroup v1's ``name=systemd``
    line (legacy and hybrid set-ups), else the unified hierarchy's (``0::PATH``); "" when neither is there."""
    unified = ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "name=systemd" in controllers.split(","):
            return path.strip()
        if hierarchy == "0" and not controllers:
            unified = path.strip()
    return unified

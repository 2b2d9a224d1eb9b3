"""``fair-edge install-service``: the systemd unit that runs a station at boot (``fair_edge.station.service_unit``).

It writes a file and prints the ``systemctl`` commands to run; it never runs them.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fair_edge.cli.common import console, friendly_errors
from fair_edge.errors import ConfigError
from fair_edge.line.settings import ENCODER_STOP_WAIT_S
from fair_edge.station.service_checks import check_on_this_machine, zone_masks
from fair_edge.station.service_unit import (STOP_LOAD_SEC, STOP_MARGIN_S, STOP_SEC_DEFAULT, STOP_SEC_MIN, UNIT_DIR,
                                            ServiceSettings, absolute_path, belt_drain_ms, default_executable,
                                            default_user, in_installer_home, install_unit, logical_cwd, render_unit,
                                            stop_timeout_sec, systemctl_commands)

app = typer.Typer()
_DEFAULTS = {f.name: f.default for f in fields(ServiceSettings)}  # the one place defaults live


def _check_station(station: Path, printing: bool, working_dir: Path):
    """Load the station file as `fair-edge run` will from ``working_dir`` (--working-dir, the unit's
    WorkingDirectory=: its zone masks are read from there; a unit pointing at a broken one would restart forever);
    its ``StationConfig``, or None with --print when it is not on this machine. With --print (the unit may be for
    another machine) a zone mask missing from there is a note, not a refusal (``_load_for_print``)."""
    from fair_edge.station.config import load_station

    if not station.is_file() and printing:
        console.print(f"note: {escape(str(station))} does not exist here; create it on the station machine before starting the unit.")
        return None
    return _load_for_print(station, working_dir) if printing else load_station(station, working_dir)


def _load_for_print(station: Path, working_dir: Path):
    """--print: the station file's ``StationConfig`` from ``working_dir``, each zone mask missing there noted once,
    by its field (``service_checks.zone_masks``: create it on the station machine) rather than refused; a mask that
    is there is checked as ever."""
    from fair_edge.station.config import load_station
    from fair_edge.station.zones import masks_may_be_missing

    with masks_may_be_missing() as missing:
        cfg = load_station(station, working_dir)
    for what, path in zone_masks(cfg):
        if path in missing:
            console.print(f"note: {escape(str(station))}: {what}: {escape(str(path))} does not exist here; create "
                          "it on the station machine before starting the unit.")
    return cfg


def _stop_timeout(cfg, given: Optional[int]) -> int:
    """TimeoutStopSec=, s: --timeout-stop-sec, else sized from the station's reject timing (``stop_timeout_sec``),
    else (no station file here) the default; a note when the unit may cut the belt's drain short."""
    if given is None and cfg is not None:
        return stop_timeout_sec(cfg)
    if given is None:
        console.print(f"note: TimeoutStopSec={STOP_SEC_DEFAULT} (the station file was not read) lets a stop wait for "
                      f"parts at most {STOP_SEC_MIN - STOP_MARGIN_S} s from the gate (reject.delay_ms + pulse_ms + "
                      "late_ms); for a longer belt pass --timeout-stop-sec.")
        return STOP_SEC_DEFAULT
    if cfg is not None and 1 <= given < stop_timeout_sec(cfg):
        console.print(f"note: --timeout-stop-sec {given} is less than the {stop_timeout_sec(cfg)} s the station needs "
                      f"to stop ({belt_drain_ms(cfg) / 1000.0:g} s for the parts on its belt to reach the gate + "
                      f"{STOP_MARGIN_S} s to write the log, at least {STOP_SEC_MIN} s in all, + {STOP_LOAD_SEC} s "
                      "for a bundle loading at the stop); systemd may kill it first, those parts get no reject "
                      "pulse and summary.json is not written.")
    return given


@app.command("install-service")
@friendly_errors
def install_service(
    station: Path = typer.Option(..., "--station", help="Station YAML the service runs (`fair-edge run --station FILE`)."),
    print_only: bool = typer.Option(False, "--print", help="Write the unit to stdout instead of --unit-dir."),
    unit_dir: Path = typer.Option(UNIT_DIR, "--unit-dir", help="Where the unit file goes (needs root for the default)."),
    name: str = typer.Option(_DEFAULTS["name"], "--name", help="Unit name, e.g. fair-edge-line3 (-> NAME.service; "
                             "a trailing .service is not doubled)."),
    user: Optional[str] = typer.Option(None, "--user", help="Account the station runs as [default: $SUDO_USER or you]; "
                                       "it needs the camera (group video), the bundle and the output folder."),
    group: Optional[str] = typer.Option(None, "--group", help="Group it runs as [default: the user's]."),
    working_dir: Optional[Path] = typer.Option(None, "--working-dir", help="Where relative paths in the station file "
                                               "resolve [default: the current folder, as $PWD names it]."),
    env: Optional[list[str]] = typer.Option(None, "--env", help="Extra environment KEY=VALUE, repeatable (e.g. "
                                            "OMP_NUM_THREADS=4); PYTHONUNBUFFERED=1 is always set."),
    watchdog_sec: int = typer.Option(_DEFAULTS["watchdog_sec"], "--watchdog-sec", help="WatchdogSec=: no "
                                     "ping from the inspection loop for this long and systemd restarts the station."),
    timeout_stop_sec: Optional[int] = typer.Option(
        None, "--timeout-stop-sec", help="TimeoutStopSec=: how long `systemctl stop` waits, after SIGTERM, for "
        "the parts on the belt to reach the reject gate and the log and summary.json to be written before it "
        "kills the station [default: from the station file: reject.delay_ms + pulse_ms + late_ms (encoder mode: "
        f"{ENCODER_STOP_WAIT_S:g} s for the belt) + {STOP_MARGIN_S} s, at least {STOP_SEC_MIN}, + {STOP_LOAD_SEC} s "
        "for a bundle loading at the stop]. Install again (--force) "
        "after changing the reject timing."),
    executable: Optional[Path] = typer.Option(None, "--exec", help="The fair-edge program [default: this installation's]."),
    force: bool = typer.Option(False, "--force", help="Replace a different unit already there under --name: this "
                               "station's own (e.g. written from an older venv, or with another --watchdog-sec), to "
                               "update it, or another station's; without it, install-service refuses, saying which and "
                               "what differs."),
) -> None:
    """Write a systemd unit that runs the station at boot, restarts it on a crash or a hung inspection loop
    (Type=notify, WatchdogSec=, Restart=always) and, when stopped, waits for the parts on the belt to reach the
    reject gate (TimeoutStopSec=, from the station's reject timing); print the systemctl commands to enable it.
    Paths go into the unit absolute but with their links kept (a `current -> releases/vN` link is followed at
    each start, so switching it switches the station)."""
    station = absolute_path(station)
    given_dir = working_dir is not None
    working_dir = absolute_path(working_dir or logical_cwd())
    cfg = _check_station(station, print_only, working_dir)
    settings = ServiceSettings(
        station=station, executable=(absolute_path(executable) if executable else default_executable()),
        user=user or default_user(), working_dir=working_dir, name=name,
        group=group, environment=(*_DEFAULTS["environment"], *(env or ())), watchdog_sec=watchdog_sec,
        timeout_stop_sec=_stop_timeout(cfg, timeout_stop_sec))
    given = {"--station": station, "--working-dir": working_dir if given_dir else None,
             "--exec": settings.executable if executable else None}
    note_installer_home(settings.user, {flag: path for flag, path in given.items() if path is not None})
    if print_only:
        print_unit(render_unit(settings))
        return
    check_on_this_machine(settings, cfg)   # a unit that could never start would restart forever
    if settings.user == "root":
        console.print("note: the station will run as root; pass --user with a dedicated account (see docs/jetson.md).")
    target = Path(unit_dir) / settings.unit_name
    updated = target.is_file() and target.read_text() != render_unit(settings)
    path = install_unit(settings, unit_dir, replace=force)
    when = "To restart it with these settings and start it" if updated else "To start it now and"
    console.print(f"wrote {escape(str(path))}. {when} at every boot (fair-edge does not run these):")
    for command in systemctl_commands(settings, updated):
        console.print(f"  {escape(command)}", highlight=False)


def note_installer_home(user: str, given: dict[str, Path]) -> None:
    """A note for each path given ({flag: absolute path}) in the home of the account installing while the unit runs
    as another, --user ``user`` (``service_unit.in_installer_home``): a `~` typed under sudo is the installer's
    home, not the service account's."""
    for flag, path, account, home in in_installer_home(user, given):
        console.print(escape(f"note: {flag} {path} is in {account}'s home folder ({home}), but the unit runs as "
                             f"{user}: a `~` typed for install-service, under sudo too, is {account}'s home, not "
                             f"{user}'s. The unit uses it from there, as {user}; to keep the station apart from "
                             f"{account}'s account, move it (e.g. under /opt/fair-edge) and install again."),
                      highlight=False)


def print_unit(text: str) -> None:
    """Write the unit to standard output (--print); a write that fails (a full disk under a redirection, a closed
    pipe) is one ConfigError naming standard output, and the rest of the output is sent to /dev/null so Python's
    flush at exit does not fail again with a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):   # no file descriptor (captured in a test)
            pass
        raise ConfigError(f"cannot write the unit to standard output ({exc.strerror or exc}): send --print's output "
                          "to a file on a disk with free space, or leave out --print to install the unit.") from exc

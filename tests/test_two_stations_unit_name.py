"""Two lines installed as two units (`install-service --name fair-edge-line1` / `fair-edge-line2`): a station refused
because the other holds its output folder (or a PLC output) was told to `systemctl stop fair-edge`, a unit this site
does not have (and, where line 1 is the default `fair-edge`, the other line's); the console-port error named it too.
The lock file now records the holder's own unit when it runs as a systemd service (``systemd_unit.own_unit``:
$INVOCATION_ID and the last component of its cgroup path), and the refusal names that unit; a holder run by hand
is named by its pid (`kill -TERM PID`). Lock files written without the unit's line (older releases) still read.

"Running as a unit" is what a child process is told by its environment: $INVOCATION_ID set and a cgroup file
(``systemd_unit.CGROUP_FILE``) pointing at a stand-in naming the unit."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from fair_edge.errors import ConfigError
from fair_edge.line.settings import RecordSettings
from fair_edge.station.config import ConsoleSettings, StationConfig
from lock_children import holding_child

# a station holding a folder's lock as a unit would: with $INVOCATION_ID set and the unit's cgroup (argv[2]) as its
# own (a release without the unit detection ignores both: its lock file names no unit)
UNIT_HOLDER = """
import sys
from pathlib import Path
try:
    import fair_edge.systemd_unit as systemd_unit
    systemd_unit.CGROUP_FILE = Path(sys.argv[2])
except ImportError:
    pass
from fair_edge.runlock import hold_lock
with hold_lock(Path(sys.argv[1]), ".station.lock", "fair-edge run --station /etc/fair-edge/line1.yaml",
               lambda holder: f"busy: {holder}"):
    print("held", flush=True)
    sys.stdin.read()   # until the test closes our stdin
"""


def held_as(monkeypatch, folder: Path, cgroup: str, invocation: str | None = "0123abcd"):
    """A child holding ``folder``'s station lock with ``cgroup`` as its /proc/self/cgroup and $INVOCATION_ID set to
    ``invocation`` (None: unset). Yields its pid."""
    cgroup_file = folder.parent / "cgroup"
    cgroup_file.write_text(cgroup)
    if invocation is None:
        monkeypatch.delenv("INVOCATION_ID", raising=False)
    else:
        monkeypatch.setenv("INVOCATION_ID", invocation)
    return holding_child(UNIT_HOLDER, str(folder), str(cgroup_file))


def refusal(folder: Path) -> str:
    """The text of the refusal of a station on output folder ``folder`` (``station_lock``)."""
    from fair_edge.station.locks import station_lock

    cfg = StationConfig(output=folder, record=RecordSettings(dir=folder), console=ConsoleSettings(enabled=False))
    with pytest.raises(ConfigError) as refused:
        with station_lock(cfg):
            pass
    return " ".join(str(refused.value).split())


def test_a_station_refused_by_one_running_as_a_unit_is_told_to_stop_that_unit(tmp_path, monkeypatch):
    """The audit's repro_busy_unit_name: line 2's station file names line 1's output; line 1 runs as
    fair-edge-line1.service. The refusal names that unit, not `fair-edge`."""
    out = tmp_path / "out"
    out.mkdir()
    with held_as(monkeypatch, out, "0::/system.slice/fair-edge-line1.service\n") as pid:
        text = refusal(out)
    assert f"pid {pid}, fair-edge run --station /etc/fair-edge/line1.yaml" in text, text
    assert "stop it first (`systemctl stop fair-edge-line1.service`)" in text, text
    assert "systemctl stop fair-edge`" not in text and "kill" not in text, text


def test_a_station_refused_by_one_started_by_hand_is_told_its_pid(tmp_path, monkeypatch):
    """A holder in a terminal's session scope (and one without $INVOCATION_ID in a service's cgroup: a shell an sshd
    left there) runs as no unit: the refusal names its pid, and no unit."""
    for name, cgroup, invocation in (("scope", "0::/user.slice/user-1000.slice/session-3.scope\n", "x1"),
                                     ("bare", "0::/system.slice/sshd.service\n", None)):
        out = tmp_path / name / "out"
        out.mkdir(parents=True)
        with held_as(monkeypatch, out, cgroup, invocation) as pid:
            text = refusal(out)
        assert f"stop it first (`kill -TERM {pid}`, or Ctrl-C in its terminal)" in text, text
        assert "systemctl" not in text, text


def test_a_plc_output_held_by_a_unit_names_the_unit(tmp_path, monkeypatch):
    """The PLC-output refusal (``plc_busy``) takes the same words from the holder."""
    from fair_edge.runlock import LockHolder
    from fair_edge.station.locks import plc_busy
    from fair_edge.systemd_unit import ServiceUnit

    output = SimpleNamespace(shown="modbus 10.0.0.5:502 unit 1 coil 0", setting="reject.sinks[0]")
    holder = LockHolder(4242, "fair-edge run --station /etc/a.yaml", ServiceUnit("fair-edge-line2.service"))
    text = plc_busy(output, holder)
    assert "(pid 4242, fair-edge run --station /etc/a.yaml): stop it first (`systemctl stop " \
           "fair-edge-line2.service`), or give this one another PLC output (reject.sinks[0]" in text, text


def test_the_lock_file_records_the_unit_and_an_older_lock_file_still_reads(tmp_path, monkeypatch):
    """The lock file: pid, what, and the unit's line when there is one; a file of two lines reads as before (no unit,
    the pid named), and a third line that is no unit is ignored."""
    from fair_edge import systemd_unit
    from fair_edge.runlock import holder_of, lock_text

    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/user.slice/user-1000.slice/user@1000.service/app.slice/fair-edge.service\n")
    monkeypatch.setattr(systemd_unit, "CGROUP_FILE", cgroup)
    monkeypatch.setenv("INVOCATION_ID", "0123abcd")
    assert lock_text("fair-edge run") == f"{os.getpid()}\nfair-edge run\n--user fair-edge.service\n"
    lock = tmp_path / ".station.lock"
    lock.write_text(lock_text("fair-edge run"))
    assert holder_of(lock).stop_command() == "systemctl --user stop fair-edge.service"

    lock.write_text("4242\nfair-edge run --station /etc/a.yaml\n")   # an older release's
    old = holder_of(lock)
    assert (str(old), old.unit, old.stop_command()) == ("pid 4242, fair-edge run --station /etc/a.yaml", None,
                                                        "kill -TERM 4242")
    lock.write_text("4242\nfair-edge run\nnot a unit; rm -rf /\n")
    assert holder_of(lock).unit is None
    lock.write_text("")
    assert str(holder_of(lock)) == "a process whose pid is not written yet" and holder_of(lock).stop_command() == ""


@pytest.mark.parametrize("cgroup, unit", [
    ("0::/system.slice/fair-edge-line2.service\n", "fair-edge-line2.service"),                      # cgroup v2
    ("12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/fair-edge@line1.service\n0::/\n",
     "fair-edge@line1.service"),                                                                      # v1 / hybrid
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),                                       # a terminal
    ("0::/system.slice/fair-edge.service/extra.scope\n", None),                                      # not its own
    ("0::/\n", None), ("", None),                                                                      # a container
])
def test_the_unit_is_the_last_component_of_the_systemd_cgroup_path_when_it_is_a_service(cgroup, unit):
    from fair_edge.systemd_unit import own_unit, unit_of_cgroup

    found = unit_of_cgroup(cgroup)
    assert (found.name if found else None) == unit
    assert own_unit(environ={}, cgroup_file=Path("/nonexistent")) is None   # no $INVOCATION_ID: no unit


def test_a_busy_console_port_names_no_unit_and_how_to_find_the_holder(tmp_path, caplog):
    """The console-port error asked `systemctl status fair-edge` (a unit a two-line site does not have): it now says
    how to find the process holding the port and its unit."""
    from fair_edge.console.station_hook import StationConsole

    console = StationConsole(StationConfig(output=tmp_path, console=ConsoleSettings(port=18765)),
                             SimpleNamespace(root=tmp_path / "b", threshold=None))

    def port_taken():   # what ConsoleServer.start raises when uvicorn cannot bind (no port is bound here)
        console.server.close()
        raise ConfigError("console.port: expected a free port on 127.0.0.1, found 18765 unusable")

    console.server.start = port_taken
    with caplog.at_level(logging.ERROR, logger="fair_edge.console.station_hook"):
        console.start()
    text = " ".join(r.getMessage() for r in caplog.records if r.name == "fair_edge.console.station_hook")
    assert "systemctl status fair-edge`" not in text, text
    assert "`ss -ltnp 'sport = :18765'` names its pid; `systemctl status PID` its unit" in text, text

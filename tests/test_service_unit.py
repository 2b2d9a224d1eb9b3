"""`fair-edge install-service`: the unit text, checked by systemd's own `systemd-analyze verify`, and the command."""

from __future__ import annotations

import errno
import getpass
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fair_edge.cli.service import install_service
from fair_edge.errors import ConfigError
from fair_edge.station.service_unit import ServiceSettings, install_unit, quote_arg, render_unit

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here "
                                   "(Debian: apt-get install systemd); the unit is then not verified")

USER = getpass.getuser()   # install-service refuses a --user that is not an account here (the unit could never start)
app = typer.Typer()
app.command("install-service")(install_service)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def station_file(folder: Path, name: str = "station.yaml") -> Path:
    """A station file in ``folder`` whose bundle (absolute, beside it) exists: installing checks it is there."""
    (folder / "bundle-w32-int8").mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"camera: {{source: \"0\"}}\nbundle: {json.dumps(str(folder / 'bundle-w32-int8'))}\n")
    return path


def settings(tmp_path: Path, **changes) -> ServiceSettings:
    base = dict(station=station_file(tmp_path / "line 3 (50%)"), executable=Path(sys.executable), user="root",
                working_dir=tmp_path, environment=("PYTHONUNBUFFERED=1", "LABEL=a \"quoted\" $HOME 100%"))
    return ServiceSettings(**{**base, **changes})


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


@needs_analyze
def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path):
    s = settings(tmp_path)
    unit = tmp_path / s.unit_name
    unit.write_text(render_unit(s))
    result = verify(unit)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a program that is not there, or a watchdog value systemd cannot parse."""
    s = settings(tmp_path, executable=tmp_path / "no-such-fair-edge")
    unit = tmp_path / s.unit_name
    unit.write_text(render_unit(s))
    missing = verify(unit)
    assert missing.returncode != 0 and "is not executable" in missing.stderr
    unit.write_text(render_unit(settings(tmp_path)).replace("WatchdogSec=30", "WatchdogSec=thirty"))
    assert "Failed to parse sec value" in verify(unit).stderr


def test_the_unit_runs_the_station_under_the_watchdog(tmp_path):
    s = settings(tmp_path, watchdog_sec=12)
    lines = render_unit(s).splitlines()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=always", "WatchdogSec=12", "User=root",
                 f"WorkingDirectory={tmp_path}", "ExecReload=/bin/kill -HUP $MAINPID", "WantedBy=multi-user.target"):
        assert line in lines, line
    exec_start = next(line for line in lines if line.startswith("ExecStart="))[len("ExecStart="):]
    # systemd's quoting is the shell's double quotes; %% and $$ are its escapes for specifiers and variables
    argv = shlex.split(exec_start.replace("%%", "%").replace("$$", "$"))
    assert argv == [sys.executable, "run", "--station", str(s.station)] and "%%" in exec_start
    env_line = next(line for line in lines if line.startswith("Environment="))
    assert shlex.split(env_line[len("Environment="):].replace("%%", "%")) == list(s.environment)


def test_the_unit_is_hardened_without_hiding_the_stations_files_or_devices(tmp_path):
    """Was: no hardening line at all (`systemd-analyze security` 9.5 UNSAFE; NG images and logs written 0644; the
    soft open-files limit 1024, which a burst of console readers used up). The sandboxing that would hide the
    station's files or its camera, GPU and GPIO devices stays off."""
    lines = render_unit(settings(tmp_path)).splitlines()
    service = lines[lines.index("[Service]"):lines.index("[Install]")]
    for line in ("NoNewPrivileges=yes", "RestrictSUIDSGID=yes", "ProtectKernelModules=yes",
                 "ProtectControlGroups=yes", "UMask=0027", "LimitNOFILE=65536"):
        assert line in service, line
    assert not [line for line in lines if line.startswith(("ProtectSystem=", "ProtectHome=", "PrivateTmp=",
                                                            "PrivateDevices="))]


@needs_analyze
def test_systemd_rates_the_unit_better_than_unsafe(tmp_path):
    """`systemd-analyze security` scores exposure 0..10; the unit without hardening scored 9.5 (UNSAFE)."""
    s = settings(tmp_path)
    unit = tmp_path / s.unit_name
    unit.write_text(render_unit(s))
    rated = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                           timeout=60)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", rated.stdout + rated.stderr)
    assert score is not None, rated.stdout + rated.stderr
    assert float(score.group(1)) < 9.0, score.group(0)


def test_quoting_and_settings_are_checked():
    assert quote_arg("/usr/bin/fair-edge") == "/usr/bin/fair-edge"
    assert quote_arg("/a b/c\"d") == '"/a b/c\\"d"' and quote_arg("50%") == "50%%" and quote_arg("$X") == "$$X"
    for bad, message in ((dict(station=Path("station.yaml")), "absolute path"),
                         (dict(environment=("1BAD=x",)), "KEY=VALUE"), (dict(name="a b"), "unit name"),
                         (dict(watchdog_sec=0), "watchdog_sec must be >= 1"), (dict(user="a\nb"), "line breaks")):
        with pytest.raises(ConfigError, match=message):
            ServiceSettings(**{**dict(station=Path("/s.yaml"), executable=Path("/bin/true"), user="u",
                                      working_dir=Path("/")), **bad})


def test_install_writes_the_unit_atomically_and_prints_the_commands(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))  # fair-edge must not run systemctl
    station = station_file(tmp_path / "cfg")
    units = tmp_path / "units"
    units.mkdir()
    r = CliRunner().invoke(app, ["install-service", "--station", str(station), "--unit-dir", str(units), "--name",
                                 "fair-edge-line3", "--user", USER, "--env", "OMP_NUM_THREADS=4",
                                 "--exec", sys.executable, "--working-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    unit = units / "fair-edge-line3.service"
    text = unit.read_text()
    assert f"User={USER}" in text and '"OMP_NUM_THREADS=4"' in text and f"--station {station}" in text
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644 and [p.name for p in units.iterdir()] == [unit.name]
    for command in ("sudo systemctl daemon-reload", "sudo systemctl enable --now fair-edge-line3.service",
                    "journalctl -u fair-edge-line3.service -f"):
        assert command in r.output, command
    assert calls == []


def test_installing_another_station_under_a_taken_name_is_refused_unless_forced(tmp_path):
    """A second station installed with the same --name replaced the first one's unit without a word. Now the same
    unit again is fine, a different one is refused naming the unit, what it runs and the fixes, and --force replaces."""
    units = tmp_path / "units"
    units.mkdir()
    first, second = station_file(tmp_path / "a"), station_file(tmp_path / "b")
    args = ["install-service", "--unit-dir", str(units), "--user", USER, "--exec", sys.executable,
            "--working-dir", str(tmp_path)]
    assert CliRunner().invoke(app, [*args, "--station", str(first)]).exit_code == 0
    assert CliRunner().invoke(app, [*args, "--station", str(first)]).exit_code == 0          # the same unit again
    refused = CliRunner().invoke(app, [*args, "--station", str(second)], env={"COLUMNS": "300"})
    unit = units / "fair-edge.service"
    assert refused.exit_code == 2 and "already holds another unit" in refused.output and "--force" in refused.output
    assert f"--station {first}" in unit.read_text()
    forced = CliRunner().invoke(app, [*args, "--station", str(second), "--force"])
    assert forced.exit_code == 0 and f"--station {second}" in unit.read_text()


def test_print_goes_to_stdout_and_errors_name_the_fix(tmp_path):
    station = station_file(tmp_path)
    printed = CliRunner().invoke(app, ["install-service", "--station", str(station), "--print", "--exec", sys.executable])
    assert printed.exit_code == 0 and printed.stdout.startswith("# Written by `fair-edge install-service`")
    assert "Type=notify" in printed.stdout
    missing = CliRunner().invoke(app, ["install-service", "--station", str(tmp_path / "nope.yaml"), "--unit-dir",
                                       str(tmp_path), "--exec", sys.executable])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
    bad = station_file(tmp_path, "bad.yaml")
    bad.write_text("camera: {sorce: 0}\n")
    r = CliRunner().invoke(app, ["install-service", "--station", str(bad), "--print", "--exec", sys.executable])
    assert r.exit_code == 2 and "sorce" in r.output


def test_an_unwritable_unit_dir_says_to_use_sudo(tmp_path):
    units = tmp_path / "ro"
    units.mkdir()
    units.chmod(0o500)
    try:
        if _writable(units):
            pytest.skip("running as root: a read-only folder is still writable, so the refusal cannot be shown")
        with pytest.raises(ConfigError, match="Run with sudo"):
            install_unit(settings(tmp_path), units)
    finally:
        units.chmod(0o700)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("")
    except PermissionError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.mark.parametrize("section,field", [
    ("mqtt: {url: 'mqtt://10.0.0.9:1883/line3?keepalive=10'}", "mqtt.url"),
    ("reject: {sinks: ['modbus://10.0.0.5:502?unit=1&coil=0&pulse=50'], delay_ms: 400}", "reject.sinks[0]"),
])
def test_a_station_file_whose_url_cannot_start_is_refused_before_a_unit_restart_loops_on_it(tmp_path, section, field):
    """A URL typo used to load and pass this check, then fail at every start of the unit (Restart=always)."""
    station = station_file(tmp_path)
    station.write_text(station.read_text() + section + "\n")
    r = CliRunner().invoke(app, ["install-service", "--station", str(station), "--print", "--exec", sys.executable],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 2 and f"{field}:" in r.output and "fix the URL" in r.output, r.output
    assert "[Service]" not in r.stdout


def test_this_stations_own_unit_with_other_settings_is_named_as_such_and_updated_with_force(tmp_path):
    """After an upgrade (a new venv) or with another --watchdog-sec, the unit already there runs this very station
    file: it was called "another unit" with "Give this station its own --name" first, which installs a second
    service on the same camera. Now it is named as this station's unit, the differing lines shown, --force offered
    (not --name), and --force updates it and prints the restart."""
    units = tmp_path / "units"
    units.mkdir()
    station = station_file(tmp_path / "line 3 (50%)")   # quoted and %-escaped in ExecStart
    old_exec, new_exec = executable_in(tmp_path / "venv-1"), executable_in(tmp_path / "venv-2")
    args = ["install-service", "--unit-dir", str(units), "--user", USER, "--working-dir", str(tmp_path),
            "--station", str(station)]
    assert CliRunner().invoke(app, [*args, "--exec", str(old_exec)]).exit_code == 0
    unit = units / "fair-edge.service"
    before = unit.read_text()
    for changed, lines in ((["--exec", str(new_exec)], ("- ExecStart=" + str(old_exec), "+ ExecStart=" + str(new_exec))),
                           (["--exec", str(old_exec), "--watchdog-sec", "60"], ("- WatchdogSec=30", "+ WatchdogSec=60"))):
        refused = CliRunner().invoke(app, [*args, *changed], env={"COLUMNS": "400"})
        assert refused.exit_code == 2, refused.output
        out = refused.output
        assert "is already this station's unit" in out and "another unit" not in out, out
        assert all(line in out for line in lines), out
        assert "pass --force" in out and "systemctl restart fair-edge.service" in out
        assert "its own --name" not in out and unit.read_text() == before
    forced = CliRunner().invoke(app, [*args, "--exec", str(new_exec), "--force"], env={"COLUMNS": "200"})
    assert forced.exit_code == 0 and f"ExecStart={new_exec} run" in unit.read_text()
    assert "sudo systemctl restart fair-edge.service" in forced.output
    assert sorted(p.name for p in units.iterdir()) == ["fair-edge.service"]   # no second unit for the same station


def test_a_unit_naming_the_station_by_another_path_is_still_this_stations(tmp_path):
    """The station file is compared resolved: a unit written with a relative --station (against its
    WorkingDirectory=) or through a link is this station's; a unit of another station keeps the --name advice."""
    from fair_edge.station.service_unit import installed_station

    units = tmp_path / "units"
    units.mkdir()
    s = settings(tmp_path)
    link = tmp_path / "current"
    link.symlink_to(s.station.parent)
    unit = units / s.unit_name
    relative = render_unit(s).replace(quote_arg(str(s.station)), quote_arg(f"current/{s.station.name}"))
    assert installed_station(relative) == s.station.resolve()
    unit.write_text(relative.replace("WatchdogSec=30", "WatchdogSec=45"))
    with pytest.raises(ConfigError, match=r"already this station's unit(.|\n)*- WatchdogSec=45\n  \+ WatchdogSec=30"):
        install_unit(s, units)
    other = settings(tmp_path, station=station_file(tmp_path / "line4"))
    with pytest.raises(ConfigError, match=r"already holds another unit .*its own --name"):
        install_unit(other, units)


@pytest.mark.parametrize("code, fix", [
    (errno.EROFS, r".*units is on a read-only file system\. Remount that disk read-write \(`sudo mount -o remount,rw` "
                  r".*--print > fair-edge\.service"),
    (errno.ENOSPC, r"the disk of .*units is full \([\d.]+ MB free on the disk of .*units\)\. Free space on that disk, "
                   r"then install again\.$"),
    (errno.EIO, r"Input/output error\. Fix .*units, or use --print > fair-edge\.service"),
])
def test_a_read_only_or_full_unit_dir_is_refused_by_name_and_leaves_no_temporary_file(tmp_path, monkeypatch,
                                                                                        code, fix):
    """A read-only (EROFS) or full (ENOSPC) unit folder gave a raw OSError traceback and left a 0-byte
    .fair-edge.service.tmp; now a ConfigError names the folder and the fix, and the temporary file is gone."""
    units, s = tmp_path / "units", settings(tmp_path)
    units.mkdir()

    def fsync(fd):   # the file is made and written, then forcing its bytes out fails (a full disk)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ConfigError, match=rf"^cannot write {units / 'fair-edge.service'}: {fix}"):
        install_unit(s, units)
    assert list(units.iterdir()) == []


LONG_BELT = "reject: {sinks: ['modbus://127.0.0.1:15020?unit=1&coil=0'], delay_ms: 70000}\n"


def unit_lines(r) -> list[str]:
    assert r.exit_code == 0, r.output
    return r.stdout.splitlines()


def printed(station: Path, *extra: str):
    return CliRunner().invoke(app, ["install-service", "--station", str(station), "--print", "--exec", sys.executable,
                                    *extra], env={"COLUMNS": "400"})


def test_the_stop_timeout_lets_the_parts_on_a_long_belt_reach_the_gate(tmp_path):
    """TimeoutStopSec=60 was written for every station: with reject.delay_ms 70000 systemd killed the station 60 s
    into its SIGTERM drain (it waits delay + pulse + late + 1 s), the NG parts on the belt got no pulse and
    summary.json was not written. Now the stop timeout is the drain rounded up + 30 s, at least 60, + 32 s for a bundle
    loading at the stop (the console's close)."""
    long_belt, default = station_file(tmp_path / "long"), station_file(tmp_path / "default")
    long_belt.write_text(long_belt.read_text() + LONG_BELT)
    assert "TimeoutStopSec=133" in unit_lines(printed(long_belt))   # 70 s + 50 ms pulse + 10 ms late -> 71 + 30 + 32
    assert "TimeoutStopSec=92" in unit_lines(printed(default))
    from fair_edge.station.config import load_station
    from fair_edge.station.service_unit import stop_timeout_sec

    s = settings(tmp_path, station=long_belt, timeout_stop_sec=stop_timeout_sec(load_station(long_belt)))
    stop = next(int(line.split("=")[1]) for line in render_unit(s).splitlines() if line.startswith("TimeoutStopSec="))
    assert stop >= 133


@pytest.mark.parametrize("reject, expected", [
    # encoder mode: a delay in counts has no time; a stop waits at most 10 s for a belt that may have stopped
    ("reject: {sinks: ['modbus://127.0.0.1:1502?coil=0'], encoder: 'sim://?counts_per_s=2000', "
     "encoder_distance: 900000}\n", 92),
    # the widest pulse counts, a sink URL's own pulse_ms included: 40 s + 20 s + 10 ms -> 61 + 30 + 32
    ("reject: {sinks: ['modbus://127.0.0.1:1502?coil=0', 'modbus://127.0.0.1:1502?coil=1&pulse_ms=20000'], "
     "delay_ms: 40000}\n", 123),
    ("reject: {sinks: ['modbus://127.0.0.1:1502?coil=0'], delay_ms: 29000, late_ms: 940}\n", 92),   # 30 + 30 + 32
])
def test_the_stop_timeout_follows_each_way_of_timing_rejects(tmp_path, reject, expected):
    station = station_file(tmp_path)
    station.write_text(station.read_text() + reject)
    assert f"TimeoutStopSec={expected}" in unit_lines(printed(station))


def test_a_lane_stations_stop_timeout_counts_its_cameras_reject_outputs(tmp_path):
    """Lanes reject through each camera's own URLs, on the station's reject timing."""
    station = tmp_path / "lanes.yaml"
    station.write_text("cameras:\n"
                       "  - {name: a, source: '0', reject: ['modbus://127.0.0.1:1502?coil=0&pulse_ms=20000']}\n"
                       "  - {name: b, source: '1', reject: ['modbus://127.0.0.1:1502?coil=1']}\n"
                       "group: {by: lane}\nbundle: runs/b\nreject: {delay_ms: 45000}\n")
    assert "TimeoutStopSec=128" in unit_lines(printed(station))   # 45 s + 20 s + 10 ms -> 66 + 30 + 32


def test_timeout_stop_sec_overrides_it_and_is_checked(tmp_path):
    station = station_file(tmp_path)
    station.write_text(station.read_text() + LONG_BELT)
    assert "TimeoutStopSec=300" in unit_lines(printed(station, "--timeout-stop-sec", "300"))
    short = printed(station, "--timeout-stop-sec", "45")
    assert "TimeoutStopSec=45" in unit_lines(short)
    assert "note: --timeout-stop-sec 45 is less than the 133 s" in short.stderr and "no reject pulse" in short.stderr
    for bad, message in (("0", "timeout_stop_sec must be >= 1 s; found 0"),
                         ("99999999999", "timeout_stop_sec must be at most 604800 s")):
        r = printed(station, "--timeout-stop-sec", bad)
        assert r.exit_code == 2 and message in r.output and "[Service]" not in r.stdout, r.output


def test_a_printed_unit_for_a_station_file_not_here_keeps_the_default_and_says_so(tmp_path):
    r = printed(tmp_path / "elsewhere.yaml")
    assert "TimeoutStopSec=92" in unit_lines(r) and "for a longer belt pass --timeout-stop-sec" in r.stderr
    assert "TimeoutStopSec=120" in unit_lines(printed(tmp_path / "elsewhere.yaml", "--timeout-stop-sec", "120"))


def test_a_unit_installed_before_the_belt_got_longer_is_shown_with_the_stop_timeout_to_update(tmp_path):
    """The timeout comes from the station file: after reject.delay_ms changes, installing again names the changed
    TimeoutStopSec= line and --force updates it."""
    units = tmp_path / "units"
    units.mkdir()
    station = station_file(tmp_path / "line3")
    args = ["install-service", "--unit-dir", str(units), "--user", USER, "--exec", sys.executable,
            "--working-dir", str(tmp_path), "--station", str(station)]
    assert CliRunner().invoke(app, args).exit_code == 0
    station.write_text(station.read_text() + LONG_BELT)
    refused = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert refused.exit_code == 2 and "- TimeoutStopSec=92" in refused.output
    assert "+ TimeoutStopSec=133" in refused.output and "pass --force" in refused.output
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0
    assert "TimeoutStopSec=133" in (units / "fair-edge.service").read_text().splitlines()


def executable_in(folder: Path) -> Path:
    """A runnable stand-in for the fair-edge program in ``folder`` (systemd-analyze verify checks it is executable)."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "fair-edge"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    return program


def test_a_dollar_in_the_executable_path_stays_single(tmp_path):
    """systemd expands $VARIABLES in ExecStart's arguments only: a venv path with '$' was written with '$$' in the
    executable too, so systemd looked for '.../venv$$1/fair-edge' and the unit never started. Now the executable's
    '$' stays single; the arguments' are still doubled."""
    s = settings(tmp_path / "svc $HOME", executable=executable_in(tmp_path / "venv$1" / "bin"))
    exec_start = next(line for line in render_unit(s).splitlines() if line.startswith("ExecStart="))
    assert exec_start.startswith(f"ExecStart={s.executable} run --station "), exec_start
    assert "$$HOME" in exec_start and exec_start.count("$$") == 1
    if SYSTEMD_ANALYZE is not None:
        unit = tmp_path / s.unit_name
        unit.write_text(render_unit(s))
        result = verify(unit)
        assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("char", ['"', "\\", "'"])
def test_an_executable_path_systemd_refuses_is_refused_by_name(tmp_path, char):
    """systemd refuses an executable path holding a quote or a backslash ("Executable name contains special
    characters"): the unit was written and never started. Now install-service refuses it, naming the path."""
    program = executable_in(tmp_path / f"venv{char}1" / "bin")
    with pytest.raises(ConfigError, match=rf"^the fair-edge executable {re.escape(str(program))} contains "
                                          rf"{re.escape(repr(char))}: systemd refuses"):
        settings(tmp_path, executable=program)
    if SYSTEMD_ANALYZE is not None:   # the refusal matches systemd's own
        text = render_unit(settings(tmp_path, executable=Path("/bin/true"))).replace(
            "ExecStart=/bin/true", "ExecStart=" + quote_arg(str(program), dollar=False))
        unit = tmp_path / "refused.service"
        unit.write_text(text)
        assert "Executable name contains special characters" in verify(unit).stderr


def release_layout(tmp_path: Path) -> tuple[Path, Path]:
    """``root/releases/v1``, ``v2`` (a station file each) and ``root/current -> releases/v1``: (root, current)."""
    root = tmp_path / "srv"
    for version in ("v1", "v2"):
        station_file(root / "releases" / version)
    current = root / "current"
    current.symlink_to(Path("releases") / "v1")
    return root, current


def test_install_service_keeps_the_links_in_the_paths_it_writes(tmp_path, monkeypatch):
    """With `current -> releases/v1`, the unit named releases/v1 (paths resolved, the default working folder
    physical): after switching `current` to v2, a restart still ran v1. Now the paths are absolute with their links
    kept, the default working folder is the one $PWD names, and the same station is still recognised through them."""
    root, current = release_layout(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    program = executable_in(current / "venv" / "bin")
    monkeypatch.chdir(current)
    args = ["install-service", "--unit-dir", str(units), "--user", USER, "--exec", "venv/bin/fair-edge"]
    r = CliRunner().invoke(app, [*args, "--station", "station.yaml"], env={"PWD": str(current)})
    assert r.exit_code == 0, r.output
    lines = (units / "fair-edge.service").read_text().splitlines()
    assert f"ExecStart={program} run --station {current / 'station.yaml'}" in lines, lines
    assert f"WorkingDirectory={current}" in lines, lines
    explicit = CliRunner().invoke(app, [*args, "--station", str(current / "station.yaml"), "--working-dir",
                                        str(current), "--print"], env={"PWD": str(current)})
    assert explicit.exit_code == 0 and explicit.stdout.splitlines() == lines
    # the same station through another path (resolved) is still this station's unit, not "another unit"
    other = CliRunner().invoke(app, [*args, "--station", str(root / "releases" / "v1" / "station.yaml")],
                               env={"PWD": str(current), "COLUMNS": "400"})
    assert other.exit_code == 2 and "is already this station's unit" in other.output, other.output


def test_a_pwd_that_is_not_the_current_folder_is_not_used(tmp_path, monkeypatch):
    from fair_edge.station.service_unit import absolute_path, logical_cwd

    root, current = release_layout(tmp_path)
    monkeypatch.chdir(current)
    monkeypatch.setenv("PWD", str(root / "releases" / "v2"))       # stale: another folder
    assert logical_cwd() == os.getcwd() == str((root / "releases" / "v1").resolve())
    monkeypatch.setenv("PWD", str(current))
    assert logical_cwd() == str(current) and absolute_path("a/../station.yaml") == current / "station.yaml"
    assert absolute_path("~/x") == Path.home() / "x"


def test_print_onto_a_full_disk_is_one_line_naming_standard_output(tmp_path):
    """`--print > /dev/full` (a redirection onto a full disk) ended in a Python traceback; it is one error line
    naming standard output and the fix, exit 2, and nothing more at exit."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    station = station_file(tmp_path / "cfg")
    code = ("import sys; from fair_edge.cli import main; "
            f"sys.argv = ['fair-edge', 'install-service', '--station', {str(station)!r}, '--print', "
            f"'--exec', {sys.executable!r}]; main()")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert re.search(r"cannot write the unit to standard output \(No space left on device\).*--print", r.stderr, re.S)


def test_printed_paths_keep_their_brackets(tmp_path, monkeypatch):
    """Paths are printed as they are: '[b]' in a folder name was read as Rich markup (bold) and dropped, and '[/'
    stopped the command with a MarkupError."""
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: None)
    station = station_file(tmp_path / "cfg [b]")
    units = tmp_path / "units [" / "x]"   # the text '[/x]' in the path: a Rich close tag
    units.mkdir(parents=True)
    r = CliRunner().invoke(app, ["install-service", "--station", str(station), "--unit-dir", str(units), "--user",
                                 USER, "--exec", sys.executable, "--working-dir", str(tmp_path)],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert f"wrote {units / 'fair-edge.service'}." in r.output, r.output


def test_a_dot_dot_after_a_link_is_resolved_as_the_system_does(tmp_path):
    """`current/../station.yaml` names the file above where `current` points (as `ls` finds it), not the one beside
    the link: normalising the text named a file that does not exist, or another station's. Links before no `..`
    are kept."""
    from fair_edge.station.service_unit import absolute_path

    (tmp_path / "releases" / "v3").mkdir(parents=True)
    (tmp_path / "current").symlink_to(tmp_path / "releases" / "v3")
    assert absolute_path("../station.yaml", cwd=str(tmp_path / "current")) == tmp_path / "releases" / "station.yaml"
    assert absolute_path("current/./a/../b.yaml", cwd=str(tmp_path)) == tmp_path / "current" / "b.yaml"   # a: no link
    assert absolute_path("current/station.yaml", cwd=str(tmp_path)) == tmp_path / "current" / "station.yaml"

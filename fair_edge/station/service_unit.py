"""A systemd unit that runs the station at boot, restarts it after a crash, and watches its inspection loop.

``render_unit(settings)`` writes the unit text for ``fair-edge run --station FILE``:
  Type=notify + NotifyAccess=main   the station says READY=1 once it inspects (``fair_edge.station.notify``);
  WatchdogSec=                      no WATCHDOG=1 from the inspection loop for that long -> killed (SIGABRT) and,
  Restart=always                    like any exit or crash, restarted after RestartSec (StartLimitIntervalSec=0:
                                    a line station keeps trying, e.g. while its camera is unplugged);
  ExecReload=kill -HUP $MAINPID     `systemctl reload` loads the bundle again without stopping capture;
  TimeoutStopSec=                   SIGTERM lets the parts on the belt reach the gate first: ``stop_timeout_sec``
                                    sizes it from the station's reject timing (a long belt needs more than 92 s).
  HARDENING                         no privilege gain (setuid), no kernel modules loaded, cgroups read-only,
                                    UMask=0027 (NG images and logs not world-readable), LimitNOFILE=65536. Not
                                    ProtectSystem/ProtectHome/PrivateTmp/PrivateDevices: the station writes its
                                    station file, outputs and caches wherever the site put them, and needs the
                                    camera, GPU and GPIO devices.
Quoting follows systemd.syntax(7) and systemd.service(5): arguments with spaces or quotes are double-quoted with
backslash escapes, ``%`` is doubled (specifiers) and, in ExecStart's arguments, ``$`` too (variable expansion; the
executable path itself is not expanded, so its ``$`` stays single). systemd refuses an executable path holding a
quote or a backslash, so such a path is refused here, by name. Paths are written absolute but not resolved
(``absolute_path``): a ``current -> releases/vN`` link stays in the unit, so switching it switches the station.
What install-service checks on this machine before it writes the unit, as the unit's account, is
``fair_edge.station.service_checks``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fair_edge.console.settings import CLOSE_LOAD_S
from fair_edge.disk import write_failure, write_whole
from fair_edge.errors import ConfigError
from fair_edge.line.settings import ENCODER_STOP_WAIT_S

if TYPE_CHECKING:
    from fair_edge.station.config import StationConfig

UNIT_DIR = Path("/etc/systemd/system")
STOP_SEC_MIN = 60        # the line side's part of TimeoutStopSec= at least, s: for a station with a short belt or none
STOP_LOAD_SEC = math.ceil(CLOSE_LOAD_S)   # s added for the console's close, a bundle loading at the stop (32)
STOP_SEC_DEFAULT = STOP_SEC_MIN + STOP_LOAD_SEC   # TimeoutStopSec= for a station with a short belt or none (92)
STOP_MARGIN_S = 30       # s added to the belt's drain (at least: STOP_SEC_MIN); the stop's waits draw from it all
#                          but STOP_RESERVE_S (station/stop_deadline.py)
HARDENING = (   # [Service] lines that take nothing the station needs (see the module doc and docs/jetson.md)
    "NoNewPrivileges=yes",
    "RestrictSUIDSGID=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "UMask=0027",
    "LimitNOFILE=65536",
)
MAX_SEC = 7 * 86400      # the longest of the unit's times, s (a week); reject timing may reach 3 days (3 x 1 day)
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]+")
EXEC_REFUSED = "\"'\\"   # characters systemd refuses in an executable path ("Executable name contains special characters")


@dataclass(frozen=True)
class ServiceSettings:
    """One station's unit. station: the station YAML (absolute). executable: the ``fair-edge`` program (absolute).
    user/group: the account it runs as (group None = the user's). working_dir: where relative paths of the
    station file resolve. environment: extra ``KEY=VALUE`` pairs. Seconds: watchdog_sec (no WATCHDOG=1 for that
    long = hung), restart_sec, timeout_start_sec (bundle load and backend warm-up), timeout_stop_sec (SIGTERM ->
    SIGKILL: the parts on the belt reach the gate, the log and summary.json are written; ``stop_timeout_sec``)."""

    station: Path
    executable: Path
    user: str
    working_dir: Path
    name: str = "fair-edge"
    group: str | None = None
    environment: tuple[str, ...] = ("PYTHONUNBUFFERED=1",)
    watchdog_sec: int = 30
    restart_sec: int = 5
    timeout_start_sec: int = 300
    timeout_stop_sec: int = STOP_SEC_DEFAULT   # install-service: stop_timeout_sec(the station)

    def __post_init__(self) -> None:
        for what, path in (("--station", self.station), ("the fair-edge executable", self.executable),
                           ("--working-dir", self.working_dir)):
            if not Path(path).is_absolute():
                raise ConfigError(f"{what} must be an absolute path in a unit file; found {path}.")
        _check_executable(self.executable)
        if not _UNIT_NAME.fullmatch(self.name):
            raise ConfigError(f"--name {self.name!r}: a unit name takes letters, digits and :_.-\\ only; e.g. fair-edge-line3.")
        for pair in self.environment:
            key = pair.split("=", 1)[0]
            if "=" not in pair or not _ENV_KEY.fullmatch(key):
                raise ConfigError(f"--env {pair!r}: expected KEY=VALUE with KEY of letters, digits and _ (e.g. OMP_NUM_THREADS=4).")
        for what, value in (("watchdog_sec", self.watchdog_sec), ("restart_sec", self.restart_sec),
                            ("timeout_start_sec", self.timeout_start_sec), ("timeout_stop_sec", self.timeout_stop_sec)):
            if value < 1:
                raise ConfigError(f"{what} must be >= 1 s; found {value}.")
            if value > MAX_SEC:
                raise ConfigError(f"{what} must be at most {MAX_SEC} s (a week); found {value}: a typo? Give seconds.")
        texts = [str(self.station), str(self.executable), str(self.working_dir), self.user, self.group or "",
                 *self.environment]
        if any("\n" in t or "\r" in t for t in texts):
            raise ConfigError("unit settings cannot contain line breaks; check --station, --env and --user.")

    @property
    def unit_name(self) -> str:
        """The unit file's name: ``name`` + ``.service`` (a ``--name`` that already ends in ``.service`` keeps one)."""
        return f"{unit_stem(self.name)}.service"


def unit_stem(name: str) -> str:
    """``name`` without a trailing ``.service``: ``--name line3.service`` is the unit line3.service, not
    line3.service.service."""
    return name[:-len(".service")] if name.endswith(".service") and name != ".service" else name


def belt_drain_ms(cfg: StationConfig) -> float:
    """How long, ms, a stopping station waits for the parts already on its belt (``finish_line``, ``finish_cell``):
    ``reject.delay_ms`` (encoder mode, ``reject.encoder_distance``: ``ENCODER_STOP_WAIT_S``, its bound at a stop, since
    a delay in counts has no time) + the widest pulse (``reject.pulse_ms``, or a sink URL's ``pulse_ms``, of
    ``reject.sinks`` and each camera's ``reject``) + ``reject.late_ms``. One reject timing serves all sinks and lanes."""
    reject = cfg.reject
    travel_ms = ENCODER_STOP_WAIT_S * 1000.0 if reject.encoder_distance is not None else reject.delay_ms
    urls = (*reject.sinks, *(url for view in cfg.cameras for url in view.reject))
    return travel_ms + max([reject.pulse_ms, *(_url_pulse_ms(url) for url in urls)]) + reject.late_ms


def _url_pulse_ms(url: str) -> float:
    """A sink URL's own ``pulse_ms`` option, ms; 0 when it sets none (the station's ``reject.pulse_ms`` then)."""
    from fair_edge.line.sinks.urls import parse_sink_url

    return parse_sink_url(url).get_float("pulse_ms", 0.0)


def stop_timeout_sec(cfg: StationConfig) -> int:
    """TimeoutStopSec= for the station ``cfg``, s: max(``STOP_SEC_MIN``, the belt's drain (``belt_drain_ms``)
    rounded up + ``STOP_MARGIN_S``), the line side's, + ``STOP_LOAD_SEC`` (32 s: the console's close waiting for a
    bundle that loads at the stop, held apart: ``StopDeadline.apart``), so that systemd's SIGKILL does not cut the
    drain, the log or summary.json: e.g. 92 for the default station, 133 for ``reject.delay_ms: 70000``; at most
    ``MAX_SEC`` (a sink URL's pulse_ms has no upper bound)."""
    line_s = max(STOP_SEC_MIN, math.ceil(belt_drain_ms(cfg) / 1000.0) + STOP_MARGIN_S)
    return min(MAX_SEC, line_s + STOP_LOAD_SEC)


def _check_executable(executable: Path) -> None:
    """ConfigError when systemd would refuse ``executable`` as ExecStart's program (a quote or a backslash in it:
    the unit would never start), naming the path and the fix."""
    refused = sorted({c for c in str(executable) if c in EXEC_REFUSED})
    if refused:
        found = " ".join(repr(c) for c in refused)
        raise ConfigError(f"the fair-edge executable {executable} contains {found}: systemd refuses an executable "
                          "path with a quote or a backslash (\"Executable name contains special characters\") and "
                          "the unit would never start. Install fair-edge (its venv) under a folder without them, or "
                          "link to it from one (ln -s ... /usr/local/bin/fair-edge) and pass --exec with the link.")


def absolute_path(path: Path | str, cwd: str | None = None) -> Path:
    """``path`` (``~`` expanded) made absolute against ``cwd`` (default ``logical_cwd()``) and normalised, its links
    kept: a unit naming ``/srv/current/station.yaml`` follows ``current`` when it is switched to a new release.
    A ``..`` after a link goes up from where the link points, as the system resolves it (``current/..`` is the
    folder above ``releases/v3``, not ``current``'s own folder); after any other name it drops that name."""
    joined = os.path.join(cwd or logical_cwd(), os.path.expanduser(str(path)))
    kept = os.sep
    for part in joined.split(os.sep):
        if part in ("", "."):
            continue
        if part == "..":
            kept = os.path.dirname(os.path.realpath(kept) if os.path.islink(kept) else kept)
        else:
            kept = os.path.join(kept, part)
    return Path(kept)


def logical_cwd() -> str:
    """The current folder as the shell names it: ``$PWD`` when it is absolute and is this folder (it keeps the links
    the user ``cd``-ed through, like ``pwd -L``), else the physical ``os.getcwd()``."""
    pwd = os.environ.get("PWD", "")
    try:
        if os.path.isabs(pwd) and os.path.normpath(pwd) == pwd and os.path.samefile(pwd, os.curdir):
            return pwd
    except OSError:   # $PWD names a folder that is gone
        pass
    return os.getcwd()


def _escape(text: str, dollar: bool) -> str:
    text = text.replace("%", "%%")
    return text.replace("$", "$$") if dollar else text


def quote_arg(arg: str, dollar: bool = True) -> str:
    """One ExecStart word: double-quoted (with \\\\ and \\" escaped) when it holds spaces, quotes or backslashes;
    ``%`` doubled, and ``$`` too unless ``dollar`` is False (the executable: systemd expands variables only in the
    arguments after it)."""
    arg = _escape(arg, dollar=dollar)
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment(pair: str) -> str:
    return '"' + _escape(pair, dollar=False).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(s: ServiceSettings) -> str:
    """The unit file text for ``s`` (see the module doc)."""
    arguments = ["run", "--station", str(s.station)]
    lines = [
        "# Written by `fair-edge install-service`; see docs/jetson.md.",
        "[Unit]",
        f"Description=fair-edge inspection station ({_escape(s.station.name, dollar=False)})",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=" + " ".join([quote_arg(str(s.executable), dollar=False), *(quote_arg(a) for a in arguments)]),
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={_escape(str(s.working_dir), dollar=False)}",
        f"User={s.user}",
        *([f"Group={s.group}"] if s.group else []),
        *([f"Environment={' '.join(_environment(p) for p in s.environment)}"] if s.environment else []),
        "Restart=always",
        f"RestartSec={s.restart_sec}",
        f"WatchdogSec={s.watchdog_sec}",
        f"TimeoutStartSec={s.timeout_start_sec}",
        f"TimeoutStopSec={s.timeout_stop_sec}",
        "KillSignal=SIGTERM",
        *HARDENING,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def default_executable() -> Path:
    """The ``fair-edge`` program of this installation: beside this Python (a venv's bin/), else on PATH; absolute,
    its links kept (``absolute_path``)."""
    beside = Path(sys.executable).parent / "fair-edge"
    if beside.is_file():
        return beside
    found = shutil.which("fair-edge")
    if found is None:
        raise ConfigError("cannot find the fair-edge program (not beside this Python, not on PATH); pass --exec "
                          "/path/to/fair-edge.")
    return absolute_path(found)


def default_user() -> str:
    """The account that asked: $SUDO_USER under sudo, else the current user."""
    import getpass

    return os.environ.get("SUDO_USER") or getpass.getuser()


def installer_homes() -> dict[str, Path]:
    """{account: its home folder} of the accounts installing: the current user (root under sudo) and $SUDO_USER, the
    homes a `~` typed for install-service can name (the shell expands it before sudo runs: `sudo fair-edge
    install-service --station ~/station.yaml` names the sudo user's home; after `sudo -i`, root's). A home of "/"
    (system accounts) is left out: every path is in it."""
    import pwd

    homes: dict[str, Path] = {}
    for lookup, key in ((pwd.getpwuid, os.getuid()), (pwd.getpwnam, os.environ.get("SUDO_USER"))):
        try:
            entry = lookup(key)
        except (KeyError, TypeError):   # a uid of no account (in a container), no $SUDO_USER
            continue
        if Path(entry.pw_dir) != Path("/"):
            homes[entry.pw_name] = Path(entry.pw_dir)
    return homes


def in_installer_home(user: str, given: dict[str, Path]) -> list[tuple[str, Path, str, Path]]:
    """(flag, path, account, its home) for each path of ``given`` ({flag: absolute path as given}) inside the home of
    an account installing (``installer_homes``) when the unit runs as another, --user ``user``, whose home is not that
    one: the unit then reads from another account's home, most often because a `~` was typed (under sudo too, the
    installer's home, never --user's)."""
    import pwd

    try:
        own = Path(pwd.getpwnam(user).pw_dir)
    except KeyError:   # not an account here: check_on_this_machine refuses it
        own = None
    return [(flag, path, name, home) for name, home in installer_homes().items() if name != user and home != own
            for flag, path in given.items() if home in path.parents]


def _exec_line(unit: Path) -> str:
    """The ExecStart= command of an installed unit, for the error that names it."""
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    return f"`{lines[0][len('ExecStart='):]}`" if lines else "no ExecStart="


def _unit_value(text: str, key: str) -> str | None:
    """The value of the first ``key=`` line of a unit's text, None when it has none."""
    line = next((line for line in text.splitlines() if line.startswith(f"{key}=")), None)
    return None if line is None else line[len(key) + 1:]


def _unquote(text: str) -> list[str] | None:
    """The arguments of an ExecStart= value, ``quote_arg`` undone (quotes, backslash escapes, ``%%``, ``$$``);
    None when it does not parse (unbalanced quotes)."""
    import shlex

    try:
        return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(text)]
    except ValueError:
        return None


def installed_station(text: str) -> Path | None:
    """The station file an installed unit's text runs (its ExecStart's ``--station FILE`` or ``--station=FILE``,
    relative to its WorkingDirectory= when relative), resolved; None when it names none (not a station's unit)."""
    args = _unquote(_unit_value(text, "ExecStart") or "") or []
    found = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--station"), None)
    found = found or next((a.split("=", 1)[1] for a in args if a.startswith("--station=")), None)
    if not found:
        return None
    workdir = (_unit_value(text, "WorkingDirectory") or "/").replace("%%", "%").lstrip("-")
    return (Path(workdir) / Path(found).expanduser()).resolve()


def _differing_lines(installed: str, text: str) -> str:
    """The lines of the installed unit (``-``) and of the new one (``+``) that differ, one per line, indented."""
    import difflib

    changed = [line for line in difflib.ndiff(installed.splitlines(), text.splitlines()) if line[:2] in ("- ", "+ ")]
    return "".join(f"\n  {line}" for line in changed)


def systemctl_commands(s: ServiceSettings, updated: bool = False) -> list[str]:
    """What to run after installing (printed, never run by fair-edge). updated: a unit of that name was there
    (``--force``): a running station keeps its old settings until restarted, so the restart is among them."""
    start = ([f"sudo systemctl enable {s.unit_name}", f"sudo systemctl restart {s.unit_name}"] if updated
             else [f"sudo systemctl enable --now {s.unit_name}"])
    return ["sudo systemctl daemon-reload", *start, f"systemctl status {s.unit_name}", f"journalctl -u {s.unit_name} -f"]


def check_replace(s: ServiceSettings, target: Path, text: str) -> None:
    """ConfigError when ``target`` holds a unit other than ``text``. This station's own unit (its ExecStart runs
    the same station file, resolved: e.g. written from an older venv, or with another --watchdog-sec) is named as
    such, with the differing lines and --force to update it; a second --name would run the same station twice (two
    processes on one camera and PLC). A unit of another station, or of none, is named by what it runs, with --name
    for this one or --force to replace it."""
    installed = target.read_text()
    if installed == text:
        return
    station = installed_station(installed)
    if station is not None and station == Path(s.station).resolve():
        raise ConfigError(
            f"{target} is already this station's unit (it runs {s.station}) with other settings; installing would "
            f"change these lines:{_differing_lines(installed, text)}\nTo update it, pass --force, then run `sudo "
            f"systemctl daemon-reload` and `sudo systemctl restart {s.unit_name}`. Do not give it another --name: that "
            "would be a second service running the same station file (two processes on one camera).")
    raise ConfigError(f"{target} already holds another unit (it runs {_exec_line(target)}); installing would replace "
                      f"it. Give this station its own --name (e.g. --name {unit_stem(s.name)}-2), or pass --force to replace it.")


def install_unit(s: ServiceSettings, unit_dir: Path = UNIT_DIR, replace: bool = False) -> Path:
    """Write the unit into ``unit_dir`` whole or not at all, 0644 (``disk.write_whole``: a temporary of its own, so
    two installs at once never share one, and an earlier unit stays whole until the new one is in place; a symlink
    under the unit's name is replaced, not written through); ConfigError naming the fix when it cannot, or when a
    different unit of that name is there unless ``replace`` (``--force``; ``check_replace``: this station's own
    unit with other settings, or another station's)."""
    target = Path(unit_dir) / s.unit_name
    text = render_unit(s)
    if not replace and target.is_file():
        check_replace(s, target, text)
    try:
        write_whole(target, text.encode("utf-8"), "unit file", mode=0o644, through_links=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot write {target}: {unit_dir} does not exist. Is this a systemd machine? "
                          "Use --print to see the unit.") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {_write_fix(exc, s, unit_dir)}") from exc
    return target


def _write_fix(exc: OSError, s: ServiceSettings, unit_dir: Path) -> str:
    """What went wrong writing the unit into ``unit_dir``, and the fix, by errno (the unit was not installed); a
    read-only, full or over-quota disk in the wording every writer uses (``disk.write_failure``)."""
    by_hand = f"use --print > {s.unit_name} and copy it there"
    if isinstance(exc, PermissionError):
        return f"{exc.strerror}. Run with sudo, or {by_hand}."
    if exc.errno == errno.EROFS:
        return (f"{write_failure(unit_dir, exc, None)} (`sudo mount -o remount,rw` on the file system holding it) "
                f"and install again, or {by_hand} by hand.")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{write_failure(unit_dir, exc, None)}, then install again."
    return f"{exc.strerror or exc}. Fix {unit_dir}, or {by_hand}."

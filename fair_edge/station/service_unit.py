"""A systemd unit that runs the station at boot, restarts it after a crash, and watches its inspection loop.

``render_unit(settings)`` writes the unit text for ``fair-edge run --station FILE``:
  Type=notify + NotifyAccess=main   the station says READY=1 once it inspects (``fair_edge.station.notify``);
  WatchdogSec=                      no WATCHDOG=1 from the inspection loop for that long -> killed (SIGABRT) and,
  Restart=always                    like any exit or crash, restarted after RestartSec (StartLimitIntervalSec=0:
                                    a line station keeps trying, e.g. while its camera is unplugged);
  ExecReload=kill -HUP $MAINPID     `systemctl reload` loads the bundle again without stopping capture;
  TimeoutStopSec=                   SIGTERM lets the parts on the belt reach the gate first: ``stop_timeout_sec``
                                    sizes it from the station's reject timing (a long belt needs more than 60 s).
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
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fair_edge.disk import discard_unfinished, write_failure
from fair_edge.errors import ConfigError
from fair_edge.line.settings import ENCODER_STOP_WAIT_S

if TYPE_CHECKING:
    from fair_edge.station.config import StationConfig

UNIT_DIR = Path("/etc/systemd/system")
STOP_SEC_MIN = 60        # TimeoutStopSec= at least, s: the default, for a station with a short belt or none
STOP_MARGIN_S = 30       # s added to the belt's drain: queued frames, the recorder's close (5 s of NG images), sinks
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
    timeout_stop_sec: int = STOP_SEC_MIN   # install-service: stop_timeout_sec(the station)

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


def check_on_this_machine(s: ServiceSettings, cfg: StationConfig | None) -> None:
    """ConfigError, naming the flag or field, what is there and the fix, when the unit ``s`` could never start on
    this machine (systemd would restart it every ``restart_sec`` forever): --working-dir not a folder, the
    executable missing, a folder or not executable, its ``#!`` interpreter missing (an ``env`` line's program on
    no folder of the unit's PATH: ``_interpreters``), --user / --group not an account here, a relative path of
    the station file ``cfg`` (bundle, roi, a camera's folder or video) not found from --working-dir, a file a
    bundle's manifest lists missing (``_check_bundle_files``), or any of these (and the station file) out of reach
    of the account the unit runs as (``--user``, checked as that account even under sudo: ``_check_reach``), or
    the station's output folders not writable (or, missing, not creatable) by it (``_check_output_folders``).
    --print skips this: its unit may be for another machine."""
    _check_working_dir(s.working_dir)
    _check_program(s.executable)
    account = _service_account(s.user, s.group)
    if cfg is not None:
        _check_station_paths(cfg, s.working_dir)
    _check_reach_of(account, s, cfg)


def _check_reach_of(account: Account, s: ServiceSettings, cfg: StationConfig | None) -> None:
    """ConfigError when ``account`` (the unit's --user) cannot enter --working-dir, run --exec (and the programs its
    ``#!`` line runs: ``_interpreters``), read --station, the station file's ``cfg`` paths that exist and the files
    its bundles list (``_check_bundle_files``), or write its output folders (``_check_output_folders``)."""
    _check_reach(s.working_dir, X, account, "--working-dir", "enter it (systemd: status=200/CHDIR)")
    _check_reach(s.executable, _program_needs(s.executable), account, "--exec", "run it (systemd: status=203/EXEC)")
    for interpreter in _interpreters(s):
        _check_reach(interpreter, X, account, f"--exec {s.executable} runs its #! interpreter",
                     "run it (systemd: status=203/EXEC)")
    _check_reach(s.station, R, account, "--station", "read it (`fair-edge run` exits 2)")
    if cfg is None:
        return
    for what, path in _station_paths(cfg):
        where = path if path.is_absolute() else s.working_dir / path
        if where.exists():
            _check_reach(where, R | X if where.is_dir() else R, account, f"{cfg.source_file}: {what}",
                         "read it (`fair-edge run` exits 2)")
    _check_bundle_files(account, s, cfg)
    _check_output_folders(account, s, cfg)


def _check_working_dir(folder: Path) -> None:
    if not folder.exists():
        raise ConfigError(f"--working-dir {folder} does not exist: the unit could never start (systemd: \"Changing "
                          "to the requested working directory failed\") and would restart forever. Create it, or "
                          "pass the folder the station file's relative paths start from.")
    if not folder.is_dir():
        raise ConfigError(f"--working-dir {folder} is a file, not a folder: the unit could never start. Pass the "
                          f"folder the station file's relative paths start from (e.g. {folder.parent}).")


def _check_program(executable: Path) -> None:
    fix = "Pass --exec with the fair-edge program (e.g. /opt/venv/bin/fair-edge; `which fair-edge` names it)."
    if not executable.exists():
        raise ConfigError(f"the fair-edge executable {executable} (--exec) does not exist: the unit could never "
                          f"start. {fix}")
    if executable.is_dir():
        raise ConfigError(f"the fair-edge executable {executable} (--exec) is a folder, not a program: the unit "
                          f"could never start. {fix}")
    if not os.stat(executable).st_mode & 0o111:   # for nobody; who may run it: _check_reach, as --user
        raise ConfigError(f"the fair-edge executable {executable} (--exec) is not executable: the unit could never "
                          f"start. `chmod +x {executable}`, or {fix[0].lower()}{fix[1:]}")


R, W, X = 4, 2, 1   # permission bits asked of the service account: read, write, execute / enter a folder
# systemd's PATH for a service whose unit sets none (systemd.exec(5); /sbin:/bin are links into /usr on a merged-/usr
# system and on PATH in a split-/usr build): where a ``#!/usr/bin/env NAME`` line's NAME is looked for
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Account:
    """The account a unit runs as, as systemd sets it up: ``name``, ``uid``, and ``gids``: Group= (or the user's
    own group) plus the user's supplementary groups (systemd calls initgroups)."""

    name: str
    uid: int
    gids: frozenset[int]


def _service_account(user: str, group: str | None) -> Account:
    """The ``Account`` of --user / --group; ConfigError naming the fix when either is not an account here."""
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user {user}: no such account on this machine; the unit could never start. Create it "
                          f"(`sudo useradd --system --groups video {user}`) or pass an existing one.") from None
    gids = {entry.pw_gid, *os.getgrouplist(user, entry.pw_gid)}
    if group is not None:
        try:
            gids.add(grp.getgrnam(group).gr_gid)
        except KeyError:
            raise ConfigError(f"--group {group}: no such group on this machine; the unit could never start. Create "
                              f"it (`sudo groupadd {group}`), pass an existing one, or leave out --group (the "
                              "user's).") from None
    return Account(user, entry.pw_uid, frozenset(gids))


def _program_needs(executable: Path) -> int:
    """The bits the service account needs on ``executable``: X for a binary, R | X for a script (``#!``: its
    interpreter reads it)."""
    return R | X if _shebang(executable) is not None else X


def _shebang(executable: Path) -> tuple[str, str] | None:
    """``executable``'s ``#!`` line as the kernel splits it: (the interpreter, up to the first blank; the rest of
    the line, stripped, handed to it as one argument, "" for none). None for a binary, a file without an interpreter
    on its ``#!`` line or one that cannot be read here."""
    try:
        with open(executable, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = os.fsdecode(head[2:].split(b"\n", 1)[0]).strip().split(None, 1)
    return (words[0], words[1].strip() if len(words) > 1 else "") if words else None


def _interpreters(s: ServiceSettings) -> list[Path]:
    """The programs the ``#!`` line of ``s.executable`` runs, for the service account to run: [its interpreter] (a
    venv's ``fair-edge`` names its python) and, for an ``env`` line (``#!/usr/bin/env bash``), the program env runs,
    as found on the unit's PATH (``_env_program``, ``_on_unit_path``); [] for a binary, a file that cannot be read
    here or a relative interpreter. ConfigError naming the ``#!`` line and the fix when the interpreter is missing
    (systemd: status=203/EXEC) or env's program is not found (env exits 127), at every start."""
    line = _shebang(s.executable)
    if line is None or not os.path.isabs(line[0]):
        return []
    interpreter, argument = Path(line[0]), line[1]
    shown = f"#!{line[0]}{' ' + argument if argument else ''}"
    if not interpreter.exists():
        raise ConfigError(f"--exec {s.executable}: its #! line `{shown}` names {interpreter}, which does not exist: "
                          "the unit could never start (systemd: status=203/EXEC) and would restart forever. Install "
                          "that interpreter, or reinstall fair-edge with one that exists (a venv's bin/fair-edge "
                          "names the venv's python; a venv moved or rebuilt elsewhere names a missing one).")
    program = _env_program(argument) if interpreter.name == "env" else None
    return [interpreter] if program is None else [interpreter, _on_unit_path(program, shown, s)]


def _env_program(argument: str) -> str | None:
    """The program ``env`` runs for the argument of a ``#!/usr/bin/env ...`` line: the whole argument (the kernel
    hands env the rest of the line as one word, which env runs as a program name, blanks included: ``#!/usr/bin/env
    bash -e`` runs a program named "bash -e"), or with ``-S`` (``--split-string``) its first word that is not one of
    env's options or a NAME=VALUE setting. None when it names none (``#!/usr/bin/env -i``)."""
    if argument.startswith(("-S", "--split-string")):
        words = (argument[2:] if argument.startswith("-S") else argument.partition("=")[2]).split()
    else:
        words = [argument] if argument else []
    takes_value = False
    for word in words:
        if takes_value or word.startswith("-") or "=" in word:
            takes_value = word in ("-u", "--unset", "-C", "--chdir") and not takes_value
            continue
        return word
    return None


def _unit_path(environment: tuple[str, ...]) -> list[str]:
    """The folders of the unit's PATH: an --env PATH=... (the last, as systemd takes it; its absolute folders: systemd
    expands no $PATH in it), else systemd's default ``UNIT_PATH``."""
    given = [pair.split("=", 1)[1] for pair in environment if pair.startswith("PATH=")]
    return [folder for folder in (given[-1] if given else UNIT_PATH).split(":") if os.path.isabs(folder)]


def _on_unit_path(program: str, shown: str, s: ServiceSettings) -> Path:
    """Where env finds ``program`` (a name of the ``#!`` line ``shown`` of ``s.executable``) when the unit runs it:
    the first folder of the unit's PATH (``_unit_path``) holding it as an executable file, or the path itself when
    it holds a '/' (relative to --working-dir). ConfigError naming the line, the PATH and the fix when none does."""
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else s.working_dir / program
        if path.exists():
            return path
        found_in = f"{path} does not exist"
    else:
        folders = _unit_path(s.environment)
        for folder in folders:
            candidate = Path(folder) / program
            if candidate.is_file() and os.stat(candidate).st_mode & 0o111:
                return candidate
        found_in = f"no folder of the unit's PATH ({':'.join(folders)}) holds a program of that name"
    one_word = (" (the kernel hands env the rest of the #! line as one program name, blanks included: write "
                "`#!/usr/bin/env -S ...` to split it)" if " " in program else "")
    here = shutil.which(program.split()[0]) if program.split() else None
    example = f" (e.g. #!{here})" if here else ""
    raise ConfigError(f"--exec {s.executable}: its #! line `{shown}` has env run `{program}`{one_word}, but "
                      f"{found_in}: the unit could never start (env exits 127) and would restart forever. Write the "
                      f"interpreter's absolute path in the #! line{example}, or pass --env PATH=FOLDERS with the "
                      "folder that holds it.")


def _check_reach(path: Path, need: int, account: Account, what: str, doing: str, fix: str | None = None) -> None:
    """ConfigError when ``account`` cannot ``need`` (R / W / X bits) ``path`` (``_reach_problem``). ``what``: the
    flag or field that names it; ``doing``: what the station would fail to do at each start; ``fix``: the last
    sentence, when not the ``chmod`` that lets the account in (``_reach_error``)."""
    problem = _reach_problem(path, need, account)
    if problem is not None:
        raise _reach_error(what, path, account, doing, *problem, fix=fix)


def _reach_problem(path: Path, need: int, account: Account) -> tuple[Path, int] | None:
    """(where ``account`` is stopped, the bits of ``need`` it lacks there) on its way to ``need`` (R / W / X bits)
    ``path``: a folder on the way to it (the path's and, through links, the real one's) it may not enter (X), or
    the path itself; None when it can. As the current user (not root): ``os.access``; for another account (root
    installing for ``--user``): the mode bits against its uid and groups (``_blocked``), so a venv in a 0700 home
    is refused before systemd fails it forever."""
    if account.uid == os.getuid():
        flags = (os.R_OK if need & R else 0) | (os.W_OK if need & W else 0) | (os.X_OK if need & X else 0)
        if os.access(path, flags):
            return None
        return _blocked(path, need, account) or (path, need)
    return _blocked(path, need, account)


def _reach_error(what: str, path: Path, account: Account, doing: str, spot: Path, lacking: int,
                 fix: str | None = None, where: str | None = None) -> ConfigError:
    """The refusal of ``what`` ``path`` that ``account`` cannot reach for ``doing``: ``spot`` (``where``: how the
    message names it, by default "it" or "a folder on the way to it") lacks the bits ``lacking``. ``fix``: the
    last sentence (default: the ``chmod`` that lets the account in, or moving the path)."""
    letters = _letters(lacking)
    where = where or ("it" if spot == path else f"{spot}, a folder on the way to it,")
    fix = fix or (f"Let {account.name} in (`sudo chmod o+{letters} {spot}`, or g+{letters} with a group "
                  f"{account.name} is in), or move it where {account.name} can reach it (e.g. under /opt/fair-edge) "
                  "and install again.")
    return ConfigError(
        f"{what} {path}: --user {account.name} cannot {doing}: {where} is {_described(spot)}, without the "
        f"'{letters}' permission for {account.name}; the unit could never start and would restart forever. {fix}")


def _blocked(path: Path, need: int, account: Account) -> tuple[Path, int] | None:
    """(the first of ``path``'s folders, links followed, that ``account`` may not enter, X) or (``path``, the bits of
    ``need`` it lacks there); None when it can reach it. A path with a POSIX ACL (which the mode bits do not tell)
    or that cannot be examined here is taken as reachable."""
    real = Path(os.path.realpath(path))
    for folder in dict.fromkeys([*reversed(path.parents), *reversed(real.parents)]):
        if _lacking(folder, X, account):
            return folder, X
    lacking = _lacking(path, need, account)
    return (path, lacking) if lacking else None


def _lacking(path: Path, need: int, account: Account) -> int:
    """The bits of ``need`` (R / W / X) that the mode bits of ``path`` (links followed) deny ``account``, 0 for none,
    as the kernel decides: the owner's bits for its owner, else the group's for a member of its group, else the
    others'. Root may do anything but run a file without an x bit. 0 when ``path`` cannot be examined or has an
    ACL."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    if _has_acl(path):
        return 0
    if account.uid == 0:
        return X if need & X and not stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o111 else 0
    if st.st_uid == account.uid:
        granted = st.st_mode >> 6
    elif st.st_gid in account.gids:
        granted = st.st_mode >> 3
    else:
        granted = st.st_mode
    return need & ~granted & (R | W | X)


def _has_acl(path: Path) -> bool:
    """Whether ``path`` carries a POSIX access ACL (then its mode bits do not tell who may reach it)."""
    try:
        os.getxattr(path, "system.posix_acl_access")
    except (OSError, AttributeError):   # no ACL, no xattr support, or no os.getxattr (not Linux)
        return False
    return True


def _letters(need: int) -> str:
    """``need`` as chmod letters: 'r', 'w', 'x', 'rx', 'wx', ..."""
    return ("r" if need & R else "") + ("w" if need & W else "") + ("x" if need & X else "")


def _described(path: Path) -> str:
    """``path``'s mode and owner as ``ls -l`` shows them, e.g. ``drwx------ alice:alice``."""
    import grp
    import pwd

    st = os.stat(path)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{stat.filemode(st.st_mode)} {owner}:{group}"


def _station_paths(cfg: StationConfig) -> list[tuple[str, Path]]:
    """(field, path) of the station file's paths read at start: bundle, decision.roi, camera.source and each
    ``cameras[i]``'s source / bundle / roi, where the source is a folder or video (not an index, device, URL or
    ``KIND:`` spec)."""
    found = [("bundle", cfg.bundle), ("decision.roi", cfg.roi)]
    if not cfg.cameras:
        found.append(("camera.source", _source_path(cfg.camera.source)))
    for i, view in enumerate(cfg.cameras):
        found += [(f"cameras[{i}].source", _source_path(view.source)), (f"cameras[{i}].bundle", view.bundle),
                  (f"cameras[{i}].roi", view.roi)]
    return [(what, Path(path)) for what, path in found if path is not None]


def _source_path(source: str) -> str | None:
    """A camera source that names a folder or a video file; None for an index, /dev/..., a URL, a pipeline or a
    ``KIND:`` spec."""
    text = source.strip()
    if not text or text.isdigit() or text.startswith("/dev/") or "!" in text or re.match(r"^[A-Za-z][\w+.-]*:", text):
        return None
    return text


def _check_station_paths(cfg: StationConfig, working_dir: Path) -> None:
    """ConfigError for the first relative path of the station file missing from ``working_dir`` (where the unit
    runs it): `fair-edge run` would fail at each start."""
    for what, path in _station_paths(cfg):
        if path.is_absolute() or (working_dir / path).exists():
            continue
        raise ConfigError(f"{cfg.source_file}: {what}: {path} is not found from --working-dir {working_dir} (no "
                          f"{working_dir / path}), where the unit runs the station; it could never start. Pass "
                          "--working-dir with the folder it is relative to, or make the path absolute in the station "
                          "file.")


READ_AT_START = "read it (`fair-edge run` refuses the bundle: exits 2)"   # what a bundle file unread stops


def _check_bundle_files(account: Account, s: ServiceSettings, cfg: StationConfig) -> None:
    """ConfigError when a file that a bundle folder of the station file ``cfg`` (``bundle``, ``cameras[i].bundle``)
    lists in its manifests (``_bundle_listings``) is missing, or ``account`` cannot read it or a manifest: the
    station would refuse the bundle at every start. The error names the file, the account and the fix."""
    for what, path in _station_paths(cfg):
        root = path if path.is_absolute() else s.working_dir / path
        if not what.endswith("bundle") or not root.is_dir():
            continue
        fix = (f"Let {account.name} read the whole bundle: `sudo chown -R {_owner(s)} {root}`, or `sudo chmod -R "
               f"a+rX {root}`, and install again.")
        field = f"{cfg.source_file}: {what}:"
        for manifest, names in _bundle_listings(root, account, field, fix):
            for name in names:
                _check_bundle_file(manifest.parent / name, manifest, root, account, field, fix)


def _bundle_listings(root: Path, account: Account, field: str, fix: str) -> list[tuple[Path, list[str]]]:
    """(manifest, the relative names of the files it lists) for each manifest the station reads in the bundle
    folder ``root``: its bundle.json (``files``), or a fused bundle's fusion.json (each member's bundle.json, from
    ``members[].path``) and each member's bundle.json; [] for a folder holding neither (the bundle loader names it
    at start). Each manifest is checked readable by ``account`` first (``_check_reach``, ``field`` and ``fix`` for
    the message)."""
    from fair_edge.export.bundle import FUSION_MANIFEST, MANIFEST

    if (root / FUSION_MANIFEST).is_file():
        _check_reach(root / FUSION_MANIFEST, R, account, f"{field} the fused bundle's manifest", READ_AT_START, fix)
        members = [e.get("path") for e in _manifest_entries(root / FUSION_MANIFEST, "members", list)
                   if isinstance(e, dict)]
        members = [m for m in members if _plain_name(m)]
        nested = [x for m in members for x in _bundle_listings(root / m, account, field, fix)]
        return [(root / FUSION_MANIFEST, [f"{m}/{MANIFEST}" for m in members]), *nested]
    if not (root / MANIFEST).is_file():
        return []
    _check_reach(root / MANIFEST, R, account, f"{field} the bundle's manifest", READ_AT_START, fix)
    return [(root / MANIFEST, [n for n in _manifest_entries(root / MANIFEST, "files", dict) if _plain_name(n)])]


def _manifest_entries(manifest: Path, key: str, kind: type) -> list | dict:
    """The ``key`` entry (a ``kind``: list or dict) of the JSON file ``manifest``; empty when it cannot be read
    here (another account's file: its reach was checked by the mode bits). ConfigError naming the file and the fix
    when it is no JSON object with that entry (the station refuses such a bundle at every start)."""
    import json

    try:
        data = json.loads(manifest.read_bytes())
    except OSError:
        return kind()
    except ValueError as exc:   # not UTF-8, not JSON
        raise _damaged_manifest(manifest, key, f"no JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise _damaged_manifest(manifest, key, f"no {key!r} {kind.__name__} in it")
    return data[key]


def _damaged_manifest(manifest: Path, key: str, found: str) -> ConfigError:
    return ConfigError(f"{manifest}: expected a bundle manifest listing its {key!r}; found {found}: `fair-edge run` "
                       "would refuse the bundle at every start and the unit would restart forever. Copy the whole "
                       "bundle folder again, or rebuild it (`fair-edge build`, or `fair-edge fuse` for a fused one).")


def _plain_name(name: object) -> bool:
    """Whether a manifest's file or member ``name`` is a relative path without '..' (the bundle loader refuses any
    other, naming it, at start: ``export.bundle.inside_folder``)."""
    return isinstance(name, str) and bool(name) and not os.path.isabs(name) and ".." not in Path(name).parts


def _check_bundle_file(path: Path, manifest: Path, root: Path, account: Account, field: str, fix: str) -> None:
    """ConfigError when the file ``path`` that ``manifest`` lists is missing (the fix: copy the bundle again or
    rebuild it) or ``account`` cannot read it or enter its folder (``fix``: the chown / chmod of the bundle folder
    ``root``)."""
    on_the_way = _reach_problem(path.parent, X, account)   # first: a file in a folder it cannot enter is not "missing"
    if on_the_way is not None:
        spot, lacking = on_the_way
        raise _reach_error(f"{field} bundle file", path, account, READ_AT_START, spot, lacking, fix,
                           where=f"{spot}, a folder on the way to it,")
    if not path.exists():
        raise ConfigError(f"{field} bundle file {path} is missing ({manifest} lists it): `fair-edge run` would refuse "
                          f"the bundle at every start and the unit would restart forever. Copy the whole bundle folder "
                          f"to {root} again (`sudo rsync -a --delete BUNDLE/ {root}/`, then `sudo chmod -R a+rX "
                          f"{root}`), or rebuild it (`fair-edge build`, or `fair-edge fuse` for a fused one).")
    _check_reach(path, R, account, f"{field} bundle file", READ_AT_START, fix)


def _owner(s: ServiceSettings) -> str:
    """``USER:GROUP`` for ``chown``: --group, or ``USER:`` (chown gives the user's own group)."""
    return f"{s.user}:{s.group or ''}"


def _output_folders(cfg: StationConfig, working_dir: Path) -> list[tuple[str, Path]]:
    """(field, absolute folder) of each folder the station writes at start: ``output`` (its run lock,
    summary.json, the console's journals) and ``record.dir`` where it is elsewhere (the verdict log, ``ng/``
    images); relative ones from ``working_dir``, where the unit runs it."""
    found: dict[str, tuple[str, Path]] = {}
    for what, folder in (("output", Path(cfg.output)), ("record.dir", Path(cfg.record.dir))):
        where = Path(os.path.normpath(folder if folder.is_absolute() else working_dir / folder))
        found.setdefault(os.path.realpath(where), (what, where))
    return list(found.values())


def _check_output_folders(account: Account, s: ServiceSettings, cfg: StationConfig) -> None:
    """ConfigError when ``account`` cannot write an output folder of the station (``_output_folders``), or, where
    it is missing, create it in the nearest folder that exists (the station makes it at start): the station would
    fail at every start. The error names the folder, the account and the fix (``sudo install -d`` for a missing
    one, ``sudo chown -R`` for one it cannot write)."""
    for what, folder in _output_folders(cfg, s.working_dir):
        existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
        field = f"{cfg.source_file}: {what}"
        if not existing.is_dir():
            raise ConfigError(f"{field} {folder}: {existing} is not a folder, so the station cannot write there and "
                              f"the unit would restart forever. Set {what} in the station file to a folder, or move "
                              f"{existing} away, and install again.")
        if _read_only(existing):
            raise ConfigError(f"{field} {folder}: {existing} is on a read-only file system, so the station cannot "
                              f"write there and the unit would restart forever. Set {what} in the station file to a "
                              "folder on a writable disk, or mount that one read-write, and install again.")
        problem = _reach_problem(existing, W | X, account)
        if problem is None:
            continue
        spot, lacking = problem
        made = existing != folder
        doing = ("create it" if made else "write it") + (" (the station writes its run lock, verdict log, NG images "
                                                         "and summary.json there)")
        where = f"{spot}, the folder it would be made in," if made and spot == existing else None
        fix = _output_fix(folder, made, what, account, s) if spot == existing and lacking & W else None
        raise _reach_error(field, folder, account, doing, spot, lacking, fix=fix, where=where)


def _read_only(folder: Path) -> bool:
    """Whether ``folder`` is on a file system mounted read-only (no account may write it); False when that cannot
    be told here."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):   # AttributeError: no statvfs (not POSIX)
        return False


def _output_fix(folder: Path, made: bool, what: str, account: Account, s: ServiceSettings) -> str:
    """How to give ``account`` the output folder ``folder`` (the station file's field ``what``): make it for the
    account (``made``: it is missing), or hand it over (with rwx for its owner where it lacks them)."""
    if made:
        group = f" -g {s.group}" if s.group else ""
        command = f"`sudo install -d -o {account.name}{group} {folder}`"
    else:
        owner_bits = os.stat(folder).st_mode & 0o700 == 0o700
        command = f"`sudo chown -R {_owner(s)} {folder}`" + ("" if owner_bits else f" and `sudo chmod u+rwx {folder}`")
    return (f"Give it to {account.name} ({command}), or set {what} in the station file to a folder {account.name} "
            "can write, and install again.")


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
    rounded up + ``STOP_MARGIN_S``), so that systemd's SIGKILL does not cut the drain: e.g. 60 for the default
    station, 101 for ``reject.delay_ms: 70000``; at most ``MAX_SEC`` (a sink URL's pulse_ms has no upper bound)."""
    return min(MAX_SEC, max(STOP_SEC_MIN, math.ceil(belt_drain_ms(cfg) / 1000.0) + STOP_MARGIN_S))


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
    """Write the unit into ``unit_dir`` atomically (0644); ConfigError naming the fix when it cannot, or when a
    different unit of that name is there unless ``replace`` (``--force``; ``check_replace``: this station's own
    unit with other settings, or another station's)."""
    target = Path(unit_dir) / s.unit_name
    text = render_unit(s)
    if not replace and target.is_file():
        check_replace(s, target, text)
    tmp = target.with_name(f".{s.unit_name}.tmp")
    try:
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot write {target}: {unit_dir} does not exist. Is this a systemd machine? "
                          "Use --print to see the unit.") from exc
    except OSError as exc:
        _discard(tmp)
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


def _discard(tmp: Path) -> None:
    """Remove a half-written unit file (``disk.discard_unfinished``: nothing to do where it was never made, a
    warning naming one that cannot be removed)."""
    discard_unfinished(tmp, "unit file")

"""What ``fair-edge install-service`` checks on this machine before it writes a unit, as the account the unit runs
as: that the unit could start at all (``check_on_this_machine``), not be restarted by systemd every few seconds
forever.

--working-dir a folder; --exec a program that exists and can run, with its ``#!`` interpreter (and, for
``#!/usr/bin/env NAME``, NAME on the unit's PATH); --user / --group accounts here; the station file's relative paths
found from --working-dir; every file a bundle's manifest lists present; and all of these (and the station file)
readable, enterable or runnable by --user, and the station's output folders writable or creatable by it, with the
files and folders the station appends to or writes in there already (another account's, left by a trial run)
readable and writable by it, and in a sticky folder those it renames, moves or deletes (summary.json, the logs and
their rotated files) its own. Reach is judged as that account, also under sudo (``service_reach.reach_problem``). Each
refusal is a ConfigError naming the flag or field,
what is there, the account and the fix (the ``chmod`` / ``chown`` / ``install -d`` that lets it in). The unit
itself is written by ``fair_edge.station.service_unit``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from fair_edge.disk import read_only_mount
from fair_edge.errors import ConfigError
from fair_edge.station.service_reach import (R, W, X, Account, check_reach, described, letters, reach_error,
                                             reach_problem, service_account, sticky_keeps)

if TYPE_CHECKING:
    from fair_edge.station.config import StationConfig
    from fair_edge.station.service_unit import ServiceSettings


def check_on_this_machine(s: ServiceSettings, cfg: StationConfig | None) -> None:
    """ConfigError, naming the flag or field, what is there and the fix, when the unit ``s`` could never start on
    this machine (systemd would restart it every ``restart_sec`` forever): --working-dir not a folder, the
    executable missing, a folder or not executable, its ``#!`` interpreter missing (an ``env`` line's program on
    no folder of the unit's PATH: ``_interpreters``), --user / --group not an account here, a relative path of
    the station file ``cfg`` (bundle, roi, a camera's folder or video, a zone mask) not found from --working-dir, a
    file a bundle's manifest lists missing (``_check_bundle_files``), or any of these (and the station file) out of
    reach of the account the unit runs as (``--user``, checked as that account even under sudo: ``check_reach``),
    or the station's output folders not writable (or, missing, not creatable) by it (``_check_output_folders``),
    or a file or folder the station appends to or writes in there out of its reach (``_check_output_leftovers``).
    --print skips this: its unit may be for another machine."""
    _check_working_dir(s.working_dir)
    _check_program(s.executable)
    account = service_account(s.user, s.group)
    if cfg is not None:
        _check_station_paths(cfg, s.working_dir)
    _check_reach_of(account, s, cfg)


def _check_reach_of(account: Account, s: ServiceSettings, cfg: StationConfig | None) -> None:
    """ConfigError when ``account`` (the unit's --user) cannot enter --working-dir, run --exec (and the programs its
    ``#!`` line runs: ``_interpreters``), read --station, the station file's ``cfg`` paths that exist and the files
    its bundles list (``_check_bundle_files``), or write its output folders (``_check_output_folders``)."""
    check_reach(s.working_dir, X, account, "--working-dir", "enter it (systemd: status=200/CHDIR)")
    check_reach(s.executable, _program_needs(s.executable), account, "--exec", "run it (systemd: status=203/EXEC)")
    for interpreter in _interpreters(s):
        check_reach(interpreter, X, account, f"--exec {s.executable} runs its #! interpreter",
                     "run it (systemd: status=203/EXEC)")
    check_reach(s.station, R, account, "--station", "read it (`fair-edge run` exits 2)")
    if cfg is None:
        return
    for what, path in _station_paths(cfg):
        where = path if path.is_absolute() else s.working_dir / path
        if where.exists():
            check_reach(where, R | X if where.is_dir() else R, account, f"{cfg.source_file}: {what}",
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
    if not os.stat(executable).st_mode & 0o111:   # for nobody; who may run it: check_reach, as --user
        raise ConfigError(f"the fair-edge executable {executable} (--exec) is not executable: the unit could never "
                          f"start. `chmod +x {executable}`, or {fix[0].lower()}{fix[1:]}")


# systemd's PATH for a service whose unit sets none (systemd.exec(5); /sbin:/bin are links into /usr on a merged-/usr
# system and on PATH in a split-/usr build): where a ``#!/usr/bin/env NAME`` line's NAME is looked for
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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


def _station_paths(cfg: StationConfig) -> list[tuple[str, Path]]:
    """(field, path) of the station file's paths read at start: bundle, decision.roi, camera.source, each
    ``cameras[i]``'s source / bundle / roi, where the source is a folder or video (not an index, device, URL or
    ``KIND:`` spec), and the zone masks (``zone_masks``)."""
    found = [("bundle", cfg.bundle), ("decision.roi", cfg.roi)]
    if not cfg.cameras:
        found.append(("camera.source", _source_path(cfg.camera.source)))
    for i, view in enumerate(cfg.cameras):
        found += [(f"cameras[{i}].source", _source_path(view.source)), (f"cameras[{i}].bundle", view.bundle),
                  (f"cameras[{i}].roi", view.roi)]
    return [(what, Path(path)) for what, path in [*found, *zone_masks(cfg)] if path is not None]


def zone_masks(cfg: StationConfig) -> list[tuple[str, Path]]:
    """(field, path) of each zone mask image the station reads at start (and at each SIGHUP reload):
    ``regions.zones[j].mask`` and ``cameras[i].regions.zones[j].mask``; a camera's zones taken from the station's
    ``regions:`` (the same files) are named once, as the station's."""
    found = [(f"regions.zones[{j}].mask", zone.mask) for j, zone in enumerate(cfg.regions.zones)]
    for i, view in enumerate(cfg.cameras):
        zones = view.regions.zones if view.regions is not None else ()
        found += [(f"cameras[{i}].regions.zones[{j}].mask", zone.mask) for j, zone in enumerate(zones)]
    named: dict[Path, str] = {}
    for what, path in found:
        if path is not None:
            named.setdefault(path, what)
    return [(what, path) for path, what in named.items()]


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
    at start). Each manifest is checked readable by ``account`` first (``check_reach``, ``field`` and ``fix`` for
    the message)."""
    from fair_edge.export.bundle import FUSION_MANIFEST, MANIFEST

    if (root / FUSION_MANIFEST).is_file():
        check_reach(root / FUSION_MANIFEST, R, account, f"{field} the fused bundle's manifest", READ_AT_START, fix)
        members = [e.get("path") for e in _manifest_entries(root / FUSION_MANIFEST, "members", list)
                   if isinstance(e, dict)]
        members = [m for m in members if _plain_name(m)]
        nested = [x for m in members for x in _bundle_listings(root / m, account, field, fix)]
        return [(root / FUSION_MANIFEST, [f"{m}/{MANIFEST}" for m in members]), *nested]
    if not (root / MANIFEST).is_file():
        return []
    check_reach(root / MANIFEST, R, account, f"{field} the bundle's manifest", READ_AT_START, fix)
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
    on_the_way = reach_problem(path.parent, X, account)   # first: a file in a folder it cannot enter is not "missing"
    if on_the_way is not None:
        spot, lacking = on_the_way
        raise reach_error(f"{field} bundle file", path, account, READ_AT_START, spot, lacking, fix,
                           where=f"{spot}, a folder on the way to it,")
    if not path.exists():
        raise ConfigError(f"{field} bundle file {path} is missing ({manifest} lists it): `fair-edge run` would refuse "
                          f"the bundle at every start and the unit would restart forever. Copy the whole bundle folder "
                          f"to {root} again (`sudo rsync -a --delete BUNDLE/ {root}/`, then `sudo chmod -R a+rX "
                          f"{root}`), or rebuild it (`fair-edge build`, or `fair-edge fuse` for a fused one).")
    check_reach(path, R, account, f"{field} bundle file", READ_AT_START, fix)


def _owner(s: ServiceSettings) -> str:
    """``USER:GROUP`` for ``chown``: --group, or ``USER:`` (chown gives the user's own group)."""
    return f"{s.user}:{s.group or ''}"


def _output_folders(cfg: StationConfig, working_dir: Path) -> list[tuple[str, Path, tuple[str, ...]]]:
    """(field, absolute folder, the names the station writes in it) of each folder the station writes at start:
    ``output`` (its run lock, summary.json, the console's journals: ``locks.OUTPUT_WRITES``) and ``record.dir``
    where it is elsewhere (the verdict log, ``ng/`` images: ``locks.RECORD_WRITES``, and the logs' rotated files its
    ``keep_files`` keeps: ``row_logs.rotation_names``; both lists when it is the same folder); relative ones from
    ``working_dir``, where the unit runs it."""
    from fair_edge.station.locks import OUTPUT_WRITES, RECORD_WRITES

    found: dict[str, tuple[str, Path, tuple[str, ...]]] = {}
    for what, folder, names in (("output", Path(cfg.output), OUTPUT_WRITES),
                                ("record.dir", Path(cfg.record.dir), RECORD_WRITES + _rotated_files(cfg))):
        where = Path(os.path.normpath(folder if folder.is_absolute() else working_dir / folder))
        first_what, first_where, first_names = found.get(os.path.realpath(where), (what, where, ()))
        found[os.path.realpath(where)] = (first_what, first_where, tuple(dict.fromkeys((*first_names, *names))))
    return list(found.values())


def _check_output_folders(account: Account, s: ServiceSettings, cfg: StationConfig) -> None:
    """ConfigError when ``account`` cannot write an output folder of the station (``_output_folders``), or, where
    it is missing, create it in the nearest folder that exists (the station makes it at start): the station would
    fail at every start. The error names the folder, the account and the fix (``sudo install -d`` for a missing
    one, ``sudo chown -R`` for one it cannot write)."""
    for what, folder, names in _output_folders(cfg, s.working_dir):
        existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
        field = f"{cfg.source_file}: {what}"
        if not existing.is_dir():
            raise ConfigError(f"{field} {folder}: {existing} is not a folder, so the station cannot write there and "
                              f"the unit would restart forever. Set {what} in the station file to a folder, or move "
                              f"{existing} away, and install again.")
        if read_only_mount(existing):
            raise ConfigError(f"{field} {folder}: {existing} is on a read-only file system, so the station cannot "
                              f"write there and the unit would restart forever. Set {what} in the station file to a "
                              "folder on a writable disk, or mount that one read-write, and install again.")
        problem = reach_problem(existing, W | X, account)
        if problem is None:
            _check_output_leftovers(account, s, field, folder, names, _rotated_files(cfg))
            continue
        spot, lacking = problem
        made = existing != folder
        doing = ("create it" if made else "write it") + (" (the station writes its run lock, verdict log, NG images "
                                                         "and summary.json there)")
        where = f"{spot}, the folder it would be made in," if made and spot == existing else None
        fix = _output_fix(folder, made, what, account, s) if spot == existing and lacking & W else None
        raise reach_error(field, folder, account, doing, spot, lacking, fix=fix, where=where)


def _rotated_files(cfg: StationConfig) -> tuple[str, ...]:
    """The names of the rotated logs the station's logs keep in record.dir (``row_logs.rotation_names``: ``.1`` ..
    ``.keep_files`` of verdicts.jsonl and gate.jsonl), which their rotation moves or deletes."""
    from fair_edge.line.row_logs import rotation_names

    return rotation_names(cfg.record.keep_files)


def _check_output_leftovers(account: Account, s: ServiceSettings, field: str, folder: Path,
                            names: tuple[str, ...], rotated: tuple[str, ...]) -> None:
    """ConfigError when a file or folder of ``names`` already in the output folder ``folder`` (which ``account`` may
    write) is out of its reach: a file the station opens to read and append (its logs, its run lock: read and write
    needed), a folder it writes new files in (``ng/``, ``review/``, ``datasets/``: write and enter), or, in a sticky
    folder (a shared 1777 one), another account's file the station renames a new one over (summary.json,
    ``REPLACED_WHOLE``) or moves or deletes when its logs rotate (the logs and their ``.1`` .. ``.keep_files``, the
    names ``rotated``). A run as another account leaves such files (a trial `sudo fair-edge run`: root's, 0644), and the
    service's writes there failed once it ran (a rotation refused: the log grew past record.max_log_mb)."""
    for name in names:
        path = folder / name
        if path.is_symlink() or not path.exists():   # a link: the station refuses it
            continue
        problem = _leftover_problem(path, name, rotated, account)
        if problem is not None:
            cannot, outcome = problem
            raise ConfigError(
                f"{field} {folder}: {path} is {described(path)}, as a run as another account leaves it (e.g. a "
                f"trial `sudo fair-edge run`): --user {account.name} cannot {cannot}, though it may write the "
                f"folder, so {outcome}. Give the folder's contents to {account.name} "
                f"(`sudo chown -R {_owner(s)} {folder}`), or move {path} away, and install again.")


def _leftover_problem(path: Path, name: str, rotated: tuple[str, ...], account: Account) -> tuple[str, str] | None:
    """(what ``account`` cannot do to ``path``, e.g. "read and append to it (no 'w' permission)"; what fails for it)
    for ``path``, the file or folder ``name`` the station writes in its output folder, or None when it can. A file
    renamed over (``REPLACED_WHOLE``) or moved or deleted when the logs rotate (a log, or one of the names
    ``rotated``) needs only the folder's permission, unless the folder is sticky and the file another account's
    (``sticky_keeps``); a log is appended to as well."""
    from fair_edge.line.row_logs import GATE_LOG, VERDICT_LOG

    if name not in rotated and name not in REPLACED_WHOLE:
        need, doing = (W | X, "write new files in it") if path.is_dir() else (R | W, "read and append to it")
        problem = reach_problem(path, need, account)
        if problem is not None:
            return f"{doing} (no '{letters(problem[1])}' permission)", "the station's writes there would fail"
    moved_at_rotation = name in rotated or name in (VERDICT_LOG, GATE_LOG)
    if not (moved_at_rotation or name in REPLACED_WHOLE) or not sticky_keeps(path, account):
        return None
    sticky = f"in the sticky folder {described(path.parent)} only the file's owner, the folder's or root may"
    if moved_at_rotation:
        return (f"move or delete it when the log rotates ({sticky} rename or remove it)",
                "the log would not be rotated but grow past record.max_log_mb")
    return f"replace it ({sticky} rename over it)", "the station's writes there would fail"


# written whole to a new file renamed over the old (``station.run.write_summary``): the folder's permission suffices,
# except in a sticky folder for a file another account owns (``sticky_keeps``)
REPLACED_WHOLE = ("summary.json",)


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

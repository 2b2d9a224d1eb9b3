"""Whether the account a systemd unit runs as can reach a path, judged here before the unit is written
(``station.service_checks``, ``fair-edge install-service``): ``Account`` (the unit's --user and --group as systemd sets
them up), ``reach_problem`` (where that account is stopped on its way to reading, writing or running a path) and
``reach_error`` (the refusal naming the path, its mode and owner, the account and the ``chmod`` that lets it in).

Reach is judged as that account, also under sudo: ``os.access`` for the current user, else the mode bits of each
folder on the way against its uid and groups (``_blocked``); a path with a POSIX ACL, which the mode bits do not tell,
is taken as reachable.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from fair_edge.errors import ConfigError

R, W, X = 4, 2, 1   # permission bits asked of the service account: read, write, execute / enter a folder


@dataclass(frozen=True)
class Account:
    """The account a unit runs as, as systemd sets it up: ``name``, ``uid``, and ``gids``: Group= (or the user's
    own group) plus the user's supplementary groups (systemd calls initgroups)."""

    name: str
    uid: int
    gids: frozenset[int]


def service_account(user: str, group: str | None) -> Account:
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


def check_reach(path: Path, need: int, account: Account, what: str, doing: str, fix: str | None = None) -> None:
    """ConfigError when ``account`` cannot ``need`` (R / W / X bits) ``path`` (``reach_problem``). ``what``: the
    flag or field that names it; ``doing``: what the station would fail to do at each start; ``fix``: the last
    sentence, when not the ``chmod`` that lets the account in (``reach_error``)."""
    problem = reach_problem(path, need, account)
    if problem is not None:
        raise reach_error(what, path, account, doing, *problem, fix=fix)


def reach_problem(path: Path, need: int, account: Account) -> tuple[Path, int] | None:
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


def reach_error(what: str, path: Path, account: Account, doing: str, spot: Path, lacking: int,
                 fix: str | None = None, where: str | None = None) -> ConfigError:
    """The refusal of ``what`` ``path`` that ``account`` cannot reach for ``doing``: ``spot`` (``where``: how the
    message names it, by default "it" or "a folder on the way to it") lacks the bits ``lacking``. ``fix``: the
    last sentence (default: the ``chmod`` that lets the account in, or moving the path)."""
    shown = letters(lacking)
    where = where or ("it" if spot == path else f"{spot}, a folder on the way to it,")
    fix = fix or (f"Let {account.name} in (`sudo chmod o+{shown} {spot}`, or g+{shown} with a group "
                  f"{account.name} is in), or move it where {account.name} can reach it (e.g. under /opt/fair-edge) "
                  "and install again.")
    return ConfigError(
        f"{what} {path}: --user {account.name} cannot {doing}: {where} is {described(spot)}, without the "
        f"'{shown}' permission for {account.name}; the unit could never start and would restart forever. {fix}")


def sticky_keeps(path: Path, account: Account) -> bool:
    """Whether ``account`` may not rename a file over ``path`` (or remove it) even with write permission on its
    folder: the folder is sticky (``+t``, e.g. a shared 1777 folder) and neither ``path`` nor the folder is the
    account's, nor is it root (the kernel's rule for a sticky folder). False when either cannot be examined."""
    try:
        folder, st = os.stat(path.parent), os.lstat(path)
    except OSError:
        return False
    return bool(folder.st_mode & stat.S_ISVTX) and account.uid not in (0, st.st_uid, folder.st_uid)


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


def letters(need: int) -> str:
    """``need`` as chmod letters: 'r', 'w', 'x', 'rx', 'wx', ..."""
    return ("r" if need & R else "") + ("w" if need & W else "") + ("x" if need & X else "")


def described(path: Path) -> str:
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

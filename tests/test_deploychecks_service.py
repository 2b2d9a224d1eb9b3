"""`fair-edge install-service` refuses, at install time and as the --user account, a unit that would fail at every
start for want of what the station reads and writes after its program starts: a file its bundle's manifest lists
(missing, or unreadable by that account), an output folder it cannot write (or, missing, create) or a file of another
account it must append to there, and the program an ``#!/usr/bin/env NAME`` line runs (NAME on no folder of the
unit's PATH, or out of the account's reach). Before, only the program, the station file and the station file's paths
were checked, and such units restarted forever."""

from __future__ import annotations

import getpass
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fair_edge.station.service_checks import UNIT_PATH, _env_program
from fair_edge.station.service_reach import Account, sticky_keeps
from test_deploy_audit import (another_account, app, install_as, open_dir,  # noqa: F401 - open_dir: a fixture
                               private_folder, station_layout)

ME = getpass.getuser()   # installing for oneself: os.access decides
ENV = Path("/usr/bin/env")
needs_env = pytest.mark.skipif(not ENV.is_file(), reason="no /usr/bin/env here")


def message_of(result) -> str:
    """The command's output with Rich's line breaks joined."""
    return " ".join(result.output.split())


def fill_bundle(bundle: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative name -> content) into ``bundle`` (everyone may read them) and a bundle.json listing
    them (only ``files``: install-service reads nothing else); returns bundle.json."""
    for name, data in files.items():
        path = bundle / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.write_bytes(data)
        path.chmod(0o644)
    manifest = bundle / "bundle.json"
    manifest.write_text(json.dumps({"format": "fair-edge-bundle", "files": {
        name: {"sha256": "0" * 64, "bytes": len(data)} for name, data in files.items()}}))
    manifest.chmod(0o644)
    return manifest


# --- 1a. the files a bundle's manifest lists -----------------------------------------------------------------------

def test_a_bundle_file_missing_from_the_folder_is_refused_by_name(open_dir):
    paths = station_layout(open_dir)
    bundle = paths["site"] / "bundle"
    fill_bundle(bundle, {"model.onnx": b"graph", "normal_maps.npz": b"maps"})
    assert install_as(paths, ME).exit_code == 0
    (paths["units"] / "fe-audit.service").unlink()
    (bundle / "normal_maps.npz").unlink()   # a copy that left a file behind
    result = install_as(paths, ME)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert f"bundle: bundle file {bundle / 'normal_maps.npz'} is missing ({bundle / 'bundle.json'} lists it)" in message
    assert "rebuild it (`fair-edge build`" in message
    assert not (paths["units"] / "fe-audit.service").exists()


def test_a_bundle_file_or_folder_the_account_cannot_read_is_refused_with_the_chown(open_dir):
    """The bundle folder itself was checked (0755), but not the files in it: a 0600 model left by a copy as root
    made `fair-edge run` refuse the bundle at each start."""
    account = another_account()
    paths = station_layout(open_dir)
    bundle = paths["site"] / "bundle"
    fill_bundle(bundle, {"model.onnx": b"graph", "engines/model.engine": b"engine"})
    result = install_as(paths, account.pw_name)
    assert result.exit_code == 0, result.output
    (paths["units"] / "fe-audit.service").unlink()

    (bundle / "model.onnx").chmod(0o600)
    result = install_as(paths, account.pw_name)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert f"bundle: bundle file {bundle / 'model.onnx'}: --user nobody cannot read it" in message, message
    assert f"`sudo chown -R nobody: {bundle}`, or `sudo chmod -R a+rX {bundle}`" in message
    (bundle / "model.onnx").chmod(0o644)

    (bundle / "engines").chmod(0o700)
    message = message_of(install_as(paths, account.pw_name))
    assert f"bundle file {bundle / 'engines' / 'model.engine'}: --user nobody cannot read it" in message, message
    assert f"{bundle / 'engines'}, a folder on the way to it, is drwx------" in message
    (bundle / "engines").chmod(0o755)

    (bundle / "bundle.json").chmod(0o600)
    message = message_of(install_as(paths, account.pw_name))
    assert f"the bundle's manifest {bundle / 'bundle.json'}: --user nobody cannot read it" in message, message
    assert not (paths["units"] / "fe-audit.service").exists()


def test_a_fused_bundles_member_files_are_checked_too(open_dir):
    paths = station_layout(open_dir)
    fused = paths["site"] / "bundle"
    for member in ("m0", "m1"):
        (fused / member).mkdir()
        (fused / member).chmod(0o755)
        fill_bundle(fused / member, {"model.onnx": member.encode()})
    (fused / "fusion.json").write_text(json.dumps({"format": "fair-edge-fusion", "members": [{"path": "m0"},
                                                                                            {"path": "m1"}]}))
    (fused / "fusion.json").chmod(0o644)
    assert install_as(paths, ME).exit_code == 0
    (paths["units"] / "fe-audit.service").unlink()
    (fused / "m1" / "model.onnx").unlink()
    message = message_of(install_as(paths, ME))
    assert f"bundle file {fused / 'm1' / 'model.onnx'} is missing ({fused / 'm1' / 'bundle.json'} lists it)" in message
    (fused / "m1" / "bundle.json").unlink()
    message = message_of(install_as(paths, ME))
    assert f"bundle file {fused / 'm1' / 'bundle.json'} is missing ({fused / 'fusion.json'} lists it)" in message


def test_a_manifest_that_is_not_json_is_refused_naming_it(open_dir):
    paths = station_layout(open_dir)
    manifest = fill_bundle(paths["site"] / "bundle", {"model.onnx": b"graph"})
    manifest.write_text('{"files": {"model.onnx": ')   # cut short
    result = install_as(paths, ME)
    assert result.exit_code == 2 and f"{manifest}: expected a bundle manifest listing its 'files'; found no JSON" \
        in message_of(result), result.output


# --- 1b. the folders the station writes ----------------------------------------------------------------------------

def with_output(paths: dict[str, Path], text: str) -> None:
    """Replace the station file's output lines with ``text`` (YAML)."""
    station = paths["station"]
    station.write_text("camera: {source: good}\nbundle: bundle\n" + text)


def test_an_output_folder_the_account_cannot_write_is_refused_with_the_chown(open_dir):
    account = another_account()
    paths = station_layout(open_dir)
    out = paths["site"] / "results"
    out.mkdir()
    out.chmod(0o755)   # the installer's, as `sudo mkdir` leaves it
    with_output(paths, "output: results\n")
    result = install_as(paths, account.pw_name)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert f"station.yaml: output {out}: --user nobody cannot write it" in message, message
    assert "without the 'w' permission for nobody" in message and f"`sudo chown -R nobody: {out}`" in message
    assert not (paths["units"] / "fe-audit.service").exists()
    out.chmod(0o777)
    assert install_as(paths, account.pw_name).exit_code == 0


def test_a_missing_output_folder_the_account_cannot_create_is_refused_with_install_d(open_dir):
    """The station makes its output folder at start: where the account may not write the folder above, it cannot."""
    account = another_account()
    paths = station_layout(open_dir)
    with_output(paths, "output: runs/station\n")
    result = install_as(paths, account.pw_name)
    message = message_of(result)
    out = paths["site"] / "runs" / "station"
    assert result.exit_code == 2, result.output
    assert f"output {out}: --user nobody cannot create it" in message, message
    assert f"{paths['site']}, the folder it would be made in, is drwxr-xr-x" in message
    assert f"`sudo install -d -o nobody {out}`" in message
    (paths["site"] / "runs").mkdir()
    (paths["site"] / "runs").chmod(0o777)
    assert install_as(paths, account.pw_name).exit_code == 0
    assert not out.exists()   # install-service checks; the station makes it


def test_a_record_dir_elsewhere_is_checked_too_and_a_file_in_the_way_is_named(open_dir):
    account = another_account()
    paths = station_layout(open_dir)
    logs = open_dir / "logs"
    logs.mkdir()
    logs.chmod(0o755)
    with_output(paths, f"output: out\nrecord: {{dir: {logs}}}\n")
    message = message_of(install_as(paths, account.pw_name))
    assert f"station.yaml: record.dir {logs}: --user nobody cannot write it" in message, message
    (open_dir / "blocker").write_text("")
    with_output(paths, f"output: {open_dir / 'blocker' / 'out'}\n")
    message = message_of(install_as(paths, ME))
    assert f"output {open_dir / 'blocker' / 'out'}: {open_dir / 'blocker'} is not a folder" in message, message


def test_an_output_folder_on_a_read_only_disk_is_refused_for_any_account(open_dir, monkeypatch):
    """Mode bits say nothing of a read-only mount (root cannot write there either)."""
    paths = station_layout(open_dir)
    real = os.statvfs
    read_only = type("ReadOnly", (), {"f_flag": os.ST_RDONLY})()
    monkeypatch.setattr(os, "statvfs", lambda path: read_only if str(path).startswith(str(open_dir)) else real(path))
    message = message_of(install_as(paths, ME))
    assert f"output {paths['site'] / 'out'}: {paths['site'] / 'out'} is on a read-only file system" in message, message


def test_files_another_account_left_in_a_writable_output_folder_are_refused_naming_owner_and_chown(open_dir):
    """A trial `sudo fair-edge run` leaves root's 0644 verdicts.jsonl (and run lock, ng/) in the output folder: the
    folder passed (the service account may write it), but the service could not append to the log once it ran.
    Here the tests' own account leaves them; summary.json, replaced whole by a rename, needs only the folder."""
    account = another_account()
    paths = station_layout(open_dir)
    out = paths["site"] / "out"   # 0777
    for name in ("verdicts.jsonl", "summary.json"):
        (out / name).write_text("{}\n")
        (out / name).chmod(0o644)
    (out / "ng").mkdir()
    (out / "ng").chmod(0o755)
    result = install_as(paths, account.pw_name)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert f"station.yaml: output {out}: {out / 'verdicts.jsonl'} is -rw-r--r-- {ME}:" in message, message
    assert "--user nobody cannot read and append to it (no 'w' permission), though it may write the folder" in message
    assert f"(`sudo chown -R nobody: {out}`)" in message and "trial `sudo fair-edge run`" in message
    assert not (paths["units"] / "fe-audit.service").exists()
    (out / "verdicts.jsonl").chmod(0o666)
    message = message_of(install_as(paths, account.pw_name))
    assert f"{out / 'ng'} is drwxr-xr-x {ME}:" in message and "cannot write new files in it (no 'w'" in message, message
    (out / "ng").chmod(0o777)
    assert install_as(paths, account.pw_name).exit_code == 0   # summary.json: the folder's 'w' is enough


def test_another_accounts_summary_in_a_sticky_output_folder_is_refused_naming_owner_and_chown(open_dir):
    """summary.json is replaced whole by a rename, which the folder's 'w' allows, except in a sticky folder (a shared
    1777 one): there only the file's owner, the folder's or root may rename over it, and the check passed root's
    summary.json while the service's os.replace over it failed with EPERM."""
    account = another_account()
    paths = station_layout(open_dir)
    out = paths["site"] / "out"
    (out / "summary.json").write_text("{}\n")
    (out / "summary.json").chmod(0o666)   # even writable by all: a rename over it is still refused
    out.chmod(0o1777)
    result = install_as(paths, account.pw_name)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert f"station.yaml: output {out}: {out / 'summary.json'} is -rw-rw-rw- {ME}:" in message, message
    assert f"--user nobody cannot replace it (in the sticky folder drwxrwxrwt {ME}:" in message, message
    assert f"(`sudo chown -R nobody: {out}`)" in message
    assert not sticky_keeps(out / "summary.json", Account(ME, os.getuid(), frozenset()))   # its owner may
    out.chmod(0o777)
    assert install_as(paths, account.pw_name).exit_code == 0   # not sticky: the folder's 'w' is enough


def test_another_accounts_rotated_logs_in_a_sticky_record_folder_are_refused_naming_owner_and_chown(open_dir):
    """A trial `sudo fair-edge run` long enough to rotate leaves root's verdicts.jsonl.N / gate.jsonl.N in the record
    folder. In a sticky (1777) one the service may not move or delete them (EPERM at its first rotation, and every row
    after it was lost), nor move another account's log itself, writable or not; the check knew only the logs' names.
    A rotated file past keep_files (no rotation touches it) and a folder that is not sticky pass."""
    account = another_account()
    paths = station_layout(open_dir)
    out = paths["site"] / "out"
    paths["station"].write_text(paths["station"].read_text() + "record: {keep_files: 2}\n")
    for name, mode in (("gate.jsonl.2", 0o644), ("verdicts.jsonl.3", 0o644), ("verdicts.jsonl", 0o666)):
        (out / name).write_text("{}\n")
        (out / name).chmod(mode)
    out.chmod(0o1777)
    for name in ("verdicts.jsonl", "gate.jsonl.2"):
        result = install_as(paths, account.pw_name)
        message = message_of(result)
        assert result.exit_code == 2, result.output
        assert f"{out / name} is -rw-r" in message and f" {ME}:" in message, message
        assert ("--user nobody cannot move or delete it when the log rotates (in the sticky folder drwxrwxrwt "
                f"{ME}:") in message, message
        assert "so the log would not be rotated but grow past record.max_log_mb" in message
        assert f"(`sudo chown -R nobody: {out}`)" in message
        (out / name).unlink()
    assert install_as(paths, account.pw_name).exit_code == 0   # verdicts.jsonl.3: past keep_files 2
    (out / "verdicts.jsonl.1").write_text("{}\n")
    out.chmod(0o777)
    assert install_as(paths, account.pw_name).exit_code == 0   # not sticky: the folder's 'w' is enough


def test_a_path_in_the_installers_home_is_noted_when_the_unit_runs_as_another_account(open_dir, monkeypatch):
    """`sudo fair-edge install-service --station ~/station.yaml --user fairedge`: the shell expands `~` to the
    installer's home before sudo runs, so the unit of fairedge reads alice's home (and breaks when she tidies it)."""
    import pwd

    from fair_edge.station import service_unit

    account = another_account()
    monkeypatch.setenv("SUDO_USER", account.pw_name)
    me = pwd.getpwuid(os.getuid())
    assert service_unit.installer_homes() == {me.pw_name: Path(me.pw_dir), account.pw_name: Path(account.pw_dir)}
    home = open_dir / "home-alice"
    home.mkdir()
    home.chmod(0o755)
    monkeypatch.setattr(service_unit, "installer_homes", lambda: {"alice": home})
    paths = station_layout(home)
    result = install_as(paths, account.pw_name)
    message = message_of(result)
    assert result.exit_code == 0, result.output
    for flag, path in (("--station", paths["station"]), ("--working-dir", paths["site"]), ("--exec", paths["program"])):
        assert f"note: {flag} {path} is in alice's home folder ({home}), but the unit runs as nobody" in message
    assert "a `~` typed for install-service, under sudo too, is alice's home, not nobody's" in message
    monkeypatch.setattr(service_unit, "installer_homes", lambda: {"alice": open_dir / "elsewhere"})
    assert "home folder" not in message_of(install_as(paths, account.pw_name))
    monkeypatch.setattr(service_unit, "installer_homes", lambda: {account.pw_name: home})   # --user's own home
    assert "home folder" not in message_of(install_as(paths, account.pw_name))


# --- 2. the program a `#!/usr/bin/env NAME` line runs --------------------------------------------------------------

def with_shebang(paths: dict[str, Path], line: str) -> Path:
    program = paths["program"]
    program.write_text(f"{line}\nexit 0\n")
    return program


@needs_env
def test_an_env_line_whose_program_is_not_on_the_units_path_is_refused(open_dir):
    """`#!/usr/bin/env NAME`: env was checked, not NAME; the unit exited 127 at every start."""
    paths = station_layout(open_dir)
    program = with_shebang(paths, "#!/usr/bin/env fair-edge-no-such-interpreter")
    result = install_as(paths, ME)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert (f"--exec {program}: its #! line `#!/usr/bin/env fair-edge-no-such-interpreter` has env run "
            f"`fair-edge-no-such-interpreter`, but no folder of the unit's PATH ({UNIT_PATH}) holds"
            ) in message, message
    assert "--env PATH=" in message
    with_shebang(paths, "#!/usr/bin/env sh")
    assert install_as(paths, ME).exit_code == 0


@needs_env
def test_an_env_line_with_words_runs_one_name_unless_split(open_dir):
    paths = station_layout(open_dir)
    with_shebang(paths, "#!/usr/bin/env sh -e")
    message = message_of(install_as(paths, ME))
    assert "has env run `sh -e` (the kernel hands env the rest of the #! line as one program name" in message, message
    assert "#!/usr/bin/env -S ..." in message
    with_shebang(paths, "#!/usr/bin/env -S sh -e")
    assert install_as(paths, ME).exit_code == 0


@needs_env
def test_an_env_program_on_a_given_path_is_checked_as_the_account(open_dir):
    account = another_account()
    paths = station_layout(open_dir)
    home = private_folder(open_dir)
    (home / "bin").mkdir()
    shutil.copy2("/bin/sh", home / "bin" / "python3")
    program = with_shebang(paths, "#!/usr/bin/env python3")
    args = ["install-service", "--station", str(paths["station"]), "--unit-dir", str(paths["units"]), "--user",
            account.pw_name, "--exec", str(program), "--working-dir", str(paths["site"]), "--name", "fe-audit",
            "--env", f"PATH={home / 'bin'}:/usr/bin"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert (f"--exec {program} runs its #! interpreter {home / 'bin' / 'python3'}: --user nobody cannot run it"
            in message), message


def test_a_missing_interpreter_is_refused(open_dir):
    """A venv moved or rebuilt elsewhere leaves its fair-edge naming a python that is gone: 203/EXEC forever."""
    paths = station_layout(open_dir)
    program = with_shebang(paths, f"#!{open_dir / 'old-venv' / 'bin' / 'python'}")
    result = install_as(paths, ME)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert f"--exec {program}: its #! line `#!{open_dir / 'old-venv' / 'bin' / 'python'}` names" in message
    assert "which does not exist" in message


@pytest.mark.parametrize("argument, program", [
    ("bash", "bash"), ("bash -e", "bash -e"), ("-S bash -e", "bash"), ("-Sbash -e", "bash"),
    ("-S -i PYTHONPATH=/x python3 -u", "python3"), ("-S -u HOME -C /tmp python3", "python3"),
    ("--split-string=python3 -u", "python3"), ("-i", None), ("", None), ("A=1", None)])
def test_env_program_follows_envs_own_reading(argument, program):
    assert _env_program(argument) == program

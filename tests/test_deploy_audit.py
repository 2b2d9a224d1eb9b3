"""The deploy audit's findings, each checked where it bites: the container's stop timeout and output volume as
documented (and the stop timeout as the image itself computes it), install-service checking paths as the --user
account (not as root under sudo), docs/jetson.md's OpenCV check and venv steps, and a failing command's error as
one line in a log (the journal under a unit)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fair_edge.cli.service import install_service
from fair_edge.station.config import load_station
from fair_edge.station.service_unit import stop_timeout_sec

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "jetson.md").read_text()
DOCKERFILE = (ROOT / "deploy" / "jetson" / "Dockerfile").read_text()
WORKDIR = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE, re.M)[-1]
app = typer.Typer()
app.command("install-service")(install_service)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def container_section() -> str:
    """docs/jetson.md's B section (the container), up to the next heading."""
    return DOC.split("## B.", 1)[1].split("\n## ", 1)[0]


def joined(text: str) -> str:
    """``text`` with shell line continuations (a backslash, a newline and the next line's indent) joined."""
    return re.sub(r"\\\n\s*", " ", text)


def docker_run_lines() -> dict[str, str]:
    """Every documented `docker run` that starts the station: {where: the command, continuations joined}."""
    header = joined("\n".join(line[1:].strip() for line in DOCKERFILE.splitlines() if line.startswith("#")))
    found = {"Dockerfile header": [c for c in re.findall(r"docker run [^\n]*", header) if "fair-edge:jetson" in c]}
    found["docs/jetson.md B"] = [c for c in re.findall(r"docker run [^\n]*", joined(container_section()))
                                 if c.rstrip().endswith("fair-edge:jetson")]
    assert all(found.values()), found
    return {f"{where} #{i}": command for where, commands in found.items() for i, command in enumerate(commands)}


def mounted_at(command: str) -> list[str]:
    """The container paths of ``command``'s ``-v SOURCE:TARGET[:ro]`` mounts."""
    return [spec.split(":")[1] for spec in re.findall(r"-v\s+(\S+)", command)]


# --- 1. the container's stop timeout ------------------------------------------------------------------------------

def test_every_documented_docker_run_sets_a_stop_timeout_and_restart_passes_it():
    for where, command in docker_run_lines().items():
        assert re.search(r"--stop-timeout\s+\S+", command), f"{where}: no --stop-timeout (docker's 10 s): {command}"
    section = container_section()
    restarts = re.findall(r"docker restart[^`\n]* fair-edge\b", section)
    assert restarts and all(re.search(r"-t\s+\S+", r) for r in restarts), restarts


def fair_edge_shim(folder: Path) -> Path:
    """A `fair-edge` program in ``folder`` that runs this tree's CLI (as the image's console script does)."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "fair-edge"
    program.write_text(f"#!/bin/sh\nexec {shutil.which('env')} PYTHONPATH={ROOT} {sys.executable} -c "
                       "'import sys; from fair_edge.cli import main; sys.argv[0] = \"fair-edge\"; main()' \"$@\"\n")
    program.chmod(0o755)
    return program


def test_the_documented_stop_timeout_command_prints_what_install_service_sizes(tmp_path):
    """docs/jetson.md B.2's STOP_S= line, with the image's `docker run --rm ... fair-edge:jetson` standing for the
    entrypoint (which runs a command it is given), prints stop_timeout_sec for the station file: 133 s for a
    70 s belt, where docker's default would kill the drain at 10 s."""
    block = joined(container_section())
    line = re.search(r"STOP_S=\$\((docker run .*?fair-edge:jetson) (.*?)\)\n", block + "\n")
    assert line, "no STOP_S=$(docker run ... fair-edge:jetson COMMAND) line in docs/jetson.md B"
    docker_run, command = line.groups()
    config = tmp_path / "config"
    config.mkdir()
    (config / "station.yaml").write_text("camera: {source: '0'}\nreject: {delay_ms: 70000}\n")
    assert "/opt/fair-edge/config:/config" in docker_run and "/config/station.yaml" in command
    command = command.replace("/config/station.yaml", str(config / "station.yaml"))
    bin_dir = tmp_path / "bin"
    fair_edge_shim(bin_dir)
    script = f"STOP_S=$(sh {ROOT}/deploy/jetson/entrypoint.sh {command}); echo \"$STOP_S\""
    done = subprocess.run(["bash", "-c", script], env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = stop_timeout_sec(load_station(config / "station.yaml"))
    assert expected == 133 and done.stdout.strip() == str(expected), (done.stdout, done.stderr)


# --- 2. the container's outputs -----------------------------------------------------------------------------------

def test_the_working_folder_is_a_volume_and_every_documented_run_mounts_it():
    assert WORKDIR == "/var/lib/fair-edge"
    volumes = re.findall(r'^VOLUME\s+\["([^"]+)"\]', DOCKERFILE, re.M)
    assert WORKDIR in volumes, volumes
    for where, command in docker_run_lines().items():
        assert WORKDIR in mounted_at(command), f"{where}: the outputs under {WORKDIR} are on no mount: {command}"
        assert "--rm" not in command.split(), f"{where}: --rm deletes the container's outputs at its stop"


# --- 3. install-service checks paths as --user --------------------------------------------------------------------

def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no account `nobody` here")


def another_account() -> pwd.struct_passwd:
    """``nobody``, the service account of these tests, which must not be the account running them."""
    account = nobody()
    if os.getuid() == account.pw_uid:
        pytest.skip("the tests run as nobody")
    return account


@pytest.fixture
def open_dir():
    """A folder every account can enter (pytest's tmp_path is under a 0700 folder of the test's user)."""
    folder = Path(tempfile.mkdtemp(prefix="fair-edge-deploy-audit-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def station_layout(base: Path) -> dict[str, Path]:
    """Under ``base`` (0755): site/ with a station file whose relative bundle and image folder exist and whose
    output folder everyone may write, a program (a #!/bin/sh script) in venv/bin/, and a units/ folder; all
    readable and enterable by everyone."""
    site, venv_bin, units = base / "site", base / "venv" / "bin", base / "units"
    for folder in (site / "bundle", site / "good", site / "out", venv_bin, units):
        folder.mkdir(parents=True)
    for folder in (site, site / "bundle", site / "good", base / "venv", venv_bin):
        folder.chmod(0o755)
    (site / "out").chmod(0o777)   # the service account writes its outputs there
    station = site / "station.yaml"
    station.write_text("camera: {source: good}\nbundle: bundle\noutput: out\n")
    station.chmod(0o644)
    program = venv_bin / "fair-edge"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    return {"site": site, "station": station, "program": program, "units": units}


def install_as(paths: dict[str, Path], user: str, **changes: Path):
    """install-service for ``user`` with the layout ``paths`` (``changes``: station / program / site replaced)."""
    p = {**paths, **changes}
    args = ["install-service", "--station", str(p["station"]), "--unit-dir", str(p["units"]), "--user", user,
            "--exec", str(p["program"]), "--working-dir", str(p["site"]), "--name", "fe-audit"]
    return CliRunner().invoke(app, args, env={"COLUMNS": "1000"})


def test_a_layout_the_service_account_can_reach_is_installed(open_dir):
    user = nobody().pw_name
    paths = station_layout(open_dir)
    result = install_as(paths, user)
    assert result.exit_code == 0, result.output
    assert f"User={user}" in (paths["units"] / "fe-audit.service").read_text()


def private_folder(base: Path) -> Path:
    """A 0700 folder of the test's own user (a home folder as useradd makes it), which `nobody` cannot enter."""
    folder = base / "home-alice"
    folder.mkdir()
    folder.chmod(0o700)
    return folder


def test_a_program_in_a_folder_the_account_cannot_enter_is_refused_by_name(open_dir):
    """As root under sudo, os.access says yes to everything; the unit would fail 203/EXEC at each start."""
    account = another_account()
    paths = station_layout(open_dir)
    home = private_folder(open_dir)
    program = home / "venv" / "bin" / "fair-edge"
    program.parent.mkdir(parents=True)
    shutil.copy2(paths["program"], program)
    result = install_as(paths, account.pw_name, program=program)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"--exec {program}: --user nobody cannot run it" in message, message
    assert f"{home}, a folder on the way to it, is drwx------" in message and f"chmod o+x {home}" in message
    assert not (paths["units"] / "fe-audit.service").exists()


def test_a_script_the_account_cannot_read_or_whose_interpreter_it_cannot_run_is_refused(open_dir):
    """A #! script is read by its interpreter: 0711 is not enough; a venv's python in a 0700 home neither."""
    account = another_account()
    paths = station_layout(open_dir)
    paths["program"].chmod(0o711)
    result = install_as(paths, account.pw_name)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "without the 'r' permission for nobody" in message, message
    assert f"chmod o+r {paths['program']}" in message
    paths["program"].chmod(0o755)
    home = private_folder(open_dir)
    shutil.copy2("/bin/sh", home / "python")
    paths["program"].write_text(f"#!{home / 'python'}\nexit 0\n")
    result = install_as(paths, account.pw_name)
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"--exec {paths['program']} runs its #! interpreter {home / 'python'}: --user nobody cannot run" in message


def test_a_working_dir_or_station_file_the_account_cannot_open_is_refused_by_name(open_dir):
    account = another_account()
    paths = station_layout(open_dir)
    home = private_folder(open_dir)
    for folder in ("bundle", "good"):   # the station file's relative paths are there: only the mode is wrong
        (home / folder).mkdir()
    result = install_as(paths, account.pw_name, site=home)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and f"--working-dir {home}: --user nobody cannot enter it" in message, message

    paths["station"].chmod(0o600)
    result = install_as(paths, account.pw_name)
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"--station {paths['station']}: --user nobody cannot read it" in message and "chmod o+r" in message
    paths["station"].chmod(0o644)
    (paths["site"] / "bundle").chmod(0o700)
    result = install_as(paths, account.pw_name)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and f"bundle {paths['site'] / 'bundle'}: --user nobody cannot read it" in message
    assert not (paths["units"] / "fe-audit.service").exists()


def test_the_group_bits_count_for_a_member_and_the_users_own_account_is_unchanged(open_dir):
    """A folder 0710 of the account's group lets it in (systemd gives it its groups); for the installing user
    itself os.access decides, as before."""
    account = nobody()
    if os.getuid() != 0:
        pytest.skip("chgrp to nobody's group needs root")
    paths = station_layout(open_dir)
    shared = open_dir / "shared"
    shared.mkdir()
    os.chown(shared, 0, account.pw_gid)
    shared.chmod(0o710)
    program = shared / "fair-edge"
    shutil.copy2(paths["program"], program)
    os.chown(program, 0, account.pw_gid)
    program.chmod(0o750)
    assert install_as(paths, account.pw_name, program=program).exit_code == 0
    (paths["units"] / "fe-audit.service").unlink()
    me = pwd.getpwuid(os.getuid()).pw_name
    result = install_as(paths, me, program=program)
    assert result.exit_code == 0, result.output


# --- 4 and 6. docs/jetson.md section 2 ----------------------------------------------------------------------------

def native_install_block() -> list[str]:
    """The lines of section 2's first ```bash block."""
    section = DOC.split("## 2.", 1)[1]
    return re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).splitlines()


def test_the_opencv_check_prints_the_gstreamer_row_not_a_count(tmp_path):
    """Run section 2's check line with this machine's OpenCV (pip's, no GStreamer) and a stand-in tensorrt: it
    must say NO (the old count of the word printed 1 with or without GStreamer)."""
    check = next(line for line in native_install_block() if "getBuildInformation" in line)
    (tmp_path / "tensorrt.py").write_text("__version__ = '10.3.0'\n")
    command = check.replace("/opt/fair-edge/venv/bin/python", shlex_quote(sys.executable))
    done = subprocess.run(["bash", "-c", command], env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import cv2

    row = re.search(r"GStreamer:\s*(.*)", cv2.getBuildInformation()).group(1).strip()
    assert done.stdout.rstrip().endswith(f"GStreamer: {row}") and "10.3.0" in done.stdout, done.stdout
    assert cv2.__file__ in done.stdout


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_pips_opencv_is_always_removed_before_the_check():
    lines = native_install_block()
    uninstall = [i for i, line in enumerate(lines) if re.match(r"\S*pip uninstall -y opencv-python-headless", line)]
    install = [i for i, line in enumerate(lines) if "pip install" in line and "fair-edge" in line]
    check = [i for i, line in enumerate(lines) if "getBuildInformation" in line]
    assert uninstall and install and check and install[-1] < uninstall[0] < check[0], lines


def test_the_venv_folder_under_opt_is_made_writable_first_and_the_bundle_copy_uses_sudo():
    lines = native_install_block()
    venv = next(i for i, line in enumerate(lines) if "-m venv" in line)
    made = [i for i, line in enumerate(lines[:venv]) if re.match(r"sudo install -d -o \"\$USER\" /opt/fair-edge\b", line)]
    assert made, lines
    section4 = DOC.split("## 4.", 1)[1].split("\n## ", 1)[0]
    into_bundle = [line for line in section4.splitlines() if "rsync" in line and "/opt/fair-edge/bundle" in line]
    assert into_bundle and all("sudo" in line and "--chown=fairedge:fairedge" in line for line in into_bundle)


# --- 5. one line per error in a log -------------------------------------------------------------------------------

def test_a_failing_commands_error_is_one_line_when_stderr_is_not_a_terminal(tmp_path):
    """Under a unit, stderr goes to the journal (no terminal, no COLUMNS): Rich wrapped the error at 80 columns into
    several entries, so `journalctl | grep` found half of it."""
    missing = tmp_path / ("a-long-folder-name-" * 6) / "station.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", "from fair_edge.cli import main; main()", "install-service",
                           "--station", str(missing), "--unit-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and str(missing) in errors[0], done.stderr
    assert len(errors[0]) > 80

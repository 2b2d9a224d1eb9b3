"""The JetPack 6 container recipe, as far as it can be checked without a Jetson or docker: the Dockerfile parses
into known instructions on the right base image and copies files that exist; the entrypoint builds/caches the
engine first, then runs the station with it, and stops when that fails. (Building the image needs docker on
arm64: skipped here, see docs/jetson.md.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "deploy" / "jetson"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "VOLUME", "ENTRYPOINT", "CMD", "USER",
                "LABEL", "EXPOSE", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, backslash continuations joined."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        pending += (" " if pending else "") + line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, args = pending.partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    if pending:
        raise ValueError(f"Dockerfile ends inside a continued instruction: {pending[:60]!r}")
    return out


def test_the_parser_itself_catches_an_unterminated_instruction():
    with pytest.raises(ValueError, match="continued instruction"):
        dockerfile_instructions("FROM x\nRUN a \\\n")
    assert dockerfile_instructions("# c\nFROM a\nRUN b \\\n  # inner\n  c\n") == [("FROM", "a"), ("RUN", "b c")]


def test_dockerfile_structure():
    steps = dockerfile_instructions((RECIPE / "Dockerfile").read_text())
    unknown = [word for word, _ in steps if word not in INSTRUCTIONS]
    assert unknown == []
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    base = [a for w, a in steps if w == "FROM"]
    assert base == ["${L4T_IMAGE}"] and steps.index(("FROM", "${L4T_IMAGE}")) == 1  # ARG before FROM, one stage
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.4\.\d+", args["L4T_IMAGE"])  # JetPack 6.1+: TensorRT 10
    for word, arg in steps:
        if word == "COPY":
            *sources, _dest = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    entry = json.loads(next(a for w, a in steps if w == "ENTRYPOINT"))
    assert entry == ["/usr/local/bin/fair-edge-entrypoint"]
    assert any(w == "COPY" and a.startswith("deploy/jetson/entrypoint.sh ") and a.endswith(entry[0]) for w, a in steps)
    run = " ".join(a for w, a in steps if w == "RUN")
    assert "python3-libnvinfer" in run and "pip install --no-deps ." in run and "import tensorrt" in run
    env = " ".join(a for w, a in steps if w == "ENV")
    for name in ("FAIR_EDGE_BUNDLE", "FAIR_EDGE_ENGINE_CACHE", "FAIR_EDGE_STATION"):
        assert name in env and name in (RECIPE / "entrypoint.sh").read_text()
    assert ("VOLUME", '["/var/cache/fair-edge"]') in steps


def _buildkit_check_available() -> str:
    """'' when `docker build --check` can run (docker, buildx, a daemon); else why not."""
    if shutil.which("docker") is None:
        return "docker is not installed here"
    if subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=30).returncode != 0:
        return "docker has no buildx (BuildKit) here, which `docker build --check` needs"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no docker daemon is running here"
    return ""


def test_docker_parses_the_dockerfile():
    why_not = _buildkit_check_available()
    if why_not:
        pytest.skip(f"{why_not}; the Dockerfile is not checked by docker itself (the image is never built here)")
    result = subprocess.run(["docker", "build", "--check", "-f", str(RECIPE / "Dockerfile"), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def fake_tools(tmp_path: Path, cache_exit: int = 0) -> dict:
    """PATH with stand-ins: `python3 -m fair_edge.export.engine_cache` prints a device bundle (or fails) and logs its
    arguments; `fair-edge` logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "python3").write_text(
        f"#!/bin/sh\necho \"python3 $*\" >> {log}\necho 'engine cache: built' >&2\n"
        + (f"exit {cache_exit}\n" if cache_exit else f"echo {tmp_path}/cache/0123456789abcdef\n"))
    (bin_dir / "fair-edge").write_text(f"#!/bin/sh\necho \"fair-edge $*\" >> {log}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    station = tmp_path / "config" / "station.yaml"
    station.parent.mkdir()
    station.write_text("camera: {source: '0'}\n")
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", FAIR_EDGE_BUNDLE=str(tmp_path / "bundle"),
               FAIR_EDGE_ENGINE_CACHE=str(tmp_path / "cache"), FAIR_EDGE_STATION=str(station))
    return {"env": env, "log": log, "station": station}


def entrypoint(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(RECIPE / "entrypoint.sh"), *args], env=env, capture_output=True, text=True, timeout=30)


def test_entrypoint_builds_the_engine_then_runs_the_station_with_it(tmp_path):
    tools = fake_tools(tmp_path)
    result = entrypoint(["--max-frames", "5"], tools["env"])
    assert result.returncode == 0, result.stderr
    calls = tools["log"].read_text().splitlines()
    assert calls == [
        f"python3 -m fair_edge.export.engine_cache --bundle {tmp_path}/bundle --cache {tmp_path}/cache",
        f"fair-edge run --station {tools['station']} --bundle {tmp_path}/cache/0123456789abcdef --backend tensorrt "
        "--max-frames 5",
    ]
    assert "engine cache: built" in result.stderr


def test_entrypoint_stops_when_the_engine_cannot_be_built_or_the_station_file_is_missing(tmp_path):
    tools = fake_tools(tmp_path, cache_exit=2)
    failed = entrypoint([], tools["env"])
    assert failed.returncode == 2 and "fair-edge run" not in tools["log"].read_text()
    tools["station"].unlink()
    missing = entrypoint([], tools["env"])
    assert missing.returncode == 2 and "no station file" in missing.stderr


def test_entrypoint_runs_another_command_as_given(tmp_path):
    tools = fake_tools(tmp_path)
    result = entrypoint(["fair-edge", "bench", "/bundle"], tools["env"])
    assert result.returncode == 0 and tools["log"].read_text().splitlines() == ["fair-edge bench /bundle"]


def test_numpy_stays_below_2_beside_ubuntus_opencv():
    """Ubuntu's python3-opencv (apt, for GStreamer) is built against NumPy 1.x and fails to import under NumPy 2,
    which an unpinned `numpy>=1.24` installs: every numpy the recipe and the native install ask pip for caps at <2."""
    steps = dockerfile_instructions((RECIPE / "Dockerfile").read_text())
    assert any("python3-opencv" in arg for word, arg in steps if word == "RUN")
    pip_numpy = [spec for word, arg in steps if word == "RUN" for spec in re.findall(r'"(numpy[^"]*)"', arg)]
    native = re.findall(r'venv/bin/pip install[^\n]*', (ROOT / "docs" / "jetson.md").read_text())
    assert pip_numpy and all("<2" in spec for spec in pip_numpy), pip_numpy
    assert any('"numpy<2"' in line and "fair-edge" in line for line in native), native

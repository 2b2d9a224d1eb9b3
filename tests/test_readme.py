"""The README's test command is the one CI runs, and it collects from a fresh checkout's root as printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    """The command in the README's 'Run the tests' block (the line after that heading's ```bash)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"Run the tests:\s*```bash\n(.+?)\n```", text, re.S)
    if found is None:
        raise AssertionError("README.md has no 'Run the tests:' block followed by a ```bash fence")
    return found.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim():
    command = readme_test_command()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert command == 'pip install -e ".[test]" && pytest -q'
    assert ci_lines[-1] == command, f".ci/run ends with {ci_lines[-1]!r}; the README prints {command!r}"


def test_bare_pytest_collects_the_helper_imports():
    """`pytest` (the console script, not `python -m pytest`) leaves the working directory off sys.path;
    the test helpers in tests/ must still import (they failed at collection before pyproject's pythonpath)."""
    pytest_script = shutil.which("pytest", path=str(Path(sys.executable).parent)) or shutil.which("pytest")
    if pytest_script is None:
        pytest.skip("no `pytest` console script on PATH")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([pytest_script, "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_preprocess_cpu.py", "tests/test_line_modbus.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"\d+ tests? collected", done.stdout), done.stdout[-500:]

"""Type-check export/tensorrt.py (build) and fair_edge/runtime/tensorrt.py (the backend) against the published TensorRT type stubs (PyPI ``tensorrt-stubs``).

The stub files of ``tensorrt-stubs==10.13.0.35.1`` are kept in ``tests/trt_stubs/`` byte for byte as
published (MIT, ``LICENSE`` and the wheel's ``RECORD`` beside them; the first test checks the hashes),
so the check runs from the README's ``pytest -q`` on a fresh clone. The wheel itself cannot be a test
dependency: it requires ``tensorrt==10.13.0.35`` (the GPU runtime) and installs a stub-only
``tensorrt/`` folder into site-packages, which imports as an empty namespace package where the real
TensorRT is missing. Here the stubs are only on mypy's ``MYPYPATH``, never on ``sys.path``.
The generated stubs have a few syntax slips (a parameter named ``in``, required-after-default
parameters) that stop mypy; ``stubs_fix`` repairs exactly those lines in a temporary copy.
To move to a newer release: ``pip download --no-deps tensorrt-stubs==VERSION``, unpack it over
``tests/trt_stubs/`` (the ``tensorrt``/``tensorrt_bindings`` folders, LICENSE and RECORD) and run this file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stubs_fix import fix_stub_text

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "trt_stubs"
CONFIG = """[mypy]
follow_imports = silent
ignore_missing_imports = True
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
"""


def published_stub_files() -> dict[str, str]:
    """RECORD's stub files: path -> urlsafe-base64 sha256 (no padding), as the wheel states them."""
    rows = [line.split(",") for line in (STUBS / "RECORD").read_text().splitlines()]
    return {path: digest.removeprefix("sha256=") for path, digest, _ in rows if path.endswith(".pyi")}


def _sha256(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def test_kept_stubs_are_the_published_files():
    files = published_stub_files()
    assert sorted(files) == ["tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi", "tensorrt_bindings/tensorrt.pyi"]
    assert {path: _sha256(STUBS / path) for path in files} == files
    assert not (STUBS / "tensorrt" / "__init__.py").exists()   # stubs only: nothing here can be imported


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    pytest.importorskip("mypy", reason="mypy is not installed (it is in the `test` extra: pip install -e \".[test]\")")
    dst = tmp_path_factory.mktemp("stubs")
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(STUBS / pkg, dst / pkg)
    for pyi in dst.rglob("*.pyi"):
        pyi.write_text(fix_stub_text(pyi.read_text()))
    (dst / "mypy.ini").write_text(CONFIG)
    return dst


def _mypy(stubs: Path, *files: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MYPYPATH": str(stubs)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"), "--no-incremental", *map(str, files)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)   # a hang guard, not a speed claim


def test_tensorrt_module_type_checks_against_stubs(stubs):
    r = _mypy(stubs, ROOT / "export" / "tensorrt.py", ROOT / "export" / "cuda_runtime.py",
              ROOT / "fair_edge" / "runtime" / "tensorrt.py")
    assert r.returncode == 0, r.stdout + r.stderr


def test_stubs_catch_a_wrong_api_name(stubs, tmp_path):
    bad = tmp_path / "bad_trt.py"
    bad.write_text("import tensorrt as trt\n\n\ndef f(b: trt.Builder) -> None:\n    b.create_networkx(0)\n")
    r = _mypy(stubs, bad)
    assert r.returncode == 1 and 'has no attribute "create_networkx"' in r.stdout

"""Type-check export/tensorrt.py (build) and fair_edge/runtime/tensorrt.py (the backend) against the published TensorRT type stubs (PyPI ``tensorrt-stubs``).

The stubs are a test-only download, kept out of site-packages (installed there, their stub-only
``tensorrt/`` directory would import as an empty namespace package). CI:
  pip install mypy && pip install --no-deps --target .typing tensorrt-stubs==10.13.0.35.1
  FAIR_EDGE_TRT_STUBS=.typing pytest tests/test_tensorrt_types.py
The generated stubs have a few syntax slips (a parameter named ``in``, required-after-default
parameters) that stop mypy; ``stubs_fix`` repairs exactly those lines in a temporary copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stubs_fix import fix_stub_text

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """[mypy]
follow_imports = silent
ignore_missing_imports = True
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    pytest.importorskip("mypy")
    source = os.environ.get("FAIR_EDGE_TRT_STUBS")
    if not source or not (Path(source) / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        pytest.skip("set FAIR_EDGE_TRT_STUBS to a `pip install --no-deps --target DIR tensorrt-stubs` folder")
    dst = tmp_path_factory.mktemp("stubs")
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(Path(source) / pkg, dst / pkg)
    for pyi in dst.rglob("*.pyi"):
        pyi.write_text(fix_stub_text(pyi.read_text()))
    (dst / "mypy.ini").write_text(CONFIG)
    return dst


def _mypy(stubs: Path, *files: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MYPYPATH": str(stubs)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"), "--no-incremental", *map(str, files)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_tensorrt_module_type_checks_against_stubs(stubs):
    r = _mypy(stubs, ROOT / "export" / "tensorrt.py", ROOT / "export" / "cuda_runtime.py",
              ROOT / "fair_edge" / "runtime" / "tensorrt.py")
    assert r.returncode == 0, r.stdout + r.stderr


def test_stubs_catch_a_wrong_api_name(stubs, tmp_path):
    bad = tmp_path / "bad_trt.py"
    bad.write_text("import tensorrt as trt\n\n\ndef f(b: trt.Builder) -> None:\n    b.create_networkx(0)\n")
    r = _mypy(stubs, bad)
    assert r.returncode == 1 and 'has no attribute "create_networkx"' in r.stdout

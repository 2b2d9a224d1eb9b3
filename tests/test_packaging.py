"""The wheel holds every package in the tree, found (setup.py) rather than listed, so a new package folder (a model
family) needs no edit of pyproject.toml; a package missing from the wheel installs in an editable checkout but not
on a Jetson. The folder mapping (export/ -> fair_edge.export, ...) is pyproject's and kept."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="fair_edge_setup")  # the module, without running setup()


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _package_folders(root: Path, mapping: dict[str, str]) -> set[str]:
    found = set()
    for package, folder in mapping.items():
        for init in (root / folder).rglob("__init__.py"):
            found.add(".".join((package, *init.parent.relative_to(root / folder).parts)))
    return found


def test_pyproject_lists_no_packages_and_keeps_the_folder_mapping():
    config = _config()
    assert "packages" not in config, "packages are found by setup.py; a list here would have to be edited"
    assert config["package-dir"] == SETUP["MAPPED"]


def test_every_package_folder_is_found():
    assert SETUP["package_list"]() == sorted(_package_folders(ROOT, SETUP["MAPPED"]))


def test_a_new_family_folder_is_found_without_editing_anything(tmp_path):
    for folder in SETUP["MAPPED"].values():
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    family = tmp_path / "fair_edge" / "models" / "meancolour"
    family.mkdir()
    (family / "__init__.py").write_text("")
    (family / "family.py").write_text("")
    assert "fair_edge.models.meancolour" in SETUP["package_list"](tmp_path)
    assert "fair_edge.models.meancolour" not in SETUP["package_list"]()


def test_setuptools_builds_every_package_under_its_installed_name(tmp_path):
    """The build itself, as pip runs it (a setup.py process with pyproject's configuration), writes every found
    package under its installed name, with the package data."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    built = _package_folders(tmp_path, {"fair_edge": "fair_edge"})
    assert built == set(SETUP["package_list"]())
    assert (tmp_path / "fair_edge" / "runtime" / "preprocess_kernel.cu").is_file()  # package data kept
    assert list((tmp_path / "fair_edge" / "console" / "static").iterdir())

"""pyproject's explicit package list names every package in the tree (a package left out installs in an
editable checkout but is missing from a wheel, e.g. on a Jetson)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {"fair_edge": ROOT / "fair_edge", **{name: ROOT / path for name, path in config["package-dir"].items()}}
    found = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join((package, *rel.parts)))
    listed = set(config["packages"])
    assert sorted(found - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"
    assert sorted(listed - found) == [], "listed in pyproject.toml but no such package folder"

"""Package discovery for setuptools; everything else is in pyproject.toml.

The wheel holds every package under ``fair_edge/``, and ``export/``, ``calibration/`` and ``cameras/`` with their
sub-packages installed as ``fair_edge.export``, ``fair_edge.calibration`` and ``fair_edge.cameras`` (pyproject's
``[tool.setuptools.package-dir]``, which maps the folders). Found, not listed, so a new package folder (a model
family under ``fair_edge/models/``) is in the wheel without editing a list.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# installed name -> folder, as in pyproject's [tool.setuptools.package-dir] (tests/test_packaging.py keeps them equal)
MAPPED = {"fair_edge": "fair_edge", "fair_edge.export": "export", "fair_edge.calibration": "calibration",
          "fair_edge.cameras": "cameras"}


def package_list(root: Path = ROOT) -> list[str]:
    """Every package (a folder with ``__init__.py``) under the mapped folders, by its installed name."""
    packages = []
    for name, folder in MAPPED.items():
        packages += [name] + [f"{name}.{sub}" for sub in find_packages(str(Path(root) / folder))]
    return sorted(set(packages))


if __name__ == "__main__":
    setup(packages=package_list())

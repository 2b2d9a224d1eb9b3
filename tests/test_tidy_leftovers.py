"""Small leftovers, each held: `fair-edge run`'s summary names the rotated log files a full disk made the recorder
delete; `fair-edge collect`'s closing line names the stale part files it removed at the start; the Jetson image
installs every extra the native Jetson install does (gpiod >= 2.1 for gpio:// sinks among them), which takes every
extra of pyproject.toml but those left out by name, with the reason; install-service's
checks as the unit's account live in a module of their own; the console's greyed-miss tooltip is written once."""

from __future__ import annotations

import os
import re
import time
import tomllib
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.cli.run import recorder_rows
from fair_edge.training.collect import PART_STALE_S, write_part
from test_jetson_recipe import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "fair_edge" / "console" / "static"
GONE_TOOLTIP = "its frame is no longer kept"


# ------------------------------------------------------------------ run's summary: log files deleted on a full disk
def test_the_summary_shows_rotated_log_files_deleted_in_red_like_rows_failed():
    """``Recorder.stats()['log_files_deleted']`` (rotated logs deleted to write on a full disk: their rows are gone)
    was counted but never shown."""
    stats = {"queued": 9, "logged": 6, "gate_logged": 3, "rows_failed": 0, "images": 2, "images_skipped": 0,
             "write_errors": 0, "log_files_deleted": 2}
    row = dict(recorder_rows(stats))["verdict log / gate log"]
    assert row == "6 / 3 logged, [bold red]2 rotated log file(s) deleted (disk full)[/]", row
    stats["log_files_deleted"] = 0
    assert dict(recorder_rows(stats))["verdict log / gate log"] == "6 / 3 logged"


# ------------------------------------------------------------------ collect's closing line: part files removed
def test_collects_closing_line_names_the_stale_part_files_it_removed(tmp_path):
    """Collector.parts_removed went to the log only (a warning a plain terminal run may not show); the line the
    operator reads at the end said nothing of it."""
    src, out = tmp_path / "cam", tmp_path / "train"
    src.mkdir()
    out.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(src / f"{i:03d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    stale = write_part(out, "P_00000001", b"png bytes")
    long_ago = time.time() - 2 * PART_STALE_S - 60
    os.utime(stale, (long_ago, long_ago))
    result = CliRunner().invoke(app, ["collect", str(out), "--source", str(src)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert not stale.exists()
    assert "(removed 1 stale part file a killed collect had left there)" in text, text
    again = CliRunner().invoke(app, ["collect", str(tmp_path / "train2"), "--source", str(src)])
    assert again.exit_code == 0 and "removed" not in again.output, again.output


def test_collects_closing_line_names_the_empty_pngs_it_removed(tmp_path):
    """An empty NAME.png a killed collect had reserved (a file system without hard links) is removed and counted."""
    src, out = tmp_path / "cam", tmp_path / "train"
    src.mkdir()
    out.mkdir()
    cv2.imwrite(str(src / "000.png"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    empty = out / "P_00000001.png"
    empty.touch()
    long_ago = time.time() - 2 * PART_STALE_S - 60
    os.utime(empty, (long_ago, long_ago))
    result = CliRunner().invoke(app, ["collect", str(out), "--source", str(src)])
    assert result.exit_code == 0, result.output
    assert not empty.exists()
    assert "(removed 1 empty PNG a killed collect had left there)" in " ".join(result.output.split()), result.output


# ------------------------------------------------------------------ the Jetson image: every extra of the native install
def requirement_bounds(specs: list[str]) -> dict[str, str]:
    """Package name (lower case) -> its ``>=`` bound ("" for none) of each requirement in ``specs``."""
    out = {}
    for spec in specs:
        name, rest = re.match(r"([A-Za-z0-9_.\-]+)(.*)", spec).groups()
        low = re.search(r">=\s*([0-9][0-9.]*)", rest)
        out[name.lower()] = low.group(1) if low else ""
    return out


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")) if text else ()


def test_the_jetson_image_installs_every_extra_the_native_jetson_install_does():
    """docs/jetson.md's native install takes fair-edge[plc,jetson,gpio,mqtt]; the image installs its packages one by
    one (pip --no-deps), and had no gpiod: a gpio:// sink in the container could not open. Neither installed the
    ``mqtt`` extra (paho-mqtt): a station file with ``mqtt: {url: ...}`` failed at start."""
    native = re.search(r'/path/to/fair-edge"\[([\w,]+)\]"', (ROOT / "docs" / "jetson.md").read_text()).group(1)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    steps = dockerfile_instructions((ROOT / "deploy" / "jetson" / "Dockerfile").read_text())
    pip = [spec for word, arg in steps if word == "RUN" and "pip install" in arg
           for spec in re.findall(r'"([A-Za-z][^"$]*)"', arg)]
    installed = requirement_bounds(pip)
    assert {"gpio", "mqtt"} <= set(native.split(",")), native
    for extra in native.split(","):
        for name, low in requirement_bounds(extras[extra]).items():
            assert name in installed, f"the [{extra}] extra's {name} is not installed in deploy/jetson/Dockerfile"
            assert version(installed[name]) >= version(low), (extra, name, installed[name], low)


# pyproject's extras the native Jetson install (docs/jetson.md section 2) leaves out, and why: every other extra is in
# its pip line, so an extra added later is decided for the Jetson station (mqtt was in neither that line nor the image)
JETSON_LEFT_OUT = {
    "demo": "the demo runs on the workstation (its dataset and training weights)",
    "lgfdr": "training only: a checkpoint keeps its backbone's weights, so build and run never need the package",
    "backbones": "training only, as lgfdr",
    "test": "the test suite",
    "cuda": "cuda-python is installed by name in that line, beside JetPack's CUDA",
    "tensorrt": "JetPack's python3-libnvinfer, from apt",
    "openvino": "Intel CPUs only",
    "genicam": "per camera, beside its vendor's GenTL producer (section 3)",
    "aravis": "per camera; PyGObject builds against system headers (section 3)",
}


def test_every_extra_is_in_the_native_jetson_install_or_left_out_by_name():
    native = set(re.search(r'/path/to/fair-edge"\[([\w,]+)\]"', (ROOT / "docs" / "jetson.md").read_text()).group(1)
                 .split(","))
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert not native & set(JETSON_LEFT_OUT), native & set(JETSON_LEFT_OUT)
    missing = extras - set(JETSON_LEFT_OUT) - native
    assert not missing, (f"add {sorted(missing)} to docs/jetson.md's pip line (and so to the image: the test above), "
                         "or to JETSON_LEFT_OUT with the reason")
    assert set(JETSON_LEFT_OUT) <= extras


# ------------------------------------------------------------------ install-service's checks: a module of their own
def test_the_service_accounts_checks_live_apart_from_the_unit_writer():
    from fair_edge.station import service_checks, service_unit

    assert callable(service_checks.check_on_this_machine)
    unit_source = Path(service_unit.__file__).read_text()
    assert not re.findall(r"^def (_check_(?!executable)\w+|_reach\w*|_shebang|_interpreters)\(", unit_source, re.M)
    from fair_edge.cli import service
    assert service.check_on_this_machine is service_checks.check_on_this_machine


# ------------------------------------------------------------------ the console: one greyed-miss tooltip
def test_the_greyed_miss_tooltip_is_written_once_in_common_js_which_both_pages_load_first():
    holding = sorted(p.name for p in STATIC.glob("*.js") if GONE_TOOLTIP in p.read_text())
    assert holding == ["common.js"], holding   # was: live.js and gallery.js, each its own copy
    for page, script in (("live.html", "live.js"), ("gallery.html", "gallery.js")):
        html = (STATIC / page).read_text()
        assert 0 <= html.index("/static/common.js") < html.index(f"/static/{script}"), page
        assert "FE.greyMiss(" in (STATIC / script).read_text(), script

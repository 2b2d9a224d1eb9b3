"""`fair-edge install-service` reads a station's zone masks (``regions.zones[].mask``,
``cameras[].regions.zones[].mask``) from --working-dir, where the unit runs the station, as it does its bundle:
before, it loaded the station file from the current folder, so a valid station installed from another folder was
refused ("label.png is missing") and one installed from the mask's folder with another --working-dir got a unit that
failed at every start. The masks are also checked readable by the --user account. `fair-edge run` (and so the unit)
reads a relative mask from its current folder, the unit's WorkingDirectory=.

--print checks nothing of the machine the unit is for (docs/jetson.md), which may be another: a mask missing from
--working-dir (a folder only the station machine has) refused the unit ("/opt/line3/label.png is missing", exit 2,
nothing printed). It is a note now; a mask that is there is still read and checked."""

from __future__ import annotations

import getpass
from pathlib import Path

import cv2
import numpy as np
import pytest

from typer.testing import CliRunner

from fair_edge.errors import ConfigError
from fair_edge.station.config import load_station
from fair_edge.station.service_checks import _station_paths
from test_deploy_audit import another_account, app, install_as, open_dir, station_layout  # noqa: F401 - a fixture

ME = getpass.getuser()   # installing for oneself: os.access decides
FRAME_WH = (64, 48)
ZONES = "{frame: [64, 48], zones: [{name: label, mask: label.png, ignore: true}]}"


def message_of(result) -> str:
    """The command's output with Rich's line breaks joined."""
    return " ".join(result.output.split())


def write_mask(folder: Path, name: str = "label.png") -> Path:
    """A frame-sized black/white zone mask (everyone may read it) in ``folder``."""
    mask = np.zeros((FRAME_WH[1], FRAME_WH[0]), np.uint8)
    mask[10:30, 10:40] = 255
    path = folder / name
    cv2.imwrite(str(path), mask)
    path.chmod(0o644)
    return path


def with_zones(paths: dict[str, Path], cameras: bool = False) -> None:
    """The layout's station file with a mask zone: the station's ``regions:``, or (``cameras``) one camera's own."""
    if cameras:
        paths["station"].write_text(f"cameras: [{{name: top, source: good, regions: {ZONES}}}]\nbundle: bundle\n"
                                    "output: out\n")
    else:
        paths["station"].write_text(paths["station"].read_text() + f"regions: {ZONES}\n")


def elsewhere(base: Path) -> Path:
    folder = base / "elsewhere"
    folder.mkdir()
    folder.chmod(0o755)
    return folder


@pytest.mark.parametrize("cameras", [False, True], ids=["regions", "cameras-regions"])
def test_a_mask_in_working_dir_is_found_when_installing_from_another_folder(open_dir, monkeypatch, cameras):
    paths = station_layout(open_dir)
    with_zones(paths, cameras)
    write_mask(paths["site"])
    monkeypatch.chdir(elsewhere(open_dir))
    result = install_as(paths, ME)
    assert result.exit_code == 0, result.output
    assert f"WorkingDirectory={paths['site']}" in (paths["units"] / "fe-audit.service").read_text()


@pytest.mark.parametrize("cameras", [False, True], ids=["regions", "cameras-regions"])
def test_a_mask_only_in_the_current_folder_is_refused_naming_working_dir(open_dir, monkeypatch, cameras):
    """The unit runs the station in --working-dir, where the mask is not: it would fail at every start."""
    paths = station_layout(open_dir)
    with_zones(paths, cameras)
    here = elsewhere(open_dir)
    write_mask(here)
    monkeypatch.chdir(here)
    result = install_as(paths, ME)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert (f"regions.zones[0].mask (label): {paths['site'] / 'label.png'} is missing or not an image (a relative "
            f"mask path is read from {paths['site']}, the folder the station runs in)") in message, message
    assert not (paths["units"] / "fe-audit.service").exists()


def test_a_mask_the_account_cannot_read_is_refused_by_field(open_dir, monkeypatch):
    account = another_account()
    paths = station_layout(open_dir)
    with_zones(paths)
    mask = write_mask(paths["site"])
    monkeypatch.chdir(paths["site"])
    assert install_as(paths, account.pw_name).exit_code == 0
    (paths["units"] / "fe-audit.service").unlink()
    mask.chmod(0o600)   # copied as root
    result = install_as(paths, account.pw_name)
    message = message_of(result)
    assert result.exit_code == 2, result.output
    assert f"regions.zones[0].mask {mask}: --user {account.pw_name} cannot read it" in message, message


def test_the_station_paths_name_each_zone_mask_once(tmp_path, monkeypatch):
    """A camera that keeps the station's zones reads the same file: named once, as the station's field."""
    write_mask(tmp_path)
    write_mask(tmp_path, "seal.png")
    monkeypatch.chdir(tmp_path)
    station = tmp_path / "station.yaml"
    station.write_text(f"regions: {ZONES}\nbundle: b\ncameras: [{{name: top, source: '0'}}, {{name: side, "
                       "source: '1', regions: {zones: [{name: seal, mask: seal.png, min_area_px: 5}]}}]\n")
    masks = [(what, str(path)) for what, path in _station_paths(load_station(station)) if "mask" in what]
    assert masks == [("regions.zones[0].mask", "label.png"), ("cameras[1].regions.zones[0].mask", "seal.png")]


def test_run_reads_a_relative_mask_from_the_current_folder_as_the_unit_does(tmp_path, monkeypatch):
    """What the unit's WorkingDirectory= means for `fair-edge run` (``load_station`` without a working_dir): the
    current folder, not the station file's."""
    site, work = tmp_path / "site", tmp_path / "work"
    site.mkdir()
    work.mkdir()
    station = site / "station.yaml"
    station.write_text(f"regions: {ZONES}\n")
    write_mask(site)
    monkeypatch.chdir(work)
    with pytest.raises(ConfigError, match=r"regions.zones\[0\].mask \(label\): label.png is missing"):
        load_station(station)
    assert load_station(station, site).regions.zones[0].mask == site / "label.png"
    monkeypatch.chdir(site)
    assert load_station(station).regions.zones[0].mask == Path("label.png")


def print_unit_for(paths: dict[str, Path], working_dir: Path):
    """install-service --print of the layout's station for ``working_dir`` (maybe a folder of another machine)."""
    args = ["install-service", "--station", str(paths["station"]), "--print", "--exec", str(paths["program"]),
            "--working-dir", str(working_dir), "--name", "fe-audit"]
    return CliRunner().invoke(app, args, env={"COLUMNS": "1000"})


@pytest.mark.parametrize("cameras", [False, True], ids=["regions", "cameras-regions"])
def test_print_for_another_machine_notes_a_mask_missing_from_working_dir(tmp_path, monkeypatch, cameras):
    """The review's case: from the station's folder, where its mask is, --print --working-dir /opt/line3 (a folder only
    the station machine has): the unit is printed on standard output, exit 0, and the mask is a note there (stderr)
    naming its field."""
    paths = station_layout(tmp_path)
    with_zones(paths, cameras)
    write_mask(paths["site"])
    monkeypatch.chdir(paths["site"])
    target = tmp_path / "opt" / "line3"   # not on this machine
    result = print_unit_for(paths, target)
    assert result.exit_code == 0, result.output
    assert f"WorkingDirectory={target}" in result.stdout and "note:" not in result.stdout, result.stdout
    field = "cameras[0].regions.zones[0].mask" if cameras else "regions.zones[0].mask"
    assert (f"note: {paths['station']}: {field}: {target / 'label.png'} does not exist here; create it on the station "
            "machine before starting the unit.") in " ".join(result.stderr.split()), result.stderr


def test_print_notes_a_mask_the_cameras_share_once(tmp_path):
    """A camera that keeps the station's zones reads the same file: one note, as the station's field."""
    paths = station_layout(tmp_path)
    paths["station"].write_text(f"regions: {ZONES}\nbundle: bundle\noutput: out\n"
                                "cameras: [{name: top, source: good}, {name: side, source: good}]\n")
    target = tmp_path / "opt" / "line3"
    result = print_unit_for(paths, target)
    assert result.exit_code == 0, result.output
    assert " ".join(result.stderr.split()).count("does not exist here") == 1, result.stderr
    assert f"note: {paths['station']}: regions.zones[0].mask: {target / 'label.png'}" in " ".join(result.stderr.split())


def test_print_still_checks_a_mask_that_is_in_working_dir(tmp_path):
    """--print reads the masks it finds as the station will: one of another size than regions.frame is refused,
    nothing printed; a good one gives no note."""
    paths = station_layout(tmp_path)
    with_zones(paths)
    write_mask(paths["site"])
    result = print_unit_for(paths, paths["site"])
    assert result.exit_code == 0 and "note:" not in result.output, result.output
    cv2.imwrite(str(paths["site"] / "label.png"), np.full((10, 10), 255, np.uint8))
    result = print_unit_for(paths, paths["site"])
    message = message_of(result)
    assert result.exit_code == 2 and "[Unit]" not in result.stdout, result.output
    assert (f"regions.zones[0].mask (label): {paths['site'] / 'label.png'} is 10 x 10; expected the frame size "
            "64 x 48") in message, message


def test_install_without_print_still_refuses_a_mask_missing_from_working_dir(tmp_path, monkeypatch):
    """Installing (no --print) checks the unit can start here: the same missing mask is refused by its field."""
    paths = station_layout(tmp_path)
    with_zones(paths)
    monkeypatch.chdir(paths["site"])
    result = install_as(paths, ME)
    assert result.exit_code == 2, result.output
    assert f"regions.zones[0].mask (label): {paths['site'] / 'label.png'} is missing" in message_of(result)

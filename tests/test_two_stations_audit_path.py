"""The audit log's threshold row names the station file by its resolved path. It named it as typed (relative): a
station started by hand from its site folder (`--station line1/station.yaml`) with a threshold applied from the
console, then started by its systemd unit (an absolute --station, WorkingDirectory the station's own folder) after
the bundle behind `bundle:` changed, did not find the row: the start check "threshold applied on another model" was
skipped and the new model ran at the old one's threshold (the audit's audit_relpath.sh). Rows an older release wrote
relative are still compared as before (from the folder the station starts in)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fair_edge.console.actions import StationLinks
from fair_edge.console.threshold_refusals import applied_thresholds
from fair_edge.console.station_hook import StationConsole
from fair_edge.errors import ConfigError
from fair_edge.runtime.hotswap import ModelSwitch, model_id
from fair_edge.station.bundles import check_applied_threshold
from fair_edge.station.config import load_station


def site(tmp_path, bundle: Path) -> tuple[Path, Path]:
    """sites/line1/station.yaml naming the link links/current (-> ``bundle``) at threshold 0.5, output out/.
    Returns (the sites folder, the link)."""
    link = tmp_path / "links" / "current"
    link.parent.mkdir()
    link.symlink_to(bundle, target_is_directory=True)
    station = tmp_path / "sites" / "line1" / "station.yaml"
    station.parent.mkdir(parents=True)
    station.write_text(yaml.safe_dump({"bundle": str(link), "decision": {"threshold": 0.5},
                                       "output": str(tmp_path / "out"), "console": {"enabled": False}}))
    return tmp_path / "sites", link


def apply_from_console(cfg, bundle, value: float) -> dict:
    """The console of a station started with ``cfg`` on ``bundle`` applies ``value`` (as POST /api/threshold)."""
    console = StationConsole(cfg, SimpleNamespace(root=bundle.root, threshold=None),
                             links=StationLinks(load_station=load_station))
    console.attach(SimpleNamespace(model=model_id(bundle), threshold=0.5, switch=ModelSwitch()), None, None, None,
                   None)
    return console.actions.apply_threshold(value, "op", True)


def test_a_threshold_applied_by_a_station_started_by_hand_refuses_its_units_start_on_another_model(
        station_bundles, tmp_path, monkeypatch):
    """Applied from the console of a station started from sites/ with a relative --station; the link then points at
    another model; the unit starts it from sites/line1 with an absolute --station: refused (before: started)."""
    sites, link = site(tmp_path, station_bundles[0].root)
    monkeypatch.chdir(sites)
    row = apply_from_console(load_station("line1/station.yaml"), station_bundles[0], 0.9)
    station = (sites / "line1" / "station.yaml").resolve()
    assert row["station_file"] == str(station)   # absolute, resolved: the row names the file from anywhere

    link.unlink()
    link.symlink_to(station_bundles[1].root, target_is_directory=True)   # the rollout re-points the link
    monkeypatch.chdir(sites / "line1")   # the unit's WorkingDirectory
    with pytest.raises(ConfigError, match="was applied from the console on bundle") as refused:
        check_applied_threshold(load_station(station), station_bundles[1])
    assert "decision.threshold 0.9" in str(refused.value)


def test_a_row_names_the_station_file_through_a_link_or_by_its_target_alike(tmp_path):
    """A station file reached through a linked folder (/etc/fair-edge -> /opt/site) and by its target is one file."""
    (tmp_path / "opt" / "site").mkdir(parents=True)
    target = tmp_path / "opt" / "site" / "station.yaml"
    target.write_text("{}\n")
    (tmp_path / "etc").symlink_to(tmp_path / "opt" / "site", target_is_directory=True)
    row = {"action": "threshold", "new": 0.9, "station_file": str(target.resolve())}
    assert applied_thresholds([row], tmp_path / "etc" / "station.yaml") == {"": row}
    assert applied_thresholds([row], tmp_path / "opt" / "other.yaml") == {}


def test_a_relative_row_of_an_older_release_is_still_found_from_the_folder_it_was_written_in(tmp_path, monkeypatch):
    """An older release wrote the path as typed: its folder is not recorded, so it is compared as before, made
    absolute in the current folder (found from there, by a relative or an absolute --station)."""
    from fair_edge.console.threshold_refusals import names_station_file

    (tmp_path / "line1").mkdir()
    station = tmp_path / "line1" / "station.yaml"
    station.write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    row = {"action": "threshold", "new": 0.9, "station_file": "line1/station.yaml"}
    assert applied_thresholds([row], Path("line1/station.yaml")) == {"": row}
    assert applied_thresholds([row], station) == {"": row}
    assert not names_station_file("", station)


def test_the_console_writes_the_resolved_path_in_the_audit_log(station_bundles, tmp_path, monkeypatch):
    """The row in audit.jsonl itself (not only the answer) names the file by its resolved path."""
    sites, _ = site(tmp_path, station_bundles[0].root)
    monkeypatch.chdir(sites / "line1")
    apply_from_console(load_station("station.yaml"), station_bundles[0], 0.9)
    rows = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert [r["station_file"] for r in rows if r["action"] == "threshold"] == [
        os.path.realpath(sites / "line1" / "station.yaml")]

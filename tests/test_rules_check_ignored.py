"""`fair-edge rules check` counts an image's regions as the line does: regions in ``ignore: true`` zones are left out
of "regions" (the PLC's Region Count leaves them out since 47d5041) and counted apart as "ignored". It counted them:
a frame with one scratch in the seal and two blobs on the label (an ignore zone) read "regions 3" in rules check and
1 on the PLC.

The maps are fed straight to the rules, as in test_regions_outputs: a 400 x 400 frame at 0.05 mm/px with a 100 x 100
map; the left half is the zone ``seal`` (min_length_mm 1.5), the right half ``label`` (ignore: true).
"""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.line.handshake.settings import region_values
from fair_edge.station import config as station_config
from fair_edge.station import rules_check
from fair_edge.station.rules_check import RulesReport, row

from test_regions_outputs import LEFT, RIGHT, judged, plant, scratch_and_label_blobs

ZONES = [{"name": "seal", "polygon": LEFT, "min_length_mm": 1.5}, {"name": "label", "polygon": RIGHT, "ignore": True}]


def mixed():
    """One scratch in seal (counted, fires) and two blobs in label (ignored)."""
    return judged(scratch_and_label_blobs(), zones=ZONES)


def outside_only():
    """One small blob in seal, none in label."""
    return judged(plant(np.zeros((100, 100), np.float32), 25, 25, 4, 4), zones=ZONES)


def test_a_row_counts_the_regions_outside_ignore_zones_and_the_ignored_apart():
    v = mixed()
    assert [r.ignored for r in v.regions] == [True, False, True]
    line = row("a.png", v)
    assert line["regions"] == 1 and line["ignored_regions"] == 2, line
    assert line["regions"] == region_values(v, ("region_count",))["region_count"]   # what the PLC is told
    line = row("b.png", outside_only())
    assert (line["regions"], line["ignored_regions"]) == (1, 0), line


def rules_check_of(monkeypatch, tmp_path, report: RulesReport, *args: str):
    """`fair-edge rules check` printing ``report`` (the replay replaced: no bundle is scored)."""
    monkeypatch.setattr(station_config, "load_station", lambda path: None)
    monkeypatch.setattr(rules_check, "camera_config",
                        lambda cfg, camera: type("Cfg", (), {"override": lambda self, bundle: self})())
    monkeypatch.setattr(rules_check, "check_frames", lambda cfg, frames, backend=None: report)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a.png").write_bytes(b"")
    return CliRunner().invoke(app, ["rules", "check", str(tmp_path / "station.yaml"), str(tmp_path / "frames"), *args],
                              terminal_width=200)


def table_row(output: str, image: str) -> list[str]:
    """The cells of the table line of ``image``."""
    line = next(line for line in output.splitlines() if image in line)
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


def test_the_table_and_json_count_regions_as_the_line_does_and_show_the_ignored_apart(monkeypatch, tmp_path):
    report = RulesReport(0.5, 0.5, [row("mixed.png", mixed()), row("outside.png", outside_only())])
    result = rules_check_of(monkeypatch, tmp_path, report, "--json", str(tmp_path / "rules.json"))
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "image" in line and "score" in line)
    assert [cell.strip() for cell in header.strip().strip("│┃").split("┃")][2:4] == ["regions", "ignored"], header
    assert table_row(result.output, "mixed.png")[2:4] == ["1", "2"], result.output
    assert table_row(result.output, "outside.png")[2:4] == ["1", "0"], result.output
    rows = json.loads((tmp_path / "rules.json").read_text())["rows"]
    assert [(r["regions"], r["ignored_regions"]) for r in rows] == [(1, 2), (1, 0)]


def test_without_ignored_regions_the_table_has_no_ignored_column(monkeypatch, tmp_path):
    result = rules_check_of(monkeypatch, tmp_path, RulesReport(0.5, 0.5, [row("outside.png", outside_only())]))
    assert result.exit_code == 0, result.output
    assert "ignored" not in result.output and table_row(result.output, "outside.png")[2] == "1", result.output

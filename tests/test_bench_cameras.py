"""``fair-edge bench --mode cameras`` on the CPU, tiny: 1 and 2 cameras, two rounds of half a second.

Accounting only (every frame counted once, a row per camera count and arrangement, the ratio as reported);
no speed is asserted."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fair_edge.bench.cameras import CameraRow, with_ratios
from fair_edge.bench.settings import BenchSettings, parse_cameras
from fair_edge.cli import app
from fair_edge.errors import ConfigError

runner = CliRunner()
TINY = ["--synthetic-width", "32", "--image-size", "32", "--frames", "64x48", "--backend", "onnxruntime",
        "--seconds", "0.5", "--warmup", "0.1", "--threads", "1"]


def check_accounting(row: dict, rounds: int) -> None:
    n = row["cameras"]
    assert list(row["per_camera"]) == [f"cam{i}" for i in range(n)]
    assert all(count > 0 for count in row["per_camera"].values())          # every camera was served
    assert sum(row["per_camera"].values()) == row["frames"]                # each verdict counted under one camera
    assert row["frames_in"] == row["frames"] + row["dropped"] + row["not_inspected"]   # each frame read: one fate
    assert row["dropped"] == row["not_inspected"] == row["lost"] == 0      # closed feed; queued frames drained
    assert row["fps"] == pytest.approx(row["frames"] / row["seconds"])
    assert row["rounds"] == rounds == len(row["round_fps"])
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    if row["arrangement"] == "cell":
        assert row["models"] == 1 and row["max_batch"] == n and 1 <= row["mean_batch"] <= n
    else:
        assert row["models"] == n and row["max_batch"] == 1 and row["mean_batch"] == 1
        assert row["vs_stations"] is None and row["round_ratios"] == []


def test_cell_against_stations(tmp_path):
    out = tmp_path / "bench.json"
    r = runner.invoke(app, ["bench", *TINY, "--mode", "cameras", "--cameras", "1,2", "--rounds", "2",
                            "--json", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    rows = report["cameras"]["rows"]
    assert [(row["cameras"], row["arrangement"]) for row in rows] == [(1, "cell"), (1, "stations"),
                                                                      (2, "cell"), (2, "stations")]
    for row in rows:
        check_accounting(row, rounds=2)
    for cell, stations in zip(rows[::2], rows[1::2]):
        assert cell["vs_stations"] == pytest.approx(cell["fps"] / stations["fps"])
        assert cell["round_ratios"] == pytest.approx([a / b for a, b in zip(cell["round_fps"], stations["round_fps"])])
    assert report["results"] == [] and "ONNX Runtime" in report["cameras"]["backend"]
    assert report["settings"]["cameras"] == [1, 2] and report["settings"]["rounds"] == 2
    assert report["settings"]["mode"] == "cameras" and report["bundle"]["synthetic"]
    # the table and the progress lines: 2 counts x 2 arrangements x 2 rounds timed, then the pooled rows
    assert r.output.count("camera(s), cell:") == 4 and r.output.count("camera(s), stations:") == 4
    assert "cell/stations" in r.output and f"{rows[2]['vs_stations']:.2f}" in r.output


def test_ratios_pair_each_cell_with_its_stations():
    def row(n: int, arrangement: str, fps: float, rounds: list) -> CameraRow:
        return CameraRow(n, arrangement, "onnxruntime", "cpu", 1, 1, fps, 1.0, 2.0, 3.0, 10, {}, 10, 0, 0, 0, 1.0,
                         1.0, len(rounds), rounds)

    rows = with_ratios([row(2, "cell", 30.0, [28.0, 32.0]), row(2, "stations", 20.0, [20.0, 16.0]),
                        row(4, "stations", 10.0, [10.0])])
    assert rows[0].vs_stations == pytest.approx(1.5) and rows[0].round_ratios == pytest.approx([1.4, 2.0])
    assert rows[1].vs_stations is None and rows[2].vs_stations is None   # a count without its cell: no ratio


def test_cameras_needs_the_cameras_mode():
    r = runner.invoke(app, ["bench", *TINY, "--cameras", "1,2"], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "Add --mode cameras" in r.output


def test_camera_counts_and_rounds_are_checked():
    assert parse_cameras("1, 2,2,4") == (1, 2, 4)
    with pytest.raises(ConfigError, match="--cameras must be a comma-separated list"):
        parse_cameras("0,2")
    with pytest.raises(ConfigError, match="--rounds be >= 1"):
        BenchSettings(mode="cameras", rounds=0)

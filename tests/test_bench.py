"""``fair-edge bench`` on the CPU: a random-weight width-32 bundle (the smallest the CLI takes), tiny frames, ~0.5 s per timing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fair_edge.bench.settings import BenchSettings, parse_batches, parse_feed, parse_frames
from fair_edge.cli import app
from fair_edge.errors import ConfigError

runner = CliRunner()
TINY = ["--synthetic-width", "32", "--image-size", "32", "--frames", "64x48", "--batches", "1,2",
        "--seconds", "0.5", "--warmup", "0.1", "--threads", "1"]


def bench(*args: str):
    return runner.invoke(app, ["bench", *TINY, *args], env={"COLUMNS": "200"})


def check_rows(rows: list[dict], mode: str) -> None:
    assert {r["role"] for r in rows} == {"backend", "baseline"}
    assert sorted({r["batch"] for r in rows}) == [1, 2]
    for r in rows:
        assert r["mode"] == mode and r["frames"] >= r["batch"]
        assert r["fps"] == pytest.approx(r["frames"] / r["seconds"])   # frames/s from the row's own count and clock
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        if mode == "compute":   # whole batches, each one timed: their sum is the row's seconds
            assert r["frames"] % r["batch"] == 0 and r["mean_batch"] == r["batch"]
            assert r["seconds"] >= r["frames"] / r["batch"] * r["p50_ms"] / 1000 / 2
        else:
            assert 1 <= r["mean_batch"] <= r["batch"]
        assert r["vs_baseline"] == pytest.approx(r["fps"] / next(
            b["fps"] for b in rows if b["role"] == "baseline" and b["batch"] == r["batch"]))


@pytest.mark.parametrize("backend", ["torch-cpu", "onnxruntime"])
def test_closed_loop_and_compute(backend, tmp_path):
    out = tmp_path / "bench.json"
    r = bench("--backend", backend, "--mode", "both", "--json", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    loop = [row for row in report["results"] if row["mode"] == "loop"]
    compute = [row for row in report["results"] if row["mode"] == "compute"]
    check_rows(loop, "loop")
    check_rows(compute, "compute")
    assert all(row["dropped"] == 0 for row in loop)  # closed feed: never more in flight than the queue holds
    assert all(row["preprocess"] == "cpu" for row in report["results"])
    assert report["bundle"]["synthetic"] and report["bundle"]["model"] == "FAIR width 32"
    assert {"gpu", "cpu", "date_utc", "versions"} <= report["environment"].keys()
    assert report["environment"]["versions"]["torch"] and report["command"]
    assert report["settings"]["frames"] == "64x48" and report["settings"]["batches"] == [1, 2]
    assert set(report["best_batch"]) == {"backend/loop", "backend/compute", "baseline/loop", "baseline/compute"}
    assert "best batch backend/loop" in r.output and "baseline" in r.output


def test_free_feed_counts_drops(tmp_path):
    out = tmp_path / "bench.json"
    r = bench("--backend", "onnxruntime", "--feed", "free", "--baseline", "none", "--json", str(out))
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert [row["role"] for row in rows] == ["backend", "backend"]
    assert all(row["fps"] > 0 and row["vs_baseline"] is None for row in rows)
    assert sum(row["dropped"] for row in rows) > 0  # fps=0 reader outruns the loop; drop_oldest counts it


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorrtt"], "--backend must be one of auto, tensorrt"),
    (["--frames", "1920by1080"], "--frames must be WIDTHxHEIGHT"),
    (["--batches", "0,4"], "--batches must be"),
    (["--feed", "fast"], "--feed must be closed, free"),
    (["--mode", "compue"], "Did you mean 'compute'"),
])
def test_bad_arguments_exit_2(args, message):
    r = bench(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_bundle_or_synthetic_width_required():
    r = runner.invoke(app, ["bench"], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "either a BUNDLE or --synthetic-model" in r.output


def test_parsers():
    assert parse_frames("1920x1080") == (1080, 1920)
    assert parse_batches("1, 4,4,8") == (1, 4, 8)
    assert parse_feed("closed") == "closed" and parse_feed("500") == 500.0
    with pytest.raises(ConfigError, match="found 'x'"):
        parse_batches("x")
    with pytest.raises(ConfigError, match="--seconds must be > 0"):
        BenchSettings(seconds=0)


@pytest.mark.parametrize("changes, named", [
    ({"seconds": float("inf")}, "--seconds"), ({"seconds": float("nan")}, "--seconds"),
    ({"warmup_s": float("inf")}, "--warmup"), ({"torch_threads": 10**20}, "--threads"),
    ({"queue_size": 10**20}, "--queue"),
])
def test_bench_settings_refuse_what_ran_forever_or_overflowed(changes, named):
    """--seconds / --warmup inf ran forever, --threads past 2**63 overflowed in torch, --queue 1e20 never filled."""
    with pytest.raises(ConfigError, match=named):
        BenchSettings(**changes)
    BenchSettings(seconds=86_400, warmup_s=86_400, torch_threads=1024, queue_size=1_000_000)



def test_loop_batches_above_the_stations_limit_are_refused_before_any_row_is_timed():
    """--batches 1,16,512 timed every earlier row, then failed at 512 (LoopSettings caps max_batch at 256), naming
    --max-batch; the compute mode, which runs no loop, still takes it."""
    with pytest.raises(ConfigError, match=r"--batches: the loop mode .* at most 256 frames per call.*found 512"):
        BenchSettings(batches=(1, 16, 512))
    assert BenchSettings(batches=(1, 512), mode="compute").batches == (1, 512)

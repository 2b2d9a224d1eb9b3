"""Command-line flags of ``run``, ``bench`` and ``collect`` that the station file would refuse, or that stop nothing
or everything: each is refused before anything starts, with exit code 2 and an error naming the flag."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fair_edge.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [*map(str, args)], env={"COLUMNS": "400"})


def refused(result, *parts: str) -> bool:
    text = " ".join(result.output.split())   # rich may wrap a long error line
    return result.exit_code == 2 and all(p in text for p in parts)


@pytest.mark.parametrize("args, parts", [
    (["--max-frames", "0"], ["--max-frames: expected a number of inspected frames >= 1, found 0"]),
    (["--max-frames", "-1"], ["--max-frames: expected a number of inspected frames >= 1, found -1"]),
    (["--duration", "-1"], ["--duration: expected a finite number of seconds > 0, found -1"]),
    (["--duration", "0"], ["--duration: expected a finite number of seconds > 0, found 0"]),
    (["--duration", "nan"], ["--duration: expected a finite number of seconds > 0, found nan"]),
    (["--duration", "inf"], ["--duration: expected a finite number of seconds > 0, found inf"]),
    (["--max-batch", "4", "--max-wait-ms", "inf"], ["batching.max_wait_ms (--max-wait-ms): expected a finite number",
                                                    "found inf"]),
    (["--max-wait-ms", "nan"], ["(--max-wait-ms): expected a finite number", "found nan"]),
    (["--max-batch", "4", "--max-wait-ms", "1e20"],
     ["(--max-wait-ms): expected a number in [0, 86400000], found 1e+20"]),
])
def test_run_refuses_flags_that_would_crash_or_never_or_at_once_stop(tmp_path, args, parts):
    """--max-frames 0 / -1 and --duration -1 stopped the station at once with exit 0, --duration nan never
    stopped it, and --max-wait-ms inf crashed the loop with an OverflowError (exit 1, no summary.json)."""
    r = invoke("run", "--source", tmp_path, "--console", "off", "--out", tmp_path / "out", *args)
    assert refused(r, *parts), r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, parts", [
    (["--max-wait-ms", "inf"], ["(--max-wait-ms): expected a finite number", "found inf"]),
    (["--max-wait-ms", "nan"], ["(--max-wait-ms): expected a finite number", "found nan"]),
    (["--max-wait-ms", "1e300"], ["(--max-wait-ms): expected a number in [0, 86400000]"]),
    (["--feed", "inf"], ["--feed: expected closed, free, or a finite line rate", "found 'inf'"]),
    (["--feed", "1e-300"], ["--feed: expected closed, free, or a finite line rate", "found '1e-300'"]),
])
def test_bench_refuses_waits_and_feeds_that_crash_its_threads(tmp_path, args, parts):
    """bench --max-wait-ms inf ran (NaN silently); --feed inf / 1e-300 crashed the feeding thread (OverflowError)."""
    r = invoke("bench", "--synthetic-width", 32, "--image-size", 32, "--frames", "64x48", "--batches", 1,
               "--seconds", 0.2, "--warmup", 0, "--threads", 1, "--baseline", "none", "--json", tmp_path / "b.json",
               *args)
    assert refused(r, *parts), r.output
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("duration", ["inf", "1e20", "nan", "-1", "0"])
def test_collect_refuses_a_duration_its_timer_cannot_wait(tmp_path, duration):
    """collect --duration inf killed the stop timer's thread with an OverflowError and the duration was ignored."""
    (tmp_path / "src").mkdir()
    r = invoke("collect", tmp_path / "out", "--source", tmp_path / "src", "--duration", duration)
    assert refused(r, "--duration must be > 0 seconds and at most 9223372036", f"found {float(duration):g}"), r.output
    assert not (tmp_path / "out").exists()

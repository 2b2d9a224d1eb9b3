"""Ten console clients cost the inspection loop nothing that matters: the same replayed line with 0 and
10 clients (each holding the event stream and fetching the live image after every event) inspects
every frame, drops none, and fires every reject pulse on time (benchmarks/bench_console_load.py;
its figures on a larger model are in BENCHMARKS.md)."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("pymodbus")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_console_load.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_console_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ten_clients_are_served_while_the_station_inspects_every_frame(station_bundles, conveyor_dir, tmp_path):
    """Accounting with and without ten console clients: every frame inspected, none dropped, NG parts found, every
    client served a stream of events. Whether the clients slow the loop or the pulses (frames/s, share of pulses on
    time) is a timing claim: `benchmarks/bench_console_load.py` measures it as a ratio in one run (BENCHMARKS.md,
    "The operator console's cost to the loop"); a loaded CI machine cannot tell it from its own load."""
    bench = load_script()
    bundle = station_bundles[0]
    runs = {n: bench.measure(bundle.root, conveyor_dir, tmp_path / f"c{n}", clients=n, fps=15, frames=60,
                             threshold=bundle.threshold.value) for n in (0, 10)}
    print(runs)  # the figures (pytest -s shows them)
    for n, r in runs.items():
        assert r["inspected"] == 60 and r["dropped"] == 0 and r["ng"] > 0, r
    assert runs[0]["clients_served"] == 0 and runs[0]["client_events"] == 0
    assert runs[10]["clients_served"] == 10 and runs[10]["client_events"] >= 10 * 5

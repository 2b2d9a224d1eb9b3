"""Two stations on one machine, one metrics port: the second is refused ("pick another port"), and port 0 (any free
port) was advised while the port it found was named nowhere (logged at INFO only, hidden by default; the console's
URL is printed): Prometheus had nothing to scrape and the operator no way to find it but lsof. The station now prints
`metrics: URL` among its start lines, as `console: URL`, and the refusal says where a port 0 is named and that
Prometheus scrapes a fixed one."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest

from fair_edge.errors import MetricsError
from fair_edge.line.metrics import Metrics
from fair_edge.line.settings import MetricsSettings, RecordSettings
from fair_edge.station.config import CameraSettings, ConsoleSettings, StationConfig


def scraped(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


def test_a_station_on_metrics_port_0_prints_the_url_it_serves(station_bundles, conveyor_dir, tmp_path):
    """`metrics: {enabled: true, port: 0}`: a start line names http://127.0.0.1:PORT/metrics with the port found,
    and /metrics answers there while the station runs."""
    from fair_edge.station.run import run_station

    out = tmp_path / "out"
    cfg = StationConfig(camera=CameraSettings(source=str(conveyor_dir)), bundle=station_bundles[0].root,
                        backend="onnxruntime", output=out, record=RecordSettings(dir=out),
                        metrics=MetricsSettings(enabled=True, port=0), console=ConsoleSettings(enabled=False))
    lines, pages = [], []

    def on_start(line: str) -> None:
        lines.append(line)
        if line.startswith("metrics: "):
            pages.append(scraped(line.removeprefix("metrics: ")))

    run_station(cfg, threading.Event(), max_frames=2, on_start=on_start)
    named = [line for line in lines if line.startswith("metrics: ")]
    assert len(named) == 1, lines
    host_port = named[0].removeprefix("metrics: http://").removesuffix("/metrics")
    assert host_port.startswith("127.0.0.1:") and int(host_port.split(":")[1]) > 0, named
    assert b"fair_edge_frames_total" in pages[0]


def test_a_taken_metrics_port_is_refused_saying_where_port_0_is_named():
    """The refusal's advice holds: a port per station (Prometheus scrapes a fixed one); 0 prints the one found."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(MetricsError) as refused:
            Metrics(MetricsSettings(enabled=True, port=taken.getsockname()[1])).start()
    text = str(refused.value)
    assert "pick another port, one per station" in text and "Prometheus" in text, text
    assert "'metrics: URL'" in text, text


def test_the_metrics_url_names_the_port_found_and_brackets_an_ipv6_host():
    metrics = Metrics(MetricsSettings(enabled=True, port=0)).start()
    try:
        assert metrics.url == f"http://127.0.0.1:{metrics.port}/metrics" and metrics.port > 0
    finally:
        metrics.close()
    assert Metrics(MetricsSettings(enabled=True, host="::1", port=9108)).url == "http://[::1]:9108/metrics"


def test_a_station_of_several_cameras_prints_its_metrics_url_too(station_bundles, conveyor_dir, tmp_path):
    """run_cell prints the same start line (its console's URL is printed there as well)."""
    from fair_edge.station.cell import run_cell
    from fair_edge.station.views import GroupSettings, ViewSettings

    out = tmp_path / "out"
    cameras = tuple(ViewSettings(name, f"folder:{conveyor_dir}") for name in ("top", "side"))
    cfg = StationConfig(bundle=station_bundles[0].root, backend="onnxruntime", output=out,
                        record=RecordSettings(dir=out), cameras=cameras, group=GroupSettings(match="sequence"),
                        metrics=MetricsSettings(enabled=True, port=0), console=ConsoleSettings(enabled=False))
    lines: list[str] = []
    run_cell(cfg, threading.Event(), max_frames=2, on_start=lines.append)
    assert [line for line in lines if line.startswith("metrics: http://127.0.0.1:")], lines

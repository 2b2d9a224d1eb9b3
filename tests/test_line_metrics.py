"""Prometheus metrics scraped over 127.0.0.1."""

from __future__ import annotations

import urllib.request

import pytest

pytest.importorskip("prometheus_client")

from fair_edge.errors import MetricsError  # noqa: E402
from fair_edge.line.metrics import Metrics  # noqa: E402
from fair_edge.line.settings import MetricsSettings  # noqa: E402
from fair_edge.records import Verdict  # noqa: E402


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_scrape_counts_latency_and_watched_components():
    stats = {"late": 2, "sink_errors": 1, "pending": 3}
    with Metrics(MetricsSettings(enabled=True, port=0)).start() as m:
        assert m.settings.host == "127.0.0.1"
        for i in range(5):
            m.observe(Verdict(i, 1.0, 0.9 if i % 2 else 0.1, 0.5, bool(i % 2), 1.0 + 0.012))
        m.count_drop("camera", 3)
        m.watch("reject", lambda: dict(stats))
        stats["late"] = 4
        text = _scrape(m.port)
    assert "fair_edge_frames_total 5.0" in text
    assert "fair_edge_ng_total 2.0" in text
    assert 'fair_edge_dropped_total{stage="camera"} 3.0' in text
    assert 'fair_edge_latency_seconds_bucket{le="0.02"} 5.0' in text
    assert 'fair_edge_latency_seconds_bucket{le="0.01"} 0.0' in text
    assert 'fair_edge_reject_total{event="late"} 4.0' in text
    assert 'fair_edge_reject_total{event="sink_errors"} 1.0' in text
    assert "fair_edge_reject_pending 3.0" in text


def test_port_in_use_is_a_metrics_error():
    with Metrics(MetricsSettings(port=0)).start() as m:
        with pytest.raises(MetricsError, match="metrics.port"):
            Metrics(MetricsSettings(port=m.port)).start()


def test_close_frees_the_port_and_is_safe_twice():
    m = Metrics(MetricsSettings(port=0)).start()
    port = m.port
    assert "fair_edge_frames_total 0.0" in _scrape(port)
    m.close()
    m.close()
    with pytest.raises(OSError):   # nothing serves there any more
        _scrape(port)
    with Metrics(MetricsSettings(port=port)).start() as again:   # a restarted station gets its port back
        assert again.port == port and "fair_edge_frames_total 0.0" in _scrape(port)


def test_an_idle_connection_is_dropped(monkeypatch):
    """A client that connects and says nothing held a server thread forever (1000 idle sockets: 1000 threads).
    Now the server gives up on it after IDLE_TIMEOUT_S (0.2 s here; the client waits up to 30 s) and closes it,
    ending its thread; scrapes go on."""
    import socket

    from fair_edge.line import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "IDLE_TIMEOUT_S", 0.2, raising=False)
    with Metrics(MetricsSettings(port=0)).start() as m:
        idle = [socket.create_connection(("127.0.0.1", m.port), timeout=30) for _ in range(5)]
        try:
            for sock in idle:
                assert sock.recv(1) == b"", "expected the server to close an idle connection"
        finally:
            for sock in idle:
                sock.close()
        assert "fair_edge_frames_total 0.0" in _scrape(m.port)

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

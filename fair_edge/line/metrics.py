"""Prometheus metrics of a station, on its own registry and HTTP endpoint (127.0.0.1 by default).

Exposed (names as scraped):
- ``fair_edge_frames_total``, ``fair_edge_ng_total``: verdicts observed, NG verdicts (a station of several
  cameras: views, not parts; its parts are ``fair_edge_parts_total{event}``, watched).
- ``fair_edge_dropped_total{stage}``: frames dropped before a verdict; the station counts
  ``stage="camera_queue"`` (``DROP_STAGE_QUEUE``: dropped by the capture queue's full policy; one row each in the
  log), a sample from the start (0 until the first drop).
- ``fair_edge_latency_seconds``: histogram of capture -> verdict latency.
- ``fair_edge_score``: last anomaly score (gauge).
- ``fair_edge_<component>_total{event}``: counters of watched components, read at scrape time,
  e.g. ``fair_edge_reject_total{event="late_verdicts"}``, ``{event="sink_errors"}``,
  ``fair_edge_recorder_total{event="dropped"}``, ``fair_edge_handshake_total{event="not_inspected"}``; gauges such as
  ``fair_edge_reject_pending``, ``fair_edge_handshake_connected`` (a bool ``stats()`` value is exported 0 / 1).
- ``fair_edge_<component>_total{<label>, event}``: counters of components with one set per label
  (``watch_counters_by``), e.g. each lane's gate: ``fair_edge_reject_total{lane="left", event="sink_missed"}``,
  its gauges ``fair_edge_reject_pending{lane="left"}``.
- ``fair_edge_<component>_<gauge>{<label>}``: gauges of components with one value per label
  (``watch_by``), e.g. each camera's drift: ``fair_edge_drift_camera_psi{camera="left"}``.

A component is watched once under its name (a second ``watch*`` of one name is a MetricsError: two families of
one name would make the exposition unreadable). A key a component leaves out of its ``stats()`` has no sample
(the drift watch's ``psi`` before it has a value).

Each connection is served by a thread of its own that gives up on a client silent for ``IDLE_TIMEOUT_S``:
idle sockets (a scanner, a stuck scraper) are dropped instead of holding a thread each forever.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import MetricsError
from ..records import Verdict
from .close_cut import cut_note
from .settings import MetricsSettings

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
IDLE_TIMEOUT_S = 10.0   # a connection silent this long (no request, or a request cut short) is dropped
CLOSE_S = 2.0   # close(): most time for the server's thread to end after its shutdown, seconds
DROP_STAGE_QUEUE = "camera_queue"   # fair_edge_dropped_total{stage=...}: dropped by the capture queue's policy
StatsFn = Callable[[], dict[str, int]]
LabelledFn = Callable[[], dict[str, dict[str, float]]]


class _StatsCollector:
    """Turns ``stats()`` dicts of watched components into metric families at scrape time."""

    def __init__(self) -> None:
        self._watched: list[tuple[str, StatsFn, frozenset[str]]] = []
        self._labelled: list[tuple[str, str, LabelledFn]] = []
        self._counted: list[tuple[str, str, LabelledFn, frozenset[str]]] = []
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def add(self, name: str, stats: StatsFn, gauges: Iterable[str]) -> None:
        with self._lock:
            self._claim(name)
            self._watched.append((name, stats, frozenset(gauges)))

    def add_labelled(self, name: str, label: str, stats: LabelledFn) -> None:
        with self._lock:
            self._claim(name)
            self._labelled.append((name, label, stats))

    def add_counted(self, name: str, label: str, stats: LabelledFn, gauges: Iterable[str]) -> None:
        with self._lock:
            self._claim(name)
            self._counted.append((name, label, stats, frozenset(gauges)))

    def _claim(self, name: str) -> None:
        """(under the lock) Refuse a component name already watched: its families would be exported twice."""
        if name in self._names:
            raise MetricsError(f"metrics: expected one component named {name!r}, found it watched twice "
                               f"(fair_edge_{name}_* would be exported twice); watch it once")
        self._names.add(name)

    def collect(self):
        with self._lock:
            watched, labelled, counted = list(self._watched), list(self._labelled), list(self._counted)
        for name, label, stats in labelled:
            yield from _gauges_by(name, label, stats)
        for name, stats, gauges in watched:
            yield from _counters(name, stats, gauges)
        for name, label, stats, gauges in counted:
            yield from _counters_by(name, label, stats, gauges)


def _gauges_by(name: str, label: str, stats: LabelledFn):
    """``fair_edge_<name>_<key>{<label>}`` gauge families from ``stats()`` ({label value: {key: value}})."""
    from prometheus_client.core import GaugeMetricFamily

    rows = _read(name, stats)
    families: dict[str, GaugeMetricFamily] = {}
    for value_of_label, values in (rows or {}).items():
        for key, value in sorted(values.items()):
            family = families.get(key)
            if family is None:
                family = families[key] = GaugeMetricFamily(
                    f"fair_edge_{name}_{key}", f"{name} {key} by {label}", labels=[label])
            family.add_metric([value_of_label], value)
    yield from families.values()


def _counters(name: str, stats: StatsFn, gauges: frozenset[str]):
    """``fair_edge_<name>_total{event}`` from ``stats()``, its ``gauges`` keys as ``fair_edge_<name>_<key>``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    values = _read(name, stats)
    if values is None:
        return
    counter = CounterMetricFamily(f"fair_edge_{name}", f"{name} events", labels=["event"])
    for key, value in sorted(values.items()):
        if key in gauges:
            yield GaugeMetricFamily(f"fair_edge_{name}_{key}", f"{name} {key}", value=value)
        else:
            counter.add_metric([key], value)
    yield counter


def _counters_by(name: str, label: str, stats: LabelledFn, gauges: frozenset[str]):
    """``fair_edge_<name>_total{<label>, event}`` from ``stats()`` ({label value: {key: value}}), its ``gauges`` keys
    as ``fair_edge_<name>_<key>{<label>}``: one family each, whatever the number of label values."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    rows = _read(name, stats)
    if rows is None:
        return
    counter = CounterMetricFamily(f"fair_edge_{name}", f"{name} events by {label}", labels=[label, "event"])
    families: dict[str, GaugeMetricFamily] = {}
    for value_of_label, values in rows.items():
        for key, value in sorted(values.items()):
            if key not in gauges:
                counter.add_metric([value_of_label, key], value)
                continue
            family = families.get(key)
            if family is None:
                family = families[key] = GaugeMetricFamily(
                    f"fair_edge_{name}_{key}", f"{name} {key} by {label}", labels=[label])
            family.add_metric([value_of_label], value)
    yield counter
    yield from families.values()


def _read(name: str, stats: Callable[[], dict]) -> dict | None:
    """``stats()`` of a watched component, or None when it raises (logged, and the component left out of this
    scrape): a broken component must not break the scrape."""
    try:
        return stats()
    except Exception:  # noqa: BLE001 - a broken component must not break the scrape
        log.exception("metrics: stats() of %s failed", name)
        return None


class _IdleTimeoutHandler(WSGIRequestHandler):
    """Serves one connection; its socket times out after ``timeout`` seconds without a byte (set per server by
    ``serve_metrics``), which ends the connection and its thread. Logs no request."""

    timeout = IDLE_TIMEOUT_S

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:   # an idle client: drop it (socketserver closes the socket)
            pass

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, daemon threads (never waited for at close)."""

    daemon_threads = True


def serve_metrics(host: str, port: int, registry, idle_timeout_s: float) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` (prometheus_client's WSGI app) on host:port (0 = any free port) in a daemon thread,
    dropping a connection silent for ``idle_timeout_s`` seconds. Returns (server, its thread); OSError when the
    port cannot be bound."""
    from prometheus_client import make_wsgi_app

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type("MetricsServer", (_ThreadingServer,), {"address_family": family})
    handler_class = type("MetricsHandler", (_IdleTimeoutHandler,), {"timeout": idle_timeout_s})
    server = make_server(address[0], port, make_wsgi_app(registry), server_class, handler_class)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread


class Metrics:
    """Station metrics. ``observe(verdict)`` per verdict, ``count_drop(stage)`` per lost frame,
    ``watch(name, stats_fn)`` for components with counters (scheduler, recorder, sinks).
    ``start()`` serves them over HTTP; ``close()`` stops the server (safe twice)."""

    def __init__(self, settings: MetricsSettings = MetricsSettings(),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as exc:
            raise MetricsError("metrics need prometheus-client: pip install "
                               "'fair-edge[metrics]', or set metrics.enabled: false") from exc
        self.settings = settings
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("fair_edge_frames", "Verdicts observed", registry=r)
        self.ng = Counter("fair_edge_ng", "NG verdicts", registry=r)
        self.drops = Counter("fair_edge_dropped", "Frames dropped before a verdict", ["stage"],
                             registry=r)
        self.drops.labels(stage=DROP_STAGE_QUEUE)   # a sample (0) before the first drop: rate() and alerts see it
        self.latency = Histogram("fair_edge_latency_seconds", "Capture to verdict latency",
                                 buckets=buckets, registry=r)
        self.score = Gauge("fair_edge_score", "Last anomaly score", registry=r)
        self._stats = _StatsCollector()
        r.register(self._stats)
        self._server = None
        self._thread: threading.Thread | None = None

    def observe(self, verdict: Verdict) -> None:
        self.frames.inc()
        if verdict.ng:
            self.ng.inc()
        self.latency.observe(max(0.0, verdict.latency_ms / 1000.0))
        self.score.set(math.nan if verdict.score is None else verdict.score)  # Prometheus: NaN = no value

    def on_verdict(self, frame, verdict: Verdict, anomaly_map=None) -> None:
        """The inspector's verdict callback (``Inspector(on_verdict=[...])``)."""
        self.observe(verdict)

    def count_drop(self, stage: str = "camera", n: int = 1) -> None:
        """``n`` more frames lost at ``stage`` (``fair_edge_dropped_total{stage}``; the station's: DROP_STAGE_QUEUE)."""
        self.drops.labels(stage=stage).inc(n)

    def watch(self, name: str, stats: StatsFn, gauges: Iterable[str] = ("pending",)) -> None:
        """Expose ``stats()`` (a dict of counters) as ``fair_edge_<name>_total{event=...}``, its ``gauges`` keys as
        ``fair_edge_<name>_<key>``. MetricsError when ``name`` is watched already."""
        self._stats.add(name, stats, gauges)

    def watch_by(self, name: str, label: str, stats: LabelledFn) -> None:
        """Expose ``stats()`` ({label value: {gauge: value}}, read at scrape time) as gauges
        ``fair_edge_<name>_<gauge>{<label>="..."}``, one sample per label value."""
        self._stats.add_labelled(name, label, stats)

    def watch_counters_by(self, name: str, label: str, stats: LabelledFn, gauges: Iterable[str] = ("pending",)) -> None:
        """Expose ``stats()`` ({label value: {counter: value}}, read at scrape time) as
        ``fair_edge_<name>_total{<label>="...", event="..."}``, its ``gauges`` keys as
        ``fair_edge_<name>_<key>{<label>="..."}``: components of which there are several, such as a lane station's
        gates (``watch_counters_by("reject", "lane", ...)``)."""
        self._stats.add_counted(name, label, stats, gauges)

    def start(self) -> Metrics:
        """Serve ``/metrics`` on settings.host:settings.port (port 0 = any free port); a connection idle for
        ``IDLE_TIMEOUT_S`` is dropped."""
        if self._server is not None:
            return self
        try:
            self._server, self._thread = serve_metrics(self.settings.host, self.settings.port, self.registry,
                                                       idle_timeout_s=IDLE_TIMEOUT_S)
        except OSError as exc:
            raise MetricsError(f"metrics.port: expected a free port on {self.settings.host}, "
                               f"found {self.settings.port} unusable ({exc}); pick another port, one per "
                               "station (the one Prometheus scrapes; 0 = any free port, as a test run may: the "
                               "station prints the one it found at start, 'metrics: URL')") from exc
        log.info("metrics on %s", self.url)
        return self

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else self.settings.port

    @property
    def url(self) -> str:
        """Where ``/metrics`` is served (``http://HOST:PORT/metrics``, the port found for port 0 once started): the
        station prints it at start, beside the console's URL."""
        host = self.settings.host if ":" not in self.settings.host else f"[{self.settings.host}]"
        return f"http://{host}:{self.port}/metrics"

    def render(self) -> bytes:
        """The text exposition (what a scrape returns)."""
        from prometheus_client import generate_latest
        return generate_latest(self.registry)

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """Stop the server; its thread waited for at most ``timeout_s`` (a station's stop: what it has left, at most
        ``CLOSE_S``)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.error("metrics server thread did not stop within %.1f s%s", timeout_s, cut_note())

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The console's defences as a process shared with the station: a bounded number of connections and event streams
(a reader flooding /api/events gets 503, the station's other routes still answer, and the station's open-files limit
is raised at start), and response headers that forbid framing the console (clickjacking) and content sniffing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx

from fair_edge.console import app as console_app, server as console_server
from fair_edge.console.server import ConsoleServer
from fair_edge.console.settings import ConsoleSettings
from test_console_units import api, one_camera_console, verdict

SAFE = {"x-frame-options": "DENY", "content-security-policy": "frame-ancestors 'none'",
        "x-content-type-options": "nosniff"}


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    """A raw /api/events request on a new connection: (the socket, left open; its response head as read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def test_event_streams_above_the_cap_get_503_and_the_other_routes_still_answer(tmp_path):
    """Readers need no token: one holding many /api/events streams open (each never ends) used to take every file
    descriptor of the station's process (the camera reader then crashed, exit 3). Above ``MAX_EVENT_STREAMS`` a
    stream is refused with 503 naming the limit, and /api/state and the pages still answer; a stream closed frees
    its slot."""
    console, _ = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 0.5), None)
    console.feed.settings = ConsoleSettings(port=0, live_fps=0.5)
    limit = console_app.MAX_EVENT_STREAMS
    assert limit < console_server.MAX_CONNECTIONS   # room left for the other routes
    streams = []
    with ConsoleServer(console.feed, console.actions) as server:
        assert server._server.config.limit_concurrency == console_server.MAX_CONNECTIONS
        try:
            for _ in range(limit):
                sock, head = open_stream(server.port)
                streams.append(sock)
                assert head.startswith(b"HTTP/1.1 200"), head
            sock, head = open_stream(server.port)
            streams.append(sock)
            assert head.startswith(b"HTTP/1.1 503"), head
            assert b"connection: close" in head.lower(), head
            body = httpx.get(server.url + "api/events", timeout=10)
            assert body.status_code == 503 and f"at most {limit} open event streams" in body.json()["error"]
            assert httpx.get(server.url + "api/state", timeout=10).json()["count"] == 1
            assert httpx.get(server.url, timeout=10).status_code == 200
            streams.pop(0).close()   # a page closed: its slot is free again (once the server sees it gone)
            with httpx.Client(timeout=10) as client:
                for _ in range(200):
                    with client.stream("GET", server.url + "api/events") as r:
                        if r.status_code == 200:
                            break
                else:
                    raise AssertionError("expected a closed stream's slot to free within 200 tries")
        finally:
            for sock in streams:
                sock.close()


def test_the_station_raises_its_open_files_limit_to_the_hard_limit():
    """A station started under a soft limit of 256 open files (systemd's default soft limit is 1024) runs with its
    hard limit (at most ``OPEN_FILES``): a burst of console readers no longer starves the camera of descriptors."""
    code = ("import resource\n"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "from fair_edge.station.run import OPEN_FILES, raise_open_files_limit\n"
            "raise_open_files_limit()\n"
            "soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
            "want = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)\n"
            "print(soft, max(want, 256))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120)
    assert done.returncode == 0, done.stderr
    soft, want = done.stdout.split()
    assert soft == want, done.stdout


def test_a_station_raises_the_limit_before_it_runs(monkeypatch):
    """`fair-edge run` (``station.cell.run``, one camera or several) raises the limit before the station opens
    anything."""
    from fair_edge.station import cell
    from fair_edge.station.config import StationConfig

    calls = []
    monkeypatch.setattr(cell, "raise_open_files_limit", lambda: calls.append("limit"))
    monkeypatch.setattr(cell, "run_station", lambda cfg, stop, **kwargs: calls.append("station"))
    cell.run(StationConfig(), None)
    assert calls == ["limit", "station"]


def test_every_response_forbids_framing_and_sniffing(tmp_path):
    """The pages, the API, a static file, a 404 and the Host check's 403 all carry X-Frame-Options: DENY,
    Content-Security-Policy: frame-ancestors 'none' and X-Content-Type-Options: nosniff (was: none of them, so a
    hostile page could frame the live page and steal a click on 'acknowledge alarm')."""
    console, _ = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 0.5), None)
    client = api(console)
    answers = {path: client.get(path) for path in ("/", "/tune", "/gallery", "/api/state", "/static/common.js",
                                                   "/files/none.txt")}
    answers["post"] = client.post("/api/review", content=json.dumps({"seq": 1}))   # 415: no JSON type
    answers["other host"] = client.get("/", headers={"Host": "evil.example"})
    assert [answers[p].status_code for p in ("/", "/api/state", "/files/none.txt", "post", "other host")] == \
        [200, 200, 404, 415, 403]
    for path, answer in answers.items():
        assert {name: answer.headers.get(name) for name in SAFE} == SAFE, path

"""The console's HTTP edges: request bodies bounded before they are read, files streamed in chunks up to their size
at open, the Host check kept with a token (DNS rebinding), the recorder's folder served for the gallery, one shared
/api/state snapshot per period whatever the pollers, ASCII tokens only, odd JSON and media types answered sanely."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from fair_edge.console import server as console_server
from fair_edge.console import views
from fair_edge.console.app import build_app
from fair_edge.console.server import ConsoleServer
from fair_edge.console.settings import ConsoleSettings
from fair_edge.errors import ConfigError
from fair_edge.line.ng_images import ng_image_path
from fair_edge.records import Frame
from test_console_units import api, one_camera_console, verdict

TOKEN = "s3cret-token-123"
BODY_LIMIT = 64 * 1024


def asgi_get(app, path: str, host: str = "127.0.0.1:8765", on_start=None) -> tuple[int, dict, list[bytes]]:
    """GET ``path`` from an ASGI app in-process: (status, headers, the body messages as sent). ``on_start()`` runs
    when the response starts, before its body is sent."""
    status, headers, chunks = [0], {}, []
    asked = [False]
    never = asyncio.Event()

    async def receive():
        if not asked[0]:
            asked[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()   # no disconnect: the app stops listening once the response ends

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]
            headers.update({k.decode().lower(): v.decode() for k, v in message["headers"]})
            if on_start is not None:
                on_start()
        elif message["type"] == "http.response.body" and message.get("body"):
            chunks.append(bytes(message["body"]))

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"host", host.encode())], "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8765)}
    asyncio.run(app(scope, receive, send))
    return status[0], headers, chunks


# ------------------------------------------------------------------ 1. request bodies
def test_a_body_over_the_limit_is_refused_with_413_naming_the_limit(tmp_path):
    """A JSON body larger than 64 KiB is refused (413) whether it declares its length or streams chunks: parsing
    30-100 MB on the console's thread held the GIL, and the inspection loop, for seconds."""
    console, _ = one_camera_console(tmp_path)
    client = api(console)
    big = json.dumps({"who": "x" * (BODY_LIMIT + 10)}).encode()
    declared = client.post("/api/export", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413, declared.text[:200]
    assert f"at most {BODY_LIMIT} bytes" in declared.json()["error"] and str(len(big)) in declared.json()["error"]

    def pieces():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    streamed = client.post("/api/export", content=pieces(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and f"more than {BODY_LIMIT} bytes" in streamed.json()["error"], streamed.text
    small = client.post("/api/export", json={"who": ""})   # under the limit: the action's own answer
    assert small.status_code == 400 and small.json()["error"].startswith("who:"), small.text


def test_a_declared_oversized_body_is_refused_before_it_is_sent(tmp_path):
    """A real server answers 413 on the Content-Length alone: the body (never sent here) is not waited for."""
    console, _ = one_camera_console(tmp_path)
    console.feed.settings = ConsoleSettings(port=0)
    with ConsoleServer(console.feed, console.actions) as served:
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
            sock.sendall(b"POST /api/export HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000000\r\n\r\n")
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_the_shared_test_console_is_served_on_any_free_port_not_the_default(tmp_path):
    """``one_camera_console`` asks for port 0: the tests that serve it never bind the default 8765, which another
    test run or a station on this machine may hold (two full runs failed on 'found 8765 unusable')."""
    default = ConsoleSettings().port
    console, _ = one_camera_console(tmp_path)
    assert console.feed.settings.port == 0, console.feed.settings
    with ConsoleServer(console.feed, console.actions) as served:
        assert served.port not in (0, default), served.port


def test_deeply_nested_json_is_a_400_not_a_server_error(tmp_path):
    """JSON nested thousands deep is a 400 (was a 500 and a RecursionError traceback in the station log)."""
    console, _ = one_camera_console(tmp_path)
    nested = api(console).post("/api/export", content=b"[" * 50_000, headers={"Content-Type": "application/json"})
    assert nested.status_code == 400 and "expected a JSON object" in nested.json()["error"], nested.text


def test_a_media_type_is_matched_whatever_its_case(tmp_path):
    """APPLICATION/JSON is application/json (media types are case-insensitive): it was refused with 415."""
    console, _ = one_camera_console(tmp_path)
    upper = api(console).post("/api/export", content=json.dumps({"who": ""}).encode(),
                              headers={"Content-Type": "APPLICATION/JSON; charset=UTF-8"})
    assert upper.status_code == 400 and upper.json()["error"].startswith("who:"), upper.text   # reached the action


# ------------------------------------------------------------------ 2. files
def test_a_file_is_streamed_in_chunks_up_to_its_size_when_opened(tmp_path):
    """/files/ sends a file in pieces of at most 64 KiB (30 slow readers of a 64 MB log held 2 GB: each read it
    whole), and only the bytes it had when opened: appended meanwhile, its body still matches its
    Content-Length."""
    console, _ = one_camera_console(tmp_path)
    log = tmp_path / "verdicts.jsonl.1"
    content = bytes(range(256)) * (3 * 4096)   # 3 MiB
    log.write_bytes(content)

    def station_appends():
        with open(log, "ab") as f:
            f.write(b"x" * (1 << 20))

    status, headers, chunks = asgi_get(build_app(console.feed, console.actions, None, threading.Event()),
                                       "/files/verdicts.jsonl.1", on_start=station_appends)
    assert status == 200 and int(headers["content-length"]) == len(content)
    assert max(len(c) for c in chunks) <= 64 * 1024, f"expected pieces of <= 64 KiB, found {max(map(len, chunks))}"
    assert b"".join(chunks) == content


# ------------------------------------------------------------------ 3. Host check with a token
def test_a_token_keeps_the_host_check_for_reads_and_changes(tmp_path):
    """With console.token set a page of another site (DNS rebinding: its own name re-pointed here) read the live
    state, the gallery, the log and the live image: its Host is refused now, token or not; a name listed in
    console.allowed_hosts passes, and the token still guards changes."""
    console, _ = one_camera_console(tmp_path)
    (tmp_path / "verdicts.jsonl").write_text("{}\n")
    body = {"threshold": 4.0, "confirm": True, "who": "x"}
    client = api(console, token=TOKEN)
    for path in ("/api/state", "/api/gallery", "/files/verdicts.jsonl", "/api/live.jpg", "/"):
        r = client.get(path, headers={"Host": "rebind.attacker.example:8765"})
        assert r.status_code == 403 and "console.allowed_hosts" in r.json()["error"], (path, r.status_code)
    r = client.post("/api/threshold", json=body,
                    headers={"Host": "rebind.attacker.example", "X-Fair-Edge-Token": TOKEN})
    assert r.status_code == 403

    console.feed.settings = ConsoleSettings(port=0, token=TOKEN, allowed_hosts=("console.plant.example",))
    client = api(console, token=TOKEN)
    assert client.get("/api/state", headers={"Host": "Console.Plant.Example:8765"}).status_code == 200
    assert client.post("/api/threshold", json=body, headers={"Host": "console.plant.example"}).status_code == 403
    r = client.post("/api/threshold", json=body, headers={"Host": "console.plant.example", "X-Fair-Edge-Token": TOKEN})
    assert r.status_code == 200, r.text


def test_off_loopback_any_ip_address_passes_and_names_must_be_listed(tmp_path):
    """Bound to every interface, the console is reached by whatever address the station has (an IP address is no
    name DNS can re-point); a name must be in console.allowed_hosts. On loopback another machine's address is
    refused as before."""
    console, _ = one_camera_console(tmp_path)
    console.feed.settings = ConsoleSettings(host="0.0.0.0", port=0, token=TOKEN)
    client = api(console, token=TOKEN)
    for host in ("192.168.7.20:8765", "[fe80::1]:8765", "10.0.0.5", "localhost:8765"):
        assert client.get("/api/state", headers={"Host": host}).status_code == 200, host
    for host in ("station7.plant.example:8765", "rebind.attacker.example"):
        r = client.get("/api/state", headers={"Host": host})
        assert r.status_code == 403 and "any IP address" in r.json()["error"], host
    console.feed.settings = ConsoleSettings(port=0, token=TOKEN)
    assert api(console, token=TOKEN).get("/api/state", headers={"Host": "10.0.0.5:8765"}).status_code == 403


def test_allowed_hosts_are_read_from_the_station_file_and_checked():
    settings = ConsoleSettings.from_dict({"allowed_hosts": ["Station7.Plant.Example", "console.local"]})
    assert settings.allowed_hosts == ("station7.plant.example", "console.local")
    assert ConsoleSettings.from_dict({"allowed_hosts": "one.example"}).allowed_hosts == ("one.example",)
    for bad in ("http://x.example", "x.example:8765", "", 7):
        with pytest.raises(ConfigError, match=r"console.allowed_hosts\[0\]: expected a host name"):
            ConsoleSettings.from_dict({"allowed_hosts": [bad]})
    with pytest.raises(ConfigError, match="console.allowed_hosts: expected a list of host names"):
        ConsoleSettings.from_dict({"allowed_hosts": {"a": 1}})


def test_a_console_bound_off_loopback_warns_that_reads_need_no_token():
    off = console_server.open_reads_warning(ConsoleSettings(host="0.0.0.0", token=TOKEN), 8765)
    assert "'0.0.0.0'" in off and "port 8765" in off and "without the token" in off and "127.0.0.1" in off
    assert console_server.open_reads_warning(ConsoleSettings(), 8765) == ""


# ------------------------------------------------------------------ 4. record.dir elsewhere
def test_the_gallery_shows_overlays_saved_under_a_record_dir_outside_the_output(tmp_path):
    """record.dir away from the output folder: the gallery links each NG part's overlay under /records/ (it said
    'no image saved'), which serves it; nothing outside that folder is served there."""
    out, rec_dir = tmp_path / "out", tmp_path / "rec"
    out.mkdir()
    (rec_dir / "ng").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("outside")
    console, _ = one_camera_console(out, keep_frames=0)
    console.feed.recorder = SimpleNamespace(dir=rec_dir, settings=SimpleNamespace(image_format="png"))
    console.observe(None, verdict(7, 2.0, ng=True), None)
    overlay = ng_image_path(rec_dir, console.feed.run_id, 7, "overlay", "png")
    overlay.write_bytes(b"\x89PNG overlay")
    client = api(console)
    image = client.get("/api/gallery").json()["parts"][0]["image"]
    assert image == f"/records/ng/{overlay.name}", image
    served = client.get(image)
    assert served.status_code == 200 and served.content == b"\x89PNG overlay"
    for bad in ("/records/../secret.txt", "/records/%2e%2e/secret.txt", "/records//etc/passwd"):
        r = client.get(bad)
        assert r.status_code == 404 and b"outside" not in r.content and b"root:" not in r.content, bad
    console.feed.recorder = None
    assert client.get(image).status_code == 404   # no recorder: no /records/


# ------------------------------------------------------------------ 5. one shared /api/state
def test_api_state_serves_the_shared_snapshot_whatever_the_pollers(tmp_path, monkeypatch):
    """Eight pollers of /api/state within one period cost one build of the live state (each request rebuilt it on
    the event loop: 8 pollers halved the inspection rate). The period here is 1e9 s: no clock can pass it."""
    console, _ = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 0.5), None)
    console.feed.settings = ConsoleSettings(port=0, live_fps=1e-9)
    builds, real = [], views.live_state
    monkeypatch.setattr(views, "live_state", lambda feed, actions: builds.append(1) or real(feed, actions))
    client = api(console)
    versions = {client.get("/api/state").json()["version"] for _ in range(8)}
    assert len(builds) == 1 and versions == {1}, (len(builds), versions)



def test_an_action_shows_on_the_next_read_of_the_shared_state(tmp_path):
    """An operator's action makes the shared snapshot stale: the label just given shows on the next /api/state,
    not up to one period later (the period here is 1e9 s)."""
    console, _ = one_camera_console(tmp_path)
    console.observe(Frame(1, 0.0, np.zeros((8, 8, 3), np.uint8)), verdict(1, 2.5, ng=True), None)   # reviewed with it
    console.feed.settings = ConsoleSettings(port=0, live_fps=1e-9)
    client = api(console)
    assert [r["review"] for r in client.get("/api/state").json()["recent"]] == [""]
    answer = client.post("/api/review", json={"seq": 1, "label": "defect", "who": "ann"})
    assert answer.status_code == 200, answer.text
    assert [r["review"] for r in client.get("/api/state").json()["recent"]] == ["defect"]


# ------------------------------------------------------------------ 6. ASCII tokens
@pytest.mark.parametrize("token, where", [("pässwort-geheim-1", "'ä' at position 1"),
                                          ("correct horse battery", "' ' at position 7")])
def test_a_token_an_http_header_cannot_carry_is_refused_naming_the_character(token, where):
    """A header is read as latin-1 bytes: a non-ASCII token sent as UTF-8 never matched, so every change was
    refused; a space is trimmed by clients. Both are refused when the settings are read or checked."""
    with pytest.raises(ConfigError, match=f"console.token: expected printable ASCII.*found {where}.*token_hex"):
        ConsoleSettings.from_dict({"token": token})
    with pytest.raises(ConfigError, match="printable ASCII"):
        ConsoleSettings(token=token).check()
    ConsoleSettings(token="Ab1-_.~!@#$%^&*()+=").check()   # printable ASCII: fine

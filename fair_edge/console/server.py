"""The console's web server: Starlette routes served by uvicorn in a thread of its own.

Pages (plain HTML/CSS/JS shipped in ``static/``): ``/`` live view, ``/gallery`` NG review,
``/tune`` threshold tuning and model swap. Updates are pushed over server-sent events
(``/api/events``): one ``state`` event whenever the live state changed (a new part, the camera, a
fault, ...), at most ``live_fps`` a second, and a comment line every 10 s to keep proxies from closing
the stream. Each snapshot carries a ``version`` (growing with its content), shared with ``/api/state``: a
stream's first event is never older than the stream, and a page drops a snapshot older than one it has.

Security: the server binds ``console.host`` (127.0.0.1 unless configured). Every request that
changes something is a POST with a JSON body (a cross-site form cannot send one without a CORS
preflight, which this server never grants) and, when ``console.token`` is set (required off
loopback), the header ``X-Fair-Edge-Token``. Without a token, a request whose ``Host`` is not this
machine (the bind address, localhost, a loopback address) is refused with 403: a page of another site
whose name was re-pointed at 127.0.0.1 (DNS rebinding) reads and changes nothing. Files are served only
from the station's output folder: a path that resolves outside it (``..``, an absolute path, a symlink)
is refused with 404.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import mimetypes
import threading
import time
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fair_edge.console import views
from fair_edge.console.actions import AlarmChanged, StationActions, StationStarting
from fair_edge.console.feed import StationFeed
from fair_edge.console.render import JpegCache
from fair_edge.console.settings import is_loopback
from fair_edge.errors import ConfigError, FairEdgeError

log = logging.getLogger(__name__)
STATIC = Path(str(resources.files("fair_edge.console") / "static"))
PAGES = {"/": "live.html", "/gallery": "gallery.html", "/tune": "tune.html"}
KEEPALIVE_S = 10.0
TOKEN_HEADER = "x-fair-edge-token"


def safe_file(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it is a file inside ``root`` after resolving links and ``..``; else None."""
    root = root.resolve()
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


class SharedState:
    """The live state as JSON, rebuilt at most once per ``period`` seconds whatever the number of connected
    browsers (each gets the same text), new parts or not: a camera lost or a fault raised shows without a
    verdict. ``version`` grows only when the content changed (its ``time`` aside), so a stream sends a
    snapshot when it changed and a page can tell an older snapshot from a newer one."""

    def __init__(self, feed: StationFeed, actions: StationActions, period: float) -> None:
        self.feed, self.actions, self.period = feed, actions, period
        self._lock = threading.Lock()
        self._text, self._content, self._version, self._at = "", "", 0, float("-inf")

    def get(self, since: float | None = None) -> tuple[int, str]:
        """(version, JSON text) of a snapshot built less than ``period`` ago, and not before ``since`` (a
        ``time.monotonic()``: a stream's opening, a page's fetch) where given."""
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.period or (since is not None and self._at < since):
                self._build(now)
            return self._version, self._text

    def _build(self, now: float) -> None:
        state = views.live_state(self.feed, self.actions)
        content = json.dumps({k: v for k, v in state.items() if k != "time"})
        if content != self._content:
            self._version += 1
            self._content, self._text = content, json.dumps({**state, "version": self._version})
        self._at = now


def build_app(feed: StationFeed, actions: StationActions, token: str | None, stop: threading.Event) -> Starlette:
    """The console's ASGI app over one station feed."""
    cache = JpegCache()
    shared = SharedState(feed, actions, 1.0 / feed.settings.live_fps)

    def page(name: str):
        async def handler(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type="text/html")
        return handler

    async def state(request: Request) -> Response:
        _, text = shared.get(since=time.monotonic())   # fresh, and the newest snapshot a stream sends from now on
        return Response(text, media_type="application/json")

    async def events(request: Request) -> Response:
        async def stream():
            opened = last_sent = time.monotonic()
            seen = 0   # versions start at 1: the first snapshot (built after the stream opened) is always sent
            period = 1.0 / feed.settings.live_fps
            while not stop.is_set():
                if await request.is_disconnected():
                    return
                version, text = shared.get(since=opened)
                if version > seen:
                    seen, last_sent = version, time.monotonic()
                    yield f"event: state\ndata: {text}\n\n"
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(period)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def live_jpg(request: Request) -> Response:
        data = await asyncio.to_thread(views.latest_jpeg, feed, cache)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"}) if data else \
            Response(status_code=404)

    async def part_jpg(request: Request) -> Response:
        camera = request.path_params.get("camera", "")
        data = await asyncio.to_thread(views.part_jpeg, feed, cache, int(request.path_params["seq"]), camera)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=600"}) if data else \
            Response(status_code=404)

    async def files(request: Request) -> Response:
        path = safe_file(feed.output, request.path_params["path"])
        if path is None:
            return Response("not found", status_code=404)
        # read once: the station may be appending to it (a streamed file would outgrow its Content-Length)
        data = await asyncio.to_thread(path.read_bytes)
        return Response(data, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    async def gallery(request: Request) -> Response:
        # built and encoded in a worker thread: thousands of NG parts take a while, and the live page must not wait
        return await asyncio.to_thread(lambda: JSONResponse(views.gallery(feed, actions)))

    async def tune(request: Request) -> Response:
        value = request.query_params.get("threshold")
        try:
            proposed = float(value) if value not in (None, "") else None
        except ValueError:
            return _error(f"threshold: expected a number, found {value!r}")
        return _run(lambda: actions.tune(proposed, request.query_params.get("camera")))

    async def post(request: Request) -> Response:
        refused = _refuse(request, token)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error("expected a JSON object in the request body")
        if not isinstance(body, dict):
            return _error("expected a JSON object in the request body")
        handler = POSTS[request.path_params["action"]]
        return await asyncio.to_thread(_run, lambda: handler(actions, body))

    routes = [Route(path, page(name)) for path, name in PAGES.items()] + [
        Route("/api/state", state), Route("/api/events", events), Route("/api/live.jpg", live_jpg),
        Route("/api/part/{seq:int}.jpg", part_jpg), Route("/api/part/{camera:str}/{seq:int}.jpg", part_jpg),
        Route("/api/gallery", gallery), Route("/api/tune", tune),
        Route("/api/swap", lambda r: JSONResponse(actions.swap_status)),
        Route("/api/{action:str}", post, methods=["POST"]),
        Route("/files/{path:path}", files),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    guard = [] if token is not None else [Middleware(LocalHostOnly, bind=feed.settings.host)]
    return Starlette(routes=routes, middleware=guard)


class LocalHostOnly:
    """ASGI middleware of a console without a token: refuses (403, naming the Host found) every request whose
    ``Host`` header is not this machine: the bind address, localhost or a loopback address (127.0.0.0/8,
    [::1]), with any port. A name of another site re-pointed at 127.0.0.1 (DNS rebinding) gets nothing."""

    def __init__(self, app, bind: str) -> None:
        self.app, self.bind = app, bind.strip("[]").lower()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if not self.allowed(host):
                response = _error(f"Host: expected this machine ({self.names()}; any port), found {host or 'none'!r}; "
                                  "open the console as http://127.0.0.1:PORT/, or set console.token to reach it "
                                  "under another name", 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def names(self) -> str:
        """The names a Host may give, for an error."""
        bind = f"[{self.bind}]" if ":" in self.bind else self.bind
        return ", ".join(dict.fromkeys((bind, "localhost", "127.0.0.1", "[::1]")))

    def allowed(self, host: str) -> bool:
        """Whether a Host header (name or address, [IPv6], optional :port) names this machine."""
        name = host.strip().lower()
        if name.startswith("["):   # [::1]:8765
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:   # name:port (a bare IPv6 address has several colons)
            name = name.partition(":")[0]
        return bool(name) and (name == self.bind or is_loopback(name))


# action name -> what it does with the JSON body (each raises ConfigError for bad input); "camera" names the
# camera of a station of several (the view reviewed, the camera whose threshold or bundle changes)
POSTS = {
    "review": lambda a, b: a.review(b.get("seq"), b.get("label"), b.get("who"), b.get("camera")),
    "threshold": lambda a, b: a.apply_threshold(b.get("threshold"), b.get("who"), b.get("confirm"), b.get("camera")),
    "swap": lambda a, b: a.swap(b.get("bundle"), b.get("who"), b.get("camera")),
    "export": lambda a, b: a.export_reviewed(b.get("who")),
    "acknowledge_alarm": lambda a, b: a.acknowledge_alarm(b.get("who"), b.get("alarm")),
}


def _refuse(request: Request, token: str | None) -> Response | None:
    if request.path_params["action"] not in POSTS:
        return JSONResponse({"error": f"unknown action; valid: {', '.join(POSTS)}"}, status_code=404)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _error("expected Content-Type: application/json", 415)
    if token is not None and not hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
        return _error("this action needs the console token (console.token in the station file) in the "
                      "X-Fair-Edge-Token header", 403)
    return None


def _run(fn) -> Response:
    try:
        return JSONResponse(fn())
    except StationStarting as exc:   # no inspector yet: nothing changed, try again shortly
        return _error(str(exc), 503)
    except AlarmChanged as exc:   # another alarm than the one the page showed is latched: nothing cleared
        return _error(str(exc), 409)
    except FairEdgeError as exc:  # bad input, or a change that cannot be made: nothing changed
        return _error(str(exc))


def _error(message: str, status: int = 400) -> Response:
    return JSONResponse({"error": message}, status_code=status)


class ConsoleServer:
    """uvicorn serving the console in a daemon thread. ``start()`` returns once it listens (or raises
    ConfigError naming the port); ``close()`` stops it within about a second (safe twice). Settings built in
    code are checked as the station file's are (``ConsoleSettings.check``): no token off loopback is a
    ConfigError here."""

    def __init__(self, feed: StationFeed, actions: StationActions) -> None:
        import uvicorn

        self.settings = feed.settings
        self.settings.check(serving=True)
        self._stop = threading.Event()
        app = build_app(feed, actions, self.settings.token, self._stop)
        config = uvicorn.Config(app, host=self.settings.host, port=self.settings.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)

    def start(self) -> "ConsoleServer":
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            raise ConfigError(f"console.port: expected a free port on {self.settings.host}, found "
                              f"{self.settings.port} unusable; pick another port (0 = any) or --console off")
        log.warning("console on %s", self.url)
        return self

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.settings.host if ":" not in self.settings.host else f"[{self.settings.host}]"
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self._stop.set()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.error("console server thread did not stop within 5 s")

    def __enter__(self) -> "ConsoleServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The console's web app (``build_app``): Starlette routes over one station's feed and actions.

Pages (plain HTML/CSS/JS shipped in ``static/``): ``/`` live view, ``/gallery`` NG review,
``/tune`` threshold tuning and model swap. Updates are pushed over server-sent events
(``/api/events``): one ``state`` event whenever the live state changed (a new part, the camera, a
fault, ...), at most ``live_fps`` a second, and a comment line every 10 s to keep proxies from closing
the stream. Each snapshot carries a ``version`` (growing with its content), shared with ``/api/state``: a
stream's first event is never older than the stream, and a page drops a snapshot older than one it has. Versions
start again at 1 in a new process (a restarted station): each snapshot also carries the ``epoch`` of its server
process, and a page shows the first snapshot of another epoch whatever its version. ``/api/events`` answers 503 (and
closes the connection) while ``MAX_EVENT_STREAMS`` streams are open; every other route still answers then.

A page's part numbers name parts of the run it was built from (``run`` in its state and gallery): a review posts
that ``run``, and one for a run other than the station's (a page left open across a restart, whose seq now names
another part) is refused with 409 and nothing recorded. A part's image URL (``views.part_url``) carries its run and
model: a browser never shows an earlier run's picture cached under the same seq, and an URL of another run is 404.
``/api/live.jpg?seq=N&c=CAMERA`` is the picture of that view while its frame is kept (the one whose verdict the page
shows beside it), else the latest.

Every request that changes something is a POST with a JSON body of at most ``MAX_BODY_BYTES`` (a cross-site form
cannot send one without a CORS preflight, which this server never grants; a larger body is refused with 413 before it
is read) and, when ``console.token`` is set (required off loopback), the header ``X-Fair-Edge-Token``. Reads need no
token. Every route is behind the Host check and the safe headers (``middleware``); ``/files/`` and ``/records/``
serve only what ``served_files`` allows.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
import time
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fair_edge.console import views
from fair_edge.console.actions import StationActions
from fair_edge.console.feed import StationFeed
from fair_edge.console.middleware import LocalHostOnly, SafeHeaders
from fair_edge.console.refusals import Conflict, StationStarting
from fair_edge.console.render import JpegCache
from fair_edge.console.served_files import serve_file
from fair_edge.errors import FairEdgeError

STATIC = Path(str(resources.files("fair_edge.console") / "static"))
PAGES = {"/": "live.html", "/gallery": "gallery.html", "/tune": "tune.html"}
KEEPALIVE_S = 10.0
TOKEN_HEADER = "x-fair-edge-token"
MAX_BODY_BYTES = 64 * 1024   # an action's JSON is under 1 KB; parsing megabytes would hold the GIL for seconds
MAX_SEQ_DIGITS = 18   # a part number in an image URL: up to 10**18 parts (a longer one names no part)
MAX_EVENT_STREAMS = 32   # open /api/events streams (each never ends): half the connections, the rest for other routes


class SharedState:
    """The live state as JSON, rebuilt at most once per ``period`` seconds whatever the number of connected
    browsers and pollers of /api/state (each gets the same text), new parts or not: a camera lost or a fault
    raised shows without a verdict. A new event stream forces one rebuild (its first event is never older than
    the stream), and so does every action (``stale``): what an operator changed shows on the next read.
    ``version`` grows only when the content changed (its ``time`` aside), so a stream sends a snapshot when it
    changed and a page can tell an older snapshot from a newer one."""

    def __init__(self, feed: StationFeed, actions: StationActions, period: float) -> None:
        self.feed, self.actions, self.period = feed, actions, period
        self._lock = threading.Lock()
        self._text, self._content, self._version, self._at = "", "", 0, float("-inf")
        self.epoch = f"{os.getpid()}-{time.time_ns()}"   # this server process: its versions count from 1

    def get(self, since: float | None = None) -> tuple[int, str]:
        """(version, JSON text) of a snapshot built less than ``period`` ago, and not before ``since`` (a
        ``time.monotonic()``: a stream's opening) where given."""
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.period or (since is not None and self._at < since):
                self._build(now)
            return self._version, self._text

    def stale(self) -> None:
        """Make the next ``get`` rebuild: an operator's action (a review, a threshold) shows on the very next read,
        not up to one period later."""
        with self._lock:
            self._at = float("-inf")

    def _build(self, now: float) -> None:
        state = views.live_state(self.feed, self.actions)
        content = json.dumps({k: v for k, v in state.items() if k != "time"})
        if content != self._content:
            self._version += 1
            self._content, self._text = content, json.dumps({**state, "version": self._version, "epoch": self.epoch})
        self._at = now


class StreamSlots:
    """Counts the open event streams, at most ``limit`` (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take a slot for a new stream; False (nothing taken) while ``limit`` streams are open."""
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1


class SlotStream(StreamingResponse):
    """A streaming response that gives its ``StreamSlots`` slot back when it ends, however it ends (the stream
    stopped, the client left, the server closing)."""

    def __init__(self, content, slots: StreamSlots, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.slots = slots

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.give_back()


def too_many_streams(limit: int) -> Response:
    """The 503 answer to an event stream opened while ``limit`` are open (its connection closed after it)."""
    return JSONResponse({"error": f"/api/events: expected at most {limit} open event streams, found {limit} open "
                                  "already; close console pages left open elsewhere, or poll /api/state instead"},
                        status_code=503, headers={"Connection": "close", "Retry-After": "10"})


def build_app(feed: StationFeed, actions: StationActions, token: str | None, stop: threading.Event,
              max_streams: int = MAX_EVENT_STREAMS) -> Starlette:
    """The console's ASGI app over one station feed; at most ``max_streams`` open ``/api/events`` streams."""
    cache = JpegCache()
    shared = SharedState(feed, actions, 1.0 / feed.settings.live_fps)
    slots = StreamSlots(max_streams)

    def page(name: str):
        async def handler(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type="text/html")
        return handler

    async def state(request: Request) -> Response:
        _, text = shared.get()   # the shared snapshot (at most one period old): pollers cost no rebuild each
        return Response(text, media_type="application/json")

    async def events(request: Request) -> Response:
        if not slots.take():
            return too_many_streams(slots.limit)

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
        return SlotStream(stream(), slots, media_type="text/event-stream",
                          headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def live_jpg(request: Request) -> Response:
        seq = wanted_seq(request.query_params.get("seq"))
        camera = request.query_params.get("c", "")
        data = await asyncio.to_thread(views.live_jpeg, feed, cache, seq, camera)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"}) if data else \
            Response(status_code=404)

    async def part_jpg(request: Request) -> Response:
        camera = request.path_params.get("camera", "")
        run = request.query_params.get("r")
        if run is not None and run != feed.run_id:   # a page of an earlier run: its seq names another part now
            return Response("not found: a part of another run", status_code=404)
        seq = part_seq(request.path_params["seq"])
        if seq is None:   # not a part number (or thousands of digits, which int() refuses): no such part
            return Response(status_code=404)
        data = await asyncio.to_thread(views.part_jpeg, feed, cache, seq, camera)
        # cached only under an URL naming this run (views.part_url): the same seq is another part after a restart
        caching = "max-age=600" if run is not None else "no-cache"
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": caching}) if data else \
            Response(status_code=404)

    async def files(request: Request) -> Response:
        return await serve_file(feed.output, request.path_params["path"], actions.station_file)

    async def records(request: Request) -> Response:   # record.dir: NG images, verdicts.jsonl (views.file_url)
        return await serve_file(views.records_dir(feed), request.path_params["path"], actions.station_file)

    async def gallery(request: Request) -> Response:
        # built and encoded in a worker thread: thousands of NG parts take a while, and the live page must not wait
        return await asyncio.to_thread(lambda: JSONResponse(gallery_page(feed, actions)))

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
        raw = await bounded_body(request, MAX_BODY_BYTES)
        if isinstance(raw, Response):
            return raw
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):   # RecursionError: JSON nested thousands deep
            return _error("expected a JSON object in the request body")
        if not isinstance(body, dict):
            return _error("expected a JSON object in the request body")
        if request.path_params["action"] == "review":
            restarted = other_run(body.get("run"), actions.run_id)
            if restarted is not None:
                return restarted
        handler = POSTS[request.path_params["action"]]
        answer = await asyncio.to_thread(_run, lambda: handler(actions, body))
        shared.stale()
        return answer

    routes = [Route(path, page(name)) for path, name in PAGES.items()] + [
        Route("/api/state", state), Route("/api/events", events), Route("/api/live.jpg", live_jpg),
        Route("/api/part/{seq:str}.jpg", part_jpg), Route("/api/part/{camera:str}/{seq:str}.jpg", part_jpg),
        Route("/api/gallery", gallery), Route("/api/tune", tune),
        Route("/api/swap", lambda r: JSONResponse(actions.swap_status)),
        Route("/api/{action:str}", post, methods=["POST"]),
        Route("/files/{path:path}", files), Route("/records/{path:path}", records),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    guard = Middleware(LocalHostOnly, bind=feed.settings.host, allowed_hosts=feed.settings.allowed_hosts)
    return Starlette(routes=routes, middleware=[Middleware(SafeHeaders), guard])


def wanted_seq(value: str | None) -> int | None:
    """The seq a live image request names (``?seq=N``), None when it names none or no number (then the latest)."""
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def part_seq(text: str) -> int | None:
    """The part number an image URL names (``/api/part/SEQ.jpg``): ASCII digits, at most ``MAX_SEQ_DIGITS``; None
    for anything else (starlette's int converter raised ValueError, a 500, on 5000 digits)."""
    if not text.isascii() or not text.isdigit() or len(text) > MAX_SEQ_DIGITS:
        return None
    return int(text)


def other_run(posted, run: str) -> Response | None:
    """The 409 answer to a review posted from a page of run ``posted`` while the station runs ``run`` (its part
    numbers name other parts now: the station restarted); None when it is this run's or names none (an API
    client)."""
    if posted is None or posted == run:
        return None
    return _error(f"run: expected a part of this run ({run}), found one of run {posted!r}: the station restarted "
                  "since this page was loaded and its part numbers name other parts now; nothing was recorded; "
                  "reload the page and review the part there", 409)


def gallery_page(feed: StationFeed, actions: StationActions) -> dict:
    """The NG gallery (``views.gallery``) with what it cannot list (``gallery_bound``, counted first: parts coming
    while the list is built add to the list, never to the count of parts left out)."""
    bound = gallery_bound(feed)
    return {**views.gallery(feed, actions), **bound}


def gallery_bound(feed: StationFeed) -> dict:
    """What the NG gallery cannot list: ``ng_in_run`` (NG parts of this run so far, ``StationFeed.ng_in_run``) and
    ``listed_at_most`` (``console.recent_parts``: the gallery lists the newest that many, and only those can be
    reviewed, their verdicts still in memory)."""
    return {"ng_in_run": feed.ng_in_run(), "listed_at_most": feed.settings.recent_parts}


async def bounded_body(request: Request, limit: int) -> bytes | Response:
    """The request's body, or a 413 answer once it is known to exceed ``limit`` bytes: by its Content-Length
    before anything is read, else by the bytes streamed so far (a chunked body declares none)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            return _error(f"Content-Length: expected a byte count, found {declared!r}")
        if size > limit:
            return _too_large(limit, f"{size} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _too_large(limit, f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, found: str) -> Response:
    return _error(f"request body: expected at most {limit} bytes ({limit // 1024} KiB; an action's JSON is "
                  f"under 1 KB), found {found}; send the action's fields only", 413)


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
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
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
    except Conflict as exc:   # refused for the state it met (another alarm latched, a frame no longer kept)
        return _error(str(exc), 409)
    except FairEdgeError as exc:  # bad input, or a change that cannot be made: nothing changed
        return _error(str(exc))


def _error(message: str, status: int = 400) -> Response:
    return JSONResponse({"error": message}, status_code=status)

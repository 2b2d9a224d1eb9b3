"""The console's web server: Starlette routes served by uvicorn in a thread of its own.

Pages (plain HTML/CSS/JS shipped in ``static/``): ``/`` live view, ``/gallery`` NG review,
``/tune`` threshold tuning and model swap. Updates are pushed over server-sent events
(``/api/events``): one ``state`` event whenever the live state changed (a new part, the camera, a
fault, ...), at most ``live_fps`` a second, and a comment line every 10 s to keep proxies from closing
the stream. Each snapshot carries a ``version`` (growing with its content), shared with ``/api/state``: a
stream's first event is never older than the stream, and a page drops a snapshot older than one it has. Versions
start again at 1 in a new process (a restarted station): each snapshot also carries the ``epoch`` of its server
process, and a page shows the first snapshot of another epoch whatever its version.

A page's part numbers name parts of the run it was built from (``run`` in its state and gallery): a review posts
that ``run``, and one for a run other than the station's (a page left open across a restart, whose seq now names
another part) is refused with 409 and nothing recorded. A part's image URL (``views.part_url``) carries its run and
model: a browser never shows an earlier run's picture cached under the same seq, and an URL of another run is 404.
``/api/live.jpg?seq=N&c=CAMERA`` is the picture of that view while its frame is kept (the one whose verdict the page
shows beside it), else the latest.

Security: the server binds ``console.host`` (127.0.0.1 unless configured). Every request that
changes something is a POST with a JSON body of at most ``MAX_BODY_BYTES`` (a cross-site form cannot send
one without a CORS preflight, which this server never grants; a larger body is refused with 413 before it
is read) and, when ``console.token`` is set (required off loopback), the header ``X-Fair-Edge-Token``.
Token or not, a request whose ``Host`` is not a name of this machine (the bind address, localhost, a
loopback address, a name in ``console.allowed_hosts``; bound off loopback, also any IP address) is
refused with 403, reads included: a page of another site whose name was re-pointed at this machine (DNS
rebinding) reads and changes nothing. Reads need no token: bound off loopback, anyone who reaches the port
sees the live and NG images and the logs (``ConsoleServer.start`` logs a warning saying so). Files are
served only from the station's output folder (``/files/``) and the recorder's folder (``/records/``,
``record.dir``, where it is elsewhere), and only the kinds of file the console links to or names (``SERVED_SUFFIXES``:
NG and review images, the JSONL logs and their rotations, JSON and CSV tables): a path that resolves outside it
(``..``, an absolute path, a symlink) or to a file of another kind (a copy of the station file: ``station.yaml.bak``,
``old/station.yml``, an editor's ``station.yaml~``) is refused with 404, and so is the station file itself (it holds
``console.token``) and a temporary copy of it where a folder served holds it (a warning at start names a station file
inside a folder served); a file is streamed in chunks, up to its size when opened. The checks hold for the file
opened, not only for its name: the path checked is opened without following a link and checked again once open
(a regular file, its real path inside the folder, not the station file), so a file or a folder above it swapped for
a link (or a FIFO) between the check and the open is 404 too.
The console shares the station's process, so its readers must not take what the station needs (open files, the
event loop): at most ``MAX_CONNECTIONS`` connections are open at once, one accepted beyond them is closed as it is
accepted (``header_timeout_protocol``: uvicorn's own limit answered 503 only to a request, so idle connections that
send none held a file descriptor each, without bound), and while that many are open a request is answered 503; a
connection that has not sent a whole request header within ``HEADER_TIMEOUT_S`` is closed (idle ones cannot hold the
slots), and ``/api/events`` answers 503 (and closes the connection) while ``MAX_EVENT_STREAMS`` streams are open; every
other route still answers then. Should the process run out of file descriptors anyway (a station near its limit), the event loop's
"socket.accept() out of system resource" is logged as one line at most every ``ACCEPT_ERROR_EVERY_S`` seconds, with
the count since (``AcceptErrorLog``), not once per failed accept with a traceback.
A server that cannot start is a ConfigError naming the port when the port cannot be bound (in use, not allowed, an
address not of this machine: ``BIND_ERRNOS``), and a ``ConsoleStartError`` naming what stopped it otherwise (the
thread's own exception: out of file descriptors while uvicorn imports its modules, no thread to run it on).
Every response says it may not be framed by another page (``X-Frame-Options: DENY``, ``Content-Security-Policy:
frame-ancestors 'none'``: a hostile page cannot lay the console under its own buttons to steal a click) and may not
be read as another type than it declares (``X-Content-Type-Options: nosniff``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import ipaddress
import json
import logging
import mimetypes
import os
import stat
import threading
import time
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fair_edge.console import views
from fair_edge.console.actions import Conflict, StationActions, StationStarting
from fair_edge.console.feed import StationFeed
from fair_edge.console.render import JpegCache
from fair_edge.console.settings import is_loopback
from fair_edge.errors import ConfigError, FairEdgeError
from fair_edge.line.settings import IMAGE_FORMATS

log = logging.getLogger(__name__)
STATIC = Path(str(resources.files("fair_edge.console") / "static"))
PAGES = {"/": "live.html", "/gallery": "gallery.html", "/tune": "tune.html"}
KEEPALIVE_S = 10.0
TOKEN_HEADER = "x-fair-edge-token"
MAX_BODY_BYTES = 64 * 1024   # an action's JSON is under 1 KB; parsing megabytes would hold the GIL for seconds
FILE_CHUNK_BYTES = 64 * 1024   # /files/ and /records/ send a file in pieces this size, never whole
# open at once, each holding a file descriptor: one more is closed as it is accepted (``header_timeout_protocol``), and
# while this many are open a request is answered 503 (uvicorn's limit_concurrency counts the connection asking)
MAX_CONNECTIONS = 64
# the listening socket's backlog, which is also how many connections one turn of the event loop accepts: one over the
# cap is closed a few turns after its accept (its transport made, then its protocol), so a flood holds at most a few
# times this many descriptors beyond MAX_CONNECTIONS for a moment (uvicorn's 2048 let a burst take them all)
LISTEN_BACKLOG = 16
# a connection that has not sent a whole request header this long after it opened (or after its last response) is
# closed, s: idle or half-sent connections (no timer of uvicorn's runs before the first request) would hold the
# MAX_CONNECTIONS slots and answer every browser 503 for as long as they stay open
HEADER_TIMEOUT_S = 5.0
MAX_SEQ_DIGITS = 18   # a part number in an image URL: up to 10**18 parts (a longer one names no part)
MAX_EVENT_STREAMS = 32   # open /api/events streams (each never ends): half the connections, the rest for other routes
# what /files/ and /records/ serve, by the file's suffix (case-insensitive): the kinds the console links to or names,
# NG overlays and frames (record.image_format), review images (.png), the logs (verdicts, gate, reviews, audit: .jsonl,
# with their rotations NAME.jsonl.N), summary.json and tune.json, tune.csv; any other file is 404 whatever it holds (a
# copy of the station file, console.token in it: station.yaml.bak, station.yml, station.yaml~)
SERVED_SUFFIXES = frozenset({*(f".{ext}" for ext in IMAGE_FORMATS), ".png", ".json", ".jsonl", ".csv"})
ROTATED_LOG_SUFFIX = ".jsonl"   # a log rotated by line.jsonl.RotatingJsonl: NAME.jsonl.1 .. NAME.jsonl.N
# how /files/ and /records/ open the file ``safe_file`` checked (``open_file_part``): never through a link (one
# swapped in after the check fails to open: ELOOP), never waiting (a FIFO swapped in opens at once, and is then
# refused), not inherited by a child process; each flag 0 where the OS has none
OPEN_SERVED = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
OPEN_FD_LINKS = "/proc/self/fd"   # Linux: each open descriptor as a link to the real path of its file
# an accept that failed for want of a resource (file descriptors, the system's file table, buffers, memory): asyncio
# logs each (its loop tries again 1 s later, but tries the whole backlog each turn); ``AcceptErrorLog`` sums them up
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_ERROR_EVERY_S = 10.0   # at most one log line of failed accepts this often, s, with the count since the last
# a bind that failed for the port itself (another program holds it, a privileged port, an address not of this
# machine): the only failures where the console's error asks whether another station holds the port
BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})
START_TIMEOUT_S = 10.0   # how long ``ConsoleServer.start`` waits for the server to listen, s
SAFE_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
                (b"x-content-type-options", b"nosniff"))   # on every response (SafeHeaders)


def safe_file(root: Path, rel: str, station_file: Path | None = None) -> Path | None:
    """``root / rel`` if it is a file inside ``root`` after resolving links and ``..``, of a kind the console serves
    (``served_kind``, judged by the name of the file a link leads to) and not the station file (``withheld``: it
    holds ``console.token``); else None."""
    root = root.resolve()
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not served_kind(path.name) or not path.is_file() \
            or withheld(path, station_file):
        return None
    return path


def served_kind(name: str) -> bool:
    """Whether a file named ``name`` is of a kind /files/ and /records/ serve: its suffix one of ``SERVED_SUFFIXES``
    (any case), or a rotated log's ``NAME.jsonl.N`` (N: ASCII digits). ``station.yaml``, ``station.yaml.bak``,
    ``station.yaml~`` and ``station.yaml.1`` are not."""
    stem, dot, last = name.rpartition(".")
    if dot and last.isascii() and last.isdigit() and stem.lower().endswith(ROTATED_LOG_SUFFIX):
        return True
    return Path(name).suffix.lower() in SERVED_SUFFIXES


def withheld(path: Path, station_file: Path | None) -> bool:
    """Whether resolved ``path`` is the station file (through a link: its target) or one of the temporary copies a
    threshold's write leaves beside it for a moment (``NAME.XXXXXXXX.tmp``, ``tuning.write_station_threshold``):
    never served, whatever folder holds them (``console.token`` is in it)."""
    if station_file is None:
        return False
    try:
        target = Path(station_file).resolve()
    except (OSError, RuntimeError):   # a link loop: compare with the name as given
        target = Path(os.path.abspath(station_file))
    if path == target:
        return True
    return path.parent == target.parent and path.name.startswith(f"{target.name}.") and path.name.endswith(".tmp")


def station_file_warning(station_file: Path | None, folders: dict[str, Path | None]) -> str:
    """The warning at start for a station file inside a folder the console serves (``folders``: what it is -> the
    folder, None: none): neither it (``withheld``) nor a copy of it under another name (``station.yaml.bak``,
    ``station.yaml~``: not of a kind served, ``served_kind``) is served, but a copy saved as one of the kinds served
    (``SERVED_SUFFIXES``) would be, with ``console.token``; "" when it is in none of them."""
    if station_file is None:
        return ""
    target = Path(station_file).resolve()
    held: dict[Path, list[str]] = {}   # folder -> what it is (the record folder is often the output folder)
    for what, folder in folders.items():
        if folder is not None and target.is_relative_to(Path(folder).resolve()):
            held.setdefault(Path(folder).resolve(), []).append(what)
    if not held:
        return ""
    named = " and ".join(f"{' and '.join(whats)} {folder}" for folder, whats in held.items())
    kinds = ", ".join(sorted(SERVED_SUFFIXES))
    return (f"station file {station_file} is inside the console's {named}, whose images, logs and tables ({kinds} "
            "files) anyone who reaches the console reads without the token: the station file itself is not served "
            "(it holds console.token), nor is a copy of it under another name (station.yaml.bak, an editor's "
            "station.yaml~), but a copy saved there as one of those kinds (station.json) would be; move the station "
            "file out of the output and record folders")


def open_file_part(path: Path, root: Path, station_file: Path | None = None) -> tuple[BinaryIO, int] | None:
    """(binary file object, its size in bytes now) of ``path``, the file ``safe_file`` checked by name under ``root``:
    what a response sends of a file that may grow. None when what opens there now is not a file it would serve:
    the name is opened without following a link or waiting (``OPEN_SERVED``: a link swapped in after the check does
    not open, a FIFO opens at once) and the checks are made again on the file opened (``opened_is_served``), so a
    file or a folder above it swapped for a link between the check and the open serves nothing. Raises OSError
    when ``path`` cannot be opened (gone, a link now)."""
    fd = os.open(path, OPEN_SERVED)
    try:
        info = os.fstat(fd)
        if not opened_is_served(fd, info, path, root, station_file):
            os.close(fd)
            return None
        if OPEN_SERVED & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return handle, info.st_size


def opened_is_served(fd: int, info: os.stat_result, path: Path, root: Path, station_file: Path | None) -> bool:
    """Whether the file open as ``fd`` (``info``: its fstat) passes ``safe_file``'s checks itself, not only its
    name did: a regular file (no FIFO, device or folder), whose real path (``opened_path``) is inside ``root``
    resolved, of a kind served (``served_kind``) and not the station file (``withheld``: by its path, and by its
    device and inode, a hard link to it too)."""
    if not stat.S_ISREG(info.st_mode):
        return False
    real = opened_path(fd, info, path)
    if real is None or not real.is_relative_to(Path(root).resolve()) or not served_kind(real.name):
        return False
    return not withheld(real, station_file) and not same_file(info, station_file)


def opened_path(fd: int, info: os.stat_result, path: Path) -> Path | None:
    """The real path of the file open as ``fd`` (``info``: its fstat): the kernel's own (``OPEN_FD_LINKS``, Linux);
    where there is none, ``path`` resolved again when that is the same file (device and inode). None when it cannot
    be told: the file was removed or replaced since it was opened."""
    try:
        real = os.readlink(f"{OPEN_FD_LINKS}/{fd}")
    except OSError:   # no /proc (macOS, a container without it)
        try:
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return resolved if same_file(info, resolved) else None
    return Path(real) if os.path.isabs(real) and not real.endswith(" (deleted)") else None


def same_file(info: os.stat_result, other: Path | None) -> bool:
    """Whether ``other`` (links followed) is the file whose stat is ``info`` (the same device and inode); False for
    None or a path that cannot be read."""
    if other is None:
        return False
    try:
        named = os.stat(other)
    except (OSError, ValueError):
        return False
    return (named.st_dev, named.st_ino) == (info.st_dev, info.st_ino)


def file_chunks(handle: BinaryIO, size: int, chunk: int = FILE_CHUNK_BYTES):
    """The first ``size`` bytes of open binary ``handle``, ``chunk`` bytes at a time (closed at the end or when
    the client leaves): memory per download is one chunk, however large the file."""
    with handle:
        left = size
        while left > 0:
            data = handle.read(min(chunk, left))
            if not data:   # truncated meanwhile (a log rotated): the client sees a short body, not garbage
                return
            left -= len(data)
            yield data


async def serve_file(root: Path | None, rel: str, station_file: Path | None = None) -> Response:
    """``rel`` under ``root`` (traversal-safe, of a kind served, never the station file: ``safe_file``; else 404)
    streamed up to its size when opened: the station may be appending to it, and a body longer than its
    Content-Length is a broken response. The file sent is the one opened, checked again once open
    (``open_file_part``): one swapped for a link or a FIFO after the check is 404."""
    path = None if root is None else safe_file(root, rel, station_file)
    if path is None:
        return Response("not found", status_code=404)
    try:
        opened = await asyncio.to_thread(open_file_part, path, root, station_file)
    except OSError:
        return Response("not found", status_code=404)
    if opened is None:   # not what was checked: swapped meanwhile
        return Response("not found", status_code=404)
    handle, size = opened
    return StreamingResponse(file_chunks(handle, size), headers={"Content-Length": str(size)},
                             media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")


class SharedState:
    """The live state as JSON, rebuilt at most once per ``period`` seconds whatever the number of connected
    browsers and pollers of /api/state (each gets the same text), new parts or not: a camera lost or a fault
    raised shows without a verdict. A new event stream forces one rebuild (its first event is never older than
    the stream), and so does every action (``stale``): what an operator changed shows on the next read. ``version`` grows only when the content changed (its ``time`` aside), so a stream sends a
    snapshot when it changed and a page can tell an older snapshot from a newer one."""

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


class LocalHostOnly:
    """ASGI middleware: refuses (403, naming the Host found) every request whose ``Host`` header is not a name
    of this machine: the bind address, localhost, a loopback address (127.0.0.0/8, [::1]), a name of
    ``allowed_hosts`` and, bound off loopback, any IP address; with any port. A DNS-rebinding page sends the
    name of its own site (never an IP address: its origin would then be that address), so it gets nothing,
    token or not."""

    def __init__(self, app, bind: str, allowed_hosts=()) -> None:
        self.app, self.bind = app, bind.strip("[]").lower()
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.any_address = not is_loopback(self.bind)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if not self.allowed(host):
                response = _error(f"Host: expected this machine ({self.names()}; any port), found {host or 'none'!r}; "
                                  "open the console as http://127.0.0.1:PORT/ (or by the address it is bound to), "
                                  "or add the name to console.allowed_hosts", 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def names(self) -> str:
        """The names a Host may give, for an error."""
        bind = f"[{self.bind}]" if ":" in self.bind else self.bind
        extra = (*sorted(self.allowed_hosts), *(("any IP address",) if self.any_address else ()))
        return ", ".join(dict.fromkeys((bind, "localhost", "127.0.0.1", "[::1]", *extra)))

    def allowed(self, host: str) -> bool:
        """Whether a Host header (name or address, [IPv6], optional :port) names this machine."""
        name = host.strip().lower()
        if name.startswith("["):   # [::1]:8765
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:   # name:port (a bare IPv6 address has several colons)
            name = name.partition(":")[0]
        if not name:
            return False
        return name == self.bind or is_loopback(name) or name in self.allowed_hosts or \
            (self.any_address and is_address(name))


class SafeHeaders:
    """ASGI middleware: adds ``SAFE_HEADERS`` to every response (the Host check's refusals included): no page of
    another site may frame the console (clickjacking an action such as acknowledging an alarm), and no browser
    reads a file as another type than the one it is sent as."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_safe(message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SAFE_HEADERS if name not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_safe)


def is_address(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address (not a name DNS could re-point)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


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


def open_reads_warning(settings, port: int) -> str:
    """What a console bound off loopback (``ConsoleSettings``, listening on ``port``) lets anyone read (its reads
    need no token), for a warning at start; "" on loopback."""
    if settings.loopback:
        return ""
    return (f"console.host {settings.host!r}: anyone who can reach port {port} reads the live and NG "
            "images, the verdict log and the station state without the token (console.token guards changes only); "
            "bind console.host to 127.0.0.1 and reach it through an SSH tunnel or an authenticating proxy to "
            "keep reads private")


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


@functools.cache
def header_timeout_protocol() -> type:
    """uvicorn's h11 protocol (``uvicorn.protocols.http.h11_impl.H11Protocol``; the console always serves with it,
    httptools installed or not) with a deadline for each request header: ``HEADER_TIMEOUT_S`` seconds from the
    connection's opening, and from each response's end on a kept-alive connection, to the end of the next request's
    header, however the bytes trickle in (uvicorn's own keep-alive timer starts only after a first response, and
    any byte stops it); a connection past it is closed, its slot free for a browser. A connection made while
    ``MAX_CONNECTIONS`` are open is closed at once, never counted nor served (``refused``): its file descriptor is
    given back as soon as it is accepted, however many connect (uvicorn's limit_concurrency answers 503 only once a
    request comes, so a flood of connections that send nothing held one descriptor each until the station had none
    left for its camera and its NG images)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None
        refused = False   # closed as it was made: over MAX_CONNECTIONS

        def connection_made(self, transport) -> None:
            if len(self.connections) >= MAX_CONNECTIONS:   # the others open now (this one is not in it yet)
                self.refused = True
                transport.abort()   # at once: nothing to send, nothing to wait for
                return
            super().connection_made(transport)
            self._await_header()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:   # a request's header came whole (or the connection failed)
                self._stop_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()   # takes a pipelined request's header already received
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_header()

        def connection_lost(self, exc) -> None:
            self._stop_header_timer()
            if not self.refused:   # a refused one was never made as far as uvicorn knows
                super().connection_lost(exc)

        def _await_header(self) -> None:
            self._stop_header_timer()
            self.header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_timed_out)

        def _stop_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _header_timed_out(self) -> None:
            self.header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11


class AcceptErrorLog:
    """The console's event-loop exception handler: an accept that failed for want of a resource (``RESOURCE_ERRNOS``:
    asyncio's "socket.accept() out of system resource", with a traceback each time, tens of thousands a minute while
    the process is out of file descriptors) is one log line, at most one every ``every_s`` seconds (``clock``:
    monotonic seconds), naming the error, how many failed since the last line, the open-file limit and the fix; every
    other context goes to the loop's default handler."""

    def __init__(self, every_s: float = ACCEPT_ERROR_EVERY_S, clock=time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self.logged_at: float | None = None   # when the last line was logged (clock's seconds), None: never
        self.unlogged = 0   # failed accepts since that line
        self.total = 0   # failed accepts since the start

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS):
            loop.default_exception_handler(context)
            return
        self.unlogged += 1
        self.total += 1
        now = self.clock()
        if self.logged_at is not None and now - self.logged_at < self.every_s:
            return
        since = "" if self.logged_at is None else f" in the last {now - self.logged_at:.0f} s"
        log.error("console: %s: %s (%d time%s%s, %d in all); %s", context.get("message", "accept failed"),
                  exc.strerror or exc, self.unlogged, "" if self.unlogged == 1 else "s", since, self.total,
                  resource_hint(exc, listening_port(context.get("socket"))))
        self.logged_at, self.unlogged = now, 0


def resource_hint(exc: OSError, port: int | None = None) -> str:
    """What a failed accept (on console ``port``) or start (None) for want of ``exc``'s resource means and the fix: for
    file descriptors (EMFILE) the process's open-file limit, named with its value (and, for an accept, how to find
    who holds connections to the port); the system's file table (ENFILE), memory or buffers otherwise."""
    if exc.errno == errno.EMFILE:
        holders = "" if port is None else f"find what holds connections to the console (`ss -tnp 'sport = :{port}'`) " \
                                          "and close it, or "
        return (f"this process has used its open-file limit ({open_files_limit()}), which the console's connections "
                f"and the station's camera, logs and NG images share: {holders}raise LimitNOFILE= in the systemd unit "
                "(ulimit -n)")
    if exc.errno == errno.ENFILE:
        return "the system's table of open files is full (fs.file-max): find the process holding them"
    return "the system is short of memory for network buffers: free memory"


def listening_port(sock) -> int | None:
    """The port of the listening socket an event-loop context names (``socket``), None when it names none."""
    try:
        return int(sock.getsockname()[1])
    except (AttributeError, OSError, TypeError, ValueError, IndexError):
        return None


def open_files_limit() -> str:
    """This process's open-file limit in words: "ulimit -n 1024" (soft; ", hard 4096" when the hard one is higher)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return "ulimit -n"
    return f"ulimit -n {soft}" + (f", hard {hard}" if hard not in (soft, getattr(resource, "RLIM_INFINITY", -1))
                                  else "")


@functools.cache
def console_uvicorn() -> type:
    """uvicorn's Server whose event loop (``loop``, once it serves) logs failed accepts through ``AcceptErrorLog``
    (set as the loop's exception handler before anything is served)."""
    import uvicorn

    class ConsoleUvicorn(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets=None) -> None:
            self.loop = asyncio.get_running_loop()
            self.loop.set_exception_handler(AcceptErrorLog())
            await super().serve(sockets)

    return ConsoleUvicorn


class ConsoleStartError(FairEdgeError):
    """The console's server did not start for another reason than its port (``cause``: the exception that stopped
    its thread, None when it did not listen within ``START_TIMEOUT_S``): the message names it and the fix."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def start_failure(cause: BaseException | None) -> BaseException | None:
    """The exception that stopped the console's thread as it started, ``cause`` (None: it stopped without one): what
    uvicorn's SystemExit after a failed bind (it logs the OSError and exits) was raised while handling."""
    if isinstance(cause, SystemExit) and cause.__context__ is not None:
        return cause.__context__
    return cause


def bind_failed(cause: BaseException | None) -> bool:
    """Whether ``cause`` (``start_failure``) is a bind refused for the port itself (``BIND_ERRNOS``)."""
    return isinstance(cause, OSError) and cause.errno in BIND_ERRNOS


def start_error(host: str, port: int, cause: BaseException | None) -> FairEdgeError:
    """The error of a console that did not start (``cause``: ``start_failure``): a ConfigError naming the port for a
    bind refused for it (``bind_failed``); a ``ConsoleStartError`` naming the cause and its fix otherwise."""
    words = (" ".join(str(cause).split()) or type(cause).__name__) if cause is not None else ""
    if bind_failed(cause):
        return ConfigError(f"console.port: expected a free port on {host}, found {port} unusable ({words}); pick "
                           "another port (0 = any) or --console off")
    if cause is None:
        return ConsoleStartError(f"the console's server on {host}:{port} did not start listening within "
                                 f"{START_TIMEOUT_S:g} s; the machine may be overloaded: run with --console off or "
                                 "try again", None)
    hint = ""
    if isinstance(cause, OSError) and cause.errno in RESOURCE_ERRNOS:
        hint = f": {resource_hint(cause)}"
    elif isinstance(cause, RuntimeError) and "can't start new thread" in str(cause):
        hint = (": the limit on threads and processes was reached; raise TasksMax= in the systemd unit (or "
                "ulimit -u)")
    return ConsoleStartError(f"the console's server on {host}:{port} could not start ({type(cause).__name__}: "
                             f"{words}){hint}", cause)


class ConsoleServer:
    """uvicorn serving the console in a daemon thread. ``start()`` returns once it listens, or raises a ConfigError
    naming the port when the port cannot be bound, a ``ConsoleStartError`` naming the cause otherwise
    (``start_error``); ``close()`` stops it within about a second (safe twice). Settings built in
    code are checked as the station file's are (``ConsoleSettings.check``): no token off loopback is a
    ConfigError here."""

    def __init__(self, feed: StationFeed, actions: StationActions) -> None:
        import uvicorn

        self.settings = feed.settings
        self.settings.check(serving=True)
        self._stop = threading.Event()
        app = build_app(feed, actions, self.settings.token, self._stop)
        config = uvicorn.Config(app, host=self.settings.host, port=self.settings.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1,
                                limit_concurrency=MAX_CONNECTIONS, backlog=LISTEN_BACKLOG,
                                http=header_timeout_protocol())
        self._server = console_uvicorn()(config)
        self._failure: BaseException | None = None   # what stopped the server's thread (``_serve``)
        self._thread = threading.Thread(target=self._serve, name="console", daemon=True)

    def _serve(self) -> None:
        """The server's thread: uvicorn until it stops. What stops it is kept for ``start`` (no traceback on stderr:
        ``start`` names it in its error); once it was serving, it is logged."""
        try:
            self._server.run()
        except BaseException as exc:  # noqa: BLE001 - the thread's end, reported by start() or logged here
            self._failure = exc
            if self._server.started:
                log.error("console server stopped: %s: %s", type(exc).__name__, exc, exc_info=exc)

    def start(self) -> "ConsoleServer":
        try:
            self._thread.start()
        except RuntimeError as exc:   # no thread to run it on (ulimit -u, TasksMax)
            raise start_error(self.settings.host, self.settings.port, exc) from exc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            cause = start_failure(self._failure)
            raise start_error(self.settings.host, self.settings.port, cause) from cause
        log.warning("console on %s", self.url)
        exposed = open_reads_warning(self.settings, self.port)
        if exposed:
            log.warning("%s", exposed)
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

"""The console's server: its web app (``app.build_app``) served by uvicorn in a thread of its own
(``ConsoleServer``), and what keeps that listener from taking what the station needs.

The server binds ``console.host`` (127.0.0.1 unless configured). Reads need no token: bound off loopback, anyone who
reaches the port sees the live and NG images and the logs (``ConsoleServer.start`` logs a warning saying so:
``open_reads_warning``).
The console shares the station's process, so its readers must not take what the station needs (open files, the
event loop): at most ``MAX_CONNECTIONS`` connections are open at once, one accepted beyond them is closed as it is
accepted (``header_timeout_protocol``: uvicorn's own limit answered 503 only to a request, so idle connections that
send none held a file descriptor each, without bound), and while that many are open a request is answered 503; a
connection that has not sent a whole request header within ``HEADER_TIMEOUT_S`` is closed (idle ones cannot hold the
slots), and ``/api/events`` answers 503 while ``app.MAX_EVENT_STREAMS`` streams are open. Should the process run out
of file descriptors anyway (a station near its limit), the event loop's "socket.accept() out of system resource" is
logged as one line at most every ``ACCEPT_ERROR_EVERY_S`` seconds, with the count since (``AcceptErrorLog``), not
once per failed accept with a traceback.
A server that cannot start is a ConfigError naming the port when the port cannot be bound (in use, not allowed, an
address not of this machine: ``BIND_ERRNOS``), and a ``ConsoleStartError`` naming what stopped it otherwise (the
thread's own exception: out of file descriptors while uvicorn imports its modules, no thread to run it on).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import threading
import time

from fair_edge.console.actions import StationActions
from fair_edge.console.app import build_app
from fair_edge.console.feed import StationFeed
from fair_edge.errors import ConfigError, FairEdgeError
from fair_edge.shortages import thread_refused

log = logging.getLogger(__name__)

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
# an accept that failed for want of a resource (file descriptors, the system's file table, buffers, memory): asyncio
# logs each (its loop tries again 1 s later, but tries the whole backlog each turn); ``AcceptErrorLog`` sums them up
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_ERROR_EVERY_S = 10.0   # at most one log line of failed accepts this often, s, with the count since the last
# a bind that failed for the port itself (another program holds it, a privileged port, an address not of this
# machine): the only failures where the console's error asks whether another station holds the port
BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})
START_TIMEOUT_S = 10.0   # how long ``ConsoleServer.start`` waits for the server to listen, s


def open_reads_warning(settings, port: int) -> str:
    """What a console bound off loopback (``ConsoleSettings``, listening on ``port``) lets anyone read (its reads
    need no token), for a warning at start; "" on loopback."""
    if settings.loopback:
        return ""
    return (f"console.host {settings.host!r}: anyone who can reach port {port} reads the live and NG "
            "images, the verdict log and the station state without the token (console.token guards changes only); "
            "bind console.host to 127.0.0.1 and reach it through an SSH tunnel or an authenticating proxy to "
            "keep reads private")


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
    elif thread_refused(cause):
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

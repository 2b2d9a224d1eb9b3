"""The console's ASGI middlewares, around every route. ``LocalHostOnly``: token or not, a request whose ``Host`` is
not a name of this machine (the bind address, localhost, a loopback address, a name in ``console.allowed_hosts``;
bound off loopback, also any IP address) is refused with 403, reads included: a page of another site whose name was
re-pointed at this machine (DNS rebinding) reads and changes nothing. ``SafeHeaders``: every response says it may not
be framed by another page (``X-Frame-Options: DENY``, ``Content-Security-Policy: frame-ancestors 'none'``: a hostile
page cannot lay the console under its own buttons to steal a click) and may not be read as another type than it
declares (``X-Content-Type-Options: nosniff``)."""

from __future__ import annotations

import ipaddress

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from fair_edge.console.settings import is_loopback

SAFE_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
                (b"x-content-type-options", b"nosniff"))   # on every response (SafeHeaders)


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
                error = (f"Host: expected this machine ({self.names()}; any port), found {host or 'none'!r}; "
                         "open the console as http://127.0.0.1:PORT/ (or by the address it is bound to), "
                         "or add the name to console.allowed_hosts")
                response = JSONResponse({"error": error}, status_code=403)
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

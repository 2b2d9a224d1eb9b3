"""Sink URL parsing: ``scheme://netloc/path?key=value&...`` with typed, checked query values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from ...errors import SinkError, did_you_mean


@dataclass(frozen=True)
class SinkUrl:
    """A split sink URL. query: key -> raw string (a key given twice is refused)."""

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str
    netloc: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """``raw`` with its password written ``***``: what an error message quotes (``hide_userinfo``)."""
        return hide_userinfo(self.raw)

    def check_query(self, allowed: tuple[str, ...]) -> None:
        for key in self.query:
            if key not in allowed:
                hint = did_you_mean(key, allowed)
                raise SinkError(f"{self.shown}: unknown option '{key}'{hint}; valid: "
                                f"{', '.join(allowed)}")

    def get_int(self, key: str, default: int | None, minimum: int = 0, maximum: int | None = None) -> int | None:
        """``key``'s integer (decimal, or 0x / 0o / 0b prefixed), ``default`` when the URL does not give it;
        ``SinkError`` naming the key, the range (``minimum``..``maximum``; no upper bound when None) and the value
        found when it is not an integer in it."""
        raw = self.query.get(key)
        if raw is None:
            return default
        try:
            value = int(raw, 0)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            wanted = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise SinkError(f"{self.shown}: {key}: expected an integer {wanted}, found {raw!r}")
        return value

    def get_float(self, key: str, default: float, minimum: float = 0.0) -> float:
        raw = self.query.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = None
        if value is None or not value >= minimum or not math.isfinite(value):
            raise SinkError(f"{self.shown}: {key}: expected a finite number >= {minimum:g}, found {raw!r}")
        return value

    def get_choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.query.get(key, default)
        if value not in allowed:
            raise SinkError(f"{self.shown}: {key}: expected one of {' | '.join(allowed)}, "
                            f"found {value!r}")
        return value


def hide_userinfo(url: str) -> str:
    """``url`` (``scheme://[user:password@]host:port/path?query``) with the password of its ``user:password@``
    written ``***``: a password never reaches an error message, a log line or a fault reason, and the user it
    logged in as is still named. The host part ends at the first '/' or '?' after ``//`` and the user info at its
    last '@', as ``urlsplit`` reads it (a raw '#' in a password is hidden too)."""
    scheme, sep, rest = url.partition("://")
    host_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, hostport = rest[:host_end].rpartition("@")
    if not sep or not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hostport}{rest[host_end:]}" if ":" in userinfo else url


def parse_sink_url(url: str) -> SinkUrl:
    """Split ``url``; raise ``SinkError`` naming the URL for a missing scheme, bad port or a
    repeated option."""
    if not isinstance(url, str) or "://" not in url:
        raise SinkError(f"expected a sink URL like 'modbus://10.0.0.5:502?coil=0', found {url!r}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise SinkError(f"{hide_userinfo(url)}: expected a port number 1..65535 after ':'") from exc
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise SinkError(f"{hide_userinfo(url)}: option '{key}' given twice; give it once")
        query[key] = value
    return SinkUrl(url, parts.scheme.lower(), parts.hostname or "", port, parts.path,
                   parts.netloc, query)


def scheme_entry(table: dict, url: SinkUrl, what: str):
    """``table[url.scheme]``, or ``SinkError`` naming ``what``, the scheme, a "did you mean" and the
    valid list."""
    entry = table.get(url.scheme)
    if entry is None:
        hint = did_you_mean(url.scheme, table, suffix="://")
        raise SinkError(f"{url.shown}: unknown {what} scheme '{url.scheme}'{hint}; valid: "
                        f"{', '.join(s + '://' for s in table)}")
    return entry

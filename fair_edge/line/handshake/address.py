"""Where a handshake link connects, read from its URL: one parser per scheme. The link uses it when it is
made; ``HandshakeSettings`` uses it to refuse a bad URL when the station file is read (no link is made
then, and the settings need not import the links, which import the settings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import SinkError
from ..sinks.modbus import UNIT_MAX
from ..sinks.opcua import split_userinfo
from ..sinks.urls import SinkUrl, parse_sink_url, scheme_entry

MODBUS_OPTIONS = ("unit", "timeout_ms")
OPCUA_OPTIONS = ("timeout_ms",)


@dataclass(frozen=True)
class ModbusAddress:
    """``modbus://HOST:PORT?unit=1&timeout_ms=100``: port 502 and unit 1 (0..255) unless given; timeout in seconds."""

    host: str
    port: int
    unit: int
    timeout_s: float


@dataclass(frozen=True)
class OpcUaAddress:
    """``opcua://[USER:PASSWORD@]HOST:PORT/PATH?timeout_ms=1000`` as the ``opc.tcp://`` endpoint (without the
    user and password, which go to the client only); timeout in seconds."""

    endpoint: str
    timeout_s: float
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)


def modbus_address(url: SinkUrl) -> ModbusAddress:
    """``SinkError`` for an unknown option, a missing host or a unit outside 0..255."""
    url.check_query(MODBUS_OPTIONS)
    if not url.host:
        raise SinkError(f"{url.shown}: expected modbus://HOST:PORT?unit=1, found no host")
    return ModbusAddress(url.host, url.port or 502, url.get_int("unit", 1, maximum=UNIT_MAX),
                         url.get_float("timeout_ms", 100.0, minimum=1.0) / 1000.0)


def opcua_address(url: SinkUrl) -> OpcUaAddress:
    """``SinkError`` for an unknown option or a missing host (the URL it quotes shows no password: ``SinkUrl.shown``)."""
    url.check_query(OPCUA_OPTIONS)
    if not url.host:
        raise SinkError(f"{url.shown}: expected opcua://HOST:PORT/PATH, found no host")
    hostport, user, password = split_userinfo(url.netloc)
    return OpcUaAddress(f"opc.tcp://{hostport}{url.path}",
                        url.get_float("timeout_ms", 1000.0, minimum=1.0) / 1000.0, user, password)


ADDRESS_PARSERS: dict[str, Callable[[SinkUrl], ModbusAddress | OpcUaAddress]] = {
    "modbus": modbus_address,
    "opcua": opcua_address,
}


def handshake_address(raw: str) -> ModbusAddress | OpcUaAddress:
    """The address a handshake URL names; ``SinkError`` for an unknown scheme, option or a missing host."""
    url = parse_sink_url(raw)
    return scheme_entry(ADDRESS_PARSERS, url, "handshake")(url)

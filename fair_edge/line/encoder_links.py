"""Belt encoder sources opened from URLs (each an ``encoder_source.EncoderSource``): where the conveyor is,
in counts, read from the PLC over a link.

    modbus://HOST:PORT?unit=1&register=100&bits=32&order=hi_lo&table=holding&poll_ms=2&jitter=16&max_counts_per_s=0
    opcua://HOST:PORT/PATH?node=ns=2;s=BeltCount&bits=32&poll_ms=5&jitter=16&max_counts_per_s=0
    sim://?counts_per_s=2000                   # a simulated belt at constant speed (demos, tests)

A Modbus or OPC UA URL opens a ``CounterReader`` (``ModbusCounter``, ``OpcUaCounter``: the raw register, read over
the link), polled and unwrapped by ``polled_encoder.PolledEncoder`` (``bits``, ``poll_ms``, ``jitter``,
``max_counts_per_s``: see there); ``sim://`` a ``SimEncoder``. A 32-bit counter on Modbus is a pair of 16-bit
registers (``register`` and ``register + 1``, high word first unless ``order=lo_hi``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import PlcError, SinkError
from .encoder_source import FakeEncoder
from .polled_encoder import JITTER_COUNTS, CounterReader, PolledEncoder
from .sinks.modbus import ADDRESS_MAX, UNIT_MAX, connect_client, modbus_tcp_client
from .sinks.opcua import client_with_login, split_userinfo
from .sinks.urls import SinkUrl, parse_sink_url, scheme_entry

log = logging.getLogger(__name__)


class ModbusCounter:
    """A counter in one (16-bit) or two (32-bit) Modbus registers, via pymodbus's sync client."""

    def __init__(self, url: SinkUrl, bits: int, client_factory: Callable[..., Any] | None = None) -> None:
        url.check_query(("unit", "register", "bits", "order", "table", "poll_ms", "timeout_ms", "jitter",
                         "max_counts_per_s"))
        if not url.host or "register" not in url.query:
            raise SinkError(f"{url.shown}: expected modbus://HOST:PORT?register=N[&bits=32], found "
                            f"host={url.host!r}, register={url.query.get('register')!r}")
        self.host, self.port = url.host, url.port or 502
        self.words = bits // 16
        self.unit = url.get_int("unit", 1, maximum=UNIT_MAX)
        self.register = url.get_int("register", 0, maximum=ADDRESS_MAX + 1 - self.words)   # its last word too
        self.hi_first = url.get_choice("order", "hi_lo", ("hi_lo", "lo_hi")) == "hi_lo"
        self.table = url.get_choice("table", "holding", ("holding", "input"))
        self.timeout_s = url.get_float("timeout_ms", 100.0, minimum=1.0) / 1000.0
        self.name = f"modbus {self.host}:{self.port} unit {self.unit} {self.table} {self.register}"
        self._factory = client_factory or modbus_tcp_client
        self._client: Any = None

    def open(self) -> None:
        self.close()
        client = self._factory(self.host, port=self.port, timeout=self.timeout_s, retries=0)
        self._client = connect_client(client, self.name)

    def read(self) -> int:
        if self._client is None:
            raise PlcError(f"{self.name}: not connected")
        call = (self._client.read_holding_registers if self.table == "holding"
                else self._client.read_input_registers)
        try:
            result = call(self.register, count=self.words, device_id=self.unit)
        except Exception as exc:  # noqa: BLE001 - ModbusException / OSError: the link failed
            raise PlcError(f"{self.name}: read failed: {exc}") from exc
        if result.isError():
            raise PlcError(f"{self.name}: device refused the read: {result} (check register and unit)")
        words = list(result.registers)
        if not self.hi_first:
            words.reverse()
        value = 0
        for word in words:
            value = (value << 16) | (word & 0xFFFF)
        return value

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class OpcUaCounter:
    """A counter in one OPC UA integer node, via asyncua's sync client. A ``USER:PASSWORD@`` in the URL logs in as
    that user (as the OPC UA sink does, ``sinks.opcua.client_with_login``); the endpoint, the name and every error,
    log line and fault reason are without it."""

    def __init__(self, url: SinkUrl, bits: int) -> None:
        url.check_query(("node", "bits", "poll_ms", "timeout_ms", "jitter", "max_counts_per_s"))
        node = url.query.get("node", "")
        if not url.host or not node:
            raise SinkError(f"{url.shown}: expected opcua://HOST:PORT/PATH?node=ns=2;s=BeltCount, "
                            f"found host={url.host!r} node={node!r}")
        hostport, self._user, self._password = split_userinfo(url.netloc)
        self.endpoint, self.node_id = f"opc.tcp://{hostport}{url.path}", node
        self.mask = (1 << bits) - 1
        self.timeout_s = url.get_float("timeout_ms", 1000.0, minimum=1.0) / 1000.0
        self.name = f"opcua {self.endpoint} {node}"
        self._client: Any = None
        self._node: Any = None

    def open(self) -> None:
        self.close()
        client = client_with_login(self.endpoint, self.timeout_s, self._user, self._password)
        try:
            client.connect()
            self._node = client.get_node(self.node_id)
        except Exception as exc:  # noqa: BLE001
            _quiet_disconnect(client)
            raise PlcError(f"{self.name}: connect failed: {exc} (is the server up and the node id right?)") from exc
        self._client = client

    def read(self) -> int:
        if self._node is None:
            raise PlcError(f"{self.name}: not connected")
        try:
            return int(self._node.read_value()) & self.mask
        except Exception as exc:  # noqa: BLE001
            raise PlcError(f"{self.name}: read failed: {exc}") from exc

    def close(self) -> None:
        client, self._client, self._node = self._client, None, None
        if client is not None:
            _quiet_disconnect(client)


def _quiet_disconnect(client: Any) -> None:
    try:
        client.disconnect()
    except Exception:  # noqa: BLE001 - the link may already be gone
        log.debug("encoder: OPC UA disconnect failed", exc_info=True)


class SimEncoder(FakeEncoder):
    """``sim://?counts_per_s=N``: a simulated belt (``FakeEncoder``) with the encoder life cycle."""

    name = "simulated belt"

    def start(self) -> SimEncoder:
        return self

    def close(self, timeout_s: float = 0.0) -> None:
        """Nothing to stop or release (the same close as a ``PolledEncoder``'s)."""

    def __enter__(self) -> SimEncoder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sim_encoder(url: SinkUrl) -> SimEncoder:
    url.check_query(("counts_per_s",))
    return SimEncoder(url.get_float("counts_per_s", 1000.0, minimum=0.001))


def _bits(url: SinkUrl) -> int:
    return int(url.get_choice("bits", "32", ("16", "32")))


def _poll_s(url: SinkUrl, default_ms: float) -> float:
    return url.get_float("poll_ms", default_ms, minimum=0.1) / 1000.0


def _jitter(url: SinkUrl) -> int:
    return url.get_int("jitter", JITTER_COUNTS)


def _polled(reader: CounterReader, url: SinkUrl, bits: int, default_poll_ms: float) -> PolledEncoder:
    """``reader`` polled with the URL's ``poll_ms``, ``jitter`` and ``max_counts_per_s`` (the belt's top speed, 0: not
    stated)."""
    return PolledEncoder(reader, bits, _poll_s(url, default_poll_ms), _jitter(url),
                         url.get_float("max_counts_per_s", 0.0))


ENCODER_SCHEMES: dict[str, Callable[[SinkUrl], Any]] = {
    "modbus": lambda u: _polled(ModbusCounter(u, _bits(u)), u, _bits(u), 2.0),
    "opcua": lambda u: _polled(OpcUaCounter(u, _bits(u)), u, _bits(u), 5.0),
    "sim": lambda u: open_sim_encoder(u),
}


def open_encoder(url: str) -> PolledEncoder | SimEncoder:
    """The (not yet started) encoder ``url`` names; use it as a context manager, or ``start()`` it (connect and read
    once) and ``close(timeout_s)`` it (its thread waited for at most ``timeout_s``, at most ``CLOSE_JOIN_S`` by
    default). Raises ``SinkError`` for an unknown scheme or a malformed URL."""
    parsed = parse_sink_url(url)
    return scheme_entry(ENCODER_SCHEMES, parsed, "encoder")(parsed)

"""The handshake over OPC UA: the station is a client of the PLC's server; every signal is a node
(``OpcUaSignals``), read and written with one Read / Write service call per step (asyncua's sync
client, which runs its own event loop thread, as ``fair_edge.line.sinks.opcua`` does).

URL: ``opcua://HOST:PORT/PATH?timeout_ms=1000`` (``NoSecurity`` endpoints). Each value is written with
its node's own data type (read once per connect); the score is the float score itself (NaN on the
wire for a part that was not scored). In a ``write`` the last signal is the last node of the Write
request, so ``results_ready`` follows its data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from ...errors import PlcDeviceError, PlcError, SinkError
from ..sinks.urls import SinkUrl
from .address import opcua_address
from .settings import PLC_SIGNALS, REGION_SIGNALS, STATION_SIGNALS, HandshakeSettings, OpcUaSignals

log = logging.getLogger(__name__)


class OpcUaLink:
    """``HandshakeLink`` over one asyncua sync ``Client``."""

    def __init__(self, url: SinkUrl, signals: OpcUaSignals) -> None:
        address = opcua_address(url)
        self.endpoint, self.timeout_s = address.endpoint, address.timeout_s
        self.signals = signals
        self.name = f"opcua {self.endpoint}"
        self._client: Any = None
        self._nodes: dict[str, Any] = {}
        self._types: dict[str, Any] = {}

    def open(self) -> None:
        self.close()
        try:
            from asyncua import ua
            from asyncua.sync import Client
        except ImportError as exc:
            raise SinkError("an opcua:// handshake needs asyncua: pip install 'fair-edge[plc]'") from exc
        self._ua = ua
        client = Client(self.endpoint, timeout=self.timeout_s)
        try:
            client.connect()
        except Exception as exc:  # noqa: BLE001 - any failure here is the link's
            _quiet_disconnect(client, self.name)
            raise PlcError(f"{self.name}: connect failed: {exc} (is the server up and the endpoint path right?)") from exc
        self._client = client
        try:
            for name in (*PLC_SIGNALS, *STATION_SIGNALS, *(n for n in REGION_SIGNALS if getattr(self.signals, n))):
                node = client.get_node(getattr(self.signals, name))
                self._nodes[name], self._types[name] = node, node.read_data_type_as_variant_type()
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise PlcError(f"{self.name}: cannot read node {getattr(self.signals, name)!r} ({name}): {exc}; "
                           f"check reject.handshake.opcua") from exc

    def read_inputs(self) -> dict[str, int]:
        """The PLC's signals ``{trigger, part_id, ack}`` as integers, in one Read call."""
        client = self._client_or_raise()
        try:
            values = client.read_values([self._nodes[n] for n in PLC_SIGNALS])
        except Exception as exc:  # noqa: BLE001
            raise self._error("read", exc) from exc
        return {n: int(v) for n, v in zip(PLC_SIGNALS, values)}

    def write(self, values: Sequence[tuple[str, float | int | bool | None]]) -> None:
        """Write ``(signal, value)`` pairs in one Write call, in this order."""
        client, ua = self._client_or_raise(), self._ua
        nodes, variants = [], []
        for name, value in values:
            vtype = self._types[name]
            nodes.append(self._nodes[name])
            variants.append(ua.Variant(_convert(value, vtype, ua), vtype))
        try:
            client.write_values(nodes, variants)
        except Exception as exc:  # noqa: BLE001
            raise self._error("write", exc) from exc

    def close(self) -> None:
        client, self._client, self._nodes = self._client, None, {}
        if client is not None:
            _quiet_disconnect(client, self.name)

    def _client_or_raise(self) -> Any:
        if self._client is None:
            raise PlcError(f"{self.name}: not connected")
        return self._client

    def _error(self, what: str, exc: Exception) -> PlcError:
        if isinstance(exc, self._ua.UaStatusCodeError):
            return PlcDeviceError(f"{self.name}: server refused the {what}: {exc} "
                                  f"(check the node ids and their access level)")
        return PlcError(f"{self.name}: {what} failed: {exc}")


def open_opcua_link(url: SinkUrl, settings: HandshakeSettings) -> OpcUaLink:
    """The ``opcua://`` entry of ``HANDSHAKE_SCHEMES`` (not connected yet)."""
    return OpcUaLink(url, settings.opcua)


def _convert(value: float | int | bool | None, vtype: Any, ua: Any) -> Any:
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return math.nan if value is None else float(value)   # None: not scored
    return int(value)


def _quiet_disconnect(client: Any, name: str) -> None:
    try:
        client.disconnect()
    except Exception:  # noqa: BLE001 - the link may already be gone (its loop thread stops)
        log.debug("%s: disconnect failed", name, exc_info=True)

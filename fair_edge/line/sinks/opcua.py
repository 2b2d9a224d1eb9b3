"""OPC UA output via asyncua's sync client (it runs its own event loop thread).

URL: ``opcua://HOST:PORT/PATH?node=ns=2;s=Reject`` with ``mode=pulse`` (default: write True,
then False after pulse_ms) or ``mode=counter`` (add 1 to an integer node per reject; the PLC
acts on each change). Other options: ``pulse_ms``, ``timeout_ms`` (default 1000).
The value is written with the node's own data type (read once after connecting). A counter wraps within
that type's range as the PLC's own integer arithmetic does (``wrap_integer``: Int16 32767 -> -32768, UInt16
65535 -> 0); counter mode on a node that is not an integer is refused at connect (``PlcDeviceError``). A value
the node's type cannot hold is a ``PlcDeviceError`` naming the node and the type (checked before the
write: never a link failure, never retried). While idle the sink's worker probes the link by reading the
node's value, never by writing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import PlcDeviceError, PlcError, SinkError
from .base import Reporter, WorkerSink, log_reporter
from .urls import SinkUrl

log = logging.getLogger(__name__)

OPCUA_OPTIONS = ("node", "mode", "pulse_ms", "timeout_ms")
OPCUA_MODES = ("pulse", "counter")
# integer data types (asyncua ``VariantType`` names) -> (bits, signed)
INTEGER_TYPES = {"SByte": (8, True), "Byte": (8, False), "Int16": (16, True), "UInt16": (16, False),
                 "Int32": (32, True), "UInt32": (32, False), "Int64": (64, True), "UInt64": (64, False)}


def type_name(vtype: Any) -> str:
    """An asyncua ``VariantType``'s name (``Int16``), or its text for anything else."""
    return str(getattr(vtype, "name", vtype))


def integer_range(vtype: Any) -> tuple[int, int] | None:
    """(lowest, highest) value a node of integer type ``vtype`` holds (Int16: (-32768, 32767)); None when
    ``vtype`` is not an integer type."""
    spec = INTEGER_TYPES.get(type_name(vtype))
    if spec is None:
        return None
    bits, signed = spec
    lowest = -(1 << (bits - 1)) if signed else 0
    return lowest, lowest + (1 << bits) - 1


def wrap_integer(value: int, vtype: Any) -> int:
    """``value`` wrapped into integer type ``vtype``'s range as the PLC's own counter arithmetic wraps (two's
    complement, modulo 2**bits): Int16 32767 + 1 -> -32768, UInt16 65535 + 1 -> 0, Byte 256 -> 0; so the step
    from one value to the next, taken in the node's type, is still + 1. ``value`` itself for a non-integer type."""
    span = integer_range(vtype)
    if span is None:
        return value
    lowest, highest = span
    return (value - lowest) % (highest - lowest + 1) + lowest


def encoding_problem(value: Any, vtype: Any) -> str:
    """Why ``value`` cannot be written as data type ``vtype`` (asyncua's encoder's reason: a number out of the
    type's range, a bool for a String node, ...), or "" when it can. Encodes locally: nothing is sent."""
    from asyncua import ua
    from asyncua.ua.ua_binary import variant_to_binary

    try:
        variant_to_binary(ua.Variant(value, vtype))
    except Exception as exc:  # noqa: BLE001 - asyncua raises UaError, the Variant itself may raise others
        return str(exc)
    return ""


@dataclass(frozen=True)
class OpcUaTarget:
    endpoint: str       # opc.tcp://host:port/path
    node: str           # e.g. ns=2;s=Reject
    mode: str = "pulse"
    timeout_s: float = 1.0

    @property
    def label(self) -> str:
        return f"opcua {self.endpoint} {self.node}"


def parse_opcua_url(url: SinkUrl) -> tuple[OpcUaTarget, float | None]:
    url.check_query(OPCUA_OPTIONS)
    node = url.query.get("node", "")
    if not url.host or not node:
        raise SinkError(f"{url.raw}: expected opcua://HOST:PORT/PATH?node=ns=2;s=Reject, "
                        f"found host={url.host!r} node={node!r}")
    endpoint = f"opc.tcp://{url.netloc}{url.path}"
    target = OpcUaTarget(endpoint, node, url.get_choice("mode", "pulse", OPCUA_MODES),
                         url.get_float("timeout_ms", 1000.0, minimum=1.0) / 1000.0)
    pulse = url.get_float("pulse_ms", 0.0) if "pulse_ms" in url.query else None
    return target, pulse


def opcua_client_class() -> Any:
    """asyncua's sync ``Client`` class, or SinkError naming the package and the install command when asyncua
    is missing (checked when a sink is opened, on the caller's thread)."""
    try:
        from asyncua.sync import Client
    except ImportError as exc:
        raise SinkError(f"opcua:// sinks need the 'asyncua' package, found it missing ({exc}): "
                        f"pip install 'fair-edge[plc]'") from exc
    return Client


def default_client_factory(target: OpcUaTarget) -> Any:
    """An asyncua sync client for ``target`` (timeout in seconds)."""
    return opcua_client_class()(target.endpoint, timeout=target.timeout_s)


def _is_status_error(exc: BaseException) -> bool:
    try:
        from asyncua.ua import UaStatusCodeError
    except ImportError:
        return False
    return isinstance(exc, UaStatusCodeError)


class OpcUaOutput:
    """``Output`` over one OPC UA client; a Bad status reply or a value the node's type cannot hold raises
    ``PlcDeviceError``, anything else ``PlcError``."""

    def __init__(self, target: OpcUaTarget,
                 client_factory: Callable[[OpcUaTarget], Any] = default_client_factory) -> None:
        self.target = target
        self._factory = client_factory
        self._client: Any = None
        self._node: Any = None
        self._vtype: Any = None
        self._count = 0

    def open(self) -> None:
        self.close()
        try:
            client = self._factory(self.target)
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001 - client construction is part of the link
            raise PlcError(f"{self.target.label}: client failed: {exc}") from exc
        try:
            client.connect()
        except Exception as exc:  # noqa: BLE001
            self._close_client(client)
            raise PlcError(f"{self.target.label}: connect failed: {exc} "
                           f"(is the server up and the endpoint path right?)") from exc
        self._client = client
        try:
            self._node = client.get_node(self.target.node)
            self._vtype = self._node.read_data_type_as_variant_type()
            if self.target.mode == "counter":
                self._count = int(self._node.read_value())
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise PlcError(f"{self.target.label}: cannot read the node: {exc}") from exc
        if self.target.mode == "counter" and integer_range(self._vtype) is None:
            self.close()
            raise PlcDeviceError(f"{self.target.label}: mode=counter expected an integer node (SByte, Byte, Int16, "
                                 f"UInt16, Int32, UInt32, Int64, UInt64), found data type {type_name(self._vtype)}; "
                                 f"point node= at an integer tag or use mode=pulse")

    def set(self, on: bool) -> None:
        if self._node is None:
            raise PlcError(f"{self.target.label}: not connected")
        if self.target.mode == "counter":
            if not on:
                return
            value: Any = wrap_integer(self._count + 1, self._vtype)
        else:
            value = bool(on)
        self._check_encodable(value)
        try:
            self._node.write_value(value, self._vtype)
        except Exception as exc:  # noqa: BLE001
            if _is_status_error(exc):
                raise PlcDeviceError(f"{self.target.label}: server refused the write: {exc} "
                                     f"(check the node id and its access level)") from exc
            raise PlcError(f"{self.target.label}: write failed: {exc}") from exc
        if self.target.mode == "counter":
            self._count = value

    def _check_encodable(self, value: Any) -> None:
        """``PlcDeviceError`` naming the node, its type and ``value`` when the type cannot hold ``value`` (a
        configuration error: repeating the write, or reconnecting, would not help)."""
        problem = encoding_problem(value, self._vtype)
        if problem:
            raise PlcDeviceError(f"{self.target.label}: cannot write {value!r} to node {self.target.node} of data "
                                 f"type {type_name(self._vtype)} ({problem}); point node= at a node of a type "
                                 f"that holds it (mode={self.target.mode})")

    def probe(self) -> None:
        """Check the link answers without writing: read the node's value. ``PlcError`` when the link fails,
        ``PlcDeviceError`` for a Bad status reply (the server answered: the link is up)."""
        if self._node is None:
            raise PlcError(f"{self.target.label}: not connected")
        try:
            self._node.read_value()
        except Exception as exc:  # noqa: BLE001
            if _is_status_error(exc):
                raise PlcDeviceError(f"{self.target.label}: server refused the read: {exc}") from exc
            raise PlcError(f"{self.target.label}: probe (read) failed: {exc}") from exc

    def close(self) -> None:
        client, self._client, self._node = self._client, None, None
        if client is not None:
            self._close_client(client)

    def _close_client(self, client: Any) -> None:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - the link may already be gone (its loop thread stops)
            log.debug("%s: disconnect failed", self.target.label, exc_info=True)


def open_opcua_sink(url: SinkUrl, pulse_ms: float, reporter: Reporter = log_reporter,
                    client_factory: Callable[[OpcUaTarget], Any] | None = None) -> WorkerSink:
    """Parse ``url`` and start its worker. Without ``client_factory`` asyncua must be installed: checked here,
    on the caller's thread (``SinkError`` with the install command), not first on the worker's."""
    target, url_pulse = parse_opcua_url(url)
    if client_factory is None:
        opcua_client_class()
    width = pulse_ms if url_pulse is None else url_pulse
    if target.mode == "counter":
        width = 0.0
    output = OpcUaOutput(target, client_factory or default_client_factory)
    return WorkerSink(target.label, output, width, reporter=reporter)

"""OPC UA output via asyncua's sync client (it runs its own event loop thread).

URL: ``opcua://HOST:PORT/PATH?node=ns=2;s=Reject`` with ``mode=pulse`` (default: write True,
then False after pulse_ms) or ``mode=counter`` (add 1 to an integer node per reject; the PLC
acts on each change). Other options: ``pulse_ms``, ``timeout_ms`` (default 1000).
``opcua://USER:PASSWORD@HOST:PORT/PATH?...`` logs in with that user name token: the user and password go to the
client only, never into the sink's name, a log line or a fault reason. A node id ``nsu=URI;s=Reject`` is resolved
against the server's NamespaceArray at each connect (``bind_nodes``): a namespace index (``ns=2``) is the server's
to give and can change when it restarts with its namespaces registered in another order; a URI cannot.
The value is written with the node's own data type (read after each connect; pulse mode writes 1 / 0 to a number
node). A counter wraps within that type's range as the PLC's own integer arithmetic does (``wrap_integer``: Int16
32767 -> -32768, UInt16 65535 -> 0); counter mode on a node that is not an integer is refused at connect
(``PlcDeviceError``). A value the node's type cannot hold is a ``PlcDeviceError`` naming the node and the type
(checked before the write: never a link failure, never retried). While idle the sink's worker probes the link by
reading the node's value and data type, never by writing it. A node that is gone or whose data type changed since
the connect (BadNodeIdUnknown, BadNodeIdInvalid, BadTypeMismatch, or a probe that reads another data type: a PLC
program download) is a ``PlcBindingError``: the worker reconnects at once and the connect reads the node and its
type again; a node still gone makes that connect fail (``link_down``, the fault output). In pulse mode, a resting
level the probe reads back at another value (a PLC or HMI wrote over it) is written again (``WorkerSink``,
``written``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import PlcBindingError, PlcDeviceError, PlcError, SinkError
from .base import Reporter, WorkerSink, log_reporter
from .urls import SinkUrl

log = logging.getLogger(__name__)

OPCUA_OPTIONS = ("node", "mode", "pulse_ms", "timeout_ms")
OPCUA_MODES = ("pulse", "counter")
# integer data types (asyncua ``VariantType`` names) -> (bits, signed)
INTEGER_TYPES = {"SByte": (8, True), "Byte": (8, False), "Int16": (16, True), "UInt16": (16, False),
                 "Int32": (32, True), "UInt32": (32, False), "Int64": (64, True), "UInt64": (64, False)}
# status codes that say the node bound at connect is gone or changed type: bind it again (PlcBindingError)
BINDING_STATUSES = ("BadNodeIdUnknown", "BadNodeIdInvalid", "BadTypeMismatch")
# asyncua's own log lines when a client is torn down on a dead link (each with a 30-line traceback): demoted
TEARDOWN_LOGGER = "asyncua.client.client"
TEARDOWN_MESSAGE = "raised during disconnect"


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


def error_text(exc: BaseException, timeout_s: float | None = None) -> str:
    """``exc`` for a log line or a report: ``TypeName: message``, or the type's name alone when the message is
    empty (``str(TimeoutError())`` is ""), ``TimeoutError (no reply within 1 s)`` with ``timeout_s``; an OPC UA
    status error's own text, which ends with its code: ``...(BadTypeMismatch)``."""
    text, name = str(exc), type(exc).__name__
    if _is_status_error(exc):
        return text or name
    if isinstance(exc, TimeoutError) and timeout_s is not None and not text:
        return f"{name} (no reply within {timeout_s:g} s)"
    return f"{name}: {text}" if text else name


def status_name(code: Any) -> str:
    """The name of an OPC UA status (an asyncua ``StatusCode``, a status error or its integer): ``BadTypeMismatch``."""
    from asyncua import ua

    value = getattr(code, "code", None) if _is_status_error(code) else getattr(code, "value", code)
    try:
        return ua.StatusCode(int(value)).name
    except Exception:  # noqa: BLE001 - a code asyncua does not know: its number
        return f"0x{int(value):08X}"


def data_type_text(node_id: Any) -> str:
    """A DataType node id as text: a built-in type's name (``i=4`` -> ``Int16``), else the id (``ns=3;i=3002``)."""
    from asyncua import ua

    if getattr(node_id, "NamespaceIndex", None) == 0 and node_id.Identifier in ua.VariantType._value2member_map_:
        return ua.VariantType(node_id.Identifier).name
    return node_id.to_string() if hasattr(node_id, "to_string") else str(node_id)


def split_userinfo(netloc: str) -> tuple[str, str, str]:
    """``user:password@host:port`` -> (``host:port``, user, password), percent-decoded; "" for a part not given."""
    from urllib.parse import unquote

    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return netloc, "", ""
    user, _, password = userinfo.partition(":")
    return hostport, unquote(user), unquote(password)


def client_with_login(endpoint: str, timeout_s: float, user: str, password: str) -> Any:
    """asyncua's sync ``Client`` for ``endpoint`` (no userinfo in it) logging in as ``user`` when given; asyncua's
    teardown tracebacks are demoted (``quiet_asyncua_teardown``)."""
    client = opcua_client_class()(endpoint, timeout=timeout_s)
    if user:
        client.set_user(user)
        client.set_password(password)
    quiet_asyncua_teardown()
    return client


class _TeardownFilter(logging.Filter):
    """Drops asyncua's "close_session raised during disconnect" errors (a traceback each time a client on a dead
    link is closed, which every outage does) and logs them again at debug level under this module's logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if TEARDOWN_MESSAGE not in str(record.msg):
            return True
        log.debug("asyncua: %s", record.getMessage(), exc_info=record.exc_info)
        return False


def quiet_asyncua_teardown() -> None:
    """Install ``_TeardownFilter`` on asyncua's client logger (once; other asyncua messages pass)."""
    logger = logging.getLogger(TEARDOWN_LOGGER)
    if not any(isinstance(f, _TeardownFilter) for f in logger.filters):
        logger.addFilter(_TeardownFilter())


def bind_nodes(client: Any, node_ids: Sequence[str]) -> list[Any]:
    """asyncua ``Node``s for ``node_ids`` (``ns=2;s=Reject`` or ``nsu=URI;s=Reject``) on a connected ``client``;
    a ``nsu=`` id is resolved against the server's NamespaceArray (read once, only when one is given).
    ``PlcError`` naming the URI and the array when the server has no such namespace."""
    from asyncua import ua

    parsed = [ua.NodeId.from_string(text) for text in node_ids]
    array: list[str] | None = None
    nodes = []
    for text, node_id in zip(node_ids, parsed):
        uri = getattr(node_id, "NamespaceUri", None)
        if uri:
            array = client.get_namespace_array() if array is None else array
            if uri not in array:
                raise PlcError(f"node {text!r}: expected namespace {uri!r} in the server's NamespaceArray, found "
                               f"{array}; check the URI after nsu= (or the PLC program)")
            node_id = ua.NodeId(node_id.Identifier, array.index(uri), node_id.NodeIdType)
        nodes.append(client.get_node(node_id))
    return nodes


@dataclass(frozen=True)
class OpcUaTarget:
    endpoint: str       # opc.tcp://host:port/path, without user:password@
    node: str           # e.g. ns=2;s=Reject
    mode: str = "pulse"
    timeout_s: float = 1.0
    user: str = field(default="", repr=False)       # the URL's user name token: given to the client only
    password: str = field(default="", repr=False)

    @property
    def label(self) -> str:
        return f"opcua {self.endpoint} {self.node}"


def parse_opcua_url(url: SinkUrl) -> tuple[OpcUaTarget, float | None]:
    url.check_query(OPCUA_OPTIONS)
    node = url.query.get("node", "")
    if not url.host or not node:
        raise SinkError(f"{url.shown}: expected opcua://HOST:PORT/PATH?node=ns=2;s=Reject, "
                        f"found host={url.host!r} node={node!r}")
    hostport, user, password = split_userinfo(url.netloc)
    target = OpcUaTarget(f"opc.tcp://{hostport}{url.path}", node, url.get_choice("mode", "pulse", OPCUA_MODES),
                         url.get_float("timeout_ms", 1000.0, minimum=1.0) / 1000.0, user, password)
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
    """An asyncua sync client for ``target`` (timeout in seconds; the URL's user and password, if any)."""
    return client_with_login(target.endpoint, target.timeout_s, target.user, target.password)


def _is_status_error(exc: BaseException) -> bool:
    try:
        from asyncua.ua import UaStatusCodeError
    except ImportError:
        return False
    return isinstance(exc, UaStatusCodeError)


class OpcUaOutput:
    """``Output`` over one OPC UA client; a Bad status reply or a value the node's type cannot hold raises
    ``PlcDeviceError``, a node gone or retyped since the connect ``PlcBindingError``, anything else ``PlcError``."""

    def __init__(self, target: OpcUaTarget,
                 client_factory: Callable[[OpcUaTarget], Any] = default_client_factory) -> None:
        self.target = target
        self._factory = client_factory
        self._client: Any = None
        self._node: Any = None
        self._vtype: Any = None
        self._dtype: Any = None     # the node's DataType (a NodeId) as read at connect; the probe compares
        self._count = 0

    def open(self) -> None:
        self.close()
        label = self.target.label
        try:
            client = self._factory(self.target)
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001 - client construction is part of the link
            raise PlcError(f"{label}: client failed: {error_text(exc)}") from exc
        try:
            client.connect()
        except Exception as exc:  # noqa: BLE001
            self._close_client(client)
            raise PlcError(f"{label}: connect failed: {error_text(exc, self.target.timeout_s)} "
                           f"(is the server up and the endpoint path right?)") from exc
        self._client = client
        try:
            self._bind(client)
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise PlcError(f"{label}: cannot read the node: {error_text(exc, self.target.timeout_s)}") from exc
        if self.target.mode == "counter" and integer_range(self._vtype) is None:
            self.close()
            raise PlcDeviceError(f"{label}: mode=counter expected an integer node (SByte, Byte, Int16, "
                                 f"UInt16, Int32, UInt32, Int64, UInt64), found data type {type_name(self._vtype)}; "
                                 f"point node= at an integer tag or use mode=pulse")

    def _bind(self, client: Any) -> None:
        """Find the node (``nsu=`` resolved now), read its data type and, in counter mode, its count."""
        self._node = bind_nodes(client, [self.target.node])[0]
        self._dtype = self._node.read_data_type()
        self._vtype = self._node.read_data_type_as_variant_type()
        if self.target.mode == "counter":
            self._count = int(self._node.read_value())

    def set(self, on: bool) -> None:
        if self._node is None:
            raise PlcError(f"{self.target.label}: not connected")
        if self.target.mode == "counter":
            if not on:
                return
            value: Any = wrap_integer(self._count + 1, self._vtype)
        else:
            value = self._pulse_value(on)
        self._check_encodable(value)
        try:
            self._node.write_value(value, self._vtype)
        except Exception as exc:  # noqa: BLE001
            raise self._failure("write", exc) from exc
        if self.target.mode == "counter":
            self._count = value

    def written(self, on: bool) -> Any:
        """What ``set(on)`` leaves on the node: pulse mode's value (``_pulse_value``); None in counter mode (each
        reject adds 1: the node holds a count, not a level)."""
        return None if self.target.mode == "counter" else self._pulse_value(on)

    def _pulse_value(self, on: bool) -> Any:
        """Pulse mode's ``on`` as the node's type holds it: True / False, 1 / 0 on an integer node, 1.0 / 0.0 on a
        float node (any other type: True / False, refused by ``_check_encodable``)."""
        if integer_range(self._vtype) is not None:
            return int(on)
        if type_name(self._vtype) in ("Float", "Double"):
            return float(on)
        return bool(on)

    def _failure(self, what: str, exc: Exception) -> PlcError:
        """The error for a failed ``what`` (write, read): ``PlcBindingError`` for a node gone or retyped,
        ``PlcDeviceError`` for any other Bad status, ``PlcError`` (link failure) for anything else."""
        label = self.target.label
        if _is_status_error(exc):
            status = status_name(exc)
            if status in BINDING_STATUSES:
                return PlcBindingError(f"{label}: server refused the {what}: {status}: the node is gone or its "
                                       f"data type changed since the connect (a PLC program download?); "
                                       f"reconnecting to read it again")
            return PlcDeviceError(f"{label}: server refused the {what}: {error_text(exc)} "
                                  f"(check the node id and its access level)")
        return PlcError(f"{label}: {what} failed: {error_text(exc, self.target.timeout_s)}")

    def _check_encodable(self, value: Any) -> None:
        """``PlcDeviceError`` naming the node, its type and ``value`` when the type cannot hold ``value`` (a
        configuration error: repeating the write, or reconnecting, would not help)."""
        problem = encoding_problem(value, self._vtype)
        if problem:
            raise PlcDeviceError(f"{self.target.label}: cannot write {value!r} to node {self.target.node} of data "
                                 f"type {type_name(self._vtype)} ({problem}); point node= at a node of a type "
                                 f"that holds it (mode={self.target.mode})")

    def probe(self) -> Any:
        """Check the link answers without writing: read the node's value and data type (one Read); returns the value.
        ``PlcError`` when the link fails, ``PlcBindingError`` when the node is gone or its data type is no longer the
        one read at connect, ``PlcDeviceError`` for another Bad status reply (the server answered: the link is up)."""
        if self._node is None:
            raise PlcError(f"{self.target.label}: not connected")
        from asyncua import ua

        try:
            value, dtype = self._node.read_attributes([ua.AttributeIds.Value, ua.AttributeIds.DataType])
        except Exception as exc:  # noqa: BLE001
            raise self._failure("read", exc) from exc
        for reply in (value, dtype):
            if not reply.StatusCode.is_good():
                raise self._failure("read", ua.UaStatusCodeError(reply.StatusCode.value))
        if dtype.Value.Value != self._dtype:
            raise PlcBindingError(f"{self.target.label}: the node's data type changed from "
                                  f"{data_type_text(self._dtype)} to {data_type_text(dtype.Value.Value)} since the "
                                  f"connect (a PLC program download?); reconnecting to read it again")
        return None if value.Value is None else value.Value.Value   # (a Good reply without a value: none)

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

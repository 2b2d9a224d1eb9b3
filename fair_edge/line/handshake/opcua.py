"""The handshake over OPC UA: the station is a client of the PLC's server; every signal is a node
(``OpcUaSignals``), read and written with one Read / Write service call per step (asyncua's sync
client, which runs its own event loop thread, as ``fair_edge.line.sinks.opcua`` does).

URL: ``opcua://[USER:PASSWORD@]HOST:PORT/PATH?timeout_ms=1000`` (``NoSecurity`` endpoints; the user and password go
to the client only, never into the link's name or a log line). Each value is written with its node's own data type
(read at each connect); the score is the float score itself (NaN on the wire for a part that was not scored).
Node ids ``nsu=URI;s=Name`` are resolved against the server's NamespaceArray at each connect (``bind_nodes``), so a
PLC that restarts with its namespace at another index is followed; ``ns=2;...`` is taken as it is.

A Write applies each node on its own: one node refused leaves the others written. So every node's status is
checked, and a result's write (``results_ready`` = 1 last) is two Writes: the data nodes, then, only once every
one of them took its value, ``results_ready`` = 1 alone. A data node refused raises before the flag is written:
the PLC never sees Results Ready = 1 beside a Result, Score or Result Part Id that kept the previous part's value.

A node that is gone or whose data type changed since the connect (BadNodeIdUnknown, BadNodeIdInvalid,
BadTypeMismatch on a read or write: a PLC program download) raises ``PlcBindingError``, a link failure: the
handshake reconnects with its back-off and the connect reads every node and its type again and checks them.
Node types are checked at connect (``check_node_types``): a node whose type cannot hold what crosses the link
(a String heartbeat, a Boolean result, an integer score, a ResultPartId narrower than PartId) is refused with a
``ConfigError`` naming the signal, the node and its type, so no value that can never be written reaches a
Write (and no reconnect retries one). The heartbeat counter (0..65535) is wrapped into its node's range
(``heartbeat_value``): a Siemens INT (Int16) node counts 0..32767, -32768..-1, 0..., + 1 each step in the
node's own arithmetic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from ...errors import ConfigError, PlcBindingError, PlcDeviceError, PlcError, SinkError
from ..sinks.opcua import (BINDING_STATUSES, bind_nodes, client_with_login, encoding_problem, error_text,
                           integer_range, status_name, type_name, wrap_integer)
from ..sinks.urls import SinkUrl
from .address import opcua_address
from .settings import (ACK, ERROR, ERROR_CODES, HEARTBEAT, PART_ID, PLC_SIGNALS, READY, REGION_SIGNALS, RESULT,
                       RESULT_NOT_INSPECTED, RESULT_PART_ID, RESULTS_READY, SCORE, STATION_SIGNALS, TRIGGER,
                       HandshakeSettings, OpcUaSignals)

log = logging.getLogger(__name__)

FLOAT_TYPES = {"Float": 1 << 24, "Double": 1 << 53}   # float data type -> integers it holds exactly: -this..this
# what the station reads from / writes to each signal's node: (text, lowest, highest) of the integers it must hold
# exactly; result_part_id: whatever PartId holds (the station echoes the PLC's ids); score: Float / Double only
SIGNAL_VALUES = {TRIGGER: ("0 / 1", 0, 1), ACK: ("0 / 1", 0, 1), READY: ("0 / 1", 0, 1),
                 RESULTS_READY: ("0 / 1", 0, 1), PART_ID: ("a number (the part id)", 0, 1),
                 HEARTBEAT: ("a number or a Boolean (the counter wraps within the node's range)", 0, 1),
                 ERROR: (f"the error codes 0..{max(ERROR_CODES)}", 0, max(ERROR_CODES)),
                 RESULT: (f"the result codes 0..{RESULT_NOT_INSPECTED}", 0, RESULT_NOT_INSPECTED),
                 **{name: ("the region values 0..65535", 0, 0xFFFF) for name in REGION_SIGNALS}}


class OpcUaLink:
    """``HandshakeLink`` over one asyncua sync ``Client``."""

    def __init__(self, url: SinkUrl, signals: OpcUaSignals) -> None:
        address = opcua_address(url)
        self.endpoint, self.timeout_s = address.endpoint, address.timeout_s
        self._login = (address.user, address.password)
        self.signals = signals
        self.name = f"opcua {self.endpoint}"
        self._client: Any = None
        self._nodes: dict[str, Any] = {}
        self._types: dict[str, Any] = {}

    def open(self) -> None:
        self.close()
        try:
            from asyncua import ua
        except ImportError as exc:
            raise SinkError("an opcua:// handshake needs asyncua: pip install 'fair-edge[plc]'") from exc
        self._ua = ua
        client = client_with_login(self.endpoint, self.timeout_s, *self._login)
        try:
            client.connect()
        except Exception as exc:  # noqa: BLE001 - any failure here is the link's
            _quiet_disconnect(client, self.name)
            raise PlcError(f"{self.name}: connect failed: {error_text(exc, self.timeout_s)} "
                           f"(is the server up and the endpoint path right?)") from exc
        self._client = client
        try:
            self._bind(client)
            check_node_types(self.signals, self._types)
        except ConfigError:
            self.close()
            raise
        except PlcError as exc:
            self.close()
            raise PlcError(f"{self.name}: {exc}; check reject.handshake.opcua") from exc

    def _bind(self, client: Any) -> None:
        """Find every signal's node (``nsu=`` ids resolved now) and read its data type; ``PlcError`` naming the
        node and the signal when one cannot be read."""
        names = [*PLC_SIGNALS, *STATION_SIGNALS, *(n for n in REGION_SIGNALS if getattr(self.signals, n))]
        try:
            nodes = bind_nodes(client, [getattr(self.signals, n) for n in names])
        except PlcError:
            raise
        except Exception as exc:  # noqa: BLE001 - a node id asyncua cannot parse
            raise PlcError(f"cannot parse a node id of {names}: {error_text(exc)}") from exc
        for name, node in zip(names, nodes):
            try:
                self._nodes[name], self._types[name] = node, node.read_data_type_as_variant_type()
            except Exception as exc:  # noqa: BLE001
                raise PlcError(f"cannot read node {getattr(self.signals, name)!r} ({name}): "
                               f"{error_text(exc, self.timeout_s)}") from exc

    def read_inputs(self) -> dict[str, int]:
        """The PLC's signals ``{trigger, part_id, ack}`` as integers, in one Read call (each node's status
        checked)."""
        client = self._client_or_raise()
        try:
            replies = client.read_attributes([self._nodes[n] for n in PLC_SIGNALS], self._ua.AttributeIds.Value)
        except Exception as exc:  # noqa: BLE001
            raise self._error("read", exc) from exc
        self._check_statuses("read", PLC_SIGNALS, [r.StatusCode for r in replies])
        values = {n: r.Value.Value for n, r in zip(PLC_SIGNALS, replies)}
        empty = [n for n, v in values.items() if v is None]
        if empty:
            raise PlcDeviceError(f"{self.name}: the read of {', '.join(empty)} returned no value; check "
                                 f"reject.handshake.opcua")
        return {n: int(v) for n, v in values.items()}

    def write(self, values: Sequence[tuple[str, float | int | bool | None]]) -> None:
        """Write ``(signal, value)`` pairs in this order, each node's status checked: ``PlcDeviceError`` (refused)
        or ``PlcBindingError`` (node gone or retyped) naming every node that did not take its value. A result's
        write (the last pair ``results_ready`` = 1) is two Writes: the others first, then the flag alone, sent
        only when all of them succeeded."""
        pairs = list(values)
        if len(pairs) > 1 and pairs[-1][0] == RESULTS_READY and pairs[-1][1]:
            self._write_nodes(pairs[:-1])
            pairs = pairs[-1:]
        self._write_nodes(pairs)

    def _write_nodes(self, pairs: Sequence[tuple[str, float | int | bool | None]]) -> None:
        """One Write of ``pairs``; raises when the service or any node's write failed."""
        client, ua = self._client_or_raise(), self._ua
        nodes, variants = [], []
        for name, value in pairs:
            vtype = self._types[name]
            wire = _convert(heartbeat_value(value, vtype) if name == HEARTBEAT else value, vtype, ua)
            self._check_encodable(name, wire)
            nodes.append(self._nodes[name])
            variants.append(ua.Variant(wire, vtype))
        try:
            statuses = client.write_values(nodes, variants, raise_on_partial_error=False)
        except Exception as exc:  # noqa: BLE001
            raise self._error("write", exc) from exc
        self._check_statuses("write", [name for name, _ in pairs], statuses)

    def _check_statuses(self, what: str, names: Sequence[str], statuses: Sequence[Any]) -> None:
        """``PlcBindingError`` when a node of ``names`` answered that it is gone or retyped (``BINDING_STATUSES``),
        else ``PlcDeviceError`` when one answered another Bad status; each named with its node and status."""
        bad = {name: status_name(status) for name, status in zip(names, statuses) if not status.is_good()}
        if not bad:
            return
        listed = ", ".join(f"{name} (node {getattr(self.signals, name)!r}): {status}" for name, status in bad.items())
        if any(status in BINDING_STATUSES for status in bad.values()):
            raise PlcBindingError(f"{self.name}: server refused the {what} of {listed}: a node is gone or its data "
                                  f"type changed since the connect (a PLC program download?); reconnecting to "
                                  f"read the nodes again")
        raise PlcDeviceError(f"{self.name}: server refused the {what} of {listed} (check the node ids and their "
                             f"access level)")

    def close(self) -> None:
        client, self._client, self._nodes = self._client, None, {}
        if client is not None:
            _quiet_disconnect(client, self.name)

    def _check_encodable(self, name: str, value: Any) -> None:
        """``PlcDeviceError`` naming the signal, node, type and ``value`` when the node's type cannot hold it (not a
        link failure; ``check_node_types`` keeps the station's own values from getting here)."""
        problem = encoding_problem(value, self._types[name])
        if problem:
            raise PlcDeviceError(f"{self.name}: cannot write {name} = {value!r} to node "
                                 f"{getattr(self.signals, name)!r} of data type {type_name(self._types[name])} "
                                 f"({problem}); check reject.handshake.opcua.{name}")

    def _client_or_raise(self) -> Any:
        if self._client is None:
            raise PlcError(f"{self.name}: not connected")
        return self._client

    def _error(self, what: str, exc: Exception) -> PlcError:
        """A whole Read / Write service failed: a Bad service status (``PlcBindingError`` / ``PlcDeviceError``), or
        the link (``PlcError``, the exception's type named when its text is empty: a timeout)."""
        if isinstance(exc, self._ua.UaStatusCodeError):
            status = status_name(exc)
            kind = PlcBindingError if status in BINDING_STATUSES else PlcDeviceError
            return kind(f"{self.name}: server refused the {what}: {error_text(exc)} "
                        f"(check the node ids and their access level)")
        return PlcError(f"{self.name}: {what} failed: {error_text(exc, self.timeout_s)}")


def open_opcua_link(url: SinkUrl, settings: HandshakeSettings) -> OpcUaLink:
    """The ``opcua://`` entry of ``HANDSHAKE_SCHEMES`` (not connected yet)."""
    return OpcUaLink(url, settings.opcua)


def exact_range(vtype: Any) -> tuple[int, int] | None:
    """The integers a node of data type ``vtype`` holds exactly, (lowest, highest): an integer type's range,
    (0, 1) for Boolean, -2**24..2**24 for Float, -2**53..2**53 for Double; None for any other type (String, ...)."""
    name = type_name(vtype)
    if name == "Boolean":
        return 0, 1
    if name in FLOAT_TYPES:
        return -FLOAT_TYPES[name], FLOAT_TYPES[name]
    return integer_range(vtype)


def check_node_types(signals: OpcUaSignals, types: dict[str, Any]) -> None:
    """``ConfigError`` for the first signal in ``types`` (signal -> its node's data type, as read at connect)
    whose node cannot hold what crosses the link (``SIGNAL_VALUES``): it names the signal, the node, its type,
    what it must hold and the fix."""
    for name, vtype in types.items():
        expected = _type_expected(name, types)
        if expected:
            raise ConfigError(f"reject.handshake.opcua.{name}: node {getattr(signals, name)!r} has data type "
                              f"{type_name(vtype)}, expected a type that holds {expected}; change the PLC tag's "
                              f"type or point reject.handshake.opcua.{name} at a node that holds it")


def _type_expected(name: str, types: dict[str, Any]) -> str:
    """What signal ``name``'s node must hold, when its type ``types[name]`` does not; "" when it does."""
    if name == SCORE:
        return "" if type_name(types[name]) in FLOAT_TYPES else "the score (Float or Double; NaN = not scored)"
    if name == RESULT_PART_ID:
        lowest, highest = exact_range(types[PART_ID]) or (0, 0)   # (a PartId node of no number type is refused first)
        what = f"every part id the PartId node ({type_name(types[PART_ID])}) holds, {lowest}..{highest}"
    else:
        what, lowest, highest = SIGNAL_VALUES[name]
    held = exact_range(types[name])
    return "" if held is not None and held[0] <= lowest and highest <= held[1] else what


def heartbeat_value(beat: int | float | bool | None, vtype: Any) -> Any:
    """The heartbeat counter ``beat`` (0..65535) as a node of data type ``vtype`` holds it: wrapped into an
    integer type's range (``wrap_integer``, two's complement: Int16 32767 -> -32768 ... -1 -> 0; Byte / SByte
    modulo 256), its lowest bit on a Boolean node (it toggles), as is on a wider integer or a float node.
    Every step still changes the node, which is all the PLC's watchdog looks at."""
    if type_name(vtype) == "Boolean":
        return bool(int(beat) % 2)
    return wrap_integer(int(beat), vtype)


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

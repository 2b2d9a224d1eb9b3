"""OPC UA output via asyncua's sync client (it runs its own event loop thread).

URL: ``opcua://HOST:PORT/PATH?node=ns=2;s=Reject`` with ``mode=pulse`` (default: write True,
then False after pulse_ms) or ``mode=counter`` (add 1 to an integer node per reject; the PLC
acts on each change). Other options: ``pulse_ms``, ``timeout_ms`` (default 1000).
The value is written with the node's own data type (read once after connecting). While idle the sink's
worker probes the link by reading the node's value, never by writing it.
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
    """``Output`` over one OPC UA client; a Bad status reply raises ``PlcDeviceError``,
    anything else ``PlcError``."""

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

    def set(self, on: bool) -> None:
        if self._node is None:
            raise PlcError(f"{self.target.label}: not connected")
        if self.target.mode == "counter":
            if not on:
                return
            value: Any = self._count + 1
        else:
            value = bool(on)
        try:
            self._node.write_value(value, self._vtype)
        except Exception as exc:  # noqa: BLE001
            if _is_status_error(exc):
                raise PlcDeviceError(f"{self.target.label}: server refused the write: {exc} "
                                     f"(check the node id and its access level)") from exc
            raise PlcError(f"{self.target.label}: write failed: {exc}") from exc
        if self.target.mode == "counter":
            self._count = value

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

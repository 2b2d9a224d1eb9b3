"""Modbus TCP output: a coil pulse or a holding-register write, via pymodbus (3.x sync client).

URL: ``modbus://HOST:PORT?unit=1&coil=0&pulse_ms=50`` (coil: True, then False after pulse_ms)
or ``modbus://HOST:PORT?unit=1&register=N&value=1`` (holding register: value, then 0 after
pulse_ms; ``pulse_ms=0`` writes the value only and leaves clearing it to the PLC).
Other options: ``timeout_ms`` (connect/response timeout, default 100).
Ranges, checked when the URL is parsed (the station file is read): ``unit`` 0..255 (0 is the broadcast
address: no device replies to it, so every write times out; many Modbus TCP PLCs ignore the unit id),
``coil`` / ``register`` 0..65535, ``value`` 0..65535.
While idle the sink's worker probes the link by reading back what it writes (FC 1 for the coil, FC 3 for
the register), never by writing; a resting level read back at another value (a PLC or HMI wrote over it) is written
again (``WorkerSink``, ``written``).

Exception replies: codes 0x0A (gateway path unavailable) and 0x0B (gateway target device failed to respond)
come from a gateway whose PLC behind it is off or unreachable: a link failure (``PlcError``). Every other code
(0x01 illegal function, 0x02 illegal address, 0x03 illegal value, 0x04 device failure, 0x06 busy, ...) is the
device's own answer: ``PlcDeviceError`` (the link is up). ``check_reply`` sorts them, for the handshake too.

pymodbus 3.10+ names the unit ``device_id=`` (older 3.x: ``slave=``); this module targets the
installed 3.16 API and passes ``device_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import PlcDeviceError, PlcError, SinkError
from .base import Reporter, WorkerSink, log_reporter
from .urls import SinkUrl

MODBUS_OPTIONS = ("unit", "coil", "register", "value", "pulse_ms", "timeout_ms")
UNIT_MAX = 255        # a Modbus unit (device) id is one byte; 0 = broadcast (no reply)
ADDRESS_MAX = 65535   # coil / register addresses are 16-bit, 0-based
WORD_MAX = 65535      # a holding register holds one 16-bit unsigned word
GATEWAY_CODES = {0x0A: "gateway path unavailable", 0x0B: "gateway target device failed to respond"}


@dataclass(frozen=True)
class ModbusTarget:
    """Where to write. coil or register (exactly one) is the 0-based address; value is what a
    register gets while the pulse is on. timeout_s: connect/response timeout, seconds."""

    host: str
    port: int
    unit: int = 1
    coil: int | None = None
    register: int | None = None
    value: int = 1
    timeout_s: float = 0.1

    @property
    def label(self) -> str:
        what = f"coil {self.coil}" if self.coil is not None else f"register {self.register}"
        return f"modbus {self.host}:{self.port} unit {self.unit} {what}"


def parse_modbus_url(url: SinkUrl) -> tuple[ModbusTarget, float | None]:
    """-> (target, pulse_ms or None when the URL does not set it)."""
    url.check_query(MODBUS_OPTIONS)
    if not url.host:
        raise SinkError(f"{url.shown}: expected modbus://HOST:PORT?coil=N, found no host")
    coil = url.get_int("coil", None, maximum=ADDRESS_MAX)
    register = url.get_int("register", None, maximum=ADDRESS_MAX)
    if (coil is None) == (register is None):
        raise SinkError(f"{url.shown}: expected exactly one of coil=N or register=N, found "
                        f"{'both' if coil is not None else 'neither'}")
    target = ModbusTarget(
        host=url.host, port=url.port or 502, unit=url.get_int("unit", 1, maximum=UNIT_MAX),
        coil=coil, register=register, value=url.get_int("value", 1, maximum=WORD_MAX),
        timeout_s=url.get_float("timeout_ms", 100.0, minimum=1.0) / 1000.0)
    pulse = url.get_float("pulse_ms", -1.0, minimum=0.0) if "pulse_ms" in url.query else None
    return target, pulse


def modbus_client_class() -> Any:
    """pymodbus's ``ModbusTcpClient`` class, or SinkError naming the package and the install command when
    pymodbus is missing. Sinks call it when they are opened (the station's thread, at start), so a missing
    package stops the start instead of failing later on a sink's own thread."""
    try:
        from pymodbus.client import ModbusTcpClient
    except ImportError as exc:
        raise SinkError(f"modbus:// sinks, encoders and handshakes need the 'pymodbus' package, found it "
                        f"missing ({exc}): pip install 'fair-edge[plc]'") from exc
    return ModbusTcpClient


def modbus_tcp_client(host: str, *, port: int, timeout: float, retries: int = 0) -> Any:
    """The one place fair-edge makes a pymodbus ``ModbusTcpClient`` (reject sinks, encoder counters, the PLC handshake):
    timeout in seconds, no internal retries by default (callers retry within their own deadlines); SinkError
    with the install command when pymodbus is missing."""
    return modbus_client_class()(host, port=port, timeout=timeout, retries=retries)


def default_client_factory(target: ModbusTarget) -> Any:
    """A pymodbus client for ``target`` (no internal retries: we retry ourselves, within each pulse's
    deadline)."""
    return modbus_tcp_client(target.host, port=target.port, timeout=target.timeout_s)


def check_reply(result: Any, what: str, hint: str = "") -> Any:
    """``result`` when it is no exception reply. An exception reply with a gateway code (``GATEWAY_CODES``: the
    device behind a gateway is off or unreachable) raises ``PlcError`` (a link failure); any other code
    ``PlcDeviceError`` (the device answered and refused). what: the request, named in the message (e.g.
    ``"modbus 10.0.0.5:502 unit 1 coil 0: the write"``); hint: appended to a refusal's message."""
    if not result.isError():
        return result
    code = getattr(result, "exception_code", None)
    if code in GATEWAY_CODES:
        raise PlcError(f"{what} failed: exception 0x{code:02X} ({GATEWAY_CODES[code]}): the gateway answers, the "
                       f"device behind it does not (is the PLC on and reachable from the gateway?)")
    raise PlcDeviceError(f"{what}: device refused it: {result}{hint}")


def connect_client(client: Any, label: str) -> Any:
    """``client.connect()``, or ``PlcError`` naming ``label`` (the client is closed then); returns
    the connected client. Shared by the sinks, the encoder and the handshake."""
    try:
        ok = client.connect()
    except Exception as exc:  # noqa: BLE001 - any transport failure is a link failure
        raise PlcError(f"{label}: connect failed: {exc}") from exc
    if not ok:
        client.close()
        raise PlcError(f"{label}: expected a connection, found none (is the PLC on and the port open?)")
    return client


class ModbusOutput:
    """``Output`` over one Modbus client. The client is made by ``client_factory(target)``
    (tests hand in another); a device's exception reply (``result.isError()``) raises
    ``PlcDeviceError``, a transport failure or a gateway's 0x0A / 0x0B reply ``PlcError`` (``check_reply``)."""

    def __init__(self, target: ModbusTarget,
                 client_factory: Callable[[ModbusTarget], Any] = default_client_factory) -> None:
        self.target = target
        self._factory = client_factory
        self._client: Any = None

    def open(self) -> None:
        self.close()
        self._client = connect_client(self._factory(self.target), self.target.label)

    def set(self, on: bool) -> None:
        if self._client is None:
            raise PlcError(f"{self.target.label}: not connected")
        t = self.target
        try:
            if t.coil is not None:
                result = self._client.write_coil(t.coil, self.written(on), device_id=t.unit)
            else:
                result = self._client.write_register(t.register, self.written(on), device_id=t.unit)
        except Exception as exc:  # noqa: BLE001 - ModbusException / OSError: the link failed
            raise PlcError(f"{t.label}: write failed: {exc}") from exc
        check_reply(result, f"{t.label}: the write", " (check the address and unit id in the PLC program)")

    def written(self, on: bool) -> bool | int:
        """What ``set(on)`` writes: the coil's bool, or the register's ``value`` (on) / 0 (off)."""
        if self.target.coil is not None:
            return bool(on)
        return self.target.value if on else 0

    def probe(self) -> bool | int:
        """Check the link answers without writing: read back the coil (FC 1) or holding register (FC 3) that
        ``set`` writes; returns what it holds (as ``written`` gives it: bool, or the register's word). ``PlcError``
        when the link fails (a gateway's 0x0A / 0x0B reply too), ``PlcDeviceError`` when the device refuses the
        read (it answered: the link is up)."""
        if self._client is None:
            raise PlcError(f"{self.target.label}: not connected")
        t = self.target
        try:
            if t.coil is not None:
                result = self._client.read_coils(t.coil, count=1, device_id=t.unit)
            else:
                result = self._client.read_holding_registers(t.register, count=1, device_id=t.unit)
        except Exception as exc:  # noqa: BLE001 - ModbusException / OSError: the link failed
            raise PlcError(f"{t.label}: probe (read back) failed: {exc}") from exc
        check_reply(result, f"{t.label}: the read back")
        return bool(result.bits[0]) if t.coil is not None else int(result.registers[0])

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def open_modbus_sink(url: SinkUrl, pulse_ms: float, reporter: Reporter = log_reporter,
                     client_factory: Callable[[ModbusTarget], Any] | None = None) -> WorkerSink:
    """Parse ``url`` and start its worker. Without ``client_factory`` pymodbus must be installed: checked here,
    on the caller's thread (``SinkError`` with the install command), not first on the worker's."""
    target, url_pulse = parse_modbus_url(url)
    if client_factory is None:
        modbus_client_class()
    output = ModbusOutput(target, client_factory or default_client_factory)
    return WorkerSink(target.label, output, pulse_ms if url_pulse is None else url_pulse,
                      reporter=reporter)

"""The handshake over Modbus TCP: the station is a client of the PLC's server; every signal is a
holding register (``ModbusSignals``), read with FC 3 and written with FC 16.

URL: ``modbus://HOST:PORT?unit=1&timeout_ms=100``. Encoding: booleans 0 / 1; part ids 32-bit in two
registers, high word first; ``score`` = round((score + score_offset) * score_scale) saturated to 0..65535 (65535
also for a part that was not scored: score None); a score saturated to 0 (below -score_offset: a fused bundle's,
in normal spreads, with no offset) is logged once per link, naming ``reject.handshake.score_offset``
(``HandshakeSettings``). Registers that lie next to each other
are written in one request (a PLC sees them change together); the register of the last signal
in a ``write`` goes in the last request (so ``results_ready`` never rises before its data).
pymodbus 3.10+ API (``device_id=``), as in ``fair_edge.line.sinks.modbus``. An exception reply is the device's
refusal (``PlcDeviceError``), except a gateway's 0x0A / 0x0B (the PLC behind it is off): a link failure
(``PlcError``), sorted by ``sinks.modbus.check_reply``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import PlcError
from ..sinks.modbus import check_reply, connect_client, modbus_tcp_client
from ..sinks.urls import SinkUrl
from .address import modbus_address
from .settings import (FUSED_SCORE_OFFSET, PLC_SIGNALS, SCORE, SCORE_MAX, WIDE_SIGNALS, HandshakeSettings,
                       ModbusSignals)

log = logging.getLogger(__name__)

MAX_READ = 125   # registers one FC 3 request may read


def encode(name: str, value: float | int | bool | None, score_scale: float, score_offset: float = 0.0) -> list[int]:
    """One signal's value -> its register words (16-bit unsigned); the score as round((score + score_offset) x
    score_scale) saturated to 0..SCORE_MAX; a score of None (not scored) or NaN is SCORE_MAX."""
    if name == SCORE:
        v = math.nan if value is None else float(value)
        return [SCORE_MAX if math.isnan(v) else max(0, min(SCORE_MAX, round((v + score_offset) * score_scale)))]
    if value is None:
        raise TypeError(f"handshake signal {name!r} needs a value; found None")
    v = int(value) & 0xFFFFFFFF
    return [v >> 16, v & 0xFFFF] if name in WIDE_SIGNALS else [v & 0xFFFF]


def runs(words: dict[int, int]) -> list[tuple[int, list[int]]]:
    """Registers -> runs of consecutive addresses ``(first address, words)``, ascending."""
    out: list[tuple[int, list[int]]] = []
    for address in sorted(words):
        if out and out[-1][0] + len(out[-1][1]) == address:
            out[-1][1].append(words[address])
        else:
            out.append((address, [words[address]]))
    return out


class ModbusLink:
    """``HandshakeLink`` over one pymodbus ``ModbusTcpClient`` (``client_factory(host, port=PORT,
    timeout=SECONDS)`` makes it: ``sinks.modbus.modbus_tcp_client`` unless tests hand in another)."""

    def __init__(self, url: SinkUrl, signals: ModbusSignals, score_scale: float,
                 client_factory: Callable[..., Any] | None = None, score_offset: float = 0.0) -> None:
        address = modbus_address(url)
        self.host, self.port, self.unit, self.timeout_s = address.host, address.port, address.unit, address.timeout_s
        self.signals, self.score_scale, self.score_offset = signals, score_scale, score_offset
        self._warned_low_score = False   # a score saturated to 0 was logged (once per link)
        self.name = f"modbus {self.host}:{self.port} unit {self.unit}"
        self._factory = client_factory or modbus_tcp_client
        self._client: Any = None
        inputs = [a for n in PLC_SIGNALS for a in signals.registers(n)]
        self._span = (min(inputs), max(inputs) - min(inputs) + 1)

    def open(self) -> None:
        self.close()
        self._client = connect_client(self._factory(self.host, port=self.port, timeout=self.timeout_s), self.name)

    def read_inputs(self) -> dict[str, int]:
        """The PLC's signals: ``{trigger, part_id, ack}`` as integers (one FC 3 read when they
        lie within 125 registers)."""
        first, count = self._span
        if count <= MAX_READ:
            words = dict(zip(range(first, first + count), self._read(first, count)))
        else:
            words = {}
            for name in PLC_SIGNALS:
                regs = self.signals.registers(name)
                words.update(zip(regs, self._read(regs[0], len(regs))))
        out = {}
        for name in PLC_SIGNALS:
            value = 0
            for address in self.signals.registers(name):
                value = (value << 16) | (words[address] & 0xFFFF)
            out[name] = value
        return out

    def write(self, values: Sequence[tuple[str, float | int | bool | None]]) -> None:
        """Write ``(signal, value)`` pairs; the last pair's registers are written last."""
        words: dict[int, int] = {}
        for name, value in values:
            if name == SCORE:
                self._check_score(value)
            words.update(zip(self.signals.registers(name), encode(name, value, self.score_scale, self.score_offset)))
        last = self.signals.registers(values[-1][0])[0]
        blocks = runs(words)
        blocks.sort(key=lambda b: b[0] <= last < b[0] + len(b[1]))   # stable: the flag's run last
        for address, block in blocks:
            self._call("write", self._client_or_raise().write_registers, address, block, device_id=self.unit)

    def _check_score(self, score: float | None) -> None:
        """Log once per link a score the register cannot hold, written as 0: below -score_offset (a fused bundle's
        scores, in normal spreads, are mostly below 0), with the fix."""
        if self._warned_low_score or score is None or not score + self.score_offset < 0:
            return
        self._warned_low_score = True
        log.warning("%s: score %.4g written to the score register (%d) as 0: it holds round((score + score_offset) x "
                    "score_scale) within 0..65535, and reject.handshake.score_offset is %g. A fused bundle's scores "
                    "count normal spreads and are mostly below 0: set reject.handshake.score_offset (e.g. %g; the "
                    "PLC reads score = register / %g - score_offset). Logged once; the Result register says OK or NG "
                    "either way.", self.name, score, self.signals.score, self.score_offset, FUSED_SCORE_OFFSET,
                    self.score_scale)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _read(self, address: int, count: int) -> list[int]:
        result = self._call("read", self._client_or_raise().read_holding_registers, address,
                            count=count, device_id=self.unit)
        return list(result.registers)

    def _client_or_raise(self) -> Any:
        if self._client is None:
            raise PlcError(f"{self.name}: not connected")
        return self._client

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ModbusException / OSError: the link failed
            raise PlcError(f"{self.name}: {what} failed: {exc}") from exc
        return check_reply(result, f"{self.name}: the {what} at register {args[0]}",
                           " (check reject.handshake.modbus addresses and the unit id)")


def open_modbus_link(url: SinkUrl, settings: HandshakeSettings) -> ModbusLink:
    """The ``modbus://`` entry of ``HANDSHAKE_SCHEMES`` (not connected yet)."""
    return ModbusLink(url, settings.modbus, settings.score_scale, score_offset=settings.score_offset)


"""Settings of the PLC handshake (``reject.handshake`` in the station file) and the names it uses.

The station is a client of the PLC (Modbus TCP server or OPC UA server). Signals, PLC -> station:
``trigger`` (1 = capture the part whose id is in ``part_id``; the station sets it back to 0 when it
has taken the trigger), ``ack`` (1 = the PLC has read the result; the station sets it back to 0).
Station -> PLC: ``ready``, ``heartbeat``, ``error``, ``results_ready``, ``result_part_id``,
``result`` (1 OK, 2 NG, 3 NG not inspected) and ``score``; optional, written with each result where an
address / node is set: ``region_count``, ``largest_area`` and ``zone_id`` (defect regions, see
``REGION_SIGNALS``). docs/line-integration.md, "Handshake".
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ...errors import ConfigError, SinkError
from ... import fields as f
from .address import handshake_address

# signal names (a name that crosses the link is defined once, here)
TRIGGER, PART_ID, ACK = "trigger", "part_id", "ack"                     # written by the PLC
READY, HEARTBEAT, ERROR = "ready", "heartbeat", "error"                  # written by the station
RESULTS_READY, RESULT_PART_ID, RESULT, SCORE = "results_ready", "result_part_id", "result", "score"
PLC_SIGNALS = (TRIGGER, PART_ID, ACK)
STATION_SIGNALS = (READY, HEARTBEAT, ERROR, RESULTS_READY, RESULT_PART_ID, RESULT, SCORE)
# optional, written with each result when given an address / node: defect regions (fair_edge.regions), those in
# ``ignore`` zones left out: region_count = regions reported (at most regions.max_regions per zone, the largest);
# largest_area = the area of the region that fired the first rule, else of the largest region, in 0.01 mm² with a
# camera scale (rounded: a region under 0.005 mm² reads 0), else in frame px² (saturated); zone_id = the zone of the
# first rule that fired, else of the largest region (0 = default zone / none)
REGION_COUNT, LARGEST_AREA, ZONE_ID = "region_count", "largest_area", "zone_id"
REGION_SIGNALS = (REGION_COUNT, LARGEST_AREA, ZONE_ID)
WIDE_SIGNALS = (PART_ID, RESULT_PART_ID)   # 32-bit part ids: two Modbus registers, high word first

# the ``result`` signal
RESULT_NONE, RESULT_OK, RESULT_NG, RESULT_NOT_INSPECTED = 0, 1, 2, 3

# the ``error`` signal: code -> meaning (the docs' table is this one)
ERROR_NONE = 0
ERROR_STATION_FAULT = 1       # the station cannot inspect (camera gone or reconnecting, backend failing)
ERROR_ACK_TIMEOUT = 10        # a result was not acknowledged within ack_timeout_ms
ERROR_RESULT_TIMEOUT = 11     # a triggered part got no result within result_timeout_ms (never written late)
ERROR_TRIGGER_OVERRUN = 12    # more than max_parts triggered parts waiting to be captured
ERROR_CODES = {
    ERROR_NONE: "no fault",
    ERROR_STATION_FAULT: "station fault: cannot inspect (camera, backend); Ready is 0",
    ERROR_ACK_TIMEOUT: "ack timeout: a result was not acknowledged within ack_timeout_ms",
    ERROR_RESULT_TIMEOUT: "result timeout: a triggered part got no result within result_timeout_ms",
    ERROR_TRIGGER_OVERRUN: "trigger overrun: more than max_parts parts waiting to be captured",
}
HEARTBEAT_MODULUS = 1 << 16   # the heartbeat counter wraps to 0 after 65535 (both protocols)
HEARTBEAT_STEPS = 5           # the counter changes this many times per heartbeat_ms
SCORE_MAX = 0xFFFF            # Modbus score register: round((score + score_offset) * score_scale), saturated here
SCORE_OFFSET_MAX = 1e6        # reject.handshake.score_offset: at most this far from 0, score units
FUSED_SCORE_OFFSET = 10.0     # the score_offset the warnings propose for a fused bundle (scores -10 .. 55.5 at x 1000)


@dataclass(frozen=True)
class ModbusSignals:
    """Holding-register addresses (0-based, unit from the URL) of each signal on the PLC's server.
    ``part_id`` and ``result_part_id`` take two registers (address, address + 1; high word first);
    every other signal one. The defaults are one block of 12 registers, 0..11."""

    trigger: int = 0
    part_id: int = 1
    ack: int = 3
    ready: int = 4
    heartbeat: int = 5
    error: int = 6
    results_ready: int = 7
    result_part_id: int = 8
    result: int = 10
    score: int = 11
    region_count: int | None = None
    largest_area: int | None = None
    zone_id: int | None = None
    BLOCK: ClassVar[str] = "modbus"   # its key in reject.handshake

    @classmethod
    def from_dict(cls, data: Any) -> ModbusSignals:
        s = f"reject.handshake.{cls.BLOCK}"
        d = f.with_defaults(s, data, cls)
        return cls(**{k: None if v is None and k in REGION_SIGNALS else f.integer(s, k, v, minimum=0, maximum=65534)
                      for k, v in d.items()})

    def refuse_shared(self, given: Collection[str]) -> None:
        """Refuse two signals on one register (``refuse_shared``); given: the signals the file sets."""
        refuse_shared(f"reject.handshake.{self.BLOCK}", "register",
                      [(name, register) for name in signal_names(self) for register in self.registers(name)], given)

    def registers(self, name: str) -> tuple[int, ...]:
        address = getattr(self, name)
        return (address, address + 1) if name in WIDE_SIGNALS else (address,)


@dataclass(frozen=True)
class OpcUaSignals:
    """Node ids of each signal on the PLC's OPC UA server. Booleans: trigger, ack, ready,
    results_ready; integers: part_id, result_part_id (32-bit), heartbeat, error, result; score: a
    Float or Double node. Values are written with each node's own data type (read once per connect)."""

    trigger: str = "ns=2;s=Trigger"
    part_id: str = "ns=2;s=PartId"
    ack: str = "ns=2;s=Ack"
    ready: str = "ns=2;s=Ready"
    heartbeat: str = "ns=2;s=Heartbeat"
    error: str = "ns=2;s=Error"
    results_ready: str = "ns=2;s=ResultsReady"
    result_part_id: str = "ns=2;s=ResultPartId"
    result: str = "ns=2;s=Result"
    score: str = "ns=2;s=Score"
    region_count: str | None = None
    largest_area: str | None = None
    zone_id: str | None = None
    BLOCK: ClassVar[str] = "opcua"   # its key in reject.handshake

    @classmethod
    def from_dict(cls, data: Any) -> OpcUaSignals:
        s = f"reject.handshake.{cls.BLOCK}"
        d = f.with_defaults(s, data, cls)
        return cls(**{k: None if v is None and k in REGION_SIGNALS else f.text(s, k, v) for k, v in d.items()})

    def refuse_shared(self, given: Collection[str]) -> None:
        """Refuse two signals on one node (``refuse_shared``); given: the signals the file sets."""
        refuse_shared(f"reject.handshake.{self.BLOCK}", "node",
                      [(name, getattr(self, name)) for name in signal_names(self)], given)


def signal_names(signals: ModbusSignals | OpcUaSignals) -> list[str]:
    """The signals given a place in ``signals`` (every one but the region signals left null), in field order."""
    return [x.name for x in fields(signals) if getattr(signals, x.name) is not None]


def refuse_shared(section: str, what: str, places: list[tuple[str, int | str]], given: Collection[str]) -> None:
    """Refuse (ConfigError) two signals on one place: places are (signal, a register it takes or its node id) pairs,
    what is ``register`` or ``node``. Node ids are compared as written (``ns=2;s=Ack`` and ``nsu=URI;s=Ack`` may be
    one node: only the server's namespace array tells). The signals the file sets (``given``) are checked after the
    defaults, so the refusal names a setting the file wrote (``ready: ... found 'ns=2;s=Ack' (also ack)``)."""
    used: dict[int | str, str] = {}
    for name, place in sorted(places, key=lambda named: named[0] in given):
        if place in used:
            raise ConfigError(f"{section}.{name}: expected a {what} no other signal uses, found {place!r} "
                              f"(also {used[place]}); give each signal its own {what}")
        used[place] = name


@dataclass(frozen=True)
class HandshakeSettings:
    """The PLC handshake; off while ``url`` is null.

    url: the PLC, ``modbus://HOST:PORT?unit=1[&timeout_ms=100]`` or
        ``opcua://HOST:PORT/PATH[?timeout_ms=1000]``.
    poll_ms: how often the station reads trigger / part id / ack, ms (a trigger waits at most this).
    heartbeat_ms: the PLC's watchdog time, ms: the heartbeat counter changes every
        heartbeat_ms / 5; a counter unchanged for heartbeat_ms means the station is dead (not ready).
    ack_timeout_ms: results_ready -> ack, most ms; past it the result is withdrawn, the fault
        counted and ``error`` = 10 until a later result is acknowledged in time.
    result_timeout_ms: trigger -> results_ready, most ms; a part without a result by then is never
        answered late (``error`` = 11; the PLC rejects it).
    score_scale: Modbus only: the score register holds round((score + score_offset) * score_scale), 0..65535.
    score_offset: Modbus only, in score units: added to the score before scaling, so scores below 0 (a fused
        bundle's, in its members' normal spreads: about -2 .. 0 on normal parts) read above 0; the PLC takes
        score = register / score_scale - score_offset. 0 (the default) writes every score below 0 as 0
        (``fused_score_warning``); 10 reads scores -10 .. 55.5 with score_scale 1000.
    max_parts: most triggered parts waiting to be captured; more = ``error`` 12, answered NG
        not inspected.
    modbus / opcua: where each signal lives (the one the URL's scheme names is used, ``signals``; only its places
        are checked for two signals on one, so a Modbus station file's unused ``opcua:`` template loads as it is).
    """

    url: str | None = None
    poll_ms: float = 5.0
    heartbeat_ms: float = 500.0
    ack_timeout_ms: float = 1000.0
    result_timeout_ms: float = 2000.0
    score_scale: float = 1000.0
    score_offset: float = 0.0
    max_parts: int = 64
    modbus: ModbusSignals = field(default_factory=ModbusSignals)
    opcua: OpcUaSignals = field(default_factory=OpcUaSignals)

    @classmethod
    def from_dict(cls, data: Any) -> HandshakeSettings:
        s = "reject.handshake"
        d = f.with_defaults(s, data, cls)
        url = d["url"]
        if url is not None and (not isinstance(url, str) or not url.startswith(("modbus://", "opcua://"))):
            raise ConfigError(f"{s}.url: expected null, 'modbus://HOST:PORT?unit=1' or "
                              f"'opcua://HOST:PORT/PATH', found {url!r}")
        poll = f.number(s, "poll_ms", d["poll_ms"], minimum=0.5, maximum=1000)
        heartbeat = f.number(s, "heartbeat_ms", d["heartbeat_ms"], minimum=50, maximum=60000)
        if heartbeat < HEARTBEAT_STEPS * poll:
            raise ConfigError(f"{s}.heartbeat_ms: expected at least {HEARTBEAT_STEPS} x poll_ms = "
                              f"{HEARTBEAT_STEPS * poll:g}, found {heartbeat:g}; raise it or lower poll_ms")
        out = cls(
            url=url, poll_ms=poll, heartbeat_ms=heartbeat,
            ack_timeout_ms=f.number(s, "ack_timeout_ms", d["ack_timeout_ms"], minimum=1, maximum=f.DAY_MS),
            result_timeout_ms=f.number(s, "result_timeout_ms", d["result_timeout_ms"], minimum=1, maximum=f.DAY_MS),
            score_scale=f.number(s, "score_scale", d["score_scale"], minimum=1e-6),
            score_offset=f.number(s, "score_offset", d["score_offset"], minimum=-SCORE_OFFSET_MAX,
                                  maximum=SCORE_OFFSET_MAX),
            max_parts=f.integer(s, "max_parts", d["max_parts"], minimum=1, maximum=4096),
            modbus=ModbusSignals.from_dict(d.get("modbus")),
            opcua=OpcUaSignals.from_dict(d.get("opcua")),
        )
        if url is not None:
            out.check_url()
        out.signals.refuse_shared(d.get(out.signals.BLOCK) or {})
        return out

    def check_url(self) -> None:
        """Parse ``url`` as the link would (host, options) without connecting; ``ConfigError`` if bad."""
        try:
            handshake_address(self.url)
        except SinkError as exc:
            raise ConfigError(f"reject.handshake.url: {exc}") from exc

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def signals(self) -> ModbusSignals | OpcUaSignals:
        """The places this url's protocol uses: ``opcua`` for an ``opcua://`` url, else ``modbus`` (none set too)."""
        return self.opcua if (self.url or "").startswith("opcua://") else self.modbus

    @property
    def region_signals(self) -> tuple[str, ...]:
        """The optional region signals (``REGION_SIGNALS``) given an address / node for this url's protocol."""
        return tuple(n for n in REGION_SIGNALS if getattr(self.signals, n) is not None)


def fused_score_warning(settings: HandshakeSettings, fused: bool) -> str:
    """Why a fused bundle's scores (``fused``: the station's model, or one of its cameras', is fused) would read 0 on
    this handshake's Modbus score register, with the fix; "" when they do not (no handshake, OPC UA's Float / Double
    node, a ``score_offset`` > 0, or a single bundle, whose scores are >= 0). Logged at start by the station."""
    if not fused or not (settings.url or "").startswith("modbus://") or settings.score_offset > 0:
        return ""
    return (f"reject.handshake.score_offset is {settings.score_offset:g} and the bundle is fused: its scores count its "
            "members' normal spreads and are mostly below 0 on normal parts, and the Modbus score register (0..65535, "
            "round((score + score_offset) x score_scale)) writes every score below -score_offset as 0. Set "
            f"reject.handshake.score_offset: {FUSED_SCORE_OFFSET:g} (the PLC reads score = register / "
            f"{settings.score_scale:g} - {FUSED_SCORE_OFFSET:g}); the Result register says OK or NG either way.")


def region_values(verdict: Any, names: tuple[str, ...]) -> dict[str, int]:
    """The region signals ``names`` of a ``records.Verdict``, 0..65535 each (see ``REGION_SIGNALS``): the regions
    outside ``ignore`` zones counted (``Verdict.counted_regions``), and the area and zone of one region
    (``Verdict.reported_region``: the one that fired the first rule, else the largest counted one)."""
    if not names:
        return {}
    region = verdict.reported_region
    area = 0 if region is None else (region.area_mm2 * 100 if region.area_mm2 is not None else region.area_px)
    zone = verdict.hits[0].zone_id if verdict.hits else (0 if region is None else region.zone_id)
    values = {REGION_COUNT: len(verdict.counted_regions), LARGEST_AREA: round(area), ZONE_ID: zone}
    return {n: max(0, min(0xFFFF, int(values[n]))) for n in names}

"""A test PLC for the handshake: a real Modbus TCP (pymodbus) or OPC UA (asyncua) server on
127.0.0.1 with a PLC program scanning its memory every millisecond on the server's own loop.

The program (``PlcProgram``) does what a line PLC does: while ``ready`` = 1 and the heartbeat is
fresh it triggers the next part at ``rate_hz`` (part id first, then ``trigger`` = 1, only once the
station has set the previous trigger back to 0), reads every result when ``results_ready`` rises,
acknowledges it (unless ``ack=False``), and watches the heartbeat: a counter unchanged for
``heartbeat_ms`` is a dead station (``stale_events``). It records, in monotonic seconds (the
system-wide clock, so times compare with the station's): each trigger, each result, each ack round
trip (ack set -> ``results_ready`` back to 0), heartbeat changes and ``ready`` / ``error`` changes.
``check()`` says whether every triggered part got exactly one result, in trigger order.

``python -m fair_edge.line.handshake.sim_handshake_plc --port P --rate 10 --report FILE`` runs the Modbus
PLC in its own process (benchmarks/soak.py) and writes its report as JSON on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..sim_sink_plc import ChildServer, LoopThread, free_port
from .modbus import encode
from .settings import (ACK, ERROR, HEARTBEAT, PART_ID, READY, RESULT, RESULT_PART_ID, RESULTS_READY,
                       SCORE, TRIGGER, HandshakeSettings, ModbusSignals, OpcUaSignals)

SCAN_S = 0.001


class PlcProgram:
    """The PLC's side of the handshake over a memory with ``get(name)`` and ``async set(name, v)``.

    rate_hz: triggers per second (0 = none); parts: how many to trigger (None = until stopped);
    ack: acknowledge results; heartbeat_ms: the watchdog time; first_id: the first part id.
    """

    def __init__(self, memory, rate_hz: float, parts: int | None = None, ack: bool = True,
                 heartbeat_ms: float = HandshakeSettings.heartbeat_ms, first_id: int = 1000) -> None:
        self.mem, self.rate_hz, self.parts, self.ack = memory, rate_hz, parts, ack
        self.heartbeat_s = heartbeat_ms / 1000.0
        self.next_id = first_id
        self.triggers: list[tuple[int, float]] = []          # (part id, t trigger set)
        self.taken: dict[int, float] = {}                     # part id -> t the station cleared trigger
        self.results: list[tuple[float, int, int, float]] = []   # (t seen, part id, result, score)
        self.ack_round_trips: list[float] = []                # s, ack set -> results_ready 0
        self.heartbeats: list[float] = []                     # t of each heartbeat change
        self.ready_changes: list[tuple[float, int]] = []
        self.error_changes: list[tuple[float, int]] = []
        self.late_triggers = 0       # a trigger due while the station was not ready or had not taken the last
        self.stale_events: list[float] = []    # t each time the heartbeat went stale (unchanged > heartbeat_ms)
        self._last = {READY: 0, ERROR: 0, HEARTBEAT: None}
        self._t_beat: float | None = None
        self._acking: float | None = None    # t the PLC set ack
        self._up: int | None = None          # part id of the result now up
        self._pending: int | None = None     # part id whose trigger is still 1
        self._next_t: float | None = None
        self._stopped = False

    @property
    def alive(self) -> bool:
        return self._t_beat is not None and time.monotonic() - self._t_beat <= self.heartbeat_s

    def outstanding(self) -> list[int]:
        """Part ids triggered and not yet answered."""
        answered = {p for _, p, _, _ in self.results}
        return [p for p, _ in self.triggers if p not in answered]

    async def run(self) -> None:
        while not self._stopped:
            await self.scan(time.monotonic())
            await asyncio.sleep(SCAN_S)

    def stop(self) -> None:
        self._stopped = True

    async def scan(self, now: float) -> None:
        m = self.mem
        self._watch(now)
        if self._pending is not None and not m.get(TRIGGER):
            self.taken[self._pending], self._pending = now, None
        up, part = m.get(RESULTS_READY), m.get(RESULT_PART_ID)
        if up and (self._up is None or part != self._up):   # a new result (a missed 0 between two: by part id)
            self._up = part
            self.results.append((now, part, m.get(RESULT), m.get(SCORE)))
            if self.ack:
                await m.set(ACK, 1)
                self._acking = now
        elif not up and self._up is not None:
            self._up = None
            if self._acking is not None:
                self.ack_round_trips.append(now - self._acking)
                self._acking = None
        await self._trigger(now)

    def _watch(self, now: float) -> None:
        m = self.mem
        beat = m.get(HEARTBEAT)
        if beat != self._last[HEARTBEAT]:
            self._last[HEARTBEAT], self._t_beat = beat, now
            self.heartbeats.append(now)
        elif (self._t_beat is not None and now - self._t_beat > self.heartbeat_s
              and (not self.stale_events or self.stale_events[-1] < self._t_beat)):
            self.stale_events.append(now)
        for name, changes in ((READY, self.ready_changes), (ERROR, self.error_changes)):
            value = m.get(name)
            if value != self._last[name]:
                self._last[name] = value
                changes.append((now, value))

    async def _trigger(self, now: float) -> None:
        if self.rate_hz <= 0 or (self.parts is not None and len(self.triggers) >= self.parts):
            return
        if self._next_t is None:
            if not (self.mem.get(READY) and self.alive):
                return
            self._next_t = now
        if now < self._next_t:
            return
        if not (self.mem.get(READY) and self.alive) or self._pending is not None or self.mem.get(TRIGGER):
            if now > self._next_t + 0.5 / self.rate_hz:
                self.late_triggers += 1
                self._next_t += 1.0 / self.rate_hz
            return
        part = self.next_id
        self.next_id += 1
        await self.mem.set(PART_ID, part)
        await self.mem.set(TRIGGER, 1)
        self.triggers.append((part, now))
        self._pending = part
        self._next_t += 1.0 / self.rate_hz

    def check(self) -> dict:
        """Every triggered part answered exactly once, in trigger order; latency figures (ms); gaps
        between heartbeat changes (ms) and how many exceeded heartbeat_ms while Ready was 1 (a PLC
        would have taken the station for dead)."""
        ids = [p for _, p, _, _ in self.results]
        answered = set(ids)   # once: rebuilt per element it made the check quadratic (minutes for a 30-minute soak)
        order = [p for p, _ in self.triggers]
        t_trig = dict(self.triggers)
        lat = [1000 * (t - t_trig[p]) for t, p, _, _ in self.results if p in t_trig]
        take = [1000 * (self.taken[p] - t_trig[p]) for p in self.taken if p in t_trig]
        gaps = 1000 * np.diff(np.asarray(self.heartbeats, dtype=float))
        stale = [int(i) for i in np.flatnonzero(gaps > 1000 * self.heartbeat_s) if self._ready_at(self.heartbeats[i])]
        return {
            "triggered": len(order), "answered": len(ids), "unique": len(answered),
            "duplicates": len(ids) - len(answered), "unknown": len(answered - set(order)),
            "missing": len(set(order) - answered), "in_order": ids == [p for p in order if p in answered],
            "late_triggers": self.late_triggers,
            "results": {str(code): sum(r == code for _, _, r, _ in self.results) for code in (1, 2, 3)},
            "trigger_to_result_ms": percentiles(lat), "trigger_taken_ms": percentiles(take),
            "ack_round_trip_ms": percentiles([1000 * x for x in self.ack_round_trips]),
            "heartbeat_gap_ms": percentiles(gaps.tolist()),
            "heartbeat_stale": len(stale),
            "heartbeat_stale_gaps": [(round(self.heartbeats[i], 3), round(float(gaps[i]), 1)) for i in stale[:20]],
        }

    def _ready_at(self, t: float) -> int:
        """Ready as the PLC read it at monotonic ``t``."""
        before = [v for tc, v in self.ready_changes if tc <= t]
        return before[-1] if before else 0


def percentiles(values: list[float]) -> dict:
    """n, p50, p90, p99, max of ``values`` (None when empty)."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), **{f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)},
            "max": round(float(a.max()), 2)}


class ModbusMemory:
    """The PLC's holding registers (``ModbusSignals`` layout); the pymodbus server's action callback
    serves every read from here and stores every write here."""

    def __init__(self, signals: ModbusSignals, score_scale: float) -> None:
        self.signals, self.score_scale = signals, score_scale
        self.words: dict[int, int] = defaultdict(int)

    def get(self, name: str) -> float | int:
        regs = self.signals.registers(name)
        if name == SCORE:
            return self.words[regs[0]] / self.score_scale
        value = 0
        for a in regs:
            value = (value << 16) | self.words[a]
        return value

    async def set(self, name: str, value) -> None:
        self.words.update(zip(self.signals.registers(name), encode(name, value, self.score_scale)))

    async def action(self, fc, start, address, count, regs, set_values):
        if set_values is None:
            for i in range(len(regs)):
                regs[i] = self.words.get(start + i, 0)
        elif fc in (6, 16):
            for i, v in enumerate(set_values):
                self.words[address + i] = int(v)
        return None


class _PlcServer:
    """A server on 127.0.0.1 on its own asyncio loop thread with ``PlcProgram`` scanning ``memory``.
    Subclasses implement ``_serve()`` (start the server, return it) and ``_shutdown(server)``."""

    start_timeout_s = 10.0

    def __init__(self, memory, port: int | None = None) -> None:
        self.port = port or free_port()
        self.memory = memory
        self.program: PlcProgram | None = None
        self._lt = LoopThread()
        self._server = None
        self._task = None

    async def _start(self, options: dict) -> None:
        self._server = await self._serve()
        self.program = PlcProgram(self.memory, **options)
        self._task = asyncio.ensure_future(self.program.run())

    def start(self, **program_options):
        """Start the server and the PLC program (``PlcProgram``'s options); returns self."""
        self._lt.call(self._start(program_options), timeout=self.start_timeout_s)
        return self

    def close(self) -> None:
        async def _stop() -> None:
            if self.program is not None:
                self.program.stop()
                self._task.cancel()
            if self._server is not None:
                await self._shutdown(self._server)

        self._lt.call(_stop())
        self._lt.close()


class ModbusHandshakePlc(_PlcServer):
    """The test PLC on a Modbus TCP server (unit 1, holding registers 0..63, coils 0..15)."""

    def __init__(self, port: int | None = None, signals: ModbusSignals = ModbusSignals(),
                 score_scale: float = HandshakeSettings.score_scale) -> None:
        super().__init__(ModbusMemory(signals, score_scale), port)

    @property
    def url(self) -> str:
        return f"modbus://127.0.0.1:{self.port}?unit=1"

    async def _serve(self):
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=64, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(1, simdata=(bits, list(bits), regs, list(regs)), action=self.memory.action)
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        return server

    async def _shutdown(self, server) -> None:
        await server.shutdown()


OPCUA_TYPES = {TRIGGER: "Boolean", PART_ID: "UInt32", ACK: "Boolean", READY: "Boolean", HEARTBEAT: "UInt16",
               ERROR: "UInt16", RESULTS_READY: "Boolean", RESULT_PART_ID: "UInt32", RESULT: "UInt16",
               SCORE: "Double"}


class OpcUaMemory:
    """A mirror of the server's handshake nodes, kept by data-change callbacks; ``set`` writes the node."""

    def __init__(self) -> None:
        self.values: dict[str, float | int] = defaultdict(int)
        self.vars: dict[str, object] = {}
        self.types: dict[str, object] = {}

    def get(self, name: str) -> float | int:
        return self.values[name]

    async def set(self, name: str, value) -> None:
        from asyncua import ua

        self.values[name] = float(value) if name == SCORE else int(value)
        await self.vars[name].write_value(ua.Variant(bool(value) if self.types[name] == ua.VariantType.Boolean
                                                     else value, self.types[name]))


class OpcUaHandshakePlc(_PlcServer):
    """The test PLC on an OPC UA server (``opc.tcp://127.0.0.1:PORT/fair/``, nodes ``OpcUaSignals()``)."""

    start_timeout_s = 30.0

    def __init__(self) -> None:
        super().__init__(OpcUaMemory())

    @property
    def url(self) -> str:
        return f"opcua://127.0.0.1:{self.port}/fair/"

    async def _serve(self):
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/fair/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace("urn:fair-edge:plc")
        line = await server.nodes.objects.add_object(idx, "Station")
        signals = OpcUaSignals()
        for name, type_name in OPCUA_TYPES.items():
            vtype = getattr(ua.VariantType, type_name)
            node_id = ua.NodeId.from_string(getattr(signals, name))
            start = 0.0 if name == SCORE else (False if type_name == "Boolean" else 0)
            var = await line.add_variable(ua.NodeId(node_id.Identifier, idx), name, ua.Variant(start, vtype))
            await var.set_writable()
            self.memory.vars[name], self.memory.types[name] = var, vtype
            server.iserver.aspace.add_datachange_callback(var.nodeid, ua.AttributeIds.Value, self._mirror(name))
        await server.start()
        return server

    async def _shutdown(self, server) -> None:
        await server.stop()

    def _mirror(self, name: str):
        async def on_change(_handle, datavalue):
            v = datavalue.Value.Value
            self.memory.values[name] = float(v) if name == SCORE else int(v)
        return on_change


class HandshakePlcProcess(ChildServer):
    """The handshake test PLC (``python -m fair_edge.line.handshake.sim_handshake_plc``) in a process of its
    own, triggering at ``rate`` parts/s; ``stop()`` (SIGTERM) makes it write its report to ``report_path``."""

    def __init__(self, report_path: Path, rate: float) -> None:
        port = free_port()
        super().__init__([sys.executable, "-m", "fair_edge.line.handshake.sim_handshake_plc", "--port", str(port),
                          "--rate", f"{rate:.4f}", "--report", str(report_path)], port, "handshake PLC")
        self.report_path = report_path
        self.url = f"modbus://127.0.0.1:{port}?unit=1"
        report_path.unlink(missing_ok=True)

    def report(self) -> dict:
        return json.loads(self.report_path.read_text()) if self.report_path.exists() else {}


def main(argv: list[str] | None = None) -> int:
    """The Modbus test PLC in its own process; its report (``PlcProgram.check()`` plus the raw
    records) goes to ``--report`` as JSON when it gets SIGTERM."""
    import argparse
    import signal
    import threading

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="Triggers per second.")
    ap.add_argument("--heartbeat-ms", type=float, default=HandshakeSettings.heartbeat_ms)
    ap.add_argument("--report", required=True)
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    plc = ModbusHandshakePlc(args.port).start(rate_hz=args.rate, heartbeat_ms=args.heartbeat_ms)
    stop.wait()
    report = plc._lt.call(_report(plc.program))
    plc.close()
    with open(args.report, "w") as f:
        json.dump(report, f)
    return 0


async def _report(program: PlcProgram) -> dict:
    program.stop()
    return {"check": program.check(), "triggers": program.triggers,
            "results": [(t, p, r, None if math.isnan(s) else s) for t, p, r, s in program.results],
            "ready_changes": program.ready_changes, "error_changes": program.error_changes}


if __name__ == "__main__":
    raise SystemExit(main())

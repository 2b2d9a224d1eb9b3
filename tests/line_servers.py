"""Real loopback servers for the line tests: a pymodbus Modbus TCP server and an asyncua OPC UA
server, each on its own asyncio loop thread, bound to 127.0.0.1, recording the monotonic time
of every write they receive (server side, so the timing includes the whole client path)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import types

from fair_edge.line.sim_sink_plc import ChildServer, LoopThread, SimulatedPlc, free_port, wait_listening  # noqa: F401

log = logging.getLogger(__name__)
ModbusTestServer = SimulatedPlc


def wait_for(cond, timeout_s: float, step_s: float = 0.01) -> bool:
    """Poll ``cond()`` until it is true or ``timeout_s`` passes; returns its last value as a bool."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return bool(cond())


class OpcUaTestServer:
    """OPC UA server with ``ns=2;s=Reject`` (Boolean) and ``ns=2;s=RejectCount`` (Int32), both
    writable; ``changes[name]`` holds ``(t_monotonic, value)`` for each write."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_path = "/fair/"
        self.changes: dict[str, list[tuple[float, object]]] = {"Reject": [], "RejectCount": []}
        self._lt = LoopThread()
        self._server = None

    async def _start(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}{self.endpoint_path}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace("urn:fair-edge:test")
        line = await server.nodes.objects.add_object(idx, "Line")
        for name, value, vtype in (("Reject", False, ua.VariantType.Boolean),
                                   ("RejectCount", 0, ua.VariantType.Int32)):
            var = await line.add_variable(ua.NodeId(name, idx), name, ua.Variant(value, vtype))
            await var.set_writable()
            server.iserver.aspace.add_datachange_callback(
                var.nodeid, ua.AttributeIds.Value, self._recorder(name))
        await server.start()
        self._server = server

    def _recorder(self, name: str):
        async def on_change(_handle, datavalue):
            self.changes[name].append((time.monotonic(), datavalue.Value.Value))
        return on_change

    def start(self) -> "OpcUaTestServer":
        self._lt.call(self._start(), timeout=30)
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._lt.call(server.stop())
        self._lt.close()

    def url(self, node: str, **options: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return (f"opcua://127.0.0.1:{self.port}{self.endpoint_path}?node={node}"
                + (f"&{query}" if query else ""))


class Belt:
    """A conveyor whose speed changes on a schedule: ``speeds`` = [(seconds from t0, counts/s), ...].
    ``count(t)`` is the true unwrapped position; a PLC shows it modulo 2**bits."""

    def __init__(self, speeds: list[tuple[float, float]], start: int = 0, t0: float | None = None) -> None:
        self.speeds, self.start = speeds, start
        self.t0 = time.monotonic() if t0 is None else t0

    def count(self, t: float | None = None) -> int:
        t = (time.monotonic() if t is None else t) - self.t0
        total = 0.0
        for i, (t_start, rate) in enumerate(self.speeds):
            t_end = self.speeds[i + 1][0] if i + 1 < len(self.speeds) else float("inf")
            if t > t_start:
                total += rate * (min(t, t_end) - t_start)
        return self.start + int(total)

    def time_of(self, count: int) -> float:
        """Monotonic seconds at which the belt reaches ``count`` (unwrapped)."""
        left = count - self.start
        for i, (t_start, rate) in enumerate(self.speeds):
            t_end = self.speeds[i + 1][0] if i + 1 < len(self.speeds) else float("inf")
            span = rate * (t_end - t_start)
            if left <= span:
                return self.t0 + t_start + left / rate
            left -= span
        raise ValueError(count)


class CounterPlc(SimulatedPlc):
    """The simulated PLC with a belt counter in holding register ``address`` (16 bit) or
    ``address, address + 1`` (32 bit, high word first), computed from ``belt`` at each read."""

    def __init__(self, belt: Belt, bits: int, address: int = 10) -> None:
        super().__init__()
        self.belt, self.bits, self.address = belt, bits, address

    async def _action(self, fc, start, address, count, regs, set_values):
        if fc == 3 and set_values is None:
            raw = self.belt.count() % (1 << self.bits)
            words = [raw & 0xFFFF] if self.bits == 16 else [raw >> 16, raw & 0xFFFF]
            regs[self.address - start:self.address - start + len(words)] = words
            return None
        return await super()._action(fc, start, address, count, regs, set_values)


class OpcUaCounterServer:
    """OPC UA server with ``ns=2;s=BeltCount`` (UInt32 or UInt16) following ``belt`` (updated
    every ``step_s`` on the server's loop)."""

    def __init__(self, belt: Belt, bits: int = 32, step_s: float = 0.001) -> None:
        self.belt, self.bits, self.step_s = belt, bits, step_s
        self.port = free_port()
        self._lt = LoopThread()
        self._server = None
        self._task = None

    async def _start(self) -> None:
        import asyncio

        from asyncua import Server, ua

        vtype = ua.VariantType.UInt32 if self.bits == 32 else ua.VariantType.UInt16
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/fair/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace("urn:fair-edge:test")
        line = await server.nodes.objects.add_object(idx, "Line")
        var = await line.add_variable(ua.NodeId("BeltCount", idx), "BeltCount", ua.Variant(0, vtype))
        await server.start()
        self._server = server

        async def follow() -> None:
            while True:
                await var.write_value(ua.Variant(self.belt.count() % (1 << self.bits), vtype))
                await asyncio.sleep(self.step_s)

        self._task = asyncio.ensure_future(follow())

    def start(self) -> "OpcUaCounterServer":
        self._lt.call(self._start(), timeout=30)
        return self

    def url(self, **options: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"opcua://127.0.0.1:{self.port}/fair/?node=ns=2;s=BeltCount&bits={self.bits}&{query}"

    def close(self) -> None:
        async def _stop() -> None:
            if self._task is not None:
                self._task.cancel()
            if self._server is not None:
                await self._server.stop()

        self._lt.call(_stop())
        self._lt.close()


MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class MosquittoBroker(ChildServer):
    """A real mosquitto on 127.0.0.1 (persistence on, so a restart keeps sessions and queued messages);
    ``stop()`` terminates it, ``start()`` starts it again on the same port."""

    def __init__(self, folder) -> None:
        port = free_port()
        self.folder, self.conf = folder, folder / "mosquitto.conf"
        super().__init__([MOSQUITTO, "-c", str(self.conf)], port, "mosquitto", listen_timeout_s=10.0, quiet=True)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        # started as root, mosquitto drops to user "mosquitto", which cannot write pytest's 0700 tmp folders
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder / 'data'}/\n{user}")


class MqttCollector:
    """A subscriber with a persistent session (QoS 1) collecting JSON payloads per topic."""

    def __init__(self, port: int, topic: str = "#") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: dict[str, list] = {}
        self.subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{port}", clean_session=False)
        self._client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *a: self.subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("collector did not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        self.messages.setdefault(msg.topic, []).append(json.loads(msg.payload))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class FakeClock:
    """Monotonic seconds that move only when the test says (``advance``); an hour ahead of the real clock, so a
    part's deadline (fake) is never behind ``next_trigger``'s real-time check however slow the machine."""

    def __init__(self) -> None:
        self.t = time.monotonic() + 3600.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


class SkewClock:
    """The real monotonic clock plus the seconds the test jumped it on (``jump``): on it (``base.time`` patched) a
    sink's worker sleeps in real time between jumps, and a pulse's deadline passes when the test jumps past it (a
    reconnect that ends past it), not because a loaded machine woke the worker late. A jump passes every deadline
    and timeout the worker holds at that moment (retry windows, back-off), not only the pulse's: jump only where
    the test means them all to pass."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset_s

    def jump(self, seconds: float) -> None:
        self.offset_s += seconds


def run_sinks_on(monkeypatch, clock) -> None:
    """For this test, the reject sinks' workers (``fair_edge.line.sinks.base``) read ``clock()`` as their monotonic
    time (s; a ``FakeClock`` or ``SkewClock``) and sleep in real time."""
    from fair_edge.line.sinks import base

    monkeypatch.setattr(base, "time", types.SimpleNamespace(monotonic=clock, sleep=time.sleep))


class NodeServer:
    """An asyncua server (``opc.tcp://127.0.0.1:PORT/fair/``) with one writable node ``ns=IDX;s=NAME`` per entry of
    ``nodes`` (name -> (VariantType name, start value)) in namespace ``URI``, registered after ``first`` (namespace
    URIs registered before it: ``URI`` gets index 2 + len(first)). ``changes[name]`` lists each value written, in
    order (recorded before the server replies). users: {user: password} required to log in (None: anonymous);
    write_delay_s: each Write service waits this long. The test changes nodes as a PLC program download would
    (``read_only``, ``delete``, ``retype``) and plays the PLC (``set``)."""

    URI = "urn:fair-edge:plc"   # the namespace of its nodes

    def __init__(self, nodes: dict[str, tuple[str, object]], port: int | None = None, first: tuple[str, ...] = (),
                 users: dict[str, str] | None = None, write_delay_s: float = 0.0) -> None:
        self.port, self.nodes, self.first, self.users = port or free_port(), dict(nodes), first, users
        self.write_delay_s = write_delay_s
        self.changes: dict[str, list[object]] = {name: [] for name in nodes}
        self.vars: dict[str, object] = {}
        self._lt = LoopThread()
        self._server = None
        self._line = None
        self.idx = 0

    async def _start(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/fair/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users is not None:
            self._require_login(server)
        for uri in self.first:
            await server.register_namespace(uri)
        self.idx = await server.register_namespace(self.URI)
        self._server, self._line = server, await server.nodes.objects.add_object(self.idx, "Line")
        for name, (type_name, start) in self.nodes.items():
            await self._add(name, type_name, start)
        if self.write_delay_s:
            self._slow_writes(server)
        await server.start()

    def _require_login(self, server) -> None:
        from asyncua import ua
        from asyncua.crypto.permission_rules import User, UserRole

        users = self.users

        class Users:
            def get_user(self, iserver, username=None, password=None, certificate=None):
                return User(role=UserRole.Admin) if users.get(username) == password else None

        server.iserver.set_user_manager(Users())
        server.set_identity_tokens([ua.UserNameIdentityToken])

    def _slow_writes(self, server) -> None:
        import asyncio

        write = server.iserver.attribute_service.write

        async def slow_write(params, user=None):
            await asyncio.sleep(self.write_delay_s)
            return await write(params, user)

        server.iserver.attribute_service.write = slow_write

    async def _add(self, name: str, type_name: str, start: object) -> None:
        from asyncua import ua

        var = await self._line.add_variable(ua.NodeId(name, self.idx), name,
                                            ua.Variant(start, getattr(ua.VariantType, type_name)))
        await var.set_writable()
        self.vars[name] = var
        self._server.iserver.aspace.add_datachange_callback(var.nodeid, ua.AttributeIds.Value, self._recorder(name))

    def _recorder(self, name: str):
        async def on_change(_handle, datavalue):
            self.changes[name].append(datavalue.Value.Value)
        return on_change

    def __enter__(self) -> NodeServer:
        self._lt.call(self._start(), timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._lt.call(server.stop())
        self._lt.close()

    def url(self, query: str = "", userinfo: str = "") -> str:
        return f"opcua://{userinfo}127.0.0.1:{self.port}/fair/" + (f"?{query}" if query else "")

    def set(self, name: str, value: object) -> None:
        """The PLC writes ``value`` to its own node (in the node's type)."""
        from asyncua import ua

        var = self.vars[name]
        vtype = getattr(ua.VariantType, self.nodes[name][0])
        self._lt.call(var.write_value(ua.Variant(value, vtype)))

    def value(self, name: str) -> object:
        return self._lt.call(self.vars[name].read_value())

    def read_only(self, name: str) -> None:
        self._lt.call(self.vars[name].set_read_only())

    def delete(self, name: str) -> None:
        self._lt.call(self._server.delete_nodes([self.vars.pop(name)]))

    def retype(self, name: str, type_name: str, start: object = 0) -> None:
        """Delete node ``name`` and add it again (same node id) with data type ``type_name``."""
        if name in self.vars:
            self.delete(name)
        self.nodes[name] = (type_name, start)
        self._lt.call(self._add(name, type_name, start))


class ScriptedPlc:
    """A ``HandshakeLink`` over a dict of signals the test sets as the PLC would; ``writes`` holds every
    ``write`` the station made, in order."""

    name = "scripted plc"

    def __init__(self) -> None:
        self.signals = {"trigger": 0, "part_id": 0, "ack": 0}
        self.writes: list[list[tuple[str, object]]] = []

    def open(self) -> None:
        pass

    def read_inputs(self) -> dict[str, int]:
        return {k: int(self.signals[k]) for k in ("trigger", "part_id", "ack")}

    def write(self, values) -> None:
        self.writes.append(list(values))
        self.signals.update(values)

    def close(self) -> None:
        pass

"""Real loopback servers for the line tests: a pymodbus Modbus TCP server and an asyncua OPC UA
server, each on its own asyncio loop thread, bound to 127.0.0.1, recording the monotonic time
of every write they receive (server side, so the timing includes the whole client path)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An asyncio loop on a daemon thread; ``call(coro)`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-server-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class ModbusTestServer:
    """Modbus TCP server (unit 1; coils, holding registers 0..15). ``writes`` holds
    ``(t_monotonic, function_code, address, value)`` for each write request; start()/stop() may
    be called repeatedly on the same port (outage tests)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.writes: list[tuple[float, int, int, object]] = []
        self._lt = LoopThread()
        self._server = None

    async def _action(self, fc, _start, address, _count, _regs, set_values):
        if set_values is not None:
            self.writes.append((time.monotonic(), fc, address, set_values[0]))
        return None

    async def _start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(1, simdata=(bits, list(bits), regs, list(regs)), action=self._action)
        self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)

    def start(self) -> "ModbusTestServer":
        self._lt.call(self._start())
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._lt.call(server.shutdown())

    def close(self) -> None:
        self.stop()
        self._lt.close()

    def rises(self, address: int = 0) -> list[float]:
        """Times of coil writes of True to ``address`` (rising edges)."""
        return [t for t, fc, a, v in list(self.writes) if fc == 5 and a == address and v]

    def falls(self, address: int = 0) -> list[float]:
        return [t for t, fc, a, v in list(self.writes) if fc == 5 and a == address and not v]

    def register_writes(self, address: int) -> list[tuple[float, int]]:
        return [(t, v) for t, fc, a, v in list(self.writes) if fc == 6 and a == address]


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

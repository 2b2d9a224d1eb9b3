"""Real loopback servers for the line tests: a pymodbus Modbus TCP server and an asyncua OPC UA
server, each on its own asyncio loop thread, bound to 127.0.0.1, recording the monotonic time
of every write they receive (server side, so the timing includes the whole client path)."""

from __future__ import annotations

import logging
import time

from fair_edge.line.sim_plc import LoopThread, SimulatedPlc, free_port  # noqa: F401

log = logging.getLogger(__name__)
ModbusTestServer = SimulatedPlc


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

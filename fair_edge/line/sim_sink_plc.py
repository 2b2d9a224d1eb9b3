"""A simulated PLC for the reject sinks' pulses (demos and tests): a real pymodbus Modbus TCP server on
127.0.0.1, on its own asyncio loop thread, recording the monotonic time of every write it receives (server
side, so a measured pulse time includes the whole client path). The PLC that runs the handshake's program
is ``handshake.sim_handshake_plc``."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout_s: float, what: str = "server") -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:g} s")


class ChildServer:
    """A server in a child process that listens on 127.0.0.1:``port``: ``start()`` launches ``argv`` (and,
    with ``wait``, returns once it listens), ``stop()`` terminates it; ``start()`` again restarts it on
    the same port (a PLC or broker restart). quiet: drop the child's stdout and stderr."""

    def __init__(self, argv: list[str], port: int, what: str, listen_timeout_s: float = 30.0,
                 quiet: bool = False) -> None:
        self.argv, self.port, self.what = argv, port, what
        self.listen_timeout_s, self.quiet = listen_timeout_s, quiet
        self._proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "ChildServer":
        out = subprocess.DEVNULL if self.quiet else None
        self._proc = subprocess.Popen(self.argv, stdout=out, stderr=out)
        if wait:
            wait_listening(self.port, self.listen_timeout_s, self.what)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)

    close = stop


class LoopThread:
    """An asyncio loop on a daemon thread; ``call(coro)`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sim-plc-loop", daemon=True)
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


class SimulatedPlc:
    """A Modbus TCP server on 127.0.0.1 standing in for the PLC (unit 1; coils and holding registers
    0..15). ``writes`` holds ``(t_monotonic, function_code, address, value)`` for each write request;
    start()/stop() may be called repeatedly on the same port (outage tests)."""

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

    def start(self) -> "SimulatedPlc":
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


def main(argv: list[str] | None = None) -> int:
    """``python -m fair_edge.line.sim_sink_plc --port P --log FILE``: the simulated PLC in its own process
    (as a real PLC is), appending each write to FILE as ``t_monotonic function_code address value``
    (CLOCK_MONOTONIC is system-wide, so the times compare with the station's); ends on SIGTERM."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    plc = SimulatedPlc(args.port).start()
    done = 0
    with open(args.log, "a") as f:
        while not stop.wait(0.05):
            done = _flush_writes(plc, f, done)
        plc.close()
        _flush_writes(plc, f, done)
    return 0


def _flush_writes(plc: SimulatedPlc, f, done: int) -> int:
    writes = list(plc.writes)
    for t, fc, address, value in writes[done:]:
        f.write(f"{t:.6f} {fc} {address} {int(bool(value)) if fc == 5 else int(value)}\n")
    f.flush()
    return len(writes)


if __name__ == "__main__":
    raise SystemExit(main())

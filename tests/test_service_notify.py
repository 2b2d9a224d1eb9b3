"""systemd notify protocol against real Unix datagram sockets: READY / WATCHDOG / STATUS / STOPPING, the watchdog's
rate limit, a stalled inspection loop that stops pinging, and the station sending them in a replay run."""

from __future__ import annotations

import socket
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from fair_edge.cameras import CaptureSettings, CaptureThread
from fair_edge.cameras.synthetic import LineSource
from fair_edge.station.inspector import Inspector
from fair_edge.station.notify import ServiceNotifier, socket_address, watchdog_interval_s
from fair_edge.station.stop_deadline import STOP_RESERVE_S, StopDeadline, stop_budget_s

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd notify is Linux-only")


SENT_AT = "X_SENT_AT"   # a field StampingNotifier adds: the sender's monotonic s just before the datagram went out


class Receiver:
    """A systemd stand-in: a bound AF_UNIX datagram socket collecting (monotonic time, {key: value}) messages. The
    time is the sender's stamp (``SENT_AT``, taken off the message) when the datagram carries one, else when the
    receiver read it (late by however long this thread waited for the CPU)."""

    def __init__(self, address) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        msg = dict(line.split("=", 1) for line in data.decode().split("\n"))
        stamp = msg.pop(SENT_AT, None)
        self.messages.append((time.monotonic() if stamp is None else float(stamp), msg))

    def keys(self) -> list[str]:
        return [key for _, msg in self.messages for key in msg]

    def times(self, key: str) -> list[float]:
        return [t for t, msg in self.messages if key in msg]

    def close(self) -> None:
        """Stop the reader, then take every datagram still queued: a datagram sent before this call is already in
        the socket's queue (a local datagram socket hands it over in sendto), so none is lost however late this
        thread ran. Safe to call twice."""
        self._stop.set()
        self._thread.join(10)
        if self.sock.fileno() == -1:
            return
        self.sock.setblocking(False)
        while True:
            try:
                self._keep(self.sock.recv(4096))
            except BlockingIOError:
                break
        self.sock.close()


@pytest.fixture
def path_receiver(tmp_path):
    rx = Receiver(str(tmp_path / "notify"))
    yield rx, str(tmp_path / "notify")
    rx.close()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_ready_watchdog_status_stopping_arrive_in_order_and_the_watchdog_is_rate_limited(path_receiver):
    rx, path = path_receiver
    clock = Clock()
    with ServiceNotifier(socket_address(path), watchdog_s=0.010, clock=clock) as notifier:
        for _ in range(100):  # 100 loop iterations, 1 ms apart: one ping per 10 ms
            notifier.alive()
            clock.t += 0.001
            time.sleep(0.001)  # sends never block (a full socket queue is counted), so pace them as a loop would
        notifier.status("inspecting: 5 inspected, 1 NG, 0 dropped")      # same state word, too soon: not sent
        notifier.status("camera reconnecting: 5 inspected, 1 NG, 0 dropped")  # state changed: sent
        time.sleep(0.01)
    rx.close()
    first = rx.messages[0][1]
    assert first == {"READY": "1", "STATUS": "inspecting"}
    pings = rx.keys().count("WATCHDOG")
    assert 9 <= pings <= 10  # 99 ms after READY at 10 ms per ping
    statuses = [m["STATUS"] for _, m in rx.messages if "STATUS" in m]
    assert statuses[1] == "camera reconnecting: 5 inspected, 1 NG, 0 dropped"
    assert rx.messages[-1][1] == {"STOPPING": "1", "STATUS": "stopping"}  # close() after READY says STOPPING
    assert notifier.failed == 0 and notifier.sent == 1 + pings + 1 + 1


def test_abstract_namespace_address():
    name = f"@fair-edge-test-{uuid.uuid4().hex}"
    rx = Receiver(b"\0" + name[1:].encode())
    try:
        notifier = ServiceNotifier.from_env({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})
        assert notifier.enabled and notifier.watchdog_s == 1.0
        notifier.alive()
        notifier.stopping("stopping: 0 inspected, 0 NG, 0 dropped")
        notifier.close()
    finally:
        rx.close()
    assert rx.keys() == ["READY", "STATUS", "STOPPING", "STATUS"]


def test_environment_rules():
    off = ServiceNotifier.from_env({})
    assert not off.enabled
    off.alive(), off.status("x"), off.stopping(), off.close(), off.close()  # no-ops, twice is safe
    assert off.sent == 0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None  # not ours
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval_s({}, pid=7) is None and watchdog_interval_s({"WATCHDOG_USEC": "0"}, pid=7) is None
    assert not ServiceNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled  # refused, logged
    with pytest.raises(ValueError, match="neither a path nor an abstract name"):
        socket_address("relative/path")


def test_a_vanished_socket_is_counted_never_raised(tmp_path):
    rx = Receiver(str(tmp_path / "notify"))
    notifier = ServiceNotifier(str(tmp_path / "notify"), watchdog_s=0.0)
    notifier.alive()
    rx.close()
    (tmp_path / "notify").unlink()  # systemd went away
    notifier.alive()
    notifier.alive()
    assert notifier.failed == 2 and notifier.sent == 1
    notifier.close()


class StampingNotifier(ServiceNotifier):
    """A notifier whose datagrams carry the monotonic time they were sent (``SENT_AT``): the receiver's clock says
    when its thread got to read them, which on a loaded machine can be long after."""

    def send(self, **fields: object) -> bool:
        return super().send(**fields, **{SENT_AT: repr(time.monotonic())})


class StallingScorer:
    """A frame scorer whose inference blocks while ``stall`` is set (a hung GPU call, a dead lock). ``stalled`` is
    set, and ``t_stalled`` stamped (monotonic s), as a call begins to block."""

    reason, graph_threshold = "test: stalls on demand", None

    def __init__(self) -> None:
        self.stall, self.released, self.stalled, self.calls = threading.Event(), threading.Event(), threading.Event(), 0
        self.t_stalled: float | None = None

    def infer_frames(self, frames):
        self.calls += 1
        if self.stall.is_set():
            self.t_stalled = time.monotonic()
            self.stalled.set()
            self.released.wait(10)
        n = len(frames)
        return np.zeros((n, 4, 4), np.float32), np.zeros(n, np.float32)


def test_a_stalled_inspection_loop_stops_sending_watchdog(path_receiver):
    """Pings while the loop runs, none while it is stuck in inference (from the moment the scorer blocks to its
    release, by the sender's own stamps), pings again after. The test waits for each of those on what happened
    (pings received, the scorer blocked), never on how long a loaded machine takes; the stall itself lasts
    at least 30 watchdog intervals, where systemd would have killed the service."""
    rx, path = path_receiver
    scorer = StallingScorer()
    frame = np.full((32, 32, 3), 128, np.uint8)
    capture = CaptureThread(LineSource([frame], fps=200, loop=True), CaptureSettings(queue_size=4, full_policy="drop_oldest"))
    stop = threading.Event()
    with capture, StampingNotifier(path, watchdog_s=0.02) as notifier:
        inspector = Inspector(capture, scorer, 0.5)
        loop = threading.Thread(target=inspector.run, args=(stop,), kwargs={"on_iteration": notifier.alive})
        loop.start()
        try:
            assert wait_until(lambda: len(rx.times("WATCHDOG")) >= 5), rx.keys()
            scorer.stall.set()
            assert scorer.stalled.wait(10), "the inspection loop never reached the stalled inference"
            time.sleep(0.6)                   # systemd would kill us here: no pings for 30 x the interval
            scorer.stall.clear()              # before the release: the loop's next inference does not block
            resume_at = time.monotonic()
            scorer.released.set()
            assert wait_until(lambda: len([t for t in rx.times("WATCHDOG") if t > resume_at]) >= 3), rx.keys()
        finally:
            scorer.released.set()
            stop.set()
            loop.join(5)
    rx.close()
    pings, stalled_at = rx.times("WATCHDOG"), scorer.t_stalled
    before = [t for t in pings if t < stalled_at]
    during = [t for t in pings if stalled_at <= t <= resume_at]   # sent while the loop's thread was blocked
    after = [t for t in pings if t > resume_at]
    print(f"pings before {len(before)}, during the stall {len(during)}, after {len(after)}")
    assert len(before) >= 5 and during == [] and len(after) >= 3
    assert rx.keys()[0] == "READY" and "STOPPING" in rx.keys()


def wait_until(cond, timeout_s: float = 10.0) -> bool:
    """Poll ``cond()`` every 10 ms until it is true or ``timeout_s`` passed (a bound for a hung test, never a
    timing claim); returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(cond())


def test_station_replay_sends_ready_watchdog_status_and_stopping(station_bundles, conveyor_dir, tmp_path, monkeypatch):
    from fair_edge.line.settings import RecordSettings
    from fair_edge.station.run import run_station
    from fair_edge.station.config import CameraSettings, ConsoleSettings, StationConfig

    address = str(tmp_path / "notify")
    rx = Receiver(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # a ping every 10 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = StationConfig(camera=CameraSettings(source=str(conveyor_dir), fps=20, queue_size=8),
                        bundle=station_bundles[0].root, backend="onnxruntime", output=tmp_path / "out",
                        record=RecordSettings(dir=tmp_path / "out"), console=ConsoleSettings(enabled=False))
    try:
        summary = run_station(cfg, threading.Event())
    finally:
        rx.close()
    keys = rx.keys()
    assert summary.inspected == 12 and not summary.fault
    assert keys[:2] == ["READY", "STATUS"] and keys.count("READY") == 1
    assert keys.count("WATCHDOG") >= 5  # 12 frames at 20 frames/s: about 0.6 s of loop
    stopping = next(m for _, m in rx.messages if "STOPPING" in m)
    assert stopping["STATUS"] == "stopping: 12 inspected, %d NG, 0 dropped" % summary.ng
    extend = [int(m["EXTEND_TIMEOUT_USEC"]) for _, m in rx.messages if "EXTEND_TIMEOUT_USEC" in m]
    assert len(extend) == 1 and 0 < extend[0] <= (stop_budget_s(cfg) + STOP_RESERVE_S) * 1e6   # the console's close
    assert rx.times("STOPPING")[0] >= max(rx.times("WATCHDOG"))


def test_status_line_names_the_state_and_the_live_drop_count():
    from fair_edge.station.inspector import RunSummary
    from fair_edge.station.notify import status_line

    summary = RunSummary(inspected=5, ng=1, dropped=0)
    assert status_line(summary, "", dropped=3) == "inspecting: 5 inspected, 1 NG, 3 dropped"  # live capture count
    assert status_line(summary, "camera reconnecting", 3).startswith("camera reconnecting: 5 inspected")
    summary.fault = "10 inference failures in a row"
    assert status_line(summary, "stopping") == "10 inference failures in a row: 5 inspected, 1 NG, 0 dropped"


def test_status_line_names_the_log_rows_the_recorder_could_not_write():
    """On a full disk the verdict log lost rows while `systemctl status` said only 'inspecting: N inspected, ...'.
    Rows not written (rows_failed, dropped, lost_at_close) are now in the line when there are any; the state word
    (what makes a STATUS go out at once) is unchanged."""
    from fair_edge.station.inspector import RunSummary
    from fair_edge.station.notify import status_line, status_state

    summary = RunSummary(inspected=5, ng=1)
    live = {"logged": 2, "rows_failed": 3, "dropped": 0, "lost_at_close": 0, "write_errors": 3}
    text = status_line(summary, "", 0, live)
    assert text == "inspecting: 5 inspected, 1 NG, 0 dropped, 3 log rows not written" and \
        status_state(text) == "inspecting"
    assert status_line(summary, "", 0, dict(live, rows_failed=0)) == "inspecting: 5 inspected, 1 NG, 0 dropped"
    summary.recorder = dict(live, dropped=2, lost_at_close=1)   # at the stop: the summary's own counters
    assert status_line(summary, "stopping") == "stopping: 5 inspected, 1 NG, 0 dropped, 6 log rows not written"


class RecordingNotifier(ServiceNotifier):
    """A notifier whose datagrams are kept in a list (no receiver thread: nothing to wait for)."""

    def __init__(self, clock) -> None:
        super().__init__("/nonexistent/notify", clock=clock)
        self.sent_fields: list[dict] = []

    def send(self, **fields) -> bool:
        self.sent_fields.append(fields)
        return True

    def statuses(self) -> list[str]:
        return [f["STATUS"] for f in self.sent_fields if "STATUS" in f]


def test_the_running_status_names_the_log_rows_a_full_disk_kept_out():
    """While the station runs (not only in the end-of-run summary) the systemd status counts the verdict rows the
    recorder could not write, from the recorder's live counters."""
    from types import SimpleNamespace

    from fair_edge.station.line_side import LineSide
    from fair_edge.station.run import station_tick

    counts = {"rows_failed": 0, "dropped": 0, "lost_at_close": 0}
    recorder = SimpleNamespace(stats=lambda: dict(counts))
    clock = Clock()
    line = LineSide(recorder=recorder, scheduler=None, encoder=None, mqtt=None, callbacks=[])
    capture = SimpleNamespace(stats=lambda: SimpleNamespace(dropped_queue_full=0))
    insp = SimpleNamespace(summary=SimpleNamespace(fault="", inspected=6, ng=2, dropped=0, rejects={}))
    notifier = RecordingNotifier(clock)
    tick = station_tick(line, lambda insp: "", capture, notifier, SimpleNamespace(tick=lambda insp: None),
                        lambda: {}, None)
    notifier.alive()
    clock.t += 10.0
    tick(insp)
    counts["rows_failed"] = 4                          # the disk filled: four rows not written
    clock.t += 10.0
    tick(insp)
    assert notifier.statuses()[-2:] == ["inspecting: 6 inspected, 2 NG, 0 dropped",
                                        "inspecting: 6 inspected, 2 NG, 0 dropped, 4 log rows not written"]
    notifier.close()


def test_status_shows_the_fault_output_reason_at_once_and_when_it_changes():
    """systemctl status said 'inspecting' while the reject gate held the fault output on (PLC unreachable);
    docs/jetson.md promises the status 'every 5 s, or on a fault'."""
    from types import SimpleNamespace

    from fair_edge.station.line_side import LineSide
    from fair_edge.station.run import station_tick

    class Gate:   # the reject scheduler as the tick sees it
        fault_reason = None

    gate, clock = Gate(), Clock()
    line = LineSide(recorder=None, scheduler=gate, encoder=None, mqtt=None, callbacks=[])
    capture = SimpleNamespace(stats=lambda: SimpleNamespace(dropped_queue_full=0))
    console = SimpleNamespace(tick=lambda insp: None)
    insp = SimpleNamespace(summary=SimpleNamespace(fault="", inspected=6, ng=2, dropped=0, rejects={}))
    notifier = RecordingNotifier(clock)
    tick = station_tick(line, lambda insp: "", capture, notifier, console, lambda: {}, None)
    notifier.alive()                                   # READY + STATUS=inspecting
    for reason in (None, "modbus 127.0.0.1:9 unit 1 coil 0 missed reject seq 2",
                   "modbus 127.0.0.1:9 unit 1 coil 0 missed reject seq 2",
                   "modbus 127.0.0.1:9 unit 1 coil 0 missed reject seq 5", None):
        clock.t += 0.5                                 # a tick every 0.5 s, well inside status_every_s
        gate.fault_reason = reason
        tick(insp)
    assert notifier.statuses() == [
        "inspecting",
        "modbus 127.0.0.1:9 unit 1 coil 0 missed reject seq 2: 6 inspected, 2 NG, 0 dropped",
        "modbus 127.0.0.1:9 unit 1 coil 0 missed reject seq 5: 6 inspected, 2 NG, 0 dropped",
        "inspecting: 6 inspected, 2 NG, 0 dropped",
    ]
    notifier.close()


def test_a_stop_whose_deadline_a_bundle_load_moved_extends_systemds_stop_timeout(path_receiver):
    """A unit installed before TimeoutStopSec held 32 s for a bundle loading at the stop (60 s) SIGKILLed a stop whose
    console waited for one: the deadline moved 32 s later, past the unit's timeout, and summary.json was never
    written. The move is now sent as EXTEND_TIMEOUT_USEC: the seconds from the console's close to the moved deadline
    + the reserve (systemd sets the timeout to now + the value)."""
    rx, address = path_receiver
    clock = Clock()
    stop = StopDeadline(budget_s=59.0, clock=clock)
    with ServiceNotifier(address) as notifier:
        stop.extend = notifier.extend_timeout
        stop.begin()
        clock.t += 10.0   # the belt's drain
        stop.apart(lambda: setattr(clock, "t", clock.t + 40.0), 32.0, "the console's close (a bundle load)")
    rx.close()
    extend = [m for _, m in rx.messages if "EXTEND_TIMEOUT_USEC" in m]
    # deadline 100 + 59 + 32 = 191; now 150: 41 s left + 1 s reserve
    assert extend == [{"EXTEND_TIMEOUT_USEC": str(round((41.0 + STOP_RESERVE_S) * 1e6))}]
    assert stop.left(99.0) == 41.0


def test_a_console_that_did_not_wait_or_no_notify_socket_sends_nothing(path_receiver):
    rx, address = path_receiver
    clock = Clock()
    with ServiceNotifier(address) as notifier:
        stop = StopDeadline(budget_s=59.0, clock=clock)
        stop.extend = notifier.extend_timeout
        stop.begin()
        stop.apart(lambda: None, 32.0, "the console's close (a bundle load)")   # took 0 s: nothing moved
    quiet = StopDeadline(budget_s=59.0, clock=clock)
    quiet.extend = ServiceNotifier(None).extend_timeout   # a terminal, Docker: no NOTIFY_SOCKET
    quiet.begin()
    quiet.apart(lambda: setattr(clock, "t", clock.t + 5.0), 32.0, "the console's close (a bundle load)")
    rx.close()
    assert "EXTEND_TIMEOUT_USEC" not in rx.keys() and quiet.left(99.0) == 59.0

"""Two stations on one PLC's outputs (the audit's "two stations" cases).

1. A second `fair-edge run` of a running station's file with another --out was refused (its metrics port taken)
   only after its handshake had run on the first one's registers: it wrote ready = 0 and error = 0 on exit, the
   first station never wrote ready = 1 again (it wrote ready only when its own value changed), and the line
   stopped with that station reporting healthy. Now the line side binds the metrics port before it opens the
   handshake, a handshake that never raised ready writes nothing when it stops, and a running handshake writes its
   ready / error again every heartbeat_ms, so an outside write over them is undone.
2. Two stations with their own output folders and metrics ports but one handshake URL (or the same Modbus reject /
   fault coils) both started and both answered every part. Now a station holds a lock on each PLC address it
   writes, and a second one is refused naming the address, the running station's pid and the setting.

The other station is a real process (a child python holding ``station_lock`` until its stdin closes), so no test
waits on a clock; the locks go to a folder of the test's own (``FAIR_EDGE_LOCK_DIR``)."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import pytest

from fair_edge.errors import ConfigError, MetricsError
from fair_edge.line.handshake import HANDSHAKE_SCHEMES, HandshakeSettings
from fair_edge.line.handshake.engine import Handshake
from fair_edge.line.settings import MetricsSettings, RecordSettings, RejectSettings
from fair_edge.station.config import ConsoleSettings, StationConfig

pytest.importorskip("pymodbus")
from line_servers import FakeClock, ScriptedPlc, wait_for  # noqa: E402
from fair_edge.line.handshake.sim_handshake_plc import ModbusHandshakePlc  # noqa: E402
from lock_children import holding_child  # noqa: E402

HOLDER = """
import json, sys
from pathlib import Path
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.station.config import StationConfig
from fair_edge.station.locks import station_lock
out, reject = Path(sys.argv[1]), json.loads(sys.argv[2])
cfg = StationConfig(output=out, record=RecordSettings(dir=out), reject=RejectSettings.from_dict(reject),
                    source_file=out.parent / "stationA.yaml")
with station_lock(cfg):
    print("held", flush=True)
    sys.stdin.read()   # until the test closes our stdin
"""
HANDSHAKE_URL = "modbus://127.0.0.1:15030?unit=1"
STATION_A = {"handshake": {"url": HANDSHAKE_URL}, "sinks": ["modbus://127.0.0.1:15020?unit=1&coil=0"],
             "fault_sinks": ["modbus://127.0.0.1:15020?unit=1&coil=1"], "delay_ms": 300}


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch) -> Path:
    """The PLC-output locks of this test (and of its child station) in a folder of its own."""
    folder = tmp_path / "locks"
    monkeypatch.setenv("FAIR_EDGE_LOCK_DIR", str(folder))
    return folder


def station_a_running(out: Path, reject: dict):
    """A child process holding a station's locks (output folder ``out``, ``reject`` settings) until the block
    ends; yields its pid."""
    return holding_child(HOLDER, str(out), json.dumps(reject))


def station_b(tmp_path: Path, reject: dict, **more) -> StationConfig:
    """The second station: its own output folder, no console."""
    out = tmp_path / "B"
    return StationConfig(output=out, record=RecordSettings(dir=out), reject=RejectSettings.from_dict(reject),
                         console=ConsoleSettings(enabled=False), source_file=tmp_path / "stationB.yaml", **more)


class Opened:
    """Every Modbus handshake link and reject / fault sink a station opens, recorded instead of connecting."""

    def __init__(self, monkeypatch) -> None:
        from fair_edge.line import sinks
        from line_replay import RecordingSink

        self.links: list[str] = []
        self.sinks: list[str] = []

        def open_link(url, settings):
            self.links.append(url.raw)
            return ScriptedPlc()

        def open_sink(url, pulse_ms, reporter):
            self.sinks.append(url.raw)
            return RecordingSink(url.raw)

        monkeypatch.setitem(HANDSHAKE_SCHEMES, "modbus", open_link)
        monkeypatch.setitem(sinks.SINK_SCHEMES, "modbus", open_sink)


# ---------------------------------------------------------------------------------- 1. refused at start, ready kept
def test_a_station_refused_for_its_metrics_port_opens_no_handshake(tmp_path, monkeypatch):
    """The audit's hs_repro: the port is taken (by the running station's metrics); the refusal comes before the
    handshake link, the sinks or the verdict log are opened, so nothing is written to the PLC."""
    from fair_edge.station.line_side import open_line_side

    opened = Opened(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = station_b(tmp_path, STATION_A, metrics=MetricsSettings(enabled=True, port=taken.getsockname()[1]))
        with contextlib.ExitStack() as stack, pytest.raises(MetricsError, match="metrics.port"):
            open_line_side(cfg, stack, "run-b")
    assert opened.links == [] and opened.sinks == [], (opened.links, opened.sinks)
    assert not (tmp_path / "B" / "verdicts.jsonl").exists()


def test_a_handshake_that_never_raised_ready_writes_nothing_when_it_stops():
    """A station stopped before ``begin()`` (refused at start) leaves ready / error as they are: the registers may
    be another station's. One that raised ready drops it."""
    plc, clock = ScriptedPlc(), FakeClock()
    refused = Handshake(HandshakeSettings(url=HANDSHAKE_URL), plc, clock=clock)
    assert refused._connect()                  # no thread: the test runs each step itself
    plc.writes.clear()
    refused._last_words()
    assert plc.writes == []

    ran = Handshake(HandshakeSettings(url=HANDSHAKE_URL), plc, clock=clock)
    assert ran._connect()
    ran.begin()
    ran._cycle(clock.advance(0.005))
    assert plc.signals["ready"] == 1
    ran._last_words()
    assert plc.writes[-1] == [("error", 0), ("ready", 0)]


def test_ready_and_error_written_over_from_outside_are_written_again_within_heartbeat_ms():
    """The station's ready / error are written when they change and again every heartbeat_ms: a ready = 0 another
    process wrote is undone at the next restatement, not before it is due."""
    plc, clock = ScriptedPlc(), FakeClock()
    hs = Handshake(HandshakeSettings(url=HANDSHAKE_URL, poll_ms=5, heartbeat_ms=500), plc, clock=clock)
    assert hs._connect()
    hs.begin()
    hs._cycle(clock.advance(0.005))
    assert plc.signals["ready"] == 1 and plc.signals["error"] == 0
    plc.signals.update(ready=0, error=7)       # the refused second station's last words
    hs._cycle(clock.advance(0.2))
    assert plc.signals["ready"] == 0           # unchanged values are not written every poll
    hs._cycle(clock.advance(0.3))              # heartbeat_ms after the last write
    assert plc.signals["ready"] == 1 and plc.signals["error"] == 0, plc.writes[-3:]


def test_a_running_station_puts_its_ready_back_after_another_process_clears_it():
    """Over a real Modbus server: station A's handshake raised ready; another client writes ready = 0, error = 0
    (what the refused station wrote); A writes ready = 1 again by itself."""
    from fair_edge.line.handshake.modbus import open_modbus_link
    from fair_edge.line.sinks.urls import parse_sink_url

    plc = ModbusHandshakePlc().start(rate_hz=0)
    settings = HandshakeSettings(url=plc.url, heartbeat_ms=200)
    station = Handshake(settings, open_modbus_link(parse_sink_url(plc.url), settings)).start()
    try:
        station.begin()
        assert wait_for(lambda: plc.memory.get("ready") == 1, 10)
        other = open_modbus_link(parse_sink_url(plc.url), settings)
        other.open()
        other.write([("error", 0), ("ready", 0)])
        other.close()
        assert wait_for(lambda: plc.memory.get("ready") == 1, 10)
    finally:
        station.close()
        plc.close()


# ---------------------------------------------------------------------------------- 2. one station per PLC output
def test_a_second_station_on_the_same_handshake_is_refused_naming_the_address_and_the_pid(tmp_path, monkeypatch):
    """The audit's hs_both: own output folders and metrics ports, one handshake URL. The second station is refused
    before it opens anything, naming the register, the running station's pid and station file, and the setting."""
    from fair_edge.station.line_side import open_line_side

    opened = Opened(monkeypatch)
    with station_a_running(tmp_path / "A", STATION_A) as pid:
        with contextlib.ExitStack() as stack, pytest.raises(ConfigError) as refused:
            open_line_side(station_b(tmp_path, {"handshake": {"url": HANDSHAKE_URL}}), stack, "run-b")
    text = " ".join(str(refused.value).split())
    assert "modbus 127.0.0.1:15030 unit 1 holding register 0" in text, text            # the trigger register
    assert f"pid {pid}" in text and "stationA.yaml" in text, text
    assert "a station is already running on this PLC output" in text and f"`kill -TERM {pid}`" in text, text
    assert "reject.handshake.url, reject.handshake.modbus.trigger" in text, text
    assert opened.links == [] and opened.sinks == []
    assert not (tmp_path / "B" / "verdicts.jsonl").exists()


def test_a_second_station_on_the_same_fault_coil_is_refused_before_its_resting_level_is_written(tmp_path,
                                                                                                   monkeypatch):
    """A copy of a station file with a new --out and the same Modbus fault coil: refused naming the coil and
    ``reject.fault_sinks[0]``; its fault sink never opened, so it never wrote the coil's resting OFF."""
    from fair_edge.station.line_side import open_line_side

    opened = Opened(monkeypatch)
    reject_b = {"sinks": ["modbus://127.0.0.1:15020?unit=1&coil=5"],
                "fault_sinks": ["modbus://127.0.0.1:15020?coil=1"], "delay_ms": 300}   # unit 1 by default
    with station_a_running(tmp_path / "A", STATION_A) as pid:
        with contextlib.ExitStack() as stack, pytest.raises(ConfigError, match=f"pid {pid}") as refused:
            open_line_side(station_b(tmp_path, reject_b), stack, "run-b")
    text = " ".join(str(refused.value).split())
    assert "modbus 127.0.0.1:15020 unit 1 coil 1" in text and "reject.fault_sinks[0]" in text, text
    assert opened.sinks == []


def test_stations_on_other_addresses_of_one_plc_and_on_log_sinks_both_run(tmp_path, lock_dir):
    """Other coils and another handshake block of the same PLC, and log:// sinks both stations name: no refusal.
    Each holds one lock per address (10 handshake registers, 2 sink outputs each) and lets them go when it stops."""
    from fair_edge.line.handshake.settings import ModbusSignals
    from fair_edge.station.locks import station_lock

    other_block = {f: a + 20 for f, a in vars(ModbusSignals()).items() if a is not None}
    reject_b = {"handshake": {"url": HANDSHAKE_URL, "modbus": other_block},
                "sinks": ["modbus://127.0.0.1:15020?coil=2"],
                "fault_sinks": ["modbus://127.0.0.1:15020?register=1", "log://"], "delay_ms": 300}
    a = dict(STATION_A, fault_sinks=[*STATION_A["fault_sinks"], "log://"])
    with station_a_running(tmp_path / "A", a):
        with station_lock(station_b(tmp_path, reject_b)):
            assert len(list(lock_dir.iterdir())) == 2 * 12
    assert list(lock_dir.iterdir()) == []


def test_the_default_lock_folder_is_made_writable_for_every_account(tmp_path, monkeypatch):
    """Made by the first station (root, say) the folder is world-writable and sticky like /run/lock, so the service
    account's stations still lock their PLC outputs; one this account cannot write is passed over for the next."""
    from fair_edge.line import plc_lock

    monkeypatch.delenv("FAIR_EDGE_LOCK_DIR")
    monkeypatch.setattr(plc_lock, "SYSTEM_LOCK_DIR", tmp_path / "run-lock")
    monkeypatch.setattr(plc_lock.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    made = plc_lock.lock_dir()
    assert made == tmp_path / "run-lock" / "fair-edge" and (made.stat().st_mode & 0o7777) == 0o1777
    monkeypatch.setattr(plc_lock.os, "access", lambda path, mode: Path(path) != made)   # made 0755 by another account
    assert plc_lock.lock_dir() == tmp_path / "tmp" / plc_lock.FALLBACK_LOCK_DIR


def test_a_plc_lock_file_is_open_to_every_account_and_another_accounts_is_locked_read_only(tmp_path, monkeypatch):
    """The unit's UMask=0027 made lock files 0640: a station of another account could not open one (a root-run
    station's, or one a killed station left) and ran unlocked on the same coil. Now the file is made 0666, and one
    this account may not write is opened read-only: the lock still holds."""
    import os

    from fair_edge.errors import ConfigError
    from fair_edge.runlock import hold_lock

    busy = "busy: {}".format
    old_umask = os.umask(0o027)
    try:
        with hold_lock(tmp_path, "plc-x.lock", "first", busy, shared=True) as path:
            assert (path.stat().st_mode & 0o777) == 0o666
    finally:
        os.umask(old_umask)
    real_open = os.open

    def another_accounts(path, flags, *mode):   # the file exists, writable by its owner only
        if flags & (os.O_WRONLY | os.O_RDWR) and not flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    (tmp_path / "plc-y.lock").write_text("4242\nroot's station\n")
    monkeypatch.setattr("fair_edge.runlock.os.open", another_accounts)
    with hold_lock(tmp_path, "plc-y.lock", "second", busy, shared=True):
        monkeypatch.setattr("fair_edge.runlock._HELD", {})   # as another process would see it: only the flock
        with pytest.raises(ConfigError, match="busy"):
            with hold_lock(tmp_path, "plc-y.lock", "third", busy, shared=True):
                pass

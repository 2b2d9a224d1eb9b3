"""Console actions that run at the same time (each POST in a thread of its own, the SIGHUP reload thread, the swap
thread, the reject scheduler's thread): the interleavings an audit found are forced with events and gated loaders,
never by sleeping, so each test fails the same way every time on the code it guards against."""

import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fair_edge.console.actions import StationLinks
from fair_edge.console.refusals import SwapBusy
from fair_edge.console.settings import ConsoleSettings
from fair_edge.console.station_hook import StationConsole
from fair_edge.console import tuning
from fair_edge.console.tuning import write_station_threshold
from fair_edge.runtime.hotswap import ModelChange, ModelSwitch
from fair_edge.station.config import StationConfig, load_station

WAIT_S = 30.0   # a guard against a hang only: every wait below ends on an event long before


class WatchedLock:
    """A re-entrant lock that tells (``waiting``) when a thread finds it held by another: the moment a test knows a
    second action is blocked behind the first (the console's ``actions.lock``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.waiting = threading.Event()

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self.waiting.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def wait_until(done, what: str) -> None:
    """Wait (up to WAIT_S, polling) for ``done()``: for a thread of the code under test to finish its part."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def station_console(tmp_path, links, threshold=0.5, bundle="b"):
    """A one-camera console over a station file (``bundle``, ``decision.threshold``) and a stand-in decider (model m0
    at ``threshold``, its own switch). Returns (console, decider, station file)."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(tmp_path / bundle), "decision": {"threshold": threshold}}))
    cfg = StationConfig(output=tmp_path / "out", console=ConsoleSettings(enabled=False), source_file=station)
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b0", threshold=None), links=links)
    decider = SimpleNamespace(model="m0", threshold=threshold, switch=ModelSwitch())
    console.attach(decider, None, None, None, None)
    return console, decider, station


def file_threshold(station: Path) -> float:
    return yaml.safe_load(station.read_text())["decision"]["threshold"]


def change(bundle, threshold, model=None):
    """A loaded bundle's ModelChange (what ``StationLinks.load_model`` returns)."""
    return ModelChange(scorer=SimpleNamespace(reason="new", backend=SimpleNamespace(close=lambda: None)),
                       threshold=threshold, model=model or Path(bundle).name,
                       bundle=SimpleNamespace(root=Path(bundle), threshold=None))


# ------------------------------------------------------------------------------------------------ two applies at once
def test_two_threshold_writes_at_once_each_keep_their_own_temporary_file(tmp_path):
    """Every write used station.yaml.tmp: a second write while the first was being checked removed the first's file
    and put its own there, and the first's replace failed ("could not be written": the operator told "not
    changed") or moved the other's content. Each write now has a temporary file of its own."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": "b", "decision": {"threshold": 0.5}}))
    inner = []

    def check(path):   # the first write's check: a second write runs meanwhile
        if not inner:
            inner.append(path)
            write_station_threshold(station, 0.9, load_station)
        return load_station(path)

    write_station_threshold(station, 0.6, check)
    assert file_threshold(station) == 0.6   # the first replaced last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["station.yaml"]   # no temporary file left behind


def test_a_station_file_with_a_long_name_gets_a_temporary_within_the_name_limit(tmp_path):
    """The temporary was ``tempfile.mkstemp``'s NAME.XXXXXXXX.tmp: a station file named near the file system's
    255-byte limit (a legal name) got none, and the threshold was refused with "could not be written (File name too
    long); free disk space". It is now ``disk.create_temporary``'s, NAME cut short where it must be."""
    station = tmp_path / ("line-3-" + "x" * 236 + ".yaml")   # 247 bytes
    station.write_text(yaml.safe_dump({"bundle": "b", "decision": {"threshold": 0.5}}))
    write_station_threshold(station, 0.6, load_station)
    assert file_threshold(station) == 0.6
    assert [p.name for p in tmp_path.iterdir()] == [station.name]   # no temporary file left behind


def test_the_temporary_is_created_0600_then_takes_the_station_files_mode(tmp_path, monkeypatch):
    """As mkstemp's was: no other account can open it before it has the station file's mode (console.token)."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": "b", "decision": {"threshold": 0.5}}))
    station.chmod(0o644)
    created_modes = []
    real_create = tuning.create_temporary

    def create(target, mode=0o666):
        fd, tmp = real_create(target, mode)
        created_modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd, tmp

    monkeypatch.setattr(tuning, "create_temporary", create)
    write_station_threshold(station, 0.6, load_station)
    assert file_threshold(station) == 0.6 and created_modes == [0o600]
    assert stat.S_IMODE(station.stat().st_mode) == 0o644   # the station file's own mode, kept


def test_two_thresholds_applied_at_once_take_turns(tmp_path):
    """Two operators apply a threshold at the same moment (two POSTs, two threads): A is checking its written file
    when B applies. Before, B's write removed A's, one of them was told "not changed", and the live threshold,
    the station file and the audit log disagreed. Now B waits for A: both are applied, the last one everywhere."""
    a_checking, b_arrived = threading.Event(), threading.Event()
    threads = {}

    def gated_load(path):
        if threading.current_thread().name == "A":
            a_checking.set()
            assert b_arrived.wait(WAIT_S)   # B is blocked behind A (or, unguarded, writing its own file)
        elif threading.current_thread().name == "B":
            b_arrived.set()
            threads["A"].join(WAIT_S)   # unguarded, B's check outlasts A's whole apply
        return load_station(path)

    console, decider, station = station_console(tmp_path, StationLinks(load_station=gated_load))
    console.actions.lock = lock = WatchedLock()
    threading.Thread(target=lambda: lock.waiting.wait(WAIT_S) and b_arrived.set(), daemon=True).start()
    results = {}

    def apply(name, value):
        try:
            results[name] = console.actions.apply_threshold(value, name, True)
        except Exception as exc:  # noqa: BLE001 - the answer the operator would get
            results[name] = exc

    threads = {name: threading.Thread(target=apply, args=(name, value), name=name)
               for name, value in (("A", 0.6), ("B", 0.9))}
    threads["A"].start()
    assert a_checking.wait(WAIT_S)
    threads["B"].start()
    for t in threads.values():
        t.join(WAIT_S)
    assert all(isinstance(r, dict) for r in results.values()), results
    audit = [(e["who"], e["old"], e["new"]) for e in console.actions.audit.read()]
    assert audit == [("A", 0.5, 0.6), ("B", 0.6, 0.9)]
    assert decider.switch.take().threshold == 0.9 == file_threshold(station)


# ------------------------------------------------------------------------------------- a threshold and a reload at once
def test_a_threshold_is_refused_while_a_reload_loads_and_kept_by_it(tmp_path):
    """SIGHUP read the station file (0.5), then loaded the bundle for seconds; a threshold applied meanwhile (0.8)
    ran until the load finished and was then undone by the reload's 0.5, while the file kept 0.8. Now the apply
    is refused while the bundle loads (nothing written or switched) and accepted once it runs."""
    loading, release = threading.Event(), threading.Event()

    def load_model(bundle, threshold=None, regions=None):
        loading.set()
        assert release.wait(WAIT_S)   # the engine is being deserialized
        return change(bundle, threshold)

    console, decider, station = station_console(tmp_path, StationLinks(load_model=load_model,
                                                                       load_station=load_station))
    console.reload_bundle("SIGHUP")
    assert loading.wait(WAIT_S)
    try:
        with pytest.raises(SwapBusy, match=r"a bundle is loading \(.*\); apply the threshold once it runs"):
            console.actions.apply_threshold(0.8, "ann", True)
        assert file_threshold(station) == 0.5 and decider.switch.pending is None
    finally:
        release.set()
    wait_until(lambda: console.actions.swap_status["state"] != "loading", "the reload's load")
    assert decider.switch.take().threshold == 0.5 == file_threshold(station)
    console.actions.apply_threshold(0.8, "ann", True)   # the reloaded bundle runs: accepted
    assert decider.switch.take().threshold == 0.8 == file_threshold(station)


def test_a_reload_reads_a_threshold_applied_while_it_starts(tmp_path, monkeypatch):
    """A SIGHUP whose reload reads the station file while an apply is writing it read the old threshold and later
    switched to it. Now the reload waits for the apply (the file is read and the swap started under the lock the
    apply holds) and runs at the applied threshold."""
    from fair_edge.console import swaps as swaps_module

    loads, reload_blocked, sighup = [], threading.Event(), []

    def load_model(bundle, threshold=None, regions=None):
        loads.append(threshold)
        reload_blocked.set()   # unguarded, the reload got here with the file's old threshold
        return change(bundle, threshold)

    def gated_load(path):   # the apply's check of its written file: a SIGHUP arrives now
        if path.name != "station.yaml" and not sighup:
            sighup.append(reloader)
            reloader.start()
            assert reload_blocked.wait(WAIT_S)
        return load_station(path)

    monkeypatch.setattr(swaps_module, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))
    console, decider, station = station_console(tmp_path, StationLinks(load_model=load_model, load_station=gated_load))
    console.actions.lock = lock = WatchedLock()
    threading.Thread(target=lambda: lock.waiting.wait(WAIT_S) and reload_blocked.set(), daemon=True).start()
    reloader = threading.Thread(target=console.reload_bundle, args=("SIGHUP",), name="station-reload")
    console.actions.apply_threshold(0.8, "ann", True)
    reloader.join(WAIT_S)
    assert loads == [0.8] and file_threshold(station) == 0.8
    assert console.actions.swap_status["state"] == "done" and decider.switch.take().threshold == 0.8


class InlineThread:
    """The console's swap thread, run at ``start()`` on the caller's thread (the swap is done when it returns)."""

    def __init__(self, target, args=(), name=None, daemon=None) -> None:
        self.target, self.args = target, args

    def start(self) -> None:
        self.target(*self.args)


def test_a_threshold_is_refused_while_a_loaded_bundle_waits_for_its_first_part(tmp_path, monkeypatch):
    """A console swap loaded (state done) waits in the switch for the next batch; a threshold applied then, tuned on
    the old model's scores (3.0 scale), was merged into the swap: the new model (scores ~0.03, its own threshold
    0.05) ran at 2.5 and the audit named the old model. Now the apply is refused until the new model runs."""
    from fair_edge.console import swaps as swaps_module
    from fair_edge.station.inspector import Inspector

    monkeypatch.setattr(swaps_module, "threading", SimpleNamespace(Thread=InlineThread, Lock=threading.Lock))
    scorer = SimpleNamespace(reason="new", backend=SimpleNamespace(close=lambda: None))
    loaded = ModelChange(scorer=scorer, threshold=0.05, model="m-new",
                         bundle=SimpleNamespace(root=tmp_path / "b1", threshold=None))
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b0", threshold=None),
                             links=StationLinks(load_model=lambda bundle, threshold=None: loaded))
    old = SimpleNamespace(reason="old", backend=SimpleNamespace(close=lambda: None))
    inspector = Inspector(None, old, 3.0, model="m-old")
    console.attach(inspector, None, None, None, None)
    console.actions.swap(str(tmp_path / "b1"), "ann")
    assert console.actions.swap_status["state"] == "done"
    with pytest.raises(SwapBusy, match=r"a new bundle \(model m-new\) waits to be taken \(at the next part, .*\); tune and apply"):
        console.actions.apply_threshold(2.5, "bob", True)
    assert inspector.switch.pending == loaded
    assert [e["action"] for e in console.actions.audit.read()] == ["swap"]
    inspector.apply_switch()
    assert (inspector.model, inspector.threshold) == ("m-new", 0.05)
    assert console.actions.apply_threshold(0.04, "bob", True)["model"] == "m-new"   # now it runs: accepted


def test_a_threshold_for_one_camera_is_refused_while_its_own_bundle_waits_only(tmp_path):
    """Several cameras: a loaded bundle waiting in camera a's switch refuses a's threshold, not b's."""
    from test_console_units import cell_console, named_bundles

    links = StationLinks(camera_bundles=lambda f: named_bundles(tmp_path))
    console, views = cell_console(tmp_path, links)
    views["a"].switch.request(change(tmp_path / "a2", 0.1, model="m-a2"))
    with pytest.raises(SwapBusy, match=r"model m-a2\) waits to be taken on camera a"):
        console.actions.apply_threshold(4.0, "ann", True, camera="a")
    console.actions.apply_threshold(8.0, "ann", True, camera="b")
    assert views["b"].switch.take().threshold == 8.0 and views["a"].switch.take().model == "m-a2"


# -------------------------------------------------------------------------------------- a SIGHUP during a console swap
def test_a_sighup_while_a_console_swap_loads_runs_after_it(tmp_path, caplog):
    """A reload asked for while an operator's swap loads (here: the swap started between the reload thread's check
    and its own start) was logged "bundle reload refused" and dropped, though one more reload after the swap is
    promised. Now it waits as requested and runs once the swap is done, with the station file as it is then."""
    loads, release, second = [], threading.Event(), threading.Event()

    def load_model(bundle, threshold=None, regions=None):
        loads.append((Path(bundle).name, threshold))
        if len(loads) == 1:
            assert release.wait(WAIT_S)   # the operator's bundle loads
        else:
            second.set()
        return change(bundle, threshold)

    console, decider, station = station_console(tmp_path, StationLinks(load_model=load_model,
                                                                       load_station=load_station),
                                                threshold=0.7, bundle="b2")
    try:
        console.actions.swap(str(tmp_path / "b1"), "ann")
        console.reload_bundle("SIGHUP")   # what the reload thread runs when the swap started just before it
        assert console._reload_wanted == "SIGHUP"
        assert not [r for r in caplog.records if "bundle reload refused" in r.getMessage()]
        console.watch_reloads()
        release.set()
        assert second.wait(WAIT_S)
    finally:
        release.set()
        console.close()
    assert loads == [("b1", None), ("b2", 0.7)]


# --------------------------------------------------------------------------------------- acknowledging the reject alarm
SEEN = "part seq 10 passed the gate uninspected (fail_safe: alarm)"
NEWER = "part seq 57 passed the gate uninspected (fail_safe: alarm)"


@pytest.fixture
def scheduler():
    from line_replay import RecordingSink

    from fair_edge.line.scheduler import RejectScheduler
    from fair_edge.line.settings import RejectSettings

    s = RejectScheduler(RejectSettings(delay_ms=100, pulse_ms=20, fail_safe="alarm"), sinks=RecordingSink(),
                        fault_sinks=RecordingSink("fault"))
    s._raise_alarm(SEEN)   # what the operator sees
    yield s
    s.close()


class RacingScheduler:
    """The reject scheduler as the console sees it, whose own thread raises a newer alarm as soon as the console
    looks at the latched one or asks to clear it (before the clear itself, or before the console holds it still)."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.raised = scheduler, False

    def _race(self) -> None:
        if not self.raised:
            self.raised = True
            t = threading.Thread(target=self.scheduler._raise_alarm, args=(NEWER,))
            t.start()
            t.join()

    def __getattr__(self, name):
        return getattr(self.scheduler, name)

    @property
    def to_acknowledge(self):
        seen = self.scheduler.to_acknowledge
        self._race()
        return seen

    def acknowledge_alarm(self, *args):
        self._race()
        return self.scheduler.acknowledge_alarm(*args)

    def acknowledging(self):
        self._race()
        return self.scheduler.acknowledging()


def test_acknowledging_names_the_alarm_it_cleared_even_one_raised_meanwhile(tmp_path, scheduler):
    """The console read the latched alarm for its audit row, then cleared whatever was latched: an alarm raised in
    between (a part passing the gate uninspected) was cleared unseen and unaudited. The scheduler now reads and
    clears at once and returns what it cleared: the audit row names the alarm that was acknowledged."""
    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b", threshold=None))
    console.attach(SimpleNamespace(model="m", threshold=1.0, switch=ModelSwitch()), None,
                   RacingScheduler(scheduler), None, None)
    row = console.actions.acknowledge_alarm("ann")
    assert scheduler.stats()["alarms"] == 2
    assert scheduler.alarm == NEWER or NEWER in row["old"], (scheduler.alarm, row)


def test_the_scheduler_returns_the_alarm_it_cleared_and_keeps_a_newer_one_than_shown(scheduler):
    """``acknowledge_alarm(seen)``: what it cleared is returned; an alarm latched beside the one shown keeps both
    (nothing cleared, a ConfigError naming them: the newer one too)."""
    from fair_edge.errors import ConfigError

    scheduler._raise_alarm(NEWER)
    both = scheduler.alarm
    assert both.startswith("2 alarms since the last acknowledgement") and SEEN in both and NEWER in both, both
    with pytest.raises(ConfigError, match="found a newer one: 2 alarms .*part seq 57 .*nothing was cleared"):
        scheduler.acknowledge_alarm(SEEN)
    assert scheduler.alarm == both and scheduler.fault_reason == both
    assert scheduler.acknowledge_alarm(both) == both and scheduler.alarm is None and scheduler.fault_reason is None
    assert scheduler.acknowledge_alarm() is None


def test_the_console_refuses_to_acknowledge_an_alarm_the_page_did_not_show(tmp_path, scheduler):
    """The live page sends the alarm it shows; a newer one latched since is a 409 naming it, nothing cleared and
    nothing audited; the text shown then (both alarms) is cleared and audited. Without ``alarm`` whatever is latched
    is cleared."""
    from test_console_units import api

    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(enabled=False))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b", threshold=None))
    console.attach(SimpleNamespace(model="m", threshold=1.0, switch=ModelSwitch()), None, scheduler, None, None)
    scheduler._raise_alarm(NEWER)
    client = api(console)
    r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": SEEN})
    assert r.status_code == 409 and NEWER in r.json()["error"], r.text
    both = scheduler.alarm
    assert SEEN in both and NEWER in both and not (tmp_path / "audit.jsonl").exists()
    r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": 7})
    assert r.status_code == 400 and r.json()["error"].startswith("alarm: expected the alarm text"), r.text
    r = client.post("/api/acknowledge_alarm", json={"who": "ann", "alarm": both})   # the text the page shows now
    assert r.status_code == 200 and r.json()["old"] == both and scheduler.alarm is None
    scheduler._raise_alarm(SEEN)
    assert client.post("/api/acknowledge_alarm", json={"who": "bob"}).json()["old"] == SEEN
    assert [(e["who"], e["old"]) for e in console.actions.audit.read()] == [("ann", both), ("bob", SEEN)]

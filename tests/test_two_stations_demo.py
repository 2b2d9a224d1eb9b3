"""`fair-edge demo --out DIR` beside a running station whose output is DIR/station (the default `output:
runs/station` and `fair-edge demo --out runs`): the demo deleted DIR/station (shutil.rmtree) before its station took
the folder's lock, so the running station lost its verdict log, NG images and lock file, and both then wrote into one
folder. Now the demo takes the folder's station lock first and is refused, naming the running station's pid and the
fix, with nothing deleted; a station started on the demo's folder while the demo holds it is refused in turn.

The running station is a child process holding the folder's lock (as ``test_run_locks``): no clock is waited on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fair_edge.errors import ConfigError, FairEdgeError
from lock_children import holding_child

HOLDER = """
import sys
from pathlib import Path
from fair_edge.runlock import hold_lock
with hold_lock(Path(sys.argv[1]), ".station.lock", "fair-edge run --station /etc/fair-edge/line1.yaml",
               lambda holder: f"busy: {holder}"):
    print("held", flush=True)
    sys.stdin.read()   # until the test closes our stdin
"""

TAKER = """
import sys
from pathlib import Path
from fair_edge.errors import ConfigError
from fair_edge.runlock import hold_lock
try:
    with hold_lock(Path(sys.argv[1]), ".station.lock", "fair-edge run", lambda holder: f"busy: {holder}"):
        pass
except ConfigError as exc:
    print(exc, flush=True)
    sys.exit(3)
"""


def station_files(folder: Path) -> dict[str, bytes]:
    """What a running station wrote into ``folder``: a verdict log and an NG image."""
    (folder / "ng").mkdir(parents=True)
    (folder / "verdicts.jsonl").write_text('{"seq": 0, "ng": true}\n')
    (folder / "ng" / "000000.png").write_bytes(b"an NG image")
    return listing(folder)


def raised(call) -> FairEdgeError | None:
    """What ``call()`` raised (one of ours), None when it returned: the files are checked before the error is."""
    try:
        call()
    except FairEdgeError as exc:
        return exc
    return None


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the lock file, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".station.lock"}


def test_the_demos_conveyor_replay_into_a_running_stations_folder_is_refused_with_nothing_deleted(tmp_path):
    """The audit's demo_rmtree: run_conveyor (the demo's last step) into DIR/station while a station runs there. It
    deleted the station's files; now it is refused naming the station's pid, with another --out as the fix."""
    from fair_edge.demo.run import LinePlan, run_conveyor

    out = tmp_path / "runs"
    written = station_files(out / "station")
    with holding_child(HOLDER, str(out / "station")) as pid:
        refused = raised(lambda: run_conveyor(out, tmp_path / "bundle", "onnxruntime", LinePlan(10.0, 400.0, {}, []),
                                              12, lambda line: None))
        assert listing(out / "station") == written              # nothing deleted, nothing written
        assert (out / "station" / ".station.lock").exists()     # the running station's lock file kept
    assert isinstance(refused, ConfigError), refused
    text = " ".join(str(refused).split())
    assert f"pid {pid}, fair-edge run --station /etc/fair-edge/line1.yaml" in text, text
    assert "a station is already running on this output folder" in text, text
    assert "give this one another demo folder (fair-edge demo --out DIR)" in text, text


def test_the_demo_is_refused_before_it_trains_when_a_station_runs_in_its_station_folder(tmp_path):
    """run_demo checks OUT/station before its first step (minutes of training), not after."""
    from fair_edge.demo.run import run_demo

    def never(*args):
        raise AssertionError("the demo went on with a station running in its folder")

    out = tmp_path / "runs"
    written = station_files(out / "station")
    with holding_child(HOLDER, str(out / "station")) as pid:
        with pytest.raises(ConfigError, match=f"pid {pid}"):
            run_demo(out, train=never, evaluate=never, say=lambda line: None)
        assert listing(out / "station") == written


def test_the_demos_conveyor_folder_is_not_emptied_under_a_station_running_there(tmp_path):
    """DIR/conveyor, which the demo deletes and writes anew, is some station's output folder: refused the same way."""
    from fair_edge.demo.run import write_conveyor

    conveyor = tmp_path / "runs" / "conveyor"
    written = station_files(conveyor)
    with holding_child(HOLDER, str(conveyor)) as pid:
        refused = raised(lambda: write_conveyor([], conveyor))
        assert listing(conveyor) == written
    assert isinstance(refused, ConfigError) and f"pid {pid}" in str(refused), refused


def test_a_station_started_on_the_demos_folder_while_the_demo_runs_is_refused_naming_the_demo(tmp_path):
    """The demo holds its folder's station lock while it writes there (its own station takes it again inside): a
    station started there meanwhile is refused naming `fair-edge demo --out DIR`; afterwards the folder is free and
    holds what the demo wrote, the lock file gone."""
    from fair_edge.demo.run import demo_folder

    out = tmp_path / "runs"
    station_files(out / "station")   # an earlier demo's
    with demo_folder(out / "station") as folder:
        assert listing(folder) == {}   # emptied for the demo to write anew
        (folder / "verdicts.jsonl").write_text("{}\n")
        taken = subprocess.run([sys.executable, "-c", TAKER, str(folder)], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 3 and f"fair-edge demo --out {out.resolve()}" in taken.stdout, taken.stdout
    assert listing(out / "station") == {"verdicts.jsonl": b"{}\n"}
    assert not (out / "station" / ".station.lock").exists()

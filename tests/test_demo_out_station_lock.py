"""`fair-edge demo --out DIR` where DIR itself is a running station's output folder (its own output folder typed as
--out), or a folder the demo replaces in DIR is (DIR/bundle, DIR/report): the demo took only the station locks of
DIR/station and DIR/conveyor, so it trained into the station's folder and wrote its bundle, report and model there.
Now it holds DIR's station lock too and checks the folders it replaces, and is refused before its first step,
naming the running station's pid, with nothing written; a station started on DIR while the demo runs is refused,
naming the demo.

The running station is a child process holding the folder's lock (``lock_children``): no clock is waited on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fair_edge.errors import ConfigError
from lock_children import holding_child
from test_two_stations_demo import HOLDER, TAKER, listing, station_files


def never(*args):
    raise AssertionError("the demo went on with a station running in a folder it writes")


@pytest.mark.parametrize("held", ["", "bundle", "report"], ids=["OUT", "OUT-bundle", "OUT-report"])
def test_the_demo_is_refused_before_it_trains_when_a_station_runs_in_a_folder_it_writes(tmp_path, held):
    """Before: run_demo went on to train (here: ``never``) into a running station's output folder."""
    from fair_edge.demo.run import run_demo

    out = tmp_path / "runs"
    folder = out / held if held else out
    written = station_files(folder)
    with holding_child(HOLDER, str(folder)) as pid:
        with pytest.raises(ConfigError) as refused:
            run_demo(out, train=never, evaluate=never, say=lambda line: None)
        assert listing(folder) == written              # nothing deleted
        assert listing(out) == {f"{held}/{name}" if held else name: data for name, data in written.items()}
        assert (folder / ".station.lock").exists()     # the running station's lock file kept
    text = " ".join(str(refused.value).split())
    assert text.startswith(f"{folder}: a station is already running on this output folder"), text
    assert f"pid {pid}, fair-edge run --station /etc/fair-edge/line1.yaml" in text, text
    assert "give this one another demo folder (fair-edge demo --out DIR)" in text, text


def test_a_station_started_on_the_demo_folder_while_the_demo_runs_is_refused_naming_the_demo(tmp_path):
    """The demo holds OUT's station lock for its whole run (as OUT/station's); afterwards no lock file is left, and
    an OUT the locks made and the demo left empty is removed again."""
    from fair_edge.demo.run import demo_out_locks

    out = tmp_path / "runs"
    with demo_out_locks(out):
        taken = subprocess.run([sys.executable, "-c", TAKER, str(out)], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 3, (taken.stdout, taken.stderr)
    assert "pid " in taken.stdout and f"fair-edge demo --out {out.resolve()}" in taken.stdout, taken.stdout
    assert not out.exists()

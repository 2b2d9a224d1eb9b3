"""One process per output folder: a station (``OUTPUT/.station.lock``) and a training run (``OUT/.train.lock``)
hold an flock for as long as they run, and a second one started on the same folder is refused naming the first
one's pid before it opens or writes anything (fair_edge.runlock).

The other process is a real one: a child python that takes the lock, says so on stdout and holds it until its
stdin closes, so no test waits on a clock. The lock files' names are written out here (not imported) so the same
tests run against a tree without the locks and fail there."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from fair_edge.errors import ConfigError
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.station.config import CameraSettings, ConsoleSettings, StationConfig
from lock_children import holding_child

HOLDER = """
import sys
from pathlib import Path
from fair_edge.errors import ConfigError
from fair_edge.runlock import hold_lock
folder, name, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    with hold_lock(folder, name, "test holder", lambda holder: f"busy: {holder}"):
        print("held", flush=True)
        if mode == "hold":
            sys.stdin.read()   # until the test closes our stdin
except ConfigError as exc:
    print(exc, flush=True)
    sys.exit(3)
"""


def held_by_child(folder: Path, name: str):
    """A child process holding ``folder/name`` until the block ends; yields its pid."""
    return holding_child(HOLDER, str(folder), name, "hold")


def child_takes(folder: Path, name: str) -> tuple[int, str]:
    """A child process tries to take ``folder/name`` and lets it go: (exit code, what it printed); 3 = refused."""
    done = subprocess.run([sys.executable, "-c", HOLDER, str(folder), name, "try"], capture_output=True, text=True,
                          timeout=60)
    return done.returncode, done.stdout


class Sinks:
    """A ``rec://NAME`` reject sink scheme whose sinks are ``RecordingSink``s: ``opened`` names each one opened."""

    def __init__(self, monkeypatch) -> None:
        from fair_edge.line import sinks
        from line_replay import RecordingSink

        self.opened: list[str] = []
        self.made: list[RecordingSink] = []

        def open_rec(url, pulse_ms, reporter):
            self.opened.append(str(url))
            self.made.append(RecordingSink(str(url)))
            return self.made[-1]

        monkeypatch.setitem(sinks.SINK_SCHEMES, "rec", open_rec)
        monkeypatch.setitem(sinks.SINK_URL_PARSERS, "rec", lambda url: None)


def station(bundle_root: Path, source: Path, out: Path) -> StationConfig:
    """A replayed station with a reject sink and a fault sink (``rec://``), no console."""
    return StationConfig(camera=CameraSettings(source=str(source), fps=20), bundle=bundle_root, backend="onnxruntime",
                         output=out, record=RecordSettings(dir=out),
                         reject=RejectSettings(sinks=("rec://reject",), fault_sinks=("rec://fault",), delay_ms=500),
                         console=ConsoleSettings(enabled=False), source_file=out.parent / "station.yaml")


# ------------------------------------------------------------------------------------------------------- station
def test_a_station_on_an_output_folder_another_holds_is_refused_before_any_sink_opens(
        station_bundles, conveyor_dir, tmp_path, monkeypatch):
    """Bug: a second `fair-edge run` on a running station's file ran beside it: it pulsed the same PLC output, wrote
    the same verdict log, and its fault sink wrote its resting level OFF, clearing the first station's latched
    alarm. Now it is refused naming the running one's pid, with no sink opened and nothing written."""
    from fair_edge.station.run import run_station

    sinks = Sinks(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    with held_by_child(out, ".station.lock") as pid:
        with pytest.raises(ConfigError) as err:
            run_station(station(station_bundles[0].root, conveyor_dir, out), threading.Event(), max_frames=3)
    text = " ".join(str(err.value).split())
    assert f"pid {pid}" in text and str(out) in text, text
    assert "a station is already running on this output folder" in text and f"`kill -TERM {pid}`" in text, text
    assert "another output folder" in text
    assert sinks.opened == [] and sinks.made == []          # no reject or fault output touched
    assert sorted(p.name for p in out.iterdir()) == []      # no verdict log, gate log or summary.json


def test_a_station_of_several_cameras_takes_the_lock_before_its_line_side_opens(tmp_path, monkeypatch):
    """A station of several cameras opens its line side through ``open_line_side`` too: refused there before the
    recorder or a sink opens."""
    from fair_edge.station.line_side import open_line_side

    sinks = Sinks(monkeypatch)
    out = tmp_path / "out"
    cfg = StationConfig(output=out, record=RecordSettings(dir=out), console=ConsoleSettings(enabled=False),
                        reject=RejectSettings(sinks=("rec://reject",), fault_sinks=("rec://fault",), delay_ms=500))
    with held_by_child(out, ".station.lock") as pid, contextlib.ExitStack() as stack:
        with pytest.raises(ConfigError, match=f"pid {pid}"):
            open_line_side(cfg, stack, "run1")
    assert sinks.opened == [] and not (out / "verdicts.jsonl").exists()


def test_a_station_sharing_another_ones_verdict_log_folder_is_told_to_move_record_dir(tmp_path):
    """Two stations with their own outputs but one record.dir: the refusal names the verdict-log folder and
    record.dir, not `output:` (moving the output would not help)."""
    from fair_edge.station.locks import station_lock

    shared = tmp_path / "shared-log"
    cfg = StationConfig(output=tmp_path / "b", record=RecordSettings(dir=shared), console=ConsoleSettings(enabled=False))
    with held_by_child(shared, ".station.lock") as pid:
        with pytest.raises(ConfigError, match=f"pid {pid}") as refused:
            with station_lock(cfg):
                pass
    text = " ".join(str(refused.value).split())
    assert "this verdict-log folder" in text and "record.dir" in text and "output:" not in text


def test_a_station_of_several_cameras_is_refused_before_its_models_load(tmp_path, monkeypatch):
    """run_cell takes the lock before it loads a model (minutes for TensorRT engines) and before anything opens."""
    from fair_edge.station import cell as cell_module
    from fair_edge.station.views import ViewSettings

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the lock refused the station")

    monkeypatch.setattr(cell_module, "CellModels", loaded)
    out = tmp_path / "out"
    cfg = StationConfig(output=out, record=RecordSettings(dir=out), console=ConsoleSettings(enabled=False),
                        cameras=(ViewSettings("a", str(tmp_path)), ViewSettings("b", str(tmp_path))))
    with held_by_child(out, ".station.lock") as pid:
        with pytest.raises(ConfigError, match=f"pid {pid}"):
            cell_module.run_cell(cfg, threading.Event(), max_frames=1)


def test_the_station_holds_its_lock_while_it_runs_and_lets_go_at_the_end(station_bundles, conveyor_dir, tmp_path,
                                                                          monkeypatch):
    """While a station runs, another process cannot take its output folder's lock; after the run it can, no lock
    file is left, and a second run on the same folder runs."""
    from fair_edge.station.run import run_station

    Sinks(monkeypatch)
    out = tmp_path / "out"
    cfg = station(station_bundles[0].root, conveyor_dir, out)
    during: list[tuple[int, str]] = []
    run_station(cfg, threading.Event(), max_frames=2,
                on_start=lambda line: during.append(child_takes(out, ".station.lock")) if not during else None)
    code, said = during[0]
    assert code == 3 and "station.yaml" in said, said       # refused: the running station's pid and station file
    assert not (out / ".station.lock").exists()
    assert child_takes(out, ".station.lock")[0] == 0
    assert run_station(cfg, threading.Event(), max_frames=2).frames_in >= 1


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_model_loads(station_bundles, conveyor_dir,
                                                                                    tmp_path):
    """`fair-edge run` with a station file whose output folder cannot be made (its path runs through a file): the
    model loaded first, the run lock was warned about twice ("no run lock ... Not a directory"), and only then the
    recorder refused record.dir. Now `output:` is refused at start, naming the folder and why, before the model loads
    and with no run-lock warning."""
    from typer.testing import CliRunner

    from fair_edge.cli import app

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = blocker / "out"
    station_file = tmp_path / "station.yaml"
    station_file.write_text(f"bundle: {station_bundles[0].root}\ncamera: {{source: 'folder:{conveyor_dir}'}}\n"
                            f"backend: onnxruntime\noutput: {out}\nconsole: {{enabled: false}}\n")
    r = CliRunner().invoke(app, ["run", "--station", str(station_file)], env={"COLUMNS": "300"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert f"error: output: expected a writable folder, found {out} ({blocker} is a file, not a folder); pick " \
           "another dir or fix its permissions" in text, text
    assert "backend:" not in text and "threshold" not in text, text   # the start line: the model had loaded
    assert "no run lock" not in text, text


def test_a_run_lock_that_cannot_be_made_is_warned_about_once(station_bundles, conveyor_dir, tmp_path, monkeypatch,
                                                              caplog):
    """A lock file that cannot be made (here a folder stands under its name) leaves the station running unlocked,
    with a warning: it came twice, once from run_station's hold of the folder and again from open_line_side's."""
    from fair_edge.station.run import run_station

    Sinks(monkeypatch)
    out = tmp_path / "out"
    (out / ".station.lock").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="fair_edge.runlock"):
        assert run_station(station(station_bundles[0].root, conveyor_dir, out), threading.Event(),
                           max_frames=2).frames_in >= 1
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no run lock")]
    assert len(warned) == 1 and str(out / ".station.lock") in warned[0], warned


def test_a_busy_console_port_asks_first_whether_another_station_runs_there(tmp_path, caplog):
    """A console port that cannot be bound: the log asks first whether another station is running on it (the
    service still running while a `fair-edge run` is started by hand), then gives the server's own advice."""
    from fair_edge.console.station_hook import StationConsole

    cfg = StationConfig(output=tmp_path, console=ConsoleSettings(port=18765))
    console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b", threshold=None))

    def port_taken():   # what ConsoleServer.start raises when uvicorn cannot bind (no port is bound here)
        console.server.close()
        raise ConfigError("console.port: expected a free port on 127.0.0.1, found 18765 unusable; pick another "
                          "port (0 = any) or --console off")

    console.server.start = port_taken
    with caplog.at_level(logging.ERROR, logger="fair_edge.console.station_hook"):
        console.start()
    assert console.url == ""
    text = " ".join(r.getMessage() for r in caplog.records if r.name == "fair_edge.console.station_hook")
    assert "port 18765" in text and "Is another station already running on this port" in text, text
    assert text.index("another station") < text.index("pick another port")


# ------------------------------------------------------------------------------------------------------ training
def tiny_trainer(mvtec_dir: Path, out: Path, steps: int = 2):
    import torch

    from fair_edge.models.fair.family import FairSettings
    from fair_edge.models.fair.train import TrainConfig, Trainer
    from fair_edge.preprocess import PreprocessConfig
    from fair_edge.training.data import load_dataset

    cfg = TrainConfig(batch=2, lr=1e-3, steps=steps, save_every=100, log_every=1)
    return Trainer(load_dataset(mvtec_dir), PreprocessConfig(image_size=32, cutoff=4.0), FairSettings(width=8), cfg,
                   out, torch.device("cpu"))


def test_a_training_run_into_an_out_folder_another_holds_is_refused_before_writing(mvtec_dir, tmp_path):
    """Bug: a second `fair-edge train --out X` started before the first's first save passed ``check_fresh_run``
    (no last.pt yet), and both wrote the same last.pt, final.pt and loss.csv. The run's lock is refused naming the
    first run's pid and the choices; nothing is written."""
    from fair_edge.training.runs import hold_run_lock

    out = tmp_path / "run"
    out.mkdir()
    with held_by_child(out, ".train.lock") as pid:
        with pytest.raises(ConfigError) as err, hold_run_lock(out):
            tiny_trainer(mvtec_dir, out).run()
    text = " ".join(str(err.value).split())
    assert f"pid {pid}" in text and f"--out {out}" in text and "--resume" in text and "another --out" in text, text
    assert sorted(p.name for p in out.iterdir()) == []


def test_the_training_lock_is_held_for_the_run_and_let_go_after(mvtec_dir, tmp_path):
    """Held while the run trains (another process is refused), gone after it (no lock file; the next run takes it);
    a refused or finished run that made the folder and left it empty removes it."""
    from fair_edge.training.runs import hold_run_lock

    out = tmp_path / "run"
    with hold_run_lock(out):
        assert child_takes(out, ".train.lock")[0] == 3
        final = tiny_trainer(mvtec_dir, out).run()
    assert final.is_file() and not (out / ".train.lock").exists()
    assert child_takes(out, ".train.lock")[0] == 0
    with hold_run_lock(out):   # --resume / --overwrite into the same folder afterwards
        pass
    with hold_run_lock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()


def test_ddp_ranks_take_no_training_lock(tmp_path, monkeypatch):
    """Under torchrun only rank 0 takes the lock, and a rank the --nproc launcher started (which holds the lock for
    its ranks, and names it in FAIR_EDGE_TRAIN_LOCK) takes none: neither is refused by the launcher's lock."""
    from fair_edge.training.runs import RUN_LOCK_ENV, hold_run_lock

    out = tmp_path / "run"
    with held_by_child(out, ".train.lock"):
        monkeypatch.setenv("RANK", "1")
        with hold_run_lock(out):
            pass
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv(RUN_LOCK_ENV, str((out / ".train.lock").resolve()))
        with hold_run_lock(out):
            pass
        monkeypatch.delenv(RUN_LOCK_ENV)
        with pytest.raises(ConfigError):
            with hold_run_lock(out):
                pass


def test_a_launcher_names_its_lock_for_its_ranks_while_it_holds_it(tmp_path, monkeypatch):
    """The ranks a --nproc launch starts inherit FAIR_EDGE_TRAIN_LOCK (the launcher's lock file) while it holds it."""
    from fair_edge.training.runs import RUN_LOCK_ENV, hold_run_lock

    monkeypatch.delenv(RUN_LOCK_ENV, raising=False)
    with hold_run_lock(tmp_path):
        assert os.environ[RUN_LOCK_ENV] == str((tmp_path / ".train.lock").resolve())
    assert RUN_LOCK_ENV not in os.environ


def test_two_stations_with_output_and_record_dir_swapped_take_their_folder_locks_in_one_order(tmp_path, monkeypatch):
    """Folder locks are tried without waiting: station 1 (output a, record.dir b) and station 2 (output b,
    record.dir a) started at the same moment each took its output folder first and were both refused on the other's
    (neither ran). Each takes its folders in one order (sorted by resolved path), so the first to take the first
    runs. Before, each took its output folder first."""
    from fair_edge.station import locks

    taken: dict[str, list[Path]] = {}
    real_hold = locks.hold_station_folder

    def recording(folder, what, kind):
        taken.setdefault(what, []).append(Path(folder).resolve())
        return real_hold(folder, what, kind)

    monkeypatch.setattr(locks, "hold_station_folder", recording)
    a, b = tmp_path / "a", tmp_path / "b"
    for name, (out, log) in {"one": (a, b), "two": (b, a)}.items():
        cfg = StationConfig(output=out, record=RecordSettings(dir=log), console=ConsoleSettings(enabled=False),
                            source_file=tmp_path / f"{name}.yaml")
        with locks.station_lock(cfg):
            pass
    first, second = taken.values()
    assert first == second == [a.resolve(), b.resolve()]

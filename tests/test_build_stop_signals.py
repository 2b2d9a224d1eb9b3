"""Ctrl-C and SIGTERM while `fair-edge build` or `fuse` puts its result in place, and on `fuse` at all.

A stop between ``move_into_place``'s two renames deleted the new bundle and left ``--out`` missing (the previous one
renamed aside), while the line said the previous bundle was kept; a stop while the previous copy was deleted said the
unfinished bundle was removed, though the new one was complete and in place. `fuse` died on SIGTERM leaving its
staging folder, and Ctrl-C on `build` or `fuse` exited 130 without a word. Signals are sent by the process to itself
at a chosen point (a wrapped ``os.replace`` or ``shutil.rmtree``), never after a delay."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

import fair_edge.export.build as build_module
from fair_edge.cli.build import build
from fair_edge.export.build import BuildOptions, build_bundle, clear_leftovers, move_into_place, staged
from fair_edge.export.bundle import load_bundle
from fair_edge.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]  # a child imports this tree's fair_edge, not an installed one
REAL_REPLACE, REAL_RMTREE = os.replace, shutil.rmtree


class Stop(KeyboardInterrupt):
    """What the test's own SIGINT / SIGTERM handlers raise (``signum``: the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@pytest.fixture
def stop_handlers():
    """SIGINT and SIGTERM raise Stop for the test (a SIGTERM must not end pytest), the previous handlers back after."""
    def raise_stop(signum, _frame):
        raise Stop(signum)

    previous = {s: signal.signal(s, raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    yield raise_stop
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.fixture
def other_thread():
    """A live thread beside the main one, as a build's progress thread: a signal blocked in the main thread alone
    would be handed to it, and Python would still raise in the main thread."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="beside", daemon=True)
    thread.start()
    yield thread
    done.set()
    thread.join(timeout=60)


def signal_after_first_rename(monkeypatch, signum: int) -> None:
    """``os.replace`` sends ``signum`` to this process right after it renamed the previous bundle aside."""
    def replace(src, dst, *args, **kwargs):
        REAL_REPLACE(src, dst, *args, **kwargs)
        if ".replaced-" in Path(dst).name:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(os, "replace", replace)


def signal_in_old_removal(monkeypatch, signum: int) -> None:
    """``shutil.rmtree`` sends ``signum`` to this process as it starts deleting the previous bundle's copy."""
    def rmtree(path, *args, **kwargs):
        if ".replaced-" in Path(path).name:
            os.kill(os.getpid(), signum)
        return REAL_RMTREE(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)


def folder(path: Path, version: str) -> Path:
    path.mkdir(parents=True)
    (path / "version").write_text(version)
    return path


def staged_move(out: Path) -> None:
    """A rebuild of ``out`` as ``build_bundle`` does it: staged beside it, moved into place."""
    with staged(out, BuildOptions(engine=False)) as staging:
        (staging / "version").write_text("new")
        move_into_place(staging, out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_between_the_renames_waits_until_the_new_bundle_is_in_place(tmp_path, monkeypatch, stop_handlers,
                                                                            other_thread, signum):
    out = folder(tmp_path / "b", "old")
    signal_after_first_rename(monkeypatch, signum)
    with pytest.raises(KeyboardInterrupt) as stopped:
        staged_move(out)
    assert (out / "version").read_text() == "new"   # was: --out missing, the new bundle deleted
    assert isinstance(stopped.value, build_module.StoppedAfterMove) and stopped.value.__cause__.signum == signum
    leftover = stopped.value.leftover   # the stop came before the previous copy's removal: it is left, and named
    assert leftover == tmp_path / f".b.replaced-{os.getpid()}" and (leftover / "version").read_text() == "old"
    assert signal.getsignal(signum) is stop_handlers   # the handler in place before is back
    monkeypatch.undo()
    clear_leftovers(out)   # what the next build into it does first
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_a_stop_while_the_previous_copy_is_removed_leaves_the_new_bundle_and_says_so(tmp_path, monkeypatch, caplog,
                                                                                    stop_handlers):
    out = folder(tmp_path / "b", "old")
    signal_in_old_removal(monkeypatch, signal.SIGTERM)
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt) as stopped:
        staged_move(out)
    assert "could not remove" not in caplog.text   # was: the moved staging folder "could not be removed"
    assert isinstance(stopped.value, build_module.StoppedAfterMove)
    assert (out / "version").read_text() == "new" and stopped.value.leftover == tmp_path / f".b.replaced-{os.getpid()}"


def test_a_stop_before_the_renames_removes_the_staging_folder_and_keeps_the_previous_bundle(tmp_path, monkeypatch,
                                                                                           stop_handlers):
    out = folder(tmp_path / "b", "old")

    def umask_then_stop(root, linked=True):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(build_module, "apply_umask", umask_then_stop)
    with pytest.raises(Stop):   # the stop as it came: nothing was moved
        staged_move(out)
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and (out / "version").read_text() == "old"


def test_stops_deferred_raises_each_signal_after_the_block_from_its_own_handler(stop_handlers, other_thread):
    from fair_edge.disk import stops_deferred

    reached = []
    with pytest.raises(Stop) as stopped:
        with stops_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("end of block")
    assert reached == ["end of block"] and stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is stop_handlers and signal.getsignal(signal.SIGINT) is stop_handlers
    with stops_deferred():   # nothing arrived: nothing raised
        pass


# ----------------------------------------------------------------------------- the commands
app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


@pytest.fixture
def rebuild(tiny_ckpt_path, tmp_path):
    """(args of a `fair-edge build` that rebuilds it, --out): a bundle already built at --out."""
    normal = write_pngs(tmp_path / "normal", make_frames(4, seed=3))
    out = tmp_path / "bundles" / "b"
    build_bundle(load_checkpoint(tiny_ckpt_path), out, BuildOptions("fp32", engine=False),
                 normal_frames=make_frames(4, seed=3))
    args = ["build", str(tiny_ckpt_path), "--normal", str(normal), "--out", str(out), "--no-engine"]
    return args + ["--overwrite"], out   # the first was built by the library: no source recorded


def test_sigterm_between_the_renames_of_a_build_leaves_the_new_bundle_and_says_so(rebuild, monkeypatch):
    args, out = rebuild
    signal_after_first_rename(monkeypatch, signal.SIGTERM)
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    monkeypatch.undo()
    text = " ".join(r.output.split())
    assert r.exit_code == 128 + signal.SIGTERM, r.output
    assert load_bundle(out).threshold is not None   # was: "bundle ... does not exist"
    assert f"build stopped by SIGTERM once the new bundle was in place: {out} is complete and ready to use" in text
    assert "unfinished bundle was removed" not in text and "error:" not in text
    assert sorted(p.name for p in out.parent.iterdir()) == [f".b.replaced-{os.getpid()}", "b"]


def test_ctrl_c_during_a_build_says_what_is_left_and_exits_130(rebuild, monkeypatch):
    args, out = rebuild

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_threshold", ctrl_c)
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 130, r.output
    assert (f"error: build interrupted; no new bundle was written to {out} (its unfinished files were removed); the "
            "previous bundle there is kept. Run the same command again.") in text   # was: no line at all
    assert [p.name for p in out.parent.iterdir()] == ["b"]


FUSE_CHILD = r'''
"""`fair-edge fuse ARGS` whose members are copied into its staging folder when SIGINT or SIGTERM (argv[1]) arrives."""
import os
import shutil
import signal
import sys
import time

import fair_edge.runtime.fusion as fusion
from fair_edge.cli import app

signum = getattr(signal, sys.argv[1])


def copy_then_stop(root, member_dirs, *args):
    for i, src in enumerate(member_dirs):
        shutil.copytree(src, root / f"m{i}")
    os.kill(os.getpid(), signum)
    time.sleep(600)   # a bound: the handler raises at once


fusion._fuse_into = copy_then_stop
app(sys.argv[2:])
'''


@pytest.mark.parametrize("name, code, previous", [("SIGTERM", 143, False), ("SIGINT", 130, True)])
def test_a_stopped_fuse_removes_its_staging_folder_and_says_what_is_kept(tiny_ckpt_path, tmp_path, name, code,
                                                                         previous):
    """SIGTERM killed fuse outright (its ~40 MB staging folder left until a later fuse into the same --out); Ctrl-C
    exited 130 with no line."""
    member = tmp_path / "member"
    build_bundle(load_checkpoint(tiny_ckpt_path), member, BuildOptions("fp32", engine=False),
                 normal_frames=make_frames(4, seed=3))
    normal = write_pngs(tmp_path / "normal", make_frames(4, seed=4))
    out = tmp_path / "fused" / "f"
    if previous:   # a fused bundle the new one would replace
        out.mkdir(parents=True)
        (out / "fusion.json").write_text("{}")
    script = tmp_path / "fuse_child.py"
    script.write_text(FUSE_CHILD)
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    r = subprocess.run([sys.executable, str(script), name, "fuse", str(member), str(member), "--normal", str(normal),
                        "--out", str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "COLUMNS": "400", "PYTHONPATH": path})
    how = "stopped by SIGTERM" if name == "SIGTERM" else "interrupted"
    kept = "the previous fused bundle there is kept" if previous else "none was there"
    assert r.returncode == code, r.stderr
    assert (f"error: fuse {how}; no new fused bundle was written to {out} (its unfinished files were removed); "
            f"{kept}. Run the same command again.") in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr
    assert [p.name for p in out.parent.iterdir()] == (["f"] if previous else [])   # no .f.building-* left
    assert not previous or [p.name for p in out.iterdir()] == ["fusion.json"]

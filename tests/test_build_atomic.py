"""`fair-edge build` leaves nothing behind when it fails, and takes datasets wherever it asks for normal images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from export_fixtures import make_frames, write_pngs
from typer.testing import CliRunner

import fair_edge.export.build as build_module
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.cli.build import build
from fair_edge.errors import ExportError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle

app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def invoke(*args):
    return CliRunner().invoke(app, ["build", *map(str, args)], env={"COLUMNS": "200"})


def test_int8_without_calib_is_refused_before_any_work(tiny_ckpt_path, tmp_path):
    r = invoke(tiny_ckpt_path, "--int8", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--int8 needs normal images" in r.output and "elpv:mono" in r.output
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing_and_keeps_the_previous_bundle(tiny_ckpt_path, tmp_path, monkeypatch):
    ckpt, out = load_checkpoint(tiny_ckpt_path), tmp_path / "b"
    frames = make_frames(8, seed=3)

    def fail(*args, **kwargs):
        raise ExportError("simulated failure after the graphs were written")

    with monkeypatch.context() as m:
        m.setattr(build_module, "_threshold", fail)
        with pytest.raises(ExportError, match="simulated"):
            build_bundle(ckpt, out, BuildOptions("fp32", engine=False), normal_frames=frames)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary folder
    first = build_bundle(ckpt, out, BuildOptions("fp32", engine=False), normal_frames=frames)  # retry works
    with monkeypatch.context() as m:
        m.setattr(build_module, "_threshold", fail)
        with pytest.raises(ExportError):
            build_bundle(ckpt, out, BuildOptions("fp16", engine=False), normal_frames=frames)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    assert load_bundle(out) == first.bundle  # the previous bundle is untouched
    second = build_bundle(ckpt, out, BuildOptions("fp16", engine=False), normal_frames=frames)
    assert second.bundle.precision == "fp16" and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_calib_normal_and_defects_accept_a_dataset(tiny_ckpt_path, mvtec_dir, tmp_path):
    out = tmp_path / "b"
    r = invoke(tiny_ckpt_path, "--int8", "--calib", mvtec_dir, "--normal", mvtec_dir, "--defects", mvtec_dir,
               "--out", out, "--no-engine")
    assert r.exit_code == 0, r.output
    assert "build, INT8 calibration (percentile) 16/16 (100%)" in r.output  # the plain progress line of a log
    b = load_bundle(out)
    assert b.calibration["images_used"] == 16  # train/good
    assert b.threshold.n_normal == 6 and b.threshold.n_defect == 6  # test/good and test/blob


def test_dataset_without_that_role_is_a_clear_error(tiny_ckpt_path, mvtec_dir, tmp_path):
    plain = write_pngs(tmp_path / "plain", make_frames(4, seed=9))
    r = invoke(tiny_ckpt_path, "--normal", plain, "--out", tmp_path / "b1", "--no-engine")
    assert r.exit_code == 0 and load_bundle(tmp_path / "b1").threshold.n_normal == 4  # a plain folder: all of it
    r = invoke(tiny_ckpt_path, "--normal", "elpv:nonsense", "--out", tmp_path / "b2")
    assert r.exit_code == 2 and not (tmp_path / "b2").exists()


HELD_BUILD = r'''
"""`fair-edge build ARGS` in which the graphs are written and the build then waits (in the staging folder) until
it is stopped: READY is written at that point, so the parent signals it exactly there."""
import sys
import time
from pathlib import Path

import typer

import fair_edge.export.build as build_module
from fair_edge.cli.build import build


def hold(*args, **kwargs):
    Path(sys.argv[1]).write_text("the staging folder holds the graphs")
    while True:
        time.sleep(1)


build_module._threshold = hold
app = typer.Typer()
app.command("build")(build)


@app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


app(["build", *sys.argv[2:]])
'''


def test_sigterm_stops_a_build_like_ctrl_c_leaving_nothing(tiny_ckpt_path, tmp_path):
    """`kill PID` (systemctl stop, a CI timeout) in the middle of a build: the staging folder with its half-written
    graphs is removed, as after Ctrl-C; exit 143 with one line, no traceback. The old SIGTERM handler is back after a
    build in this process."""
    import signal
    import subprocess
    import sys
    import time

    normal = write_pngs(tmp_path / "normal", make_frames(4, seed=3))
    (tmp_path / "out").mkdir()
    ready, script = tmp_path / "ready", tmp_path / "held_build.py"
    script.write_text(HELD_BUILD)
    child = subprocess.Popen([sys.executable, str(script), str(ready), str(tiny_ckpt_path), "--normal", str(normal),
                              "--out", str(tmp_path / "out" / "b"), "--no-engine"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 600   # a bound for a stuck child, not a timing assumption
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), child.communicate(timeout=60)
        assert [p.name.startswith(".b.building-") for p in (tmp_path / "out").iterdir()] == [True]
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert list((tmp_path / "out").iterdir()) == [] and "Traceback" not in err and "SIGTERM" in err

    before = signal.getsignal(signal.SIGTERM)
    r = invoke(tiny_ckpt_path, "--int8", "--out", tmp_path / "b")
    assert r.exit_code == 2 and signal.getsignal(signal.SIGTERM) is before


@pytest.fixture
def umask_022():
    """The process umask set to 0o022 for the test (a desktop account's usual mask), restored after."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_built_bundle_has_the_modes_of_the_umask(tiny_ckpt_path, tmp_path, umask_022):
    """The staging folder (mkdtemp: 0700) and ONNX Runtime's calibration caches (mkstemp: 0600) get the umask's modes
    before the rename: under umask 022 the bundle is 0755 with 0644 files, readable by a station's service account."""
    out = tmp_path / "b"
    build_bundle(load_checkpoint(tiny_ckpt_path), out, BuildOptions("int8", engine=False), make_frames(4, seed=2),
                 make_frames(4, seed=3))
    assert (out.stat().st_mode & 0o777) == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert "calibration.json" in modes and "calibration-cpu.json" in modes
    assert modes == dict.fromkeys(modes, 0o644)


def test_a_damaged_calibration_cache_is_calibrated_again_not_reused(tiny_ckpt_path, tmp_path):
    """A calibration.json damaged after the build (its key file intact) no longer matches bundle.json's SHA-256: the
    same build command calibrates again and succeeds (before: ORT failed on the cache, every time); an intact one
    is reused."""
    ckpt, out = load_checkpoint(tiny_ckpt_path), tmp_path / "b"
    calib, normal, options = make_frames(4, seed=2), make_frames(4, seed=3), BuildOptions("int8", engine=False)
    first = build_bundle(ckpt, out, options, calib, normal)
    cache = out / "calibration.json"
    good = cache.read_bytes()
    cache.write_bytes(good[:100])
    again = build_bundle(ckpt, out, options, calib, normal)
    assert not again.calibration_reused and cache.read_bytes() == good
    assert again.bundle.threshold == first.bundle.threshold
    assert build_bundle(ckpt, out, options, calib, normal).calibration_reused   # intact: reused
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_an_error_names_the_bundle_files_not_the_removed_staging_folder(tiny_ckpt_path, tmp_path, monkeypatch):
    """An error raised inside the build that names a file of the staging folder (removed when the build fails) names it
    as in --out: the file the user can act on."""
    out = tmp_path / "b"

    def fail(ckpt, staging):
        raise ExportError(f"cannot read {staging / 'calibration.json'}; delete it and rebuild")

    monkeypatch.setattr(build_module, "_fp32_with_parity", fail)
    with pytest.raises(ExportError) as err:
        build_bundle(load_checkpoint(tiny_ckpt_path), out, BuildOptions("fp32", engine=False))
    assert f"cannot read {out / 'calibration.json'}; delete it" in str(err.value) and ".building-" not in str(err.value)


def test_an_out_in_an_unwritable_folder_is_one_error_naming_it(tiny_ckpt_path, tmp_path, monkeypatch):
    """--out in a folder this account cannot write (someone else's, read-only): one line naming --out and the fix,
    exit 2, no PermissionError traceback. (Simulated: the tests run as root, which may write anywhere.)"""
    import tempfile

    def denied(prefix=None, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(dir) / f"{prefix}xyz"))

    out = tmp_path / "theirs" / "b"
    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkdtemp", denied)
        r = invoke(tiny_ckpt_path, "--out", out, "--no-engine")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    flat = " ".join(r.output.split())
    assert f"--out {out}" in flat and "Permission denied" in flat and "writable" in flat
    blocker = tmp_path / "file"   # a real OSError: its parent is a file
    blocker.write_text("")
    r = invoke(tiny_ckpt_path, "--out", blocker / "b", "--no-engine")
    assert r.exit_code == 2 and "Traceback" not in r.output and f"--out {blocker / 'b'}" in " ".join(r.output.split())

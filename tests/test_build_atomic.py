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
from fair_edge.errors import BundleError, ExportError
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


def test_a_full_disk_writing_the_normal_maps_is_one_error_and_keeps_the_previous_bundle(tiny_ckpt_path, tmp_path,
                                                                                        monkeypatch):
    """np.save on a full disk ("6144 requested and 4064 written", an OSError without errno) was a traceback. Now a
    BundleError naming the file as in --out and the free space; the previous bundle stays, no staging folder is left."""
    import numpy as np

    from fair_edge.errors import BundleError

    ckpt, out, frames = load_checkpoint(tiny_ckpt_path), tmp_path / "b", make_frames(4, seed=3)
    first = build_bundle(ckpt, out, BuildOptions("fp32", engine=False), normal_frames=frames)

    def short_write(path, array, allow_pickle=True):
        Path(path).write_bytes(b"\x93NUMPY half")
        raise OSError("6144 requested and 4064 written")

    monkeypatch.setattr(np, "save", short_write)
    with pytest.raises(BundleError) as err:
        build_bundle(ckpt, out, BuildOptions("fp32", engine=False), normal_frames=frames)
    message = str(err.value)
    assert f"cannot write the held-out normal maps {out / 'normal_maps.npy'} (" in message
    assert "6144 requested and 4064 written" in message and f"MB free on the disk of {out}" in message
    assert ".building-" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and load_bundle(out) == first.bundle


def test_a_read_only_disk_writing_the_normal_maps_names_the_maps_and_says_read_only(tmp_path, monkeypatch):
    """np.save on a read-only disk (EROFS, the file never made): the cleanup's unlink failed with EROFS too (as
    unlinking even a missing file does there) and escaped as a bare OSError instead of the maps' BundleError, whose
    fix was "Free space on that disk" anyway. Now a BundleError naming the maps, the read-only disk and its fix."""
    import errno

    import numpy as np

    from fair_edge.errors import BundleError
    from fair_edge.export.normal_maps import write_normal_maps

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(np, "save", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(BundleError) as err:
        write_normal_maps(tmp_path, "normal_maps.npy", [np.zeros((4, 4), np.float32)] * 3)
    message = str(err.value)
    assert message.startswith(f"cannot write the held-out normal maps {tmp_path / 'normal_maps.npy'} (")
    assert message.endswith(f"Read-only file system): {tmp_path} is on a read-only file system. Choose an --out on "
                            "a writable disk, or remount that disk read-write, then build again."), message


@pytest.mark.parametrize("code, words", [(28, "is full ("), (122, "is over this account's quota ("),
                                         (30, "is on a read-only file system")])
def test_a_full_or_read_only_disk_anywhere_in_a_build_names_out_and_its_free_space(tiny_ckpt_path, tmp_path,
                                                                                   monkeypatch, code, words):
    """Any other write of the build that meets a full, over-quota or read-only disk (ENOSPC, EDQUOT, EROFS; here
    bundle.json) is one BundleError naming --out's disk, its free space and the fix, not a traceback; the previous
    bundle stays and the staging folder is removed."""
    ckpt, out, options = load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32", engine=False)
    first = build_bundle(ckpt, out, options)

    def full(root, manifest):
        raise OSError(code, os.strerror(code), str(Path(root) / "bundle.json"))

    monkeypatch.setattr(build_module, "write_manifest", full)
    with pytest.raises(build_module.BundleError) as err:
        build_bundle(ckpt, out, options)
    message = str(err.value)
    assert message.startswith(f"--out {out}: cannot write the bundle ({out / 'bundle.json'}: {os.strerror(code)}")
    assert words in message and "then run it again" in message and ".building-" not in message
    if code != 30:
        assert f"MB free on the disk of {tmp_path})" in message and "another disk" in message
    else:   # the wording every writer uses (fair_edge.disk.write_failure): the fix names remounting too
        assert f"--out {out} is on a read-only file system. Choose an --out on a writable disk, or remount that disk " \
               "read-write, then run it again." in message, message
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and load_bundle(out) == first.bundle


def _dead_pid() -> int:
    """A process id no process can have (above the kernel's pid_max)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _leftover(folder: Path, size: int = 1000) -> Path:
    folder.mkdir()
    (folder / "model.fp32.onnx").write_bytes(b"x" * size)
    return folder


def test_staging_folders_of_killed_builds_are_removed_and_those_of_live_ones_kept(tmp_path, caplog):
    """A build killed by SIGKILL (a long TensorRT build stopped, a power cut) left its hidden `.b.building-*` folder
    for good: 7 kills left 199 MB. Now the folder names its process id and the next build into b removes those
    whose process is gone, and those of an older fair-edge (no id) unchanged for an hour, each named in a warning
    with its size; a live build's, a fresh old-style one and another bundle's are kept."""
    dead, now = _dead_pid(), 1_000_000_000.0
    gone = [_leftover(tmp_path / f".b.building-{dead}-abcd_123", 3 << 19), _leftover(tmp_path / ".b.building-old_1234")]
    kept = [_leftover(tmp_path / f".b.building-{os.getppid()}-abcd_123"), _leftover(tmp_path / ".b.building-new_1234"),
            _leftover(tmp_path / f".c.building-{dead}-abcd_123"), _leftover(tmp_path / f".b.building-{dead}-x")]
    for folder, mtime in ((gone[1], now - 2 * 3600), (kept[1], now - 60)):
        for path in (folder / "model.fp32.onnx", folder):
            os.utime(path, (mtime, mtime))
    with caplog.at_level("WARNING"):
        build_module.clear_leftovers(tmp_path / "b", now=now)
    assert [p.exists() for p in gone] == [False, False] and all(p.exists() for p in kept)
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removing")]
    assert len(removed) == 2 and f"removing {gone[0]}: " in removed[0] and removed[0].endswith("1.5 MB")
    assert f"process {dead} no longer runs" in removed[0]
    assert f"removing {gone[1]}: " in removed[1] and "unchanged for 120 min" in removed[1]


def test_a_previous_bundle_a_killed_build_left_renamed_aside_is_put_back_or_removed(tmp_path, caplog):
    """move_into_place renames the previous bundle to `.b.replaced-PID`, then the new one to b: a kill between the two
    left no b at all. The next build puts it back (the only one, with its manifest); with b in place a dead one (a
    kill while deleting it) is removed; a live process's is kept; two, or one without a manifest, are only named."""
    import shutil

    dead, out = _dead_pid(), tmp_path / "b"
    aside = tmp_path / f".b.replaced-{dead}"
    aside.mkdir()
    (aside / "bundle.json").write_text("{}")
    build_module.clear_leftovers(out)
    assert (out / "bundle.json").read_text() == "{}" and not aside.exists()
    partial, live = _leftover(tmp_path / f".b.replaced-{dead}"), _leftover(tmp_path / f".b.replaced-{os.getppid()}")
    build_module.clear_leftovers(out)
    assert not partial.exists() and live.exists()
    shutil.rmtree(live)
    shutil.rmtree(out)
    two = [_leftover(tmp_path / f".b.replaced-{dead}"), _leftover(tmp_path / f".b.replaced-{dead + 1}")]
    with caplog.at_level("WARNING"):
        build_module.clear_leftovers(out)
    assert not out.exists() and all(p.exists() for p in two)
    assert f"To restore one: `mv {two[0]} {out}`" in caplog.text


def test_a_build_after_a_killed_one_tidies_its_leftovers_and_names_its_staging_by_pid(tiny_ckpt_path, tmp_path,
                                                                                       monkeypatch):
    """The build itself tidies first: the previous bundle a kill left aside is back before it is checked and
    replaced, the dead staging folder is gone, and the new staging folder carries this process's id."""
    import re

    ckpt, out, options, dead = load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32", engine=False), \
        _dead_pid()
    build_bundle(ckpt, out, options)
    os.replace(out, tmp_path / f".b.replaced-{dead}")
    _leftover(tmp_path / f".b.building-{dead}-abcd_123")
    seen, real = [], build_module._build_into

    def recording(staging, *args, **kwargs):
        seen.append(staging.name)
        return real(staging, *args, **kwargs)

    monkeypatch.setattr(build_module, "_build_into", recording)
    again = build_bundle(ckpt, out, options)
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and load_bundle(out) == again.bundle
    assert re.fullmatch(rf"\.b\.building-{os.getpid()}-[a-z0-9_]{{8}}", seen[0])


def _linked_out(tmp_path: Path) -> tuple[Path, Path]:
    """``links/b -> ../disk/b_real`` (a folder on another disk): (the link, its target)."""
    target, links = tmp_path / "disk" / "b_real", tmp_path / "links"
    target.mkdir(parents=True)
    links.mkdir()
    (links / "b").symlink_to(Path("..") / "disk" / "b_real")
    return links / "b", target


def test_an_out_that_is_a_link_gets_the_bundle_where_it_points_and_stays_a_link(tiny_ckpt_path, tmp_path, caplog):
    """`build --out LINK` (a link to a folder on a bigger disk) renamed the link aside and put the bundle beside it,
    on the link's disk, leaving `.b.replaced-PID` (the link) for good. Now the bundle is built where the link points
    (said in a warning), twice over, and the link is kept with nothing beside it."""
    link, target = _linked_out(tmp_path)
    ckpt, options = load_checkpoint(tiny_ckpt_path), BuildOptions("fp32", engine=False)
    with caplog.at_level("WARNING"):
        first = build_bundle(ckpt, link, options)
    assert f"--out {link} is a link to {target}: the bundle is written there" in caplog.text
    again = build_bundle(ckpt, link, options)
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "disk", "b_real")
    assert [p.name for p in link.parent.iterdir()] == ["b"] and [p.name for p in target.parent.iterdir()] == ["b_real"]
    assert (target / "bundle.json").is_file() and load_bundle(link) == again.bundle
    assert first.bundle.root == again.bundle.root == target


def test_an_out_link_that_leads_back_to_itself_is_refused_by_name(tiny_ckpt_path, tmp_path):
    """`build --out LOOP` (a link pointing at itself, or two links at each other) ended in a RuntimeError traceback
    ("Symlink loop"), and `fuse` blamed the folder's permissions. Now it is one error naming the link and the fix,
    and nothing is written beside it."""
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    result = invoke(tiny_ckpt_path, "--no-engine", "--out", loop)
    assert result.exit_code != 0 and not isinstance(result.exception, RuntimeError), result.output
    assert f"--out {loop} is a symbolic link that never reaches a folder" in " ".join(result.output.split())
    with pytest.raises(BundleError, match="never reaches a folder"):
        build_bundle(load_checkpoint(tiny_ckpt_path), loop, BuildOptions("fp32", engine=False))
    assert [p.name for p in tmp_path.iterdir()] == ["loop"]


def test_a_link_an_older_build_left_renamed_aside_is_unlinked_and_its_target_kept(tmp_path, caplog):
    """What an older fair-edge left after `build --out LINK`: b a real folder, `.b.replaced-PID` the link (no later
    build removed it: only real folders were tidied). Now it is unlinked, what it points to kept; missing b, it is
    put back as b."""
    dead, out = _dead_pid(), tmp_path / "links" / "b"
    _, target = _linked_out(tmp_path)
    aside = out.parent / f".b.replaced-{dead}"
    os.replace(out, aside)
    out.mkdir()
    (target / "bundle.json").write_text("{}")
    with caplog.at_level("WARNING"):
        build_module.clear_leftovers(out)
    assert not os.path.lexists(aside) and (target / "bundle.json").is_file() and out.is_dir()
    assert f"removing {aside}: a link to" in caplog.text
    out.rmdir()
    (out.parent / f".b.replaced-{dead}").symlink_to(target)
    build_module.clear_leftovers(out)
    assert out.is_symlink() and (out / "bundle.json").read_text() == "{}"

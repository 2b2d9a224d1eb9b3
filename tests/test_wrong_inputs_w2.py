"""Inputs that exist but are the wrong kind, or that a command would accept and then never use: each refused by
name with what was found and the fix (install-service, a fused bundle given to a one-bundle command, a bundle as a
checkpoint, a file as a dataset or a folder as a station file, an MVTec root, collect into its own source)."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fair_edge.cli.service import install_service

USER = getpass.getuser()
service_app = typer.Typer()
service_app.command("install-service")(install_service)


@service_app.callback()
def _main() -> None:
    """Subcommand mode, as on the real app."""


def program(folder: Path) -> Path:
    """A runnable stand-in for the fair-edge program in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fair-edge"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def service_layout(tmp_path: Path) -> tuple[Path, list[str]]:
    """A working folder with a bundle, an image folder and a station file naming them relatively; the
    install-service arguments that install it into tmp_path/units: (working folder, args)."""
    work = tmp_path / "line3"
    for folder in ("bundle", "good"):
        (work / folder).mkdir(parents=True)
    station = work / "st.yaml"
    station.write_text("camera: {source: good}\nbundle: bundle\n")
    (tmp_path / "units").mkdir()
    return work, ["install-service", "--station", str(station), "--unit-dir", str(tmp_path / "units"),
                  "--user", USER, "--exec", str(program(tmp_path / "venv" / "bin")), "--working-dir", str(work)]


def install(args: list[str], *changes: str):
    """Run install-service with ``changes`` replacing the same flags in ``args`` (or added)."""
    changed = list(args)
    for flag, value in zip(changes[::2], changes[1::2]):
        if flag in changed:
            changed[changed.index(flag) + 1] = value
        else:
            changed += [flag, value]
    return CliRunner().invoke(service_app, changed, env={"COLUMNS": "400"})


def test_install_service_writes_a_unit_that_can_start(tmp_path):
    work, args = service_layout(tmp_path)
    r = install(args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "units" / "fair-edge.service").is_file()


@pytest.mark.parametrize("flag, value, expected", [
    ("--working-dir", "{tmp}/no/such/dir", r"--working-dir \S+/no/such/dir does not exist"),
    ("--working-dir", "{tmp}/line3/st.yaml", r"--working-dir \S+/st.yaml is a file, not a folder"),
    ("--working-dir", "{tmp}", r"st.yaml: bundle: bundle is not found from --working-dir"),
    ("--exec", "{tmp}/line3/bundle", r"executable \S+/bundle \(--exec\) is a folder"),
    ("--exec", "/usr/bin/no-such-fair-edge", r"executable /usr/bin/no-such-fair-edge \(--exec\) does not exist"),
    ("--exec", "{tmp}/line3/st.yaml", r"\(--exec\) is not executable"),
    ("--user", "nosuchuser-w2", r"--user nosuchuser-w2: no such account"),
    ("--group", "nosuchgroup-w2", r"--group nosuchgroup-w2: no such group"),
])
def test_install_service_refuses_a_unit_that_could_never_start(tmp_path, flag, value, expected):
    """Each of these wrote a unit, exit 0, that systemd restarted every 5 s forever; now refused (exit 2) naming the
    flag and what was found, and nothing is written."""
    import re

    work, args = service_layout(tmp_path)
    r = install(args, flag, value.format(tmp=tmp_path))
    assert r.exit_code == 2, r.output
    assert re.search(expected, r.output), r.output
    assert list((tmp_path / "units").iterdir()) == []


@pytest.mark.parametrize("field, text", [
    ("camera.source", "camera: {source: missing-images}\nbundle: bundle\n"),
    ("decision.roi", "camera: {source: good}\nbundle: bundle\ndecision: {roi: masks/roi.png}\n"),
    ("cameras[1].bundle", "cameras: [{name: a, source: good}, {name: b, source: '1', bundle: other}]\nbundle: bundle\n"),
])
def test_install_service_refuses_station_paths_missing_from_the_working_dir(tmp_path, field, text):
    work, args = service_layout(tmp_path)
    (work / "st.yaml").write_text(text)
    r = install(args)
    assert r.exit_code == 2 and f"{field}: " in r.output and "is not found from --working-dir" in r.output, r.output


def test_print_still_writes_a_unit_for_another_machine(tmp_path):
    """--print checks nothing of this machine: the unit may be for the station's own device."""
    work, args = service_layout(tmp_path)
    r = install(args, "--user", "nosuchuser-w2", "--working-dir", "/nonexistent/dir")
    assert r.exit_code == 2
    printed = CliRunner().invoke(service_app, [*args[:3], "--print", "--user", "nosuchuser-w2", "--working-dir",
                                               "/nonexistent/dir", "--exec", "/opt/venv/bin/fair-edge"])
    assert printed.exit_code == 0, printed.output
    assert "User=nosuchuser-w2" in printed.stdout and "WorkingDirectory=/nonexistent/dir" in printed.stdout


def test_a_name_ending_in_service_is_not_doubled(tmp_path):
    """--name line3.service wrote line3.service.service."""
    work, args = service_layout(tmp_path)
    r = install(args, "--name", "line3.service")
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "units").iterdir()] == ["line3.service"]
    assert "enable --now line3.service" in r.output and "line3.service.service" not in r.output


def fused_bundle(folder: Path) -> Path:
    """A folder laid out as a fused bundle (fusion.json, members m0 and m1 with their bundle.json)."""
    for member in ("m0", "m1"):
        (folder / member).mkdir(parents=True)
        (folder / member / "bundle.json").write_text("{}")
    (folder / "fusion.json").write_text("{}")
    return folder


@pytest.mark.parametrize("command", [["bench", "{f}", "--backend", "onnxruntime", "--seconds", "0.5"],
                                     ["fuse", "{f}", "{f}/m0", "--normal", "{tmp}", "--out", "{tmp}/out"]])
def test_a_fused_bundle_given_for_one_bundle_is_named_as_fused(tmp_path, command):
    """`bench FUSED` said "FUSED has no bundle.json; it is not a fair-edge bundle"; now it says it is a fused
    bundle, names a member to give instead and `fair-edge run --bundle FUSED`."""
    from fair_edge.cli import app

    from PIL import Image

    fused = fused_bundle(tmp_path / "fused")
    Image.new("RGB", (32, 32)).save(tmp_path / "good.png")
    r = CliRunner().invoke(app, [a.format(f=fused, tmp=tmp_path) for a in command], env={"COLUMNS": "400"})
    out = " ".join(r.output.split())
    assert r.exit_code == 2, out
    assert f"{fused} is a fused bundle" in out and "not a fair-edge bundle" not in out, out
    assert "members m0, m1" in out and f"e.g. {fused / 'm0'}" in out and f"run --bundle {fused}`" in out, out


def test_a_bundle_folder_given_as_a_checkpoint_is_named_as_a_bundle(tmp_path):
    """`build BUNDLE` / `eval FUSED ...` said "checkpoint BUNDLE does not exist"."""
    from fair_edge.errors import CheckpointError
    from fair_edge.models.checkpoint import load_checkpoint

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"is a bundle folder, not a checkpoint file.*final\.pt"):
        load_checkpoint(bundle)
    with pytest.raises(CheckpointError, match=r"is a fused bundle folder, not a checkpoint file.*run --bundle"):
        load_checkpoint(fused_bundle(tmp_path / "fused"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "final.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file; it holds final\.pt: give one"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_file_given_as_a_dataset_is_named_as_a_file(tmp_path):
    """`train st.yaml` said "dataset st.yaml does not exist"."""
    from fair_edge.errors import DataError
    from fair_edge.training.data import load_dataset

    (tmp_path / "st.yaml").write_text("bundle: b\n")
    with pytest.raises(DataError, match=r"st\.yaml is a file \(\.yaml\), not a dataset folder"):
        load_dataset(tmp_path / "st.yaml")
    with pytest.raises(DataError, match=r"does not exist"):
        load_dataset(tmp_path / "nope")


def test_a_folder_given_as_the_station_file_suggests_flags_whose_paths_paste_as_one_word(tmp_path):
    """The report: `--station 'line 3/my bundle'` was answered "pass it as --bundle line 3/my bundle" (and a folder of
    YAML files "--station line 3/cfg/cam a.yaml"): pasted, each read as several words. Both are quoted now
    (``shell_word``), and the suggestion, split as a shell does, gives the path back as one word."""
    import shlex

    from fair_edge.errors import ConfigError
    from fair_edge.station.config import load_station

    bundle = tmp_path / "line 3" / "my bundle"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text("{}")
    with pytest.raises(ConfigError) as refused:
        load_station(bundle)
    words = shlex.split(str(refused.value).split("pass it as ", 1)[1].split(" (with --source)")[0])
    assert words == ["--bundle", str(bundle)], str(refused.value)
    cfg = tmp_path / "line 3" / "cfg"
    cfg.mkdir()
    (cfg / "cam a.yaml").write_text("bundle: b\n")
    with pytest.raises(ConfigError) as refused:
        load_station(cfg)
    words = shlex.split(str(refused.value).split("e.g. ", 1)[1].rstrip("."))
    assert words == ["--station", str(cfg / "cam a.yaml")], str(refused.value)


def test_a_folder_or_a_binary_file_given_as_the_station_file_is_named_as_such(tmp_path):
    """`run --station FOLDER` said "does not exist"; an image given as --station said "another encoding, e.g.
    Latin-1"."""
    from PIL import Image

    from fair_edge.errors import ConfigError
    from fair_edge.station.config import load_station

    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is a bundle folder, not a station YAML file: pass it as --bundle"):
        load_station(tmp_path / "bundle")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "line3.yaml").write_text("bundle: b\n")
    with pytest.raises(ConfigError, match=r"is a folder, not a YAML file; it holds line3\.yaml: give one"):
        load_station(tmp_path / "cfg")
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    with pytest.raises(ConfigError, match=r"good\.png is a binary file .*not a YAML text file") as caught:
        load_station(tmp_path / "good.png")
    assert "Latin-1" not in str(caught.value)
    (tmp_path / "latin.yaml").write_bytes("# caf\xe9\nbundle: b\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"another encoding, e\.g\. Latin-1"):
        load_station(tmp_path / "latin.yaml")


def mvtec_root(tmp_path: Path) -> Path:
    """An MVTec root with the categories bottle and screw (one image in train/good each)."""
    from PIL import Image

    root = tmp_path / "mvtec"
    for category in ("bottle", "screw"):
        (root / category / "train" / "good").mkdir(parents=True)
        (root / category / "test" / "good").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / category / "train" / "good" / "000.png")
    return root


def test_an_mvtec_root_lists_its_categories(tmp_path):
    """An MVTec root without --category, or with a misspelt one, said it "holds no images"."""
    from fair_edge.errors import DataError
    from fair_edge.training.data import load_dataset

    root = mvtec_root(tmp_path)
    with pytest.raises(DataError, match=r"is an MVTec root holding the categories bottle, screw: pick one with "
                                        r"--category NAME"):
        load_dataset(root)
    with pytest.raises(DataError, match=r"no category 'bottel' \(did you mean 'bottle'\?\); it holds bottle, screw"):
        load_dataset(root, "bottel")
    with pytest.raises(DataError, match=r"is an MVTec root"):
        load_dataset(root, need_train=False)
    assert load_dataset(root, "bottle").train


def test_collect_into_its_own_source_folder_is_refused(tmp_path):
    """`collect SAME --source SAME` re-saved the source's images into it."""
    from PIL import Image

    from fair_edge.cli import app

    import numpy as np

    images = tmp_path / "same"
    images.mkdir()
    texture = np.random.default_rng(0).integers(40, 200, (64, 64, 3), dtype=np.uint8)   # sharp, well exposed
    Image.fromarray(texture).save(images / "000.png")
    for out, where in ((images, "is the --source folder"), (images / "sub", "is inside the --source folder")):
        r = CliRunner().invoke(app, ["collect", str(out), "--source", str(images), "--max-frames", "5"],
                               env={"COLUMNS": "400"})
        text = " ".join(r.output.split())
        assert r.exit_code == 2 and where in text and "Give a new folder outside it" in text, text
    assert sorted(p.name for p in images.iterdir()) == ["000.png"]

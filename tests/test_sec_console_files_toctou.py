"""/files/ and /records/ check a file by its name (``safe_file``: inside the folder, of a kind served, not the station
file), then opened the name again with a plain ``open()``, which follows links: a file swapped for a link between
the two (a writer of the output folder flipping ``race.json`` between a file and a link to the station file) served
the station file, ``console.token`` and all (toctou_files.py leaked it in under a second). The name checked is now
opened without following a link (a link or a FIFO swapped in is 404, and a FIFO never blocks the reader) and the
checks are made again on the file opened (a folder above it swapped for a link: its real path is outside). The swap
is made at the point between the check and the open, so each test is deterministic."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from fair_edge.console import served_files
from test_console_units import api, one_camera_console

TOKEN = "SUPERSECRETTOKEN123456"
PLAIN = b'{"ok": true}\n'


def station_with_output(tmp_path: Path):
    """(client, output folder, station file outside it holding TOKEN): a console whose output folder holds
    ``race.json`` and ``sub/race.json`` (plain files it serves)."""
    out, secret_dir = tmp_path / "out", tmp_path / "etc"
    (out / "sub").mkdir(parents=True)
    secret_dir.mkdir()
    station = secret_dir / "station.yaml"
    station.write_text(yaml.safe_dump({"console": {"host": "0.0.0.0", "token": TOKEN}}))
    for name in ("race.json", "sub/race.json"):
        (out / name).write_bytes(PLAIN)
    console, _ = one_camera_console(out, station_file=station)
    return api(console), out, station


def swap_after_check(monkeypatch, swap) -> list[Path]:
    """Run ``swap(path)`` right after ``safe_file`` passed ``path`` (the point between the check and the open);
    returns the paths swapped."""
    checked = served_files.safe_file
    swapped: list[Path] = []

    def check_then_swap(root, rel, station_file=None):
        path = checked(root, rel, station_file)
        if path is not None:
            swap(path)
            swapped.append(path)
        return path

    monkeypatch.setattr(served_files, "safe_file", check_then_swap)
    return swapped


def test_a_file_swapped_for_a_link_to_the_station_file_after_the_check_is_404(tmp_path, monkeypatch):
    """The old code opened the link and sent the station file: 200 with console.token in the body."""
    client, out, station = station_with_output(tmp_path)

    def to_link(path: Path) -> None:
        path.unlink()
        path.symlink_to(station)

    swapped = swap_after_check(monkeypatch, to_link)
    r = client.get("/files/race.json")
    assert [p.name for p in swapped] == ["race.json"]   # the swap ran where it should
    assert r.status_code == 404, (r.status_code, r.text[:80])
    assert TOKEN not in r.text


@pytest.mark.parametrize("through_proc", [True, False], ids=["proc-fd", "dev-ino-fallback"])
def test_a_folder_swapped_for_a_link_after_the_check_serves_nothing_outside(tmp_path, monkeypatch, through_proc):
    """``sub/`` swapped for a link to a folder outside holding a file of the same name (the final name is no link,
    so O_NOFOLLOW alone opens it): the file opened is checked by its real path, from /proc (Linux) or, without
    /proc, by the name resolved again naming the same file (device, inode)."""
    client, out, _ = station_with_output(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "race.json").write_text(f'{{"token": "{TOKEN}"}}\n')
    if not through_proc:
        real_readlink = os.readlink

        def no_proc(path, *args, **kwargs):
            if str(path).startswith(served_files.OPEN_FD_LINKS):
                raise FileNotFoundError(2, "No such file or directory", str(path))
            return real_readlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "readlink", no_proc)

    def folder_to_link(path: Path) -> None:
        shutil.rmtree(path.parent)
        path.parent.symlink_to(outside, target_is_directory=True)

    swap_after_check(monkeypatch, folder_to_link)
    r = client.get("/files/sub/race.json")
    assert r.status_code == 404, (r.status_code, r.text[:80])
    assert TOKEN not in r.text


def test_a_fifo_swapped_in_after_the_check_is_404_at_once(tmp_path, monkeypatch):
    """A FIFO with no writer made a plain open() wait forever (a console thread held per request). It opens at once
    now (O_NONBLOCK) and is refused as no regular file."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this OS")
    client, out, _ = station_with_output(tmp_path)

    def to_fifo(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    swap_after_check(monkeypatch, to_fifo)
    answers: list = []
    request = threading.Thread(target=lambda: answers.append(client.get("/files/race.json")), daemon=True)
    request.start()
    request.join(timeout=30)   # a bound for a broken build, never reached by a working one
    if request.is_alive():   # the old code: blocked in open(); a writer's open lets it go, so the test can end
        os.close(os.open(out / "race.json", os.O_WRONLY))
        request.join(timeout=30)
        pytest.fail("the request waited on a FIFO swapped in after the check (open() blocked for a writer)")
    assert answers and answers[0].status_code == 404, answers


def test_a_hard_link_to_the_station_file_under_a_served_name_is_404(tmp_path):
    """The station file under a served name through a hard link (the same file, no link to see): refused by its
    device and inode once open."""
    client, out, station = station_with_output(tmp_path)
    try:
        os.link(station, out / "copy.json")
    except OSError as exc:   # another file system (tmp_path and its subfolders share one as a rule)
        pytest.skip(f"no hard link here: {exc}")
    r = client.get("/files/copy.json")
    assert r.status_code == 404 and TOKEN not in r.text, (r.status_code, r.text[:80])


def test_regular_files_and_links_inside_the_folder_are_served_as_before(tmp_path):
    """Nothing swapped: a plain file, one in a subfolder and a link inside the folder to a served file are 200 with
    their bytes, Content-Length and type, as before."""
    client, out, _ = station_with_output(tmp_path)
    (out / "latest.json").symlink_to(out / "race.json")
    for path in ("/files/race.json", "/files/sub/race.json", "/files/latest.json"):
        r = client.get(path)
        assert r.status_code == 200 and r.content == PLAIN, (path, r.status_code)
        assert r.headers["content-length"] == str(len(PLAIN)) and r.headers["content-type"] == "application/json"

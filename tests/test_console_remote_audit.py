"""The console audited for remote use (station 7, line B):

1. A bundle swapped in from the console was not written to the station file, but a threshold applied on it was: a
   reload (or a restart) then ran the file's OLD bundle at the NEW bundle's threshold (NG 50 % -> 16 %). The
   threshold is now written with the bundle it was applied on, and a reload refuses to pair a threshold applied from
   the console with another bundle.
2. `--threshold` on the run line came back after a console apply, a hand edit of the file and a reload.
3. 63 idle connections (no bytes, or half a header) answered every browser 503 for as long as they stayed open.
4. `GET /files/station.yaml` served the station file, ``console.token`` and all, from an output folder holding it.
5. A threshold of 401 digits was a 500 with an OverflowError traceback (and a part image URL of 5000 digits too).
6. Two "Export reviewed parts" in the same second wrote into one folder, and one failed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fair_edge.console import dataset_export, served_files, server as console_server
from fair_edge.console.actions import StationLinks
from fair_edge.console.server import ConsoleServer
from fair_edge.console.settings import ConsoleSettings
from fair_edge.training.collect import export_reviewed
from test_console_units import RUN, _reviewed_station, api, one_camera_console, verdict
from inline_swaps import inline_swaps, kept_signals  # noqa: F401 (autouse fixtures)
from test_reload_flags import (one_camera, run_command, set_file_threshold, take, two_cameras,
                               write_station)

TOKEN = "s3cret-token-0123456789"


def refused_reloads(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("bundle reload refused")]


# ---------------------------------------------------------------- 1. a threshold goes with the bundle it was applied on
def test_a_threshold_applied_on_a_swapped_bundle_is_written_with_it_and_a_reload_runs_them_together(
        monkeypatch, tmp_path, caplog):
    """The audit's case: swap to bundle other from the console, apply 0.64 tuned on it, reload. Before, the file
    kept bundle fp32 with threshold 0.64 and the reload loaded fp32 at 0.64. Now the apply writes bundle other with
    the threshold (one replace), says so in its answer and audit row, and the reload loads other at 0.64."""
    station, loads = write_station(tmp_path), []
    other = tmp_path / "other"
    answers = []

    def scenario(console, decider):
        console.actions.swap(str(other), "it")
        take(decider)
        answers.append(console.actions.apply_threshold(0.64, "it", True))
        take(decider)
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--station", str(station)], scenario, one_camera(monkeypatch, loads))
    assert [(bundle, threshold) for bundle, threshold, *_ in loads] == [("other", None), ("other", 0.64)]
    data = yaml.safe_load(station.read_text())
    assert (data["bundle"], data["decision"]["threshold"]) == (str(other), 0.64)
    answer = answers[0]
    assert answer["bundle"] == str(other)
    assert answer["station_file_bundle"] == {"old": str(tmp_path / "fp32"), "new": str(other)}
    rows = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    row = [r for r in rows if r["action"] == "threshold"][-1]
    assert row["bundle"] == str(other) and row["station_file_bundle"] == answer["station_file_bundle"]
    assert refused_reloads(caplog) == []


def test_a_threshold_applied_on_the_files_bundle_leaves_its_bundle_alone(monkeypatch, tmp_path):
    """No swap: the bundle in force is the one the file names; only the threshold is written."""
    station, loads = write_station(tmp_path), []
    answers = []

    def scenario(console, decider):
        answers.append(console.actions.apply_threshold(0.5, "ann", True))

    run_command(monkeypatch, tmp_path, ["--station", str(station)], scenario, one_camera(monkeypatch, loads))
    data = yaml.safe_load(station.read_text())
    assert (data["bundle"], data["decision"]["threshold"]) == (str(tmp_path / "fp32"), 0.5)
    assert "station_file_bundle" not in answers[0] and answers[0]["bundle"] == str(tmp_path / "fp32")


def test_a_reload_refuses_a_threshold_applied_on_another_bundle_than_the_one_it_would_load(monkeypatch, tmp_path,
                                                                                          caplog):
    """After the apply on bundle other, the site points bundle: back at fp32 by hand and leaves the threshold: a
    reload would run fp32 at other's 0.64. It is refused, naming both bundles and the fix; the station runs on."""
    station, loads = write_station(tmp_path), []

    def scenario(console, decider):
        console.actions.swap(str(tmp_path / "other"), "it")
        take(decider)
        console.actions.apply_threshold(0.64, "it", True)
        take(decider)
        data = yaml.safe_load(station.read_text())
        data["bundle"] = str(tmp_path / "fp32")   # the hand edit
        station.write_text(yaml.safe_dump(data))
        console.reload_bundle("SIGHUP")
        set_file_threshold(station, 0.3)   # a threshold for fp32: taken
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--station", str(station)], scenario, one_camera(monkeypatch, loads))
    assert [(bundle, threshold) for bundle, threshold, *_ in loads] == [("other", None), ("fp32", 0.3)]
    refused = refused_reloads(caplog)
    assert len(refused) == 1, refused
    assert f"decision.threshold 0.64 was applied from the console on bundle {tmp_path / 'other'}" in refused[0]
    assert f"not on bundle {tmp_path / 'fp32'} this reload would load" in refused[0]
    assert "(null: the bundle's own calibrated threshold)" in refused[0]


def test_a_cell_threshold_applied_on_a_swapped_bundle_is_written_as_the_cameras_own_with_it(monkeypatch, tmp_path):
    """Several cameras: camera top swapped to bundle other, then 0.45 applied to top: written as top's own threshold
    and bundle, so the reload loads top on other at 0.45 (before: the station's fp32 at 0.45); left is untouched."""
    camera = {"source": str(tmp_path), "fps": 5, "loop": True}
    station = write_station(tmp_path, group={"match": "sequence"}, cameras=[
        {"name": "top", **camera}, {"name": "left", **camera, "bundle": str(tmp_path / "left_own"), "threshold": 0.2}])
    loads = []

    def scenario(console, views):
        console.actions.swap(str(tmp_path / "other"), "it", "top")
        take(views["top"])
        console.actions.apply_threshold(0.45, "it", True, "top")
        take(views["top"])
        del loads[:]
        console.reload_bundle("SIGHUP")

    run_command(monkeypatch, tmp_path, ["--station", str(station)], scenario, two_cameras(loads))
    assert sorted(loads) == [("left", "left_own", 0.2), ("top", "other", 0.45)]
    cameras = {c["name"]: c for c in yaml.safe_load(station.read_text())["cameras"]}
    assert (cameras["top"]["bundle"], cameras["top"]["threshold"]) == (str(tmp_path / "other"), 0.45)
    assert cameras["left"]["bundle"] == str(tmp_path / "left_own")


# ---------------------------------------------------------------- 2. --threshold ends at a console apply
def test_a_hand_edit_after_a_console_apply_is_taken_by_the_reload_not_the_flags_threshold(monkeypatch, tmp_path,
                                                                                        caplog):
    """flag_hand_edit.sh: run with --threshold 0.3; an operator applies 0.4 (written to the file); the site edits
    the file to 0.45 and reloads. Before, the reload went back to the flag's 0.3 (the flag's hold ended only when
    the file's threshold was the one in force at a reload). Now the apply ends it: the reload takes 0.45."""
    station, loads = write_station(tmp_path), []

    def scenario(console, decider):
        assert decider.threshold == 0.3   # the flag's, from the start
        console.actions.apply_threshold(0.4, "op", True)
        take(decider)
        set_file_threshold(station, 0.45)
        console.reload_bundle("SIGHUP")
        take(decider)
        assert decider.threshold == 0.45

    run_command(monkeypatch, tmp_path, ["--station", str(station), "--threshold", "0.3"], scenario,
                one_camera(monkeypatch, loads))
    assert [(bundle, threshold) for bundle, threshold, *_ in loads] == [("fp32", 0.45)]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bundle reload (SIGHUP): flags")]
    assert lines == ["bundle reload (SIGHUP): flags given on the command line: --threshold 0.3 no longer: a "
                     "threshold was applied from the console since the start, so the station file's 0.45 is taken"]


# ---------------------------------------------------------------- 3. idle connections do not hold the console
def idle_connection(port: int, sent: bytes) -> socket.socket:
    """A connection that sends ``sent`` (nothing, or half a request header) and then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if sent:
        sock.sendall(sent)
    return sock


def test_idle_connections_are_closed_and_free_the_console_for_a_browser(tmp_path, monkeypatch):
    """63 connections that send no byte or half a header (``MAX_CONNECTIONS`` is 64) answered every other request
    503 for as long as they stayed open: uvicorn starts no timer before a first request. Each is now closed once it
    has not sent a whole request header within ``HEADER_TIMEOUT_S`` (1 s here): an operator's request gets its 200
    while the idle sockets are still open on the client's side, and each of them then reads the server's close."""
    monkeypatch.setattr(console_server, "HEADER_TIMEOUT_S", 1.0, raising=False)
    console, _ = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 0.5), None)
    console.feed.settings = ConsoleSettings(port=0, live_fps=0.5)
    idle = []
    with ConsoleServer(console.feed, console.actions) as server:
        try:
            for i in range(console_server.MAX_CONNECTIONS - 1):
                idle.append(idle_connection(server.port, b"" if i % 2 else b"GET /api/state HTTP/1.1\r\nHo"))
            deadline, status = time.monotonic() + 60, None
            while time.monotonic() < deadline:
                status = httpx.get(server.url + "api/state", timeout=10).status_code
                if status == 200:
                    break
                time.sleep(0.1)   # polling: the server closes the idle connections on its own clock
            assert status == 200, f"expected the console to answer once the idle connections timed out, found {status}"
            for sock in idle:   # never closed here: the server closed them
                assert sock.recv(64) == b""
        finally:
            for sock in idle:
                sock.close()


def test_a_request_whose_header_comes_whole_is_answered_and_kept_alive(tmp_path, monkeypatch):
    """The deadline is for the header only: a request sent whole gets its answer on the same connection, and a second
    request on it is answered too (the deadline starts again at each response's end)."""
    monkeypatch.setattr(console_server, "HEADER_TIMEOUT_S", 5.0, raising=False)
    console, _ = one_camera_console(tmp_path)
    console.feed.settings = ConsoleSettings(port=0, live_fps=0.5)
    with ConsoleServer(console.feed, console.actions) as server, httpx.Client(timeout=10) as client:
        assert client.get(server.url + "api/state").status_code == 200
        assert client.get(server.url + "api/state").status_code == 200


# ---------------------------------------------------------------- 4. the station file is never served
def test_the_station_file_is_not_served_from_an_output_folder_holding_it_and_a_warning_says_so(tmp_path, caplog):
    """token_in_output.sh: the station file kept in the output folder was served at /files/station.yaml, its
    console.token readable by anyone reaching the console. It and a threshold write's temporary copy are 404 from
    /files/ and /records/ (any path to them: a link, ``..``); other files there are served; a warning at start names
    the station file inside the served folders."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"console": {"host": "0.0.0.0", "token": TOKEN}}))
    (tmp_path / ".ab12cd34.station.yaml.tmp").write_text(f"token: {TOKEN}\n")
    (tmp_path / "verdicts.jsonl").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    os.symlink(station, tmp_path / "sub" / "link.yaml")
    console, _ = one_camera_console(tmp_path, station_file=station)
    console.feed.recorder = type("Recorder", (), {"dir": tmp_path})()
    client = api(console)
    for path in ("files/station.yaml", "files/.ab12cd34.station.yaml.tmp", "files/sub/link.yaml",
                 "files/sub/../station.yaml", "records/station.yaml", "records/.ab12cd34.station.yaml.tmp"):
        r = client.get(path)
        assert r.status_code == 404 and TOKEN not in r.text, (path, r.status_code)
    assert client.get("files/verdicts.jsonl").status_code == 200

    console, _ = one_camera_console(tmp_path, station_file=station, enabled=True, port=0)
    with caplog.at_level(logging.WARNING), console:
        pass
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"station file {station}")]
    assert len(warned) == 1 and f"inside the console's output folder {tmp_path}," in warned[0], warned


def test_a_station_file_outside_the_served_folders_gets_no_warning():
    assert served_files.station_file_warning(Path("/etc/fair-edge/station.yaml"),
                                               {"output folder": Path("/var/lib/fair-edge/run"),
                                                "record folder": None}) == ""


# ---------------------------------------------------------------- 5. numbers too large for a float
def test_a_threshold_of_401_digits_is_a_400_naming_it_and_a_huge_part_number_a_404(tmp_path):
    """A JSON integer of 401 digits made ``math.isfinite`` raise OverflowError: a 500 with a traceback. It is the
    usual 400 ("a finite number > 0"), nothing changed; a part image URL of 5000 digits was a 500 too (starlette's
    int converter refuses that many digits): now a 404 like any part not kept."""
    console, inspector = one_camera_console(tmp_path)
    client = api(console)
    r = client.post("/api/threshold", json={"threshold": 10 ** 400, "who": "ann", "confirm": True})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("threshold: expected a finite number > 0, found an integer too large")
    assert inspector.switch.take() is None
    for path in ("/api/part/" + "9" * 5000 + ".jpg", "/api/part/cam/" + "9" * 5000 + ".jpg", "/api/part/x1.jpg"):
        assert client.get(path).status_code == 404, path


# ---------------------------------------------------------------- 6. exports at once each get a folder
def test_two_exports_in_the_same_second_each_write_a_whole_dataset_of_their_own(tmp_path, monkeypatch):
    """Two operators click "Export reviewed parts" at the same moment: both wrote into datasets/reviewed-TIME (named
    to the second) and one failed. Each now gets a folder of its own (the second ``reviewed-TIME-2``), both
    succeed, and each holds every reviewed part."""
    station, _ = _reviewed_station(tmp_path, {1: "false_reject", 2: "false_reject", 3: "defect", 4: "defect"})
    monkeypatch.setattr(dataset_export, "utc_now", lambda: "2026-11-29T13:05:01.123Z")   # the same second
    console, _ = one_camera_console(station, links=StationLinks(export_reviewed=export_reviewed))
    start, answers, errors = threading.Barrier(2), {}, []

    def export(who: str) -> None:
        start.wait()
        try:
            answers[who] = console.actions.export_reviewed(who)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(who,)) for who in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(answers) == 2, errors
    dests = sorted(Path(a["dest"]) for a in answers.values())
    assert [d.name for d in dests] == ["reviewed-20261129T130501", "reviewed-20261129T130501-2"]
    for dest in dests:
        assert sorted(p.name for p in (dest / "train" / "good").iterdir()) == [f"{RUN}_00000001.png",
                                                                                f"{RUN}_00000002.png"]
        assert sorted(p.name for p in (dest / "test" / "defect").iterdir()) == [f"{RUN}_00000003.png",
                                                                                f"{RUN}_00000004.png"]
        assert not [p for p in dest.rglob("*") if p.is_file() and p.suffix != ".png"]


def test_an_export_that_fails_leaves_no_empty_folder(tmp_path):
    """No reviews: the exporter's error is the answer, and the folder made for it is removed."""
    console, _ = one_camera_console(tmp_path, links=StationLinks(export_reviewed=export_reviewed))
    with pytest.raises(Exception, match="holds no reviews"):
        console.actions.export_reviewed("ann")
    assert list((tmp_path / "datasets").glob("*")) == []

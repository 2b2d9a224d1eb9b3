"""A SIGHUP reload whose audit log becomes unwritable while its bundle loads (a read-only or full output folder): the
swap is still refused (no change without its audit row; the loaded backend closed, the model in force runs on), and
refused as the reload's: "bundle reload refused (SIGHUP): <out>/audit.jsonl: expected a writable log file, found
[Errno 30] Read-only file system ...; <the fix>", naming no bundle field, with ``who`` in the swap status. Before, it
was logged and shown "bundle swap refused: ..." without who, as a console swap whose bundle was refused. Swaps run
on the caller's thread (``InlineThread``), so no test waits on time."""

from __future__ import annotations

import logging
from dataclasses import replace

from inline_swaps import inline_swaps  # noqa: F401 (autouse fixtures)
from test_cellreload_console import cell, cell_file, folders, one_camera, write
from test_console_audit_failure import ReadOnly, audit_path

WRITABLE_LOG = "audit.jsonl: expected a writable log file, found [Errno 30] Read-only file system"


def read_only_once_loaded(console, monkeypatch, link: str):
    """The audit log turns read-only (EROFS) while the console's ``link`` loader (load_model / load_views) runs."""
    read_only = ReadOnly(monkeypatch, audit_path(console), on=False)
    loader = getattr(console.actions.links, link)

    def load_then_read_only(*args, **kwargs):
        read_only.on = True
        return loader(*args, **kwargs)

    console.actions.links = replace(console.actions.links, **{link: load_then_read_only})


def assert_refused_as_the_reloads(console, caplog) -> None:
    status = console.actions.swap_status
    assert status["state"] == "failed" and status.get("who") == "SIGHUP", status
    assert status["error"].startswith(f"bundle reload refused (SIGHUP): {audit_path(console)}"), status["error"]
    assert WRITABLE_LOG in status["error"] and "fix the folder's permissions" in status["error"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [status["error"]]


def test_a_reload_whose_audit_log_turns_read_only_while_loading_is_refused_as_the_reloads(tmp_path, monkeypatch,
                                                                                         caplog):
    fp32, fp16, _ = folders(tmp_path)
    station = write(tmp_path / "station.yaml", {"bundle": str(fp16), "camera": {"source": "0"}})
    console, decider, loads = one_camera(tmp_path, station, fp32)
    read_only_once_loaded(console, monkeypatch, "load_model")
    console.reload_bundle("SIGHUP")
    assert loads == [fp16] and decider.switch.take() is None   # loaded, not switched: the model in force runs on
    assert_refused_as_the_reloads(console, caplog)
    assert not audit_path(console).exists()


def test_a_cell_reload_whose_audit_log_turns_read_only_while_loading_is_refused_as_the_reloads(tmp_path, monkeypatch,
                                                                                              caplog):
    fp32, fp16, _ = folders(tmp_path)
    station = cell_file(tmp_path, fp16)
    console, views, loads = cell(tmp_path, station, {"top": fp32, "left": fp32})
    read_only_once_loaded(console, monkeypatch, "load_views")
    console.reload_bundle("SIGHUP")
    assert loads == [(fp16, ("top", "left"))]
    assert views["top"].switch.take() is None and views["left"].switch.take() is None
    assert_refused_as_the_reloads(console, caplog)


def test_a_console_swap_refused_so_still_reads_as_a_swap(tmp_path, monkeypatch, caplog):
    """The same refusal for a console swap: "bundle swap refused: <the audit log's error>", no ``who`` (as before)."""
    fp32, fp16, _ = folders(tmp_path)
    station = write(tmp_path / "station.yaml", {"bundle": str(fp32), "camera": {"source": "0"}})
    console, decider, loads = one_camera(tmp_path, station, fp32)
    read_only_once_loaded(console, monkeypatch, "load_model")
    console.actions.swap(str(fp16), "ann")
    status = console.actions.swap_status
    assert status["state"] == "failed" and "who" not in status and WRITABLE_LOG in status["error"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"bundle swap refused: {status['error']}"]
    assert loads == [fp16] and decider.switch.take() is None

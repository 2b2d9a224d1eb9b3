"""The machine's limits met by a station or a command (audit: resources, fdflood.py, nproc.sh, ulimit -v).

1. Idle connections to the console were unbounded: uvicorn's limit_concurrency answers 503 only to a request, so 1 100
   connections that sent nothing took the station to its 1 024 open files (NG images then lost as "check the disk"),
   and asyncio logged "socket.accept() out of system resource" with a traceback 32 117 times in 10 s. A connection
   beyond ``MAX_CONNECTIONS`` is now closed as it is accepted, and failed accepts are one line every
   ``ACCEPT_ERROR_EVERY_S`` with their count.
2. Any failure of the console's thread was "port N cannot be bound. Is another station already running ...", even out
   of file descriptors while uvicorn imported its modules: the thread's own exception is named now, and only a bind
   refused for the port asks about another station. A thread the OS refuses ("can't start new thread": ulimit -u,
   TasksMax) is one line naming that limit, exit 2, not a traceback.
3. Out of memory, eval, build and train were allocator tracebacks, exit 1, and tune stopped at the first candidate
   that ran out: now one line naming the memory and the fix, exit 2, and tune marks the candidate and goes on.
"""

from __future__ import annotations

import csv
import errno
import logging
import select
import socket
import time
from types import SimpleNamespace

import httpx
import pytest
import torch
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.cli import common as cli_common
from fair_edge.console import server as console_server
from fair_edge.console.server import ConsoleServer
from fair_edge.console.settings import ConsoleSettings
from fair_edge.errors import ConfigError
from fair_edge.models.patchcore import train as pc_train
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.patchcore.train import FitConfig, PatchcoreFitter
from fair_edge.models.registry import ModelSpec
from fair_edge.preprocess import PreprocessConfig
from fair_edge.station.config import StationConfig
from fair_edge.training import tune as tune_module
from fair_edge.training import tune_candidates
from fair_edge.training.data import load_dataset
from fair_edge.training.tune import tune
from fair_edge.training.tune_candidates import Candidate, TuneSettings
from test_console_units import one_camera_console

# the words of torch's CPU allocator and ONNX Runtime's arena when an allocation fails (the audit's ulimit -v runs)
TORCH_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
             "allocate 33554432 bytes. Error code 12 (Cannot allocate memory)")
ORT_OOM = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Mul node. Name:'/memory/Mul_1' "
           "Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* "
           "onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate memory "
           "for requested buffer of size 2097152")
ULIMIT_V = "the address-space limit (ulimit -v)"
DEADLINE_S = 30.0   # polls of the server's own doing (accepts, closes) end by then; a loaded 2-core machine included


# ---------------------------------------------------------------- 1. connections beyond the cap are closed at accept
def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (readable, and reading gives the end or a reset); False while it is open."""
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def wait_closed(socks: list[socket.socket], want: int, deadline: float) -> list[socket.socket]:
    """The sockets of ``socks`` the server closed, polled until ``want`` of them are or ``deadline`` (monotonic s)."""
    closed: list[socket.socket] = []
    while len(closed) < want and time.monotonic() < deadline:
        waiting = [s for s in socks if s not in closed]
        readable, _, _ = select.select(waiting, [], [], max(0.0, min(1.0, deadline - time.monotonic())))
        closed += [s for s in readable if closed_by_server(s)]
    return closed


def test_idle_connections_beyond_the_cap_are_closed_as_they_are_accepted(tmp_path, monkeypatch):
    """fdflood.py 1024 1100: every idle connection held a descriptor until the station had none. Cap + 16 connections
    that send nothing: the server keeps ``MAX_CONNECTIONS`` open and closes the other 16 at once (long before any
    header deadline), and once the idle ones are gone a browser's request is answered."""
    monkeypatch.setattr(console_server, "HEADER_TIMEOUT_S", 600.0)   # idle ones stay open unless the cap closes them
    console, _ = one_camera_console(tmp_path)
    console.feed.settings = ConsoleSettings(port=0, live_fps=0.5)
    cap, extra = console_server.MAX_CONNECTIONS, 16
    idle: list[socket.socket] = []
    with ConsoleServer(console.feed, console.actions) as server:
        try:
            for _ in range(cap + extra):
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S))
            closed = wait_closed(idle, extra, time.monotonic() + DEADLINE_S)
            open_now = len(server._server.server_state.connections)
            assert len(closed) == extra and open_now == cap, \
                f"expected {extra} closed at accept and {cap} open, found {len(closed)} closed, {open_now} open"
            assert not wait_closed([s for s in idle if s not in closed], 1, time.monotonic() + 0.2)   # the rest held
        finally:
            for sock in idle:
                sock.close()
        deadline, status = time.monotonic() + DEADLINE_S, None
        while status != 200 and time.monotonic() < deadline:   # the server sees the idle ones go on its own clock
            status = httpx.get(server.url + "api/state", timeout=10).status_code
        assert status == 200, f"expected the console to answer once the idle connections closed, found {status}"
        assert len(server._server.server_state.connections) <= 1
        assert server._server.config.backlog == console_server.LISTEN_BACKLOG < cap   # accepted in one turn


def test_failed_accepts_are_one_line_every_interval_with_their_count(caplog):
    """32 117 tracebacks in 10 s: the console's loop logs failed accepts for want of descriptors once, then at most
    once every ``ACCEPT_ERROR_EVERY_S`` seconds (a fake clock here) with how many failed since; other errors go to
    asyncio's own handler."""
    now = [100.0]
    handler = console_server.AcceptErrorLog(every_s=10.0, clock=lambda: now[0])
    others = []
    loop = SimpleNamespace(default_exception_handler=others.append)
    emfile = {"message": "socket.accept() out of system resource", "exception": OSError(errno.EMFILE, "Too many open "
              "files"), "socket": SimpleNamespace(getsockname=lambda: ("127.0.0.1", 8765))}
    with caplog.at_level(logging.ERROR, logger="fair_edge.console.server"):
        for _ in range(2000):
            handler(loop, emfile)
        now[0] += 9.9
        handler(loop, emfile)
        now[0] += 0.2
        handler(loop, emfile)
        handler(loop, {"message": "Task exception was never retrieved", "exception": ValueError("x")})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(r.exc_info is None for r in caplog.records), lines
    assert lines[0].startswith("console: socket.accept() out of system resource: Too many open files (1 time, 1 in "
                               "all); this process has used its open-file limit (ulimit -n "), lines[0]
    assert lines[1].startswith("console: socket.accept() out of system resource: Too many open files (2001 times in "
                               "the last 10 s, 2002 in all)"), lines[1]
    assert "find what holds connections to the console (`ss -tnp 'sport = :8765'`)" in lines[1] and \
        "LimitNOFILE=" in lines[1], lines[1]
    assert [c["message"] for c in others] == ["Task exception was never retrieved"]


def test_the_console_loop_logs_failed_accepts_through_the_throttle(tmp_path):
    console, _ = one_camera_console(tmp_path)
    console.feed.settings = ConsoleSettings(port=0, live_fps=0.5)
    with ConsoleServer(console.feed, console.actions) as server:
        assert isinstance(server._server.loop.get_exception_handler(), console_server.AcceptErrorLog)


# ---------------------------------------------------------------- 2. a console that cannot start names its cause
def test_a_console_out_of_file_descriptors_names_them_not_the_port(tmp_path, monkeypatch, caplog):
    """nofile16: EMFILE while uvicorn imported its websockets module was logged as "port 0 on 127.0.0.1 cannot be
    bound. Is another station already running on this port"; the log now names the error and the open-file limit."""
    import uvicorn.config

    module = "/usr/lib/python3/site-packages/uvicorn/protocols/websockets/__init__.py"

    def no_descriptor(self):
        raise OSError(errno.EMFILE, "Too many open files", module)

    monkeypatch.setattr(uvicorn.config.Config, "load", no_descriptor)
    console, _ = one_camera_console(tmp_path, enabled=True, port=0)
    with caplog.at_level(logging.ERROR):
        console.start()
    text = " ".join(r.getMessage() for r in caplog.records if r.name == "fair_edge.console.station_hook")
    assert console.server is None and console.url == ""
    assert "another station" not in text and "cannot be bound" not in text, text
    assert text.startswith("console not served: the console's server on 127.0.0.1:0 could not start (OSError: "
                           f"[Errno 24] Too many open files: '{module}'): this process has used its open-file limit "
                           "(ulimit -n "), text
    assert "LimitNOFILE=" in text and text.endswith("the station inspects on without it"), text


def test_a_port_in_use_names_the_os_error_and_asks_about_another_station(tmp_path, caplog):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        cfg = StationConfig(output=tmp_path, console=ConsoleSettings(port=port))
        from fair_edge.console.station_hook import StationConsole

        console = StationConsole(cfg, SimpleNamespace(root=tmp_path / "b", threshold=None))
        with pytest.raises(ConfigError, match=rf"found {port} unusable \(\[Errno {errno.EADDRINUSE}\] error while "
                                              "attempting to bind"):
            ConsoleServer(console.feed, console.actions).start()
        with caplog.at_level(logging.ERROR):
            console.start()
    finally:
        holder.close()
    text = " ".join(r.getMessage() for r in caplog.records if r.name == "fair_edge.console.station_hook")
    assert f"port {port} on 127.0.0.1 cannot be bound. Is another station already running" in text, text


def test_no_thread_for_the_console_is_named_and_the_station_goes_on(tmp_path, monkeypatch, caplog):
    console, _ = one_camera_console(tmp_path, enabled=True, port=0)

    def refused():
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(console.server._thread, "start", refused)
    with caplog.at_level(logging.ERROR):
        console.start()
    text = " ".join(r.getMessage() for r in caplog.records if r.name == "fair_edge.console.station_hook")
    assert console.server is None and "another station" not in text, text
    assert "could not start (RuntimeError: can't start new thread): the limit on threads and processes" in text
    assert "TasksMax=" in text, text


def test_a_reload_thread_the_os_refuses_is_raised_and_close_does_not_hide_it(tmp_path, monkeypatch):
    """nproc.sh 8, once the console's thread was refused: the reload thread was refused too, and the station's close
    then joined that thread never started ("cannot join thread before it is started"), a traceback hiding the limit."""
    import threading

    from fair_edge.console import station_hook

    console, _ = one_camera_console(tmp_path)

    class RefusedThread:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def start(self) -> None:
            raise RuntimeError("can't start new thread")

        def join(self, timeout=None) -> None:
            raise RuntimeError("cannot join thread before it is started")

    monkeypatch.setattr(station_hook, "threading", SimpleNamespace(Thread=RefusedThread, Event=threading.Event))
    with pytest.raises(RuntimeError, match="^can't start new thread$"):
        console.watch_reloads()
    console.close()   # nothing to join


def test_a_thread_the_os_refuses_at_station_start_is_one_line_exit_2(tmp_path, monkeypatch):
    """nproc.sh 8: the recorder's thread could not start (ulimit -u 8) and `fair-edge run` ended in a traceback, exit
    1; it is one line naming the limit and the fix, exit 2 (the station could not start)."""
    from fair_edge.station import cell

    def no_thread(cfg, stop, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(cell, "run", no_thread)
    r = CliRunner().invoke(app, ["run", "--source", str(tmp_path), "--console", "off", "--out", str(tmp_path / "o")],
                           env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and not isinstance(r.exception, RuntimeError), (r.exception, r.output)
    assert "Traceback" not in r.output and text.count("error:") == 1, r.output
    assert "error: could not start a thread (can't start new thread; this process runs " in text, text
    assert "the limit on threads and processes was reached" in text and "TasksMax=" in text and "ulimit -u" in text


# ---------------------------------------------------------------- 3. out of memory: one line, or the next candidate
def test_eval_out_of_memory_is_one_line_naming_the_memory_and_the_fix(trained, mvtec_dir, tmp_path, monkeypatch):
    """eval_v1600000: DefaultCPUAllocator's traceback, exit 1."""
    from fair_edge.training import evaluate as evaluate_module

    def no_room(*args, **kwargs):
        raise RuntimeError(TORCH_OOM)

    monkeypatch.setattr(evaluate_module, "_score_frames", no_room)
    monkeypatch.setattr(cli_common, "available_memory", lambda: (200 * 2**20, ULIMIT_V))
    r = CliRunner().invoke(app, ["eval", str(trained[0]), str(mvtec_dir), "--out", str(tmp_path / "e")],
                           env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and not isinstance(r.exception, RuntimeError), (r.exception, r.output)
    assert "Traceback" not in r.output, r.output
    assert "error: eval ran out of memory: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't " \
           f"allocate memory: you tried to allocate 33554432 bytes. Error code 12 (Cannot allocate memory); 200 MiB is " \
           f"available ({ULIMIT_V}). Raise the address-space limit (ulimit -v unlimited" in text, text
    assert "; or pass a smaller --batch (images per forward pass), then run it again." in text, text


def test_build_out_of_memory_in_onnx_runtime_is_one_line(trained, mvtec_dir, tmp_path, monkeypatch):
    """bint8_v1700000: ONNX Runtime's BFCArena error (an ``onnxruntime...Fail``, no RuntimeError) while calibrating
    INT8 was a traceback, exit 1; it is one line and the unfinished bundle is gone."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from fair_edge.export import build as build_module

    def no_room(*args, **kwargs):
        raise Fail(ORT_OOM)

    monkeypatch.setattr(build_module, "_build_into", no_room)
    monkeypatch.setattr(cli_common, "available_memory", lambda: (300 * 2**20, "available RAM"))
    out = tmp_path / "bundle"
    r = CliRunner().invoke(app, ["build", str(trained[0]), "--normal", str(mvtec_dir / "test" / "good"),
                                 "--out", str(out)], env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and not isinstance(r.exception, Fail), (r.exception, r.output)
    assert "Traceback" not in r.output, r.output
    assert "error: build ran out of memory: [ONNXRuntimeError] : 1 : FAIL" in text, text
    assert "Failed to allocate memory for requested buffer of size 2097152; 300 MiB is available (available RAM). " \
           "Free memory (stop other programs) or use a machine with more memory; or build with fewer --calib-images" \
           in text, text
    assert not out.exists()


def test_a_patchcore_backbone_that_does_not_fit_is_the_fit_memory_error(mvtec_dir, tmp_path, monkeypatch):
    """train_v1450000: ``model.build`` ran before the memory check and outside the allocation guard: the backbone's
    allocation failure was a traceback. It is the fit's memory error now, naming the phase."""
    def no_room(self, *args, **kwargs):
        raise RuntimeError(TORCH_OOM)

    monkeypatch.setattr(ModelSpec, "build", no_room)
    monkeypatch.setattr(pc_train, "available_memory", lambda: (64 * 2**30, "available RAM"))
    model = ModelSpec("patchcore", PreprocessConfig(image_size=32), PatchcoreSettings(embed_dim=32))
    with pytest.raises(ConfigError) as err:
        PatchcoreFitter(load_dataset(mvtec_dir), model, FitConfig(batch=4), tmp_path / "a", torch.device("cpu"))
    message = str(err.value)
    assert isinstance(err.value, pc_train.FitOutOfMemory)   # what tune marks "out of memory"
    assert message.startswith("a PatchCore fit of 16 training images at 32 px ran out of memory during building its "
                              "backbone (estimated peak about "), message
    assert "DefaultCPUAllocator: can't allocate memory" in message and "Fit with fewer training images" in message
    r = CliRunner().invoke(app, ["train", str(mvtec_dir), "--model", "patchcore", "--image-size", "32",
                                 "--out", str(tmp_path / "t")], env={"COLUMNS": "400"})
    assert r.exit_code == 2 and "ran out of memory during building its backbone" in " ".join(r.output.split()), \
        r.output


def test_a_fair_training_out_of_memory_is_one_line(mvtec_dir, tmp_path, monkeypatch):
    from fair_edge.models.fair import train as fair_train

    def no_room(*args, **kwargs):
        raise MemoryError("Unable to allocate 24.0 GiB for an array with shape (6800, 3, 256, 256)")

    monkeypatch.setattr(fair_train.Trainer, "run", no_room)
    monkeypatch.setattr(cli_common, "available_memory", lambda: (None, ""))
    r = CliRunner().invoke(app, ["train", str(mvtec_dir), "--model", "fair", "--image-size", "32", "--steps", "2",
                                 "--out", str(tmp_path / "t")], env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and not isinstance(r.exception, MemoryError), (r.exception, r.output)
    assert "error: train ran out of memory: Unable to allocate 24.0 GiB for an array with shape (6800, 3, 256, 256); " \
           "the memory available could not be told. Free memory (stop other programs) or use a machine with more " \
           "memory; or train with a smaller --batch or --image-size, then run it again." in text, text


TUNE_PRE = PreprocessConfig(image_size=32, cutoff=4.0)
TUNE_SETTINGS = TuneSettings(holdout=0.25, budget_s=3600, batch=4)


def tiny_candidates() -> list[Candidate]:
    """Three FAIR candidates of width 8 trained 2 steps on 32 x 32 inputs (a second's work each)."""
    return [Candidate("base", TUNE_PRE, 8, 2, lr=1e-3), Candidate("gauss", PreprocessConfig(32, "gaussian", 4.0), 8, 2),
            Candidate("big", TUNE_PRE, 8, 2, lr=1e-3)]


def test_a_tune_candidate_out_of_memory_is_marked_and_the_next_one_runs(mvtec_dir, tmp_path, monkeypatch):
    """tune_v17: the first candidate's allocation failure stopped the whole tune (a traceback; candidates/ and proxy/
    left). It is marked "out of memory" in tune.csv, the next candidates run, and one of them is chosen; a PatchCore
    fit refused for its memory is marked the same way."""
    real = tune_module.score_candidate

    def short_of_memory(cand, *args):
        if cand.name == "base":
            raise RuntimeError(TORCH_OOM)
        if cand.name == "big":
            raise pc_train.FitOutOfMemory("a PatchCore fit of 16 training images needs about 9 GiB of memory")
        return real(cand, *args)

    monkeypatch.setattr(tune_module, "score_candidate", short_of_memory)
    monkeypatch.setattr(tune_candidates, "default_candidates", lambda base, side: tiny_candidates())
    out = tmp_path / "t"
    r = CliRunner().invoke(app, ["tune", str(mvtec_dir), "--image-size", "32", "--out", str(out), "--device", "cpu"],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 0, (r.exception, r.output)
    rows = {row["name"]: row["status"] for row in csv.DictReader((out / "tune.csv").open())}
    assert rows == {"gauss": "done", "base": "out of memory", "big": "out of memory"}, rows
    assert "tune: candidate base ran out of memory ([enforce fail" in " ".join(r.output.split()), r.output
    assert (out / "tune.json").is_file() and "chosen: gauss" in r.output


def test_a_tune_whose_every_candidate_ran_out_of_memory_says_so(mvtec_dir, tmp_path, monkeypatch):
    def no_room(cand, *args):
        raise MemoryError("Unable to allocate 2.0 GiB")

    monkeypatch.setattr(tune_module, "score_candidate", no_room)
    with pytest.raises(Exception) as err:
        tune(load_dataset(mvtec_dir), tiny_candidates()[:2], tmp_path, TUNE_SETTINGS)
    assert str(err.value).startswith("no candidate finished: 2 ran out of memory (base, gauss); tune with a smaller "
                                     "--image-size"), str(err.value)
    assert "budget" not in str(err.value)
    assert [row["status"] for row in csv.DictReader((tmp_path / "tune.csv").open())] == ["out of memory"] * 2


def test_an_error_that_is_not_a_shortage_is_raised_as_it_is():
    from fair_edge.cli.common import friendly_errors

    @friendly_errors
    def broken():
        raise RuntimeError("a bug, not memory")

    with pytest.raises(RuntimeError, match="^a bug, not memory$"):
        broken()


def test_console_start_error_is_no_config_error():
    """station_hook tells them apart: only a ConfigError (the port) asks about another station."""
    assert not issubclass(console_server.ConsoleStartError, ConfigError)

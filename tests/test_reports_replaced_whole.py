"""An earlier report survives a new one that cannot be finished: `bench --json FILE` and `rules check --json FILE` on
a full disk truncated the earlier FILE and left half a JSON under its name (bench's fix "Pass a file path this
account can write", rules a traceback); eval's earlier report was deleted when Ctrl-C or SIGTERM came while the new one
was moved in, leaving part of the new one, and the message said no new report was written.

The full disk is a write that puts part of its text on the disk, then fails with ENOSPC (``full_disk``); the stop
is a real SIGINT / SIGTERM raised in the main thread at a chosen rename of the move (``stop_at_rename``)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import ConfigError
import fair_edge.training.data as data_module
import fair_edge.training.evaluate as evaluate_module

ROOM_BYTES = 10  # what a write on the full disk still puts there before it fails


class _FullDiskFile:
    """A file opened for writing on a full disk: its first write puts ROOM_BYTES characters there, then raises
    OSError(ENOSPC) naming the file, as a real full disk does once its last block is taken."""

    def __init__(self, fh, name: str):
        self._fh, self._name = fh, name

    def write(self, text):
        self._fh.write(text[:ROOM_BYTES])
        self._fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

    def __getattr__(self, attr):
        return getattr(self._fh, attr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def full_disk(monkeypatch, folder: Path) -> None:
    """From now on, files opened for writing in ``folder`` (by ``open``, ``Path.write_text``, or ``open`` of a file
    descriptor, as ``disk.write_whole`` writes its temporary) are on a full disk (``_FullDiskFile``); opening still
    truncates them, as it does on a real one."""
    real_open = io.open

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        writes = any(flag in mode for flag in "wax+")
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else file
        in_folder = isinstance(name, (str, os.PathLike)) and Path(name).parent.resolve() == folder.resolve()
        return _FullDiskFile(fh, os.fspath(name)) if writes and in_folder else fh

    monkeypatch.setattr(io, "open", open_on_full_disk)
    monkeypatch.setattr(builtins, "open", open_on_full_disk)


def said(output: str) -> str:
    return " ".join(output.split())


# bench --json on a full disk


def test_bench_json_on_a_full_disk_keeps_the_earlier_file_and_names_the_full_disk(tmp_path, monkeypatch):
    """The earlier bench.json was 4096 bytes of cut-off JSON after the failed write, and the fix told was to pass a
    path this account can write."""
    from fair_edge.cli.bench import write_json

    path = tmp_path / "bench.json"
    write_json(path, {"rows": [1]})
    earlier = path.read_bytes()
    full_disk(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as caught:
        write_json(path, {"rows": list(range(100))})
    message = str(caught.value)
    assert path.read_bytes() == earlier and json.loads(earlier) == {"rows": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]   # no temporary file left
    assert f"--json {path}: the results could not be written (No space left on device)" in message
    assert f"the earlier {path} is left as it was" in message
    assert f"the disk of {tmp_path} is full" in message and "Free space on that disk" in message
    assert "this account can write" not in message and message.endswith("then run again.")


def test_bench_json_is_written_whole_through_a_symlink_to_its_target(tmp_path):
    """--json a link: the file it points to gets the results (the link is not replaced by a file)."""
    from fair_edge.cli.bench import write_json

    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to("real.json")
    write_json(tmp_path / "link.json", {"rows": []})
    assert (tmp_path / "link.json").is_symlink() and json.loads((tmp_path / "real.json").read_text()) == {"rows": []}


# rules check --json on a full disk


def test_rules_check_json_on_a_full_disk_is_one_error_line_and_keeps_the_earlier_report(station_bundles, conveyor_dir,
                                                                                         tmp_path, monkeypatch):
    """rules check ended in an OSError traceback, exit 1, the earlier rules.json cut off."""
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"bundle": str(station_bundles[0].root), "decision": {"threshold": 0.9},
                                       "regions": {"mm_per_px": 0.1, "default": {"min_area_mm2": 0.5}}}))
    out = tmp_path / "reports" / "rules.json"
    rules_check = ["rules", "check", str(station), str(conveyor_dir), "--json", str(out)]
    first = CliRunner().invoke(app, rules_check, terminal_width=200)
    assert first.exit_code == 0, first.output
    earlier = out.read_bytes()
    full_disk(monkeypatch, out.parent)
    result = CliRunner().invoke(app, rules_check, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    text = said(result.output)
    assert f"error: --json {out}: the report could not be written (No space left on device)" in text
    assert f"the disk of {out.parent} is full" in text
    assert out.read_bytes() == earlier and json.loads(earlier)["rows"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["rules.json"]


# eval: a stop while the new report replaces the earlier one

EARLIER = {"metrics.json": '{"run": "earlier"}', "scores.csv": "earlier", "regions.csv": "earlier",
           "roc.png": "earlier", "pro.png": "earlier", "heatmaps/normal-highest-00-1.0000-a.png": "earlier",
           "heatmaps/defect-lowest-00-2.0000-b.png": "earlier"}
NEW = {"metrics.json": '{"run": "new"}', "scores.csv": "new", "roc.png": "new",
       "heatmaps/normal-highest-00-3.0000-c.png": "new"}


class Stopped(KeyboardInterrupt):
    """What the test's SIGTERM handler raises (as the CLI's ``Terminated``)."""


def files_in(folder: Path) -> dict[str, str]:
    """{path relative to folder: text} of every file under folder."""
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def lay_out(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def write_new_report(monkeypatch) -> None:
    """write_report writes the files of NEW (not a real evaluation's)."""
    monkeypatch.setattr(evaluate_module, "_write_report_files",
                        lambda scored, result, staging, worst: lay_out(staging, NEW))


def stop_at_rename(monkeypatch, signum: int, at: int) -> None:
    """The report's ``at``-th rename into place (``os.replace`` in evaluate) raises ``signum`` in this thread."""
    count = [0]

    def replace(src, dst):
        os.replace(src, dst)
        count[0] += 1
        if count[0] == at:
            signal.raise_signal(signum)

    proxy = type("os_with_stop", (), {"__getattr__": lambda self, name: getattr(os, name),
                                      "replace": staticmethod(replace)})()
    monkeypatch.setattr(evaluate_module, "os", proxy)


@pytest.fixture()
def stop_handlers():
    """SIGINT: KeyboardInterrupt (Python's default); SIGTERM: ``Stopped``; the handlers before are back after."""
    def on_sigterm(signum, _frame):
        raise Stopped(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)
    yield {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: on_sigterm}
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum,raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Stopped)])
@pytest.mark.parametrize("at", [1, 3])
def test_a_stop_while_the_new_report_is_moved_in_leaves_the_whole_new_report(tmp_path, monkeypatch, stop_handlers,
                                                                            signum, raised, at):
    """Ctrl-C or SIGTERM after the earlier report's files were deleted and some new ones renamed in left only those:
    no roc.png, no heat maps, the earlier report gone. Now the stop waits until the new report is in place, then
    stops (marked ``report_written``), and the handlers are the ones from before."""
    lay_out(tmp_path, EARLIER)
    write_new_report(monkeypatch)
    stop_at_rename(monkeypatch, signum, at)
    with pytest.raises(raised) as caught:
        evaluate_module.write_report(None, {}, tmp_path)
    assert files_in(tmp_path) == NEW
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".eval-partial-")] == []
    assert getattr(caught.value, "report_written", None) == tmp_path
    assert {s: signal.getsignal(s) for s in stop_handlers} == stop_handlers


def test_a_report_written_without_a_stop_keeps_the_signal_handlers(tmp_path, monkeypatch, stop_handlers):
    lay_out(tmp_path, EARLIER)
    write_new_report(monkeypatch)
    evaluate_module.write_report(None, {}, tmp_path)
    assert files_in(tmp_path) == NEW
    assert {s: signal.getsignal(s) for s in stop_handlers} == stop_handlers


def test_a_stop_before_the_move_keeps_the_earlier_report_unmarked(tmp_path, monkeypatch, stop_handlers):
    """Ctrl-C while the new files are written into the staging folder: the earlier report as it was."""
    lay_out(tmp_path, EARLIER)

    def write_then_stop(scored, result, staging, worst):
        lay_out(staging, NEW)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(evaluate_module, "_write_report_files", write_then_stop)
    with pytest.raises(KeyboardInterrupt) as caught:
        evaluate_module.write_report(None, {}, tmp_path)
    assert files_in(tmp_path) == EARLIER and not hasattr(caught.value, "report_written")


def test_eval_stopped_by_sigterm_while_moving_its_report_in_says_the_new_report_is_whole(tmp_path, monkeypatch):
    """The line said "no complete new report was written ... (its unfinished files were removed)"."""
    out = tmp_path / "ev"
    lay_out(out, EARLIER)
    write_new_report(monkeypatch)
    stop_at_rename(monkeypatch, signal.SIGTERM, 2)
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: data_module.DatasetSplit("x", []))
    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda ckpt, split, out_dir, **k: evaluate_module.write_report(None, {}, out_dir))
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "final.pt"), "plate", "--out", str(out)],
                                terminal_width=400)
    assert signal.getsignal(signal.SIGTERM) == before
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert files_in(out) == NEW
    text = said(result.output)
    assert f"eval stopped by SIGTERM once its new report was in place: {out} holds it whole" in text
    assert "no complete new report" not in text and "Traceback" not in text

"""The recorder's two JSONL logs under ``record.dir`` (verdicts.jsonl, gate.jsonl) and what their rows hold.

Files: ``DIR/verdicts.jsonl`` (+ ``.1`` .. ``.keep_files`` after rotation; gate.jsonl alike). Every row carries the
run id and the capture time in UTC (``time_utc``) beside the monotonic one, so runs appended to one folder stay apart
and a row can be traced to a real moment. A frame the capture queue dropped gets a row too (``inspected: false``,
``reason``): every captured part is accounted for in the log. A verdict that came after its part was decided at the
reject gate says what the gate did instead (``verdict_late: true``, ``gate``: e.g. ``rejected_uninspected``), so an
OK verdict of a part rejected fail-safe is never read as a pass.

``DIR/gate.jsonl`` (with reject or fault sinks): what happened to each part at the reject gate, one row per
event (``RejectScheduler(on_part=recorder.record_gate)``): ``event: gate`` with ``gate`` (passed,
rejected_ng, rejected_uninspected, passed_ng: NG with no reject output, passed_uninspected, gap_missed,
position_lost: encoder mode, the gate could not know where the part was, no pulse, ``reason`` says why) and
``verdict`` (ng, ok, none = not in by the due time), and ``event: pulse`` per reject sink with ``pulse`` (delivered, late,
missed).

Written by the recorder's row writer only (``line.recorder``); a row that cannot be written (an ``OSError``: a full
disk, an unplugged drive; or a malformed row, a bug upstream) is counted ``rows_failed`` and ``write_errors`` and
logged once per kind, and the writer goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..records import Verdict, WallClock
from .jsonl import RotatingJsonl, rotated_names

if TYPE_CHECKING:
    from .settings import RecordSettings
    from .sinks.base import Counters


VERDICT_LOG, GATE_LOG = "verdicts.jsonl", "gate.jsonl"   # the logs' names in record.dir


def rotation_names(keep: int) -> tuple[str, ...]:
    """The names a rotation of the two logs moves or deletes in record.dir with ``keep`` (record.keep_files): each
    log's rotated files ``.1`` .. ``.keep`` (``jsonl.rotated_names``); the logs themselves are moved to ``.1`` too (with
    keep 0 deleted)."""
    return tuple(name for log_name in (VERDICT_LOG, GATE_LOG) for name in rotated_names(log_name, keep))


class RowLogs:
    """verdicts.jsonl (opened at once) and gate.jsonl (opened with its first row) in ``folder``, rotated at
    ``settings.max_log_mb``, ``settings.keep_files`` kept.

    run_id, clock: the run id and the UTC time (``records.WallClock``) every row starts with; monotonic: seconds,
    ``time.monotonic``-like (the logs' clock). counters: the recorder's (``write_errors``); warn_once, error_once: its
    once-per-kind log lines.
    """

    def __init__(self, folder: Path, settings: RecordSettings, run_id: str, clock: WallClock,
                 monotonic: Callable[[], float], counters: Counters, warn_once: Callable[..., None],
                 error_once: Callable[..., None]) -> None:
        self.dir, self.settings, self.run_id, self.clock = folder, settings, run_id, clock
        self._monotonic = monotonic
        self._counters, self._warn_once, self._error_once = counters, warn_once, error_once
        self._log = RotatingJsonl(folder / VERDICT_LOG,
                                  int(settings.max_log_mb * 1024 * 1024), settings.keep_files, monotonic)
        self._gate_log: RotatingJsonl | None = None   # opened with the first gate event

    def row(self, verdict: Verdict | dict) -> dict:
        """The verdict log's row for a verdict (or a dropped frame's row): run id and UTC time first."""
        row = verdict.to_json_dict() if isinstance(verdict, Verdict) else verdict
        return {"run_id": self.run_id, "time_utc": self.clock.iso(row["t_capture"]), **row}

    def write_gate(self, row: dict) -> str:
        """Write one gate.jsonl row; returns its outcome: ``gate_logged`` or ``rows_failed`` (counted, logged once)."""
        if self._gate_log is None:
            self._gate_log = RotatingJsonl(self.dir / GATE_LOG, int(self.settings.max_log_mb * 1024 * 1024),
                                           self.settings.keep_files, self._monotonic)
        make = lambda: {"run_id": self.run_id, "time_utc": self.clock.iso(row["t"]), **row}  # noqa: E731
        return self._write_row(self._gate_log, make, "gate", "a JSON-able row with 't' (monotonic s)", row,
                               "gate_logged")

    def write_verdict(self, verdict: Verdict | dict, extra: dict | None = None) -> str:
        """Write one verdicts.jsonl row; returns its outcome: ``logged`` or ``rows_failed`` (counted, logged once)."""
        return self._write_row(self._log, lambda: {**self.row(verdict), **(extra or {})}, "verdict",
                               "a Verdict or a JSON-able row with 't_capture' (monotonic s)", verdict, "logged")

    def _write_row(self, log_file: RotatingJsonl, make: Callable[[], dict], kind: str, needs: str, given: object,
                   done: str) -> str:
        """Write the row ``make()`` builds to ``log_file``; ``done`` when written, else ``rows_failed``: an
        ``OSError`` (full disk) or a malformed row (a bug upstream: ``needs`` names what a row must hold), each
        counted in ``write_errors`` and logged once per kind; the writer thread never stops for either."""
        try:
            log_file.write(make())
        except OSError as exc:
            self._counters.add("write_errors")
            self._warn_once(f"{kind}-oserror", "%s log write failed: %s", kind, exc)
            return "rows_failed"
        except Exception:  # noqa: BLE001 - see the docstring
            self._counters.add("write_errors")
            self._error_once(f"{kind}-bad", "%s row not written: expected %s, found %r", kind, needs, given,
                             exc_info=True)
            return "rows_failed"
        return done

    def room_mb(self) -> float:
        """MB the logs may still grow into before rotation caps them (``RotatingJsonl.room_to_grow``): the verdict
        log's, and the gate log's once it is written; NG images leave it to them (``line.disk_room``)."""
        return sum(f.room_to_grow() for f in self._files()) / (1024 * 1024)

    def files_deleted(self) -> int:
        """Rotated log files deleted to write rows on a full disk (``RotatingJsonl.files_dropped``, both logs)."""
        return sum(f.files_dropped for f in self._files())

    def rotations_put_off(self) -> int:
        """Times a rotation of the logs was refused and put off (``RotatingJsonl.rotations_put_off``, both logs: a
        spell counted once, however often it was retried): while put off, a log grows past max_log_mb, and past what
        its rotated files would hold its rows are not written."""
        return sum(f.rotations_put_off for f in self._files())

    def _files(self) -> list[RotatingJsonl]:
        """The JSONL logs: verdicts.jsonl, and gate.jsonl once its first row came."""
        return [self._log] + ([self._gate_log] if self._gate_log is not None else [])

    def close(self) -> None:
        """Close both logs (the row writer's last act)."""
        self._log.close()
        if self._gate_log is not None:
            self._gate_log.close()

"""The command line's log lines (stderr: systemd's journal or a redirected log keeps them) carry their time in UTC,
ISO 8601 with Z, as every other record of the station, and always show it; without a terminal a record is one line.
Rich's defaults stamped ``[%x %X]`` (local time, no zone, mm/dd/yy), left a time equal to the line above blank
(one hour apart across the autumn DST change), and wrapped at 80 columns, one warning becoming several journal
entries."""

from __future__ import annotations

import io
import logging
import re
import time
from datetime import datetime, timezone

import pytest
from rich.console import Console

from fair_edge.cli.root import main_options

# the two moments an hour apart that Berlin's clocks both show as 02:30 (CEST, then CET): 2026-10-25
FALL_BACK = [datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc), datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)]
LONG = "reject sink modbus 10.0.0.5:502 unit 1 coil 0: link down, reconnecting every 2 s; the fault output is held " \
       "on while it is down (%s)"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def root_logging():
    """Leaves the root logger's handlers and level as they were (main_options replaces them)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def berlin(monkeypatch):
    """The process's local zone is Berlin's (POSIX rule: no tz database needed) for the test."""
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _log(moments, message=LONG, logger="fair_edge.line.scheduler") -> None:
    log = logging.getLogger(logger)
    for when in moments:
        record = log.makeRecord(log.name, logging.WARNING, __file__, 0, message, (when.isoformat(),), None)
        record.created = when.timestamp()
        log.handle(record)


def test_without_a_terminal_each_record_is_one_line_with_its_utc_time(root_logging, berlin, capsys):
    main_options(verbose=False)   # the CLI's logging set-up; capsys's stderr is no terminal
    same = [FALL_BACK[0], FALL_BACK[0]]
    _log(FALL_BACK + same)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines   # Rich without a terminal: 80 columns, each record over 2-3 lines
    assert [line.split(" ", 1)[0] for line in lines] == ["2026-10-25T00:30:00.000Z", "2026-10-25T01:30:00.000Z",
                                                         "2026-10-25T00:30:00.000Z", "2026-10-25T00:30:00.000Z"]
    assert all(re.fullmatch(STAMP + r" WARNING reject sink .* \(2026-10-25T0[01]:30:00\+00:00\)", x) for x in lines)


def test_on_a_terminal_every_line_shows_its_utc_time(berlin):
    from fair_edge.cli.root import log_handler

    terminal = Console(file=io.StringIO(), force_terminal=True, width=200, color_system=None)
    handler = log_handler(terminal)
    logger = logging.getLogger("test_cli_log_lines.terminal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        _log(FALL_BACK + [FALL_BACK[1]], message="link %s", logger=logger.name)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = terminal.file.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["2026-10-25T00:30:00.000Z", "WARNING"],
                                                    ["2026-10-25T01:30:00.000Z", "WARNING"],
                                                    ["2026-10-25T01:30:00.000Z", "WARNING"]]   # repeated: shown
    assert "WARNING:" not in terminal.file.getvalue()   # the message alone beside Rich's columns


def test_utc_log_time_is_iso_8601_utc_with_milliseconds():
    from fair_edge.cli.root import utc_log_time

    assert utc_log_time(datetime(2026, 3, 4, 9, 0, 0, 123456, tzinfo=timezone.utc).timestamp()) \
        == "2026-03-04T09:00:00.123Z"

"""The ``fair-edge`` command line: the root app, its ``--verbose`` option, and one typer sub-app per area
(``fair_edge.cli.train``, ``evaluate``, ``demo``, ``run``, ``bench``, ``build``, ``collect``, ``tune``, ``fuse``, ``service``,
``rules``)
joined with ``add_typer``.

Commands are thin: they parse options, call library code, and show progress and results.
Every error of ours is printed as one red line naming the problem and the fix, exit code 2.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from fair_edge.cli import bench, build, collect, demo, evaluate, fuse, rules, run, service, train, tune
from fair_edge.cli.common import VerboseAnywhere, console
from fair_edge.cli.train import family_titles

app = typer.Typer(
    cls=VerboseAnywhere,
    help=f"fair-edge: train anomaly detectors ({family_titles()}) from normal images, build them for NVIDIA GPUs, "
    "and run an inspection station.\n\nStart with `fair-edge demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: "[default: ...]" must not be read as rich markup and vanish
)


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging (also accepted "
                                              "after the command, e.g. `fair-edge train DATA -v`).")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[log_handler(console)],
                        force=True)


def utc_log_time(created: float) -> str:
    """A log record's time (``created``: seconds since the epoch) as ISO 8601 UTC with milliseconds, e.g.
    ``2026-10-25T00:30:00.000Z``: the form of the station's records (``records.WallClock.iso``), one moment whatever
    the local zone, DST or locale."""
    moment = datetime.fromtimestamp(created, timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class UtcLineFormatter(logging.Formatter):
    """``TIME LEVEL MESSAGE`` with ``utc_log_time``, e.g. ``2026-10-25T00:30:00.000Z WARNING sink ... reconnecting``:
    a record on one line, as a log file or systemd's journal keeps it (a traceback, when the record has one, follows
    on its own lines, as Python writes it)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_log_time(record.created)


class StderrLineHandler(logging.StreamHandler):
    """Writes each record to ``sys.stderr`` as it is when the record comes (like the Rich console, and the standard
    library's own last-resort handler): a test runner's or supervisor's stream swapped in later is followed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:   # StreamHandler.__init__ sets it; sys.stderr is always what is written to
        pass


def _rich_utc_time(local: datetime) -> Text:
    """Rich's log time column (it hands the record's time as a naive local datetime, its DST fold set) in
    ``utc_log_time``'s form."""
    return Text(utc_log_time(local.timestamp()))


def log_handler(stderr_console: Console) -> logging.Handler:
    """The log handler of every command, for ``stderr_console`` (``cli.common.console``). On a terminal: Rich's
    coloured lines, each with its UTC time (``utc_log_time``; never left blank when it repeats the line above). Else
    (systemd's journal, a redirected log file, a test runner): one plain line per record (``UtcLineFormatter``),
    never wrapped at the 80 columns Rich assumes without a terminal, which split one warning into several journal
    entries."""
    if stderr_console.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr_console, show_path=False, omit_repeated_times=False,
                                               log_time_format=_rich_utc_time)
        handler.setFormatter(logging.Formatter("%(message)s"))   # time and level are Rich's columns
        return handler
    handler = StderrLineHandler()
    handler.setFormatter(UtcLineFormatter())
    return handler


# One sub-app per area; `fair-edge --help` lists the commands in this order.
for area in (train, evaluate, demo, run, bench, build, collect, tune, fuse, service, rules):
    app.add_typer(area.app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

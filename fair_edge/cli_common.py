"""Pieces every command shares: the console, error handling, width check, progress bars."""

from __future__ import annotations

import difflib
import functools

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fair_edge.errors import ConfigError, FairEdgeError
from fair_edge.models.fair.unet import WIDTHS

console = Console(stderr=True)
EXIT_USAGE = 2  # our own errors: bad input, missing files, settings that do not fit


def friendly_errors(fn):
    """Turn our own exceptions into one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FairEdgeError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def check_width(width: int) -> int:
    """The CLI trains and builds the paper's widths only (the library accepts any)."""
    if width not in WIDTHS:
        close = difflib.get_close_matches(str(width), [str(w) for w in WIDTHS], n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"--width must be one of {', '.join(map(str, WIDTHS))}; found {width}.{hint}")
    return width


def progress_bar(*extra: str) -> Progress:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{{task.fields[{name}]}}") for name in extra]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console)

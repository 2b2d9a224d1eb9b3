"""Command-line room: the ``fair-edge`` typer app. ``root`` holds the top-level app and its
``--verbose`` option; each area is one typer sub-app in its own module, joined to the root with
``add_typer``; ``common`` has what every command shares (console, error handling, progress bars).
Commands are thin: they parse options and call library code. ``main`` is the console script's entry point
(``fair_edge.cli:main``); ``app`` (``root.app``) is imported on first use, so that importing this package, as the
console script does first, imports nothing heavy: ``main`` imports the command line's libraries (typer, torch, ONNX
Runtime: seconds) itself, where a Ctrl-C during them is one line and exit 130 (``stopped_importing``), not a
traceback."""

import sys

from fair_edge.cli.streams import reopen_closed_streams

reopen_closed_streams()   # before any import can take a closed descriptor 0-2

EXIT_INTERRUPTED = 130   # 128 + SIGINT: stopped by Ctrl-C (``common.EXIT_INTERRUPTED``, not imported yet here)

__all__ = ["app", "main"]


def main() -> None:
    """The ``fair-edge`` command: import the command line (``root``), then run the command ``sys.argv`` names. A
    Ctrl-C while the libraries are still being imported (before any command's own handling is in place) exits
    ``EXIT_INTERRUPTED`` with one line on stderr (``stopped_importing``); once the command runs, nothing changes."""
    try:
        from fair_edge.cli.root import main as run_command
    except KeyboardInterrupt:
        print(f"error: {stopped_importing(sys.argv[1:])}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    run_command()


def stopped_importing(args: list[str]) -> str:
    """The line of a Ctrl-C during the imports, naming the command ``args`` (the command line after the program)
    would have run, its first word that is no option: "stopped (Ctrl-C) before `fair-edge train` started; nothing
    was written" ("before fair-edge started" without one)."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    started = f"`fair-edge {command}`" if command else "fair-edge"
    return f"stopped (Ctrl-C) before {started} started; nothing was written"


def __getattr__(name: str):
    """``app`` (``root.app``), imported on first use (PEP 562): ``from fair_edge.cli import app`` works as before."""
    if name == "app":
        from fair_edge.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

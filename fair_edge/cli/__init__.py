"""Command-line room: the ``fair-edge`` typer app. ``root`` holds the top-level app and its
``--verbose`` option; each area is one typer sub-app in its own module, joined to the root with
``add_typer``; ``common`` has what every command shares (console, error handling, progress bars).
Commands are thin: they parse options and call library code. ``app`` and ``main`` (the console
script entry point ``fair_edge.cli:main``) are re-exported here."""

from fair_edge.cli.streams import reopen_closed_streams

reopen_closed_streams()   # before any import can take a closed descriptor 0-2

from fair_edge.cli.root import app, main  # noqa: E402

__all__ = ["app", "main"]

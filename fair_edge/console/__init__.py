"""The operator console: a browser view of a running station (live view, NG review, threshold tuning,
drift watch, bundle hot swap), served by Starlette + uvicorn in its own thread. It reads what the
station produces through ``StationFeed`` and never blocks the inspection loop."""

from fair_edge.console.settings import ConsoleSettings

__all__ = ["ConsoleSettings"]

"""A station running in a background thread with its console, for console tests (one camera, or a cell of
several: ``station.cell.run`` picks the runner from the settings)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from fair_edge.console.settings import ConsoleSettings
from fair_edge.line.settings import RecordSettings
from fair_edge.station.cell import run as run_any
from fair_edge.station.config import CameraSettings, StationConfig
from fair_edge.training.collect import export_reviewed


def station_config(bundle_root: Path, source: Path, out: Path, *, fps: float = 20.0, threshold: float | None = None,
                   console: ConsoleSettings | None = None, **changes) -> StationConfig:
    """A replayed, looping station on ONNX Runtime with its console on a free port."""
    return StationConfig(
        camera=CameraSettings(source=str(source), fps=fps, loop=True, queue_size=64), bundle=bundle_root,
        backend="onnxruntime", threshold=threshold, output=out,
        record=RecordSettings(dir=out, save_ng_images=True),
        console=console or ConsoleSettings(port=0, keep_frames=64, drift_min_parts=10), **changes)


class RunningStation:
    """``with RunningStation(cfg) as st:`` runs the station until the block ends; ``st.url`` is its console.
    kwargs: more arguments for the runner (a cell's ``sources``)."""

    def __init__(self, cfg: StationConfig, **kwargs) -> None:
        self.cfg, self.stop, self.kwargs = cfg, threading.Event(), kwargs
        self.console = None
        self.summary = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.summary = run_any(self.cfg, self.stop, on_console=self._got_console, export_reviewed=export_reviewed,
                                   **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self._ready.set()

    def _got_console(self, console) -> None:
        self.console = console
        self._ready.set()

    @property
    def url(self) -> str:
        return self.console.url

    def __enter__(self) -> "RunningStation":
        self._thread.start()
        if not self._ready.wait(120) or self.error is not None:
            raise RuntimeError(f"station did not start: {self.error!r}")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._thread.join(60)
        if self.error is not None and exc[0] is None:
            raise self.error

    def verdicts(self) -> list[dict]:
        path = self.cfg.record.dir / "verdicts.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

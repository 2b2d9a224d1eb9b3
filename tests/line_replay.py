"""Replaying a line: parts captured at a fixed pitch, verdicts completing out of order."""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from fair_edge.line.events import RejectEvent
from fair_edge.line.sinks.base import sleep_until
from fair_edge.records import Verdict


@dataclass
class Replay:
    dues: dict[int, float]            # NG seq -> due time (monotonic s)
    submit_s: list[float]             # how long each submit() call took
    results: dict[int, str] = field(default_factory=dict)
    submitted: dict[int, float] = field(default_factory=dict)   # seq -> monotonic s just before its submit()


def replay(scheduler, n: int, pitch_s: float, defective: set[int], delay_s: float,
           latency_s: tuple[float, float] = (0.005, 0.060), seed: int = 0,
           t0: float | None = None) -> Replay:
    """Capture part i at t0 + i * pitch_s; its verdict completes after a random latency (so
    verdicts reach ``scheduler.submit`` out of order), in this thread, at real times."""
    rng = random.Random(seed)
    t0 = time.monotonic() + 0.05 if t0 is None else t0
    plan = []
    for i in range(n):
        t_cap = t0 + i * pitch_s
        plan.append((t_cap + rng.uniform(*latency_s), i, t_cap))
    plan.sort()
    out = Replay({}, [])
    for t_verdict, seq, t_cap in plan:
        sleep_until(t_verdict)
        ng = seq in defective
        v = Verdict(seq, t_cap, 0.9 if ng else 0.1, 0.5, ng, time.monotonic(), "replay")
        t = time.perf_counter()
        out.submitted[seq] = time.monotonic()
        out.results[seq] = scheduler.submit(v)
        out.submit_s.append(time.perf_counter() - t)
        if ng:
            out.dues[seq] = t_cap + delay_s
    return out


def match_pulses(rises: list[float], dues: dict[int, float], window_s: float) -> dict[int, list[float]]:
    """seq -> the rising edges within +-window_s of its due time."""
    return {seq: [r for r in rises if abs(r - due) <= window_s] for seq, due in dues.items()}


def timing_errors_ms(rises: list[float], dues: dict[int, float], window_s: float) -> list[float]:
    matched = match_pulses(rises, dues, window_s)
    return [1000.0 * (m[0] - dues[s]) for s, m in matched.items() if len(m) == 1]


class RecordingSink:
    """An honest in-memory sink: records (monotonic time, event) for pulses and fault levels."""

    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.pulses: list[tuple[float, RejectEvent]] = []
        self.handed: list[float] = []   # monotonic s of each pulse() call, in the order of ``pulses``
        self.faults: list[tuple[bool, str]] = []
        self._lock = threading.Lock()
        self.closed = 0

    def pulse(self, event: RejectEvent) -> None:
        """Records the edge time a real sink would write: t_edge, or now if handed in late."""
        now = time.monotonic()
        with self._lock:
            self.handed.append(now)
            self.pulses.append((max(now, event.t_edge), event))

    def set_fault(self, active: bool, reason: str) -> None:
        with self._lock:
            self.faults.append((active, reason))

    def stats(self) -> dict[str, int]:
        return {"pulses": len(self.pulses)}

    def close(self) -> None:
        self.closed += 1


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def capture_logger(name: str) -> ListHandler:
    handler = ListHandler()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler


def report_timing(name: str, errors: list[float]) -> None:
    """Keep the measured numbers (for BENCHMARKS / the PR) when FAIR_EDGE_TIMING_OUT is set."""
    path = os.environ.get("FAIR_EDGE_TIMING_OUT")
    if path and errors:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, "n": len(errors),
                                "mean_ms": statistics.fmean(errors),
                                "max_abs_ms": max(abs(e) for e in errors),
                                "min_ms": min(errors), "max_ms": max(errors)}) + "\n")


class JitterProbe:
    """The machine's scheduling jitter during a run, measured: a thread that sleeps until a target every
    ``period_s`` (``sleep_until``, as the reject sinks do) and records how late it woke, in ms. Timing
    bounds of end-to-end tests are derived from it instead of hoping the machine is idle."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self.late_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jitter-probe", daemon=True)

    def __enter__(self) -> "JitterProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        target = time.monotonic() + self.period_s
        while not self._stop.is_set():
            sleep_until(target)
            self.late_ms.append(1000.0 * (time.monotonic() - target))
            target = max(target + self.period_s, time.monotonic())

    @property
    def max_ms(self) -> float:
        return max(self.late_ms, default=float("inf"))   # no sample: as if the machine were stalled

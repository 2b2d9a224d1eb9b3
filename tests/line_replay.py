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
        self.faults: list[tuple[bool, str]] = []
        self._lock = threading.Lock()
        self.closed = 0

    def pulse(self, event: RejectEvent) -> None:
        """Records the edge time a real sink would write: t_edge, or now if handed in late."""
        with self._lock:
            self.pulses.append((max(time.monotonic(), event.t_edge), event))

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

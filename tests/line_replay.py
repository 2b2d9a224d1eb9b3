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
from fair_edge.line.scheduler import PULSE_RESULTS
from fair_edge.line.sinks.base import sleep_until
from fair_edge.records import Verdict


@dataclass
class Replay:
    dues: dict[int, float]            # NG seq -> due time (monotonic s)
    submit_s: list[float]             # how long each submit() call took
    results: dict[int, str] = field(default_factory=dict)
    submitted: dict[int, float] = field(default_factory=dict)   # seq -> monotonic s just before its submit()
    returned: dict[int, float] = field(default_factory=dict)    # seq -> monotonic s just after its submit()

    def in_time(self, seq: int, lead_s: float) -> bool | None:
        """Was ``seq``'s verdict handed over before its gate's cut-off (due - ``lead_s``), by this run's own
        clock? True: submit() returned before it; False: submit() began after it; None: it straddled the cut-off."""
        cut = self.dues[seq] - lead_s
        return True if self.returned[seq] < cut else False if self.submitted[seq] > cut else None


def replay(scheduler, n: int, pitch_s: float, defective: set[int], delay_s: float,
           latency_s: tuple[float, float] = (0.005, 0.060), seed: int = 0,
           t0: float | None = None, first: int = 0) -> Replay:
    """Capture part i (seqs ``first`` .. ``first + n - 1``) at t0 + (i - first) * pitch_s; its verdict completes
    after a random latency (so verdicts reach ``scheduler.submit`` out of order), in this thread, at real times."""
    rng = random.Random(seed)
    t0 = time.monotonic() + 0.05 if t0 is None else t0
    plan = []
    for i in range(first, first + n):
        t_cap = t0 + (i - first) * pitch_s
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
        out.returned[seq] = time.monotonic()
        if ng:
            out.dues[seq] = t_cap + delay_s
    return out


def match_pulses(rises: list[float], dues: dict[int, float], window_s: float) -> dict[int, list[float]]:
    """seq -> the rising edges within +-window_s of its due time."""
    return {seq: [r for r in rises if abs(r - due) <= window_s] for seq, due in dues.items()}


def timing_errors_ms(rises: list[float], dues: dict[int, float], window_s: float) -> list[float]:
    matched = match_pulses(rises, dues, window_s)
    return [1000.0 * (m[0] - dues[s]) for s, m in matched.items() if len(m) == 1]


EPS_S = 1e-6   # float rounding between the test's due arithmetic and the scheduler's (t_capture + delay_ms / 1000)


class PulseAccount:
    """What the sinks said about each pulse, in the order they said it: the gate log's pulse rows
    (``RejectScheduler(on_part=account.on_part)``) or, for a sink opened by the test, its reports
    (``open_sink(url, reporter=account.report)``). ``results(prefix)``: seq -> [result, ...] for the sinks whose
    name starts with ``prefix`` (result: ``delivered`` | ``late`` | ``missed`` | ``unconfirmed``, see
    ``PULSE_RESULTS``)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str]] = []   # (seq, sink, result), in report order
        self.gate: dict[int, str] = {}               # seq -> how the gate decided it
        self._cond = threading.Condition()

    def on_part(self, row: dict) -> None:
        with self._cond:
            if row["event"] == "pulse":
                self.rows.append((row["seq"], row["sink"], row["pulse"]))
            elif row["event"] == "gate":
                self.gate[row["seq"]] = row["gate"]
            self._cond.notify_all()

    def report(self, report) -> None:
        if report.kind in PULSE_RESULTS and report.seq is not None:
            with self._cond:
                self.rows.append((report.seq, report.sink, PULSE_RESULTS[report.kind]))
                self._cond.notify_all()

    def results(self, prefix: str) -> dict[int, list[str]]:
        with self._cond:
            out: dict[int, list[str]] = {}
            for seq, sink, result in self.rows:
                if sink.startswith(prefix):
                    out.setdefault(seq, []).append(result)
            return out

    def order(self, prefix: str) -> list[int]:
        """The seqs in the order their pulses were reported (a sink writes its pulses one after another)."""
        with self._cond:
            return [seq for seq, sink, _ in self.rows if sink.startswith(prefix)]

    def wait_reported(self, seqs, prefix: str, timeout_s: float = 10.0) -> bool:
        """Wait until every seq in ``seqs`` has a report from the ``prefix`` sink (a wait, not a bound: True
        as soon as they are in)."""
        with self._cond:
            return self._cond.wait_for(lambda: set(seqs) <= set(self.results(prefix)), timeout_s)


def check_submits(run: Replay, lead_s: float) -> list[int]:
    """Each NG verdict's submit() result against the run's own clock: ``scheduled`` when it returned before its
    gate's cut-off (due - lead_s), ``late`` when it began after it (either when it straddled it). Good parts:
    ``ok``. Returns the NG seqs scheduled, sorted: the parts that must get exactly one pulse."""
    for seq, result in run.results.items():
        if seq not in run.dues:
            assert result == "ok", (seq, result)
            continue
        in_time = run.in_time(seq, lead_s)
        want = {True: ("scheduled",), False: ("late",), None: ("scheduled", "late")}[in_time]
        assert result in want, (seq, result, 1000 * (run.submitted[seq] - run.dues[seq]))
    return sorted(seq for seq in run.dues if run.results[seq] == "scheduled")


def check_plc_pulses(rises: list[float], falls: list[float], results: dict[int, list[str]],
                     dues: dict[int, float], late_ms: float, pulse_ms: float, io_errors: int) -> dict[str, set[int]]:
    """The sink's account of each pulse against the PLC's own record (server-side monotonic times of the writes).

    - one report per pulse (a second would be a second pulse);
    - ``delivered`` (the write's reply came by the deadline): a rising edge in [due, due + late_ms] on the PLC's
      clock, exact: the sink writes at or after t_edge >= due and the server recorded it before replying; its
      falling edge >= pulse_ms later, before any other rise;
    - rises: at least one per pulse written (delivered or late), at most one more per write that failed on the
      link (``io_errors``: a request without a reply may have landed); a missed pulse was never written.
    Returns result -> seqs."""
    kinds: dict[str, set[int]] = {}
    for seq, got in results.items():
        assert len(got) == 1, (seq, got)
        kinds.setdefault(got[0], set()).add(seq)
    for seq in kinds.get("delivered", ()):
        due = dues[seq]
        mine = [r for r in rises if due - EPS_S <= r <= due + late_ms / 1000.0 + EPS_S]
        assert mine, (seq, [round(1000 * (r - due), 2) for r in rises if abs(r - due) < 0.1])
        rise = mine[-1]
        later = [r for r in rises if r > rise]
        fall = min((f for f in falls if f > rise), default=None)
        assert fall is not None and (not later or fall < later[0]), (seq, rise, fall)
        assert fall - rise >= pulse_ms / 1000.0 - EPS_S, (seq, 1000 * (fall - rise))
    written = len(kinds.get("delivered", ())) + len(kinds.get("late", ()))
    assert written <= len(rises) <= written + io_errors, (len(rises), {k: sorted(v) for k, v in kinds.items()})
    return kinds


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

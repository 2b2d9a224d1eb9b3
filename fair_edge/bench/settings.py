"""Settings of ``fair-edge bench`` and the parsers of its command-line values (see ``fair_edge.bench.run``)."""

from __future__ import annotations

from dataclasses import dataclass

from fair_edge.runtime.selection import BACKEND_NAMES
from fair_edge.station.inspector import MAX_BATCH
from fair_edge.errors import ConfigError, did_you_mean
from fair_edge.fields import DAY_MS

MODES = ("loop", "compute", "both", "stages", "cameras")
FEEDS = ("closed", "free")
BASELINES = ("torch-eager-cpu-pre", "none")
DAY_S = DAY_MS / 1000.0  # the longest --seconds / --warmup: a longer one is a typo (inf ran forever)
MAX_COUNT = 1_000_000   # the largest --queue
MAX_THREADS = 1024      # the most torch threads (--threads); past 2**63 torch raised an OverflowError


def _choose(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}; found {value!r}."
                          f"{did_you_mean(value, allowed, sentence=True)}")
    return value


# ----------------------------------------------------------------------------- settings
def parse_frames(text: str) -> tuple[int, int]:
    """'1920x1080' (width x height, pixels) -> (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or min(int(p) for p in parts) < 2:
        raise ConfigError(f"--frames must be WIDTHxHEIGHT in pixels, each >= 2, e.g. 1920x1080; found {text!r}.")
    return int(parts[1]), int(parts[0])


def _parse_counts(text: str, flag: str, example: str) -> tuple[int, ...]:
    try:
        counts = tuple(dict.fromkeys(int(p) for p in text.split(",") if p.strip()))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ConfigError(f"{flag} must be a comma-separated list of integers >= 1, e.g. {example}; found {text!r}.")
    return counts


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,4,8,16' -> (1, 4, 8, 16): distinct batch sizes >= 1, in the given order."""
    return _parse_counts(text, "--batches", "1,4,8,16")


def parse_cameras(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4): distinct camera counts >= 1, in the given order."""
    return _parse_counts(text, "--cameras", "1,2,4")


def parse_feed(text: str) -> str | float:
    """'closed' | 'free' | a line rate in frames/s (> 0)."""
    if text in FEEDS:
        return text
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise ConfigError(f"--feed must be closed, free, or a line rate in frames/s > 0 (e.g. 500); found {text!r}.")
    return rate


@dataclass(frozen=True)
class BenchSettings:
    """backend: 'auto' or a name in ``selection.BACKENDS``. baseline: one of ``BASELINES``.
    batches: max_batch values to time. frame_hw: (height, width) of the synthetic frames, pixels.
    seconds: timed duration per (backend, batch, mode). mode: one of ``MODES``. feed: loop feeding
    (``fair_edge.bench.run`` docstring). max_wait_ms: LoopSettings.max_wait_ms. queue_size: capture queue, 0 = 2 x batch.
    distinct_frames: different frames cycled through. warmup_s: untimed running before each timing.
    torch_threads: torch.set_num_threads for this process, 0 = leave PyTorch's default.
    compile: torch.compile the PyTorch backend (not the baseline); compile seconds are reported.
    cameras: camera counts of ``mode="cameras"`` (``fair_edge.bench.cameras``); rounds: how many times each
    (count, arrangement) is timed there, interleaved; its figures pool all rounds."""

    backend: str = "auto"
    baseline: str = "torch-eager-cpu-pre"
    batches: tuple[int, ...] = (1, 4, 8, 16)
    frame_hw: tuple[int, int] = (1080, 1920)
    seconds: float = 10.0
    mode: str = "loop"
    feed: str | float = "closed"
    max_wait_ms: float = 2.0
    queue_size: int = 0
    distinct_frames: int = 8
    warmup_s: float = 1.0
    torch_threads: int = 0
    compile: bool = False
    cameras: tuple[int, ...] = (1, 2, 4)
    rounds: int = 3

    def __post_init__(self) -> None:
        _choose(self.backend, BACKEND_NAMES, "--backend")
        _choose(self.baseline, BASELINES, "--baseline")
        _choose(self.mode, MODES, "--mode")
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"--batches must hold integers >= 1; found {self.batches}.")
        if "loop" in self.modes and max(self.batches) > MAX_BATCH:   # the station's loop takes at most that many
            raise ConfigError(f"--batches: the loop mode runs the station's loop, which takes at most {MAX_BATCH} "
                              f"frames per call (batching.max_batch); found {max(self.batches)}. Use --mode compute "
                              f"to time larger batches, or sizes up to {MAX_BATCH}.")
        if not self.cameras or min(self.cameras) < 1 or self.rounds < 1:
            raise ConfigError(f"--cameras must hold integers >= 1 and --rounds be >= 1; found {self.cameras}, "
                              f"{self.rounds}.")
        if not 0 < self.seconds <= DAY_S:
            raise ConfigError(f"--seconds must be > 0 and at most a day ({DAY_S:g}); found {self.seconds}.")
        if isinstance(self.feed, str):
            _choose(self.feed, FEEDS, "--feed")
        elif not self.feed > 0:
            raise ConfigError(f"--feed line rate must be > 0 frames/s; found {self.feed}.")
        if (not 0 <= self.queue_size <= MAX_COUNT or self.distinct_frames < 1 or not 0 <= self.warmup_s <= DAY_S
                or not 0 <= self.torch_threads <= MAX_THREADS):
            raise ConfigError(f"--queue must be in [0, {MAX_COUNT}], --warmup in [0, {DAY_S:g}] s, --threads in "
                              f"[0, {MAX_THREADS}] and distinct_frames >= 1; found {self.queue_size}, {self.warmup_s}, "
                              f"{self.torch_threads}, {self.distinct_frames}.")

    @property
    def modes(self) -> tuple[str, ...]:
        return ("loop", "compute") if self.mode == "both" else (self.mode,)  # "stages": fair_edge.bench.stages

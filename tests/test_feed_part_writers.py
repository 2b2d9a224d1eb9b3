"""The console feed's part rows come from two threads: the inspection loop, and a capture thread where a dropped
frame completes a part (``parts.on_drop`` -> ``CellLine.on_part`` -> ``StationFeed.observe_part``). Every row is
counted once by the part rate, in time order, and indexed, whichever thread brings it (review of this session's
rate counter: a row's time was read, then another thread's row counted, then the first one's, out of order)."""
from __future__ import annotations

import itertools
import sys
import threading

from fair_edge.console.feed import StationFeed
from fair_edge.console.settings import ConsoleSettings


def test_part_rows_from_two_threads_are_each_counted_once(tmp_path):
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as the interpreter can, to interleave the writers
    try:
        ticks = itertools.count()
        feed = StationFeed(ConsoleSettings(), tmp_path, clock=lambda: next(ticks) * 1e-4)   # 10 000 rows/s
        per_thread = 20_000

        finished: list[str] = []   # the writers in the order they finished

        def write(camera: str) -> None:
            for seq in range(per_thread):
                feed.observe_part({"part": seq, "ng": False, "views": {camera: {"seq": seq}}})
            finished.append(camera)

        threads = [threading.Thread(target=write, args=(name,)) for name in ("loop", "capture")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert feed.part_rate.total == 2 * per_thread
    times = [t for t, _ in feed.part_rate._readings]   # the rate's readings, in the order they were kept
    assert times == sorted(times), "a reading kept out of time order: the rate's bisect would misread the window"
    # the index keeps the views of the last RECENT_VERDICTS rows: the last row written, the last writer's, is in it
    # (the other writer's last row may be more than that many rows back when it finished first on a loaded machine)
    assert feed.part_of.get((finished[-1], per_thread - 1)) == per_thread - 1

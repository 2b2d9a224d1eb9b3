"""Two operators label one NG view at once (audit "twooperators"): each POST runs in a thread of its own. The
newest row of ``reviews.jsonl`` is what an export takes (``collect.latest_reviews``); the console shows
``StationActions.labels``. Before, a review's row was appended under the journal's lock and its label set after it,
with no lock: reviews appending in one order could set their labels in the other, so the gallery showed "defect"
while the export filed the part under train/good as a false reject."""
from __future__ import annotations

import json
import threading

import numpy as np

from fair_edge.console.actions import StationLinks
from fair_edge.records import Frame, Verdict

from test_console_units import cell_console


def test_two_reviews_of_one_view_at_once_leave_the_label_shown_and_the_newest_row_the_same(tmp_path):
    console, _ = cell_console(tmp_path, StationLinks(), keep_frames=4)
    frame = Frame(0, 0.0, np.zeros((4, 4, 3), np.uint8))
    row = {"part": 0, "ng": True, "inspected": True, "camera": "b", "ng_views": ["b"], "missing": [], "rule": "any",
           "views": {"a": {"seq": 0, "score": 0.2, "ng": False}, "b": {"seq": 0, "score": 9.0, "ng": True}}}
    console.observe(frame, Verdict(0, 0.0, 0.2, 3.0, False, 0.01, camera="a"), None)
    console.observe_part(None, row)
    console.observe(frame, Verdict(0, 0.0, 9.0, 7.0, True, 0.01, camera="b"), None)
    actions = console.actions
    journal_append = actions.reviews.append
    second_done = threading.Event()

    def append(entry):
        """The defect review is pre-empted right after its row is written, until the other review is done (or,
        where the other review must wait for it, 0.5 s)."""
        written = journal_append(entry)
        if entry["label"] == "defect":
            second_done.wait(0.5)
        return written

    actions.reviews.append = append
    first = threading.Thread(target=actions.review, args=(0, "defect", "ann", "b"))
    first.start()
    while not actions.reviews.path.exists():   # the defect row is written: the other operator clicks now
        first.join(0.001)
    actions.review(0, "false_reject", "bob", camera="b")
    second_done.set()
    first.join(5)
    rows = [json.loads(line) for line in actions.reviews.path.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["defect", "false_reject"]
    assert actions.labels[("b", 0)] == rows[-1]["label"], "the console shows another label than the export takes"

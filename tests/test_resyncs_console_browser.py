"""The live page's part counters line shows ``parts.resyncs`` (the times a camera of a cell fell out of step and was
matched again): before, the console's state held it and the page did not show it. A stand-in station (no bundle)
whose part counters are those of a cell whose right camera slipped twice (``test_resyncs_shown.slipped_parts``), in
a real headless browser (``test_console_browser``'s)."""

from __future__ import annotations

from test_console_browser import browser, text, wait  # noqa: F401  (browser: the headless chromium fixture)
from test_resyncs_shown import CAMERA, slipped_parts


class SlippedCell:
    """A cell's counters (``console.feed.CellCounters``): two idle cameras and ``parts``."""

    def __init__(self, parts: dict) -> None:
        self._parts = parts

    def cameras(self) -> dict[str, dict]:
        return {"left": dict(CAMERA), "right": dict(CAMERA)}

    def parts(self) -> dict:
        return dict(self._parts)


def test_the_console_part_counters_show_the_resyncs_of_a_slipped_camera(browser, tmp_path):  # noqa: F811
    from test_console_units import one_camera_console

    from fair_edge.console.server import ConsoleServer

    parts = {**slipped_parts({"right": {10, 40}}), "duplicate_views": 3}   # and one camera's frames taken twice
    assert parts["resyncs"] == 2
    console, inspector = one_camera_console(tmp_path)
    inspector.views = {}   # cell_state asks the inspector for each camera's model: none here
    console.attach_cell(SlippedCell(parts), {"left": tmp_path, "right": tmp_path})
    console.feed.settings = console.feed.settings.__class__(port=0)
    with ConsoleServer(console.feed, console.actions) as server:
        browser.get(server.url)
        wait(browser, lambda d: "parts: 60" in text(d, "part-counters"), what="the part counters")
        assert text(browser, "part-counters").endswith("· resyncs (camera out of step) 2 · duplicate views skipped 3"), \
            text(browser, "part-counters")

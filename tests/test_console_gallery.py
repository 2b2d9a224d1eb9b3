"""The console's NG gallery at scale: a view's verdict is looked up (not searched for), so the gallery's work grows
linearly with the parts it lists, and the server builds it off its event loop (the live page never waits on it)."""

import asyncio
import threading
from collections import deque

import numpy as np

from fair_edge.console.actions import StationActions
from fair_edge.console.feed import StationFeed
from fair_edge.console.settings import ConsoleSettings
from fair_edge.records import Frame, Verdict


class Cameras:
    """``CellCounters`` of cameras viewing one part (what ``station.cell.CellCounters`` gives)."""

    def __init__(self, names) -> None:
        self.names = list(names)

    def cameras(self) -> dict:
        return {c: {"frames_in": 0, "inspected": 0, "ng": 0, "dropped": 0, "lost": 0, "state": "running",
                    "end_reason": ""} for c in self.names}

    def parts(self) -> dict:
        return {"parts": 1, "ng": 1, "ok": 0, "not_inspected": 0, "late_views": 0}


class CountingDeque(deque):
    """A deque that counts the items read by iterating it (``list(d)``, ``for v in d``): the verdicts scanned."""

    scanned = 0

    def __iter__(self):
        for item in super().__iter__():
            self.scanned += 1
            yield item


def ng_parts(tmp_path, n_parts: int, cameras=("c0", "c1", "c2", "c3"), counting: bool = False):
    """A feed and actions of a station of ``cameras`` viewing one part, fed ``n_parts`` NG parts (NG by the first
    camera) as ``station.cell`` feeds them; the feed remembers them all (recent_parts = n_parts)."""
    feed = StationFeed(ConsoleSettings(port=0, recent_parts=n_parts, keep_frames=4), tmp_path)
    if counting:
        feed.recent, feed.ng = CountingDeque(maxlen=n_parts), CountingDeque(maxlen=n_parts)
    feed.attach_cell(Cameras(cameras), {c: tmp_path / f"bundle_{c}" for c in cameras})
    actions = StationActions(feed, None)
    image = np.zeros((4, 4, 3), np.uint8)
    for part in range(n_parts):
        views = {}
        for c in cameras:
            v = Verdict(part, 0.0, 0.9 if c == cameras[0] else 0.1, 0.5, c == cameras[0], 0.01, camera=c)
            feed.observe(Frame(part, 0.0, image, camera=c), v, None)
            actions.observe(v)
            views[c] = {"seq": part, "score": v.score, "ng": v.ng}
        row = {"part": part, "ng": True, "inspected": True, "camera": cameras[0], "score": 0.9,
               "ng_views": [cameras[0]], "views": views}
        feed.observe_part(row)
        actions.observe_part(row)
    return feed, actions


def test_the_gallerys_work_grows_linearly_with_the_ng_parts_it_lists(tmp_path):
    """4 cameras, 2,000 then 4,000 NG parts listed: the verdicts the gallery scans (iterating the feed's recent and
    NG lists) at most double with twice the parts; every view still shows its verdict. Searching both lists for
    each view (as it did) scanned (views x remembered verdicts): four times as many for twice the parts, 22 s for
    8,000 parts of 8 cameras."""
    from fair_edge.console.views import gallery

    scanned, listed = {}, {}
    for n in (2000, 4000):
        feed, actions = ng_parts(tmp_path / str(n), n, counting=True)
        feed.recent.scanned = feed.ng.scanned = 0   # what filling the feed read is not the gallery's
        parts = gallery(feed, actions)["parts"]
        scanned[n], listed[n] = feed.recent.scanned + feed.ng.scanned, len(parts)
        assert [p["part"] for p in parts] == list(range(n - 1, -1, -1))
        for p in (parts[0], parts[-1]):
            assert [(v["camera"], v["seq"], v["ng"], v["score"], v["threshold"]) for v in p["views"]] == \
                [("c0", p["part"], True, 0.9, 0.5)] + [(c, p["part"], False, 0.1, 0.5) for c in ("c1", "c2", "c3")]
    assert listed == {2000: 2000, 4000: 4000}
    assert scanned[4000] <= 2 * scanned[2000] + 8, f"verdicts scanned: {scanned}"


def test_a_views_verdict_is_the_newest_recent_one_else_the_newest_ng_one_while_remembered(tmp_path):
    """The feed's lookup index follows its bounded lists exactly: verdicts of views seen twice (a camera that
    numbers its frames from 0 again), evicted from the recent list while still NG-listed, and forgotten once out of
    both, compared after every verdict with a search of the lists."""
    rng = np.random.default_rng(3)
    feed = StationFeed(ConsoleSettings(port=0, recent_parts=10), tmp_path)
    feed.recent = deque(maxlen=10)   # every view's verdict: 10 kept here (feed.RECENT_VERDICTS in a station)

    def searched(seq: int, camera: str):
        for kept in (feed.recent, feed.ng):
            for v in reversed(list(kept)):
                if (v.camera, v.seq) == (camera, seq):
                    return v
        return None

    for i in range(400):
        camera, seq = str(rng.choice(["", "a", "b"])), int(rng.integers(0, 12))
        ng = bool(rng.random() < 0.3)
        feed.observe(Frame(seq, 0.0, None, camera=camera), Verdict(seq, 0.0, float(i), 0.5, ng, 0.01,
                                                                    camera=camera), None)
        for c in ("", "a", "b"):
            for s in range(12):
                assert feed.verdict(s, c) is searched(s, c), (i, c, s)
    assert len(feed._recent_index) <= 10 and len(feed._ng_index) <= 10


def test_the_server_builds_the_gallery_off_its_event_loop(tmp_path, monkeypatch):
    """/api/gallery's build runs in a worker thread (no event loop running there): the live page's /api/state and
    events are served meanwhile. Built on the loop, 4,000 NG parts of 8 cameras held /api/state for 4 s."""
    import warnings

    from fair_edge.console import views
    from fair_edge.console.app import build_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    feed, actions = ng_parts(tmp_path, 3, cameras=("a", "b"))
    built, real = [], views.gallery

    def gallery(feed, actions):
        try:
            asyncio.get_running_loop()
            built.append("on the event loop")
        except RuntimeError:
            built.append(threading.current_thread().name)
        return real(feed, actions)

    monkeypatch.setattr(views, "gallery", gallery)
    client = TestClient(build_app(feed, actions, None, threading.Event()), base_url="http://127.0.0.1:8765")
    with client:
        response = client.get("/api/gallery")
    assert response.status_code == 200 and [p["part"] for p in response.json()["parts"]] == [2, 1, 0]
    assert len(built) == 1 and built[0] != "on the event loop", built

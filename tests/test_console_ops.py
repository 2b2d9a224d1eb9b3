"""The console across a station restart and under a running line, without a browser: a review names the run its
page was built from (another run's is refused, 409); a part's image URL names its run and model; the live image is
the part asked for; each snapshot names its server process; the gallery says how many NG parts it no longer lists.
The pages' side of these is in test_console_ops_browser.py."""

import json
from urllib.parse import parse_qs, urlsplit

import numpy as np

from fair_edge.records import Frame
from test_console_units import api, one_camera_console, verdict


def frame(seq: int, value: int) -> Frame:
    """A flat (16, 16, 3) frame of brightness ``value``: each part's picture is told apart by its mean."""
    return Frame(seq, 0.0, np.full((16, 16, 3), value, np.uint8))


def test_a_review_from_a_page_of_another_run_is_refused_and_nothing_recorded(tmp_path):
    """A gallery left open across a restart posts its run: seq 1 now names another part, so the review is refused
    (409, saying the station restarted and to reload) and nothing is written (was: recorded under the new run's
    part 1); this run's review, and an API client's naming no run, are recorded."""
    console, _ = one_camera_console(tmp_path, keep_frames=8)
    console.feed.run_id = "20260101T000000Z-bbbb"
    console.observe(frame(1, 40), verdict(1, 2.0, ng=True), None)
    client = api(console)
    r = client.post("/api/review", json={"seq": 1, "label": "false_reject", "who": "ann",
                                         "run": "20260101T000000Z-aaaa"})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert "20260101T000000Z-aaaa" in error and "the station restarted" in error and "reload the page" in error
    assert not (tmp_path / "reviews.jsonl").exists() and not (tmp_path / "review").exists()
    for body in ({"run": console.feed.run_id}, {}):
        r = client.post("/api/review", json={"seq": 1, "label": "defect", "who": "ann", **body})
        assert r.status_code == 200 and r.json()["run"] == console.feed.run_id, r.text


def test_a_part_image_url_names_its_run_and_model_and_another_runs_is_not_served(tmp_path):
    """Seq 1 of two runs is two URLs (was one, cached 10 minutes: a restarted station's gallery showed the earlier
    run's picture under the new verdict); an URL of another run is 404, one naming none is not cached."""
    urls = {}
    for run, value in (("20260101T000000Z-aaaa", 40), ("20260101T000100Z-bbbb", 220)):
        console, _ = one_camera_console(tmp_path / run, keep_frames=8)
        console.feed.run_id = run
        console.observe(frame(1, value), verdict(1, 2.0, ng=True, model="m1"), None)
        client = api(console)
        (listed,) = client.get("/api/gallery").json()["parts"]
        (recent,) = client.get("/api/state").json()["recent"]
        assert listed["image"] == recent["image"]
        query = parse_qs(urlsplit(listed["image"]).query)
        assert (query["r"], query["m"]) == ([run], ["m1"]), listed["image"]
        urls[run] = listed["image"]
        served = client.get(listed["image"])
        assert served.status_code == 200 and served.headers["cache-control"] == "max-age=600"
        assert client.get("/api/part/1.jpg?r=20991231T000000Z-ffff&m=m1").status_code == 404
        assert client.get("/api/part/1.jpg").headers["cache-control"] == "no-cache"
    assert len(set(urls.values())) == 2


def test_the_live_image_is_the_part_asked_for_while_its_frame_is_kept(tmp_path):
    """/api/live.jpg?seq=N is part N's picture (was the latest part's at fetch time, beside part N's verdict), the
    latest's once N is no longer kept."""
    console, _ = one_camera_console(tmp_path, keep_frames=8)
    for seq, value in ((1, 30), (2, 120), (3, 230)):
        console.observe(frame(seq, value), verdict(seq, 0.5), None)
    client = api(console)
    part = {seq: client.get(f"/api/part/{seq}.jpg").content for seq in (1, 2, 3)}
    assert len(set(part.values())) == 3
    for seq in (1, 2, 3):
        assert client.get(f"/api/live.jpg?seq={seq}&c=&m=m1").content == part[seq], seq
    for asked in ("?seq=99", "?seq=x", ""):   # not kept, no number, none: the latest
        assert client.get("/api/live.jpg" + asked).content == part[3], asked


def test_each_snapshot_names_its_server_process(tmp_path):
    """A restarted station counts snapshot versions from 1 again: the ``epoch`` of its server process tells a page
    that its older-looking version is the newer station's (was: none, and the page froze on the old run)."""
    from fair_edge.console.app import SharedState

    console, _ = one_camera_console(tmp_path)
    console.observe(None, verdict(1, 0.5), None)
    before, after = (SharedState(console.feed, console.actions, period=0.0) for _ in range(2))
    epochs = [json.loads(shared.get()[1])["epoch"] for shared in (before, after)]
    assert all(epochs) and epochs[0] != epochs[1]
    assert json.loads(api(console).get("/api/state").text)["epoch"]


def test_the_gallery_says_how_many_ng_parts_of_the_run_it_no_longer_lists(tmp_path):
    """The gallery lists the newest ``recent_parts`` NG parts; it says how many the run has and its bound (was:
    only the listed count, read as every NG part of the run)."""
    console, inspector = one_camera_console(tmp_path, recent_parts=10)
    for seq in range(15):
        console.observe(None, verdict(seq, 2.0, ng=True), None)
    inspector.summary.ng = 15   # the inspector counts every NG verdict of the run
    g = api(console).get("/api/gallery").json()
    assert [p["seq"] for p in g["parts"]] == list(range(14, 4, -1))
    assert (g["ng_in_run"], g["listed_at_most"]) == (15, 10)

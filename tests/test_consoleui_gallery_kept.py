"""The gallery says which views' frames are still in the console's memory (``kept``, and ``keep_frames`` for why): a
passed view's *miss* is saved with its frame, so the station refuses it once the frame is gone (409, naming
console.keep_frames), and the gallery's miss button greys then, as the live page's does. The gallery sent nothing
to tell them apart: every miss button looked usable and most were refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fair_edge.records import Frame
from test_console_gallery import ng_parts
from test_console_units import api, one_camera_console, verdict


def miss(client, run: str, camera: str, seq: int):
    return client.post("/api/review", json={"seq": seq, "label": "miss", "who": "ann", "camera": camera, "run": run})


def test_each_view_in_the_gallery_says_whether_its_frame_is_kept_exactly_as_the_review_api_decides(tmp_path):
    """Three cameras, six NG parts (NG by the first camera), the last 4 frames kept: every passed view's ``kept`` is
    True exactly when its miss is recorded (200), False exactly when it is refused (409 naming console.keep_frames);
    both occur. ``keep_frames`` says how many frames the console keeps."""
    feed, actions = ng_parts(tmp_path, 6, cameras=("top", "left", "right"))
    client = api(SimpleNamespace(feed=feed, actions=actions))
    gallery = client.get("/api/gallery").json()
    assert gallery["keep_frames"] == 4
    views = [v for p in gallery["parts"] for v in p["views"]]
    assert all(isinstance(v["kept"], bool) for v in views)
    passed = [(v["camera"], v["seq"], v["kept"]) for v in views if not v["ng"]]
    assert {(c, s) for c, s, kept in passed if kept} == {("left", 5), ("right", 5), ("right", 4)}, passed
    assert len(passed) == 12
    for camera, seq, kept in passed:
        answer = miss(client, gallery["run"], camera, seq)
        if kept:
            assert answer.status_code == 200, (camera, seq, answer.text)
        else:
            assert answer.status_code == 409 and "console.keep_frames" in answer.json()["error"], (camera, seq)


def test_one_cameras_ng_parts_say_whether_their_frame_is_kept(tmp_path):
    """One camera: each NG part listed carries ``kept`` too (its frame among the last ``keep_frames``)."""
    console, _ = one_camera_console(tmp_path, keep_frames=2)
    image = np.zeros((8, 8, 3), np.uint8)
    for seq in range(1, 5):
        console.observe(Frame(seq, 0.0, image), verdict(seq, 2.0, ng=True), None)
    gallery = api(console).get("/api/gallery").json()
    assert [(p["seq"], p["kept"]) for p in gallery["parts"]] == [(4, True), (3, True), (2, False), (1, False)]
    assert gallery["keep_frames"] == 2

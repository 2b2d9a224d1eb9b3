"""The console of a station of several cameras (``station.cell``), through its HTTP API: views addressed by
(camera, seq) when the cameras' sequence numbers collide, NG parts in the gallery with all their views, a review
that labels one view only, per-camera counters equal to the summary's, per-camera swaps, thresholds and the
SIGHUP reload from the station file. Real bundles on ONNX Runtime; assertions are order and accounting."""

from __future__ import annotations

import json
import threading

import cv2
import httpx
import numpy as np
import pytest
import yaml

from console_station import RunningStation
from fair_edge.cameras import LineSource
from fair_edge.cameras.base import EndOfStream
from fair_edge.console.settings import ConsoleSettings
from fair_edge.line.settings import RecordSettings
from fair_edge.runtime.hotswap import model_id
from fair_edge.station.config import StationConfig, load_station
from fair_edge.station.views import GroupSettings, ViewSettings


class HeldLine(LineSource):
    """Its images once, as fast as they are read; then it holds (no frame, no end) until ``release()``, and ends:
    the camera goes quiet with every frame delivered, so its counters stand still while the console is read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.released = threading.Event()

    def _grab(self):
        if self._next_slot >= len(self.images):
            self.released.wait(600)
            raise EndOfStream(f"{self.name}: released")
        return super()._grab()

    def release(self) -> None:
        self.released.set()


def cell(bundle, out, cameras, **changes) -> StationConfig:
    return StationConfig(bundle=bundle, backend="onnxruntime", output=out, cameras=tuple(cameras),
                         group=GroupSettings(match="sequence"), record=RecordSettings(dir=out, save_ng_images=True),
                         console=ConsoleSettings(port=0, keep_frames=64, drift_min_parts=10), **changes).checked()


def rows(out) -> list[dict]:
    path = out / "verdicts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def view_rows(out, camera: str) -> list[dict]:
    return sorted((r for r in rows(out) if r.get("kind") != "part" and r.get("camera") == camera),
                  key=lambda r: r["seq"])


def test_cell_console_groups_views_by_part_and_reviews_one_view(station_bundles, scored, tmp_path):
    """Two cameras numbering their frames 0..3 each: part 1 is NG by its left view. The gallery shows part 1 once
    with both views (left deciding); the two frames with seq 1 are two images; reviewing left's frame 1 labels that
    view only; the console's per-camera counters are the summary's."""
    images, threshold = scored
    sources = {"top": HeldLine([images[i] for i in (0, 1, 2, 3)], loop=False, name="top"),
               "left": HeldLine([images[i] for i in (4, 11, 5, 6)], loop=False, name="left")}
    out = tmp_path / "out"
    cfg = cell(station_bundles[0].root, out, [ViewSettings(c, c, queue_size=16) for c in sources], threshold=threshold)
    with RunningStation(cfg, sources=sources) as st:
        get = lambda path, **kw: httpx.get(st.url + path, timeout=30, **kw)  # noqa: E731
        post = lambda action, body: httpx.post(st.url + "api/" + action, json=body, timeout=30)  # noqa: E731
        state = st.wait_for(lambda: (s := get("api/state").json()).get("parts", {}).get("parts") == 4 and s,
                            what="4 parts")
        assert [c["name"] for c in state["cameras"]] == ["top", "left"]
        assert {c["name"]: (c["counters"]["inspected"], c["counters"]["ng"]) for c in state["cameras"]} == \
            {"top": (4, 0), "left": (4, 1)}
        assert state["parts"] == {"parts": 4, "ng": 1, "ok": 3, "not_inspected": 0, "late_views": 0, "resyncs": 0,
                                  "duplicate_views": 0}
        assert state["latest_part"]["part"] == 3 and not state["latest_part"]["ng"]
        assert [(t["camera"], t["seq"], t["ng"]) for t in state["tiles"]] == [("top", 3, False), ("left", 3, False)]
        recent = {(r["camera"], r["seq"]): r for r in state["recent"]}
        assert set(recent) == {(c, s) for c in ("top", "left") for s in range(4)}
        assert recent[("left", 1)]["ng"] and not recent[("top", 1)]["ng"]

        top1, left1 = get("api/part/top/1.jpg"), get("api/part/left/1.jpg")   # one seq, two cameras, two frames
        assert top1.status_code == left1.status_code == 200 and top1.content != left1.content
        assert get("api/part/9/1.jpg").status_code == 404 and get("api/part/1.jpg").status_code == 404

        st.wait_for(lambda: list((out / "ng").glob("*_left_00000001_overlay.*")), what="the NG view's overlay")
        gallery = get("api/gallery").json()
        (part,) = gallery["parts"]
        assert (part["part"], part["camera"], part["ng_views"], part["missing"]) == (1, "left", ["left"], [])
        views = {v["camera"]: v for v in part["views"]}
        assert [v["camera"] for v in part["views"]] == ["top", "left"]
        assert (views["top"]["seq"], views["top"]["ng"], views["top"]["decided"]) == (1, False, False)
        assert (views["left"]["seq"], views["left"]["ng"], views["left"]["decided"]) == (1, True, True)
        assert views["left"]["image"].startswith("/files/ng/") and "_left_00000001_overlay" in views["left"]["image"]
        assert get(views["left"]["image"].lstrip("/")).status_code == 200
        assert views["top"]["image"].startswith(f"/api/part/top/1.jpg?r={gallery['run']}&m=")   # the run in the URL

        unnamed = post("review", {"seq": 1, "label": "defect", "who": "ann"})
        assert unnamed.status_code == 400 and "top, left" in unnamed.json()["error"]
        assert post("review", {"seq": 1, "camera": "right", "label": "defect", "who": "ann"}).status_code == 400
        answer = post("review", {"seq": 1, "camera": "left", "label": "defect", "who": "ann"})
        assert answer.status_code == 200, answer.text
        views = {v["camera"]: v for v in get("api/gallery").json()["parts"][0]["views"]}
        assert views["left"]["review"] == "defect" and views["top"]["review"] == ""
        labelled = {(r["camera"], r["seq"]): r["review"] for r in get("api/state").json()["recent"]}
        assert labelled[("left", 1)] == "defect" and labelled[("top", 1)] == ""
        (entry,) = [json.loads(x) for x in (out / "reviews.jsonl").read_text().splitlines()]
        assert (entry["camera"], entry["seq"], entry["part"], entry["label"]) == ("left", 1, 1, "defect")
        assert entry["image"].endswith("_left_00000001_defect.png") and (out / entry["image"]).is_file()
        exported = post("export", {"who": "ann"}).json()
        assert exported["test/defect"]["saved"] == 1
        assert [p.name for p in (out / exported["dest"]).glob("test/defect/*.png")] == \
            [f"{st.console.feed.run_id}_left_00000001.png"]
        counters = {c["name"]: c["counters"] for c in get("api/state").json()["cameras"]}
        for source in sources.values():   # both cameras end: the run ends by itself
            source.release()
    keys = ("frames_in", "inspected", "ng", "dropped", "lost")
    assert {c: {k: n[k] for k in keys} for c, n in counters.items()} == \
        {c: {k: n[k] for k in keys} for c, n in st.summary.cameras.items()}
    assert st.summary.parts["parts"] == 4


def test_swapping_one_camera_leaves_the_others_model_and_threshold(station_bundles, scored, tmp_path):
    """The left camera names its own bundle, top runs the station's. A swap for left changes left's model only;
    a swap naming no camera changes the cameras on the station's bundle (top); a threshold is applied per camera."""
    images, threshold = scored
    fp32, fp16 = (model_id(b) for b in station_bundles)
    sources = {c: LineSource(images[:8], fps=6, loop=True, name=c) for c in ("top", "left")}
    out = tmp_path / "out"
    cfg = cell(station_bundles[0].root, out, [ViewSettings("top", "top", queue_size=16),
                                              ViewSettings("left", "left", queue_size=16, bundle=station_bundles[0].root)],
               threshold=threshold)
    with RunningStation(cfg, sources=sources) as st:
        post = lambda action, body: httpx.post(st.url + "api/" + action, json=body, timeout=30)  # noqa: E731
        swap_done = lambda: httpx.get(st.url + "api/swap").json()["state"] == "done"  # noqa: E731
        st.wait_for(lambda: len(view_rows(out, "top")) >= 3 and len(view_rows(out, "left")) >= 3, what="views")
        answer = post("swap", {"bundle": str(station_bundles[1].root), "who": "ann", "camera": "left"})
        assert answer.status_code == 200 and answer.json()["cameras"] == ["left"], answer.text
        st.wait_for(swap_done, what="left's bundle to load")
        st.wait_for(lambda: sum(r["model"] == fp16 for r in view_rows(out, "left")) >= 3, what="left on fp16")
        cams = {c["name"]: c["model"] for c in httpx.get(st.url + "api/state").json()["cameras"]}
        assert (cams["top"]["id"], cams["left"]["id"]) == (fp32, fp16)
        top_before = len(view_rows(out, "top"))
        assert all(r["model"] == fp32 for r in view_rows(out, "top"))

        assert post("threshold", {"threshold": 1e9, "who": "ann", "confirm": True}).status_code == 400  # which?
        applied = post("threshold", {"threshold": 1e9, "who": "ann", "confirm": True, "camera": "top"}).json()
        assert applied["camera"] == "top" and applied["old"] == pytest.approx(threshold)
        st.wait_for(lambda: any(r["threshold"] == 1e9 for r in view_rows(out, "top")), what="top's new threshold")
        seen_left = len(view_rows(out, "left"))
        st.wait_for(lambda: len(view_rows(out, "left")) >= seen_left + 3, what="more left views")
        tune = httpx.get(st.url + "api/tune", params={"camera": "top"}).json()
        assert tune["camera"] == "top" and tune["current"] == 1e9

        answer = post("swap", {"bundle": str(station_bundles[1].root), "who": "bob"})
        assert answer.status_code == 200 and answer.json()["cameras"] == ["top"], answer.text
        st.wait_for(swap_done, what="the station bundle's cameras to load")
        st.wait_for(lambda: sum(r["model"] == fp16 for r in view_rows(out, "top")) >= 3, what="top on fp16")
    top, left = view_rows(out, "top"), view_rows(out, "left")
    assert [r["model"] for r in top[:top_before]] == [fp32] * top_before
    for views in (top, left):   # each camera: fp32 ... fp16, never back
        models = [r["model"] for r in views]
        assert models == sorted(models, key=lambda m: m == fp16) and models[0] == fp32 and models[-1] == fp16
    assert all(r["threshold"] != 1e9 for r in left)
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a.get("camera"), a["who"]) for a in audit] == \
        [("swap", "left", "ann"), ("threshold", "top", "ann"), ("swap", "top", "bob")]
    assert audit[0]["old"]["model"] == fp32 and audit[0]["new"]["model"] == fp16


def test_reload_takes_every_cameras_bundle_from_the_station_file(station_bundles, scored, tmp_path):
    """SIGHUP's reload in a cell: the station file now names fp16 for the station and keeps fp32 for the left
    camera's own bundle: top switches to fp16, left reloads fp32 (audited per camera). A threshold applied from
    the console to one camera is written to that camera's entry of the station file, and the reload keeps it."""
    images, threshold = scored
    fp32, fp16 = (model_id(b) for b in station_bundles)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(images[:8]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    out, station = tmp_path / "out", tmp_path / "station.yaml"
    camera = {"source": str(folder), "fps": 6, "loop": True, "queue_size": 16}
    settings = {"bundle": str(station_bundles[0].root), "backend": "onnxruntime", "output": str(out),
                "decision": {"threshold": threshold}, "group": {"match": "sequence"}, "console": {"port": 0},
                "cameras": [{"name": "top", **camera}, {"name": "left", **camera, "bundle": str(station_bundles[0].root)}]}
    station.write_text(yaml.safe_dump(settings))
    with RunningStation(load_station(station)) as st:
        st.wait_for(lambda: len(view_rows(out, "top")) >= 3 and len(view_rows(out, "left")) >= 3, what="views")
        applied = httpx.post(st.url + "api/threshold", json={"threshold": 2.5 * threshold, "who": "ann",
                                                             "confirm": True, "camera": "left"}, timeout=30)
        assert applied.status_code == 200, applied.text
        written = yaml.safe_load(station.read_text())
        assert written["cameras"][1]["threshold"] == 2.5 * threshold and "threshold" not in written["cameras"][0]
        assert written["decision"]["threshold"] == threshold
        written["bundle"] = str(station_bundles[1].root)
        station.write_text(yaml.safe_dump(written))
        st.console.reload_bundle("SIGHUP")
        st.wait_for(lambda: httpx.get(st.url + "api/swap").json()["state"] == "done", what="the reload")
        st.wait_for(lambda: sum(r["model"] == fp16 for r in view_rows(out, "top")) >= 3, what="top on fp16")
        seen = len(view_rows(out, "left"))
        st.wait_for(lambda: len(view_rows(out, "left")) >= seen + 3, what="more left views")
    assert {r["model"] for r in view_rows(out, "left")} == {fp32}
    models = [r["model"] for r in view_rows(out, "top")]
    assert models[0] == fp32 and models == sorted(models, key=lambda m: m == fp16)
    swaps = [a for a in (json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()) if a["action"] == "swap"]
    assert sorted((a["camera"], a["who"], a["new"]["model"]) for a in swaps) == \
        [("left", "SIGHUP", fp32), ("top", "SIGHUP", fp16)]
    assert {a["camera"]: a["new"]["threshold"] for a in swaps} == {"left": 2.5 * threshold, "top": threshold}
    assert view_rows(out, "left")[-1]["threshold"] == 2.5 * threshold


class LaneCounters:
    """``CellCounters`` of two lanes (no parts): what ``station.cell.CellCounters`` gives with ``group.by: lane``."""

    def cameras(self) -> dict:
        return {c: {"frames_in": 1, "inspected": 1, "ng": 1, "dropped": 0, "lost": 0, "state": "running",
                    "end_reason": ""} for c in ("a", "b")}

    def parts(self) -> dict:
        return {}


def test_lanes_list_ng_frames_by_camera_and_seq(tmp_path):
    """Lanes (no part rows): the gallery lists each NG frame with its camera; frames of two lanes with one seq are
    two views, each with its own image URL, review and drift key; the tiles show each lane's latest frame."""
    from fair_edge.console.actions import StationActions
    from fair_edge.console.feed import StationFeed
    from fair_edge.console.views import gallery, live_state
    from fair_edge.records import Frame, Verdict

    feed = StationFeed(ConsoleSettings(port=0), tmp_path)
    feed.attach_cell(LaneCounters(), {"a": tmp_path / "bundle", "b": tmp_path / "bundle"})
    for camera, value in (("a", 10), ("b", 200)):
        frame = Frame(7, 0.0, np.full((8, 8, 3), value, np.uint8), camera=camera)
        feed.observe(frame, Verdict(7, 0.0, 0.9, 0.5, True, 0.01, camera=camera), None)
    actions = StationActions(feed, None)
    listed = gallery(feed, actions)["parts"]
    assert [(p["camera"], p["seq"], p["image"]) for p in listed] == [("b", 7, f"/api/part/b/7.jpg?r={feed.run_id}&m="),
                                                                     ("a", 7, f"/api/part/a/7.jpg?r={feed.run_id}&m=")]
    assert feed.kept_part(7, "a").frame.image[0, 0, 0] == 10 and feed.kept_part(7, "b").frame.image[0, 0, 0] == 200
    actions.review(7, "defect", "ann", "b")
    assert actions.labels == {("b", 7): "defect"}
    assert [p["review"] for p in gallery(feed, actions)["parts"]] == ["defect", ""]
    state = live_state(feed, actions)
    assert state["parts"] == {} and state["latest_part"] is None
    assert [(t["camera"], t["seq"]) for t in state["tiles"]] == [("a", 7), ("b", 7)]
    # each lane has its own drift watch; b's view, reviewed as a defect, is left out of b's
    assert {c: s.parts for c, s in feed.drift.states().items()} == {"a": 1, "b": 0}

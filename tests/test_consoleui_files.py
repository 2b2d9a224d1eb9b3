"""What /files/ (the output folder) and /records/ (record.dir) serve: only the kinds of file the console links to or
names (images, the JSONL logs and their rotations, JSON and CSV tables). A copy of the station file there
(``station.yaml.bak``, ``old/station.yml``, an editor's ``station.yaml~``) was served, ``console.token`` and all, to
anyone who reached the port: the station file itself was the only one withheld. Every link the live page and the
gallery make still loads (one camera and several, record.dir in the output folder and elsewhere, each image format),
and the warning at start says what is and is not served."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from fair_edge.console.served_files import station_file_warning
from fair_edge.line.ng_images import ng_image_path
from fair_edge.line.settings import IMAGE_FORMATS
from fair_edge.records import Frame, Verdict
from test_console_gallery import ng_parts
from test_console_units import api, one_camera_console, verdict

TOKEN = "s3cret-token-123"
COPIES = ("station.yaml.bak", "old/station.yml", "station.yaml~", "station.yaml.1", "station.yaml.orig",
          ".ab12cd34.station.yaml.tmp", ".station.yaml.swp", "notes.txt", "sub/copy.json.yaml")
SERVED = ("verdicts.jsonl", "verdicts.jsonl.1", "verdicts.jsonl.12", "gate.jsonl", "reviews.jsonl", "audit.jsonl",
          "summary.json", "tune.json", "tune.csv", "review/run_00000001_miss.png", "ng/run_00000001_overlay.jpg",
          "ng/RUN_00000002_overlay.PNG")
PAGES = ("/", "/gallery", "/tune")


def write_files(folder: Path, names) -> None:
    """Each of ``names`` under ``folder`` holding the station file's secret (a copy of it, or a log naming it)."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"console:\n  token: {TOKEN}\n")


def image_bytes(ext: str) -> bytes:
    """A small real image encoded as ``ext`` (png / jpg): what the recorder writes, so a browser can draw it."""
    ok, data = cv2.imencode(f".{ext}", np.full((8, 8, 3), 128, np.uint8))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("record_elsewhere", [False, True])
def test_copies_of_the_station_file_and_other_kinds_of_file_are_404_where_logs_and_images_are_served(
        tmp_path, record_elsewhere):
    """A backup of the station file (any name but its own) in the output or the record folder was served with its
    console.token: 200 on the old code for ``files/station.yaml.bak``. Only the kinds the console links to are served
    now; the rest is 404 and never carries the token, through a link with a served name too."""
    out = tmp_path / "out"
    rec_dir = tmp_path / "rec" if record_elsewhere else out
    station = out / "station.yaml"
    out.mkdir()
    rec_dir.mkdir(exist_ok=True)
    station.write_text(yaml.safe_dump({"console": {"host": "0.0.0.0", "token": TOKEN}}))
    console, _ = one_camera_console(out, station_file=station)
    console.feed.recorder = SimpleNamespace(dir=rec_dir, settings=SimpleNamespace(image_format="png"))
    client = api(console)
    prefixes = ("/files/", "/records/") if record_elsewhere else ("/files/",)
    for prefix, folder in zip(prefixes, (out, rec_dir)):
        write_files(folder, COPIES)
        (folder / "served_name.json").symlink_to(folder / "station.yaml.bak")   # a served name leading to a copy
        for name in (*COPIES, "served_name.json"):
            r = client.get(prefix + name)
            assert r.status_code == 404 and TOKEN not in r.text, (prefix + name, r.status_code)
        write_files(folder, SERVED)
        for name in SERVED:
            assert client.get(prefix + name).status_code == 200, prefix + name


def test_the_kinds_served_are_the_logs_images_and_tables_the_console_links_to():
    from fair_edge.console.served_files import SERVED_SUFFIXES, served_kind

    assert {f".{ext}" for ext in IMAGE_FORMATS} | {".jsonl", ".json", ".csv"} == SERVED_SUFFIXES
    for name in ("verdicts.jsonl.3", "GATE.JSONL.1", "x.Png", "summary.json"):
        assert served_kind(name), name
    for name in ("station.yaml", "station.yaml.1", "verdicts.jsonl.", "verdicts.jsonl.x", "verdicts.jsonl.\u0661",
                 ".station.lock", "station", "a.json~", "a.csv.bak"):
        assert not served_kind(name), name


def test_the_warning_at_start_says_copies_under_other_names_are_not_served_and_which_kinds_are():
    """The warning said a backup (station.yaml~) would be served: no longer true; it names the kinds that are."""
    from fair_edge.console.served_files import SERVED_SUFFIXES

    text = station_file_warning(Path("/srv/out/station.yaml"), {"output folder": Path("/srv/out"),
                                                                "record folder": Path("/srv/out")})
    assert text.startswith("station file /srv/out/station.yaml is inside the console's output folder and record "
                           "folder /srv/out, whose images, logs and tables (.csv, .jpg, .json, .jsonl, .png files) "
                           "anyone who reaches the console reads without the token"), text
    assert "nor is a copy of it under another name (station.yaml.bak, an editor's station.yaml~)" in text, text
    assert "would be served" not in text and "a copy saved there as one of those kinds (station.json) would be" in text
    assert all(suffix in text for suffix in SERVED_SUFFIXES) and "move the station file out" in text, text


# ------------------------------------------------------------------ every link of the pages still loads
def page_links(client) -> set[str]:
    """Every same-site src/href of the pages and the header every page draws (common.js)."""
    links = set(PAGES)
    for page in PAGES:
        html = client.get(page).text
        links |= {u for u in re.findall(r'(?:src|href)="([^"]+)"', html) if u.startswith("/")}
    return links


def fetch_all(client, links) -> None:
    for link in sorted(links):
        r = client.get(link)
        assert r.status_code == 200 and r.content, (link, r.status_code)
        if "/ng/" in link or link.endswith(".jpg") or ".jpg?" in link:
            assert r.headers["content-type"].startswith("image/"), (link, r.headers["content-type"])


@pytest.mark.parametrize("image_format", IMAGE_FORMATS)
@pytest.mark.parametrize("record_elsewhere", [False, True])
def test_every_link_of_the_live_page_and_the_gallery_loads_one_camera(tmp_path, image_format, record_elsewhere):
    """One camera: the pages' scripts and styles, the live image, each recent part's picture and the NG part's
    overlay (under /files/ or /records/, in each image format) all answer 200."""
    out = tmp_path / "out"
    rec_dir = tmp_path / "rec" if record_elsewhere else out
    out.mkdir()
    console, _ = one_camera_console(out, keep_frames=8)
    console.feed.recorder = SimpleNamespace(dir=rec_dir, settings=SimpleNamespace(image_format=image_format),
                                            stats=dict)   # the recorder's folder and format, no rows counted
    image = np.full((16, 16, 3), 90, np.uint8)
    for seq, (score, ng) in enumerate(((0.2, False), (2.0, True), (0.4, False)), start=1):
        console.observe(Frame(seq, 0.0, image), verdict(seq, score, ng=ng), np.zeros((16, 16), np.float32))
    overlay = ng_image_path(rec_dir, console.feed.run_id, 2, "overlay", image_format)
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_bytes(image_bytes(image_format))
    client = api(console)
    state, gallery = client.get("/api/state").json(), client.get("/api/gallery").json()
    links = {r["image"] for r in state["recent"] if r["image"]} | {p["image"] for p in gallery["parts"]}
    assert gallery["parts"][0]["image"] == ("/records/ng/" if record_elsewhere else "/files/ng/") + overlay.name
    latest = state["latest"]
    links.add(f"/api/live.jpg?seq={latest['seq']}&c=&r={state['run']}&m={latest['model']}")
    fetch_all(client, links | page_links(client))


def test_every_link_of_the_live_page_and_the_gallery_loads_several_cameras(tmp_path):
    """Several cameras: each tile's picture, each view's in the gallery (NG overlays under /files/ng/, kept frames
    under /api/part/CAMERA/SEQ.jpg) and the pages' own files answer 200."""
    feed, actions = ng_parts(tmp_path, 3, cameras=("top", "left"))
    for part in range(3):
        overlay = ng_image_path(tmp_path, feed.run_id, part, "overlay", "png", "top")
        overlay.parent.mkdir(parents=True, exist_ok=True)
        overlay.write_bytes(image_bytes("png"))
    client = api(SimpleNamespace(feed=feed, actions=actions))
    state, gallery = client.get("/api/state").json(), client.get("/api/gallery").json()
    links = {t["image"] for t in state["tiles"] if t.get("image")}
    links |= {v["image"] for p in gallery["parts"] for v in p["views"] if v.get("image")}
    assert any(link.startswith("/files/ng/") for link in links) and any("/api/part/left/" in x for x in links), links
    fetch_all(client, links | page_links(client))

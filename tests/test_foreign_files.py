"""Files made by other tools, read as their maker meant them: masks drawn on a transparent layer or saved as JPEG,
relative paths named where they were looked for, Windows / shell folder paths refused, a station file saved as
UTF-16, a bundle.json with a BOM, a section written `off`, and a station file rewritten with its umlauts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fair_edge.errors import BundleError, ConfigError
from fair_edge.station.config import load_station
from fair_edge.training.pixels import read_mask


def one_line(text: str) -> str:
    """``text`` (a help screen, a wrapped error) with Rich's box lines and line breaks as single spaces."""
    return " ".join(text.replace("│", " ").split())


# ----------------------------------------------------------------------------- 1. masks
def corner_square() -> np.ndarray:
    """(300, 300) bool: the top-left 60 x 60 corner (3600 px), the drawn shape of the masks below."""
    shape = np.zeros((300, 300), bool)
    shape[:60, :60] = True
    return shape


def write_rgba_on_white(path, shape: np.ndarray) -> None:
    """``shape`` drawn opaque white on a transparent layer whose hidden colour is white too (PIL's and Photoshop's
    "erase to transparent"): in a viewer, the shape; with alpha dropped, an all-white frame."""
    rgba = np.full((*shape.shape, 4), 255, np.uint8)
    rgba[..., 3] = np.where(shape, 255, 0)
    cv2.imwrite(str(path), rgba)


def roi_pixels(path) -> np.ndarray:
    from fair_edge.station.bundles import load_roi

    return load_roi(path, None) > 0


def zone_pixels(path, frame=(300, 300)) -> np.ndarray:
    from fair_edge.station.zones import RegionSettings

    settings = RegionSettings.from_dict({"frame": list(frame), "zones": [{"name": "label", "mask": str(path),
                                                                           "ignore": True}]})
    return settings.zones[0].mask_pixels


@pytest.mark.parametrize("layout", ["rgba", "grey_alpha"])
def test_a_mask_drawn_on_a_transparent_layer_is_its_shape_not_the_whole_frame(tmp_path, layout):
    """Alpha was dropped: an ignore zone drawn as a 60 x 60 label on a transparent layer (transparent pixels
    holding white) was the whole 300 x 300 frame and swallowed every defect; as an ROI it inspected everything."""
    shape, path = corner_square(), tmp_path / f"label_{layout}.png"
    if layout == "rgba":
        write_rgba_on_white(path, shape)
    else:   # grey + alpha (PNG colour type 4), as PIL saves mode "LA"
        from PIL import Image

        Image.fromarray(np.stack([np.full(shape.shape, 255, np.uint8), np.where(shape, 255, 0).astype(np.uint8)],
                                 -1), "LA").save(path)
    assert int(roi_pixels(path).sum()) == 3600
    assert np.array_equal(roi_pixels(path), shape)
    assert np.array_equal(zone_pixels(path), shape)
    assert np.array_equal(read_mask(path, (300, 300)), shape)   # a ground-truth mask too


def test_a_fully_transparent_zone_mask_is_refused_as_empty_naming_the_rule(tmp_path):
    write_rgba_on_white(tmp_path / "clear.png", np.zeros((300, 300), bool))
    with pytest.raises(ConfigError, match=r"clear\.png is all black.*transparent pixels are outside"):
        zone_pixels(tmp_path / "clear.png")


def test_a_jpeg_roi_or_zone_mask_is_its_white_area_without_the_ringing_around_it(tmp_path):
    """Any nonzero pixel counted: a white disc saved as JPEG (Paint, a phone) gained ~1500 px of grey ringing up
    to 10 px outside its edge. Drawn masks (white = inside) are read from half scale (128) up."""
    drawn = np.zeros((240, 320), np.uint8)
    cv2.circle(drawn, (151, 117), 67, 255, -1)
    inside = drawn > 0
    cv2.imwrite(str(tmp_path / "disc.jpg"), drawn, [cv2.IMWRITE_JPEG_QUALITY, 75])
    stored = cv2.imread(str(tmp_path / "disc.jpg"), cv2.IMREAD_GRAYSCALE)
    assert int(((stored > 0) & ~inside).sum()) > 100   # the ringing the old reader took in
    for pixels in (roi_pixels(tmp_path / "disc.jpg"), zone_pixels(tmp_path / "disc.jpg", (320, 240))):
        assert int((pixels & ~inside).sum()) == 0
        assert int((inside & ~pixels).sum()) < 0.01 * inside.sum()


def test_a_ground_truth_mask_keeps_every_nonzero_label_and_a_drawn_mask_needs_white(tmp_path):
    """Ground truth is a label array (VisA's masks hold 1, not 255): any nonzero value stays a defect. An ROI
    saved as 0 / 1 at 8 bits is refused as black, naming what white is."""
    labels = np.zeros((300, 300), np.uint8)
    labels[:60, :60] = 1
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    assert np.array_equal(read_mask(tmp_path / "labels.png", (300, 300)), corner_square())
    with pytest.raises(ConfigError, match=r"decision\.roi: .*labels\.png is all black.*in white \(128 or more in an "
                                          r"8-bit mask, any nonzero value in a 16-bit or float one"):
        roi_pixels(tmp_path / "labels.png")


# ----------------------------------------------------------------------------- 2. relative paths
def test_a_missing_relative_camera_folder_is_named_where_it_was_looked_for(tmp_path, monkeypatch):
    """The refusal said "no such device, file or kind (did you mean 'folder:'?)": it did not say the folder was
    looked for in the current folder (not the station file's), and guessed a misspelt kind."""
    from fair_edge.cameras.registry import parse_source

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        parse_source("bilder")
    text = str(refused.value)
    assert f"no folder or file {tmp_path / 'bilder'}" in text and f"current folder ({tmp_path})" in text, text
    assert "did you mean" not in text
    with pytest.raises(ConfigError, match=r"did you mean 'folder:'"):   # a KIND:TARGET still gets its hint
        parse_source("Folder:/data")


def test_fair_edge_run_names_the_bundle_it_loads_as_an_absolute_path(tmp_path, monkeypatch):
    """A station started in another folder silently ran that folder's bundle of the same name: the start lines
    named the bundle as written (relative). Now the absolute path and the folder it is read from are printed."""
    from fair_edge.cli import app

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    station = tmp_path / "station.yaml"
    station.write_text("bundle: bundle\nconsole: {enabled: false}\n")
    result = CliRunner().invoke(app, ["run", "--station", str(station), "--source", str(tmp_path)],
                                env={"COLUMNS": "400"})
    text = one_line(result.output)
    assert result.exit_code == 2, result.output
    assert (f"bundle {tmp_path / 'here' / 'bundle'} (relative paths in the station file are read from the current "
            f"folder, {tmp_path / 'here'})") in text, text


def test_run_help_says_relative_paths_are_read_from_the_current_folder():
    from fair_edge.cli import app

    result = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert "Relative paths in it are read from the current folder, not the file's (README, \"The station " \
           "file\")" in one_line(result.output)


# ----------------------------------------------------------------------------- 3. Windows / shell folder paths
@pytest.mark.parametrize("field, value, foreign, suggested", [
    ("output", r"D:\fair-edge\runs\line3", "D: is a Windows drive letter", "output: /fair-edge/runs/line3"),
    ("output", "$HOME/runs/line3", "$HOME: environment variables are not expanded", "output: ~/runs/line3"),
    ("output", "${HOME}/runs", "${HOME}: environment variables", "output: ~/runs"),
    ("output", r"%USERPROFILE%\runs", "%USERPROFILE%: environment variables", "output: ~/runs"),
    ("record", r"runs\line3", r"\ is a Windows separator", "dir: runs/line3"),
])
def test_an_output_folder_written_for_windows_or_a_shell_is_refused(tmp_path, field, value, foreign, suggested):
    """`output: D:\\fair-edge\\runs` made a folder named so in the current one; `$HOME/runs` a folder named
    `$HOME`. Refused, naming the field, the value, what is foreign and a forward-slash path."""
    station = tmp_path / "station.yaml"
    entry = {"output": value} if field == "output" else {"record": {"dir": value}}
    station.write_text(json.dumps(entry))   # JSON is YAML: the value exactly as written
    with pytest.raises(ConfigError) as refused:
        load_station(station)
    text = str(refused.value)
    where = "station.output" if field == "output" else "record.dir"
    assert f"{where}: expected a folder path as Linux reads it, found {value!r}: " in text, text
    assert foreign in text and f"e.g. {suggested}" in text, text
    assert not any(tmp_path.glob("*runs*")) and not (tmp_path / "$HOME").exists()


def test_plain_folder_paths_load_as_before(tmp_path):
    station = tmp_path / "station.yaml"
    station.write_text("output: ~/runs/line 3\nrecord: {dir: /srv/fair-edge/runs}\n")
    cfg = load_station(station)
    assert cfg.output == Path(os.path.expanduser("~/runs/line 3")) and cfg.record.dir == Path("/srv/fair-edge/runs")


# ----------------------------------------------------------------------------- 4. a station file saved as UTF-16
@pytest.mark.parametrize("encoding, bom", [("utf-16-le", "FF FE"), ("utf-16-be", "FE FF")])
def test_a_station_file_saved_as_utf16_is_named_so(tmp_path, encoding, bom):
    """PowerShell 5's `>` writes UTF-16 with a BOM: the file was called "a binary file ... e.g. an image or a
    model"."""
    station = tmp_path / "station.yaml"
    station.write_bytes(("\ufeffbundle: b\ndecision: {threshold: 20}\n").encode(encoding))
    with pytest.raises(ConfigError) as refused:
        load_station(station)
    text = str(refused.value)
    assert f"station file {station} was saved as UTF-16 (it starts with the UTF-16 byte-order mark {bom}" in text
    assert "save it as UTF-8" in text and "binary" not in text


# ----------------------------------------------------------------------------- 5. bundle.json with a BOM
@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_ckpt_path):
    from export_fixtures import make_frames

    from fair_edge.export.build import BuildOptions, build_bundle
    from fair_edge.models.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("bom") / "b"
    options = BuildOptions("fp32", max_batch=1, command="fair-edge build ckpt.pt --out b")
    return build_bundle(load_checkpoint(tiny_ckpt_path), out, options, normal_frames=make_frames(12, seed=3)).bundle


def test_a_bundle_json_saved_with_a_utf8_bom_loads_and_its_checksum_still_guards_it(built, tmp_path):
    """Opened and saved unchanged by (old) Notepad, bundle.json gained a UTF-8 BOM and was refused as damaged
    ("Rebuild it")."""
    from fair_edge.export.bundle import MANIFEST, load_bundle

    root = tmp_path / "bundle"
    shutil.copytree(built.root, root)
    raw = (root / MANIFEST).read_bytes()
    (root / MANIFEST).write_bytes(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))
    assert load_bundle(root).threshold == built.threshold
    data = json.loads(raw)
    data["threshold"]["value"] += 1.0   # edited by hand: the checksum refuses it, BOM or not
    (root / MANIFEST).write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    with pytest.raises(BundleError, match=r"was changed after the build"):
        load_bundle(root)


# ----------------------------------------------------------------------------- 6. a section written on / off
@pytest.mark.parametrize("line, fix", [
    ("console: off", "write console: {enabled: false}"),
    ("metrics: on", "write metrics: {enabled: true}"),
    ("regions: no", "write regions: {enabled: false}"),
    ("mqtt: off", "mqtt: has no on / off switch: it is on with mqtt: {url: ...} and off with url: null"),
    ("camera: off", "camera: has no on / off switch"),
])
def test_a_section_written_on_or_off_is_refused_with_how_it_is_switched(tmp_path, line, fix):
    """`console: off` (the --console on|off spelling) said only "expected a mapping of settings, found False"."""
    station = tmp_path / "station.yaml"
    station.write_text(line + "\n")
    with pytest.raises(ConfigError) as refused:
        load_station(station)
    section = line.split(":")[0]
    assert f"{section}: expected a mapping of settings, found " in str(refused.value)
    assert fix in str(refused.value), str(refused.value)


def test_a_cameras_regions_written_off_is_told_its_enabled(tmp_path):
    station = tmp_path / "station.yaml"
    station.write_text("cameras:\n  - {name: a, source: x, regions: off}\n  - {name: b, source: y}\n")
    with pytest.raises(ConfigError, match=r"cameras\[0\] \(a\)\.regions: .*write regions: \{enabled: false\}"):
        load_station(station)


# ----------------------------------------------------------------------------- 7. the threshold writer's text
def test_applying_a_threshold_keeps_umlauts_and_polygons_readable(tmp_path):
    """The console's threshold apply rewrote "Dichtfläche" as "Dichtfl\\xE4che" and every polygon point as two
    lines of its own."""
    from fair_edge.console.tuning import write_station_threshold

    station = tmp_path / "station.yaml"
    station.write_text("bundle: b\nregions:\n  frame: [300, 300]\n  zones:\n    - {name: Dichtfläche, polygon: "
                       "[[0, 0], [100, 0], [100, 100]], max_count: 2}\n", encoding="utf-8")
    write_station_threshold(station, 17.25, load_station)
    raw = station.read_bytes()
    assert "name: Dichtfläche".encode("utf-8") in raw, raw
    assert b"\\x" not in raw and b"- [100, 0]\n" in raw and b"frame: [300, 300]\n" in raw, raw
    cfg = load_station(station)
    assert cfg.threshold == 17.25 and [z.name for z in cfg.regions.zones] == ["Dichtfläche"]


def test_a_stream_that_cannot_take_every_character_gets_escapes():
    """Where the locale's encoding is not UTF (Latin-1), text stays escaped: a "–" would fail the write."""
    import io

    from fair_edge.fields import dump_station_yaml

    stream = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    dump_station_yaml({"regions": {"zones": [{"name": "Dichtfläche – oben"}]}}, stream)
    stream.seek(0)
    assert "\\xE4" in stream.read()
    utf8 = io.StringIO()
    dump_station_yaml({"regions": {"zones": [{"name": "Dichtfläche – oben"}]}}, utf8)
    assert "Dichtfläche – oben" in utf8.getvalue()

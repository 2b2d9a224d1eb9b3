from pathlib import Path

import pytest

from fair_edge.errors import ConfigError
from fair_edge.station.config import StationConfig, load_station

GOOD = """
camera: {source: samples/, fps: 20, loop: true, queue_size: 8}
bundle: runs/bundle
backend: onnxruntime
batching: {max_batch: 4, max_wait_ms: 3}
decision: {threshold: 0.25}
output: out/station
reject: {sinks: ["modbus://127.0.0.1:5020?coil=0"], delay_ms: 350, pulse_ms: 40}
record: {save_ng_images: false}
"""


def test_station_file_loads(tmp_path):
    (tmp_path / "s.yaml").write_text(GOOD)
    cfg = load_station(tmp_path / "s.yaml")
    assert cfg.camera.fps == 20 and cfg.camera.loop and cfg.batching.max_batch == 4 and cfg.threshold == 0.25
    assert cfg.reject.delay_ms == 350 and cfg.reject.sinks == ("modbus://127.0.0.1:5020?coil=0",)
    assert str(cfg.record.dir) == "out/station" and cfg.record.save_ng_images is False
    assert cfg.override(threshold=0.5, backend=None).threshold == 0.5
    assert StationConfig().record.dir.name == "station"


@pytest.mark.parametrize("text,message", [
    ("camra: {source: 0}", "station.camra: unknown setting (did you mean 'camera'?)"),
    ("batching: {max_batch: 0}", "batching.max_batch: expected an integer in [1, 256], found 0"),
    ("backend: tensorrtx", "station.backend: expected one of auto"),
    ("decision: {threshold: high}", "decision.threshold: expected a number"),
    ("reject: {delay_ms: abc}", "reject.delay_ms: expected a number in [0, 86400000], found 'abc'"),
    ("camera: {full_policy: wait}", "camera.full_policy: expected one of auto | drop_oldest | drop_newest | block"),
    ("camera: [1, 2", "not valid YAML"),
])
def test_station_errors_name_the_field(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_station(tmp_path / "s.yaml")
    assert message in str(info.value) and "s.yaml" in str(info.value)


def test_missing_station_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_station(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text,field", [
    ("camera: {source: samples/, fps: 0}", "camera.fps"),
    ("camera: {source: samples/, fps: -5}", "camera.fps"),
    ("cameras: [{name: top, source: a/}, {name: side, source: b/, fps: 0}]", "cameras[1].fps"),
])
def test_fps_zero_is_refused_on_load_naming_the_field_and_the_fix(tmp_path, text, field):
    """A replay reads fps 0 as "as fast as possible": it passed the timed-line check (only ``fps: null`` was
    refused with reject sinks), replayed unpaced under drop_oldest and put reject pulses on a clock the frames
    do not keep. The docs give 0 no meaning: it is refused where it is read, with the two ways out."""
    (tmp_path / "s.yaml").write_text(text + "\nreject: {sinks: ['log://audit'], delay_ms: 300}\n")
    with pytest.raises(ConfigError) as info:
        load_station(tmp_path / "s.yaml")
    message = str(info.value)
    assert f"{field}: expected a rate in frames/s > 0, or null" in message
    assert "leave fps out" in message and "give the line's rate" in message


def test_fps_zero_from_a_flag_is_refused_too():
    """``fair-edge run --fps 0`` replaces camera.fps after the file is read: the settings refuse it when made."""
    from dataclasses import replace

    from fair_edge.station.config import CameraSettings

    with pytest.raises(ConfigError, match=r"camera\.fps: expected a rate in frames/s > 0.*--fps"):
        replace(StationConfig().camera, fps=0.0)
    assert CameraSettings(source="samples/", fps=12.5).fps == 12.5 and CameraSettings().fps is None


@pytest.mark.parametrize("text,field", [
    ("decision: {threshold: .inf}", "decision.threshold"),
    ("decision: {threshold: -.inf}", "decision.threshold"),
    ("reject: {sinks: ['log://audit'], delay_ms: .inf}", "reject.delay_ms"),
    ("batching: {max_batch: 4, max_wait_ms: .inf}", "batching.max_wait_ms"),
    ("camera: {source: samples/, fps: .inf}", "camera.fps"),
    ("reject: {pulse_ms: .nan}", "reject.pulse_ms"),
    ("record: {max_log_mb: .inf}", "record.max_log_mb"),
])
def test_infinite_numbers_are_refused_on_load(tmp_path, text, field):
    """YAML's .inf loaded: a threshold failed only at start, max_wait_ms .inf crashed the loop (OverflowError),
    delay_ms .inf killed the gate's thread and left the station deaf to SIGTERM."""
    (tmp_path / "s.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_station(tmp_path / "s.yaml")
    assert f"{field}: expected a finite number" in str(info.value)


@pytest.mark.parametrize("text,field", [
    ("batching: {max_batch: 4, max_wait_ms: 1.0e+300}", "batching.max_wait_ms"),
    ("reject: {sinks: ['log://audit'], delay_ms: 1.0e+300}", "reject.delay_ms"),
    ("reject: {pulse_ms: 1.0e+300}", "reject.pulse_ms"),
    ("reject: {min_gap_ms: 1.0e+300}", "reject.min_gap_ms"),
    ("reject: {late_ms: 1.0e+300}", "reject.late_ms"),
    ("reject: {handshake: {ack_timeout_ms: 1.0e+300}}", "reject.handshake.ack_timeout_ms"),
    ("reject: {handshake: {result_timeout_ms: 1.0e+300}}", "reject.handshake.result_timeout_ms"),
])
def test_times_longer_than_a_day_are_refused_on_load(tmp_path, text, field):
    """A finite but absurd time (a typo: 1e300 ms) loaded like .inf did, and crashed the loop or the gate's
    thread the same way (a wait longer than threading.TIMEOUT_MAX); every time field holds at most one day."""
    (tmp_path / "s.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"{field}: expected a number in \[[0-9.]+, 86400000\], found 1e\+300"):
        load_station(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(text.replace("1.0e+300", "86400000") + "\n")
    load_station(tmp_path / "s.yaml")


@pytest.mark.parametrize("text,field,why", [
    ("mqtt: {url: 'mqtt://10.0.0.9:1883/line3?keepalive=10'}", "mqtt.url", "did you mean 'keepalive_s'"),
    ("mqtt: {url: 'mqqt://10.0.0.9/line3'}", "mqtt.url", "expected mqtt://HOST:PORT/PREFIX"),
    ("reject: {sinks: ['modbus://10.0.0.5:502?unit=1&coil=0&pulse=50'], delay_ms: 400}", "reject.sinks[0]",
     "did you mean 'pulse_ms'"),
    ("reject: {sinks: ['log://a', 'modbus://10.0.0.5:502?unit=1'], delay_ms: 400}", "reject.sinks[1]",
     "exactly one of coil=N or register=N"),
    ("reject: {sinks: ['modbos://10.0.0.5:502?coil=0'], delay_ms: 400}", "reject.sinks[0]", "did you mean 'modbus://'"),
    ("reject: {fault_sinks: ['gpio://gpiochip0/seventeen']}", "reject.fault_sinks[0]", "gpio://gpiochip0/17"),
    ("reject: {fault_sinks: ['opcua://10.0.0.6:4840/?node=ns=2;s=Lamp&mode=blink']}", "reject.fault_sinks[0]",
     "mode"),
    ("reject: {sinks: ['log://'], encoder: 'sim://?counts=3', encoder_distance: 10}", "reject.encoder",
     "did you mean 'counts_per_s'"),
    ("reject: {sinks: ['log://'], encoder: 'modbus://10.0.0.5:502?bits=32', encoder_distance: 10}",
     "reject.encoder", "register=N"),
    ("cameras: [{name: a, source: a/, reject: ['log://', 'modbus://10.0.0.5?coil=0&unti=1']}, {name: b, source: b/}]\n"
     "group: {by: lane}", "cameras[0].reject[1]", "did you mean 'unit'"),
])
def test_urls_are_parsed_on_load_naming_the_field(tmp_path, text, field, why):
    """A URL that only `contains ://` loaded, passed install-service's check and then failed at every start
    (a systemd restart loop) naming only the URL. It is parsed on load now, by the station's own parsers."""
    (tmp_path / "s.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_station(tmp_path / "s.yaml")
    message = str(info.value)
    assert f"s.yaml: {field}: " in message and why in message and "fix the URL" in message


def test_good_urls_of_every_kind_load(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "reject: {sinks: ['modbus://10.0.0.5:502?unit=1&coil=0&pulse_ms=50', 'opcua://10.0.0.6:4840/?node=ns=2;s=R',"
        " 'jetson://BOARD/12', 'log://'], fault_sinks: ['gpio://gpiochip0/17?active=low'], encoder_distance: 800,\n"
        "  encoder: 'modbus://10.0.0.5:502?register=100&bits=32'}\n"
        "mqtt: {url: 'mqtt://10.0.0.9:1883/line3?client_id=st-1&keepalive_s=10'}\n")
    cfg = load_station(tmp_path / "s.yaml")
    assert len(cfg.reject.sinks) == 4 and cfg.mqtt.url.endswith("keepalive_s=10")


@pytest.mark.parametrize("value", ["yes", "false", "0", "''", "[save_ng_images: false]", "off"])
def test_a_record_section_that_is_not_a_mapping_is_refused(tmp_path, value):
    """``record: yes`` or a list crashed the load (TypeError: dict() argument after ** must be a mapping; the
    console's threshold write a 500) and ``record: false`` loaded as the defaults, NG images still saved, while
    ``metrics: false`` was refused: every record: that is not a mapping is refused now, with the fix."""
    (tmp_path / "s.yaml").write_text(f"bundle: b\nrecord: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_station(tmp_path / "s.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 's.yaml'}: record: expected a mapping of settings, found ")
    assert "record: {save_ng_images: false}" in message
    (tmp_path / "s.yaml").write_text("bundle: b\nrecord:\n")   # null: the defaults, as before
    assert load_station(tmp_path / "s.yaml").record.save_ng_images is True


@pytest.mark.parametrize("document", ["false", "0", "[bundle: b]", "bundle"])
def test_a_station_file_that_is_not_a_mapping_is_refused_naming_the_file(tmp_path, document):
    """A file holding just ``false`` (or 0) loaded as all defaults (``data or {}``); only an empty file is that."""
    (tmp_path / "s.yaml").write_text(document + "\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: station: expected a mapping of settings, found "):
        load_station(tmp_path / "s.yaml")
    for empty in ("", "# only a comment\n", "---\n"):
        (tmp_path / "s.yaml").write_text(empty)
        assert load_station(tmp_path / "s.yaml").batching.max_batch == 1


@pytest.mark.parametrize("text,key,lines", [
    ("bundle: b\ndecision:\n  threshold: 0.31\nreject:\n  sinks: [log://]\n  delay_ms: 400\ndecision:\n  roi: r.png\n",
     "'decision'", (2, 7)),
    ("decision:\n  threshold: 0.31\n  roi: r.png\n  threshold: 0.5\n", "'threshold'", (2, 4)),   # nested
    ("reject: {sinks: ['log://'], delay_ms: 400, delay_ms: 300}\n", "'delay_ms'", (1, 1)),      # flow style
    ("cameras:\n  - {name: a, source: a/, fps: 5, fps: 10}\n  - {name: b, source: b/}\n", "'fps'", (2, 2)),
])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, text, key, lines):
    """YAML keeps the last of two equal keys: a second ``decision:`` block appended at the bottom of the file
    silently wiped ``threshold: 0.31``. Both the station loader and the console's threshold writer refuse it now."""
    from fair_edge.console.tuning import write_station_threshold

    path = tmp_path / "s.yaml"
    path.write_text(text)
    for load in (lambda: load_station(path), lambda: write_station_threshold(path, 0.2, load_station)):
        with pytest.raises(ConfigError) as info:
            load()
        message = str(info.value)
        assert message.startswith(f"station file {path}: expected each key once in a mapping, found {key} twice "
                                  f"(line {lines[0]} and line {lines[1]})")
    assert "then apply the threshold again (it was not changed)" in message and path.read_text() == text


def test_yaml_merge_keys_and_anchors_still_load(tmp_path):
    """Only keys written twice in one mapping are refused: a key set beside a merge key (``<<: *anchor``)
    overrides the merged one, as YAML says, and an alias used twice is no duplicate."""
    (tmp_path / "s.yaml").write_text(
        "cameras:\n"
        "  - &top {name: top, source: a/, fps: 5, threshold: 0.4}\n"
        "  - <<: *top\n"
        "    name: side\n"
        "    source: b/\n"
        "group: {by: part, match: window}\n")
    cfg = load_station(tmp_path / "s.yaml")
    assert [(v.name, v.source, v.fps, v.threshold) for v in cfg.cameras] == [("top", "a/", 5, 0.4),
                                                                             ("side", "b/", 5, 0.4)]


def test_a_record_key_that_is_not_text_is_named_as_an_unknown_setting(tmp_path):
    """``record: {1: 2}`` went through dict(**...) and raised a TypeError (keywords must be strings)."""
    (tmp_path / "s.yaml").write_text("record: {1: 2}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: record\.1: unknown setting"):
        load_station(tmp_path / "s.yaml")


def test_a_tilde_in_any_path_field_means_the_home_folder(tmp_path, monkeypatch):
    """`output: ~/station_out` wrote into a folder literally named '~' in the current folder, and `bundle: ~/...`
    was refused as '<cwd>/~/...'. Now every path field of the station file expands '~' on load, as a shell does."""
    import cv2
    import numpy as np

    home = tmp_path / "home"
    home.mkdir()
    cv2.imwrite(str(home / "zone.png"), np.full((4, 6), 255, np.uint8))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "station.yaml"
    path.write_text("camera: {source: ~/clips}\nbundle: ~/bundles/b\noutput: ~/station_out\n"
                    "decision: {roi: ~/roi.png}\nrecord: {dir: ~/records}\n"
                    "regions: {frame: [6, 4], zones: [{name: z, mask: ~/zone.png}]}\n")
    cfg = load_station(path)
    assert (cfg.camera.source, cfg.bundle, cfg.output, cfg.roi, cfg.record.dir, cfg.regions.zones[0].mask) == (
        str(home / "clips"), home / "bundles" / "b", home / "station_out", home / "roi.png", home / "records",
        home / "zone.png")
    path.write_text("cameras:\n  - {name: a, source: ~/clips/a.avi, bundle: ~/b, roi: ~/a.png}\n"
                    "  - {name: b, source: '1'}\noutput: ~/out\nbundle: runs/b\n")
    cfg = load_station(path)
    a, b = cfg.cameras
    assert (a.source, a.bundle, a.roi, b.source) == (str(home / "clips" / "a.avi"), home / "b", home / "a.png", "1")
    assert cfg.output == cfg.record.dir == home / "out" and cfg.bundle == Path("runs/b")   # relative stays relative

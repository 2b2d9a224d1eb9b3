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
    ("reject: {delay_ms: abc}", "reject.delay_ms: expected a number >= 0, found 'abc'"),
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

"""reject:/record:/metrics: sections: validation names the field, expected and found values."""

from __future__ import annotations

from pathlib import Path

import pytest

from fair_edge.errors import ConfigError
from fair_edge.line.settings import MetricsSettings, RecordSettings, RejectSettings


def test_reject_defaults_and_values():
    s = RejectSettings.from_dict({"sinks": ["modbus://10.0.0.5:502?coil=0", "log://"],
                                  "delay_ms": 250, "pulse_ms": 40, "fail_safe": "alarm"})
    assert s.sinks == ("modbus://10.0.0.5:502?coil=0", "log://")
    assert s.delay_ms == 250.0 and s.pulse_ms == 40.0 and s.fail_safe == "alarm"
    assert RejectSettings.from_dict(None) == RejectSettings()


@pytest.mark.parametrize("data, message", [
    ({"delay_ms": "abc"}, "reject.delay_ms: expected a number in [0, 86400000], found 'abc'"),
    ({"delay_ms": -1}, "reject.delay_ms: expected a number in [0, 86400000], found -1"),
    ({"pulse_ms": True}, "reject.pulse_ms: expected a number"),
    ({"fail_safe": "stop"}, "reject.fail_safe: expected one of reject | alarm, found 'stop'"),
    ({"sinks": ["10.0.0.5:502"]}, "reject.sinks[0]: expected a URL"),
    ({"encoder_distance": 0}, "reject.encoder_distance: expected an integer >= 1, found 0"),
    ({"delay_ms": 10, "encoder_distance": 5}, "found both"),
    ({"delay": 10}, "reject.delay: unknown setting (did you mean 'delay_ms'?)"),
    ([1, 2], "reject: expected a mapping"),
])
def test_reject_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        RejectSettings.from_dict(data)
    assert message in str(err.value)


def test_record_settings():
    s = RecordSettings.from_dict({"dir": "/data/rec", "max_log_mb": 8, "keep_files": 3,
                                  "min_free_mb": 1000, "save_ng_images": False})
    assert s.dir == Path("/data/rec") and s.keep_files == 3 and not s.save_ng_images
    for data, message in [({"keep_files": 1.5}, "record.keep_files: expected an integer"),
                          ({"save_ng_images": "yes"}, "record.save_ng_images: expected true or false"),
                          ({"image_format": "bmp"}, "record.image_format: expected one of png | jpg"),
                          ({"dir": ""}, "record.dir: expected a non-empty string")]:
        with pytest.raises(ConfigError, match=message):
            RecordSettings.from_dict(data)


def test_metrics_settings():
    assert MetricsSettings.from_dict({}).host == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"metrics.port: expected an integer in \[0, 65535\]"):
        MetricsSettings.from_dict({"port": 70000})


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        RejectSettings().delay_ms = 3


def test_load_time_url_parsers_cover_every_sink_scheme():
    """Every scheme the station can open is parsed on load (a scheme added to one table and not the other
    would load unchecked, or be refused though it works)."""
    from fair_edge.line.sinks import SINK_SCHEMES, SINK_URL_PARSERS

    assert set(SINK_URL_PARSERS) == set(SINK_SCHEMES)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10 ** 400])
def test_a_number_field_refuses_what_no_float_holds_finitely(value):
    from fair_edge import fields

    with pytest.raises(ConfigError, match=r"reject\.delay_ms: expected a finite number >= 0, found .*\.inf"):
        fields.number("reject", "delay_ms", value, minimum=0)
    assert fields.number("reject", "delay_ms", 10 ** 6, minimum=0) == 1e6


def test_reject_and_mqtt_urls_are_parsed_when_read():
    from fair_edge.line.settings import MqttSettings

    with pytest.raises(ConfigError, match=r"^reject\.sinks\[0\]: .*unknown option 'pulse' \(did you mean 'pulse_ms'"):
        RejectSettings.from_dict({"sinks": ["modbus://10.0.0.5:502?unit=1&coil=0&pulse=50"]})
    with pytest.raises(ConfigError, match=r"^mqtt\.url: .*unknown option 'keepalive'.*fix the URL"):
        MqttSettings.from_dict({"url": "mqtt://10.0.0.9:1883/line3?keepalive=10"})
    assert MqttSettings.from_dict({"url": "mqtt://10.0.0.9/line3"}).url == "mqtt://10.0.0.9/line3"

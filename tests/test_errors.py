"""The one "did you mean" hint (errors.did_you_mean) and the messages built with it."""

import pytest

from fair_edge.cameras import CaptureSettings
from fair_edge.cli.common import check_width
from fair_edge.errors import ConfigError, SinkError, did_you_mean, lookup
from fair_edge.line.sinks import parse_sink_url, scheme_entry


def test_the_hint_names_the_closest_choice_as_written():
    assert did_you_mean("modbs", ("modbus", "opcua")) == " (did you mean 'modbus'?)"
    assert did_you_mean("modbs", ("modbus", "opcua"), suffix="://") == " (did you mean 'modbus://'?)"
    assert did_you_mean(1288, (32, 64, 128), sentence=True) == " Did you mean 128?"  # a number is shown unquoted
    assert did_you_mean(48, (32, 64, 128), sentence=True) == ""  # nothing close enough
    assert did_you_mean("zzz", ("modbus", "opcua")) == ""


def test_messages_that_use_it():
    with pytest.raises(ConfigError, match=r"^--width must be one of 32, 64, 128; found 1288\. Did you mean 128\?$"):
        check_width(1288)
    with pytest.raises(ConfigError, match=r"found 'drop_olds' \(did you mean 'drop_oldest'\?\)$"):
        CaptureSettings(full_policy="drop_olds")
    with pytest.raises(ConfigError, match=r"^precision must be one of a, bb; found 'BBB'\. Did you mean 'bb'\?$"):
        lookup({"a": 1, "bb": 2}, "BBB", "precision")
    with pytest.raises(SinkError, match=r"unknown sink scheme 'modbs' \(did you mean 'modbus://'\?\)"):
        scheme_entry({"modbus": 1, "log": 2}, parse_sink_url("modbs://h:502"), "sink")

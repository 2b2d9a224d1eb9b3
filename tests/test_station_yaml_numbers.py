"""Station-file numbers are read as YAML 1.2 reads them (``fields.StationLoader``), not YAML 1.1: a time written
with a leading zero (column-aligned) was octal (``delay_ms: 0420`` ran the reject gate at 272 ms, while the CLI's
--reject-delay-ms 0420 means 420), ``1:30`` was base 60 (90), and a threshold like ``2e-3`` was a string refused as
not a number."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from fair_edge.errors import ConfigError
from fair_edge.fields import StationLoader
from fair_edge.station.config import StationConfig, load_station


def _station(tmp_path, body: str):
    path = tmp_path / "station.yaml"
    path.write_text(textwrap.dedent(body))
    return load_station(path)


def _reject(delay: str, pulse: str) -> str:
    return f"""\
        reject:
          sinks: ["log://"]
          delay_ms: {delay}
          pulse_ms: {pulse}
        """


def test_a_leading_zero_time_is_decimal_not_octal(tmp_path):
    cfg = _station(tmp_path, _reject("0420", "050"))
    assert (cfg.reject.delay_ms, cfg.reject.pulse_ms) == (420, 50)   # YAML 1.1: 272 and 40


def test_a_number_an_older_release_read_as_octal_is_named_in_a_warning_with_both_values(tmp_path, caplog):
    """A site upgrading keeps its station file: ``delay_ms: 0750`` was 488 ms before (YAML 1.1 octal), 750 ms now;
    the change of meaning is logged naming the line and both values. A leading zero YAML 1.1 did not read as octal
    (``0789``: a string then, refused) is not."""
    with caplog.at_level("WARNING", logger="fair_edge.fields"):
        cfg = _station(tmp_path, _reject("0750", "5"))
    assert cfg.reject.delay_ms == 750
    warned = [r.getMessage() for r in caplog.records if "octal" in r.getMessage()]
    assert len(warned) == 1 and "line 3: 0750 is read as 750" in warned[0] and "octal 488" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="fair_edge.fields"):
        _station(tmp_path, _reject("0789", "50"))
    assert not [r for r in caplog.records if "octal" in r.getMessage()]


def test_a_minutes_seconds_time_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        _station(tmp_path, _reject("1:30", "50"))   # YAML 1.1: 90, silently
    assert "reject.delay_ms" in str(err.value) and "'1:30'" in str(err.value)
    assert "one number" in str(err.value)


def test_an_exponent_without_a_dot_is_a_float(tmp_path):
    cfg = _station(tmp_path, "decision:\n  threshold: 2e-3\n")   # YAML 1.1: the string '2e-3', refused
    assert cfg.threshold == pytest.approx(0.002)
    assert StationConfig.from_dict(yaml.load("decision: {threshold: 1.5E+2}", Loader=StationLoader)).threshold == 150


@pytest.mark.parametrize("text, value", [
    ("0420", 420), ("-007", -7), ("+12", 12), ("10_000", 10_000), ("0x1F", 31), ("0", 0),
    ("2e-3", 0.002), ("1.5e3", 1500.0), (".5", 0.5), ("1.", 1.0), ("0.25", 0.25),
    ("1:30", "1:30"), ("0o17", "0o17"), ("0b101", "0b101"), ("abc", "abc"), ("true", True), ("null", None),
])
def test_plain_scalars_resolve_as_the_yaml_1_2_core_schema(text, value):
    loaded = yaml.load(f"v: {text}", Loader=StationLoader)["v"]
    assert loaded == value and type(loaded) is type(value)


def test_inf_and_nan_are_still_floats_refused_by_the_number_check(tmp_path):
    loaded = yaml.load("[.inf, -.inf, .nan]", Loader=StationLoader)
    assert loaded[:2] == [float("inf"), float("-inf")] and loaded[2] != loaded[2]
    with pytest.raises(ConfigError, match=r"decision.threshold: expected a finite number.*\.inf"):
        _station(tmp_path, "decision:\n  threshold: .inf\n")


def test_a_key_given_twice_is_still_refused(tmp_path):
    with pytest.raises(ConfigError, match="twice"):
        _station(tmp_path, "decision:\n  threshold: 1\ndecision:\n  threshold: 2\n")


def test_the_console_writes_back_a_string_that_reads_as_a_number_quoted(tmp_path):
    """Applying a threshold rewrites the station file; a camera named "1e3" (a string in the file, a number to YAML
    1.2) stays a quoted string, so the station file still loads (YAML 1.1's dumper wrote it bare: 1000.0)."""
    from fair_edge.console.tuning import write_station_threshold
    from fair_edge.station.config import load_station

    path = tmp_path / "station.yaml"
    path.write_text('output: out\ncameras:\n  - {name: "1e3", source: "0"}\n  - {name: "0420", source: "1"}\n'
                    "group: {by: part, match: sequence}\n")
    write_station_threshold(path, 2.5, load_station, camera="1e3")
    cfg = load_station(path)
    assert [c.name for c in cfg.cameras] == ["1e3", "0420"] and cfg.cameras[0].threshold == 2.5

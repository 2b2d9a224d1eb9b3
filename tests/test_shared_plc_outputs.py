"""Two outputs of one station on one PLC address (a reject and a fault output on one coil, two lanes on one ejector
node): nothing was said when the station file was read, and each output then wrote over the other's levels. Now the
load logs a warning naming both settings and the address (``line.shared_outputs.warn_shared_outputs``); a warning,
not a refusal, since two lanes sharing one ejector may be wired so on purpose. An output on a register or node of
the PLC handshake is warned about too. Addresses are compared as written, the default port and unit filled in,
localhost / 127.0.0.1 / 127.1 one host (``plc_lock.shared_addresses``, no DNS asked). Each pair is warned about once
per process (``shared_outputs.WARNED``): the file's re-reads (SIGHUP, console threshold writes) do not repeat it;
each test here starts with a process that has warned about nothing (``fresh_process``)."""

from __future__ import annotations

import json
import logging

import pytest

from fair_edge.line import shared_outputs
from fair_edge.station.config import StationConfig, load_station

WARNS = "fair_edge.line.shared_outputs"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """The pairs warned about so far: none, as in a station process just started."""
    monkeypatch.setattr(shared_outputs, "WARNED", shared_outputs.WarnedPairs())


def load(reject: dict, cameras: list | None = None) -> StationConfig:
    """A station file with the given ``reject:`` and, when given, ``cameras:`` as lanes (``group.by: lane``)."""
    data = {"bundle": "/nonexistent/bundle", "reject": {"delay_ms": 400, **reject}}
    if cameras is None:
        data["camera"] = {"source": "/nonexistent", "fps": 20}
    else:
        data.update(cameras=cameras, group={"by": "lane"})
    return StationConfig.from_dict(data)


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WARNS and r.levelno == logging.WARNING]


def test_a_reject_and_a_fault_output_on_one_coil_are_warned_about_at_load_naming_both_and_the_coil(caplog):
    """The same coil written two ways (default port and unit left out in one URL, given in the other)."""
    with caplog.at_level(logging.WARNING, logger=WARNS):
        cfg = load({"sinks": ["modbus://10.0.0.5?coil=3"], "fault_sinks": ["modbus://10.0.0.5:502?unit=1&coil=3"]})
    assert cfg.reject.fault_sinks == ("modbus://10.0.0.5:502?unit=1&coil=3",)   # loaded: a warning, no refusal
    found = warnings(caplog)
    assert len(found) == 1, found
    assert found[0].startswith("reject.sinks[0] and reject.fault_sinks[0] both write modbus 10.0.0.5:502 unit 1 "
                               "coil 3: each writes over the other's levels there")
    assert "Two lanes sharing one ejector may be wired so on purpose" in found[0]


def test_two_lanes_on_one_opc_ua_node_are_warned_about_naming_both_lanes(caplog):
    lane = "opcua://PLC:4840/?node=ns=2;s=Eject"
    cameras = [{"name": "a", "source": "/nonexistent", "fps": 20, "reject": [lane]},
               {"name": "b", "source": "/nonexistent", "fps": 20, "reject": [lane.replace("PLC", "plc")]}]
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({}, cameras)
    assert [m.split(":", 1)[0] for m in warnings(caplog)] == [
        "cameras[0].reject[0] and cameras[1].reject[0] both write opcua plc"]
    assert "node ns=2;s=Eject" in warnings(caplog)[0]


@pytest.mark.parametrize("fault", ["modbus://10.0.0.5?coil=4", "modbus://10.0.0.5?register=3",
                                   "modbus://10.0.0.5?unit=2&coil=3", "modbus://10.0.0.6?coil=3", "log://"])
def test_outputs_on_different_addresses_are_not_warned_about(caplog, fault):
    """Another coil, a register of the same number (another address space), another unit or PLC, no PLC at all."""
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": ["modbus://10.0.0.5?coil=3"], "fault_sinks": [fault]})
    assert warnings(caplog) == []


@pytest.mark.parametrize("sink, fault", [
    ("modbus://localhost?coil=3", "modbus://127.0.0.1:502?coil=3"),
    ("modbus://127.1?coil=3", "modbus://127.0.0.1?unit=1&coil=3"),
    ("modbus://localhost?coil=3", "modbus://0x7f.1?coil=3"),
    ("modbus://[0:0::1]?coil=3", "modbus://[::1]?coil=3"),
    ("modbus://127.0.0.1?coil=3", "modbus://[::FFFF:7f00:1]?coil=3"),
    ("opcua://LOCALHOST/?node=ns=2;s=Eject", "opcua://[::ffff:127.0.0.1]:4840?node=ns=2;s=Eject"),
    ("modbus://PLC.line3.local.?coil=3", "modbus://plc.line3.local:502?coil=3"),
    ("modbus://[fd00:0:0::5]?coil=3", "modbus://[FD00::5]?coil=3"),
])
def test_one_address_spelled_two_ways_is_warned_about_naming_both_spellings(caplog, monkeypatch, sink, fault):
    """localhost is 127.0.0.1, a host name is compared case-insensitively without its trailing dot, an IP address
    in its one canonical form (IPv4 shorthand as inet_aton reads it: 127.1 is 127.0.0.1, as the locks resolve it;
    IPv4-mapped IPv6 as its IPv4 address); all without asking DNS (the start-time locks do that)."""
    def no_dns(*args, **kwargs):
        raise AssertionError(f"DNS asked at load: {args}")

    monkeypatch.setattr("socket.getaddrinfo", no_dns)
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": [sink], "fault_sinks": [fault]})
    found = warnings(caplog)
    assert len(found) == 1, found
    assert found[0].startswith("reject.sinks[0] and reject.fault_sinks[0] both write ")
    assert "Two lanes sharing one ejector may be wired so on purpose" in found[0]


@pytest.mark.parametrize("sink, fault", [
    ("modbus://127.0.0.2?coil=3", "modbus://127.0.0.3?coil=3"),
    ("modbus://localhost?coil=3", "modbus://127.0.0.2?coil=3"),
    ("opcua://[::1]/?node=ns=2;s=Eject", "opcua://[::ffff:127.0.0.2]/?node=ns=2;s=Eject"),
    ("modbus://[::1]?coil=3", "modbus://127.0.0.1?coil=3"),
    ("modbus://[::1]?coil=3", "modbus://[::ffff:127.0.0.1]?coil=3"),
])
def test_other_loopback_addresses_are_other_servers_and_not_warned_about(caplog, sink, fault):
    """Two test PLCs listening on 127.0.0.2:P and 127.0.0.3:P are two servers, as the start-time locks take them:
    every 127.x.x.x was read as this one machine, and the two warned about as one address. So are ::1 and
    127.0.0.1 (an IPv4 socket on 127.0.0.1 does not answer on ::1): they were warned about as one address while
    the locks took them as two."""
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": [sink], "fault_sinks": [fault]})
    assert warnings(caplog) == []


def test_the_warning_names_the_address_as_each_output_writes_it(caplog):
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": ["modbus://localhost?coil=3"], "fault_sinks": ["modbus://127.0.0.1?coil=3"]})
    assert warnings(caplog)[0].startswith(
        "reject.sinks[0] and reject.fault_sinks[0] both write modbus localhost:502 unit 1 coil 3 "
        "(reject.fault_sinks[0]: modbus 127.0.0.1:502 unit 1 coil 3): each writes over")


@pytest.mark.parametrize("sink, fault", [
    ("modbus://localhost?coil=3", "modbus://127.0.0.1:5020?coil=3"),   # another port: another server
    ("modbus://plc?coil=3", "modbus://10.0.0.5?coil=3"),               # a name and an address: only DNS could tell
    ("opcua://plc/?node=ns=2;s=Eject", "opcua://plc/?node=nsu=urn:plc;s=Eject"),   # only the server could tell
])
def test_spellings_that_only_the_network_could_match_are_not_warned_about(caplog, sink, fault):
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": [sink], "fault_sinks": [fault]})
    assert warnings(caplog) == []


def write_station(path, reject: dict) -> None:
    path.write_text(json.dumps({"bundle": "/nonexistent/bundle", "camera": {"source": "/nonexistent", "fps": 20},
                                "reject": {"delay_ms": 400, **reject}}))


def test_re_reading_the_same_file_warns_nothing_new_and_a_new_overlap_warns_once(caplog, tmp_path):
    """The station file is read again while the station runs (SIGHUP's reload, a console threshold write, which
    loads the file it writes first): the same pair warned at every re-read. Now once per process for each pair;
    an edit that adds an overlap warns about that one only."""
    from fair_edge.console.tuning import write_station_threshold

    station_file = tmp_path / "station.yaml"
    write_station(station_file, {"sinks": ["modbus://10.0.0.5?coil=3"], "fault_sinks": ["modbus://10.0.0.5?coil=3"]})
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load_station(station_file)                                      # the start
        assert len(warnings(caplog)) == 1, warnings(caplog)
        write_station_threshold(station_file, 0.5, load_station)        # the console's threshold write
        load_station(station_file)                                      # the reload after it
        load_station(station_file)                                      # a SIGHUP
        assert len(warnings(caplog)) == 1, warnings(caplog)
        write_station(station_file, {"sinks": ["modbus://10.0.0.5?coil=3", "modbus://10.0.0.5?coil=8"],
                                     "fault_sinks": ["modbus://10.0.0.5?coil=3", "modbus://10.0.0.5?coil=8"]})
        load_station(station_file)
        load_station(station_file)
    found = warnings(caplog)
    assert len(found) == 2, found
    assert found[1].startswith("reject.sinks[1] and reject.fault_sinks[1] both write modbus 10.0.0.5:502 unit 1 "
                               "coil 8: ")


def test_a_pair_of_another_address_is_a_new_pair(caplog):
    """The same two settings moved together onto another coil: that coil is named."""
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": ["modbus://10.0.0.5?coil=3"], "fault_sinks": ["modbus://10.0.0.5?coil=3"]})
        load({"sinks": ["modbus://10.0.0.5?coil=4"], "fault_sinks": ["modbus://10.0.0.5?coil=4"]})
    assert [m.split(": each")[0].rsplit(" ", 1)[-1] for m in warnings(caplog)] == ["3", "4"]


HANDSHAKE = "modbus://10.0.0.5"   # the default block: trigger 0, part_id 1-2, ack 3, ..., result 10, score 11


@pytest.mark.parametrize("setting, url, signal", [
    ("sinks", "modbus://10.0.0.5?register=10&value=1", "reject.handshake.modbus.result"),
    ("sinks", "modbus://10.0.0.5:502?unit=1&register=2", "reject.handshake.modbus.part_id"),   # its second word
    ("fault_sinks", "modbus://10.0.0.5?register=0", "reject.handshake.modbus.trigger"),
])
def test_an_output_on_a_handshake_register_is_warned_about_naming_both_and_the_fix(caplog, setting, url, signal):
    """A ``register=`` reject sink on the PLC the handshake talks to lands easily in its default block 0..11."""
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({setting: [url], "handshake": {"url": HANDSHAKE}})
    found = warnings(caplog)
    assert len(found) == 1, found
    assert found[0].startswith(f"reject.{setting}[0] writes modbus 10.0.0.5:502 unit 1 holding register ")
    assert f"a signal of the PLC handshake (reject.handshake.url, {signal}): a pulse there is read as" in found[0]
    assert "give the output an address no handshake signal uses, or move the signal" in found[0]


def test_a_sink_on_a_handshake_node_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": ["opcua://localhost:4840/?node=ns=2;s=Ready"],
              "handshake": {"url": "opcua://127.0.0.1:4840/", "opcua": {"ready": "ns=2;s=Ready"}}})
    assert [m.split(": a pulse")[0] for m in warnings(caplog)] == [
        "reject.sinks[0] writes opcua localhost:4840 node ns=2;s=Ready (reject.handshake.url, "
        "reject.handshake.opcua.ready: opcua 127.0.0.1:4840 node ns=2;s=Ready), a signal of the PLC handshake "
        "(reject.handshake.url, reject.handshake.opcua.ready)"]


def test_a_sink_on_a_handshake_node_by_a_url_of_another_path_is_warned_about(caplog):
    """The server answers on host:port whatever path a URL names (the test PLC at ``/fair/`` took a path-less sink's
    write on its Ready node): the path was compared, and this pair went unwarned."""
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": ["opcua://127.0.0.1:4840/?node=ns=2;s=Ready"],
              "handshake": {"url": "opcua://127.0.0.1:4840/fair/"}})
    assert [m.split(": a pulse")[0] for m in warnings(caplog)] == [
        "reject.sinks[0] writes opcua 127.0.0.1:4840 node ns=2;s=Ready (reject.handshake.url, "
        "reject.handshake.opcua.ready: opcua 127.0.0.1:4840/fair node ns=2;s=Ready), a signal of the PLC handshake "
        "(reject.handshake.url, reject.handshake.opcua.ready)"]


def test_two_outputs_on_one_node_by_urls_of_different_paths_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": ["opcua://plc:4840/line3?node=ns=2;s=Eject"],
              "fault_sinks": ["opcua://plc/ua/?node=ns=2;s=Eject"]})
    assert [m.split(": each")[0] for m in warnings(caplog)] == [
        "reject.sinks[0] and reject.fault_sinks[0] both write opcua plc:4840/line3 node ns=2;s=Eject "
        "(reject.fault_sinks[0]: opcua plc:4840/ua node ns=2;s=Eject)"]


@pytest.mark.parametrize("sink", ["modbus://10.0.0.5?coil=10", "modbus://10.0.0.5?register=12",
                                  "modbus://10.0.0.5?unit=2&register=10", "modbus://10.0.0.6?register=10"])
def test_a_sink_beside_the_handshake_registers_is_not_warned_about(caplog, sink):
    """A coil of the same number (another address space), the register after the block, another unit or PLC."""
    with caplog.at_level(logging.WARNING, logger=WARNS):
        load({"sinks": [sink], "handshake": {"url": HANDSHAKE}})
    assert warnings(caplog) == []


def run_with_reject(tmp_path, reject: dict, flag: str) -> list[str]:
    """`fair-edge run --station FILE --reject FLAG` with no bundle there: refused after the flags are applied. The
    shared-address warnings it printed (the command sets up its own log handler: read from its output)."""
    from typer.testing import CliRunner

    from fair_edge.cli import app

    station_file = tmp_path / "station.yaml"
    station_file.write_text(json.dumps({"bundle": str(tmp_path / "no_bundle"), "output": str(tmp_path / "out"),
                                        "camera": {"source": str(tmp_path), "fps": 20},
                                        "reject": {"delay_ms": 400, **reject}}))
    result = CliRunner().invoke(app, ["run", "--station", str(station_file), "--reject", flag, "--console", "off"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "no_bundle does not exist" in result.output, result.output   # after the flags
    return [line for line in result.output.splitlines() if "both write" in line or "of the PLC handshake" in line]


def test_a_command_line_reject_on_the_files_fault_coil_is_warned_about(tmp_path):
    """--reject replaces reject.sinks after the file was read: before, the file's check never saw it."""
    found = run_with_reject(tmp_path, {"fault_sinks": ["modbus://10.0.0.5?coil=0"]}, "modbus://10.0.0.5:502?coil=0")
    assert len(found) == 1, found
    assert "reject.sinks[0] and reject.fault_sinks[0] both write modbus 10.0.0.5:502 unit 1 coil 0" in found[0]


def test_a_shared_coil_the_file_was_warned_about_is_not_warned_again_after_the_command_line(tmp_path):
    """The file's reject and fault outputs share coil 0; --reject names the same coil (with the default port): one
    warning, the file's."""
    found = run_with_reject(tmp_path, {"sinks": ["modbus://10.0.0.5?coil=0"],
                                       "fault_sinks": ["modbus://10.0.0.5?coil=0"]}, "modbus://10.0.0.5:502?coil=0")
    assert len(found) == 1, found


def test_a_command_line_reject_on_a_handshake_register_is_warned_about(tmp_path):
    found = run_with_reject(tmp_path, {"handshake": {"url": HANDSHAKE}}, "modbus://10.0.0.5?register=4&value=1")
    assert len(found) == 1, found
    assert ("reject.sinks[0] writes modbus 10.0.0.5:502 unit 1 holding register 4, a signal of the PLC handshake "
            "(reject.handshake.url, reject.handshake.modbus.ready)") in found[0]


def test_a_command_line_reject_on_a_lane_station_is_refused_as_in_the_file():
    """A lane station rejects through its cameras' own outputs: reject.sinks in the file is refused, and --reject
    (``override``) was accepted, its output never driven."""
    import dataclasses

    from fair_edge.errors import ConfigError

    lanes = load({}, cameras=[{"name": "a", "source": "/nonexistent/a", "fps": 20, "reject": ["log://a"]},
                              {"name": "b", "source": "/nonexistent/b", "fps": 20, "reject": ["log://b"]}])
    flag = dataclasses.replace(lanes.reject, sinks=("modbus://10.0.0.5:502?coil=3",))
    with pytest.raises(ConfigError, match=r"reject.sinks \(--reject\): a lane station .* move modbus://10.0.0.5"):
        lanes.override(reject=flag)
    assert lanes.override(threshold=0.5).threshold == 0.5   # other flags still apply

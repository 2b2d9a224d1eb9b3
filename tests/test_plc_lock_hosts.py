"""PLC-output locks compared addresses as written: a station file with ``host: localhost`` and another with
``host: 127.0.0.1`` (one Modbus server, one coil) both started and both wrote. Now the host of a lock key is
resolved to its IP addresses (``plc_lock.host_addresses``), one lock each, default ports filled in; a host that
does not resolve is locked by its name as written, lower-case.

The first station is a real process holding its locks until its stdin closes (no clock); the locks go to a folder
of the test's own (``FAIR_EDGE_LOCK_DIR``)."""

from __future__ import annotations

import logging
import socket

import pytest

from fair_edge.errors import ConfigError
from fair_edge.line import plc_lock
from fair_edge.line.handshake.settings import HandshakeSettings
from fair_edge.line.plc_lock import hold_plc_outputs, sink_outputs
from lock_children import holding_child

HOLDER = """
import sys
from fair_edge.line.plc_lock import hold_plc_outputs, sink_outputs
with hold_plc_outputs(sink_outputs("reject.sinks", [sys.argv[1]]), "fair-edge run --station /etc/A.yaml",
                      lambda output, holder: holder):
    print("held", flush=True)
    sys.stdin.read()   # until the test closes our stdin
"""


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    folder = tmp_path / "locks"
    monkeypatch.setenv("FAIR_EDGE_LOCK_DIR", str(folder))
    return folder


def first_station(url: str):
    """A child process holding the lock of the sink ``url``'s PLC output until the block ends; yields its pid."""
    return holding_child(HOLDER, url)


def second_station(url: str):
    """The second station's hold on the sink ``url``'s PLC output (refused as ``station.locks`` refuses it)."""
    from fair_edge.station.locks import plc_busy

    return hold_plc_outputs(sink_outputs("reject.sinks", [url]), "fair-edge run --station /etc/B.yaml", plc_busy)


def lock_keys(url: str) -> dict:
    """The lock keys of the sink ``url``'s PLC output -> the output each locks."""
    return plc_lock.lock_keys(sink_outputs("reject.sinks", [url]))


def keys(url: str) -> set[str]:
    return set(lock_keys(url))


def test_localhost_and_its_address_are_one_lock_and_other_ports_are_not():
    assert keys("modbus://localhost?coil=0") & keys("modbus://127.0.0.1:502?unit=1&coil=0")
    assert keys("modbus://LocalHost:502?coil=0") & keys("modbus://127.0.0.1?coil=0")
    assert not keys("modbus://localhost:502?coil=0") & keys("modbus://127.0.0.1:503?coil=0")
    assert keys("opcua://localhost/ua?node=ns=2;s=Reject") & keys("opcua://127.0.0.1:4840/ua?node=ns=2;s=Reject")


def test_an_opc_ua_output_is_locked_with_its_urls_path_and_without_it():
    """The warning compares OPC UA outputs without their URL's path (``PlcOutput.compared``); the locks take both
    keys: the one with the path, named as before (a station started after an upgrade still meets a running older
    one, which took only that one), and the one without it, which every station on that node takes."""
    with_path, without = (sink_outputs("reject.sinks", [url])[0] for url in (
        "opcua://10.0.0.5:4840/fair/?node=ns=2;s=Ready", "opcua://10.0.0.5/?node=ns=2;s=Ready"))
    assert with_path.compared == without.compared
    assert list(plc_lock.lock_keys([with_path])) == ["opcua://10.0.0.5:4840/fair#ns=2;s=Ready",
                                                     "opcua://10.0.0.5:4840#ns=2;s=Ready"]
    assert list(plc_lock.lock_keys([without])) == ["opcua://10.0.0.5:4840#ns=2;s=Ready"]
    handshake = HandshakeSettings.from_dict({"url": "opcua://10.0.0.5:4840/fair/"})
    assert "opcua://10.0.0.5:4840#ns=2;s=Trigger" in plc_lock.lock_keys(plc_lock.handshake_outputs(handshake))
    assert plc_lock.lock_name("opcua://10.0.0.5:4840/fair#ns=2;s=Ready") == \
        "plc-opcua_10.0.0.5_4840_fair_ns_2_s_Ready-86168ac45b.lock"


def test_a_modbus_output_keeps_its_one_lock_file():
    """Modbus URLs have no path: one key per address, its file named as before."""
    assert list(lock_keys("modbus://10.0.0.5?unit=1&coil=0")) == ["modbus://10.0.0.5:502/1/coil/0"]
    assert plc_lock.lock_name("modbus://10.0.0.5:502/1/coil/0") == \
        "plc-modbus_10.0.0.5_502_1_coil_0-e3999e7797.lock"


@pytest.mark.parametrize("first, second", [
    ("opcua://127.0.0.1:4840/fair/?node=ns=2;s=Reject", "opcua://127.0.0.1:4840/?node=ns=2;s=Reject"),
    ("opcua://127.0.0.1:4840/?node=ns=2;s=Reject", "opcua://127.0.0.1:4840/fair/?node=ns=2;s=Reject"),
    ("opcua://127.0.0.1:4840/a?node=ns=2;s=Reject", "opcua://127.0.0.1:4840/b?node=ns=2;s=Reject"),
])
def test_a_second_station_on_the_same_node_under_another_url_path_is_refused(first, second):
    with first_station(first) as pid:
        with pytest.raises(ConfigError) as refused:
            with second_station(second):
                pass
    assert f"pid {pid}" in str(refused.value)


def test_a_station_takes_its_own_node_under_two_paths_and_again_inside():
    """One station naming one node under two paths (a sink and the handshake) holds each key once, and taking its
    locks again inside (as a reload does) is no deadlock and no refusal."""
    outputs = sink_outputs("reject.sinks", ["opcua://127.0.0.1/fair?node=ns=2;s=X", "opcua://127.0.0.1/?node=ns=2;s=X"])
    with hold_plc_outputs(outputs, "A", lambda output, holder: holder):
        with hold_plc_outputs(outputs[::-1], "A", lambda output, holder: holder):
            pass


@pytest.mark.parametrize("url", ["modbus://127.1?coil=0", "modbus://0x7f.1?coil=0",
                                 "modbus://[::ffff:127.0.0.1]?coil=0"])
def test_the_warning_compares_an_address_as_its_lock_takes_it(url):
    """IPv4 shorthand (``127.1``, which the resolver reads as 127.0.0.1) and an IPv4-mapped IPv6 address are
    127.0.0.1 for the warning (``compared``) and the locks alike; ``::1`` is another address for both."""
    plain, written = (sink_outputs("reject.sinks", [u])[0] for u in ("modbus://127.0.0.1?coil=0", url))
    assert written.compared == plain.compared
    assert set(plc_lock.lock_keys([written])) == {"modbus://127.0.0.1:502/1/coil/0"}
    ipv6 = sink_outputs("reject.sinks", ["modbus://[::1]?coil=0"])[0]
    assert ipv6.compared != plain.compared
    assert set(plc_lock.lock_keys([ipv6])) == {"modbus://[::1]:502/1/coil/0"}


def test_a_second_station_on_the_same_coil_by_another_host_name_is_refused_naming_the_first(tmp_path):
    with first_station("modbus://localhost?coil=0") as pid:
        with pytest.raises(ConfigError) as refused:
            with second_station("modbus://127.0.0.1:502?unit=1&coil=0"):
                pass
        with second_station("modbus://127.0.0.1:503?coil=0"):   # another server (port): not refused
            pass
    text = " ".join(str(refused.value).split())
    assert f"pid {pid}, fair-edge run --station /etc/A.yaml" in text, text
    assert "modbus 127.0.0.1:502 unit 1 coil 0" in text and "reject.sinks[0]" in text, text


def test_a_name_of_several_addresses_collides_on_any_of_them_and_is_shown_resolved(monkeypatch, tmp_path):
    """A PLC's name resolving to an IPv4 and an IPv6 address (``localhost`` on most systems, ``::1`` too): one
    lock per address, so a station naming either address is refused; the refusal names the address it met."""
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host == "plc-a.line":
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::5", 0, 0, 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(plc_lock.socket, "getaddrinfo", fake)
    named = lock_keys("modbus://plc-a.line?coil=0")
    assert sorted(named) == ["modbus://10.0.0.5:502/1/coil/0", "modbus://[fd00::5]:502/1/coil/0"]
    shown = named["modbus://10.0.0.5:502/1/coil/0"].shown
    assert shown == "modbus plc-a.line:502 unit 1 coil 0 (plc-a.line is 10.0.0.5)"
    assert keys("modbus://[fd00::5]?coil=0") == {"modbus://[fd00::5]:502/1/coil/0"}
    assert keys("modbus://10.0.0.5?coil=0") == {"modbus://10.0.0.5:502/1/coil/0"}


def test_a_host_that_does_not_resolve_is_locked_by_its_name_lower_case(monkeypatch, caplog):
    def unresolved(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(plc_lock.socket, "getaddrinfo", unresolved)
    caplog.set_level(logging.DEBUG, logger="fair_edge.line.plc_lock")
    assert keys("modbus://PLC-B.Line:502?coil=0") == keys("modbus://plc-b.line?coil=0") == \
        {"modbus://plc-b.line:502/1/coil/0"}
    assert any("'plc-b.line' not resolved" in r.getMessage() for r in caplog.records), caplog.text


def test_two_stations_take_their_shared_locks_in_one_order_so_one_of_two_started_at_once_runs(monkeypatch):
    """Locks are tried without waiting, so two stations naming one OPC UA node under two URL paths in opposite
    orders, started at the same moment, could each take its first key and both be refused on the other's: neither
    ran. Every station takes its keys sorted, so both start with the same key and the first to take it runs.
    Before, each took them in its outputs' order (A: with the path first; B: without it first)."""
    taken: dict[str, list[str]] = {}
    real_hold = plc_lock.hold_lock

    def recording(folder, name, what, busy, **kwargs):
        taken.setdefault(what, []).append(name)
        return real_hold(folder, name, what, busy, **kwargs)

    monkeypatch.setattr(plc_lock, "hold_lock", recording)
    a = sink_outputs("reject.sinks", ["opcua://10.0.0.5:4840/fair?node=ns=2;s=R"])
    b = sink_outputs("reject.sinks", ["opcua://10.0.0.5:4840/?node=ns=2;s=R",
                                      "opcua://10.0.0.5:4840/fair?node=ns=2;s=R"])
    for what, outputs in (("A", a), ("B", b)):
        with hold_plc_outputs(outputs, what, lambda output, holder: holder):
            pass
    assert len(taken["A"]) == len(taken["B"]) == 2
    assert taken["A"] == taken["B"]

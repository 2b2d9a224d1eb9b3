"""One station per PLC output: an exclusive lock on each PLC address a station writes, held while it runs.

Two stations wired to the same PLC outputs (a copy of a station file started with another ``--out``, two station
files with one ``reject.handshake.url``) both took every trigger and answered every part, and the second one's
fault sink wrote its resting OFF over the first one's latched alarm. The output-folder lock cannot see that (the
folders differ), so a station also holds one lock per address its PLC outputs write (``station.locks.plc_outputs``
gathers them): a reject or fault sink's coil / holding register / node (``sink_outputs``) and every register / node
the handshake writes, the PLC's ``trigger`` and ``ack`` included (``handshake_outputs``). ``hold_plc_outputs``
takes them all before any of them is opened; a second station is refused (ConfigError) naming the address, the
running station's pid and station file, and the setting that moves it.

The locks are ``fair_edge.runlock``'s flocks (gone with the process however it ends), one file per address in one
folder every station of the machine uses (``lock_dir``). An address is the station file's, normalised: the default
port (502, 4840) and unit (1) filled in, and the host resolved (``host_addresses``: ``socket.getaddrinfo``) to its
IP addresses, one lock per address, so the same server named two ways (``localhost`` in one file, ``127.0.0.1`` in
another) is one lock; a host that does not resolve is taken as written, lower-case. An OPC UA node is locked twice,
with its URL's path and without (``opcua://10.0.0.5:4840/fair#ns=2;s=Reject`` and ``opcua://10.0.0.5:4840#...``):
the server answers on host:port whatever path a URL names, so two stations whose URLs differ only in the path meet
on the lock without it, and one started after an upgrade still meets an older one holding the lock with it (older
stations took only that one). Only the host is resolved: a
node named ``ns=2;...`` in one file and ``nsu=URI;...`` in another is not recognised as one; a station on another
machine is not seen. Sinks that drive no PLC address (``log://``; GPIO lines, which the kernel
gives to one process at a time) take no lock. Reading is not writing: ``reject.encoder`` takes none.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..runlock import hold_lock
from .handshake.address import modbus_address
from .handshake.settings import ACK, STATION_SIGNALS, TRIGGER, HandshakeSettings
from .sinks.modbus import parse_modbus_url
from .sinks.opcua import parse_opcua_url
from .sinks.urls import SinkUrl, parse_sink_url

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "FAIR_EDGE_LOCK_DIR"        # a folder for the PLC-output locks instead of the default (tests)
SYSTEM_LOCK_DIR = Path("/run/lock")        # FHS: lock files, emptied at boot; its fair-edge/ folder when writable
FALLBACK_LOCK_DIR = "fair-edge-locks"      # under the temp folder where /run/lock is missing or not writable
MODBUS_PORT, OPCUA_PORT, MODBUS_UNIT = 502, 4840, 1
COIL, HOLDING_REGISTER = "coil", "holding register"   # Modbus address spaces: coil 0 and register 0 differ
LOOPBACK = "127.0.0.1"   # what the shared-address warning takes localhost for (offline_host)
IPV4_FORMS = re.compile(r"[0-9a-fx.]+")   # text inet_aton may read as IPv4 (127.1, 0x7f.1), never a space or ':'
HANDSHAKE_WRITES = (TRIGGER, ACK, *STATION_SIGNALS)   # its own signals, and the PLC's trigger and ack it sets back to 0


@dataclass(frozen=True)
class PlcOutput:
    """One PLC address a station writes. key: the address normalised as written (``modbus://10.0.0.5:502/1/coil/0``;
    the locks are taken on ``lock_keys``, its host resolved); shown: the address in words (``modbus 10.0.0.5:502
    unit 1 coil 0``); setting: the station file's setting that names it (``reject.fault_sinks[0]``); host: the host
    as written, lower-case (``key``'s, after ``scheme://``); path: an OPC UA URL's path as ``key`` holds it
    (``/fair``; a Modbus output has none), left out of ``compared`` and kept in one of its two lock keys."""

    key: str
    shown: str
    setting: str
    host: str = ""
    path: str = ""

    @property
    def compared(self) -> str:
        """``key`` as the shared-address warning compares it, with no DNS lookup: its host ``offline_host``'s and
        without ``path`` (``modbus://localhost:502/1/coil/0`` and ``modbus://127.0.0.1:502/1/coil/0`` compare equal,
        so do ``opcua://10.0.0.5:4840/fair#ns=2;s=Ready`` and ``opcua://10.0.0.5:4840#ns=2;s=Ready``: a server
        answers on its host:port whatever path a client's URL has; only a gateway routing by path would differ, and
        a warning too many there is cheaper than one missed). The locks take it both ways (``locked_as``)."""
        return self.without_path(self.with_host(offline_host(self.host)))

    def without_path(self, key: str) -> str:
        """``key`` (this output's, its host replaced or not) without ``path``: ``opcua://10.0.0.5:4840/fair#ns=2;s=X``
        -> ``opcua://10.0.0.5:4840#ns=2;s=X``; a key with no path as it is."""
        server, node_mark, node = key.partition("#")
        return f"{server.removesuffix(self.path)}{node_mark}{node}"

    def locked_as(self, address: str) -> tuple[str, ...]:
        """The lock keys of this output at ``address`` (an IP address ``host_addresses`` gave): ``with_host``'s key,
        and for an OPC UA URL with a path the same without it (``opcua://10.0.0.5:4840/fair#ns=2;s=X``,
        ``opcua://10.0.0.5:4840#ns=2;s=X``): the first meets stations that took only that one (older ones), the
        second every station on this node whatever path its URL names."""
        key = self.with_host(address)
        return tuple(dict.fromkeys((key, self.without_path(key))))

    def with_host(self, address: str) -> str:
        """``key`` with its host replaced by ``address`` (IPv6 in brackets): with an IP address ``host_addresses``
        gave, the key of one of this output's locks; with ``offline_host``'s, ``compared``."""
        scheme, rest = self.key.split("://", 1)
        written = f"[{self.host}]" if ":" in self.host else self.host
        placed = f"[{address}]" if ":" in address else address
        return f"{scheme}://{placed}{rest[len(written):]}"


def offline_host(host: str) -> str:
    """``host`` (a sink URL's host, lower-case; IPv6 without brackets) as the shared-address warning compares it
    when the station file is read, without asking DNS (that is the start-time locks' ``host_addresses``): an IP
    address as ``ip_text`` writes it (``127.1`` -> ``127.0.0.1``, ``0:0::a`` -> ``::a``, ``::ffff:127.0.0.2`` ->
    ``127.0.0.2``); ``localhost`` as ``LOOPBACK`` (127.0.0.1: the locks also meet ``::1`` where ``/etc/hosts`` names
    it localhost too, the warning does not); a name as written without a trailing dot (``plc.local.`` ->
    ``plc.local``). ``::1`` and ``127.0.0.1`` are two sockets, as ``127.0.0.2`` and ``127.0.0.3`` are: a server
    listening on one (an IPv4 socket bound to ``127.0.0.1``) does not answer on the other, so they are two
    addresses here as in the locks."""
    name = host.lower().rstrip(".")
    if name == "localhost":
        return LOOPBACK
    return ip_text(name) or name


def ip_text(text: str) -> str | None:
    """``text`` as the one IP address it names, read as the resolver reads a numeric host (no DNS): IPv6 in
    ``ipaddress``'s form, IPv4-mapped IPv6 as its IPv4 address (``::ffff:10.0.0.5`` connects to ``10.0.0.5``), IPv4
    in any form ``socket.inet_aton`` takes (``127.1``, ``10.1.2``, ``0x7f.1``: getaddrinfo reads them so) dotted;
    None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if not IPV4_FORMS.fullmatch(text):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:502``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def modbus_output(url: SinkUrl, unit: int, space: str, address: int, setting: str) -> PlcOutput:
    """A Modbus coil or holding register (``space``) at ``address`` of ``unit`` on the server ``url`` names."""
    where = hostport(url.host, url.port or MODBUS_PORT)
    return PlcOutput(f"modbus://{where}/{unit}/{space}/{address}", f"modbus {where} unit {unit} {space} {address}",
                     setting, url.host)


def opcua_output(url: SinkUrl, node: str, setting: str) -> PlcOutput:
    """The node ``node`` (as written: ``ns=2;s=Reject``) of the OPC UA server ``url`` names (without its user)."""
    path = url.path.rstrip("/")
    where = f"{hostport(url.host, url.port or OPCUA_PORT)}{path}"
    return PlcOutput(f"opcua://{where}#{node}", f"opcua {where} node {node}", setting, url.host, path)


def sink_outputs(setting: str, urls: Sequence[str]) -> list[PlcOutput]:
    """The PLC addresses of reject / fault sink URLs (``setting``: e.g. ``reject.sinks``; each is named with its
    index): a ``modbus://`` sink's coil or register, an ``opcua://`` sink's node; other schemes none."""
    out = []
    for i, raw in enumerate(urls):
        url, named = parse_sink_url(raw), f"{setting}[{i}]"
        if url.scheme == "modbus":
            target, _ = parse_modbus_url(url)
            space, address = (COIL, target.coil) if target.coil is not None else (HOLDING_REGISTER, target.register)
            out.append(modbus_output(url, target.unit, space, address, named))
        elif url.scheme == "opcua":
            out.append(opcua_output(url, parse_opcua_url(url)[0].node, named))
    return out


def shared_addresses(outputs: Iterable[PlcOutput]) -> list[tuple[PlcOutput, PlcOutput]]:
    """(first, later) for each of ``outputs`` whose address an earlier one names too, in order: addresses compared by
    ``compared``, as the station file writes them with the default port and unit filled in, an OPC UA URL's path left
    out, the host lower-case and an IP address in one form (``offline_host``: ``localhost``, ``127.0.0.1`` and
    ``127.1`` match, ``::1`` and ``127.0.0.2`` are others; a name and its IP address do not, nor ``ns=`` and
    ``nsu=`` node ids: that needs DNS or the OPC UA server)."""
    first: dict[str, PlcOutput] = {}
    pairs = []
    for output in outputs:
        if output.compared in first:
            pairs.append((first[output.compared], output))
        else:
            first[output.compared] = output
    return pairs


def handshake_outputs(settings: HandshakeSettings, setting: str = "reject.handshake",
                      signals: tuple[str, ...] = HANDSHAKE_WRITES) -> list[PlcOutput]:
    """The register(s) / node of each of ``signals`` (default: every one the handshake writes) and of the region
    signals given an address; none while the handshake is off. Each is named by the URL's setting and the signal's
    (``reject.handshake.url, reject.handshake.modbus.trigger``)."""
    if not settings.enabled:
        return []
    url = parse_sink_url(settings.url)
    names = (*signals, *settings.region_signals)
    if url.scheme == "opcua":
        return [opcua_output(url, getattr(settings.opcua, name), f"{setting}.url, {setting}.opcua.{name}")
                for name in names]
    unit = modbus_address(url).unit
    return [modbus_output(url, unit, HOLDING_REGISTER, register, f"{setting}.url, {setting}.modbus.{name}")
            for name in names for register in settings.modbus.registers(name)]


def lock_dir() -> Path:
    """The folder of the PLC-output locks (made if missing, and then kept: a station letting go never removes it
    under another one taking a lock): ``$FAIR_EDGE_LOCK_DIR``, else the first of ``/run/lock/fair-edge`` and
    ``<tempdir>/fair-edge-locks`` this account can write. Made here it is world-writable and sticky (mode 1777, as
    ``/run/lock`` is), so a station run by root once does not leave the folder closed to the service account's
    stations (which would then start without a lock: two of them on one coil both rejecting)."""
    given = os.environ.get(LOCK_DIR_ENV)
    if given:
        with contextlib.suppress(OSError):   # one that cannot be made: hold_lock logs it and runs unlocked
            Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    candidates = [SYSTEM_LOCK_DIR / "fair-edge", Path(tempfile.gettempdir()) / FALLBACK_LOCK_DIR]
    for folder in candidates:
        if shared_folder(folder):
            return folder
    return candidates[-1]   # none writable: hold_lock logs it and runs unlocked


def shared_folder(folder: Path) -> bool:
    """Whether this account can make lock files in ``folder``, making it (mode 1777) when its parent allows."""
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True)
            os.chmod(folder, 0o1777)
        except FileExistsError:
            pass
        except OSError:
            return False
    return os.access(folder, os.W_OK | os.X_OK)


def host_addresses(host: str) -> tuple[str, ...]:
    """The IP addresses ``host`` (a name or an address, as a sink URL writes it) resolves to, sorted, each once, as
    ``ip_text`` writes them (``::ffff:127.0.0.1`` is ``127.0.0.1``, as the warning takes it) (``socket.getaddrinfo``:
    ``/etc/hosts``, then DNS); ``(host lower-case,)`` when it resolves to none (logged at debug: the lock is then
    taken on the name as written)."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        log.debug("PLC output lock: host %r not resolved (%s); locked by its name as written", host, exc)
        return (host.lower(),)
    addresses = {ip_text(str(sockaddr[0])) or str(sockaddr[0]) for *_, sockaddr in found}
    return tuple(sorted(addresses)) or (host.lower(),)


def lock_keys(outputs: Iterable[PlcOutput]) -> dict[str, PlcOutput]:
    """Lock key -> the output it locks: one key per IP address of each output's host (``host_addresses``, each host
    resolved once), so two spellings of one server share a lock, and for an OPC UA node with a path in its URL a
    second one without the path (``PlcOutput.locked_as``). The first output naming a key names it; its
    ``shown`` adds the address when the host is written otherwise (``modbus localhost:502 ... (localhost is
    127.0.0.1)``)."""
    resolved: dict[str, tuple[str, ...]] = {}
    keys: dict[str, PlcOutput] = {}
    for output in outputs:
        if output.host not in resolved:
            resolved[output.host] = host_addresses(output.host)
        for address in resolved[output.host]:
            shown = output.shown if address == output.host else f"{output.shown} ({output.host} is {address})"
            for key in output.locked_as(address):
                keys.setdefault(key, replace(output, shown=shown))
    return keys


def lock_name(key: str) -> str:
    """The lock file of an address: its key in file-name characters (at most 80) and a digest of the whole key
    (``plc-modbus_10.0.0.5_502_1_coil_0-1a2b3c4d5e.lock``)."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", key.replace("://", "_"))[:80]
    return f"plc-{readable}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.lock"


@contextlib.contextmanager
def hold_plc_outputs(outputs: Iterable[PlcOutput], what: str,
                     busy: Callable[[PlcOutput, str], str]) -> Iterator[None]:
    """Hold the lock of every address of ``outputs`` (``lock_keys``: one per IP address of its host, an OPC UA node
    with and without its URL's path; an address two settings name, however spelled, is locked once) while the block
    runs. what: written beside the pid (the station
    file). busy(output, holder): the refusal's text, raised as ConfigError when another station (``holder``: its
    pid and station file) holds one; the locks taken before it are let go. The same thread may take them again
    inside (a no-op, as ``hold_lock``). The keys are taken in one order (sorted) in every station: locks are tried
    without waiting, so two stations that started at once and took them in different orders could each hold one
    and both be refused; in one order the first to take the first shared key runs."""
    keys = lock_keys(outputs)
    folder = lock_dir()
    with contextlib.ExitStack() as stack:
        for key, output in sorted(keys.items(), key=lambda item: item[0]):
            stack.enter_context(hold_lock(folder, lock_name(key), what, functools.partial(busy, output),
                                          shared=True))
        yield

"""The warning a station gives when two of its outputs write one PLC address, once per process for each pair.

A reject and a fault output on one Modbus coil or register, or two lanes on one OPC UA node, each write over the
other's levels there; so do an output and a register or node of the PLC handshake (``reject.handshake``: the
default Modbus block is registers 0..11, where a ``register=`` reject sink is easily put). ``warn_shared_outputs``
logs it when the station file is read (``plc_lock.shared_addresses``: compared with no network asked). A warning,
not a refusal: two lanes sharing one ejector may be wired so on purpose.
The file is read again while the station runs (a SIGHUP reload, a console threshold write, the command line's
``--reject`` over the file's ``reject.sinks``); ``WARNED`` keeps the pairs this process has named, so a re-read warns
only about a pair it has not named before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from .handshake.settings import PLC_SIGNALS, STATION_SIGNALS, HandshakeSettings
from .plc_lock import PlcOutput, handshake_outputs, shared_addresses, sink_outputs

log = logging.getLogger(__name__)

Pair = tuple[PlcOutput, PlcOutput]   # (first, later): two outputs on one address, in the station file's order
HANDSHAKE_SIGNALS = (*PLC_SIGNALS, *STATION_SIGNALS)   # every one, the part id the handshake only reads too
ON_OUTPUT = ("%s and %s both write %s: each writes over the other's levels there (a falling edge of one ends the "
             "other's pulse or held fault). Two lanes sharing one ejector may be wired so on purpose; otherwise give "
             "each output its own address (docs/line-integration.md, \"Sink URLs\")")
ON_HANDSHAKE = ("%s writes %s, a signal of the PLC handshake (%s): a pulse there is read as that signal's value, "
                "and the signal's next value ends the pulse; give the output an address no handshake signal uses, "
                "or move the signal (docs/line-integration.md, \"PLC handshake\")")


class WarnedPairs:
    """The shared-address pairs one process has warned about, each as (first's setting, later's setting, the
    address compared). Thread-safe: the console's threads re-read the station file too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._named: set[tuple[str, str, str]] = set()

    def new(self, pairs: list[Pair]) -> list[Pair]:
        """The pairs of ``pairs`` not warned about before, in order; from now on they count as warned."""
        with self._lock:
            fresh = [(a, b) for a, b in pairs if (a.setting, b.setting, a.compared) not in self._named]
            self._named.update((a.setting, b.setting, a.compared) for a, b in fresh)
        return fresh


WARNED = WarnedPairs()   # this process's


def warn_shared_outputs(outputs: Mapping[str, tuple[str, ...]], handshake: HandshakeSettings) -> None:
    """Log a warning for each PLC address (a Modbus coil or register, an OPC UA node) two of the station's reject /
    fault / lane outputs write, or one of them and a signal of the handshake (``HANDSHAKE_SIGNALS``), naming both
    settings, the address and the fix; a pair this process warned about already (``WARNED``) is not warned again.
    outputs: setting -> its checked URLs, as ``settings.check_gpio_outputs`` takes them (GPIO lines driven twice are
    refused there). handshake: ``reject.handshake`` (off: no signals)."""
    signals = handshake_outputs(handshake, signals=HANDSHAKE_SIGNALS)
    sinks = [output for setting, urls in outputs.items() for output in sink_outputs(setting, urls)]
    pairs = [(first, later) for first, later in shared_addresses([*sinks, *signals]) if first not in signals]
    for first, later in WARNED.new(pairs):
        if later in signals:
            log.warning(ON_HANDSHAKE, first.setting, both_spellings(first, later), later.setting)
        else:
            log.warning(ON_OUTPUT, first.setting, later.setting, both_spellings(first, later))


def both_spellings(first: PlcOutput, later: PlcOutput) -> str:
    """The address two outputs share in words, as ``first`` writes it, and as ``later`` does when it is spelled
    otherwise (``modbus localhost:502 unit 1 coil 3 (reject.fault_sinks[0]: modbus 127.0.0.1:502 unit 1 coil 3)``)."""
    return first.shown if first.shown == later.shown else f"{first.shown} ({later.setting}: {later.shown})"

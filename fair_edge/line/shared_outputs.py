"""The warning a station gives when two of its outputs write one PLC address, once per process for each pair.

A reject and a fault output on one Modbus coil or register, or two lanes on one OPC UA node, each write over the
other's levels there; ``warn_shared_outputs`` logs it when the station file is read (``plc_lock.shared_addresses``:
compared with no network asked). A warning, not a refusal: two lanes sharing one ejector may be wired so on purpose.
The file is read again while the station runs (a SIGHUP reload, a console threshold write, the command line's
``--reject`` over the file's ``reject.sinks``); ``WARNED`` keeps the pairs this process has named, so a re-read warns
only about a pair it has not named before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from .plc_lock import PlcOutput, shared_addresses, sink_outputs

log = logging.getLogger(__name__)

Pair = tuple[PlcOutput, PlcOutput]   # (first, later): two outputs on one address, in the station file's order


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


def warn_shared_outputs(outputs: Mapping[str, tuple[str, ...]]) -> None:
    """Log a warning for each PLC address (a Modbus coil or register, an OPC UA node) two of the station's reject /
    fault / lane outputs write, naming both settings, the address and the fix; a pair this process warned about
    already (``WARNED``) is not warned again. outputs: setting -> its checked URLs, as
    ``settings.check_gpio_outputs`` takes them (GPIO lines driven twice are refused there)."""
    named = [output for setting, urls in outputs.items() for output in sink_outputs(setting, urls)]
    for first, later in WARNED.new(shared_addresses(named)):
        log.warning("%s and %s both write %s: each writes over the other's levels there (a falling edge of one ends "
                    "the other's pulse or held fault). Two lanes sharing one ejector may be wired so on purpose; "
                    "otherwise give each output its own address (docs/line-integration.md, \"Sink URLs\")",
                    first.setting, later.setting, both_spellings(first, later))


def both_spellings(first: PlcOutput, later: PlcOutput) -> str:
    """The address two outputs share in words, as ``first`` writes it, and as ``later`` does when it is spelled
    otherwise (``modbus localhost:502 unit 1 coil 3 (reject.fault_sinks[0]: modbus 127.0.0.1:502 unit 1 coil 3)``)."""
    return first.shown if first.shown == later.shown else f"{first.shown} ({later.setting}: {later.shown})"

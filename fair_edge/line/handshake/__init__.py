"""The PLC handshake (``reject.handshake``): Ready, Trigger + part id, Results Ready + OK/NG + score
+ part id, Ack, Error and a heartbeat, over Modbus TCP or OPC UA; one link module per protocol,
chosen from the URL's scheme through ``HANDSHAKE_SCHEMES``.

>>> hs = open_handshake(HandshakeSettings(url="modbus://10.0.0.5:502?unit=1"))   # doctest: +SKIP
>>> with hs:                       # the thread connects, reconnects, writes ready and heartbeat
...     capture = triggered_capture(source, hs, CaptureSettings(), on_drop=hs.on_drop)

The triggered capture (one frame per trigger) is ``fair_edge.cameras.triggered``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..sinks.urls import SinkUrl, parse_sink_url, scheme_entry
from .engine import Handshake, HandshakeLink
from .modbus import ModbusLink, open_modbus_link
from .opcua import OpcUaLink, open_opcua_link
from .settings import ERROR_CODES, HandshakeSettings, ModbusSignals, OpcUaSignals
from .tickets import Ticket

HANDSHAKE_SCHEMES: dict[str, Callable[[SinkUrl, HandshakeSettings], HandshakeLink]] = {
    "modbus": open_modbus_link,
    "opcua": open_opcua_link,
}



def open_handshake(settings: HandshakeSettings) -> Handshake:
    """The (not yet started) handshake ``settings.url`` names; use it as a context manager.
    Raises ``SinkError`` for an unknown scheme or a malformed URL."""
    url = parse_sink_url(settings.url)
    return Handshake(settings, scheme_entry(HANDSHAKE_SCHEMES, url, "handshake")(url, settings))


__all__ = ["ERROR_CODES", "HANDSHAKE_SCHEMES", "Handshake", "HandshakeSettings", "ModbusLink", "ModbusSignals",
           "OpcUaLink", "OpcUaSignals", "Ticket", "open_handshake"]

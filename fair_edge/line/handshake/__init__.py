"""The PLC handshake (``reject.handshake``): Ready, Trigger + part id, Results Ready + OK/NG + score
+ part id, Ack, Error and a heartbeat, over Modbus TCP or OPC UA; one link module per protocol,
chosen from the URL's scheme through ``HANDSHAKE_SCHEMES``.

>>> hs = open_handshake(HandshakeSettings(url="modbus://10.0.0.5:502?unit=1"))   # doctest: +SKIP
>>> with hs:                       # the thread connects, reconnects, writes ready and heartbeat
...     capture = hs.capture(source, CaptureSettings(), on_capture=..., on_drop=hs.on_drop)
"""

from __future__ import annotations

from collections.abc import Callable

from fair_edge.cameras.base import FrameSource
from fair_edge.cameras.capture import CaptureSettings
from ..sinks.urls import SinkUrl, parse_sink_url, scheme_entry
from .engine import Handshake, HandshakeLink, Ticket
from .modbus import ModbusLink, open_modbus_link
from .opcua import OpcUaLink, open_opcua_link
from .settings import ERROR_CODES, HandshakeSettings, ModbusSignals, OpcUaSignals
from .trigger import TriggeredCapture, TriggeredSource

HANDSHAKE_SCHEMES: dict[str, Callable[[SinkUrl, HandshakeSettings], HandshakeLink]] = {
    "modbus": open_modbus_link,
    "opcua": open_opcua_link,
}


class StationHandshake(Handshake):
    """A ``Handshake`` that also makes its triggered capture thread."""

    def capture(self, source: FrameSource, settings: CaptureSettings, **hooks) -> TriggeredCapture:
        """The capture thread for ``source``: one frame per trigger (``TriggeredSource``)."""
        return TriggeredCapture(TriggeredSource(source, self), settings, **hooks)


def open_handshake(settings: HandshakeSettings) -> StationHandshake:
    """The (not yet started) handshake ``settings.url`` names; use it as a context manager.
    Raises ``SinkError`` for an unknown scheme or a malformed URL."""
    url = parse_sink_url(settings.url)
    return StationHandshake(settings, scheme_entry(HANDSHAKE_SCHEMES, url, "handshake")(url, settings))


__all__ = ["ERROR_CODES", "HANDSHAKE_SCHEMES", "Handshake", "HandshakeSettings", "ModbusLink", "ModbusSignals",
           "OpcUaLink", "OpcUaSignals", "StationHandshake", "Ticket", "TriggeredCapture", "TriggeredSource",
           "open_handshake"]

"""Settings of the line side of a station: the ``reject:``, ``record:`` and ``metrics:`` sections.

Frozen dataclasses; ``from_dict()`` validates a YAML mapping and raises ``ConfigError`` naming
the field, e.g. ``reject.delay_ms: expected a number in [0, 86400000], found 'abc'``. Every URL (reject and fault sinks,
the encoder, the handshake, MQTT) is parsed on load by the parser the station uses at start, nothing opened, so a
typo is refused naming its field (``reject.sinks[0]: ...``) instead of failing every start of a service; so is GPIO
wiring that could never open (``check_gpio_outputs``: two Jetson pin numberings, two outputs on one line). Two
outputs on one PLC address are warned about by ``shared_outputs.warn_shared_outputs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SinkError
from .. import fields as f
from .encoder_links import open_encoder
from .handshake.settings import HandshakeSettings
from .mqtt_url import parse_mqtt_url
from .sinks import parse_sink
from .sinks.gpio import check_gpio_wiring

FAIL_SAFE_POLICIES = ("reject", "alarm")
SINK_CHECK_S = 2.0  # reject.require_sinks_at_start: how long each sink may take to connect
ENCODER_STOP_WAIT_S = 10.0  # s: at a stop in encoder mode, how long the parts on the belt are waited for (a stopped
                            # belt never brings them to the gate); service_unit sizes TimeoutStopSec with it
IMAGE_FORMATS = ("png", "jpg")

def check_sink_url(where: str, url: str) -> str:
    """Parse ``url`` as ``open_sink`` will at start (scheme, host, options; nothing is opened), so a typo is
    refused when the station file is read, not at every start of a service; ``ConfigError`` names ``where``."""
    try:
        parse_sink(url)
    except SinkError as exc:
        raise ConfigError(f"{where}: {exc}; fix the URL (docs/line-integration.md lists each sink's options)") from exc
    return url


def check_sink_urls(section: str, key: str, urls: tuple[str, ...]) -> tuple[str, ...]:
    """``check_sink_url`` for each URL of ``section.key``, named ``section.key[i]``."""
    for i, url in enumerate(urls):
        check_sink_url(f"{section}.{key}[{i}]", url)
    return urls


def named_urls(outputs: Mapping[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """(``setting[i]``, URL) of each URL of ``outputs`` (setting -> its URLs), as refusals name them."""
    return [(f"{setting}[{i}]", url) for setting, urls in outputs.items() for i, url in enumerate(urls)]


def check_gpio_outputs(outputs: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse GPIO wiring one station could never open (``check_gpio_wiring``: ``jetson://`` URLs in two numberings,
    two outputs on one line) when its file is read, not after the model loaded. outputs: setting -> its checked
    URLs (``{"reject.sinks": (...), "cameras[0].reject": (...)}``); ``ConfigError`` naming the settings."""
    try:
        check_gpio_wiring(named_urls(outputs))
    except SinkError as exc:
        raise ConfigError(f"{exc} (docs/line-integration.md, \"GPIO wiring and permissions\")") from exc


def check_encoder_url(where: str, url: str) -> str:
    """Parse ``url`` as the station's encoder opener will (``open_encoder``: scheme, host, options; the encoder is
    made, not started: nothing connects); ``ConfigError`` naming ``where``."""
    try:
        open_encoder(url)
    except SinkError as exc:
        raise ConfigError(f"{where}: {exc}; fix the URL (docs/line-integration.md, \"Encoder mode\")") from exc
    return url


@dataclass(frozen=True)
class RejectSettings:
    """Reject wiring.

    sinks: URLs that receive one pulse per rejected part (all of them, fan-out).
    fault_sinks: URLs whose output is held on while the station is faulted or alarmed.
    delay_ms: travel time camera -> reject gate, ms; the pulse is due at t_capture + delay_ms.
    encoder_distance: if set, the pulse is due when the encoder has advanced this many counts
        since capture (replaces delay_ms; needs ``encoder``).
    encoder: URL of the belt counter, e.g. ``modbus://10.0.0.5:502?register=100&bits=32``,
        ``opcua://10.0.0.6:4840/?node=ns=2;s=Belt&bits=32`` or ``sim://?counts_per_s=2000``
        (see ``fair_edge.line.encoder_links``).
    pulse_ms: pulse width, ms (a sink URL's ``pulse_ms`` overrides it for that sink).
    min_gap_ms: least time between the falling edge of one pulse and the next rising edge, ms.
    late_ms: how late a rising edge may be and still hit its part, ms (min_gap_ms may shift an
        edge by up to this much; further would hit the next part, so that pulse is not fired).
    fail_safe: what the gate does with a part whose verdict is not in by its due time (slow
        inference, frame dropped, inference error): ``reject`` = reject it at its own due time
        (counted ``rejected_uninspected``); ``alarm`` = let it pass, raise the fault output
        (latched until acknowledged) and count it. A verdict after the due time never fires. With no reject
        output (``fault_sinks`` only) no part can be rejected: such a part passes and latches the fault output
        under either policy (``passed_uninspected``), an NG part passes (``passed_ng``).
    max_pending: most parts between camera and gate at once; beyond that a part is refused,
        counted and alarmed.
    encoder_poll_ms: how often the encoder is read while a reject waits for its count, ms.
    require_sinks_at_start: refuse to start (``PlcError``, exit code 2) unless every reject and
        fault sink connects within ``SINK_CHECK_S`` seconds; off = start anyway, faults shown.
    handshake: the PLC handshake (ready, trigger + part id, results, ack, error, heartbeat);
        off while ``handshake.url`` is null (``fair_edge.line.handshake.settings``).
    """

    sinks: tuple[str, ...] = ()
    fault_sinks: tuple[str, ...] = ()
    delay_ms: float = 0.0
    encoder_distance: int | None = None
    pulse_ms: float = 50.0
    min_gap_ms: float = 20.0
    late_ms: float = 10.0
    fail_safe: str = "reject"
    max_pending: int = 1024
    encoder_poll_ms: float = 1.0
    encoder: str | None = None
    require_sinks_at_start: bool = False
    handshake: HandshakeSettings = field(default_factory=HandshakeSettings)

    @property
    def decides_parts(self) -> bool:
        """Whether the station's gate decides each part at its due time (notes it at capture; passes, rejects or
        alarms it; needs the travel time): with a reject output, or with a fault lamp alone (``fault_sinks``) on a
        station without the PLC handshake. With the handshake and no reject output the PLC rejects from the
        handshake's results (a part not inspected answered 3, one not answered in time its Error 11): the gate only
        holds the fault output (station faults, its sinks' links) and decides no part."""
        return bool(self.sinks) or (bool(self.fault_sinks) and not self.handshake.enabled)

    @classmethod
    def from_dict(cls, data: Any) -> RejectSettings:
        s = "reject"
        d = f.with_defaults(s, data, cls)
        if d["encoder_distance"] is not None and "delay_ms" in (data or {}):
            raise ConfigError(
                "reject: expected one of delay_ms or encoder_distance, found both; "
                "remove delay_ms when the reject follows an encoder")
        dist = d["encoder_distance"]
        settings = cls(
            sinks=check_sink_urls(s, "sinks", f.url_list(s, "sinks", d["sinks"])),
            fault_sinks=check_sink_urls(s, "fault_sinks", f.url_list(s, "fault_sinks", d["fault_sinks"])),
            delay_ms=f.number(s, "delay_ms", d["delay_ms"], minimum=0, maximum=f.DAY_MS),
            encoder_distance=None if dist is None else f.integer(s, "encoder_distance", dist, 1),
            pulse_ms=f.number(s, "pulse_ms", d["pulse_ms"], minimum=0.1, maximum=f.DAY_MS),
            min_gap_ms=f.number(s, "min_gap_ms", d["min_gap_ms"], minimum=0, maximum=f.DAY_MS),
            late_ms=f.number(s, "late_ms", d["late_ms"], minimum=0, maximum=f.DAY_MS),
            fail_safe=f.choice(s, "fail_safe", d["fail_safe"], FAIL_SAFE_POLICIES),
            max_pending=f.integer(s, "max_pending", d["max_pending"], minimum=1),
            encoder_poll_ms=f.number(s, "encoder_poll_ms", d["encoder_poll_ms"], minimum=0.05, maximum=100),
            encoder=None if d["encoder"] is None else check_encoder_url(f"{s}.encoder",
                                                                        f.text(s, "encoder", d["encoder"])),
            require_sinks_at_start=f.boolean(s, "require_sinks_at_start", d["require_sinks_at_start"]),
            handshake=HandshakeSettings.from_dict(d.get("handshake")),
        )
        check_gpio_outputs({f"{s}.sinks": settings.sinks, f"{s}.fault_sinks": settings.fault_sinks})
        return settings


@dataclass(frozen=True)
class RecordSettings:
    """What the recorder keeps.

    dir: output folder (created). save_ng_images: write NG frames with heatmap overlays.
    image_format: ``png`` (lossless) or ``jpg``. max_log_mb: rotate each JSONL log (verdicts.jsonl, gate.jsonl) past
    this size, MB. keep_files: rotated files kept per log (``verdicts.jsonl.1`` .. ``.N``, ``gate.jsonl.1`` .. ``.N``;
    on a full disk the oldest are deleted to write on). min_free_mb: stop saving images when the disk has less free
    space than this, MB, plus what the two logs may still grow into ((keep_files + 1) x max_log_mb each, less what they
    hold), so the logs always have their room (logging goes on). queue_size: NG parts whose
    images wait for the writer thread; past it an NG part is logged without its images (counted images_skipped);
    rows without images are not limited by it. queue_mb: the same bound in memory, MB: the frames (and maps) of
    the NG parts waiting, 1024 by default (64 frames of 5 MP BGR; 17 of 20 MP); an NG part with none waiting is
    always taken, however large. overlay_alpha: heatmap weight in the blend, 0..1.
    """

    dir: Path = Path("records")
    save_ng_images: bool = True
    image_format: str = "png"
    max_log_mb: float = 64.0
    keep_files: int = 5
    min_free_mb: float = 500.0
    queue_size: int = 64
    queue_mb: float = 1024.0
    overlay_alpha: float = 0.5

    @classmethod
    def from_dict(cls, data: Any) -> RecordSettings:
        s = "record"
        d = f.with_defaults(s, data, cls)
        return cls(
            dir=Path(f.folder_path(s, "dir", _path_text(d["dir"]))),   # no D:\, \ or $HOME on Linux
            save_ng_images=f.boolean(s, "save_ng_images", d["save_ng_images"]),
            image_format=f.choice(s, "image_format", d["image_format"], IMAGE_FORMATS),
            max_log_mb=f.number(s, "max_log_mb", d["max_log_mb"], minimum=0.001),
            keep_files=f.integer(s, "keep_files", d["keep_files"], minimum=0),
            min_free_mb=f.number(s, "min_free_mb", d["min_free_mb"], minimum=0),
            queue_size=f.integer(s, "queue_size", d["queue_size"], minimum=1),
            queue_mb=f.number(s, "queue_mb", d["queue_mb"], minimum=1),
            overlay_alpha=f.number(s, "overlay_alpha", d["overlay_alpha"], 0, 1),
        )


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus endpoint. host: bind address (127.0.0.1 = this machine only; 0.0.0.0 exposes it).
    port: TCP port (0 = any free port, read it back from ``Metrics.port``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9108

    @classmethod
    def from_dict(cls, data: Any) -> MetricsSettings:
        s = "metrics"
        d = f.with_defaults(s, data, cls)
        return cls(
            enabled=f.boolean(s, "enabled", d["enabled"]),
            host=f.text(s, "host", d["host"]),
            port=f.integer(s, "port", d["port"], minimum=0, maximum=65535),
        )


def _path_text(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True)
class MqttSettings:
    """MQTT publishing (``fair_edge.line.mqtt``). url: ``mqtt://HOST:PORT/PREFIX`` or None (off); parsed on
    load as the publisher parses it at start (``parse_mqtt_url``), so a typo is refused naming ``mqtt.url``."""

    url: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> MqttSettings:
        d = f.with_defaults("mqtt", data, cls)
        return cls(url=None if d["url"] is None else check_mqtt_url(f.text("mqtt", "url", d["url"])))


def check_mqtt_url(url: str) -> str:
    """``parse_mqtt_url(url)``, or ``ConfigError`` naming ``mqtt.url`` and the fix."""
    try:
        parse_mqtt_url(url)
    except SinkError as exc:
        found = str(exc).removeprefix("mqtt.url: ")
        raise ConfigError(f"mqtt.url: {found}; fix the URL: mqtt://HOST:PORT/PREFIX?client_id=..&keepalive_s=.."
                          "&max_outbox=.. (docs/line-integration.md, \"MQTT\")") from exc
    return url

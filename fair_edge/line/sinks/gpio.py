"""GPIO outputs: libgpiod v2 (any Linux board) and Jetson.GPIO (NVIDIA Jetson header pins).

URLs:
- ``gpio://gpiochip0/17?active=high`` : line offset 17 of /dev/gpiochip0 (libgpiod v2, the
  ``gpiod`` package >= 2.1). ``active=low`` inverts the level (open-collector / sinking inputs).
- ``jetson://BOARD/12?active=high`` : pin 12 in BOARD numbering (also BCM), through ``Jetson.GPIO``;
  ``jetson://CVM/GPIO09`` and ``jetson://TEGRA_SOC/DAP4_SCLK``: a pin by the name Jetson.GPIO gives it in the
  CVM or TEGRA_SOC numbering (these two name pins, they do not number them).
Both take ``pulse_ms``. The driver packages are imported only when such a sink is opened.
The outputs have no ``probe``: a local line has no link that can go away between writes.

Permissions: the user running the station needs read/write on /dev/gpiochipN: add it to the
``gpio`` group (``sudo usermod -aG gpio $USER``, log in again) or install a udev rule such as
``SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"``. On Jetson, ``Jetson.GPIO``
ships an equivalent ``99-gpio.rules`` (copy it to /etc/udev/rules.d). Wiring: a GPIO pin drives an
opto-isolated input or a relay driver, never a solenoid directly; see docs/line-integration.md.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from ...errors import PlcError, SinkError
from .base import Reporter, WorkerSink, log_reporter
from .urls import SinkUrl

log = logging.getLogger(__name__)

GPIO_OPTIONS = ("active", "pulse_ms")
JETSON_MODES = ("BOARD", "BCM", "CVM", "TEGRA_SOC")
JETSON_NAMED_MODES = ("CVM", "TEGRA_SOC")   # Jetson.GPIO's channels in these modes are names, e.g. 'GPIO09'
PIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
PERMISSION_FIX = ("add the user to the 'gpio' group (sudo usermod -aG gpio $USER) or install a "
                  "udev rule giving that group rw on /dev/gpiochip*; see docs/line-integration.md")


@dataclass(frozen=True)
class GpioTarget:
    kind: str         # "gpiod" or "jetson"
    chip: str         # /dev/gpiochipN, or the Jetson numbering mode
    line: int | str   # line offset or pin number; a pin's name in Jetson's CVM and TEGRA_SOC modes
    active_low: bool = False

    @property
    def label(self) -> str:
        return f"{self.kind} {self.chip} {self.line}"


def parse_gpio_url(url: SinkUrl) -> tuple[GpioTarget, float | None]:
    url.check_query(GPIO_OPTIONS)
    active = url.get_choice("active", "high", ("high", "low"))
    pin = url.path.strip("/")
    if url.scheme == "jetson":
        target = GpioTarget("jetson", _jetson_mode(url), _jetson_pin(url, pin), active == "low")
    else:
        if not url.netloc or not pin.isdigit():
            raise SinkError(f"{url.shown}: expected gpio://gpiochip0/17, found chip={url.netloc!r} line={pin!r}")
        chip = url.netloc if url.netloc.startswith("/") else f"/dev/{url.netloc}"
        target = GpioTarget("gpiod", chip, int(pin), active == "low")
    pulse = url.get_float("pulse_ms", 0.0) if "pulse_ms" in url.query else None
    return target, pulse


def _jetson_mode(url: SinkUrl) -> str:
    mode = url.netloc.upper()
    if mode not in JETSON_MODES:
        raise SinkError(f"{url.shown}: expected numbering {' | '.join(JETSON_MODES)}, found {url.netloc!r}")
    return mode


def _jetson_pin(url: SinkUrl, pin: str) -> int | str:
    """The pin as Jetson.GPIO takes it: a number in BOARD and BCM numbering, a name (e.g. GPIO09) in CVM and
    TEGRA_SOC, whose channels are names; SinkError naming the URL and an example of the mode's form."""
    mode = url.netloc.upper()
    if mode in JETSON_NAMED_MODES:
        if not PIN_NAME.fullmatch(pin):
            raise SinkError(f"{url.shown}: {mode} names its pins; expected a pin name such as jetson://CVM/GPIO09 or "
                            f"jetson://TEGRA_SOC/DAP4_SCLK (Jetson.GPIO's name for it), found {pin!r}. To give a "
                            "header pin number, use BOARD numbering: jetson://BOARD/12.")
        return pin
    if not pin.isdigit():
        raise SinkError(f"{url.shown}: {mode} numbers its pins; expected jetson://{mode}/12, found {pin!r}")
    return int(pin)


def _import(module: str, package: str) -> Any:
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SinkError(f"this GPIO sink needs the '{package}' package (pip install {package}), "
                        f"found it missing: {exc}; the user also needs GPIO access: "
                        f"{PERMISSION_FIX}") from exc


class GpiodOutput:
    """One output line through libgpiod v2 (``gpiod.request_lines``)."""

    def __init__(self, target: GpioTarget) -> None:
        self.target = target
        self._gpiod = _import("gpiod", "gpiod")
        self._req: Any = None

    def open(self) -> None:
        if self._req is not None:
            return
        g = self._gpiod
        settings = g.LineSettings(direction=g.line.Direction.OUTPUT,
                                  output_value=g.line.Value.INACTIVE,
                                  active_low=self.target.active_low)
        try:
            self._req = g.request_lines(self.target.chip, consumer="fair-edge",
                                        config={self.target.line: settings})
        except PermissionError as exc:
            raise SinkError(f"{self.target.label}: permission denied; {PERMISSION_FIX}") from exc
        except OSError as exc:
            raise PlcError(f"{self.target.label}: cannot request the line: {exc}") from exc

    def set(self, on: bool) -> None:
        if self._req is None:
            raise PlcError(f"{self.target.label}: not open")
        value = self._gpiod.line.Value.ACTIVE if on else self._gpiod.line.Value.INACTIVE
        try:
            self._req.set_value(self.target.line, value)
        except OSError as exc:
            raise PlcError(f"{self.target.label}: write failed: {exc}") from exc

    def close(self) -> None:
        req, self._req = self._req, None
        if req is not None:
            req.release()


class JetsonOutput:
    """One header pin through Jetson.GPIO."""

    def __init__(self, target: GpioTarget) -> None:
        self.target = target
        self._gpio = _import("Jetson.GPIO", "Jetson.GPIO")
        self._open = False

    def _level(self, on: bool) -> Any:
        high = on != self.target.active_low
        return self._gpio.HIGH if high else self._gpio.LOW

    def open(self) -> None:
        if self._open:
            return
        g = self._gpio
        try:
            g.setmode(getattr(g, self.target.chip))
            g.setup(self.target.line, g.OUT, initial=self._level(False))
        except PermissionError as exc:
            raise SinkError(f"{self.target.label}: permission denied; {PERMISSION_FIX}") from exc
        except (OSError, ValueError, RuntimeError) as exc:
            raise PlcError(f"{self.target.label}: cannot set up the pin: {exc}") from exc
        self._open = True

    def set(self, on: bool) -> None:
        try:
            self._gpio.output(self.target.line, self._level(on))
        except (OSError, RuntimeError) as exc:
            raise PlcError(f"{self.target.label}: write failed: {exc}") from exc

    def close(self) -> None:
        if self._open:
            self._open = False
            self._gpio.cleanup(self.target.line)


GPIO_OUTPUTS = {"gpiod": GpiodOutput, "jetson": JetsonOutput}


def open_gpio_sink(url: SinkUrl, pulse_ms: float, reporter: Reporter = log_reporter) -> WorkerSink:
    """Open (fail fast: missing package or permissions raise ``SinkError`` here) and wrap."""
    target, url_pulse = parse_gpio_url(url)
    output = GPIO_OUTPUTS[target.kind](target)
    output.open()
    return WorkerSink(target.label, output, pulse_ms if url_pulse is None else url_pulse,
                      reporter=reporter)

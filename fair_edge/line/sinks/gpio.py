"""GPIO outputs: libgpiod v2 (any Linux board) and Jetson.GPIO (NVIDIA Jetson header pins).

URLs:
- ``gpio://gpiochip0/17?active=high`` : line offset 17 of /dev/gpiochip0 (libgpiod v2, the
  ``gpiod`` package >= 2.1). ``active=low`` inverts the level (open-collector / sinking inputs).
- ``jetson://BOARD/12?active=high`` : pin 12 in BOARD numbering (also BCM), through ``Jetson.GPIO``;
  ``jetson://CVM/GPIO09`` and ``jetson://TEGRA_SOC/DAP4_SCLK``: a pin by the name Jetson.GPIO gives it in the
  CVM or TEGRA_SOC numbering (these two name pins, they do not number them).
Both take ``pulse_ms``, at least ``MIN_PULSE_MS``: ``pulse_ms=0`` ("write on only, the PLC clears it") is refused,
since nothing clears a GPIO line. The driver packages are imported only when such a sink is opened.
The outputs have no ``probe``: a local line has no link that can go away between writes.
``check_gpio_wiring`` refuses, when the station file is read, what would fail only at open: ``jetson://`` URLs in
more than one numbering (Jetson.GPIO takes one per process), and two outputs on one line. ``probe_gpio_outputs``
requests every line at start, before the model loads, holding them together as the sinks will, then releases them, so
what only the machine can tell (a line another process holds, a missing chip, the user's permissions, a missing
driver package, one line named as ``gpio://`` and as the ``jetson://`` pin wired to it) refuses the start then.

Permissions: the user running the station needs read/write on /dev/gpiochipN: add it to the
``gpio`` group (``sudo usermod -aG gpio $USER``, log in again) or install a udev rule such as
``SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"``. On Jetson, ``Jetson.GPIO``
ships an equivalent ``99-gpio.rules`` (copy it to /etc/udev/rules.d). Wiring: a GPIO pin drives an
opto-isolated input or a relay driver, never a solenoid directly; see docs/line-integration.md.
"""

from __future__ import annotations

import errno
import importlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...errors import PlcError, SinkError
from .base import Reporter, WorkerSink, log_reporter
from .urls import SinkUrl, parse_sink_url

log = logging.getLogger(__name__)

GPIO_OPTIONS = ("active", "pulse_ms")
JETSON_MODES = ("BOARD", "BCM", "CVM", "TEGRA_SOC")
JETSON_NAMED_MODES = ("CVM", "TEGRA_SOC")   # Jetson.GPIO's channels in these modes are names, e.g. 'GPIO09'
PIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
PERMISSION_FIX = ("add the user to the 'gpio' group (sudo usermod -aG gpio $USER) or install a "
                  "udev rule giving that group rw on /dev/gpiochip*; see docs/line-integration.md")
JETSON_PERMISSION_FIX = (f"{PERMISSION_FIX} (Jetson.GPIO ships one, 99-gpio.rules: copy it to /etc/udev/rules.d/, "
                         "then sudo udevadm control --reload && sudo udevadm trigger, and log in again)")
MIN_PULSE_MS = 0.1   # a GPIO output's narrowest pulse, ms (reject.pulse_ms's minimum): 0 would leave the line on
INSTALLS = {"gpiod": "pip install 'fair-edge[gpio]'", "Jetson.GPIO": "pip install 'fair-edge[jetson]'"}


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
        target = GpioTarget("gpiod", f"/dev/{url.netloc}", int(pin), active == "low")
    pulse = url.get_float("pulse_ms", 0.0) if "pulse_ms" in url.query else None
    if pulse is not None:
        check_gpio_pulse(url, pulse)
    return target, pulse


def check_gpio_pulse(url: SinkUrl, pulse_ms: float) -> None:
    """``SinkError`` when ``pulse_ms`` (the width a GPIO output would drive, ms: its URL's, else the caller's
    ``reject.pulse_ms``) is below ``MIN_PULSE_MS``: 0 means "write on only, the PLC clears it", and no PLC clears
    a GPIO line, so the gate would stay on after the first reject while every later one is counted delivered."""
    if pulse_ms < MIN_PULSE_MS:
        raise SinkError(f"{url.shown}: pulse_ms: expected at least {MIN_PULSE_MS:g} ms for a GPIO output, found "
                        f"{pulse_ms:g}: pulse_ms=0 means 'write on only, the PLC clears it', and nothing clears a "
                        "GPIO line (the gate would stay on after the first reject); give the pulse width, e.g. "
                        "pulse_ms=50")


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


def check_gpio_wiring(outputs: Iterable[tuple[str, str]]) -> None:
    """Refuse what Jetson.GPIO and the kernel would refuse only when the outputs open, after the model has loaded.
    outputs: (setting, URL) of every output one station drives (``("reject.sinks[0]", "jetson://BOARD/12")``;
    URLs already checked by ``parse_gpio_url``; other schemes skipped). ``SinkError`` naming the two settings:
    ``jetson://`` URLs in two numberings (one per process), or two outputs on one GPIO line (one owner per line)."""
    mode_seen: tuple[str, str] | None = None   # (setting, mode) of the first jetson:// URL
    line_seen: dict[tuple[str, str, int | str], str] = {}   # (kind, chip or mode, line) -> setting
    for setting, raw in outputs:
        target, url = _gpio_target(setting, raw)
        if target is None:
            continue
        if target.kind == "jetson":
            if mode_seen is not None and mode_seen[1] != target.chip:
                raise SinkError(f"{setting}: {url.shown} numbers its pin in {target.chip}, {mode_seen[0]} in "
                                f"{mode_seen[1]}: Jetson.GPIO takes one numbering per process, so the second output "
                                "would fail to open; write every jetson:// URL of the station in one numbering "
                                "(BOARD: the header's pin numbers)")
            mode_seen = mode_seen or (setting, target.chip)
        key = (target.kind, target.chip, target.line)
        if key in line_seen:
            raise SinkError(f"{setting}: {url.shown} drives {target.label}, which {line_seen[key]} drives too: a GPIO "
                            "line has one owner, so the second output would fail to open (busy); give each output "
                            "its own line")
        line_seen[key] = setting


def _gpio_target(setting: str, raw: str) -> tuple[GpioTarget | None, SinkUrl | None]:
    """The GPIO line ``raw`` drives and its parsed URL; (None, None) for another scheme or a URL that is no sink URL
    at all (its own check names it); ``SinkError`` prefixed with ``setting`` for a malformed GPIO URL."""
    if not isinstance(raw, str) or not raw.lower().startswith(("gpio://", "jetson://")):
        return None, None
    try:
        url = parse_sink_url(raw)
        return parse_gpio_url(url)[0], url
    except SinkError as exc:
        raise SinkError(f"{setting}: {exc}") from exc


def _import(module: str, package: str) -> Any:
    """Import the driver ``module``; ``SinkError`` naming ``package``, its install and the GPIO permission fix when
    it is missing or fails to load (Jetson.GPIO checks the board and the user's permissions at import)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SinkError(f"this GPIO sink needs the '{package}' package ({INSTALLS[package]}), "
                        f"found it missing: {exc}; the user also needs GPIO access: "
                        f"{PERMISSION_FIX}") from exc
    except Exception as exc:  # noqa: BLE001 - Jetson.GPIO raises RuntimeError / Exception at import
        raise SinkError(f"the '{package}' package is installed but refused to load: {type(exc).__name__}: {exc}; "
                        f"{_load_fix(exc)}") from exc


def _load_fix(exc: Exception) -> str:
    """The fix for a driver that raised ``exc`` at import: Jetson.GPIO's RuntimeError is its permission check (the
    station user cannot open /dev/gpiochip*), any other exception its board check (not a Jetson it knows)."""
    if isinstance(exc, RuntimeError):
        return f"the station user needs GPIO access: {JETSON_PERMISSION_FIX}"
    return ("Jetson.GPIO drives NVIDIA Jetson header pins only and did not recognise this board; on another board "
            "use a gpio://gpiochipN/LINE URL (libgpiod v2, pip install 'fair-edge[gpio]'; gpioinfo lists the lines), "
            f"and check the user's GPIO access: {JETSON_PERMISSION_FIX}")


class GpiodOutput:
    """One output line through libgpiod v2 (``gpiod.request_lines``). Opening refuses, naming the fix: the v1
    bindings (``SinkError``), a line the chip lacks (``SinkError``: never there on a retry); a missing chip or a line
    another process holds is a ``PlcError`` (the worker retries it: a driver loaded late, a holder that exits)."""

    def __init__(self, target: GpioTarget) -> None:
        self.target = target
        self._gpiod = _v2_bindings(_import("gpiod", "gpiod"), target)
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
        except ValueError as exc:   # EINVAL: libgpiod's bindings raise ValueError for it
            raise self._invalid_line(exc) from exc
        except OSError as exc:
            raise self._request_failed(exc) from exc

    @property
    def _chip_name(self) -> str:
        """The chip as the URL and the gpio tools name it: ``gpiochip0`` for /dev/gpiochip0."""
        return self.target.chip.removeprefix("/dev/")

    def _chip_facts(self) -> tuple[int | None, str]:
        """(the chip's line count, the consumer holding our line, '' when free or unknown), asked of the chip
        (``gpiod.Chip``); (None, '') when it cannot be asked: only to word an error, never an error itself."""
        try:
            with self._gpiod.Chip(self.target.chip) as chip:
                count = int(chip.get_info().num_lines)
                if not 0 <= int(self.target.line) < count:
                    return count, ""
                return count, str(chip.get_line_info(self.target.line).consumer or "")
        except Exception:  # noqa: BLE001 - the message is worded without it
            return None, ""

    def _invalid_line(self, exc: ValueError) -> SinkError:
        """The kernel refused the request as invalid (EINVAL): a line offset the chip does not have, named with the
        chip's line count, the URL's field to fix and ``gpioinfo``."""
        count, _ = self._chip_facts()
        lines = f"it has {count} lines, 0..{count - 1}" if count else "its line count could not be read"
        chip, line = self._chip_name, self.target.line
        if count and 0 <= int(line) < count:
            return SinkError(f"{self.target.label}: the kernel refused line {line} of {chip} as invalid ({exc}); "
                             f"`gpioinfo {chip}` shows the line and its use")
        return SinkError(f"{self.target.label}: {chip} has no line {line} ({lines}; {exc}); fix the line in the URL "
                         f"(gpio://{chip}/LINE): `gpioinfo {chip}` lists the chip's lines and their names")

    def _request_failed(self, exc: OSError) -> PlcError:
        """A request that failed for a missing chip (ENOENT) or a line in use (EBUSY; its holder named when the chip
        says), naming the URL's field and the tool that shows the fix; any other OSError with its text."""
        chip, line, label = self._chip_name, self.target.line, self.target.label
        if exc.errno == errno.ENOENT:
            return PlcError(f"{label}: no GPIO chip {self.target.chip} ({exc}); fix the chip in the URL "
                            f"(gpio://CHIP/{line}): `gpiodetect` lists this machine's chips")
        if exc.errno == errno.EBUSY:
            _, holder = self._chip_facts()
            held = f"'{holder}' holds it" if holder else "another process holds it"
            return PlcError(f"{label}: line {line} of {chip} is in use: {held} ({exc}); `gpioinfo {chip}` names "
                            f"the line's consumer: stop that program, or fix the line in the URL (gpio://{chip}/LINE)")
        return PlcError(f"{label}: cannot request the line: {exc}")

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


def _v2_bindings(gpiod: Any, target: GpioTarget) -> Any:
    """``gpiod`` when it is libgpiod's v2 bindings (``request_lines``, gpiod >= 2.1); ``SinkError`` naming the version
    found and the install otherwise: the v1 bindings (python3-libgpiod from apt, seen through a venv made with
    --system-site-packages) have another API."""
    if hasattr(gpiod, "request_lines"):
        return gpiod
    found = getattr(gpiod, "__version__", "unknown version")
    raise SinkError(f"{target.label}: gpio:// sinks need libgpiod's v2 Python bindings (gpiod >= 2.1), found gpiod "
                    f"{found} without request_lines (the v1 bindings, e.g. apt's python3-libgpiod seen through a "
                    f"venv made with --system-site-packages); install v2 in the station's environment: "
                    f"{INSTALLS['gpiod']}")


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
        self._check_mode()
        try:
            g.setmode(getattr(g, self.target.chip))
            g.setup(self.target.line, g.OUT, initial=self._level(False))
        except PermissionError as exc:
            raise SinkError(f"{self.target.label}: permission denied; {JETSON_PERMISSION_FIX}") from exc
        except OSError as exc:
            raise self._setup_failed(exc) from exc
        except (ValueError, RuntimeError) as exc:
            raise PlcError(f"{self.target.label}: cannot set up the pin: {exc}") from exc
        self._open = True

    def _setup_failed(self, exc: OSError) -> PlcError:
        """A pin Jetson.GPIO could not request: in use (EBUSY: another process holds its line; Jetson.GPIO does not
        say which, ``gpioinfo`` does), named with the fix; any other OSError with its text."""
        mode, pin, label = self.target.chip, self.target.line, self.target.label
        if exc.errno == errno.EBUSY:
            return PlcError(f"{label}: pin {pin} ({mode} numbering) is in use: another process holds its line ({exc}); "
                            f"`gpioinfo` names the line's consumer: stop that program, or fix the pin in the URL "
                            f"(jetson://{mode}/PIN)")
        return PlcError(f"{label}: cannot set up the pin: {exc}")

    def _check_mode(self) -> None:
        """``SinkError`` when another pin numbering is set in this process already (Jetson.GPIO takes one): named,
        with the fix, instead of Jetson.GPIO's "A different mode has already been set!"."""
        g = self._gpio
        current = g.getmode() if hasattr(g, "getmode") else None
        if current is None or current == getattr(g, self.target.chip):
            return
        named = next((mode for mode in JETSON_MODES if getattr(g, mode, None) == current), str(current))
        raise SinkError(f"{self.target.label}: Jetson.GPIO takes one pin numbering per process, and {named} is set "
                        f"already (another jetson:// output); write every jetson:// URL in one numbering")

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


def probe_gpio_outputs(outputs: Iterable[tuple[str, str]]) -> None:
    """Request each GPIO line ``outputs`` drive, as the station opens it (``GPIO_OUTPUTS``' ``open``), then release
    them all, so what only the machine can tell refuses a start before the model loads, not minutes after it: a line
    another process holds (its consumer named when the chip says), a missing chip, the user's permissions, a missing
    or refusing driver package, and one line named twice in forms the station file cannot compare
    (``gpio://gpiochip0/17`` and the ``jetson://`` header pin wired to it: which line a pin is depends on the board),
    found by the kernel: the lines are held together, as the station's sinks hold them (``_line_twin``). outputs: (setting, URL) of every
    output one station drives, as ``check_gpio_wiring`` takes them; other schemes skipped. A free line is left at its
    resting level (the request drives it inactive; the release leaves it there). Raises what opening raises
    (``PlcError`` for a busy line or a missing chip, ``SinkError`` otherwise), its one-line message prefixed with the
    setting, or ``SinkError`` naming both settings of a line named twice. Every line is released, each in its own
    try: a release that fails is logged and the others still released; the refusal, if any, is what is raised, else a
    ``SinkError`` naming the lines whose release failed (they may still be held)."""
    held: list[tuple[str, str, Any]] = []   # (setting, URL as shown, its open output), in request order
    try:
        for setting, raw in outputs:
            target, url = _gpio_target(setting, raw)
            if target is not None:
                held.append((setting, url.shown, _probe_line(setting, url, target, held)))
    finally:   # a no-op for one _line_twin released already; a refusal on its way up passes this untouched
        unreleased = [f"{setting} ({shown})" for setting, shown, output in reversed(held)
                      if not _release(setting, shown, output)]
    if unreleased:
        raise SinkError(f"GPIO probe at start: expected every line requested to be released, found the release of "
                        f"{', '.join(unreleased)} failed (logged above): the line may still be held; check the GPIO "
                        f"driver (`gpioinfo` shows who holds a line) and start again")


def _release(setting: str, shown: str, output: Any) -> bool:
    """Close ``output`` (``setting``'s, its URL ``shown``), a line the probe requested; True when that went well.
    A failure is logged, never raised: the caller releases the other lines, and a refusal it is raising stays the
    error the user sees."""
    try:
        output.close()
    except Exception as exc:  # noqa: BLE001 - clean-up: logged, the other lines still released
        log.error("%s: releasing the GPIO line of %s after probing it failed: %s: %s", setting, shown,
                  type(exc).__name__, exc)
        return False
    return True


def _probe_line(setting: str, url: SinkUrl, target: GpioTarget, held: list[tuple[str, str, Any]]) -> Any:
    """``target``'s output, opened (the caller closes it); its ``PlcError`` / ``SinkError`` prefixed with ``setting``,
    or a ``SinkError`` naming the output of ``held`` that holds this very line (``_line_twin``)."""
    try:
        output = GPIO_OUTPUTS[target.kind](target)
        output.open()
        return output
    except PlcError as exc:
        twin = _line_twin(target, held)
        if twin is not None:
            raise SinkError(f"{setting}: {url.shown} drives the GPIO line {twin[0]} ({twin[1]}) drives: the line was "
                            f"busy while {twin[0]} held it and free once it let go. A GPIO line has one owner, so the "
                            "second output would fail to open; give each output its own line (`gpioinfo` lists the "
                            "lines and their names)") from exc
        raise PlcError(f"{setting}: {exc}") from exc
    except SinkError as exc:
        raise SinkError(f"{setting}: {exc}") from exc


def _line_twin(target: GpioTarget, held: list[tuple[str, str, Any]]) -> tuple[str, str] | None:
    """(setting, URL) of the output in ``held`` that holds ``target``'s line, asked of the kernel: ``held``'s outputs
    are released one at a time, latest first, and ``target`` requested again after each (then released); the one
    whose release lets it be requested holds it. None when none does (another process holds it, or it fails for
    another reason). Released outputs stay released (closing them again is a no-op). A release that fails is logged
    (``_release``) and that output skipped: the refusal being explained stays the error raised."""
    for setting, shown, output in reversed(held):
        if not _release(setting, shown, output):
            continue
        again = GPIO_OUTPUTS[target.kind](target)
        try:
            again.open()
        except (PlcError, SinkError):
            continue
        _release(setting, shown, again)
        return setting, shown
    return None


def open_gpio_sink(url: SinkUrl, pulse_ms: float, reporter: Reporter = log_reporter) -> WorkerSink:
    """Open (fail fast: missing package or permissions raise ``SinkError`` here) and wrap. pulse_ms: the width when
    the URL gives none, ms; either below ``MIN_PULSE_MS`` is refused (``check_gpio_pulse``)."""
    target, url_pulse = parse_gpio_url(url)
    width_ms = pulse_ms if url_pulse is None else url_pulse
    check_gpio_pulse(url, width_ms)
    output = GPIO_OUTPUTS[target.kind](target)
    output.open()
    return WorkerSink(target.label, output, width_ms, reporter=reporter)

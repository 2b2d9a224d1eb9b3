"""GPIO reject and stack-light outputs (gpio.py, settings.py): what the station file check refuses (pulse_ms=0 on a
GPIO line, two Jetson pin numberings, one line driven twice) and what opening one says when the line, the chip, the
driver package or the user's permissions are wrong. Stand-ins for libgpiod (v2 and v1 bindings) and Jetson.GPIO, with
the errors the real ones raise; no GPIO hardware here."""

from __future__ import annotations

import enum
import errno
import sys
import threading
import types
from pathlib import Path

import pytest

from fair_edge.errors import ConfigError, PlcError, SinkError
from fair_edge.line.settings import RejectSettings
from fair_edge.line.sinks import open_sink
from fair_edge.station.config import StationConfig
from fair_edge.station.views import GroupSettings, ViewSettings

ROOT = Path(__file__).resolve().parents[1]


class Direction(enum.Enum):
    OUTPUT = 3


class Value(enum.Enum):
    INACTIVE = 0
    ACTIVE = 1


class FakeChips:
    """libgpiod v2 as its Python bindings behave (gpiod >= 2.1): ``request_lines`` on a missing chip raises
    FileNotFoundError, a line offset the chip lacks EINVAL (the bindings raise it as ValueError), a held line EBUSY;
    ``Chip(path)`` tells its line count and each line's consumer. ``physical``: the line levels driven."""

    def __init__(self, lines: dict[str, int], held: dict[tuple[str, int], str] | None = None) -> None:
        self.lines = lines              # /dev/gpiochipN -> its line count
        self.held = dict(held or {})    # (chip, line) -> consumer holding it
        self.physical: dict[tuple[str, int], int] = {}
        self.lock = threading.Lock()

    def module(self) -> types.ModuleType:
        fake = types.ModuleType("gpiod")
        fake.__version__ = "2.2.0"
        fake.line = types.SimpleNamespace(Direction=Direction, Value=Value)
        fake.LineSettings = lambda **kw: types.SimpleNamespace(**kw)
        fake.request_lines = self.request_lines
        fake.Chip = self.chip
        return fake

    def request_lines(self, path: str, consumer: str | None = None, config: dict | None = None) -> "FakeRequest":
        if path not in self.lines:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        (offset, settings), = config.items()
        if not 0 <= offset < self.lines[path]:
            raise ValueError(errno.EINVAL, "Invalid argument")
        if (path, offset) in self.held:
            raise OSError(errno.EBUSY, "Device or resource busy")
        self.held[(path, offset)] = consumer
        return FakeRequest(self, path, offset, settings)

    def chip(self, path: str) -> "FakeChip":
        if path not in self.lines:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return FakeChip(self, path)


class FakeChip:
    def __init__(self, chips: FakeChips, path: str) -> None:
        self.chips, self.path = chips, path

    def __enter__(self) -> "FakeChip":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_info(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=self.path[5:], label="fake", num_lines=self.chips.lines[self.path])

    def get_line_info(self, offset: int) -> types.SimpleNamespace:
        consumer = self.chips.held.get((self.path, offset))
        return types.SimpleNamespace(offset=offset, used=consumer is not None, consumer=consumer)


class FakeRequest:
    def __init__(self, chips: FakeChips, path: str, offset: int, settings: types.SimpleNamespace) -> None:
        self.chips, self.path, self.offset, self.active_low = chips, path, offset, settings.active_low
        self.set_value(offset, settings.output_value)

    def set_value(self, offset: int, value: Value) -> None:
        with self.chips.lock:
            self.chips.physical[(self.path, offset)] = int((value is Value.ACTIVE) != self.active_low)

    def release(self) -> None:   # the kernel leaves the line where it was
        self.chips.held.pop((self.path, self.offset), None)


@pytest.fixture
def chips(monkeypatch) -> FakeChips:
    """gpiochip0 (32 lines) and gpiochip1 (16 lines), through a stand-in ``gpiod`` module."""
    fake = FakeChips({"/dev/gpiochip0": 32, "/dev/gpiochip1": 16})
    monkeypatch.setitem(sys.modules, "gpiod", fake.module())
    return fake


# -- 1. pulse_ms=0 on a GPIO line: nothing would ever clear it ---------------------------------------------------

@pytest.mark.parametrize("url", ["gpio://gpiochip0/17?pulse_ms=0", "jetson://BOARD/12?pulse_ms=0.05"])
def test_a_gpio_pulse_below_0_1_ms_is_refused_when_the_station_file_is_read(url):
    """Audit bug 1: pulse_ms=0 ("write on only, the PLC clears it") was accepted on a GPIO URL: after the first reject
    the gate stayed open for good, and every later reject was counted delivered though no edge was driven."""
    with pytest.raises(ConfigError) as info:
        RejectSettings.from_dict({"sinks": [url], "delay_ms": 400})
    message = str(info.value)
    assert message.startswith(f"reject.sinks[0]: {url}: pulse_ms: expected at least 0.1 ms for a GPIO output")
    assert "nothing clears a GPIO line" in message and "pulse_ms=50" in message


def test_a_gpio_sink_opened_with_a_zero_width_is_refused_before_anything_opens(chips):
    """The same for a width the caller hands in (``open_sink(url, pulse_ms=0)``): refused, no line requested."""
    with pytest.raises(SinkError, match="expected at least 0.1 ms for a GPIO output, found 0"):
        open_sink("gpio://gpiochip0/17", pulse_ms=0)
    assert not chips.held
    open_sink("gpio://gpiochip0/17?pulse_ms=0.1", pulse_ms=0).close()   # the URL's width wins, and 0.1 is enough


# -- 4. a line the chip lacks, a busy line, a missing chip -------------------------------------------------------

def test_a_line_the_chip_lacks_is_a_sink_error_naming_its_line_count_and_gpioinfo(chips):
    """Audit bug 4: libgpiod v2 raises EINVAL as ValueError: a traceback (exit 1) instead of a one-line refusal."""
    with pytest.raises(SinkError) as info:
        open_sink("gpio://gpiochip1/20")
    message = str(info.value)
    assert "gpiochip1 has no line 20 (it has 16 lines, 0..15" in message
    assert "fix the line in the URL (gpio://gpiochip1/LINE)" in message and "`gpioinfo gpiochip1`" in message


def test_a_busy_line_names_its_holder_and_a_missing_chip_names_gpiodetect(chips):
    chips.held[("/dev/gpiochip0", 17)] = "other-app"
    with pytest.raises(PlcError) as busy:
        open_sink("gpio://gpiochip0/17")
    assert "line 17 of gpiochip0 is in use: 'other-app' holds it" in str(busy.value)
    assert "`gpioinfo gpiochip0`" in str(busy.value) and "fix the line in the URL" in str(busy.value)
    with pytest.raises(PlcError) as missing:
        open_sink("gpio://gpiochip7/17")
    assert "no GPIO chip /dev/gpiochip7" in str(missing.value)
    assert "fix the chip in the URL (gpio://CHIP/17): `gpiodetect`" in str(missing.value)


# -- 7. libgpiod's v1 bindings ------------------------------------------------------------------------------------

def test_the_v1_gpiod_bindings_are_refused_naming_the_version_needed_and_the_install(monkeypatch):
    """Audit bug 7: python3-libgpiod 1.6 (apt; seen through a venv made with --system-site-packages, as
    docs/jetson.md makes one) has no request_lines: an AttributeError traceback at the first reject sink."""
    v1 = types.ModuleType("gpiod")
    v1.__version__ = "1.6.3"
    v1.Chip = object
    v1.LINE_REQ_DIR_OUT = 3
    monkeypatch.setitem(sys.modules, "gpiod", v1)
    with pytest.raises(SinkError) as info:
        open_sink("gpio://gpiochip0/17")
    message = str(info.value)
    assert "gpiod >= 2.1" in message and "found gpiod 1.6.3" in message
    assert "pip install 'fair-edge[gpio]'" in message


def test_the_jetson_install_line_installs_what_gpio_sinks_need():
    """docs/jetson.md's pip line installed [plc,jetson]: a gpio:// sink then met JetPack's v1 bindings."""
    line = next(row for row in (ROOT / "docs/jetson.md").read_text(encoding="utf-8").splitlines()
                if "pip install" in row and "/path/to/fair-edge" in row)
    extras = line.split('/path/to/fair-edge"[', 1)[1].split("]", 1)[0].split(",")
    assert {"plc", "jetson", "gpio"} <= set(extras), line


# -- 5. Jetson.GPIO refusing to load -----------------------------------------------------------------------------

def jetson_package(folder: Path, body: str) -> None:
    """A ``Jetson.GPIO`` package under ``folder`` whose import runs ``body``."""
    (folder / "Jetson" / "GPIO").mkdir(parents=True)
    (folder / "Jetson" / "__init__.py").write_text("")
    (folder / "Jetson" / "GPIO" / "__init__.py").write_text(body)


@pytest.mark.parametrize("raised, fix", [
    ("RuntimeError('The current user does not have permissions set to access the library functionalites.')",
     "99-gpio.rules"),
    ("Exception('Could not determine Jetson model')", "use a gpio://gpiochipN/LINE URL")])
def test_jetson_gpio_refusing_to_load_is_a_sink_error_with_the_fix(monkeypatch, tmp_path, raised, fix):
    """Audit bug 5: Jetson.GPIO checks the user's permissions (RuntimeError) and the board (Exception) at import;
    only ImportError was caught, so the station died with a traceback instead of the documented fix."""
    jetson_package(tmp_path, f"raise {raised}\n")
    for name in ("Jetson", "Jetson.GPIO"):   # set, then deleted: undone, the stand-in the import adds goes too
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SinkError) as info:
        open_sink("jetson://BOARD/12")
    message = str(info.value)
    assert "'Jetson.GPIO' package is installed but refused to load" in message and fix in message
    assert "gpio' group" in message


# -- 6. one Jetson numbering per process, one owner per line -----------------------------------------------------

def test_jetson_urls_in_two_numberings_are_refused_naming_both_fields():
    """Audit bug 6: reject pin in BOARD and stack light in BCM passed the check; the second open failed after the
    model loaded ("A different mode has already been set!", no field, no fix)."""
    with pytest.raises(ConfigError) as info:
        RejectSettings.from_dict({"sinks": ["jetson://BOARD/12"], "fault_sinks": ["jetson://BCM/23?active=low"]})
    message = str(info.value)
    assert message.startswith("reject.fault_sinks[0]: jetson://BCM/23?active=low numbers its pin in BCM, "
                              "reject.sinks[0] in BOARD: Jetson.GPIO takes one numbering per process")
    RejectSettings.from_dict({"sinks": ["jetson://BOARD/12"], "fault_sinks": ["jetson://BOARD/16"]})   # one: fine


def test_a_lane_output_in_another_numbering_is_refused_naming_the_camera_field():
    lanes = StationConfig(cameras=(ViewSettings("a", "1", reject=("jetson://BOARD/12",)),
                                   ViewSettings("b", "2", reject=("jetson://CVM/GPIO09",))),
                          group=GroupSettings(by="lane"),
                          reject=RejectSettings(fault_sinks=("jetson://BOARD/16",)))
    with pytest.raises(ConfigError, match=r"^cameras\[1\]\.reject\[0\]: jetson://CVM/GPIO09 numbers its pin in CVM, "
                                          r"reject\.fault_sinks\[0\] in BOARD"):
        lanes.checked()


@pytest.mark.parametrize("reject, fault, named", [
    ("gpio://gpiochip0/17?pulse_ms=30", "gpio://gpiochip0/17?active=low", "reject.fault_sinks[0]"),
    ("jetson://BOARD/12", "jetson://board/12", "reject.fault_sinks[0]")])
def test_one_gpio_line_driven_by_two_outputs_is_refused_when_the_file_is_read(reject, fault, named):
    """Audit r10: the reject gate and the stack light on one line failed at open (busy), after the model loaded."""
    with pytest.raises(ConfigError) as info:
        RejectSettings.from_dict({"sinks": [reject], "fault_sinks": [fault]})
    message = str(info.value)
    assert message.startswith(f"{named}: ") and "which reject.sinks[0] drives too: a GPIO line has one owner" in message
    RejectSettings.from_dict({"sinks": [reject], "fault_sinks": [fault.replace("17", "22").replace("12", "16")]})


def test_a_second_jetson_numbering_opened_in_one_process_is_named(monkeypatch):
    """At open too (a sink opened outside a station file): Jetson.GPIO's ValueError becomes a SinkError naming
    the numbering already set and the fix."""
    state = {"mode": None}
    gpio = types.ModuleType("Jetson.GPIO")
    gpio.BOARD, gpio.BCM, gpio.CVM, gpio.TEGRA_SOC, gpio.OUT, gpio.HIGH, gpio.LOW = 10, 11, 1001, 1000, 0, 1, 0
    gpio.getmode = lambda: state["mode"]
    gpio.setmode = lambda mode: state.update(mode=mode)
    gpio.setup = gpio.output = gpio.cleanup = lambda *a, **kw: None
    monkeypatch.setitem(sys.modules, "Jetson", types.ModuleType("Jetson"))
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", gpio)
    first = open_sink("jetson://BOARD/12")
    try:
        with pytest.raises(SinkError, match="one pin numbering per process, and BOARD is set already"):
            open_sink("jetson://BCM/23")
    finally:
        first.close()

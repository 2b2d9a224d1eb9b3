"""A GPIO reject or fault output whose line another process holds (a second station, a leftover script), or whose
chip cannot be opened, refuses `fair-edge run` before the model loads (``station.locks.probe_gpio_lines``: the line
requested and released under the station's lock), not minutes later when the sinks open after a TensorRT engine
loaded. The model loaders are spies that fail the test if called; the libgpiod and Jetson.GPIO stand-ins are
test_gpio_outputs.py's (the errors the real bindings raise)."""

from __future__ import annotations

import errno
import sys
import threading
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import PlcError, SinkError
from fair_edge.line.settings import RecordSettings, RejectSettings
from fair_edge.station import cell as cell_module
from fair_edge.station import cell_models
from fair_edge.station import run as run_module
from fair_edge.station.config import CameraSettings, ConsoleSettings, StationConfig
from fair_edge.station.views import GroupSettings, ViewSettings
from inline_swaps import kept_signals  # noqa: F401 (autouse: `fair-edge run` sets SIGINT / SIGTERM handlers)
from test_gpio_outputs import FakeChips

HELD = ("/dev/gpiochip0", 17)
BUSY = ("gpiod /dev/gpiochip0 17: line 17 of gpiochip0 is in use: 'other-app' holds it ([Errno 16] Device or "
        "resource busy); `gpioinfo gpiochip0` names the line's consumer: stop that program, or fix the line in the URL "
        "(gpio://gpiochip0/LINE)")


class NotLoaded(AssertionError):
    """A model loader was called: the start was not refused before the model loaded."""


@pytest.fixture
def chips(monkeypatch) -> FakeChips:
    """gpiochip0 (32 lines) with line 17 held by 'other-app', through the stand-in ``gpiod`` module."""
    fake = FakeChips({"/dev/gpiochip0": 32}, held={HELD: "other-app"})
    monkeypatch.setitem(sys.modules, "gpiod", fake.module())
    return fake


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Spies on every model loader a station calls (one camera's and a cell's): each call is recorded and raises
    ``NotLoaded``."""
    calls: list[str] = []

    def loader(name):
        def load(*args, **kwargs):
            calls.append(name)
            raise NotLoaded(f"{name} was called: the model loaded before the busy GPIO line was found")
        return load

    for module, name in ((run_module, "read_bundle"), (run_module, "open_scorer"), (cell_models, "read_bundle"),
                         (cell_models, "open_scorer"), (cell_module, "CellModels")):
        monkeypatch.setattr(module, name, loader(f"{module.__name__}.{name}"))
    return calls


def one_line(text: str) -> str:
    return " ".join(text.split())   # rich may wrap a long error line


def station(tmp_path: Path, sinks=(), fault_sinks=(), cameras=(), group=GroupSettings()) -> StationConfig:
    """A replayed station at 20 fps (a timed line: reject timing passes) with the given GPIO outputs, no console."""
    out = tmp_path / "out"
    return StationConfig(camera=CameraSettings(source=str(tmp_path), fps=20), bundle=tmp_path / "bundle",
                         backend="onnxruntime", output=out, record=RecordSettings(dir=out),
                         reject=RejectSettings(sinks=tuple(sinks), fault_sinks=tuple(fault_sinks), delay_ms=400),
                         console=ConsoleSettings(enabled=False), cameras=tuple(cameras), group=group)


def test_fair_edge_run_with_a_busy_gpio_line_is_refused_before_the_model_loads(chips, loads, tmp_path):
    """The report: the line another process held was found only when the sinks opened, after the model had loaded
    (minutes for a TensorRT engine on a Jetson). Now `fair-edge run` exits 2 with the open's one-line message, named
    with its setting, the model never loaded; nothing is left: no output folder (no empty ng/, no lock file), the
    free reject line not held, the held one still the other program's."""
    (tmp_path / "frames").mkdir()
    out = tmp_path / "out"
    yaml = tmp_path / "station.yaml"
    yaml.write_text(f"camera: {{source: {tmp_path / 'frames'}, fps: 20}}\nbundle: {tmp_path / 'bundle'}\n"
                    "reject: {sinks: ['gpio://gpiochip0/5'], fault_sinks: ['gpio://gpiochip0/17'], delay_ms: 400}\n")
    result = CliRunner().invoke(app, ["run", "--station", str(yaml), "--out", str(out), "--console", "off"],
                                env={"COLUMNS": "400"})
    assert not isinstance(result.exception, NotLoaded), loads
    assert result.exit_code == 2, result.output
    assert loads == []
    assert f"error: reject.fault_sinks[0]: {BUSY}" in one_line(result.output), result.output
    assert not out.exists() or not any(out.iterdir()), sorted(map(str, out.rglob("*")))
    assert chips.held == {HELD: "other-app"}


def test_a_chip_that_cannot_be_opened_is_refused_before_the_model_loads(chips, loads, tmp_path):
    with pytest.raises(PlcError) as refused:
        run_module.run_station(station(tmp_path, sinks=["gpio://gpiochip7/3"]), threading.Event(), max_frames=1)
    assert loads == []
    assert str(refused.value).startswith("reject.sinks[0]: gpiod /dev/gpiochip7 3: no GPIO chip /dev/gpiochip7")
    assert "fix the chip in the URL (gpio://CHIP/3): `gpiodetect` lists this machine's chips" in str(refused.value)


def test_a_busy_lane_output_refuses_a_station_of_several_cameras_before_its_models_load(chips, loads, tmp_path):
    cfg = station(tmp_path, cameras=(ViewSettings("a", str(tmp_path), fps=20, reject=("gpio://gpiochip0/4",)),
                                     ViewSettings("b", str(tmp_path), fps=20, reject=("gpio://gpiochip0/17",))),
                  group=GroupSettings(by="lane"))
    with pytest.raises(PlcError) as refused:
        cell_module.run(cfg, threading.Event(), max_frames=1)
    assert loads == []
    assert str(refused.value) == f"cameras[1].reject[0]: {BUSY}"
    assert chips.held == {HELD: "other-app"}   # lane a's line was released again


def test_a_free_gpio_line_is_released_at_its_resting_level_before_the_model_loads(chips, loads, tmp_path,
                                                                                  monkeypatch):
    """The probe holds nothing while the model loads (the station's own open would find its line busy) and leaves
    the line inactive (an active-low line: high)."""
    held_at_load = []
    spy = run_module.read_bundle   # ``loads``' spy: records the call and raises NotLoaded

    def read_bundle(path):
        held_at_load.append(dict(chips.held))
        return spy(path)

    monkeypatch.setattr(run_module, "read_bundle", read_bundle)
    with pytest.raises(NotLoaded):
        run_module.run_station(station(tmp_path, sinks=["gpio://gpiochip0/5"],
                                       fault_sinks=["gpio://gpiochip0/6?active=low"]), threading.Event(), max_frames=1)
    assert held_at_load == [{HELD: "other-app"}]
    assert chips.physical == {("/dev/gpiochip0", 5): 0, ("/dev/gpiochip0", 6): 1}


def jetson_gpio(monkeypatch, busy_pins: set[int]) -> list[tuple]:
    """A stand-in ``Jetson.GPIO`` whose ``setup`` of a pin in ``busy_pins`` raises as Jetson.GPIO 2.1's character
    device path does (``GPIOError``, an OSError, EBUSY); returns the calls made."""
    calls: list[tuple] = []
    state = {"mode": None}
    gpio = types.ModuleType("Jetson.GPIO")
    gpio.BOARD, gpio.BCM, gpio.CVM, gpio.TEGRA_SOC, gpio.OUT, gpio.HIGH, gpio.LOW = 10, 11, 1001, 1000, 0, 1, 0
    gpio.getmode = lambda: state["mode"]
    gpio.setmode = lambda mode: state.update(mode=mode)

    def setup(pin, direction, initial=None):
        if pin in busy_pins:
            raise OSError(errno.EBUSY, "Opening output line handle: Device or resource busy")
        calls.append(("setup", pin))

    gpio.setup = setup
    gpio.output = lambda pin, level: calls.append(("output", pin, level))
    gpio.cleanup = lambda pin=None: calls.append(("cleanup", pin))
    monkeypatch.setitem(sys.modules, "Jetson", types.ModuleType("Jetson"))
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", gpio)
    return calls


def test_a_busy_jetson_pin_is_refused_before_the_model_loads_naming_the_pin_and_the_fix(monkeypatch, loads,
                                                                                       tmp_path):
    """Jetson.GPIO does not say who holds the line: the message names the pin, gpioinfo and the fix."""
    calls = jetson_gpio(monkeypatch, busy_pins={12})
    cfg = station(tmp_path, sinks=["jetson://BOARD/16"], fault_sinks=["jetson://BOARD/12"])
    with pytest.raises(PlcError) as refused:
        run_module.run_station(cfg, threading.Event(), max_frames=1)
    assert loads == []
    assert str(refused.value) == (
        "reject.fault_sinks[0]: jetson BOARD 12: pin 12 (BOARD numbering) is in use: another process holds its line "
        "([Errno 16] Opening output line handle: Device or resource busy); `gpioinfo` names the line's consumer: stop "
        "that program, or fix the pin in the URL (jetson://BOARD/PIN)")
    assert calls == [("setup", 16), ("cleanup", 16)]   # the free pin set up and cleaned up again: nothing held


def test_the_probe_skips_outputs_that_are_no_gpio_line(chips):
    from fair_edge.line.sinks.gpio import probe_gpio_outputs

    probe_gpio_outputs([("reject.sinks[0]", "modbus://10.0.0.5:502?unit=1&coil=0"), ("reject.sinks[1]", "log://"),
                        ("reject.fault_sinks[0]", "gpio://gpiochip0/3")])
    assert chips.held == {HELD: "other-app"} and chips.physical == {("/dev/gpiochip0", 3): 0}


def jetson_on_chips(monkeypatch, chips: FakeChips, board: dict[int, tuple[str, int]]) -> None:
    """A stand-in ``Jetson.GPIO`` whose BOARD pins are lines of ``chips`` (``board``: pin -> (chip, line), as a
    Jetson's header is wired to its gpiochips): ``setup`` requests the line from the same kernel ``gpiod`` does
    (EBUSY while anyone holds it), ``cleanup`` releases it."""
    gpio = types.ModuleType("Jetson.GPIO")
    gpio.BOARD, gpio.BCM, gpio.CVM, gpio.TEGRA_SOC, gpio.OUT, gpio.HIGH, gpio.LOW = 10, 11, 1001, 1000, 0, 1, 0
    state = {"mode": None}
    gpio.getmode = lambda: state["mode"]
    gpio.setmode = lambda mode: state.update(mode=mode)

    def setup(pin, direction, initial=None):
        if board[pin] in chips.held:
            raise OSError(errno.EBUSY, "Opening output line handle: Device or resource busy")
        chips.held[board[pin]] = "Jetson-gpio"

    gpio.setup = setup
    gpio.output = lambda pin, level: None
    gpio.cleanup = lambda pin=None: chips.held.pop(board[pin], None)
    monkeypatch.setitem(sys.modules, "Jetson", types.ModuleType("Jetson"))
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", gpio)


@pytest.mark.parametrize("reject, fault", [("gpio://gpiochip0/20", "jetson://BOARD/12"),
                                           ("jetson://BOARD/12", "gpio://gpiochip0/20")])
def test_one_line_named_as_gpio_and_as_jetson_pin_is_refused_before_the_model_loads_naming_both(
        chips, loads, tmp_path, monkeypatch, reject, fault):
    """The report: header pin 12 of this board is line 20 of gpiochip0, so gpio://gpiochip0/20 and jetson://BOARD/12
    are one line. The station file cannot tell (the mapping is the board's) and the probe released each line before
    requesting the next, so the start passed and the second output failed to open after the model had loaded, as
    'another process holds its line'. Now the probe holds the lines together, and the kernel's answer (busy while
    the other output held it, free once that let it go) refuses the start naming both settings; nothing stays
    held."""
    jetson_on_chips(monkeypatch, chips, {12: ("/dev/gpiochip0", 20), 16: ("/dev/gpiochip0", 21)})
    with pytest.raises(SinkError) as refused:
        run_module.run_station(station(tmp_path, sinks=[reject], fault_sinks=[fault]), threading.Event(),
                               max_frames=1)
    assert loads == []
    assert str(refused.value).startswith(
        f"reject.fault_sinks[0]: {fault} drives the GPIO line reject.sinks[0] ({reject}) drives: the line was busy "
        "while reject.sinks[0] held it and free once it let go.")
    assert "give each output its own line" in str(refused.value)
    assert chips.held == {HELD: "other-app"}


def test_gpio_and_jetson_outputs_on_different_lines_pass_the_probe_and_are_released(chips, monkeypatch):
    from fair_edge.line.sinks.gpio import probe_gpio_outputs

    jetson_on_chips(monkeypatch, chips, {12: ("/dev/gpiochip0", 20), 16: ("/dev/gpiochip0", 21)})
    probe_gpio_outputs([("reject.sinks[0]", "gpio://gpiochip0/20"), ("reject.fault_sinks[0]", "jetson://BOARD/16")])
    assert chips.held == {HELD: "other-app"}


class ReleaseFails:
    """A GPIO output on a fake kernel (``kernel``: (chip, line) -> consumer) whose release of the lines in ``fails``
    raises ``OSError`` (EIO) and leaves the line held, as a driver that fails to let go would."""

    kernel: dict = {}
    fails: set = set()

    def __init__(self, target) -> None:
        self.key, self.label, self.is_open = (target.chip, target.line), target.label, False

    def open(self) -> None:
        if self.key in self.kernel:
            raise PlcError(f"{self.label}: line {self.key[1]} is in use: '{self.kernel[self.key]}' holds it")
        self.kernel[self.key], self.is_open = "fair-edge", True

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            if self.key in self.fails:
                raise OSError(errno.EIO, "release failed")
            self.kernel.pop(self.key)


GPIO_URLS = [("reject.sinks[0]", "gpio://gpiochip0/3"), ("reject.sinks[1]", "gpio://gpiochip0/4"),
             ("reject.fault_sinks[0]", "gpio://gpiochip0/9")]


@pytest.fixture
def release_fails(monkeypatch) -> type[ReleaseFails]:
    from fair_edge.line.sinks import gpio

    monkeypatch.setitem(gpio.GPIO_OUTPUTS, "gpiod", ReleaseFails)
    monkeypatch.setattr(ReleaseFails, "kernel", {})
    monkeypatch.setattr(ReleaseFails, "fails", set())
    return ReleaseFails


def test_a_release_that_fails_hides_no_busy_line_and_the_other_lines_are_released(release_fails, caplog):
    """The report: the probe found line 9 busy (another program's), and while ``_line_twin`` released our lines to
    ask the kernel, line 4's release raised: the caller saw that ``OSError``, not the busy line. Now the busy line's
    ``PlcError`` is raised, line 4's failure logged naming its setting, and line 3 released."""
    from fair_edge.line.sinks.gpio import probe_gpio_outputs

    release_fails.kernel[("/dev/gpiochip0", 9)] = "other-app"
    release_fails.fails.add(("/dev/gpiochip0", 4))
    with pytest.raises(PlcError, match=r"^reject.fault_sinks\[0\]: .*line 9 is in use: 'other-app' holds it"):
        probe_gpio_outputs(GPIO_URLS)
    assert ("/dev/gpiochip0", 3) not in release_fails.kernel
    assert "reject.sinks[1]: releasing the GPIO line of gpio://gpiochip0/4 after probing it failed: OSError" in caplog.text


def test_a_failed_release_after_a_clean_probe_releases_the_others_and_is_refused_by_name(release_fails, caplog):
    """The report: every line free, the release of the last requested (line 9) raised a raw ``OSError`` and lines 3
    and 4 stayed held. Now 3 and 4 are released and the start refused with a ``SinkError`` naming line 9's
    setting and URL."""
    from fair_edge.line.sinks.gpio import probe_gpio_outputs

    release_fails.fails.add(("/dev/gpiochip0", 9))
    with pytest.raises(SinkError, match=r"release of reject.fault_sinks\[0\] \(gpio://gpiochip0/9\) failed"):
        probe_gpio_outputs(GPIO_URLS)
    assert release_fails.kernel == {("/dev/gpiochip0", 9): "fair-edge"}   # only the line whose release failed
    assert "reject.fault_sinks[0]: releasing the GPIO line of gpio://gpiochip0/9" in caplog.text

"""The live page's PLC pill stayed green ("0 errors") while reject pulses were missed: it read only ``sink_errors``
and the alarm. A stand-in station (no bundle) whose reject gate missed pulses, left some unconfirmed and refused
others a pulse (``gap_missed``), in a real headless browser (``test_console_browser``'s): the pill names the missed
and unconfirmed pulses and turns red, and the counters show the parts refused a pulse and the late verdicts."""

from __future__ import annotations

from types import SimpleNamespace

from test_console_browser import browser, text, wait  # noqa: F401  (browser: the headless chromium fixture)


class MissingGate:
    """A reject gate's face to the console (``RejectScheduler``'s ``stats``, ``settings``, ``to_acknowledge``) whose
    one sink missed ``missed`` pulses (and dropped ``dropped`` from its full queue), left ``unconfirmed`` without a
    reply, and whose gate refused ``gap_missed`` parts their pulse; no write error, nothing to acknowledge (the pill
    shows the counters alone)."""

    def __init__(self, missed: int = 0, dropped: int = 0, unconfirmed: int = 0, gap_missed: int = 0) -> None:
        self.settings = SimpleNamespace(sinks=("modbus://plc",), fault_sinks=())
        self.to_acknowledge = ""
        self._stats = {"pending": 0, "sink_errors": 0, "sink_missed": missed, "sink_dropped": dropped,
                       "sink_unconfirmed": unconfirmed, "gap_missed": gap_missed, "late_verdicts": 2}

    def stats(self) -> dict[str, int]:
        return dict(self._stats)


def served_gate(tmp_path, gate: MissingGate):
    """A one-camera console (``test_console_units.one_camera_console``) over ``gate``, and its server."""
    from test_console_units import one_camera_console

    from fair_edge.console.server import ConsoleServer

    console, _ = one_camera_console(tmp_path)
    console.feed.settings = console.feed.settings.__class__(port=0)
    console.feed.scheduler = gate
    return ConsoleServer(console.feed, console.actions)


def pill_class(driver) -> str:
    return driver.find_element("id", "plc-state").get_attribute("class")


def test_the_plc_pill_turns_red_and_names_the_missed_and_unconfirmed_pulses(browser, tmp_path):  # noqa: F811
    with served_gate(tmp_path, MissingGate(missed=3, dropped=1, unconfirmed=2, gap_missed=5)) as server:
        browser.get(server.url)
        wait(browser, lambda d: "PLC: 1 output(s)" in text(d, "plc-state"), what="the PLC pill")
        pill = text(browser, "plc-state")
        assert "4 pulses missed" in pill and "2 unconfirmed" in pill, pill
        assert "bad" in pill_class(browser).split(), pill_class(browser)
        assert text(browser, "gap-missed") == "5" and text(browser, "late-verdicts") == "2"


def test_the_plc_pill_stays_green_while_every_pulse_was_written(browser, tmp_path):  # noqa: F811
    with served_gate(tmp_path, MissingGate()) as server:
        browser.get(server.url)
        wait(browser, lambda d: "PLC: 1 output(s)" in text(d, "plc-state"), what="the PLC pill")
        assert "0 pulses missed, 0 unconfirmed" in text(browser, "plc-state")
        assert "ok" in pill_class(browser).split() and text(browser, "gap-missed") == "0"

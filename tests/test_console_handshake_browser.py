"""The live page of a handshake station (``reject.handshake``, no reject or fault output) in a real headless browser
(``test_console_browser``'s): its PLC pill said "PLC: none configured" and no handshake figure was shown. A
stand-in one-camera console (no bundle) over a scripted handshake (``test_console_handshake``'s, no thread): the pill
names the handshake and its link (red while down), the handshake card shows each figure ``Handshake.stats()`` holds,
and a station without a PLC of any kind still says "none configured"."""

from __future__ import annotations

from test_console_browser import browser, text, wait  # noqa: F401  (browser: the headless chromium fixture)
from test_console_handshake import ScriptedHandshake, shown_keys

from fair_edge.errors import PlcError
from fair_edge.records import Frame, Verdict


def card(driver) -> dict[str, str]:
    """The handshake card's figures as shown: key -> text ({} while the card is hidden)."""
    if not driver.find_element("id", "handshake").is_displayed():
        return {}
    return {b.get_attribute("data-hs"): b.text for b in driver.find_elements("css selector", "#handshake b[data-hs]")}


def pill_class(driver) -> list[str]:
    return driver.find_element("id", "plc-state").get_attribute("class").split()


def test_the_plc_pill_and_card_show_the_handshake_and_its_link(browser, tmp_path):  # noqa: F811
    from test_console_units import one_camera_console

    from fair_edge.console.server import ConsoleServer

    scripted = ScriptedHandshake()
    hs = scripted.hs
    console, _ = one_camera_console(tmp_path, port=0, live_fps=20)
    with ConsoleServer(console.feed, console.actions) as server:
        browser.get(server.url)
        wait(browser, lambda d: text(d, "plc-state") == "PLC: none configured", what="no PLC of any kind")
        assert card(browser) == {}

        console.feed.read_handshake_from(hs.stats)                  # a handshake station's console
        scripted.connect()
        scripted.trigger(1001)
        hs.bind(0, hs.next_trigger(0.0))
        hs.on_verdict(Frame(0, scripted.clock(), None), Verdict(0, scripted.clock(), 2.0, 1.0, True, scripted.clock()))
        scripted.poll()
        scripted.trigger(1002)
        hs.answer_not_inspected(hs.next_trigger(0.0))
        expected = {key: str(hs.stats().get(key, "–")) for key in shown_keys()}   # a cell's fanout: "–" here
        assert (expected["triggers"], expected["results"], expected["not_inspected"]) == ("2", "1", "1")
        assert (expected["ok"], expected["ng"], expected["stale_acks"]) == ("0", "1", "0")   # the answers are shown
        wait(browser, lambda d: card(d) == expected, what=f"the handshake card to show {expected}")
        assert text(browser, "plc-state") == "PLC: handshake up" and "ok" in pill_class(browser)
        assert text(browser, "hs-link") == "up"

        scripted.fail_next_read(PlcError("connection reset"))
        scripted.poll()
        wait(browser, lambda d: text(d, "plc-state") == "PLC: handshake DOWN", what="the link down on the pill")
        assert "bad" in pill_class(browser) and text(browser, "hs-link") == "DOWN"
        assert card(browser)["io_errors"] == "1"
        assert "none configured" not in browser.find_element("id", "status").text

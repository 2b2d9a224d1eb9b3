"""The demo's summary line counts the reject pulses missed (audit: with 3 of 15 pulses missed by the sink on a loaded
machine it read "pulses on time 11/15, late 1" and nothing else; only the per-cell table said "missed")."""

from __future__ import annotations

from rich.console import Console

from fair_edge.cli.demo import print_demo
from fair_edge.demo.run import match_pulses, pulse_error_stats, tally

SUMMARY = {"frames_in": 4, "inspected": 4, "dropped": 0, "lost": 0, "backend": "onnxruntime (cpu)",
           "latency": {"p50_ms": 100.0, "p99_ms": 100.0, "max_ms": 100.0}}


def report_of(pulses: dict[int, str], rises: list[float]) -> dict:
    """The demo report of four NG defective cells 0.1 s apart, gate 400 ms downstream, the sink's word on each pulse
    ``pulses`` and the rising edges the PLC saw ``rises`` (monotonic s)."""
    verdicts = [{"seq": i, "t_capture": 10.0 + 0.1 * i, "t_verdict": 10.05 + 0.1 * i, "ng": True, "score": 0.9,
                 "source": f"00{i}_defect_{i}.png"} for i in range(4)]
    rows = match_pulses(verdicts, rises, travel_ms=400, late_ms=10, pulses=pulses)
    return {"parts": rows, "summary": SUMMARY, "line": {"fps": 10.0, "gate_delay_ms": 400.0}, "threshold": 0.5,
            "pulse_error_ms": pulse_error_stats(rows), "reject_stats": {}, **tally(rows)}


def printed(report: dict, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "300")
    print_demo(report)
    return " ".join(capsys.readouterr().out.split())


def test_the_summary_line_counts_the_pulses_the_sink_missed(capsys, monkeypatch):
    report = report_of({0: "delivered", 1: "missed", 2: "unconfirmed", 3: "delivered"}, [10.4021, 10.7019])
    text = printed(report, capsys, monkeypatch)
    assert "pulses on time 2/4, late 0, missed 2 |" in text, text
    from fair_edge.cli.demo import pulses_text

    assert "[red]missed 2[/]" in pulses_text(report)   # red where the terminal shows colour
    rendered = Console(force_terminal=True, color_system="standard", width=300, highlight=False)
    with rendered.capture() as shown:
        rendered.print(pulses_text(report))
    assert "\x1b[31mmissed 2\x1b[0m" in shown.get()


def test_with_every_pulse_seen_it_says_missed_0_uncoloured(capsys, monkeypatch):
    report = report_of({i: "delivered" for i in range(4)}, [10.4021, 10.5019, 10.6005, 10.7011])
    assert "pulses on time 4/4, late 0, missed 0 |" in printed(report, capsys, monkeypatch)
    from fair_edge.cli.demo import pulses_text

    assert "[red]" not in pulses_text(report)
